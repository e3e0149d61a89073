"""ukdbg/tender/loop.py: the vCPU loop (Solo5's hvt_vcpu_loop, Firecracker's run_emulation).

run(m) runs the guest until something ends or stops it and returns a target.Stop.
Hypercalls are dispatched from a table here (a module observes them by wrapping table
entries); every other exit goes to the modules' vmexit hooks first, then to
tender/endings.py's diagnosis. Hot path: keep attribute lookups out of the loop.
The flight recorder (tender/flight.py) is appended to inline: one tuple per hypercall.
"""

from time import monotonic as _mono

from ..errors import GuestMemoryError
from ..kvm.exits import INTERRUPTED, IoOut
from . import abi, endings
from .machine import HANDLED

_PIO_BASE = abi.PIO_BASE
_HC_MAX = abi.HC_MAX
_HC_HALT = abi.HC_HALT


def _hooks(m, hooks, ex):
    for hook in hooks:
        r = hook(m, ex)
        if r is not None:
            return r
    return None


def run(m):
    """Run the guest until it stops; returns the Stop (target.py)."""
    vcpu_run = m.vcpu.run
    table = m.hypercalls
    counts = m.stats.hypercalls
    hooks = m.vmexit_hooks
    observers = m.hypercall_observers
    events = m.events
    flight = m.flight
    record = flight.append if flight is not None else None
    raw = m.mem.raw                     # slices clamp at the end: never out of RAM
    mono = _mono
    io_out, pio_base, hc_max, from_bytes = IoOut, _PIO_BASE, _HC_MAX, int.from_bytes
    if m.debug is not None and m.debug.hold:
        m.debug.flush()                 # a stopped debugger's breakpoint changes
    while True:
        if events.pending or events.stop_request is not None:
            stop = events.service(())
            if stop is not None:
                return stop
        ex = vcpu_run()
        if ex.__class__ is io_out:
            nr = ex.port - pio_base
            if 0 <= nr < hc_max and ex.size == 4:
                gpa = from_bytes(ex.data, "little")
                counts[nr] += 1
                if observers:
                    for obs in list(observers):
                        obs(m)
                fn = table[nr]
                try:
                    if fn is None:      # HALT (the loop's own), or ends the run
                        if record is not None:      # record it first
                            record((mono(), ex.rip, nr, gpa, raw[gpa:gpa + 40]))
                        if nr == _HC_HALT:
                            return endings.halt(m, gpa)
                        return endings.bad_hypercall(m, nr, gpa)  # reserved 0, no device
                    stop = fn(m, gpa)
                except GuestMemoryError as e:
                    if record is not None and nr != _HC_HALT:
                        record((mono(), ex.rip, nr, gpa, raw[gpa:gpa + 40]))
                    return endings.hostile_pointer(m, nr, e)
                # the flight recorder: t as the call returns, the struct's 40 bytes
                # (tender/flight.py RAW) with its results
                if record is not None:
                    record((mono(), ex.rip, nr, gpa, raw[gpa:gpa + 40]))
                if stop is not None:
                    return stop
                continue
            # not a hypercall: the hooks, then endings.classify (a bad port)
        if record is not None and ex is not INTERRUPTED:   # signals: events.py records
            flight.exit(ex)
        if hooks:
            r = _hooks(m, hooks, ex)
            if r is HANDLED:
                continue
            if r is not None:
                return r
        if ex is INTERRUPTED:
            m.stats.count_exit(10)
            stop = events.service()
            if stop is not None:
                return stop
            continue
        return endings.classify(m, ex)
