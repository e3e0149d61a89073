"""Support for the inspector's tests (tests/*/test_inspect*.py).

Cores of the crash fixtures are made once per test session by the real `ukdbg run`
(`core_of`); `boot` runs a fixture in-process to its final stop and returns the
Machine and a LiveTarget (as the crash report sees it); `gdb_bt` is stock gdb's
backtrace of a core, to check the unwinder against.
"""

import glob
import os
import re
import subprocess
import tempfile

from helpers import ROOT, ukdbg

BUILD = os.path.join(ROOT, "fixtures", "build")
MEM = 8

# name -> (app, guest args, frame-0 function, signal name); "name" is what goldens use.
CRASHES = {
    "nullwrite": ("nullwrite", (), "crash_here", "SIGSEGV"),
    "divzero": ("divzero", (), "divide", "SIGFPE"),
    "ud2": ("ud2", (), "do_ud2", "SIGILL"),
    "abort": ("abort", (), "rt_hypercall", "SIGABRT"),
    "assert": ("assert", (), "rt_hypercall", "SIGABRT"),
    "recursion": ("recursion", (), "recurse", "SIGSEGV"),
    "regs": ("regs", (), "load_regs_and_fault", "SIGILL"),
    "sse-crash": ("sse", ("crash",), "load_xmm_and_fault", "SIGILL"),
    "triple": ("triple", (), "triple_fault", "SIGSEGV"),
    "badport": ("badport", (), "poke_port", "SIGSYS"),
    "badhypercall": ("badhypercall", (), "rt_hypercall", "SIGSYS"),
    "hostileptr": ("hostileptr", (), "rt_hypercall", "SIGSYS"),
    "rowrite": ("rowrite", (), "write_rodata", "SIGSEGV"),
    "textwrite": ("textwrite", (), "write_text", "SIGSEGV"),
    "mmio": ("mmio", (), "read_mmio", "SIGBUS"),
    "halt": ("halt", (), "do_hlt", "SIGILL"),
}

_cores = {}
_dir = []


def app_path(app):
    return os.path.join(BUILD, f"{app}.hvt")


def core_dir():
    """One temporary directory for the session's cores, removed at exit."""
    if not _dir:
        import atexit
        import shutil
        _dir.append(tempfile.mkdtemp(prefix="ukdbg-inspect-"))
        atexit.register(shutil.rmtree, _dir[0], True)
    return _dir[0]


def core_of(name, mem=MEM):
    """(core path, CompletedProcess of the crashing `ukdbg run`), made once."""
    key = (name, mem)
    if key not in _cores:
        app, args, _f, _s = CRASHES[name]
        d = os.path.join(core_dir(), f"{name}-{mem}")
        os.makedirs(d, exist_ok=True)
        r = ukdbg("run", f"--mem={mem}", "--core-dir", d, app_path(app), *args)
        cores = glob.glob(os.path.join(d, "*.core"))
        assert len(cores) == 1, (r.stderr, cores)
        _cores[key] = (cores[0], r)
    return _cores[key]


def boot(path, *args, mem=MEM, policy="continue"):
    """Run a fixture in-process to its final stop: (Machine, stop). With policy
    'stop' the machine stays at the faulting instruction's trap handler."""
    from ukdbg import run as R
    m = R.prepare([f"--mem={mem}", "--no-core", "--no-control", path, *args],
                  only=[n for n, _ in R.MODULES if n != "tender.modules.report"],
                  warn=lambda s: None)
    import signal
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    handlers = {s: signal.getsignal(s) for s in m.events.blocked}
    m.events.arm()
    if getattr(m, "traps", None) is not None:
        m.traps.policy = policy
    fd = os.dup(1)
    nul = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nul, 1)
    try:
        stop = R.drive(m)
    finally:
        os.dup2(fd, 1)
        os.close(fd)
        os.close(nul)
        # The monitor blocks signals for its vCPU thread: give the test process (and
        # the gdb it starts later) its own back.
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)
    if stop.__class__.__name__ == "Crashed" and stop.regs is None and m.fault is not None:
        stop.regs = m.fault.regs
    return m, stop


def gdb_bt(image, core, extra=()):
    """Stock gdb's backtrace of a core: [(function or '<signal handler called>',
    'file:line' or None)]."""
    cmd = ["gdb", "-nx", "-batch", "-ex", "set backtrace past-main on",
           "-ex", "set print frame-arguments none", *extra, "-ex", "bt", image, core]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    frames = []
    for line in out.splitlines():
        m = re.match(r"#(\d+)\s+(?:0x[0-9a-f]+ in )?(<signal handler called>|\S+)"
                     r"(?: \(.*?\))?(?: at (\S+:\d+))?\s*$", line)
        if m and int(m.group(1)) == len(frames):
            frames.append((m.group(2), m.group(3)))
    return frames, out


def my_bt(session):
    """The inspector's backtrace in gdb_bt's form."""
    out = []
    for f in session.backtrace().frames:
        name = "<signal handler called>" if f.signal else f.func
        out.append((name, str(f.line) if f.line and not f.signal else None))
    return out
