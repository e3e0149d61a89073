"""coredump/flight.py (NT_UKDBG_FLIGHT) and tender/flight.py's decoding, without KVM:
round trips, and that any damaged note is a FlightFormatError, never another exception."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ukdbg.coredump import flight as F
from ukdbg.tender import abi
from ukdbg.tender.flight import FlightRecorder

EVENTS = [
    (10.0, 0x100332, "puts", (("struct", 0x7ffe60), ("data", 0x101000), ("len", 13)), ""),
    (10.5, 0x100f07, "gdb", (("addr", 0x104000), ("len", 4)), "write memory"),
    (11.0, 0x100313, "halt", (("struct", 0x7ffe40), ("cookie", 0), ("status", 3)), ""),
    (11.25, 0, "pause", (), "control"),
]


def note(events=EVENTS, total=None):
    return F.pack(1024, len(events) if total is None else total, int(9.5e9), int(12e9),
                  events)


def test_round_trip():
    log = F.unpack(note(total=40))
    assert (log.capacity, log.total, log.dropped) == (1024, 40, 36)
    assert (log.start_ns, log.dump_ns) == (int(9.5e9), int(12e9))
    got = [(e.index, e.t_ns, e.rip, e.kind, e.fields, e.text) for e in log.events]
    assert got == [(36 + i, int(t * 1e9), rip, kind, dict(f), text)
                   for i, (t, rip, kind, f, text) in enumerate(EVENTS)]
    assert F.summary(log.events[0]) == "puts data=0x101000 len=13"
    assert F.summary(log.events[1]) == "gdb write memory addr=0x104000 len=4"
    assert F.summary(log.events[3]) == "pause control"


def test_one_kind_table_entry_per_kind_and_fields():
    data = note(EVENTS + EVENTS)
    _v, _cap, _tot, _s, _d, n_kinds, n_events = F.HEAD.unpack_from(data)
    assert (n_kinds, n_events) == (4, 8)


def test_garbled_counts_fail_at_once():
    data = bytearray(note())
    struct.pack_into("<II", data, 32, 0xFFFFFFFF, 0xFFFFFFFF)
    with pytest.raises(F.FlightFormatError, match="more than its"):
        F.unpack(bytes(data))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400),
                                                          st.integers(0, 255)), max_size=6))
def test_any_damage_is_a_format_error_or_a_valid_log(cut, flips):
    data = bytearray(note(total=99))
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[:cut]) if cut < len(data) else bytes(data)
    try:
        log = F.unpack(data)
    except F.FlightFormatError as e:
        assert "\n" not in str(e)
        return
    for e in log.events:             # whatever decodes can be shown
        F.summary(e)


class _Stats:
    hypercalls = [0] * abi.HC_MAX


class _M:
    stats = _Stats()
    started = 1.0
    vcpu = None


def test_recorder_decodes_hypercall_tuples_lazily():
    fl = FlightRecorder(_M(), 3)
    puts = abi.HC_PUTS_ST.pack(0x2000, 5) + bytes(24)
    fl.append((2.0, 0x100332, abi.HC_PUTS, 0x1000, puts))
    fl.append((2.5, 0x100332, abi.HC_BLOCK_READ, 0x1000, b"\1" * 10))   # struct cut short
    fl.append((3.0, 0x100313, abi.HC_HALT, 0x1100, abi.HC_HALT_ST.pack(0, -1) + bytes(24)))
    fl.add("signal", rip=0x1234, signo=15)                  # pushes out the first
    ev = fl.events()
    assert [e[2] for e in ev] == ["block_read", "halt", "signal"]
    assert ev[0][3] == (("struct", 0x1000),) and ev[0][4] == "struct outside guest memory"
    assert dict(ev[1][3]) == {"struct": 0x1100, "cookie": 0, "status": 0xFFFFFFFF}
    assert ev[2][1] == 0x1234 and ev[2][3] == (("signo", 15),)
    _M.stats.hypercalls[abi.HC_PUTS] = 1
    _M.stats.hypercalls[abi.HC_BLOCK_READ] = 1
    _M.stats.hypercalls[abi.HC_HALT] = 1
    log = F.unpack(fl.note())
    assert (log.capacity, log.total, log.dropped) == (3, 4, 1)
    assert F.summary(log.events[2]) == "signal SIGTERM"
