"""ukdbg/reverse/engine.py: reverse execution over checkpoints and deterministic re-runs.

There is no instruction counter in the guest, so a position in the execution is a
path: a checkpoint, then legs. A leg (stops, n, pre) means "run from here with this
stop set (breakpoint addresses, watchpoints, single-step, stops after hypercalls)
until its n-th stop" (pre: stop just *before* the n-th stop's write). Runs are
deterministic, so a path reaches the same state every time. Checkpoints form a tree:
each one is reached from its parent by its own legs, and holds the memory written
since its parent (checkpoint.py).

* Forward commands append a leg to the current position (its stop set is gdb's
  breakpoints and watchpoints at the time). A checkpoint is taken when the path from
  the last one got expensive to re-run, and at hypercalls during long runs.
* reverse-stepi: restore the checkpoint, re-run all legs but the last, then
  single-step through the last one (checkpointing every STEP_CKPT steps) to find how
  many instructions it had; go to one fewer.
* reverse-continue: re-run the current segment (checkpoint -> position) with gdb's
  breakpoints and watchpoints added, note every hit strictly before the position, go
  to the last one; if none, do the same with the segment before, up to the start.
  A write watchpoint is reported, as going backwards, *before* the write: the run to
  it stops at the write's MMIO exit without performing it and puts rip back on the
  writing instruction (decoded; a store with no other effect), else steps back.
* A stop reached counts: a breakpoint address reached by any stop is an arrival (the
  next resume steps over it), so combined runs count like single ones.
"""

import time
from collections import namedtuple

from ..errors import TargetError, UkdbgError
from ..target import (SIGTRAP, Breakpoint, Crashed, Exited, Interrupted, Killed, Stepped,
                      Stop, Watchpoint)
from .checkpoint import Store

CKPT_INTERVAL = 0.05      # s of re-run cost after which a position gets a checkpoint
STEP_CKPT = 1000          # single-steps between checkpoints when stepping back


class StopSet(namedtuple("StopSet", "sw hw watches step events")):
    """What stops a run: breakpoint addresses, (kind, addr, size) watchpoints,
    single-step, hypercalls."""
    __slots__ = ()

    def union(self, o):
        return StopSet(self.sw | o.sw, self.hw | o.hw,
                       tuple(sorted(set(self.watches) | set(o.watches))),
                       self.step or o.step, self.events or o.events)

    def bps(self):
        return self.sw | self.hw


EMPTY = StopSet(frozenset(), frozenset(), (), False, False)
STEP = EMPTY._replace(step=True)
Leg = namedtuple("Leg", "stops n pre")


class EventStop(Interrupted):
    """A hypercall completed and the engine asked to stop there (never seen by gdb)."""
    __slots__ = ()


class HistoryEdge(Stop):
    """Reverse execution reached the start of the history, or forward its end."""
    __slots__ = ("replaylog",)
    signal = SIGTRAP

    def __init__(self, where):
        self.replaylog = where


class HistoryError(UkdbgError):
    pass


class _Writer:
    """Engine.writer(): the debugger's writes, then a new start of history."""

    def __init__(self, eng):
        self.eng = eng

    def write_registers(self, regs):
        self.eng.dbg.write_registers(regs)
        self.eng.history_cut()

    def write_fpu(self, fpu):
        self.eng.dbg.write_fpu(fpu)
        self.eng.history_cut()

    def write_memory(self, addr, data):
        self.eng.dbg.write_memory(addr, data)
        self.eng.history_cut()


def _terminal(stop):
    if isinstance(stop, (Exited, Killed)):
        return True
    return isinstance(stop, Crashed) and stop.cause != "exception"


def _add_leg(legs, leg):
    if legs and legs[-1].stops == leg.stops and not legs[-1].pre and not leg.pre:
        return legs[:-1] + (Leg(leg.stops, legs[-1].n + leg.n, False),)
    return legs + (leg,)


class Engine:
    """Reverse execution for one machine; the gdb stub's resumable, breakpoints and
    watchpoints capabilities while it is on, plus reverse() and monitor commands."""

    def __init__(self, m, limit_bytes, replayer=None):
        self.m = m
        self.limit = limit_bytes
        # A replay's input cursor (save/restore) is part of every checkpoint; the
        # replayer prints only console output beyond its own high-water mark.
        self.replayer = replayer
        self.cursor = replayer.cursor if replayer is not None else None
        self.t = self.dbg = None
        self.store = None
        self.anchor = None            # the checkpoint the position is reached from
        self.legs = ()
        self.cost = 0.0               # measured run time of self.legs
        self.at_anchor = True         # the machine is exactly at self.anchor
        self.user = EMPTY             # gdb's breakpoints and watchpoints
        self.events = 0               # hypercalls completed
        self.stop_events = False
        self.console_pos = 0          # console bytes the guest has written so far
        self.console_hwm = 0          # ... the most it ever wrote (printed once)
        self.walltimes = {}           # event index -> WALLTIME answer (re-runs repeat it)
        self.marks = {}               # bookmark id -> (anchor, legs)
        self.next_mark = 1
        self.frontier_t = 0.0
        self.auto_checkpoints = True  # at stops whose path got expensive (benches: off)
        self.stats = {"restores": 0, "reruns": 0, "steps": 0}
        self._wrap_machine()

    # --- wiring ----------------------------------------------------------------------------
    def _wrap_machine(self):
        m = self.m
        from ..tender import abi
        table = m.hypercalls
        eng = self

        result_ranges = abi.result_ranges

        def wrap(nr, fn):
            def hypercall(m, gpa):
                try:
                    r = fn(m, gpa)
                finally:
                    # The handlers' writes are not seen by the tracker's wrappers
                    # (kvm/memory.py's hot-path accessors): mark what the ABI says.
                    if eng.store is not None:
                        mark = eng.store.tracker.mark
                        for a, n in result_ranges(nr, m.mem.read_clamped, gpa):
                            mark(a, n)
                eng.events += 1
                if r is None and eng.stop_events:
                    return EventStop()
                return r
            return hypercall

        wall = table[abi.HC_WALLTIME]
        if wall is not None:
            import time as _t

            def walltime(m, gpa):
                v = eng.walltimes.get(eng.events)
                if v is None:
                    v = eng.walltimes[eng.events] = _t.time_ns()
                m.mem.pack(abi.HC_WALLTIME_ST, gpa, v)
            if self.cursor is None:
                table[abi.HC_WALLTIME] = walltime
        for nr, fn in enumerate(table):
            if fn is not None:
                table[nr] = wrap(nr, fn)
        if self.replayer is not None:
            return
        cons = m.console
        write = cons.write

        def console_write(data):
            n = len(data)
            start = eng.console_pos
            eng.console_pos += n
            if eng.console_pos <= eng.console_hwm:
                return                        # re-executed output: printed already
            skip = max(0, eng.console_hwm - start)
            eng.console_hwm = eng.console_pos
            write(bytes(data[skip:]))
        cons.write = console_write

    def bind(self, target):
        """The LiveTarget asks for a capability: the history starts here."""
        if self.t is None:
            self.t = target
            self.dbg = target.debugger()
            self.store = Store(self.m, self.limit)
            self.anchor = self.store.take((), self._extra(), self.events, 0.0)
            self.anchor.label = "start"
            self._jumps_to(0)             # decode the image's branches once, now
        return self

    def _extra(self):
        m = self.m
        return {"console": self.console_pos, "fault": m.fault,
                "stats": list(m.stats.hypercalls), "dead": self.dbg.dead,
                "cursor": self.cursor.save() if self.cursor is not None else None}

    # --- the gdb stub's capabilities -------------------------------------------------------
    def add_sw_breakpoint(self, addr):
        ok = self.dbg.add_sw_breakpoint(addr)
        if ok:
            self.user = self.user._replace(sw=self.user.sw | {addr})
        return ok

    def remove_sw_breakpoint(self, addr):
        self.user = self.user._replace(sw=self.user.sw - {addr})
        return self.dbg.remove_sw_breakpoint(addr)

    def add_hw_breakpoint(self, addr):
        ok = self.dbg.add_hw_breakpoint(addr)
        if ok:
            self.user = self.user._replace(hw=self.user.hw | {addr})
        return ok

    def remove_hw_breakpoint(self, addr):
        self.user = self.user._replace(hw=self.user.hw - {addr})
        return self.dbg.remove_hw_breakpoint(addr)

    def add_watchpoint(self, kind, addr, size):
        ok = self.dbg.add_watchpoint(kind, addr, size)
        if ok:
            self.user = self.user._replace(
                watches=tuple(sorted(set(self.user.watches) | {(kind, addr, size)})))
        return ok

    def remove_watchpoint(self, kind, addr, size):
        self.user = self.user._replace(
            watches=tuple(w for w in self.user.watches if w != (kind, addr, size)))
        return self.dbg.remove_watchpoint(kind, addr, size)

    def interrupt(self):
        self.dbg.interrupt()

    # --- writes: the history starts again -------------------------------------------------
    def writer(self):
        """The writable capability: gdb's writes go through, and since re-runs from
        before them would not see them, the history restarts at the write."""
        return _Writer(self)

    def history_cut(self):
        self.store.reset()
        self.marks.clear()
        self.anchor = self.store.take((), self._extra(), self.events, 0.0)
        self.anchor.label = "write"
        self.legs, self.cost, self.at_anchor = (), 0.0, True
        self.frontier_t = 0.0

    def kill(self):
        return self.dbg.kill()

    # --- applying a stop set ---------------------------------------------------------------
    def _apply(self, s: StopSet):
        d = self.dbg
        for a in list(d.sw - s.sw):
            d.remove_sw_breakpoint(a)
        for a in s.sw - d.sw:
            if not d.add_sw_breakpoint(a):
                raise HistoryError(f"cannot plant a breakpoint at {a:#x} again")
        for a in list(d.hw - s.hw):
            d.remove_hw_breakpoint(a)
        for a in s.hw - d.hw:
            d.add_hw_breakpoint(a)
        have = {(w.kind, w.addr, w.size) for w in d.watch.watches}
        for w in have - set(s.watches):
            d.watch.remove(*w)
        for w in set(s.watches) - have:
            if not d.add_watchpoint(*w):
                raise HistoryError(f"cannot watch {w[1]:#x} again")

    def _user_set(self, step=False):
        return self.user._replace(step=step)

    def _rip(self):
        return self.t.kregs().rip

    def _resume1(self, step, events=False):
        self.stop_events = events
        try:
            return self.dbg.resume(step=step)
        finally:
            self.stop_events = False

    def _matches(self, s, stop, rip):
        if isinstance(stop, Crashed) and stop.cause == "exception":
            return True
        if s.step and isinstance(stop, (Stepped, Watchpoint, Crashed, Breakpoint)):
            return True
        if s.events and isinstance(stop, EventStop):
            return True
        if rip in s.sw or rip in s.hw:
            return True
        if isinstance(stop, Breakpoint) and stop.addr in s.bps():
            return True
        if isinstance(stop, Watchpoint):
            return any(h in s.watches for h in self.dbg.watch.last_hits)
        return False

    # --- restoring and re-running ----------------------------------------------------------
    def _restore(self, c):
        if c is self.store.base and self.at_anchor and self.anchor is c:
            return
        self.store.restore(c)
        e = c.extra
        self.events = c.events
        self.console_pos = e["console"]
        self.m.fault = e["fault"]
        self.m.stats.hypercalls[:] = e["stats"]
        self.dbg.dead = e["dead"]
        if self.cursor is not None and e["cursor"] is not None:
            self.cursor.restore(e["cursor"])
            self.replayer.resync()
        self.t.fault_view = None
        self.t.invalidate()
        self.anchor, self.legs, self.cost, self.at_anchor = c, (), 0.0, True
        self.stats["restores"] += 1

    def _checkpoint(self, label=""):
        """A checkpoint at the current position (it becomes the anchor)."""
        c = self.store.take(self.legs, self._extra(), self.events,
                            self.anchor.t + self.cost)
        c.label = label
        self.anchor, self.legs, self.cost, self.at_anchor = c, (), 0.0, True
        self._thin()
        return c

    def _thin(self):
        keep = {self.anchor, self.store.root}
        for c in self.store.thin(keep):
            for k, (a, legs) in list(self.marks.items()):
                if a is c:
                    self.marks[k] = (c.parent, tuple(c.legs) + tuple(legs))

    def _run(self, legs, user=None, hits=None, ckpt=False, include_end=False):
        """Run legs from the current state. With user (a StopSet), every hit of it
        strictly before the end is appended to hits as (anchor, legs, stop, rip).
        ckpt: take checkpoints on the way when re-running got expensive. Returns the
        last stop. The position (anchor, legs) follows."""
        stop = None
        for i, leg in enumerate(legs):
            s = leg.stops
            comb = s.union(user) if user is not None else s
            self._apply(comb)
            count = 0
            j = 0
            t0 = time.perf_counter()
            while count < leg.n:
                pre = leg.pre and count == leg.n - 1
                w = self.dbg.watch
                w.pre = set(s.watches) if pre else ()
                w.pre_hit = None
                try:
                    stop = self._resume1(comb.step, comb.events)
                finally:
                    w.pre = ()
                self.stats["reruns"] += 1
                if comb.step:
                    self.stats["steps"] += 1
                j += 1
                if _terminal(stop):
                    self.legs = self.legs + (Leg(comb, j, False),)
                    self.at_anchor = False
                    return stop
                if w.pre_hit is not None:
                    # The n-th stop, held just before its write (see _finish_pre).
                    done = self._finish_pre(stop, w.pre_hit)
                    self.at_anchor = False
                    if done is None:       # could not undo it: step back from after
                        self.legs = _add_leg(self.legs, Leg(comb, j, False))
                        stop = self._step_back(Watchpoint(*self._hit_of(s)))
                    else:
                        self.legs = _add_leg(self.legs, Leg(comb, j, True))
                        stop = done
                    count = leg.n
                    t0 = None
                    break
                rip = self._rip()
                is_s = self._matches(s, stop, rip)
                if is_s:
                    count += 1
                final = is_s and count == leg.n and i == len(legs) - 1
                if user is not None and hits is not None:
                    # A breakpoint reached at the position is not before it; a write
                    # that ends at the position is.
                    if (include_end or not final) and (rip in user.sw or rip in user.hw):
                        hits.append((self.anchor, _add_leg(self.legs, Leg(comb, j, False)),
                                     Breakpoint(rip, hardware=rip in user.hw), rip))
                    elif isinstance(stop, Watchpoint) and (w.last_write or not final):
                        # Going back to a write stops before it; to a read, after it
                        # (so a read that ends at the position is not before it).
                        uh = [h for h in w.last_hits if h in user.watches]
                        if uh:
                            hits.append((self.anchor,
                                         _add_leg(self.legs, Leg(comb, j, w.last_write)),
                                         Watchpoint(uh[0][0], stop.addr), rip))
                if ckpt and count < leg.n and time.perf_counter() - t0 > CKPT_INTERVAL:
                    # Re-anchor: the rest of this leg counts from here.
                    self.legs = _add_leg(self.legs, Leg(comb, j, False))
                    self.cost += time.perf_counter() - t0
                    self._checkpoint("scan")
                    legs_left = (Leg(s, leg.n - count, leg.pre),) + tuple(legs[i + 1:])
                    return self._run(legs_left, user, hits, ckpt, include_end)
            if t0 is None:
                continue                   # the pre leg appended itself
            self.cost += time.perf_counter() - t0
            self.legs = _add_leg(self.legs, Leg(comb, j, False) if user is not None
                                 else leg)
            self.at_anchor = False
        return stop

    def _hit_of(self, s):
        h = [x for x in self.dbg.watch.last_hits if x in s.watches] or \
            list(self.dbg.watch.last_hits) or [("watch", 0, 0)]
        return h[0][0], h[0][1]

    def _finish_pre(self, stop, pre_hit):
        """The write was held back and its instruction completed without it: put rip
        back on the writing instruction, when that is a plain store (decoded). Else
        perform the write (the state after it) and return None."""
        gpa, data = pre_hit
        k = self.m.vcpu.get_regs()
        w = _store_before(self.t, k, gpa, self.m.image.elf)
        if w is None:
            dc = self.m.debug
            (dc.write_through if dc is not None else self.m.mem.write)(gpa, data)
            self.t.invalidate()
            return None
        k.rip = w
        self.m.vcpu.set_regs(k)
        self.t.invalidate()
        return stop

    def _goto(self, anchor, legs):
        self._restore(anchor)
        stop = self._run(legs)
        return stop

    # --- forward ---------------------------------------------------------------------------
    def resume(self, step=False):
        s = self._user_set(step)
        self._apply(self.user)
        if self.replayer is not None and self.dbg.dead is not None:
            return self._edge("end")           # a replay's end: nothing after it
        # A continue also stops (for the engine only) after each hypercall: cheap
        # points for checkpoints during long runs. The leg counts those stops too.
        run = s if step else s._replace(events=True)
        k = 0
        t0 = since = time.perf_counter()
        while True:
            stop = self._resume1(step, events=not step)
            self.at_anchor = False
            k += 1
            if isinstance(stop, EventStop):
                rip = self._rip()
                if rip in s.sw or rip in s.hw:
                    stop = Breakpoint(rip, hardware=rip in s.hw)     # an arrival
                    break
                now = time.perf_counter()
                if now - since > CKPT_INTERVAL and self.auto_checkpoints:
                    self.legs = _add_leg(self.legs, Leg(run, k, False))
                    self.cost += now - t0
                    self._checkpoint("run")
                    k = 0
                    t0 = since = time.perf_counter()
                continue
            if isinstance(stop, Interrupted):
                if k > 1:
                    self.legs = _add_leg(self.legs, Leg(run, k - 1, False))
                self.cost += time.perf_counter() - t0
                return self._locate_interrupt(s)
            break
        self.legs = _add_leg(self.legs, Leg(run, k, False))
        self.cost += time.perf_counter() - t0
        return self._after_forward(stop)

    def _after_forward(self, stop):
        if _terminal(stop) and self.replayer is not None and \
                getattr(stop, "cause", None) != "divergence":
            # The end of the recording: forward execution stops there, and the
            # session goes on (reverse commands still work).
            self._apply(self.user)
            return self._edge("end")
        if not _terminal(stop) and self.auto_checkpoints:
            t = self.anchor.t + self.cost
            if self.cost > CKPT_INTERVAL or (t > self.frontier_t and self.cost > 0.01):
                self._checkpoint("stop")
            self.frontier_t = max(self.frontier_t, self.anchor.t + self.cost)
        self._apply(self.user)
        self.t.set_stop(stop)
        return stop

    def _locate_interrupt(self, s):
        """A Ctrl-C stops anywhere: find a located state as good, the first time the
        vCPU reached the same instruction after the same number of hypercalls."""
        rip, events = self._rip(), self.events
        anchor, legs = self.anchor, self.legs
        self._restore(anchor)
        self._run(legs)
        if self._rip() == rip and self.events >= events:
            return self._after_forward(Interrupted())     # the path's end is it
        probe = s._replace(sw=s.sw | {rip}, events=False)
        self._apply(probe)
        j = 0
        while True:
            stop = self._resume1(False)
            j += 1
            if _terminal(stop):
                return self._after_forward(stop)
            if self._rip() == rip and self.events >= events:
                break
        self.legs = _add_leg(self.legs, Leg(probe, j, False))
        return self._after_forward(Interrupted())

    # --- backward --------------------------------------------------------------------------
    def _edge(self, where):
        stop = HistoryEdge(where)
        self._apply(self.user)
        self.t.set_stop(stop)
        return stop

    def _expanded(self):
        """The position as (checkpoint, non-empty legs), or None at the root."""
        a, legs = self.anchor, self.legs
        while not legs:
            if a.parent is None:
                return None
            a, legs = a.parent, tuple(a.legs)
        return a, legs

    def reverse(self, step):
        """gdb's bs (step) or bc: the Stop to report."""
        try:
            stop = self._reverse_step() if step else self._reverse_continue()
        finally:
            self._apply(self.user)
        self.t.set_stop(stop)
        return stop

    def _reverse_step(self):
        pos = self._expanded()
        if pos is None:
            self._goto(self.store.root, ())
            return self._edge("begin")
        return self._step_back(Stepped(), pos)

    def _step_back(self, report, pos=None):
        """Go one instruction before the position (pos or the current one)."""
        anchor, legs = pos or self._expanded()
        while True:
            last = legs[-1]
            prefix = legs[:-1]
            if last.stops.step and not last.pre:
                legs = prefix + ((Leg(last.stops, last.n - 1, False),) if last.n > 1 else ())
                self._goto(anchor, legs)
                return report
            if not last.pre and self._fall_through_back(anchor, prefix, last):
                return report
            # Count the instructions of the last leg by single-stepping through it.
            self._goto(anchor, prefix)
            steps = self._count_steps(last)
            target = steps - (2 if last.pre else 1)
            if target >= 0:
                self._goto_steps(target)
                return report
            if not prefix:
                if anchor.parent is None:
                    self._goto(self.store.root, ())
                    return self._edge("begin")
                anchor, legs = anchor.parent, tuple(anchor.legs)
            else:
                legs = prefix

    def _fall_through_back(self, anchor, prefix, last):
        """The fast way back one instruction, without single-stepping the leg: when
        the instruction before the end of the leg is the one that falls through to
        its rip X (decoded from the function's start), re-run the leg with
        breakpoints on it and on X; if its last arrival is the stop right before
        the end, it is the instruction before (nothing else ran in between). True if
        done; else the caller single-steps."""
        x = self._rip()
        preds = set(self._jumps_to(x))
        prev = _fall_through_pred(self.t, self.m.image.elf, x)
        if prev is not None:
            preds.add(prev)
        if not preds or len(preds) > 64:
            return False
        probe = StopSet(frozenset(preds | {x}), frozenset(), (), False, False)
        comb = last.stops.union(probe)
        self._goto(anchor, prefix)
        self._apply(comb)
        j = count = 0
        j_prev = None
        while count < last.n:
            stop = self._resume1(comb.step, comb.events)
            j += 1
            if _terminal(stop):
                return False
            rip = self._rip()
            if self._matches(last.stops, stop, rip):
                count += 1
                if count == last.n:
                    break
            if rip in preds:
                j_prev = j
        if j_prev is None or j_prev != j - 1:
            return False
        self._goto(anchor, prefix + (Leg(comb, j_prev, False),))
        return True

    def _jumps_to(self, x):
        """Addresses of the direct `call`/`jmp` instructions to x in the image's code
        (decoded once)."""
        idx = getattr(self, "_branch_index", None)
        if idx is None:
            idx = self._branch_index = _branch_index(self.m.image)
        return idx.get(x, ())

    def _count_steps(self, leg):
        """From here, single-step until the leg's n-th stop; returns the number of
        instructions. Checkpoints every STEP_CKPT steps (self._stepmarks)."""
        s = leg.stops
        self._apply(STEP._replace(watches=s.watches))
        self._stepmarks = [(0, self.anchor, self.legs)]
        count = steps = 0
        while True:
            ev = self.events
            stop = self._resume1(True)
            steps += 1
            self.stats["steps"] += 1
            self.legs = _add_leg(self.legs, Leg(STEP, 1, False))
            self.at_anchor = False
            if _terminal(stop):
                return steps               # the leg ends where the history does
            rip = self._rip()
            hit = (rip in s.sw or rip in s.hw
                   or (isinstance(stop, Crashed) and stop.cause == "exception")
                   or (s.events and self.events > ev)
                   or (isinstance(stop, Watchpoint)
                       and any(h in s.watches for h in self.dbg.watch.last_hits)))
            if hit:
                count += 1
                if count == leg.n:
                    return steps
            if steps % STEP_CKPT == 0:
                self._checkpoint("step")
                self._stepmarks.append((steps, self.anchor, ()))

    def _goto_steps(self, target):
        base, anchor, legs = 0, None, None
        for n, a, lg in self._stepmarks:
            if n <= target and a in self.store.all:
                base, anchor, legs = n, a, lg
        r = target - base
        self._goto(anchor, legs + ((Leg(STEP, r, False),) if r else ()))

    def _reverse_continue(self):
        user = self.user
        pos = self._expanded()
        first = True
        while pos is not None:
            anchor, legs = pos
            self._restore(anchor)
            hits = []
            # The end of an earlier segment (a checkpoint) is before the position.
            self._run(legs, user=user, hits=hits, ckpt=True, include_end=not first)
            first = False
            if hits:
                a, hl, stop, rip = hits[-1]
                self._goto(a, hl)
                if isinstance(stop, Breakpoint):
                    return stop
                return Watchpoint(stop.kind, stop.addr)
            if anchor.parent is None:
                break
            pos = (anchor.parent, tuple(anchor.legs))
        self._goto(self.store.root, ())
        return self._edge("begin")

    # --- monitor commands ------------------------------------------------------------------
    def monitor_commands(self):
        return {"when": self.cmd_when, "goto": self.cmd_goto,
                "checkpoints": self.cmd_checkpoints}

    def _mark(self):
        for k, (a, legs) in self.marks.items():
            if a is self.anchor and legs == self.legs:
                return k
        k = self.next_mark
        self.next_mark += 1
        self.marks[k] = (self.anchor, self.legs)
        return k

    def cmd_when(self, target, args):
        k = self._mark()
        steps = sum(lg.n for lg in self.legs if lg.stops.step)
        stops = sum(lg.n for lg in self.legs if not lg.stops.step)
        return (f"position {k}: event {self.events} (hypercalls done), checkpoint "
                f"{self.anchor.id} + {stops} stop(s) + {steps} step(s), rip "
                f"{self._rip():#x}\n")

    def cmd_goto(self, target, args):
        if len(args) != 1:
            raise TargetError(22, "usage: monitor goto POSITION|start (POSITION from "
                                  "'monitor when')")
        if args[0] == "start":
            self._goto(self.store.root, ())
        else:
            try:
                k = int(args[0].rstrip(":"), 0)
            except ValueError:
                k = None
            if k not in self.marks:
                raise TargetError(22, f"monitor goto: no position '{args[0]}' (see "
                                      "'monitor when')")
            a, legs = self.marks[k]
            self._goto(a, legs)
        self._apply(self.user)
        self.t.set_stop(Stepped())
        return (f"now at event {self.events}, rip {self._rip():#x}; gdb's view is "
                "stale: 'maintenance flush register-cache' (flushregs)\n")

    def cmd_checkpoints(self, target, args):
        st = self.store
        out = [f"{len(st.all)} checkpoint(s), {st.nbytes / 2**20:.2f} MiB of "
               f"{st.limit / 2**20:.0f} MiB, {st.thinned} thinned"]
        for c in st.all:
            par = "-" if c.parent is None else str(c.parent.id)
            mark = " <- here" if c is self.anchor and not self.legs else ""
            out.append(f"  #{c.id:<4d} parent {par:>4s}  event {c.events:<6d} "
                       f"t {c.t:8.3f} s  {len(c.pages):6d} pages  "
                       f"{c.nbytes() / 1024:9.1f} KiB  {c.label}{mark}")
        return "\n".join(out) + "\n"


def _store_before(target, k, gpa, elf=None):
    """The address of the store instruction that ends at k.rip and writes gpa, when it
    has no effect besides that write (a mov to memory), else None. Instruction starts
    come from decoding forward from the start of the enclosing function (x86 cannot be
    decoded backwards reliably: a REX-prefixed store's tail is a store too); without a
    symbol, the longest candidate that decodes to exactly the gap is taken."""
    try:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
        from capstone.x86 import X86_OP_MEM
    except ImportError:
        return None
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    end = k.rip
    cands = []
    sym = elf.symbolize(end - 1) if elf is not None else None
    if sym is not None and 0 < sym[1] + 1 <= 0x4000:
        start = sym[0].value
        try:
            code = target.read_memory(start, end - start)
        except UkdbgError:
            code = b""
        last = None
        for i in md.disasm(code, start):
            last = i
            if i.address + i.size >= end:
                break
        if last is not None and last.address + last.size == end:
            cands = [last]
    if not cands:
        try:
            code = target.read_memory(end - 15, 15)
        except UkdbgError:
            return None
        for length in range(15, 0, -1):
            insns = list(md.disasm(code[15 - length:], end - length, 1))
            if insns and insns[0].size == length:
                cands.append(insns[0])
    regs = {"rax": k.rax, "rbx": k.rbx, "rcx": k.rcx, "rdx": k.rdx, "rsi": k.rsi,
            "rdi": k.rdi, "rbp": k.rbp, "rsp": k.rsp, "r8": k.r8, "r9": k.r9,
            "r10": k.r10, "r11": k.r11, "r12": k.r12, "r13": k.r13, "r14": k.r14,
            "r15": k.r15, "rip": end}
    for i in cands:
        ops = i.operands
        if not i.mnemonic.startswith("mov") or len(ops) != 2 or ops[0].type != X86_OP_MEM \
                or ops[1].type == X86_OP_MEM:
            continue
        mem = ops[0].mem
        base = i.reg_name(mem.base) if mem.base else None
        index = i.reg_name(mem.index) if mem.index else None
        if mem.segment or (base and base not in regs) or (index and index not in regs):
            continue
        ea = (regs[base] if base else 0) + (regs[index] * mem.scale if index else 0) + mem.disp
        t = target.translate(ea & (1 << 64) - 1)
        if t and t.gpa <= gpa < t.gpa + 64:
            return i.address
    return None


_FLOW = ("jmp", "ret", "call", "iret", "int", "syscall", "sysret", "hlt", "ud2", "out",
         "in", "loop", "jecxz", "jrcxz", "rdtsc", "rdrand", "rdseed")


def _fall_through_pred(target, elf, x):
    """The address of the instruction that ends at x and continues to x (not a
    jump, call, return, port access or trapped instruction), decoded forward from
    the start of x's function; None when there is none or it cannot be known."""
    sym = elf.symbolize(x) if elf is not None else None
    if sym is None or sym[1] == 0 or sym[1] > 0x4000:
        return None
    try:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    except ImportError:
        return None
    start = sym[0].value
    try:
        code = target.read_memory(start, x - start)
    except UkdbgError:
        return None
    last = None
    for i in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, start):
        last = i
    if last is None or last.address + last.size != x:
        return None
    m = last.mnemonic
    if m.startswith("j") or m.startswith(_FLOW) or m.startswith(("rep", "bnd")):
        return None
    return last.address


def _branch_index(image):
    """{target: [address of a direct call or jmp to it]} over the executable
    segments (a linear sweep; fixture and unikernel code has no data in text)."""
    out = {}
    try:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    except ImportError:
        return out
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.skipdata = True
    elf = image.elf
    for seg in image.segments:
        if "x" not in seg.perms:
            continue
        ph = [p for p in elf.segments if p.type == 1 and p.vaddr == seg.start]
        if not ph:
            continue
        code = elf.data[ph[0].offset:ph[0].offset + ph[0].filesz]
        for addr, _size, mnem, ops in md.disasm_lite(code, seg.start):
            if mnem in ("call", "jmp") and ops.startswith("0x"):
                try:
                    out.setdefault(int(ops, 16), []).append(addr)
                except ValueError:
                    pass
    return out
