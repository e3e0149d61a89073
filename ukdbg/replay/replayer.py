"""ukdbg/replay/replayer.py: `ukdbg replay FILE`, another driver of the same vCPU loop.

A replay boots the recorded image in a fresh Machine with the recorded boot state
(memory size, TSC frequency, CPUID table, boot info, manifest, command line) and
replaces the hypercall table with handlers that check the guest's request against
the next recorded event and answer with the recorded result; RDTSC/RDTSCP/RDRAND/
RDSEED are trapped as when recording and answered from the stream. The loop, the
crash hooks, the cores, the crash report and the gdb stub are the live ones: a replay
is debugged exactly like a live run (docs/replay.md).

The input cursor (for reverse execution, which checkpoints the VM and re-executes):

    cursor = replayer.cursor
    cursor.position() -> (event_index, console_bytes)   how far the execution is
    state = cursor.save()        an immutable tuple: copy it, keep it with a checkpoint
    cursor.restore(state)        rewind (or fast-forward) the input to that point;
                                 then call replayer.resync() once the VM state matching
                                 it is loaded (it re-arms the pending position trap)

Console output during re-execution is suppressed by a high-water mark:
`replayer.printed` is the number of console bytes already shown, and a PUTS prints
only the part of its output beyond that mark. Restoring a cursor never lowers the
mark, so re-executing a stretch that was already printed prints nothing.
"""

import hashlib
import json
import os
import sys
import zlib

from ..errors import GuestMemoryError, UkdbgError, UsageError
from ..target import SIGTRAP, Crashed, Killed
from ..tender import abi
from ..tender.machine import HANDLED
from . import format as F
from . import traps

OWNER = "replay"
EXIT_DIVERGED = 125
EXIT_END_OF_RECORDING = 126
HC_SIZES = {abi.HC_WALLTIME: 8, abi.HC_PUTS: 16, abi.HC_POLL: 24, abi.HC_BLOCK_WRITE: 40,
            abi.HC_BLOCK_READ: 40, abi.HC_NET_WRITE: 32, abi.HC_NET_READ: 32}
_U64 = abi.HC_WALLTIME_ST
_RF_TF = (1 << 16) | (1 << 8)        # flags a debugger's stepping may leave differently
_MALFORMED = (F.struct.error, ValueError, KeyError, TypeError, IndexError)


class Diverged(Crashed):
    """The guest did something else than the recording says (exit 125)."""
    __slots__ = ("index",)

    def __init__(self, index, message, rip=None):
        super().__init__("divergence", SIGTRAP, message, rip=rip)
        self.index = index


class EndOfRecording(Crashed):
    """A recording cut short (a killed recorder, --record-limit) was replayed to its
    last complete event (exit 126)."""
    __slots__ = ("index",)

    def __init__(self, index, message, rip=None):
        super().__init__("end-of-recording", SIGTRAP, message, rip=rip)
        self.index = index


class _Stop(Exception):
    def __init__(self, stop):
        self.stop = stop


class Cursor:
    """Where the replay is in the recorded input (see the module docstring)."""
    __slots__ = ("events", "index", "console")

    def __init__(self, events):
        self.events = events
        self.index = 0            # the next event to consume
        self.console = 0          # console bytes this execution has produced

    def position(self) -> tuple:
        return (self.index, self.console)

    def save(self) -> tuple:
        return (self.index, self.console)

    def restore(self, state) -> None:
        index, console = state
        if not 0 <= index <= len(self.events):
            raise ValueError(f"cursor state {state!r} is outside the recording")
        self.index, self.console = index, console


def _hc_name(nr):
    return abi.HC_NAMES.get(nr, f"hypercall {nr}")


def describe_event(t, payload) -> str:
    """One line for an event, for divergence messages and --trace."""
    try:
        if t == F.R_HC:
            nr, flags, gpa, before, *_ = F.decode_hc(payload)
            return f"hypercall {_hc_name(nr)}(gpa={gpa:#x}, args={before.hex() or '-'})"
        if t == F.R_TRAP:
            kind, rip, value, aux = F.TRAP_ST.unpack(payload)
            return f"{F.TRAP_NAMES.get(kind, kind)} at {rip:#x} = {value:#x}"
        if t == F.R_EXT:
            kind, *words = F.EXT_HEAD.unpack_from(payload)
            return f"{F.EXT_NAMES.get(kind, kind)} at rip={words[16]:#x}"
        if t == F.R_END:
            return f"the end of the run ({json.loads(payload)['stop']['type']})"
    except (ValueError, KeyError, TypeError, F.struct.error):
        pass
    return f"a malformed record (type {t})"


class Replayer:
    def __init__(self, m, rec, trace=None):
        self.m = m
        self.rec = rec
        self.cursor = Cursor(rec.events)
        self.printed = 0                  # the console high-water mark
        self.trace = trace                # fd for --trace lines of traps/external events
        self.sites = {}
        for gva, kind, length, reg, bits in rec.meta.get("traps", []):
            self.sites[int(gva)] = traps.Site(int(gva), int(kind), int(length),
                                              reg or None, int(bits))
        self.pos_gva = None               # a position breakpoint (pending EXT event)
        self.stepping_over = False
        self.user_wrote = None            # event index of a debugger write in the replay
        self.end = None

    # --- set-up ---------------------------------------------------------------------------
    def install(self) -> None:
        m = self.m
        for nr in self.rec.meta.get("hypercalls", list(HC_SIZES)):
            if int(nr) in HC_SIZES:
                m.hypercalls[int(nr)] = self._hc(int(nr))
        dc = m.debug_control()
        dc.handlers[OWNER] = self.on_hit
        dc.emulators[OWNER] = self.emulate
        if self.sites:
            planted = dc.add_sw_many(list(self.sites), OWNER)
            if len(planted) != len(self.sites):
                raise UkdbgError("replay: could not plant a trap on every RDTSC/RDRAND")
        dc._install_hook()
        if self.sites:
            m.vmexit_hooks.insert(0, traps.fast_hook(
                m, self.sites, OWNER, self._fast_emulate, lambda gva: gva == self.pos_gva))
        m.vmexit_hooks.insert(0, self._step_hook)
        m.write_observers.append(self._user_write)

    def resync(self) -> None:
        """After cursor.restore() and loading the matching VM state: re-arm the
        position trap of a pending external event."""
        self._disarm_position()
        self.stepping_over = False
        self._next_is_ext(check_now=False)

    # --- events ---------------------------------------------------------------------------
    def _peek(self):
        c = self.cursor
        ev = c.events
        while c.index < len(ev):
            t, p = ev[c.index]
            if t == F.R_EXT and p[:1] and p[0] in (F.X_PAUSE, F.X_RESUME):
                self._trace_line(f"event {c.index}: {describe_event(t, p)}")
                c.index += 1
                continue
            return t, p
        return None, None

    def _rip(self):
        try:
            return self.m.vcpu.get_regs().rip
        except UkdbgError:
            return None

    def diverge(self, happened: str, recorded=None) -> "_Stop":
        c = self.cursor
        if recorded is None:
            t, p = self._peek()
            recorded = describe_event(t, p) if t is not None else "nothing more"
        rip = self._rip()
        where = self.m.describe(rip) if rip is not None else "?"
        note = ""
        if self.user_wrote is not None:
            note = f" (after a debugger write at event {self.user_wrote})"
        return _Stop(Diverged(c.index, f"replay diverged at event {c.index}{note}: "
                                       f"recorded {recorded}, but the guest did "
                                       f"{happened}; rip={where}", rip))

    def _expect(self, want_type: int, happened: str):
        t, p = self._peek()
        if t is None:
            rip = self._rip()
            where = self.m.describe(rip) if rip is not None else "?"
            why = "--record-limit stopped the recording" if self.rec.limited else \
                "the recording was cut short (its recorder was killed?)"
            raise _Stop(EndOfRecording(
                self.cursor.index, f"end of the recording after event "
                f"{self.cursor.index - 1}: {why}; the guest is at rip={where}, about to "
                f"do {happened}", rip))
        if t != want_type:
            raise self.diverge(happened)
        return p

    def _after_event(self):
        """A consumed event may be followed by external events at this very point."""
        return self._next_is_ext(check_now=True)

    def _next_is_ext(self, check_now: bool):
        while True:
            t, p = self._peek()
            if t != F.R_EXT:
                self._disarm_position()
                return None
            kind, *words = F.EXT_HEAD.unpack_from(p)
            if check_now and self._at(words):
                r = self._apply_ext(kind, p[F.EXT_HEAD.size:], words[16])
                if r is not None:
                    return r
                continue
            self._arm_position(words[16])
            return None

    def _at(self, words) -> bool:
        k = self.m.vcpu.get_regs()
        now = [getattr(k, f) for f in k.FIELDS]
        now[17] &= ~_RF_TF
        return now[:17] == list(words[:17]) and now[17] == words[17] & ~_RF_TF

    def _apply_ext(self, kind, data, rip):
        m = self.m
        c = self.cursor
        self._trace_line(f"event {c.index}: {F.EXT_NAMES.get(kind, kind)} at "
                         f"rip={rip:#x}")
        c.index += 1
        try:
            if kind == F.X_MEMWRITE:
                gpa = _U64.unpack_from(data)[0]
                chunk = data[8:]
                if m.debug is not None and m.debug.sw:
                    m.debug.write_through(gpa, chunk)
                else:
                    m.mem.write(gpa, chunk)
            elif kind == F.X_REGS:
                k, sr = m.vcpu.get_regs(), m.vcpu.get_sregs()   # their types
                m.vcpu.set_regs(type(k).unpack(data[:144]))
                m.vcpu.set_sregs(type(sr).unpack(data[144:144 + 312]))
            elif kind == F.X_FPU:
                set_fpu_image(m, data[:512])
            elif kind == F.X_STOP:
                stop = F.stop_from_json(json.loads(data))
                if stop is not None:
                    return stop
        except (ValueError, GuestMemoryError, F.struct.error) as e:
            raise _Stop(Diverged(c.index - 1, f"replay: external event {c.index - 1} "
                                              f"cannot be applied: {e}"))
        if getattr(m, "live_target", None) is not None:
            m.live_target.invalidate()
        return None

    def _arm_position(self, gva) -> None:
        if self.pos_gva == gva:
            return
        self._disarm_position()
        dc = self.m.debug
        if not dc.add_sw(gva, OWNER):
            raise _Stop(Diverged(self.cursor.index, f"replay: cannot plant the position "
                                                    f"of event {self.cursor.index} at "
                                                    f"{gva:#x} (not mapped)"))
        self.pos_gva = gva

    def _disarm_position(self) -> None:
        gva = self.pos_gva
        if gva is None:
            return
        self.pos_gva = None
        if gva not in self.sites:
            self.m.debug.remove_sw(gva, OWNER)

    # --- console --------------------------------------------------------------------------
    def _console(self, data) -> None:
        c = self.cursor
        start = c.console
        c.console += len(data)
        if c.console > self.printed:
            skip = max(0, self.printed - start)
            self.m.console.write(bytes(data[skip:]))
            self.printed = c.console

    def _trace_line(self, line: str) -> None:
        if self.trace is not None:
            try:
                os.write(self.trace, f"[replay] {line}\n".encode())
            except OSError:
                pass

    # --- hypercalls -------------------------------------------------------------------------
    def _hc(self, nr):
        size = HC_SIZES[nr]
        mem = self.m.mem

        def replayed(m, gpa):
            try:
                return self._replay_hc(m, nr, size, mem, gpa)
            except _Stop as s:
                return s.stop
            except _MALFORMED as e:
                return self.malformed(e)
        return replayed

    def malformed(self, e):
        """A record that passed the CRCs but does not decode (a re-encoded file)."""
        i = self.cursor.index
        return Diverged(i, f"replay: event {i} of the recording is malformed "
                           f"({type(e).__name__}: {e})", self._rip())

    def _replay_hc(self, m, nr, size, mem, gpa):
        happened = f"hypercall {_hc_name(nr)}(gpa={gpa:#x})"
        if self.pos_gva is not None:
            # an external event recorded at this very exit (an end held for it)
            r = self._check_position()
            if r is HANDLED:
                r = None
            if r is not None:
                return r
        p = self._expect(F.R_HC, happened)
        try:
            rnr, flags, rgpa, before, after, data, check, tail = F.decode_hc(p)
        except (ValueError, F.struct.error):
            raise self.diverge(happened, "a malformed hypercall record") from None
        if rnr != nr or rgpa != gpa:
            raise self.diverge(happened)
        try:
            cur = mem.read(gpa, size)
        except GuestMemoryError:
            cur = b""
        if cur != before:
            raise self.diverge(f"hypercall {_hc_name(nr)}(gpa={gpa:#x}, "
                               f"args={cur.hex() or '-'})")
        if flags & F.HC_RAISED:
            self.cursor.index += 1
            e = json.loads(tail)
            raise GuestMemoryError(int(e["gpa"]), int(e["size"]), str(e["reason"]))
        try:
            if nr == abi.HC_PUTS:
                ptr, n = abi.HC_PUTS_ST.unpack(cur)
                out = mem.slice(ptr, n)
                if zlib.adler32(out) != check:
                    raise self.diverge(f"puts of other bytes ({bytes(out[:120])!r})",
                                       f"puts of {n} bytes with adler32 {check:#x}")
                self._console(out)
            elif check and nr in (abi.HC_NET_WRITE, abi.HC_BLOCK_WRITE):
                from .recorder import _io_fields
                ptr, n, _ret = _io_fields(nr, after)
                if zlib.adler32(mem.slice(ptr, n)) != check:
                    raise self.diverge(f"{_hc_name(nr)} of other data",
                                       f"{_hc_name(nr)} of {n} bytes with adler32 "
                                       f"{check:#x}")
            if after:
                mem.write(gpa, after)
            if data:
                from .recorder import _io_fields
                ptr, _n, _ret = _io_fields(nr, after)
                mem.write(ptr, data)
        except GuestMemoryError as e:
            raise self.diverge(f"{_hc_name(nr)} with a bad pointer ({e})") from None
        self.cursor.index += 1
        stop = None
        if flags & F.HC_STOP:
            stop = F.stop_from_json(json.loads(tail))    # None: a debugger's own stop
        r = self._after_event()
        return r if r is not None else stop

    # --- breakpoints: trapped instructions and positions ----------------------------------
    def on_hit(self, m, kind, gva):
        if kind != "sw":
            return None
        try:
            return self._on_hit(m, gva)
        except _MALFORMED as e:
            return self.malformed(e)

    def _on_hit(self, m, gva):
        try:
            if gva == self.pos_gva:
                r = self._check_position()
                if r is not None:
                    return r            # HANDLED (applied here) or a Stop
            if gva in self.sites:
                r = self._emulate(m, gva)
                return HANDLED if r is None else r
            if gva == self.pos_gva:
                self._step_over(gva)    # not there yet: run the instruction, go on
                return HANDLED
        except _Stop as s:
            return s.stop
        return None

    def _check_position(self):
        """At the position breakpoint: if the registers are the recorded ones, the
        pending external events happen here."""
        t, p = self._peek()
        if t != F.R_EXT:
            return None
        words = F.EXT_HEAD.unpack_from(p)[1:]
        if not self._at(words):
            return None
        r = self._after_event()
        # Applied. If the breakpoint went away with the event, the vCPU (stopped on
        # the int3, before it) now runs the original instruction.
        return HANDLED if r is None else r

    def _step_over(self, gva) -> None:
        dc = self.m.debug
        gpa = dc.translate(gva)
        if gpa is not None:
            dc.lift(gpa)
        self.stepping_over = True
        dc.set_single_step(True)

    def _step_hook(self, m, ex):
        """The end of a step over the position breakpoint: put it back. Any other
        exit first (a Ctrl-C, a signal) ends the step-over too: if the instruction
        did not run, the breakpoint is hit again and the step retried."""
        if not self.stepping_over:
            return None
        self.stepping_over = False
        dc = m.debug
        dc.replant()
        dbg = getattr(getattr(m, "live_target", None), "_debugger", None)
        if dbg is not None and dbg.stepping:
            return None                    # gdb asked for this step: it is its stop
        dc.set_single_step(False)
        return HANDLED if ex.reason == 4 else None      # KVM_EXIT_DEBUG: ours

    def emulate(self, m, gva):
        """DebugControl emulator (a debugger stepping over one of our breakpoints)."""
        try:
            if gva == self.pos_gva:
                r = self._check_position()
                if r is not None and r is not HANDLED:
                    return r
                if r is HANDLED and m.vcpu.get_regs().rip != gva:
                    return None         # the event moved the vCPU: nothing to step
            if gva in self.sites:
                return self._emulate(m, gva)
        except _Stop as s:
            return s.stop
        except _MALFORMED as e:
            return self.malformed(e)
        return NotImplemented

    def _fast_emulate(self, m, gva, k):
        try:
            return self._emulate(m, gva, k)
        except _Stop as s:
            return s.stop
        except _MALFORMED as e:
            return self.malformed(e)

    def _emulate(self, m, gva, k=None):
        site = self.sites[gva]
        name = F.TRAP_NAMES[site.kind]
        happened = f"{name} at {m.describe(gva)}"
        p = self._expect(F.R_TRAP, happened)
        kind, rip, value, aux = F.TRAP_ST.unpack(p)
        if kind != site.kind or rip != gva:
            raise self.diverge(happened)
        if k is None:
            k = m.vcpu.get_regs()
        traps.apply(k, site, value, aux)
        m.vcpu.set_regs(k)
        self._trace_line(f"event {self.cursor.index}: {name} at {gva:#x} = {value:#x}")
        self.cursor.index += 1
        return self._after_event()

    # --- the user's own writes ---------------------------------------------------------------
    def _user_write(self, m, kind, data):
        if kind in ("mem", "regs", "fpu") and self.user_wrote is None:
            self.user_wrote = self.cursor.index
            sys.stderr.write(f"ukdbg: replay: the debugger wrote guest {kind} at event "
                             f"{self.cursor.index}: the replay goes on, and diverges if "
                             "the guest now asks for other inputs\n")

    # --- the end ------------------------------------------------------------------------------
    def on_end(self, m, stop) -> None:
        """Ending hook: the run must end where and as the recording did."""
        if isinstance(stop, (Diverged, EndOfRecording)):
            self.end = stop
            return
        t, p = self._peek()
        if t != F.R_END:
            if self.rec.truncated or self.rec.limited:
                self.end = EndOfRecording(self.cursor.index, "the guest ended before the "
                                          "end of the (incomplete) recording")
                return
            what = describe_event(t, p) if t is not None else "nothing more"
            self.end = Diverged(self.cursor.index, f"replay diverged at event "
                                f"{self.cursor.index}: recorded {what}, but the guest "
                                f"ended ({type(stop).__name__})")
            sys.stderr.write(f"ukdbg: {self.end.message}\n")
            return
        from ..tender.endings import exit_code
        try:
            want = json.loads(p)
            want.get("exit")
        except (ValueError, AttributeError):
            want = {"exit": "(malformed)"}
        if exit_code(stop) != want.get("exit"):
            self.end = Diverged(self.cursor.index, f"replay diverged at the end: the "
                                f"recording exited {want.get('exit')}, the replay "
                                f"{exit_code(stop)}")
            sys.stderr.write(f"ukdbg: {self.end.message}\n")


def set_fpu_image(m, fx: bytes) -> None:
    if m.caps.get("xsave"):
        area = bytearray(m.vcpu.get_xsave())
        area[0:512] = fx
        bv = int.from_bytes(area[512:520], "little") | 3
        area[512:520] = bv.to_bytes(8, "little")
        m.vcpu.set_xsave(bytes(area))
        return
    from ..arch.x86_64 import Fpu
    k = m.vcpu.get_fpu()
    Fpu.from_fxsave(fx).to_kvm(k)
    m.vcpu.set_fpu(k)


# --- `ukdbg replay` ----------------------------------------------------------------------
USAGE = """\
usage: ukdbg replay [OPTIONS] FILE

Replay a recording made by `ukdbg run --record FILE`: the same console output, the
same exit status, the same crash. Needs no image, tap, disk or configuration.

  --gdb [HOST:]PORT|unix:PATH  serve the GDB remote protocol, as `ukdbg run --gdb`
  --gdb-wait                   hold the guest at its first instruction until gdb continues
  --core-dir DIR               where cores go (default: the current directory)
  --no-core                    do not write a core when the guest crashes
  --trace[=FILE]               print each replayed hypercall and event
  --image APP.hvt              use this file as the image (it must be the recorded one)
  --checkpoint-mem MB          with --gdb: memory kept for reverse execution's
                               checkpoints (default 256)
  -h, --help                   this help

exit status: the recorded run's, or
  125   the replay diverged from the recording (the message says where)
  126   the recording was cut short and the replay reached its end
  1     the recording cannot be used (corrupt, another image, KVM)
"""


def parse_args(argv):
    from ..tender.options import RunOptions, _is_gdb_address, _looks_like_address
    o = RunOptions()
    o.control = False
    o.image = None
    path = None
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        opt, eq, val = a.partition("=")

        def value():
            nonlocal i
            if eq:
                return val
            if i >= len(argv):
                raise UsageError(f"{opt} needs a value")
            i += 1
            return argv[i - 1]
        if a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if opt == "--gdb":
            if eq:
                o.gdb = val
            elif i < len(argv) and (_is_gdb_address(argv[i]) or _looks_like_address(argv[i])):
                o.gdb = argv[i]
                i += 1
            else:
                o.gdb, o.gdb_wait = "127.0.0.1:1234", True
            if not _is_gdb_address(o.gdb):
                raise UsageError(f"--gdb {o.gdb}: expected [HOST:]PORT or unix:PATH")
        elif a == "--gdb-wait":
            o.gdb_wait = True
        elif opt == "--core-dir":
            o.core_dir = value()
        elif a == "--no-core":
            o.no_core = True
        elif opt == "--trace":
            o.trace = val if eq else "-"
        elif opt == "--image":
            o.image = value()
        elif opt == "--checkpoint-mem":
            v = value()
            if not v.isdigit() or int(v) <= 0:
                raise UsageError(f"--checkpoint-mem {v}: expected a positive number of MiB")
            o.checkpoint_mem = int(v)
        elif a.startswith("-") and a != "-":
            raise UsageError(f"unknown option '{a}'", "see ukdbg replay --help")
        elif path is None:
            path = a
        else:
            raise UsageError(f"unexpected argument '{a}'", "see ukdbg replay --help")
    if path is None:
        raise UsageError("missing FILE (a recording made with ukdbg run --record)")
    if o.gdb_wait and o.gdb is None:
        o.gdb = "127.0.0.1:1234"
    o.app = path
    return o


def _image_path(rec, opts, tmp):
    """The image to boot: --image (checked), the recorded path if it still holds the
    same bytes, else the recording's copy in a private temporary directory."""
    want = rec.meta.get("image_sha256")
    if hashlib.sha256(rec.image).hexdigest() != want:
        raise F.RecordingError(f"{rec.path}: the image inside the recording does not "
                               "match its recorded hash (the recording was modified)")
    if opts.image:
        from ..files import IMAGE_MAX, read_regular
        got = hashlib.sha256(read_regular(opts.image, IMAGE_MAX, "an hvt image")).hexdigest()
        if got != want:
            raise UkdbgError(f"--image {opts.image}: not the recorded image (sha256 "
                             f"{got[:16]}..., the recording has {want[:16]}...)",
                             "replay without --image: the recording carries its image")
        return opts.image
    p = rec.meta.get("image_path")
    if isinstance(p, str) and "\0" not in p and os.path.isfile(p):
        from ..files import IMAGE_MAX, read_regular
        try:
            if hashlib.sha256(read_regular(p, IMAGE_MAX, "an hvt image")).hexdigest() == want:
                return p
        except UkdbgError:
            pass
    name = os.path.basename(str(rec.meta.get("image_name") or "image.hvt")) or "image.hvt"
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(rec.image)
    return path


def prepare(argv):
    """(machine, replayer, temporary directory, recording) ready to run."""
    import tempfile
    from ..tender import loader
    from ..tender.machine import build_machine
    opts = parse_args(argv)
    rec = F.Recording(opts.app)
    meta = rec.meta
    try:
        mem_size = int(meta["mem_size"])
        tsc_hz = int(meta["tsc_hz"])
        boot = bytes.fromhex(meta["boot"])
        boot_gpa = int(meta["boot_gpa"])
        cmdline = str(meta.get("cmdline", "")).encode("latin-1")
    except (KeyError, ValueError, TypeError):
        raise F.RecordingError(f"{rec.path}: the recording's boot state is incomplete") \
            from None
    tmp = tempfile.mkdtemp(prefix="ukdbg-replay-")
    try:
        opts.app = _image_path(rec, opts, tmp)
        image = loader.read_image(opts.app)
        opts.mem_size = mem_size
        m = build_machine(image, opts, lambda msg: None)
    except BaseException:
        _rmtree(tmp)
        raise
    try:
        if rec.cpuid:
            try:
                table = bytearray(rec.cpuid)
                m.vcpu.set_cpuid2(table)
                m.cpuid = table
            except UkdbgError as e:
                sys.stderr.write(f"ukdbg: replay: this KVM refuses the recorded CPUID "
                                 f"table ({e}); the host's is used\n")
        m.tsc_hz = tsc_hz
        if not (abi.BOOT_INFO <= boot_gpa and boot_gpa + len(boot) <= abi.GUEST_MIN_BASE):
            raise F.RecordingError(f"{rec.path}: the recorded boot info lies outside "
                                   "its window")
        m.argv = ["ukdbg", "replay"] + list(argv)
        m.cmdline = cmdline
        trace_fd = None
        if opts.trace is not None:
            trace_fd = 2 if opts.trace in ("-", "") else os.open(
                opts.trace, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            r = Replayer(m, rec, trace_fd)
        except _MALFORMED:
            raise F.RecordingError(f"{rec.path}: the recording's trap sites are "
                                   "malformed") from None
        m.replayer = r
        r.install()
        m.ending_hooks.insert(0, r.on_end)
        from ..run import _import
        _import("tender.traps").setup(m, opts)
        if not opts.no_core:
            _import("tender.modules.dumpcore").setup(m, opts)
        _import("tender.modules.report").setup(m, opts)
        if opts.gdb:
            _import("debugger.gdb").setup(m, opts)
            # issue 11: reverse execution (checkpoints carry the cursor)
            _import("reverse").setup(m, opts, replayer=r)
        if opts.trace is not None:
            _import("tender.modules.trace").setup(m, opts)
        m.mem.write(boot_gpa, boot)
        try:
            r.resync()                   # external events before the first instruction
        except _Stop as s:
            m.driver = lambda m, s=s.stop: s
    except BaseException:
        m.close()
        _rmtree(tmp)
        raise
    return m, r, tmp, rec


class _Progress:
    """The bar of a long replay on a terminal: events replayed of the recording's total
    (exact: the events are in memory). Once the delay has passed, a thread posts a
    redraw to the vCPU thread every TICK s, which the loop runs at its next exit; so the
    replay's hot path does not change. A redraw still waiting at the next tick (a guest
    computing without exits) gets a kick, which ends KVM_RUN: the bar shows and its
    clock moves then too, at 2.5 kicks a second at most. It shares the terminal with
    the guest's console without mixing: a console write hides it first, and it is drawn
    again only after a tick without console output (a chatty guest's lines take its
    place; no flicker, no redraw per line) and when the console's last line is
    complete."""

    TICK = 0.2                           # seconds between redraws

    def __init__(self, m, r, bar):
        import threading
        self.m, self.r, self.bar = m, r, bar
        self.bol = True                  # the console is at the start of a line
        self.wrote = False               # the console has spoken since the last tick
        self.posted = False
        self.closed = False
        self._write = None
        if os.isatty(1):                 # the console shares the bar's terminal
            self._write = m.console.write
            m.console.write = self.console_write
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._ticks, name="ukdbg-progress",
                                        daemon=True)
        self._thread.start()

    def _ticks(self):                    # the timer thread
        if self._done.wait(self.bar.delay):
            return
        events = self.m.events
        while True:
            if self.posted:
                events.kick()            # no exit since the last tick
            else:
                self.posted = True
                events.post(self._draw, kick=False)
            if self._done.wait(self.TICK):
                return

    def _draw(self, m):                  # on the vCPU thread
        self.posted = False
        if self.wrote:
            self.wrote = False           # wait for a quiet tick
        elif self.bol and not self.closed:
            try:
                self.bar.update(self.r.cursor.index)
            except Exception:            # a display must never end the replay
                self.closed = True
        return None

    def console_write(self, data) -> None:
        if self.bar.shown:
            try:
                self.bar.hide()
            except Exception:            # as in _draw
                self.closed = True
        self._write(data)
        self.wrote = True
        if data:
            self.bol = data[-1:] == b"\n"

    def close(self) -> None:
        self.closed = True
        self._done.set()
        self._thread.join()
        try:
            self.bar.close()
        except Exception:                # as in _draw
            pass
        if self._write is not None:
            del self.m.console.write     # the class's own again


def progress(m, r, opts):
    """A _Progress, or None: under --gdb (the user steps), with --trace on stderr, when
    stdout is a pipe (the program reading it may own the terminal), off a terminal."""
    if opts.gdb or opts.trace in ("-", ""):
        return None
    import stat
    try:
        mode = os.fstat(1).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return None
    from ..progress import Bar
    bar = Bar("replaying", len(r.rec.events), unit="events")
    if not bar.on_terminal:
        return None
    return _Progress(m, r, bar)


def _rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def replay_main(argv) -> int:
    from ..run import drive, finish, warn
    m, r, tmp, rec = prepare(argv)
    try:
        if rec.truncated:
            warn(f"{rec.path}: the recording is incomplete (its recorder did not finish); "
                 f"replaying its {len(rec.events)} complete events")
        m.events.arm()
        bar = progress(m, r, m.opts)
        try:
            stop = drive(m)
        finally:
            if bar is not None:
                bar.close()              # before the core's own bar and the report
        code = finish(m, stop)
        end = r.end
        if isinstance(end, Diverged):
            return EXIT_DIVERGED
        if isinstance(end, EndOfRecording):
            return EXIT_END_OF_RECORDING
        return code
    finally:
        m.close()
        _rmtree(tmp)
