"""Events: when two things ask the run loop to stop at once, an ending (a SIGTERM, a
control `stop`) is never lost to an interruption (a gdb client arriving)."""

from ukdbg.target import Interrupted, Killed
from ukdbg.tender.events import SIGIO, SIGTERM, Events


class Attach(Interrupted):
    pass


def test_an_ending_wins_over_an_interruption_in_either_order():
    ev = Events(m=None)
    ev._request(Attach())
    ev._request(Killed(SIGTERM, "signal"))
    assert isinstance(ev.service([]), Killed)
    ev._request(Killed(SIGTERM, "signal"))
    ev._request(Attach())
    assert isinstance(ev.service([]), Killed)


def test_otherwise_the_first_request_wins():
    ev = Events(m=None)
    first, second = Attach(), Interrupted()
    ev._request(first)
    ev._request(second)
    assert ev.service([]) is first
    k1, k2 = Killed(SIGTERM, "signal"), Killed(SIGIO, "signal")
    ev._request(k1)
    ev._request(k2)
    assert ev.service([]) is k1
