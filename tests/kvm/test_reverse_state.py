"""Exactness of reverse execution: whole states (registers, FPU, all of memory) reached
going backwards (and forward again) equal those forward execution showed there."""

import os
import random

import pytest

from reverse_support import machine, symbol, whole_state
from ukdbg.target import Breakpoint, Stepped

pytestmark = pytest.mark.kvm
SEED = int(os.environ.get("UKDBG_REVERSE_SEED", "11"))


def _forward_phase(eng, m, rnd, n):
    """n random stepi/continue commands; the state and rip after each."""
    states, cmds, rips = [whole_state(m)], [None], [eng._rip()]
    for _ in range(n):
        c = "s" if rnd.random() < 0.6 else "c"
        stop = eng.resume(step=c == "s")
        assert isinstance(stop, (Stepped, Breakpoint)), stop
        states.append(whole_state(m))
        cmds.append(c)
        rips.append(eng._rip())
    return states, cmds, rips


@pytest.mark.parametrize("limit_kib", [256 << 10, 160], ids=["256MiB", "160KiB-thinned"])
def test_states_equal_both_ways(app, limit_kib):
    """A 160 KiB bound makes the store thin checkpoints all along."""
    rnd = random.Random(SEED)
    m, t, eng = machine(app("rev"), 200)
    eng.store.limit = limit_kib << 10
    try:
        bps = {symbol(m, "work"), symbol(m, "round_"), symbol(m, "rt_puts")}
        for a in bps:
            assert eng.add_sw_breakpoint(a)
        states, cmds, rips = _forward_phase(eng, m, rnd, 150)
        arrival = [r in bps for r in rips]
        i = len(states) - 1
        compared = mismatches = 0
        for _ in range(220):
            ops = ["bc"]
            if cmds[i] == "s":
                ops += ["bs"] * 3
            if i + 1 < len(states) and cmds[i + 1] == "s":
                ops.append("s")
            if any(arrival[i + 1:]):
                ops.append("c")
            op = rnd.choice(ops)
            if op == "bs":
                eng.reverse(True)
                i -= 1
            elif op == "bc":
                earlier = [j for j in range(i) if arrival[j]]
                eng.reverse(False)
                i = earlier[-1] if earlier else 0
            elif op == "s":
                eng.resume(step=True)
                i += 1
            else:
                eng.resume()
                i = next(j for j in range(i + 1, len(states)) if arrival[j])
            compared += 1
            if whole_state(m) != states[i]:
                mismatches += 1
        print(f"\nstate equality (seed {SEED}): {compared} positions compared, "
              f"{mismatches} mismatches, {len(eng.store.all)} checkpoints, "
              f"{eng.store.thinned} thinned")
        assert compared >= 200 and mismatches == 0
        assert limit_kib > 160 or eng.store.thinned > 0
    finally:
        m.close()
