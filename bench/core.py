#!/usr/bin/env python3
"""bench/core.py: how long a core dump takes and how much disk it uses.

Boots a real crashing fixture (nullwrite) in-process at each memory size, lets it
crash, then makes the guest's memory hold TOUCH MiB of data (written from the host
into its heap, as if the guest had used it) and times dump() -- the same call the
crash path, --core-on and `monitor core` use, fsync and rename included -- N times.
Prints the median and worst time, the file's apparent and allocated size, and the
target from the issue (512 MiB: <= 20 ms, 4 GiB: <= 50 ms, allocated <= touched +
64 KiB).

usage: bench/core.py [-n 20] [--touch 7.5] [--mem 512 4096] [--dir DIR]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ukdbg import run  # noqa: E402
from ukdbg.tender.modules import dumpcore  # noqa: E402

TARGET_MS = {512: 20.0, 4096: 50.0}


def crashed_machine(app, mem_mb, core_dir):
    """A Machine whose guest has crashed (the Stop run.finish would get)."""
    m = run.prepare([f"--mem={mem_mb}", "--no-control", "--core-dir", core_dir, app],
                    only=("tender.modules.core", "tender.traps"), warn=lambda s: None)
    m.events.arm()
    fd = os.dup(1)
    nul = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nul, 1)
    try:
        stop = run.drive(m)
    finally:
        os.dup2(fd, 1)
        os.close(fd)
        os.close(nul)
    if stop.__class__.__name__ != "Crashed":
        sys.exit(f"expected a crash, got {stop!r}")
    if stop.regs is None and m.fault is not None:
        stop.regs = m.fault.regs
    return m, stop


def touch(m, mib):
    """Fill `mib` MiB of the guest heap (above the image, below the stack) with data."""
    n = int(mib * (1 << 20)) // 4096 * 4096
    start = 0x400000 if m.mem.size > 0x400000 + n + (1 << 20) else 0x200000
    pattern = os.urandom(1 << 16)
    for off in range(0, n, len(pattern)):
        m.mem.write(start + off, pattern[:min(len(pattern), n - off)])


def measure(app, mem_mb, mib, n, d):
    m, stop = crashed_machine(app, mem_mb, d)
    try:
        touch(m, mib)
        touched = m.mem.resident_bytes()
        times = []
        path = None
        for _ in range(n):
            t = time.perf_counter()
            path = dumpcore.dump(m, stop)
            times.append((time.perf_counter() - t) * 1000)
            st = os.stat(path)
            if _ != n - 1:
                os.unlink(path)
        st = os.stat(path)
        os.unlink(path)
        return times, touched, st.st_size, st.st_blocks * 512
    finally:
        m.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--touch", type=float, default=7.5, help="MiB of guest data")
    ap.add_argument("--mem", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--app", default=os.path.join(ROOT, "fixtures/build/nullwrite.hvt"))
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir "
                                                "under the current directory)")
    a = ap.parse_args()
    d = a.dir or tempfile.mkdtemp(prefix=".bench-core-", dir=".")
    ok = True
    try:
        for mem in a.mem:
            times, touched, size, alloc = measure(a.app, mem, a.touch, a.n, d)
            med, worst = statistics.median(times), max(times)
            target = TARGET_MS.get(mem)
            slack = alloc - touched
            print(f"--mem={mem:<5d} touched {touched / 2**20:6.2f} MiB   dump median "
                  f"{med:6.2f} ms (min {min(times):.2f}, max {worst:.2f}, N={len(times)})"
                  f"   file {size / 2**20:7.1f} MiB apparent, {alloc / 2**20:6.2f} MiB "
                  f"allocated (touched {'+' if slack >= 0 else '-'}"
                  f"{abs(slack) / 1024:.0f} KiB)")
            if target is not None:
                good = med <= target and slack <= 64 * 1024
                ok = ok and good
                print(f"             target: <= {target:.0f} ms and allocated <= touched "
                      f"+ 64 KiB: {'met' if good else 'NOT MET'}")
    finally:
        if a.dir is None:
            try:
                os.rmdir(d)
            except OSError:
                pass
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
