#!/usr/bin/env python3
"""bench/trace.py: what hypercall tracing costs, on and off.

The `hypercalls` fixture makes N PUTS and N WALLTIME calls. It runs in-process on
freshly built machines with the real MODULES set-up and vCPU loop, console to /dev/null:
  off       no tracing option: the hypercall table holds the plain handlers (checked)
  summary   --trace-summary: counts and times each call
  lines     --trace=/dev/null: decodes and writes one line per call
Rounds alternate (off, summary, lines, off, ...) because this host's timings drift.
Prints the cost per hypercall of each mode and the difference to `off`.

usage: bench/trace.py [-n 20000] [--rounds 5]
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ukdbg.tender import loop  # noqa: E402
from ukdbg import run as R  # noqa: E402
from ukdbg.tender.modules import core  # noqa: E402

MODES = {"off": [], "summary": ["--trace-summary"], "lines": ["--trace=/dev/null"]}


def run(app, n, flags):
    m = R.prepare(["--mem=32", "--no-control", "--no-core", *flags, app, str(n)],
                  warn=print)
    if not flags:       # tracing off: nothing may stand between the loop and a handler
        assert m.hypercalls[2].__module__ == core.__name__, m.hypercalls[2]
    m.events.arm()
    m.console.fds = [os.open(os.devnull, os.O_WRONLY)]
    m.started = time.monotonic()
    t = time.perf_counter()
    stop = loop.run(m)
    dt = time.perf_counter() - t
    calls = sum(m.stats.hypercalls)
    assert type(stop).__name__ == "Exited", stop
    os.close(m.console.fds[0])
    m.close()
    return dt / calls * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="PUTS and WALLTIME calls each")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--app", default=os.path.join(ROOT, "fixtures/build/hypercalls.hvt"))
    a = ap.parse_args()
    res = {k: [] for k in MODES}
    for _ in range(a.rounds):
        for k, flags in MODES.items():
            res[k].append(run(a.app, a.n, flags))
    off = statistics.median(res["off"])
    print(f"{2 * a.n} hypercalls ({a.n} PUTS + {a.n} WALLTIME) per run, {a.rounds} rounds, "
          "alternating; us per hypercall (median), difference to tracing off")
    for k, xs in res.items():
        med = statistics.median(xs)
        print(f"  {k:8s} {med:7.2f} us   {med - off:+6.2f} us   "
              f"(rounds: {', '.join(f'{x:.2f}' for x in xs)})")
    print("  off: the hypercall table holds the plain handlers (asserted in every round)")


if __name__ == "__main__":
    main()
