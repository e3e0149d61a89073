#!/usr/bin/env python3
"""bench/hypercalls.py: what ukdbg's hypercall dispatch costs on top of a bare KVM exit.

The `hypercalls` fixture makes N PUTS and N WALLTIME calls (2N port-I/O exits). It runs
in-process twice per round, on freshly built machines:
  bare    a minimal loop: KVM_RUN, decode the exit, re-enter; nothing is dispatched
          (the guest ignores the results), HALT ends it
  ukdbg   the real vCPU loop (tender/loop.py) and hypercall modules, console to /dev/null
Rounds alternate (bare, ukdbg, bare, ukdbg, ...) because this host's timings drift.
Prints per-exit costs and the difference: the monitor's own cost per hypercall.
Target: <= 3 us per hypercall over the bare exit.

usage: bench/hypercalls.py [-n 100000] [--rounds 3]
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ukdbg.kvm.exits import IoOut  # noqa: E402
from ukdbg.tender import loop  # noqa: E402
from ukdbg import run as R  # noqa: E402


def machine(app, n, modules=True):
    m = R.prepare(["--mem=32", "--no-control", "--no-core", app, str(n)],
                  only=None if modules else (), warn=print)
    m.events.arm()
    return m


def bare(app, n):
    """KVM_RUN + exit decode only; returns (seconds, exits)."""
    m = machine(app, n, modules=False)
    run = m.vcpu.run
    exits = 0
    t = time.perf_counter()
    while True:
        ex = run()
        exits += 1
        if ex.__class__ is IoOut and ex.port == 0x508:
            break
    dt = time.perf_counter() - t
    m.close()
    return dt, exits


def full(app, n):
    m = machine(app, n)
    m.console.fds = [os.open(os.devnull, os.O_WRONLY)]
    exits = 0
    t = time.perf_counter()
    stop = loop.run(m)
    dt = time.perf_counter() - t
    exits = sum(m.stats.hypercalls)
    assert m.stats.hypercalls[2] >= n and m.stats.hypercalls[1] >= n, m.stats.hypercalls
    assert type(stop).__name__ == "Exited", stop
    m.close()
    return dt, exits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100000, help="PUTS and WALLTIME calls each")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--app", default=os.path.join(ROOT, "fixtures/build/hypercalls.hvt"))
    a = ap.parse_args()
    b_us, f_us = [], []
    for _ in range(a.rounds):
        dt, ex = bare(a.app, a.n)
        b_us.append(dt / ex * 1e6)
        dt, ex = full(a.app, a.n)
        f_us.append(dt / ex * 1e6)
    b, f = statistics.median(b_us), statistics.median(f_us)
    print(f"{2 * a.n} hypercalls ({a.n} PUTS + {a.n} WALLTIME) per run, {a.rounds} rounds, "
          "alternating")
    print(f"  bare KVM_RUN exit (minimal loop)   {b:7.2f} us/exit  "
          f"(rounds: {', '.join(f'{x:.2f}' for x in b_us)})")
    print(f"  ukdbg loop + dispatch              {f:7.2f} us/exit  "
          f"(rounds: {', '.join(f'{x:.2f}' for x in f_us)})")
    print(f"  ukdbg's own cost per hypercall     {f - b:7.2f} us      target <= 3 us: "
          f"{'met' if f - b <= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
