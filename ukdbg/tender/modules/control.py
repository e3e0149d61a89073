"""ukdbg/tender/modules/control.py: open the control socket (docs/control.md) lazily but early.

On by default (off with --no-control), so start-up must stay cheap: a one-shot
ITIMER_REAL timer raises SIGALRM OPEN_AFTER seconds after set-up, and the vCPU thread
opens the socket then (tender/events.py delivers it between two exits); a guest that
ends sooner never pays for it. When SIGALRM is taken (--timeout, --core-on ALRM), it
opens at once. Opening costs well under 1 ms (control_listener.py imports only C-level
modules; the protocol and json load with the first request).
"""

import _signal

OPEN_AFTER = 0.01         # seconds
SIGALRM = 14


def setup(m, opts) -> None:
    m.control = None
    m.control_ended = False
    m.ending_hooks.append(_end)
    if SIGALRM in m.events.signal_handlers:     # --timeout (or --core-on ALRM) owns it
        _open(m)
        return
    # Blocked from now on, as events.py keeps it: an early expiry waits for the loop.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, (SIGALRM,))
    m.events.watch_signal(SIGALRM, _on_alarm)
    _signal.setitimer(_signal.ITIMER_REAL, OPEN_AFTER)


def _on_alarm(m, signo):
    _open(m)
    return None


_on_alarm.quiet = True      # our own timer: not an event of the guest's history


def _open(m) -> None:
    if m.control is None and not m.control_ended:
        from .control_listener import open_control
        open_control(m)


def _end(m, stop) -> None:
    if m.events.signal_handlers.get(SIGALRM) is _on_alarm:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
    m.control_ended = True
    if m.control is not None:
        m.control.end(m, stop)
