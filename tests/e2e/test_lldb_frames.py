"""lldb against gdb on real crashes, live and on cores: `lldb APP -o 'gdb-remote ADDR'`
and `lldb APP -c CORE` with no other set-up command must show every frame gdb shows
(same function, same pc where gdb prints one, in the same order).

lldb also shows the runtime frames below main (rt_start, _start), which gdb hides by
default ("backtrace past-main"): gdb's list must be a prefix of lldb's.
"""

import os
import re
import subprocess

import pytest

from gdbguest import Guest, app_path
from helpers import lldb_path, ukdbg

pytestmark = [pytest.mark.kvm, pytest.mark.gdb, pytest.mark.lldb]

# fixture -> a breakpoint in a function with callers (the live stop before the crash)
CRASHES = {"nullwrite": "crash_here", "divzero": "divide", "recursion": "recurse",
           "abort": "rt_abort", "regs": "load_regs_and_fault"}


def gdb_frames(out):
    """[(function, pc or None)] of a gdb `bt`."""
    frames = []
    for line in out.splitlines():
        m = re.match(r"#(\d+)\s+(?:(0x[0-9a-f]+) in )?(\S+) \(", line)
        if m and int(m.group(1)) == len(frames):
            frames.append((m.group(3), int(m.group(2), 16) if m.group(2) else None))
    return frames


def lldb_frames(out):
    """[(function, pc)] of an lldb `bt` (an inlined frame is named by its callee)."""
    frames = []
    out = out.rsplit("(lldb) bt", 1)[-1]
    for m in re.finditer(r"frame #(\d+): (0x[0-9a-f]+) \S+?`(?:\S+ \[inlined\] )?([\w.]+)",
                         out):
        if int(m.group(1)) == len(frames):
            frames.append((m.group(3), int(m.group(2), 16)))
    return frames


def assert_same(gdb_out, lldb_out):
    g, l = gdb_frames(gdb_out), lldb_frames(lldb_out)
    assert len(g) >= 2, gdb_out
    assert [f for f, _ in l[:len(g)]] == [f for f, _ in g], (g, l, lldb_out)
    for (_, gpc), (_, lpc) in zip(g, l):
        assert gpc is None or gpc == lpc, (g, l)


def lldb(*argv, timeout=120):
    r = subprocess.run([lldb_path(), "-b", "--no-lldbinit", *argv], capture_output=True,
                       text=True, timeout=timeout)
    return r.stdout + r.stderr


def live_pair(app, gdb_cmds, lldb_args):
    with Guest(app) as g:
        gdb_out = g.gdb(*gdb_cmds, "bt")
    with Guest(app) as g:
        lldb_out = lldb(g.app, "-o", f"gdb-remote {g.remote()}", *lldb_args)
    return gdb_out, lldb_out


@pytest.mark.parametrize("app", sorted(CRASHES))
def test_live_breakpoint(app):
    fn = CRASHES[app]
    gdb_out, lldb_out = live_pair(app, [f"break {fn}", "continue"],
                                  ["-o", f"breakpoint set --name {fn}", "-o", "continue",
                                   "-o", "bt"])
    assert "stop reason = breakpoint 1.1" in lldb_out, lldb_out
    assert_same(gdb_out, lldb_out)


@pytest.mark.parametrize("app", sorted(CRASHES))
def test_live_crash(app):
    # lldb -b stops running -o commands at a crash and runs the -k ones.
    gdb_out, lldb_out = live_pair(app, ["continue"], ["-o", "continue", "-k", "bt"])
    assert re.search(r"stop reason = signal SIG(SEGV|FPE|ABRT|ILL)", lldb_out), lldb_out
    assert_same(gdb_out, lldb_out)


@pytest.mark.parametrize("app", sorted(CRASHES))
def test_core(app, tmp_path):
    r = ukdbg("run", "--mem=8", app_path(app), cwd=tmp_path)
    assert r.returncode != 0
    (core,) = [p for p in os.listdir(tmp_path) if p.endswith(".core")]
    core = os.path.join(tmp_path, core)
    gdb_out = subprocess.run(["gdb", "-nx", "-batch", app_path(app), core, "-ex", "bt"],
                             capture_output=True, text=True, timeout=60).stdout
    lldb_out = lldb(app_path(app), "-c", core, "-o", "bt")
    assert re.search(r"stop reason = signal SIG(SEGV|FPE|ABRT|ILL)", lldb_out), lldb_out
    assert_same(gdb_out, lldb_out)
    # gdb still sees one thread: the OpenBSD notes lldb reads stay invisible to it.
    threads = subprocess.run(["gdb", "-nx", "-batch", app_path(app), core,
                              "-ex", "info threads"], capture_output=True, text=True,
                             timeout=60).stdout
    assert len(re.findall(r"^\*?\s+\d+\s+LWP", threads, re.M)) == 1, threads
    assert "has terminated" not in threads, threads
