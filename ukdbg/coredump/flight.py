"""ukdbg/coredump/flight.py: the NT_UKDBG_FLIGHT note, the flight recorder's ring in a core.

pack() is what the tender writes (tender/flight.py decodes its ring into generic events
first); unpack() is what `ukdbg core` and the crash report read. Layout, version 1
(docs/core-format.md), little-endian:

  head    u32 version, u32 capacity, u64 total events ever recorded,
          u64 start_ns, u64 dump_ns (CLOCK_MONOTONIC: the guest's start, the note's
          writing; start 0 = unknown), u32 n_kinds, u32 n_events
  kinds   n_kinds x {string name, u32 n_fields, n_fields x string}
  events  n_events x {u16 kind, u16 n_values, u32 text_len, u64 t_ns, u64 rip,
          n_values x u64, text_len bytes of UTF-8}, oldest first

A string is a u32 length and that many UTF-8 bytes (as in the other UKDBG notes).
"""

import struct

VERSION = 1
HEAD = struct.Struct("<IIQQQII")
EVENT = struct.Struct("<HHIQQ")
_U32 = struct.Struct("<I")
_U64_MASK = (1 << 64) - 1
MAX_TEXT = 4096


class FlightFormatError(ValueError):
    """The note is truncated or garbled (one line)."""


class Event:
    __slots__ = ("index", "t_ns", "rip", "kind", "fields", "text")

    def __init__(self, index, t_ns, rip, kind, fields, text):
        self.index, self.t_ns, self.rip = index, t_ns, rip
        self.kind, self.fields, self.text = kind, fields, text

    def __repr__(self):
        return f"Event({self.index}, {self.kind!r}, {self.fields!r}, {self.text!r})"


class FlightLog:
    __slots__ = ("capacity", "total", "start_ns", "dump_ns", "events")

    def __init__(self, capacity, total, start_ns, dump_ns, events):
        self.capacity, self.total = capacity, total
        self.start_ns, self.dump_ns, self.events = start_ns, dump_ns, events

    @property
    def dropped(self) -> int:
        """Events recorded before the oldest one kept."""
        return self.total - len(self.events)


def _string(s) -> bytes:
    b = s.encode("utf-8", "replace") if isinstance(s, str) else bytes(s)
    return _U32.pack(len(b)) + b


def pack(capacity: int, total: int, start_ns: int, dump_ns: int, events) -> bytes:
    """events: [(t seconds (monotonic), rip, kind, ((name, int), ...), text)], oldest first."""
    kinds = {}
    body = []
    for t, rip, kind, fields, text in events:
        key = (kind, tuple(n for n, _ in fields))
        k = kinds.get(key)
        if k is None:
            k = kinds[key] = len(kinds)
        tb = text.encode("utf-8", "replace")[:MAX_TEXT] if text else b""
        body.append(EVENT.pack(k, len(fields), len(tb), int(t * 1e9) & _U64_MASK,
                               (rip or 0) & _U64_MASK))
        if fields:
            body.append(struct.pack(f"<{len(fields)}Q",
                                    *(int(v) & _U64_MASK for _, v in fields)))
        body.append(tb)
    table = []
    for kind, names in kinds:
        table.append(_string(kind) + _U32.pack(len(names)) + b"".join(map(_string, names)))
    return (HEAD.pack(VERSION, capacity, total, start_ns & _U64_MASK, dump_ns & _U64_MASK,
                      len(kinds), len(events)) + b"".join(table) + b"".join(body))


def _need(data, pos, n, what):
    if pos + n > len(data):
        raise FlightFormatError(f"flight recorder note truncated in {what} "
                                f"(needs {pos + n} bytes, has {len(data)})")


def _read_string(data, pos, what):
    _need(data, pos, 4, what)
    (n,) = _U32.unpack_from(data, pos)
    _need(data, pos + 4, n, what)
    return bytes(data[pos + 4:pos + 4 + n]).decode("utf-8", "replace"), pos + 4 + n


def unpack(data) -> FlightLog:
    """Decode a NT_UKDBG_FLIGHT desc; FlightFormatError for a bad one."""
    data = bytes(data)
    _need(data, 0, HEAD.size, "its header")
    version, capacity, total, start_ns, dump_ns, n_kinds, n_events = HEAD.unpack_from(data)
    if version != VERSION:
        raise FlightFormatError(f"flight recorder note version {version} is not known "
                                f"(this ukdbg reads version {VERSION})")
    # Each kind takes >= 8 bytes and each event >= EVENT.size: bound the counts by
    # the note's size before looping, so a garbled count fails at once.
    if n_kinds * 8 > len(data) or n_events * EVENT.size > len(data):
        raise FlightFormatError(f"flight recorder note claims {n_kinds} kinds and "
                                f"{n_events} events, more than its {len(data)} bytes hold")
    if total < n_events:
        raise FlightFormatError(f"flight recorder note keeps {n_events} events of "
                                f"{total} recorded")
    pos = HEAD.size
    kinds = []
    for i in range(n_kinds):
        name, pos = _read_string(data, pos, f"kind {i}")
        _need(data, pos, 4, f"kind {i}")
        (nf,) = _U32.unpack_from(data, pos)
        pos += 4
        if nf * 4 > len(data) - pos:
            raise FlightFormatError(f"flight recorder note: kind {i} claims {nf} fields")
        names = []
        for _ in range(nf):
            fname, pos = _read_string(data, pos, f"kind {i}")
            names.append(fname)
        kinds.append((name, tuple(names)))
    events = []
    first = total - n_events
    for i in range(n_events):
        _need(data, pos, EVENT.size, f"event {i}")
        k, nv, tl, t_ns, rip = EVENT.unpack_from(data, pos)
        pos += EVENT.size
        if k >= len(kinds):
            raise FlightFormatError(f"flight recorder note: event {i} has kind {k}, "
                                    f"the table has {len(kinds)}")
        kind, names = kinds[k]
        if nv != len(names):
            raise FlightFormatError(f"flight recorder note: event {i} has {nv} values, "
                                    f"its kind '{kind}' has {len(names)} fields")
        _need(data, pos, 8 * nv + tl, f"event {i}")
        vals = struct.unpack_from(f"<{nv}Q", data, pos)
        pos += 8 * nv
        text = data[pos:pos + tl].decode("utf-8", "replace")
        pos += tl
        events.append(Event(first + i, t_ns, rip, kind, dict(zip(names, vals)), text))
    return FlightLog(capacity, total, start_ns, dump_ns, events)


# --- one line per event, for `history` and the crash report ----------------------------------
_HEX = ("struct", "data", "cookie", "addr", "pc", "rip", "new_rip", "ready_set")
_SKIP_TEXT = ("struct",)       # the struct's own address: in --json only
# KVM_EXIT_* (coredump/ knows no kvm/): the exits a flight log shows
EXIT_NAMES = {2: "IO", 4: "DEBUG", 5: "HLT", 6: "MMIO", 8: "SHUTDOWN", 9: "FAIL_ENTRY",
              10: "INTR", 17: "INTERNAL_ERROR"}          # pointers: in --json, not in the text line


def summary(e: Event) -> str:
    """'puts len=13', 'exit reason=MMIO addr=0x...': the event without time and rip."""
    parts = [e.kind]
    f = e.fields
    if e.kind == "exit" and "reason" in f:
        parts.append(EXIT_NAMES.get(f["reason"], f"reason {f['reason']}"))
    if e.kind == "signal" and "signo" in f:
        from ..target import SIGNAL_NAMES
        parts.append(SIGNAL_NAMES.get(f["signo"], f"signal {f['signo']}"))
    if e.text:
        parts.append(e.text)
    for n, v in f.items():
        if n in _SKIP_TEXT or (e.kind == "exit" and n == "reason") or \
                (e.kind == "signal" and n == "signo"):
            continue
        parts.append(f"{n}={v:#x}" if n in _HEX else f"{n}={v}")
    return " ".join(parts)
