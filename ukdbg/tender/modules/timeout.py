"""ukdbg/tender/modules/timeout.py: --timeout SECONDS ends a guest that runs too long.

An ITIMER_REAL timer raises SIGALRM, which tender/events.py keeps blocked except inside
KVM_RUN and events.wait(): the guest stops between two exits as Killed(SIGALRM,
"timeout"), exit status 124 (as timeout(1)); dumpcore's ending hook writes its core.
"""

import _signal

from ...target import SIGALRM, Killed


def _expired(m, signo):
    return Killed(SIGALRM, "timeout")


def setup(m, opts) -> None:
    # Blocked from now on: an early expiry waits for the loop instead of killing us.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, (SIGALRM,))
    m.events.watch_signal(SIGALRM, _expired)
    _signal.setitimer(_signal.ITIMER_REAL, opts.timeout)
    m.ending_hooks.append(end)


def end(m, stop) -> None:
    _signal.setitimer(_signal.ITIMER_REAL, 0)
