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
    puts_args = mem.struct_reader(_PUTS)
    view, _ = mem.slicers()

    def puts(m, gpa):
        data, n = puts_args(gpa)
        console.write(view(data, n))

    poll_args, raw = mem.struct_window(_POLL)
    put_ready = _POLL_OUT.pack_into
    nets = m.net_fds                      # fd -> manifest index (modules.net fills it)
    net_poll = []                         # [select.poll of the net fds], made once

    def poll(m, gpa):
        """Sleep until the relative timeout passes or a net device is readable.

        Wakes early for the monitor's own events (a kick, a signal, a control request);
        those are serviced and the wait goes on, unless one needs the guest stopped, in
        which case the guest sees an early return (a spurious wake-up, which the
        solo5_yield() contract allows). A zero timeout (a guest busy-polling) does not
        wait: the net devices are polled once, and the monitor's events, whose signals
        stay blocked meanwhile, end the next KVM_RUN at once and are serviced there.
        """
        timeout_ns = poll_args(gpa)[0]
        stop = None
        if timeout_ns == 0:
            if not nets:
                put_ready(raw, gpa + _POLL_OUT_OFF, 0, 0)
                return None
            if not net_poll:
                net_poll.append(_poller(nets))
            events = net_poll[0].poll(0)
            ready = [fd for fd, _ in events] if events else ()
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
