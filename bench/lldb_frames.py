#!/usr/bin/env python3
"""bench/lldb_frames.py: the frames gdb and lldb show on the crash fixtures (issue 12).

For each crash fixture of tests/e2e/test_lldb_frames.py and each situation it covers
(live at a breakpoint in a function with callers, live at the crash, on the core the
crash wrote), one Markdown table row: gdb's `bt`, lldb's `bt` with no set-up command
(`lldb APP -o 'gdb-remote HOST:PORT'`, `lldb APP -c CORE`), and whether gdb's frames
are lldb's first ones (same functions, same pcs where gdb prints one): the test's
check. lldb also shows the runtime's frames below main, which gdb hides. The driving
and parsing are the test's own (tests/lldb_support.py). Prints; asserts nothing.

usage: .venv/bin/python bench/lldb_frames.py [--app nullwrite ...] [--situation core ...]
"""

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
from gdbguest import app_path  # noqa: E402
from helpers import gdb_path, lldb_path  # noqa: E402
from lldb_support import (CRASHES, SITUATIONS, breakpoint_pair, core_pair,  # noqa: E402
                          crash_core, crash_pair, gdb_frames, gdb_prefix_of_lldb,
                          lldb_frames)


def pair(app, situation):
    """(gdb's output, lldb's output) of `bt` for app in situation."""
    if situation == "breakpoint":
        return breakpoint_pair(app)
    if situation == "crash":
        return crash_pair(app)
    with tempfile.TemporaryDirectory(prefix="ukdbg-lldb-frames-") as d:
        _, cores = crash_core(app, d)
        if len(cores) != 1:
            return f"{len(cores)} cores written", ""
        return core_pair(app, cores[0])


LABELS = {"breakpoint": "live, breakpoint", "crash": "live, crash", "core": "core"}


def shown(frames):
    """'f < g x3 < main (5)': innermost first, a run of one function counted once."""
    runs = []
    for f, _ in frames:
        if runs and runs[-1][0] == f:
            runs[-1][1] += 1
        else:
            runs.append([f, 1])
    names = " < ".join(f if n == 1 else f"{f} x{n}" for f, n in runs)
    return f"{names or '(none)'} ({len(frames)})"


def version(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return (r.stdout.strip().splitlines() or ["?"])[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", nargs="+", choices=list(CRASHES), default=list(CRASHES))
    ap.add_argument("--situation", nargs="+", choices=SITUATIONS, default=list(SITUATIONS))
    a = ap.parse_args()
    if not lldb_path():
        print("lldb is not installed: no lldb frame table")
        return 0
    if not gdb_path():
        print("gdb is not installed: no lldb frame table")
        return 0
    missing = [app for app in a.app if not os.path.exists(app_path(app))]
    if missing:
        sys.exit(f"bench/lldb_frames.py: {app_path(missing[0])} is missing "
                 f"(run `make fixtures`)")
    print(f"{version(['gdb', '--version'])}; {version([lldb_path(), '--version'])}")
    print("frames innermost first; gdb stops at main (backtrace past-main off)")
    print()
    print("| fixture | situation | gdb | lldb, no set-up command | gdb's a prefix of lldb's |")
    print("|---|---|---|---|---|")
    yes = rows = 0
    for app in a.app:
        for situation in a.situation:
            try:
                gdb_out, lldb_out = pair(app, situation)
            except (AssertionError, OSError, subprocess.TimeoutExpired) as e:
                # a guest that did not start or a debugger that hung: a row saying so
                err = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
                print(f"| {app} | {LABELS[situation]} | error: {err} | | no |")
                rows += 1
                continue
            g, l = gdb_frames(gdb_out), lldb_frames(lldb_out)
            ok = bool(g) and gdb_prefix_of_lldb(g, l)
            yes, rows = yes + ok, rows + 1
            print(f"| {app} | {LABELS[situation]} | {shown(g)} | {shown(l)} | "
                  f"{'yes' if ok else 'no'} |", flush=True)
    print()
    print(f"{yes} of {rows} rows: gdb's frames are lldb's first ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
