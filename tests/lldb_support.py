"""gdb's and lldb's backtraces of the crash fixtures, side by side: how
tests/e2e/test_lldb_frames.py and bench/lldb_frames.py stop each guest, drive both
debuggers (lldb with no set-up command) and read the frames they print."""

import os
import re
import subprocess

from gdbguest import Guest, app_path
from helpers import lldb_path, ukdbg

# fixture -> a breakpoint in a function with callers (the live stop before the crash)
CRASHES = {"nullwrite": "crash_here", "divzero": "divide", "recursion": "recurse",
           "abort": "rt_abort", "regs": "load_regs_and_fault"}

# where both debuggers look: live at CRASHES[app], live at the crash, on the core
SITUATIONS = ("breakpoint", "crash", "core")


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


def gdb_prefix_of_lldb(g, l):
    """gdb's frames g are lldb's first ones: same functions in the same order, and the
    same pc wherever gdb prints one."""
    return ([f for f, _ in l[:len(g)]] == [f for f, _ in g]
            and all(gpc is None or gpc == lpc for (_, gpc), (_, lpc) in zip(g, l)))


def lldb(*argv, timeout=120):
    """lldb -b ARGV, no lldbinit; its stdout+stderr."""
    r = subprocess.run([lldb_path(), "-b", "--no-lldbinit", *argv], capture_output=True,
                       text=True, timeout=timeout)
    return r.stdout + r.stderr


def live_pair(app, gdb_cmds, lldb_args):
    """(gdb's output, lldb's output), each attached to a fresh guest of its own."""
    with Guest(app) as g:
        gdb_out = g.gdb(*gdb_cmds, "bt")
    with Guest(app) as g:
        lldb_out = lldb(g.app, "-o", f"gdb-remote {g.remote()}", *lldb_args)
    return gdb_out, lldb_out


def breakpoint_pair(app):
    """Both debuggers' `bt` at a breakpoint in CRASHES[app]."""
    fn = CRASHES[app]
    return live_pair(app, [f"break {fn}", "continue"],
                     ["-o", f"breakpoint set --name {fn}", "-o", "continue", "-o", "bt"])


def crash_pair(app):
    """Both debuggers' `bt` at the crash (lldb -b stops running -o commands at a crash
    and runs the -k ones)."""
    return live_pair(app, ["continue"], ["-o", "continue", "-k", "bt"])


def crash_core(app, directory):
    """Run app to its crash in directory: (exit status, [paths of the cores written])."""
    r = ukdbg("run", "--mem=8", app_path(app), cwd=directory)
    cores = [os.path.join(directory, p) for p in sorted(os.listdir(directory))
             if p.endswith(".core")]
    return r.returncode, cores


def gdb_core(app, core, *cmds):
    """gdb -batch APP CORE -ex CMD...; its stdout."""
    argv = ["gdb", "-nx", "-batch", app_path(app), core]
    for c in cmds:
        argv += ["-ex", c]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout


def core_pair(app, core):
    """Both debuggers' `bt` on core."""
    return gdb_core(app, core, "bt"), lldb(app_path(app), "-c", core, "-o", "bt")
