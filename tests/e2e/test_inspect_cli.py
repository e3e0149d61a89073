"""`ukdbg core` as a command: batch commands, --report, --json, finding and checking the
unikernel (missing, changed, --app), a read-only GDB server (--gdb), and bad files:
truncated, corrupt and foreign files get one clear line, also under fuzzing."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import ROOT, ukdbg
from inspect_support import app_path, core_of

pytestmark = pytest.mark.kvm


def one_line_error(r, *words):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ukdbg: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_batch_commands():
    core, _ = core_of("nullwrite")
    r = ukdbg("core", core, "-c", "info; bt; regs", "-c", "x/2xg $rsp")
    assert r.returncode == 0 and r.stderr == ""
    out = r.stdout
    assert out.startswith("#PF page fault (SIGSEGV)\n")
    assert "error code     0x2: page not present, write, supervisor mode" in out
    assert re.search(r"^\*#0  0x[0-9a-f]+ crash_here\+0x9 at apps/nullwrite.c:8$", out, re.M)
    assert re.search(r"^cr0    0x80010021  \[ PE NE WP PG \]$", out, re.M)
    assert re.search(r"^efer   0x500  \[ LME LMA \]$", out, re.M)
    assert re.search(r"^rflags 0x[0-9a-f]+  \[ .*IOPL=0 \]$", out, re.M)
    assert re.search(r"^0x[0-9a-f]+:  0x[0-9a-f]{16}  0x[0-9a-f]{16}$", out, re.M)
    r = ukdbg("core", core, "-c", "bt; nosuch; frame 1")
    assert r.returncode == 1                       # a failed command, the others ran
    assert "error: unknown command 'nosuch'" in r.stdout and "#1  0x" in r.stdout


def test_json():
    core, _ = core_of("regs")
    r = ukdbg("core", core, "--json")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["signal"] == "SIGILL" and d["backtrace"][0]["function"] == "load_regs_and_fault"
    assert d["registers"]["rax"] == 0x1111111111111111
    # every register, with the values the regs command reads
    every = ({"rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base",
              "cr0", "cr2", "cr3", "cr4", "efer"}
             | {f"r{i}" for i in range(8, 16)}
             | {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"})
    assert set(d["registers"]) == every, sorted(d["registers"])
    assert d["registers"]["r12"] == 0xCCCCCCCCCCCCCCCC
    full = json.loads(ukdbg("core", core, "-c", "regs", "--json").stdout)[0]["result"]
    flat = {n: (v["value"] if isinstance(v, dict) else v)
            for group in ("general", "segments", "control") for n, v in full[group].items()}
    flat["rflags"] = full["rflags"]["value"]
    assert {n: d["registers"][n] for n in every} == {n: flat[n] for n in every}
    r = ukdbg("core", core, "-c", "regs; bt 1; bogus", "--json")
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert [x["command"] for x in d] == ["regs", "bt 1", "bogus"]
    assert d[0]["result"]["general"]["r15"] == 0xFFFFFFFFFFFFFFFF
    assert d[0]["result"]["control"]["cr4"]["decoded"] == ["PAE", "OSFXSR", "OSXMMEXCPT"]
    assert d[1]["result"]["frames"][0]["line"] == 48 and d[1]["result"]["more"] == 3
    assert "unknown command" in d[2]["error"]


def test_report_matches_the_one_ukdbg_run_printed():
    core, run = core_of("recursion")
    r = ukdbg("core", core, "--report")
    assert r.returncode == 0

    def section(text, head):
        return text.split(head, 1)[1].split("\nregisters:")[0]
    assert section(r.stdout, "backtrace:") == section(run.stderr, "backtrace:")
    assert r.stdout.splitlines()[0] == run.stderr.splitlines()[0]
    assert "faulting instruction:" in r.stdout


def test_piped_commands():
    core, _ = core_of("divzero")
    r = ukdbg("core", core, input="bt 1\nsym divisor\nquit\nregs\n")
    assert r.returncode == 0
    assert "(ukdbg) bt 1" in r.stdout and "divide+0x" in r.stdout
    assert re.search(r"divisor = 0x[0-9a-f]+  object, 4 bytes, \.\w+, value 0x0 \(0\)",
                     r.stdout)
    assert "(ukdbg) regs" not in r.stdout


def _crash_copy(tmp_path, app="nullwrite"):
    """Crash a copy of a fixture (so its binary can be removed or changed later)."""
    img = tmp_path / f"{app}.hvt"
    shutil.copy(app_path(app), img)
    d = tmp_path / "cores"
    d.mkdir()
    r = ukdbg("run", "--mem=8", "--core-dir", d, img)
    assert r.returncode == 255
    (core,) = d.iterdir()
    return img, str(core)


def test_missing_binary_still_inspects(tmp_path):
    img, core = _crash_copy(tmp_path)
    os.unlink(img)
    r = ukdbg("core", core, "-c", "info; bt; regs; x/2xg $rsp; disas; console; mem")
    assert r.returncode == 0, r.stdout
    out = r.stdout
    warning = f"the unikernel {img} is missing: no symbols or source lines (give --app APP)"
    assert r.stderr == f"ukdbg: warning: {warning}\n"
    assert re.search(rf"^  warning +{re.escape(warning)}$", out, re.M)
    assert "#PF page fault (SIGSEGV)" in out
    assert re.search(r"^\*#0  0x100f04 \?\? ?$", out, re.M), out   # frame pointers
    assert re.search(r"^ #1  0x[0-9a-f]+ \?\?", out, re.M)
    assert "=>! 0x100f04 <" not in out and "movl $0x1, (%rax)   <- faulting" in out
    assert "Solo5: trap: type=#PF" in out
    # --app finds the symbols again
    r = ukdbg("core", core, "--app", app_path("nullwrite"), "-c", "bt 1")
    assert "crash_here+0x9 at apps/nullwrite.c:8" in r.stdout


def test_binary_next_to_the_core_is_found(tmp_path):
    img, core = _crash_copy(tmp_path)
    shutil.move(img, os.path.join(os.path.dirname(core), img.name))
    r = ukdbg("core", core, "-c", "bt 1")
    assert "crash_here+0x9 at apps/nullwrite.c:8" in r.stdout and r.stderr == ""


def test_changed_binary_is_a_warning(tmp_path):
    img, core = _crash_copy(tmp_path)
    shutil.copy(app_path("divzero"), img)          # rebuilt: another binary
    r = ukdbg("core", core, "-c", "info; bt 1")
    assert r.returncode == 0
    assert r.stderr.startswith(f"ukdbg: warning: {img} is not the unikernel that crashed "
                               "(size ")
    assert "its symbols are not used (give --app to use them anyway)" in r.stdout
    assert re.search(r"^\*#0  0x100f04 \?\?", r.stdout, re.M)
    r = ukdbg("core", core, "--app", img, "-c", "bt 1")
    assert "symbols and source lines may be wrong" in r.stderr
    r = ukdbg("core", core, "--app", tmp_path / "nope.hvt", "-c", "bt 1")
    assert "nope.hvt: no such file; no symbols" in r.stderr


# --- bad files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def linux_core(tmp_path_factory):
    """A real Linux process core (gdb's gcore of a sleeping process)."""
    d = tmp_path_factory.mktemp("linux")
    p = subprocess.Popen(["sleep", "30"])
    try:
        r = subprocess.run(["gdb", "-nx", "-batch", "-p", str(p.pid), "-ex",
                            f"gcore {d}/sleep.core"], capture_output=True, text=True,
                           timeout=60)
    finally:
        p.kill()
        p.wait()
    path = d / "sleep.core"
    if not path.exists():
        pytest.skip(f"gcore failed: {r.stderr[-300:]}")
    return str(path)


@pytest.mark.gdb
def test_foreign_and_broken_files(tmp_path, linux_core):
    core, _ = core_of("nullwrite")
    data = open(core, "rb").read(1 << 16)
    size = os.path.getsize(core)
    cases = {}

    def f(name, content):
        p = tmp_path / name
        p.write_bytes(content)
        cases[name] = str(p)
    f("empty", b"")
    f("text", b"hello, I am not a core\n" * 10)
    f("short-elf", data[:40])
    f("headers-only", data[:200])
    f("no-notes", data[:0x190])
    trunc = tmp_path / "truncated"
    with open(core, "rb") as src, open(trunc, "wb") as dst:
        dst.write(src.read(size // 2))
    cases["truncated"] = str(trunc)
    bad = bytearray(data[:0x2000])
    bad[0x190 + 12:0x190 + 20] = b"\xff" * 8           # first note's name/desc sizes
    f("corrupt-notes", bytes(bad))
    expect = {
        "empty": "too short", "text": "bad magic", "short-elf": "too short",
        "headers-only": "", "no-notes": "", "truncated": "truncated",
        "corrupt-notes": "",
    }
    for name, path in cases.items():
        r = ukdbg("core", path, "-c", "bt")
        one_line_error(r, path, expect[name])
    one_line_error(ukdbg("core", app_path("nullwrite"), "-c", "bt"), "not a core")
    line = one_line_error(ukdbg("core", linux_core, "-c", "bt"))
    assert linux_core in line
    one_line_error(ukdbg("core", tmp_path / "nonexistent"), "cannot open")
    one_line_error(ukdbg("core", tmp_path), "not a regular file")
    r = ukdbg("core")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    r = ukdbg("core", "--help")
    assert r.returncode == 0 and "ukdbg core" in r.stdout


# --- fuzzing: mutated cores must give a one-line error or work -------------------------
@pytest.fixture(scope="module")
def small_core():
    core, _ = core_of("nullwrite", mem=2)
    with open(core, "rb") as f:
        return f.read()


def _open_and_run(path):
    from ukdbg.errors import CoreFormatError
    from ukdbg.inspect import render, report
    from ukdbg.inspect.commands import CommandError, execute
    from ukdbg.inspect.session import open_core
    try:
        s = open_core(path)
    except CoreFormatError as e:
        msg = str(e)
        assert msg and "\n" not in msg and path in msg
        return "rejected"
    try:
        for c in ("info", "bt", "frame 1", "regs", "x/8xg $rsp", "x/16xb $pc", "disas",
                  "sym $pc", "console", "mem", "help"):
            try:
                render.plain(execute(s, c))
            except CommandError as e:
                assert "\n" not in str(e)
        render.plain(report.build(s, core=path))
    finally:
        s.close()
    return "opened"


mutation = st.tuples(st.one_of(st.integers(0, 0x1000), st.integers(0, 0x210000)),
                     st.binary(min_size=1, max_size=8))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(muts=st.lists(mutation, min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 0x210000)))
def test_fuzz_mutated_cores(tmp_path, small_core, muts, cut):
    data = bytearray(small_core)
    for off, b in muts:
        if off < len(data):
            data[off:off + len(b)] = b[:len(data) - off]
    if cut is not None:
        del data[cut:]
    p = str(tmp_path / "fuzz.core")
    with open(p, "wb") as f:
        f.write(data)
    _open_and_run(p)


def test_fuzz_through_the_cli(tmp_path, small_core):
    """A few mutated cores through the real command: exit 0 or one line, never a
    traceback (helpers.ukdbg asserts that)."""
    import random
    rnd = random.Random(5)
    for i in range(12):
        data = bytearray(small_core)
        for _ in range(4):
            off = rnd.randrange(0, 0x1000)
            data[off] = rnd.randrange(256)
        if i % 3 == 0:
            del data[rnd.randrange(0, len(data)):]
        p = tmp_path / f"m{i}.core"
        p.write_bytes(bytes(data))
        r = ukdbg("core", p, "-c", "info; bt; regs; disas; mem")
        if r.returncode == 1 and r.stdout == "":
            one_line_error(r)
        else:
            assert r.returncode in (0, 1) and "internal" not in r.stdout, r.stdout


# --- serving the core to gdb --------------------------------------------------------------
@pytest.mark.gdb
def test_gdb_server_is_read_only(tmp_path):
    core, _ = core_of("recursion")
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", "core", "--gdb", "127.0.0.1:0",
                          core], stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        line = p.stderr.readline()
        m = re.search(r"target remote ([^']+)'", line)
        assert m, line
        addr = m.group(1)
        r = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"target remote {addr}",
                            "-ex", "bt 3", "-ex", "print depth", "-ex", "x/2xg $sp",
                            "-ex", "set var depth = 5", "-ex", "print depth",
                            "-ex", "stepi", "-ex", "print $pc == 0x100f14",
                            app_path("recursion")],
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert "#0  " in out and "recurse (depth=32)" in out, out
        assert "$1 = 32" in out
        assert "$2 = 32" in out                     # the write was refused
        assert re.search(r"^0x[0-9a-f]+:\s+0x[0-9a-f]+\s+0x[0-9a-f]+", out, re.M)
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(10)


@pytest.mark.lldb
def test_lldb_opens_the_served_core():
    from helpers import lldb_path
    core, _ = core_of("nullwrite")
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", "core", "--gdb", "127.0.0.1:0",
                          core], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = p.stderr.readline()
        port = re.search(r"target remote [^']*:(\d+)'", line).group(1)
        r = subprocess.run([lldb_path(), "--batch", "-o",
                            f"target create {app_path('nullwrite')}",
                            "-o", f"gdb-remote {port}", "-o", "register read rip rsp",
                            "-o", "detach"],
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert "stop reason = signal SIGSEGV" in out, out
        assert "nullwrite.hvt`crash_here" in out
        s = __import__("ukdbg.inspect.session", fromlist=["open_core"]).open_core(core)
        assert re.search(rf"rip = {s.regs.rip:#018x}", out), out
        assert re.search(rf"rsp = {s.regs.rsp:#018x}", out), out
        s.close()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        p.wait(10)
