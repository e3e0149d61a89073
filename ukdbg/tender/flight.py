"""ukdbg/tender/flight.py: the flight recorder, the last N events of a run (always on).

Every core and crash report carries what the guest did just before it ended: each
hypercall with its arguments and a summary of its result (sizes, never payloads), the
other exits, the monitor's signals, pauses, and the gdb or control actions that changed
the guest. `--flight N` keeps the last N (default 1024); `--flight 0` turns it off, and
then m.flight is None.

Hot path (docs/architecture.md, "The vCPU loop"): loop.py appends a hypercall inline as
one tuple (t, rip, nr, gpa, raw) to a deque(maxlen=N): t from time.monotonic(), rip
from kvm_run's synced registers (no ioctl), raw the hypercall struct's bytes *after* the
call (arguments and results in one slice). Nothing is decoded until a core or a report
asks (events(), note()); the note's layout is coredump/flight.py's.

For other modules (the debugger, the control socket, record/replay):

    fl = m.flight                      # None under --flight 0
    if fl is not None:
        fl.add("pause", source="control")                # kind, then named ints
        fl.add("gdb", text="write memory 0x1000 4 bytes", addr=0x1000, len=4)

add(kind, rip=None, text="", **fields): kind is a short name ("signal", "replay-diverge",
...), fields are ints (u64), text a short string; rip defaults to the guest's at the
last exit. Each distinct (kind, field names) becomes one entry of the note's kind table,
so new kinds need no format change. A driver that dispatches hypercalls outside
loop.run appends them as loop.py does and counts them in m.stats.hypercalls: total()
(events ever recorded, the note's first index) is derived from those counts.
"""

from _collections import deque
from time import monotonic

from ..kvm import uapi
from . import abi

DEFAULT = 1024
RAW = 40                 # bytes kept per hypercall: the largest struct (BLOCK)

# nr -> (struct, field names) of the hypercall struct, as the guest left it after the call
HC_FIELDS = {
    abi.HC_WALLTIME: (abi.HC_WALLTIME_ST, ("nsecs",)),
    abi.HC_PUTS: (abi.HC_PUTS_ST, ("data", "len")),
    abi.HC_POLL: (abi.HC_POLL_ST, ("timeout_ns", "ready_set", "ret")),
    abi.HC_BLOCK_WRITE: (abi.HC_BLOCK_ST, ("handle", "offset", "data", "len", "ret")),
    abi.HC_BLOCK_READ: (abi.HC_BLOCK_ST, ("handle", "offset", "data", "len", "ret")),
    abi.HC_NET_WRITE: (abi.HC_NET_ST, ("handle", "data", "len", "ret")),
    abi.HC_NET_READ: (abi.HC_NET_ST, ("handle", "data", "len", "ret")),
    abi.HC_HALT: (abi.HC_HALT_ST, ("cookie", "status")),
}
_I32 = ("ret", "status")
_EXIT_FIELDS = {}        # exit class -> its int fields recorded (exit())


class FlightRecorder:
    __slots__ = ("m", "capacity", "ring", "append", "others")

    def __init__(self, m, capacity: int):
        self.m = m
        self.capacity = capacity
        self.ring = deque(maxlen=capacity)
        self.append = self.ring.append       # loop.py's hot path calls this directly
        self.others = 0                      # events other than hypercalls, ever

    def rip(self) -> int:
        try:
            return self.m.vcpu.sync_rip()
        except Exception:                    # no kvm_run (a test's fake vCPU)
            return 0

    def add(self, kind: str, rip=None, text: str = "", **fields) -> None:
        """Record one event (see the module docstring)."""
        self.others += 1
        self.append((monotonic(), self.rip() if rip is None else rip, kind,
                     tuple(fields.items()), text))

    def exit(self, ex) -> None:
        """A vCPU exit that is not a hypercall (loop.py; a debugger's every step)."""
        cls = ex.__class__
        names = _EXIT_FIELDS.get(cls)
        if names is None:
            names = _EXIT_FIELDS[cls] = tuple(
                n for n in ("port", "addr", "length", "is_write", "exception", "pc",
                            "suberror") if isinstance(getattr(ex, n, None), (bool, int)))
        self.others += 1
        self.append((monotonic(), self.rip(), "exit",
                     (("reason", ex.reason),) + tuple((n, int(getattr(ex, n)))
                                                      for n in names), ""))

    def total(self) -> int:
        """Events recorded since the start (loop.py records every counted hypercall)."""
        return sum(self.m.stats.hypercalls) + self.others

    def events(self) -> list:
        """The ring, oldest first, decoded: [(t, rip, kind, ((name, int), ...), text)]."""
        out = []
        for t, rip, what, a, b in list(self.ring):
            if what.__class__ is not int:
                out.append((t, rip, what, a, b))
                continue
            name = abi.HC_NAMES.get(what)
            spec = HC_FIELDS.get(what)
            if name is None or spec is None:
                out.append((t, rip, "hypercall", (("nr", what), ("struct", a)), ""))
                continue
            st, names = spec
            if len(b) < st.size:
                out.append((t, rip, name, (("struct", a),),
                            "struct outside guest memory"))
                continue
            # ret and status are the guest's i32: kept as their 32 bits
            vals = st.unpack_from(b)
            out.append((t, rip, name, (("struct", a),) + tuple(
                (n, v & 0xFFFFFFFF if n in _I32 else v) for n, v in zip(names, vals)), ""))
        return out

    def note(self) -> bytes:
        """NT_UKDBG_FLIGHT's desc (docs/core-format.md)."""
        from ..coredump import flight as F
        start = getattr(self.m, "started", 0.0) or 0.0
        return F.pack(self.capacity, self.total(), int(start * 1e9),
                      int(monotonic() * 1e9), self.events())


def log(m, kind: str, text: str = "", **fields) -> None:
    """m.flight.add(...) when the recorder is on (for callers off the hot path)."""
    fl = m.flight
    if fl is not None:
        fl.add(kind, text=text, **fields)


def setup(m, opts) -> None:
    """Called by build_machine: before the first instruction, always."""
    n = getattr(opts, "flight", DEFAULT)
    if n <= 0:
        return
    m.flight = FlightRecorder(m, n)
    if m.caps.get("sync_regs", 0) & uapi.KVM_SYNC_X86_REGS:
        m.vcpu.enable_sync_regs()
