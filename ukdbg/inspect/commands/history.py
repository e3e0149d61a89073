"""ukdbg/inspect/commands/history.py: `history [N]`: the flight recorder's last events.

The ring of tender/flight.py as the core kept it (NT_UKDBG_FLIGHT, coredump/flight.py):
each hypercall with its arguments and results (sizes, not payloads), other exits,
signals, pauses and debugger or control actions, oldest first. The crash report shows
the last REPORT_EVENTS of them.
"""

from dataclasses import dataclass, field

from . import CommandError, optional_int

REPORT_EVENTS = 10


@dataclass
class EventRow:
    index: int
    time: float | None          # seconds since the guest started (None: unknown)
    rip: int
    where: str                  # symbol+offset of rip
    kind: str
    fields: dict
    text: str
    summary: str                # 'puts len=13': the line's event part

    def to_json(self):
        return {"index": self.index, "time": self.time, "rip": self.rip,
                "where": self.where, "kind": self.kind, "fields": self.fields,
                "text": self.text}


@dataclass
class HistoryView:
    rows: list = field(default_factory=list)
    capacity: int = 0
    total: int = 0               # events recorded in all
    not_kept: int = 0            # the oldest ones, pushed out of the ring
    not_shown: int = 0           # kept, but before the last N asked for
    recorded: bool = True        # False: the core has no flight recorder note

    def to_json(self):
        return {"events": [r.to_json() for r in self.rows], "capacity": self.capacity,
                "total": self.total, "not_kept": self.not_kept,
                "not_shown": self.not_shown, "recorded": self.recorded}


def rows(session, log, n=None) -> list:
    from ...coredump.flight import summary
    events = log.events if n is None else log.events[-n:] if n > 0 else []
    out = []
    for e in events:
        t = (e.t_ns - log.start_ns) / 1e9 if log.start_ns else None
        out.append(EventRow(e.index, t, e.rip, session.describe(e.rip) if e.rip else "",
                            e.kind, dict(e.fields), e.text, summary(e)))
    return out


def run(session, args):
    n = optional_int(args, "history", "a number of events")
    if n is not None and n < 0:
        raise CommandError("history: the number of events must be >= 0")
    try:
        log = session.flight_log()
    except ValueError as e:
        raise CommandError(str(e)) from None
    if log is None:
        return HistoryView(recorded=False)
    shown = rows(session, log, n)
    return HistoryView(shown, log.capacity, log.total, log.dropped,
                       len(log.events) - len(shown))
