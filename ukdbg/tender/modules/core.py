"""ukdbg/tender/modules/core.py: the always-present hypercalls: WALLTIME, PUTS, POLL (§9)."""

import time

from .. import abi

_WALL = abi.HC_WALLTIME_ST
_PUTS = abi.HC_PUTS_ST
_POLL = abi.HC_POLL_ST
_POLL_OUT = abi.POLL_OUT
_POLL_OUT_OFF = abi.POLL_OUT_OFF


def setup(m, opts) -> None:
    # Hot path (bench/hypercalls.py): guest memory through accessors bound once
    # (kvm/memory.py); console.write is looked up per call (reverse execution wraps it).
    mem = m.mem
    console = m.console
    walltime = mem.result_handler(_WALL, time.time_ns)
    puts_load, _, refuse = mem.request(_PUTS, 0, results=False)

    def puts(m, gpa):
        (data, n), buf = puts_load(gpa)
        if buf is None:
            refuse(data, n)
        console.write(buf)

    poll_args, raw = mem.struct_window(_POLL)
    put_ready = _POLL_OUT.pack_into
    nets = m.net_fds                      # fd -> manifest index (modules.net fills it)
    poll0 = None                          # select.poll(...).poll of the net fds, made once

    def poll(m, gpa):
        """Sleep until the relative timeout passes or a net device is readable.

        Wakes early for the monitor's own events (a kick, a signal, a control request);
        those are serviced and the wait goes on, unless one needs the guest stopped, in
        which case the guest sees an early return (a spurious wake-up, which the
        solo5_yield() contract allows). A zero timeout (a guest busy-polling) does not
        wait: the net devices are polled once, and the monitor's events, whose signals
        stay blocked meanwhile, end the next KVM_RUN at once and are serviced there.
        """
        nonlocal poll0
        timeout_ns = poll_args(gpa)[0]
        stop = None
        if timeout_ns == 0:
            if poll0 is None:
                if not nets:
                    put_ready(raw, gpa + _POLL_OUT_OFF, 0, 0)
                    return None
                poll0 = _poller(nets).poll
            events = poll0(0)
            if not events:
                put_ready(raw, gpa + _POLL_OUT_OFF, 0, 0)
                return None
            ready = [fd for fd, _ in events]
        else:
            fds = list(nets)
            deadline = time.monotonic() + timeout_ns / 1e9
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                ready, stop = m.events.wait(fds, remaining)
                if ready or stop is not None or remaining <= 0 or \
                        time.monotonic() >= deadline:
                    break
        ready_set = 0
        for fd in ready:
            ready_set |= 1 << nets[fd]
        put_ready(raw, gpa + _POLL_OUT_OFF, ready_set, len(ready))
        return stop

    m.hypercalls[abi.HC_WALLTIME] = walltime
    m.hypercalls[abi.HC_PUTS] = puts
    m.hypercalls[abi.HC_POLL] = poll


def _poller(fds):
    import select
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return p
