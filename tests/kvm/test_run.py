"""`ukdbg run` end to end: real unikernels on real KVM, through the real CLI."""

import os
import re

import pytest

from helpers import ukdbg

pytestmark = pytest.mark.kvm


def test_hello(app):
    r = ukdbg("run", app("hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello, world!\nSolo5: solo5_exit(0) called\n"
    assert r.stderr == ""


@pytest.mark.parametrize("code", [0, 1, 42, 254])
def test_exit_status_is_the_guests(app, code):
    r = ukdbg("run", "--mem=8", app("exit"), code)
    assert r.returncode == code
    assert f"solo5_exit({code}) called" in r.stdout


def test_exit_status_is_masked_to_8_bits(app):
    r = ukdbg("run", app("exit"), 300)
    assert r.returncode == 300 & 0xFF


def test_command_line_reaches_the_guest(app):
    r = ukdbg("run", app("echo"), "arg1", "two words", "--solo5:quiet")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "arg1 two words --solo5:quiet"


def test_solo5_syntax_double_dash_and_mem(app):
    r = ukdbg("run", "--mem=16", "--", app("echo"), "--not-an-option")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "--not-an-option"
    r = ukdbg("run", "--mem", "16", app("echo"), "x")
    assert r.stdout.splitlines()[0] == "x"


def test_mem_is_adjusted_like_solo5(app):
    r = ukdbg("run", "--mem=3", app("hello"))
    assert r.returncode == 0
    assert "adjusting memory to 2097152 bytes" in r.stderr
    r = ukdbg("run", "--mem=5000", app("hello"))
    assert r.returncode == 1
    assert "exceeds the maximum" in r.stderr


def test_mem_zero_is_rejected(app):
    r = ukdbg("run", "--mem=0", app("hello"))
    assert r.returncode == 2
    assert "malformed argument to --mem" in r.stderr


def test_command_line_too_long(app):
    r = ukdbg("run", app("echo"), "x" * 9000)
    assert r.returncode == 1
    assert "command line too long" in r.stderr


def test_boot_info_and_memory_size(app):
    # time prints walltime; the guest also reads boot info (mem size) via the runtime
    r = ukdbg("run", "--mem=32", app("time"), "2")
    assert r.returncode == 0, r.stderr
    ts = [int(x) for x in re.findall(r"t=(\d+)", r.stdout)]
    assert len(ts) == 2
    assert 50_000_000 <= ts[1] - ts[0] < 2_000_000_000      # slept ~100 ms in POLL


def test_sse_state_survives(app):
    r = ukdbg("run", app("sse"))
    assert r.returncode == 0, r.stderr
    assert "sse: ok" in r.stdout


# --- endings: one line on stderr, documented exit codes ------------------------------
CRASHES = [
    # fixture, args, exit code, stderr pattern
    ("nullwrite", [], 255, r"guest trapped: #PF page fault at rip=0x[0-9a-f]+ <crash_here\+0x[0-9a-f]+>, "
                           r"fault address 0x0 \(page not present, write\)"),
    ("divzero", [], 255, r"#DE divide error at rip=0x[0-9a-f]+ <divide\+"),
    ("ud2", [], 255, r"#UD invalid opcode at rip=0x[0-9a-f]+ <do_ud2\+"),
    ("recursion", [], 255, r"#PF page fault at rip=0x[0-9a-f]+ <recurse\+"),
    ("abort", [], 255, r"guest aborted \(exit status 255\)"),
    ("assert", [], 255, r"guest aborted"),
    ("badport", [], 159, r"invalid guest port access: out port=0x80"),
    ("badhypercall", [], 159, r"invalid hypercall number 0"),
    ("hostileptr", [], 159, r"puts hypercall with a bad guest pointer: gpa=0xfffffffffff00000"),
    ("hostileptr", ["len"], 159, r"puts hypercall with a bad guest pointer"),
    ("hostileptr", ["struct"], 159, r"bad guest pointer: gpa=0xfffff000"),
    ("rowrite", [], 139, r"guest wrote 4 bytes to read-only memory at 0x[0-9a-f]+ <ro_value>, "
                         r"rip=0x[0-9a-f]+ <write_rodata\+"),
    ("textwrite", [], 139, r"read-only memory at 0x[0-9a-f]+ <write_text"),
    ("triple", [], 139, r"guest triple-faulted \(shutdown\) at rip=0x[0-9a-f]+ <triple_fault\+"),
    ("mmio", [], 135, r"read from unbacked guest-physical address 0x200000000"),
    ("halt", [], 132, r"guest executed hlt at rip=0x[0-9a-f]+ <do_hlt\+"),
]


@pytest.mark.parametrize("name,args,code,pattern", CRASHES,
                         ids=[f"{c[0]}{'-' + c[1][0] if c[1] else ''}" for c in CRASHES])
def test_crash_endings(app, tmp_path, name, args, code, pattern):
    r = ukdbg("run", "--mem=64", "--no-core", app(name), *args, cwd=tmp_path)
    assert r.returncode == code, (r.stdout, r.stderr)
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("ukdbg: ")]
    assert line, r.stderr
    assert re.search(pattern, r.stderr), r.stderr
    assert f"{name}.hvt: " in line[0]


def test_sse_arithmetic_emulation_failure_is_explained(app):
    """On this PVM host SSE arithmetic is an emulation failure; on real KVM it runs."""
    r = ukdbg("run", "--no-core", app("sse"), "arith")
    if r.returncode == 0:
        assert "sse:" in r.stdout
        return
    assert r.returncode == 132, r.stderr
    assert re.search(r"KVM internal error at rip=0x[0-9a-f]+ <do_addps\+0x[0-9a-f]+>: "
                     r"instruction emulation failed", r.stderr)


# --- bad input: one line, no traceback ----------------------------------------------------
def test_missing_app(tmp_path):
    r = ukdbg("run", tmp_path / "nope.hvt")
    assert r.returncode == 1
    assert r.stderr.strip() == f"ukdbg: {tmp_path / 'nope.hvt'}: no such file"


def test_not_an_elf(tmp_path):
    p = tmp_path / "junk.hvt"
    p.write_bytes(b"hello world, not an ELF" * 10)
    r = ukdbg("run", p)
    assert r.returncode == 1
    assert "not an ELF file" in r.stderr and len(r.stderr.splitlines()) == 1


def test_unknown_option(app):
    r = ukdbg("run", "--frobnicate", app("hello"))
    assert r.returncode == 2
    assert "unknown option '--frobnicate'" in r.stderr


def test_missing_app_argument():
    r = ukdbg("run", "--mem=8")
    assert r.returncode == 2
    assert "missing APP" in r.stderr


def test_help_and_version():
    r = ukdbg("run", "--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout and "exit status:" in r.stdout
    r = ukdbg("--version")
    assert r.returncode == 0 and r.stdout.startswith("ukdbg ")


# --- devices ---------------------------------------------------------------------------------
def test_declared_device_must_be_attached(app):
    r = ukdbg("run", app("block"))
    assert r.returncode == 1
    assert "'storage' (BLOCK_BASIC) declared by the unikernel but not attached" in r.stderr
    assert "--block:storage=" in r.stderr


def test_undeclared_device_is_refused(app, tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(4096))
    r = ukdbg("run", f"--block:other={disk}", app("hello"))
    assert r.returncode == 2
    assert "declares no BLOCK_BASIC device 'other'" in r.stderr
    r = ukdbg("run", "--net:storage=tap0", app("block"))
    assert r.returncode == 2
    assert "declares no NET_BASIC device 'storage'" in r.stderr


def test_block_read_write_verify(app, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 1024))
    r = ukdbg("run", f"--block:storage={disk}", app("block"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "block: ok" in r.stdout
    data = disk.read_bytes()
    assert data[:512] != bytes(512)          # the guest's pattern reached the file
    r = ukdbg("run", f"--block:storage={disk}", app("block"), "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def test_block_sector_size(app, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * 1024))
    r = ukdbg("run", f"--block:storage={disk}", "--block-sector-size:storage=4096",
              app("block"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = ukdbg("run", f"--block:storage={disk}", "--block-sector-size:storage=1000",
              app("block"))
    assert r.returncode == 2 and "power of two" in r.stderr


def test_block_size_must_be_aligned(app, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1000))
    r = ukdbg("run", f"--block:storage={disk}", app("block"))
    assert r.returncode == 1
    assert "block aligned" in r.stderr


def test_kvm_missing_and_denied(app, tmp_path):
    r = ukdbg("run", app("hello"), env={"UKDBG_KVM_DEVICE": str(tmp_path / "kvm")})
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "hint:" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    if os.geteuid() == 0:
        import shutil
        import subprocess
        import sys
        if shutil.which("setpriv"):
            p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                sys.executable, "-m", "ukdbg", "run", app("hello")],
                               capture_output=True, text=True, cwd="/")
            assert p.returncode == 1
            assert "permission denied" in p.stderr and "hint:" in p.stderr
