"""Exactness of reverse execution: whole states (registers, FPU, all of memory) reached
going backwards (and forward again) equal those forward execution showed there."""

import os
import random

import pytest

from reverse_support import machine, recorded_replay, symbol, whole_state
from ukdbg.target import Breakpoint, Crashed, Stepped

pytestmark = pytest.mark.kvm
SEED = int(os.environ.get("UKDBG_REVERSE_SEED", "11"))


def _forward_phase(eng, m, rnd, n):
    """n random stepi/continue commands; the state and rip after each."""
    states, cmds, rips = [whole_state(m)], [None], [eng._rip()]
    for _ in range(n):
        c = "s" if rnd.random() < 0.6 else "c"
        stop = eng.resume(step=c == "s")
        assert isinstance(stop, (Stepped, Breakpoint, Crashed)), stop
        states.append(whole_state(m))
        cmds.append(c)
        rips.append(eng._rip())
        if isinstance(stop, Crashed):
            break                         # the guest's fault: the walk starts here
    return states, cmds, rips


def _walk(eng, m, rnd, bps, forward=150, ops_n=220):
    """Forward: random stepi/continue, whole states recorded. Then a random walk of
    bs, bc, stepi and continue from the end, each landing compared with the state
    forward execution showed there. Returns (compared, mismatches)."""
    for a in bps:
        assert eng.add_sw_breakpoint(a)
    states, cmds, rips = _forward_phase(eng, m, rnd, forward)
    arrival = [r in bps for r in rips]
    i = len(states) - 1
    compared = mismatches = 0
    for _ in range(ops_n):
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
    return compared, mismatches


@pytest.mark.parametrize("limit_kib", [256 << 10, 16], ids=["256MiB", "root+16KiB-thinned"])
def test_states_equal_both_ways(app, limit_kib):
    """A bound of the root checkpoint plus 16 KiB makes the store thin checkpoints
    all along (checkpoints follow re-run costs, so how many depends on the host)."""
    rnd = random.Random(SEED)
    m, t, eng = machine(app("rev"), 200)
    eng.store.limit = (limit_kib << 10) + (eng.store.root.nbytes() if limit_kib == 16 else 0)
    try:
        bps = {symbol(m, "work"), symbol(m, "round_"), symbol(m, "rt_puts")}
        compared, mismatches = _walk(eng, m, rnd, bps)
        print(f"\nstate equality (seed {SEED}): {compared} positions compared, "
              f"{mismatches} mismatches, {len(eng.store.all)} checkpoints, "
              f"{eng.store.thinned} thinned")
        assert compared >= 200 and mismatches == 0
        assert limit_kib > 16 or eng.store.thinned > 0
    finally:
        m.close()


def test_states_equal_both_ways_on_a_replay(app, tmp_path):
    """The same on a replay of the non-deterministic fixture: RDTSC/RDRAND answered
    from the recording, the cursor saved and restored with every checkpoint."""
    m, eng, cleanup = recorded_replay(tmp_path, app("nondet"), status=255)
    try:
        rnd = random.Random(SEED)
        bps = {symbol(m, "use_victim"), symbol(m, "monotonic_ns"), symbol(m, "rt_puts")}
        compared, mismatches = _walk(eng, m, rnd, bps, forward=80, ops_n=100)
        print(f"\nstate equality on a replay (seed {SEED}): {compared} positions "
              f"compared, {mismatches} mismatches, {len(eng.store.all)} checkpoints")
        assert compared >= 100 and mismatches == 0
    finally:
        cleanup()


def test_an_interrupted_continue_gets_a_position(app):
    """Ctrl-C stops anywhere; the engine moves to a located state (the first arrival
    at that instruction after as many hypercalls), from which going back and forth
    lands on the same states."""
    import threading
    # In process the events are not armed: the interrupt lands at the next exit
    # (finish()'s PUTS), a place with no breakpoint; gdb's Ctrl-C is tested e2e.
    m, t, eng = machine(app("rev"), "3 100000")
    try:
        eng.add_sw_breakpoint(symbol(m, "burn"))
        eng.resume()
        eng.remove_sw_breakpoint(symbol(m, "burn"))
        timer = threading.Timer(0.3, eng.interrupt)
        timer.start()
        stop = eng.resume()
        timer.join()
        from ukdbg.target import Interrupted
        assert isinstance(stop, Interrupted), stop
        here = whole_state(m)
        eng.resume(step=True)
        after = whole_state(m)
        assert after != here
        eng.reverse(True)
        assert whole_state(m) == here
        eng.resume(step=True)
        assert whole_state(m) == after
    finally:
        m.close()


def test_going_back_undoes_what_hypercalls_wrote(app, tmp_path):
    """BLOCK_READ fills a page the guest never writes itself (fixture blkrev), so KVM's
    dirty log cannot see it. On a replay of it, going back over reads of different
    sectors must bring the page's old contents back."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"".join(bytes([s + 1]) * 512 for s in range(4)))
    m, eng, cleanup = recorded_replay(tmp_path, app("blkrev"), 4,
                                      run_opts=(f"--block:storage={disk}",))
    try:
        eng.add_sw_breakpoint(symbol(m, "after_read"))
        buf = symbol(m, "buf")
        states, firsts = [], []
        for _ in range(4):
            assert isinstance(eng.resume(), Breakpoint)
            states.append(whole_state(m))
            firsts.append(m.mem.read(buf, 1)[0])
        assert firsts == [1, 2, 3, 4]            # each read changed the page
        for i in (2, 1, 0):
            eng.reverse(False)
            assert m.mem.read(buf, 1)[0] == i + 1
            assert whole_state(m) == states[i]
    finally:
        cleanup()
