"""ukdbg/tender/modules/core.py: the always-present hypercalls: WALLTIME, PUTS, POLL (§9)."""

import time

from .. import abi

_WALL = abi.HC_WALLTIME_ST
_PUTS = abi.HC_PUTS_ST
_POLL = abi.HC_POLL_ST
_POLL_OUT = abi.POLL_OUT


def setup(m, opts) -> None:
    mem = m.mem
    console = m.console
    time_ns = time.time_ns

    def walltime(m, gpa):
        mem.pack(_WALL, gpa, time_ns())

    def puts(m, gpa):
        data, n = mem.unpack(_PUTS, gpa)
        console.write(mem.slice(data, n))

    m.hypercalls[abi.HC_WALLTIME] = walltime
    m.hypercalls[abi.HC_PUTS] = puts
    m.hypercalls[abi.HC_POLL] = poll


def poll(m, gpa):
    """Sleep until the relative timeout passes or a net device is readable.

    Wakes early for the monitor's own events (a kick, a signal, a control request);
    those are serviced and the wait goes on, unless one needs the guest stopped, in
    which case the guest sees an early return (a spurious wake-up, which the
    solo5_yield() contract allows).
    """
    timeout_ns, _, _ = m.mem.unpack(_POLL, gpa)
    m.mem.check_guest_write(gpa, _POLL.size)
    nets = m.net_fds                      # fd -> manifest index
    fds = list(nets)
    deadline = time.monotonic() + timeout_ns / 1e9
    stop = None
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        ready, stop = m.events.wait(fds, remaining)
        if ready or stop is not None or remaining <= 0 or time.monotonic() >= deadline:
            break
    ready_set = 0
    for fd in ready:
        ready_set |= 1 << nets[fd]
    m.mem.guest_write(gpa + abi.POLL_OUT_OFF, _POLL_OUT.pack(ready_set, len(ready)))
    return stop
