#!/usr/bin/env python3
"""bench/reverse.py: reverse execution's figures (issue 11), in process on real KVM.

The engine is driven directly (the gdb stub's side of bs/bc; gdb adds its own
round trips, ~1 ms a command), on the deterministic `rev` fixture:
  reverse-stepi   the last checkpoint ~10,000 instructions back (a `continue` leg):
                  the first reverse-stepi, then the median of the next ones
  reverse-continue  a write watchpoint hit ~1 s of guest execution back (burn(K)
                  calibrated so the forward run takes ~1 s here)
  checkpoints     a 512 MiB guest that touched 8 MiB: the checkpoint holding those
                  8 MiB, an ordinary one (100 instructions later), a restore across
                  the 8 MiB, and their memory
  state equality  (tests/kvm/test_reverse_state.py) is printed by that test

usage: bench/reverse.py [-n 30] [--seconds 1.0]
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
from reverse_support import machine, symbol  # noqa: E402

APP = os.path.join(ROOT, "fixtures", "build", "rev.hvt")


def ms(xs):
    return (f"median {statistics.median(xs) * 1000:8.2f} ms  (min {min(xs) * 1000:.2f}, "
            f"max {max(xs) * 1000:.2f}, N={len(xs)})")


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def _to_burn_end(burn):
    """A machine at touch() with its last checkpoint at burn(): the instructions of
    burn(burn) in between, in one `continue` leg."""
    m, t, eng = machine(APP, f"3 {burn}")
    eng.auto_checkpoints = False
    eng.add_sw_breakpoint(symbol(m, "burn"))
    eng.resume()
    eng._checkpoint("bench")
    eng.remove_sw_breakpoint(symbol(m, "burn"))
    eng.add_sw_breakpoint(symbol(m, "touch"))
    eng.resume()
    return m, t, eng


def bench_stepi(n, burn=1450):
    m, t, eng = _to_burn_end(burn)
    try:
        steps = 0
        eng._restore(eng.anchor)            # count the leg's instructions once
        while eng._rip() != symbol(m, "touch"):
            eng.dbg.resume(step=True)
            steps += 1
    finally:
        m.close()
    m, t, eng = _to_burn_end(burn)
    try:
        first, _ = timed(lambda: eng.reverse(True))
        rest = [timed(lambda: eng.reverse(True))[0] for _ in range(n)]
        print(f"reverse-stepi, last checkpoint {steps} instructions back: "
              f"first {first * 1000:.2f} ms")
        print(f"reverse-stepi, the next {n}: {ms(rest)}")
        print(f"  ({eng.stats['steps']} single-steps, {eng.stats['restores']} restores, "
              f"{len(eng.store.all)} checkpoints in all)")
        return first, statistics.median(rest)
    finally:
        m.close()


def calibrate(seconds):
    """burn(K) iterations for ~seconds of forward guest execution here."""
    k = 20000
    while True:
        m, t, eng = machine(APP, f"3 {k}")
        try:
            eng.add_sw_breakpoint(symbol(m, "finish"))
            dt, _ = timed(eng.resume)
        finally:
            m.close()
        if dt > seconds / 4 or k > 1 << 26:
            return int(k * seconds / dt)
        k *= 4


def bench_rc(seconds):
    k = calibrate(seconds)
    m, t, eng = machine(APP, f"3 {k}")
    try:
        eng.add_sw_breakpoint(symbol(m, "finish"))
        fwd, _ = timed(eng.resume)          # rounds, then ~seconds in burn()
        eng.remove_sw_breakpoint(symbol(m, "finish"))
        assert eng.add_watchpoint("watch", symbol(m, "total"), 8)
        back, stop = timed(lambda: eng.reverse(False))
        where = m.describe(eng._rip())
        print(f"reverse-continue to a watchpoint hit {fwd:.2f} s of guest execution back "
              f"(burn {k} iterations): {back:.2f} s, {back / fwd:.2f}x the forward run; "
              f"stopped: {type(stop).__name__} at {where}")
        return fwd, back
    finally:
        m.close()


def bench_ckpt(n):
    m, t, eng = machine(APP, "1 0 2048", mem=512)
    eng.auto_checkpoints = False
    try:
        st = eng.store
        root_bytes = st.root.nbytes()
        eng.add_sw_breakpoint(symbol(m, "touch"))
        eng.resume()
        eng.remove_sw_breakpoint(symbol(m, "touch"))
        eng.add_sw_breakpoint(symbol(m, "finish"))
        eng._checkpoint("before")
        before = eng.anchor
        big, small, small_b, rest = [], [], [], []
        for _ in range(n):
            eng._restore(before)
            eng.resume()                    # touch(): 2048 pages = 8 MiB written
            dt, c = timed(lambda: st.take(eng.legs, eng._extra(), eng.events, 0.0))
            big.append(dt)
            big_b = c.nbytes()
            eng.anchor, eng.legs, eng.at_anchor = c, (), True
            for _ in range(100):
                eng.resume(step=True)
            dt, c2 = timed(lambda: st.take(eng.legs, eng._extra(), eng.events, 0.0))
            small.append(dt)
            small_b.append(c2.nbytes())
            eng.anchor, eng.legs, eng.at_anchor = c2, (), True
            dt, _ = timed(lambda: eng._restore(before))
            rest.append(dt)
            for x in (c2, c):               # keep the store small between samples
                st.drop(x, set())
        res = m.mem.resident_bytes()
        print(f"512 MiB guest, {res / 2**20:.1f} MiB touched; root checkpoint "
              f"{root_bytes / 1024:.0f} KiB (taken at the first instruction)")
        print(f"checkpoint after touch() wrote 8 MiB: {ms(big)}, {big_b / 2**20:.2f} MiB")
        print(f"checkpoint 100 instructions later:    {ms(small)}, "
              f"{statistics.median(small_b) / 1024:.1f} KiB (pages written + vCPU state)")
        print(f"restore across the 8 MiB:             {ms(rest)}")
        return big, small, rest
    finally:
        m.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    if not os.path.exists(APP):
        sys.exit("build the fixtures first: make -C fixtures")
    bench_stepi(a.n)
    bench_rc(a.seconds)
    bench_ckpt(max(3, a.n // 6))


if __name__ == "__main__":
    main()
