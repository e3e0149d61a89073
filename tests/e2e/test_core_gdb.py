"""Cores of real crashes, read by stock gdb (and lldb): signal, frame 0 at the faulting
line, the callers above it, the exact registers and the globals; live dumps
(--core-on), SIGQUIT and --timeout; SSE state."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, ukdbg

pytestmark = [pytest.mark.kvm, pytest.mark.gdb]
MEM = 8
FIXTURES = os.path.join(ROOT, "fixtures")


def src_line(loc):
    """The text of 'apps/x.c:12' in the fixtures' sources."""
    path, line = loc.rsplit(":", 1)
    with open(os.path.join(FIXTURES, path)) as f:
        return f.read().splitlines()[int(line) - 1]


def gdb(app_path, core, *cmds, past_main=False):
    args = ["gdb", "-nx", "-batch", app_path, core]
    if past_main:
        args[4:4] = ["-ex", "set backtrace past-main on"]
    for c in cmds:
        args += ["-ex", c]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def frames(out):
    """[(function, 'file:line' or None)] of a gdb `bt`."""
    out_frames = []
    for line in out.splitlines():
        m = re.match(r"#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \(.*?\)(?: at (\S+:\d+))?", line)
        if m and int(m.group(1)) == len(out_frames):
            out_frames.append((m.group(2), m.group(3)))
    return out_frames


def regs_of(out):
    return {m.group(1): int(m.group(2), 16)
            for m in re.finditer(r"^(\w+)\s+(0x[0-9a-f]+)", out, re.M)}


def printed_core(stderr):
    """The core path the monitor printed: its own line, or the crash report's."""
    m = re.search(r"^(?:ukdbg: core written to |core: )(\S+\.core(?:\.\d+)?)$", stderr, re.M)
    assert m, stderr
    return m.group(1)


def crash(app, name, *args, tmp, code, extra=()):
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--core-dir", tmp, *extra, app(name),
              *args)
    assert r.returncode == code, r.stderr
    core = printed_core(r.stderr)
    assert os.path.dirname(os.path.abspath(core)) == os.path.abspath(tmp)
    assert re.fullmatch(rf"{name}\.\d+\.core", os.path.basename(core))
    assert os.listdir(tmp) == [os.path.basename(core)], "temp file left behind"
    return core, r


# (app, args, exit status, signal, frame 0 (function, line), callers [(function, line)],
#  {gdb expression: expected value})
CRASHES = [
    ("nullwrite", (), 255, "SIGSEGV", ("crash_here", "apps/nullwrite.c:8"),
     [("main", "apps/nullwrite.c:14")], {"$_siginfo._sifields._sigfault.si_addr": "0x0"}),
    ("divzero", (), 255, "SIGFPE", ("divide", "apps/divzero.c:10"),
     [("main", "apps/divzero.c:16")], {"divisor": "0"}),
    ("ud2", (), 255, "SIGILL", ("do_ud2", "apps/ud2.c:8"), [("main", "apps/ud2.c:14")], {}),
    ("abort", (), 255, "SIGABRT", ("rt_hypercall", "rt/rt.h:30"),
     [("rt_halt", None), ("rt_abort", None), ("give_up", "apps/abort.c:8"),
      ("main", "apps/abort.c:14")], {}),
    ("assert", (), 255, "SIGABRT", ("rt_hypercall", "rt/rt.h:30"),
     [("rt_halt", None), ("rt_assert_fail", None), ("check_invariant", "apps/assert.c:8"),
      ("main", "apps/assert.c:14")], {}),
    ("recursion", (), 255, "SIGSEGV", ("recurse", "apps/recursion.c:16"),
     [("recurse", "apps/recursion.c:18")] * 31 + [("main", "apps/recursion.c:25")],
     {"recursion_sink": "0"}),
    ("regs", (), 255, "SIGILL", ("load_regs_and_fault", "apps/regs_asm.S:48"),
     [("main", "apps/regs.c:19")], {}),
    ("triple", (), 139, "SIGSEGV", ("triple_fault", "apps/triple.c:17"),
     [("main", "apps/triple.c:24")], {}),
    ("rowrite", (), 139, "SIGSEGV", ("write_rodata", "apps/rowrite.c:11"),
     [("main", "apps/rowrite.c:18")], {"ro_value": "42"}),
    ("textwrite", (), 139, "SIGSEGV", ("write_text", "apps/textwrite.c:11"),
     [("main", "apps/textwrite.c:18")], {}),
    ("mmio", (), 135, "SIGBUS", ("read_mmio", "apps/mmio.c:39"),
     [("main", "apps/mmio.c:51")], {}),
    ("badport", (), 159, "SIGSYS", ("poke_port", "apps/badport.c:9"),
     [("main", "apps/badport.c:16")], {}),
    ("badhypercall", (), 159, "SIGSYS", ("rt_hypercall", "rt/rt.h:30"),
     [("bad_hypercall", "apps/badhypercall.c:11"), ("main", "apps/badhypercall.c:18")], {}),
    ("hostileptr", (), 159, "SIGSYS", ("rt_hypercall", "rt/rt.h:30"),
     [("puts_bad_data", "apps/hostileptr.c:22"), ("main", "apps/hostileptr.c:49")],
     {"msg": r'"hostile\\n"'}),
    ("hostileptr", ("len",), 159, "SIGSYS", ("rt_hypercall", "rt/rt.h:30"),
     [("puts_bad_len", "apps/hostileptr.c:31"), ("main", "apps/hostileptr.c:43")], {}),
    ("hostileptr", ("struct",), 159, "SIGSYS", ("rt_outl", "rt/rt.h:40"),
     [("puts_bad_struct", "apps/hostileptr.c:36"), ("main", "apps/hostileptr.c:46")], {}),
    ("halt", (), 132, "SIGILL", ("do_hlt", "apps/halt.c:10"), [("main", "apps/halt.c:17")],
     {}),
    ("sse", ("crash",), 255, "SIGILL", ("load_xmm_and_fault", "apps/sse_asm.S:26"),
     [("main", "apps/sse.c:148")], {}),
]


@pytest.mark.parametrize("name,args,code,sig,frame0,callers,globs", CRASHES,
                         ids=[" ".join((c[0],) + c[1]) for c in CRASHES])
def test_crash_core_reads_like_a_process(app, tmp_path, name, args, code, sig, frame0,
                                         callers, globs):
    core, _r = crash(app, name, *args, tmp=str(tmp_path), code=code)
    exprs = list(globs) + ["rt_bi->mem_size", "(char *)rt_bi->cmdline",
                           "rt_boot_walltime > 0"]
    out = gdb(app(name), core, "bt", "info registers", *(f"p {e}" for e in exprs))
    assert "warning: core file may not match" not in out
    assert re.search(rf"Program terminated with signal {sig}, ", out), out
    fr = frames(out)
    assert fr[0] == frame0, out
    assert "FAULT" in src_line(frame0[1]) or frame0[1].startswith("rt/"), frame0
    assert [f for f, _ in fr[1:len(callers) + 1]] == [f for f, _ in callers], out
    for (f, loc), (gf, gloc) in zip(callers, fr[1:]):
        if loc:
            assert gloc == loc, out
    # every caller line calls the frame below it (the fixture's source agrees)
    below = frame0[0]
    for f, loc in [frame0] + callers:
        if loc and f != frame0[0]:
            call = {"rt_assert_fail": "assert("}.get(below, below + "(")   # a macro
            assert call in src_line(loc), (loc, below)
        below = f
    regs = regs_of(out)
    hit = re.search(r"^#0\s+(?:(0x[0-9a-f]+) in )?", out, re.M)
    if hit.group(1):
        assert regs["rip"] == int(hit.group(1), 16)
    assert regs["cs"] == 0x8 and regs["ss"] == 0x10
    values = re.findall(r"^\$\d+ = (.*)$", out, re.M)
    assert len(values) == len(exprs), out
    for (e, want), got in zip(globs.items(), values):
        assert re.fullmatch(want, got) or got.endswith(want), (e, got)
    assert values[len(globs)] == str(MEM << 20)
    assert values[len(globs) + 1].endswith('"' + " ".join(args) + '"')
    assert values[len(globs) + 2] == "1"


def test_regs_fixture_registers_are_exact(app, tmp_path):
    core, _ = crash(app, "regs", tmp=str(tmp_path), code=255)
    regs = regs_of(gdb(app("regs"), core, "info registers"))
    want = {"rax": 1, "rbx": 2, "rcx": 3, "rdx": 4, "rsi": 5, "rdi": 6, "rbp": 7, "r8": 8,
            "r9": 9, "r10": 10, "r11": 11, "r12": 12, "r13": 13, "r14": 14, "r15": 15}
    for r, k in want.items():
        assert regs[r] == k * 0x1111111111111111, r
    sym = gdb(app("regs"), core, "p $pc == &regs_loaded", "p/x $sp")
    assert "$1 = 1" in sym
    assert 0 < int(re.search(r"\$2 = (0x[0-9a-f]+)", sym).group(1), 16) < MEM << 20


def test_sse_core_has_the_xmm_values(app, tmp_path):
    core, _ = crash(app, "sse", "crash", tmp=str(tmp_path), code=255)
    out = gdb(app("sse"), core, *(f"p/x $xmm{k}.uint128" for k in range(16)),
              "p/x $mxcsr")
    vals = re.findall(r"^\$\d+ = (0x[0-9a-f]+)", out, re.M)
    assert len(vals) == 17, out
    for k in range(16):
        want = int.from_bytes(bytes([0x10 + k]) * 8 + bytes([0x80 + k]) * 8, "little")
        assert int(vals[k], 16) == want, (k, vals[k])
    assert int(vals[16], 16) & 0x1F80 == 0x1F80


def test_sse_internal_error_core(app, tmp_path):
    """PVM cannot emulate addps: an internal error, with a core at the addps; real KVM
    runs it (exit 0, no core)."""
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--core-dir", tmp_path, app("sse"),
              "arith")
    if r.returncode == 0:
        assert "sse: arith ok" in r.stdout and os.listdir(tmp_path) == []
        return
    assert r.returncode == 132, r.stderr
    core = printed_core(r.stderr)
    fr = frames(gdb(app("sse"), core, "bt"))
    assert fr[0] == ("do_addps", "apps/sse.c:68") and fr[1][0] == "arith"


def test_past_main_reaches_start(app, tmp_path):
    core, _ = crash(app, "nullwrite", tmp=str(tmp_path), code=255)
    fr = frames(gdb(app("nullwrite"), core, "bt", past_main=True))
    assert [f for f, _ in fr] == ["crash_here", "main", "rt_start", "_start"]


def test_no_core_and_exit_status_unchanged(app, tmp_path):
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--no-core", "--core-dir", tmp_path,
              app("nullwrite"))
    assert r.returncode == 255 and "core written" not in r.stderr
    assert os.listdir(tmp_path) == []
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--core-dir", tmp_path, app("hello"))
    assert r.returncode == 0 and r.stderr == "" and os.listdir(tmp_path) == []


def test_default_core_dir_is_cwd(app, tmp_path):
    r = ukdbg("run", f"--mem={MEM}", "--no-control", app("ud2"), cwd=tmp_path)
    assert r.returncode == 255
    (name,) = os.listdir(tmp_path)
    assert re.fullmatch(r"ud2\.\d+\.core", name)
    assert printed_core(r.stderr) == name


# --- live dumps, SIGQUIT, --timeout ----------------------------------------------------------
class Running:
    """A `ukdbg run` in the background with its stderr read line by line."""

    def __init__(self, *args, cwd):
        self.p = subprocess.Popen([sys.executable, "-m", "ukdbg", "run", *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=cwd)

    def wait_stdout(self, text, timeout=20):
        end = time.monotonic() + timeout
        buf = ""
        while text not in buf:
            assert time.monotonic() < end, f"no {text!r} in {buf!r}"
            buf += self.p.stdout.readline()
        return buf

    def wait_stderr(self, pattern, timeout=20):
        end = time.monotonic() + timeout
        while True:
            assert time.monotonic() < end, f"no {pattern!r} on stderr"
            line = self.p.stderr.readline()
            assert line, "monitor exited"
            assert "Traceback" not in line
            m = re.search(pattern, line)
            if m:
                return m

    def finish(self, timeout=30):
        out, err = self.p.communicate(timeout=timeout)
        assert "Traceback" not in err, err
        return self.p.returncode, out, err

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def test_live_core_on_signal_lets_the_guest_continue(app, tmp_path):
    r = Running(f"--mem={MEM}", "--no-control", "--core-dir", tmp_path, "--core-on", "USR2",
                app("loop"), cwd=tmp_path)
    try:
        r.wait_stdout("looping")
        cores = []
        for _ in range(2):
            time.sleep(0.3)
            r.p.send_signal(signal.SIGUSR2)
            cores.append(r.wait_stderr(r"core written to (.+)$").group(1))
        assert cores[1] == cores[0] + ".1"
        assert r.p.poll() is None, "the guest must go on running"
        counters = []
        for c in cores:
            out = gdb(app("loop"), c, "bt", "p spin_counter")
            assert "Program terminated with signal SIGUSR2" in out
            fr = frames(out)
            assert fr[0] == ("spin", "apps/loop.c:11") and fr[1][0] == "main", out
            counters.append(int(re.search(r"^\$1 = (\d+)", out, re.M).group(1)))
        assert 0 < counters[0] < counters[1]
        r.p.send_signal(signal.SIGTERM)
        code, _out, err = r.finish()
        assert code == 143 and "core written" not in err
        assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(c) for c in cores)
    finally:
        r.kill()


def test_live_core_during_a_hypercall_then_normal_exit(app, tmp_path):
    """`time` sleeps in POLL between lines: the dump catches it inside a hypercall; the
    guest then finishes normally with its own status and no further core."""
    r = Running(f"--mem={MEM}", "--no-control", "--core-dir", tmp_path, "--core-on", "USR2",
                app("time"), "8", cwd=tmp_path)
    try:
        r.wait_stdout("t=")
        r.p.send_signal(signal.SIGUSR2)
        core = r.wait_stderr(r"core written to (.+)$").group(1)
        code, out, err = r.finish()
        assert code == 0 and "solo5_exit(0)" in out and "core written" not in err
        got = gdb(app("time"), core, "bt", "p rt_boot_walltime > 0")
        fnames = [f for f, _ in frames(got)]
        assert "main" in fnames and fnames[0] in ("rt_hypercall", "rt_poll"), got
        assert "$1 = 1" in got
    finally:
        r.kill()


def test_sigquit_dumps_then_exits_131(app, tmp_path):
    r = Running(f"--mem={MEM}", "--no-control", "--core-dir", tmp_path, app("loop"),
                cwd=tmp_path)
    try:
        r.wait_stdout("looping")
        time.sleep(0.2)
        r.p.send_signal(signal.SIGQUIT)
        code, _out, err = r.finish()
        assert code == 131, err
        core = printed_core(err)
        out = gdb(app("loop"), core, "bt", "p spin_counter > 0")
        assert "Program terminated with signal SIGQUIT" in out
        assert frames(out)[0] == ("spin", "apps/loop.c:11") and "$1 = 1" in out
    finally:
        r.kill()


def test_timeout_leaves_a_core(app, tmp_path):
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--core-dir", tmp_path, "--timeout",
              "0.5", app("loop"))
    assert r.returncode == 124, r.stderr
    core = printed_core(r.stderr)
    out = gdb(app("loop"), core, "bt")
    assert frames(out)[0] == ("spin", "apps/loop.c:11")


@pytest.mark.lldb
def test_lldb_reads_a_core(app, tmp_path):
    core, _ = crash(app, "nullwrite", tmp=str(tmp_path), code=255)
    exe = app("nullwrite")
    # No set-up command: the core's OpenBSD notes let lldb load the image itself
    # (docs/core-format.md).
    lldb = next(filter(None, map(shutil.which, ("lldb", "lldb-16", "lldb-15", "lldb-14"))))
    r = subprocess.run([lldb, "--no-lldbinit", "--batch", exe, "--core", core,
                        "-o", "bt", "-o", "register read rip rbp"],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout
    assert "stop reason = signal SIGSEGV" in out, out + r.stderr
    assert re.search(r"frame #0: 0x[0-9a-f]+ nullwrite.hvt`crash_here .*nullwrite.c:8",
                     out), out
    assert re.search(r"frame #1: .*`main.*nullwrite.c:14", out), out
    regs = dict(re.findall(r"^\s+(rip|rbp) = (0x[0-9a-f]+)", out, re.M))
    gregs = regs_of(gdb(exe, core, "info registers rip rbp"))
    assert {k: int(v, 16) for k, v in regs.items()} == gregs, (out, gregs)


def test_guest_page_tables_are_followed(app, tmp_path):
    """`mmio` installs its own tables (0-1 GiB identity in 2 MiB pages, and virtual
    0x40000000 -> unbacked 0x200000000): the core's map comes from them, the unbacked
    range has no segment, and both its tables and the tender's are in the core."""
    from ukdbg.coredump.reader import CoreFile
    core, _ = crash(app, "mmio", tmp=str(tmp_path), code=135)
    with CoreFile.open(core) as c:
        regs = c.read_registers()
        assert regs.cr3 != 0x2000                        # the guest's own PML4
        regions = c.memory_map()
        assert regions[0].start == 0 and regions[-1].end == MEM << 20
        assert not any(r.start <= 0x40000000 < r.end for r in regions)
        t = c.translate(0x40000000)
        assert t and t.gpa == 0x200000000 and t.page_size == 2 << 20
        pml4e = int.from_bytes(c.read_physical(0x2000, 8), "little")   # the tender's
        assert pml4e & ~0xFFF == 0x3000 and pml4e & 3 == 3
        assert c.stop_reason().fault_addr == 0x200000000
        assert c.siginfo[0] == 7 and c.siginfo[3] == 0x200000000


@pytest.mark.parametrize("sig", ["USR1", "9", "29"])
def test_core_on_reserved_signal_is_a_usage_error(app, tmp_path, sig):
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--core-on", sig, app("hello"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("ukdbg: --core-on: signal ") and "USR2" in r.stderr
