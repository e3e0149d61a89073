"""ukdbg/inspect/session.py: Session, the explicit context of every inspector command (no
globals): a target, the image's Symbols (or None), a Disassembler, the Facts about the
stop and the selected frame; open_core() builds one from a core file.
"""

from ..arch import mmu
from ..errors import TargetError
from ..target import SIGNAL_NAMES, VECTORS, Crashed


# Stops at port I/O: rip may be past the instruction.
IO_CAUSES = ("bad-port", "bad-hypercall", "hostile-pointer", "abort")

# hvt hypercall numbers (hvt-abi.md section 9), for counts recorded in cores.
HYPERCALLS = {1: "walltime", 2: "puts", 3: "poll", 4: "block_write", 5: "block_read",
              6: "net_write", 7: "net_read", 8: "halt"}


class Facts:
    """What is known about the stop besides registers and memory: from a core's UKDBG
    notes or a live machine. Missing facts stay None/empty."""
    FIELDS = {
        "kind": "", "cause": "", "signal": 0, "message": "", "vector": None,
        "error_code": None, "fault_addr": None, "rip": None, "status": None,
        "exit_reason": None, "argv": (), "guest_cmdline": "", "version": "",
        "pid": None, "app_path": None, "app_size": None, "app_sha256": None,
        "build_id": None, "console": b"", "console_total": 0, "hypercalls": {},
        "exits": {}, "sregs": None, "mem_size": None, "uptime": None, "core_path": None,
        "dump_time": None, "flight": None,
    }
    __slots__ = tuple(FIELDS)

    def __init__(self, **kw):
        for k, v in self.FIELDS.items():
            setattr(self, k, kw.pop(k, v))
        if kw:
            raise TypeError(f"unknown facts {sorted(kw)}")

    @property
    def signal_name(self) -> str:
        return SIGNAL_NAMES.get(self.signal, f"signal {self.signal}") if self.signal else ""

    @property
    def crashed(self) -> bool:
        return self.kind == "crashed"

    @classmethod
    def from_stop(cls, stop, **kw) -> "Facts":
        """From a target.Stop (a live machine's final stop)."""
        f = cls(**kw)
        if isinstance(stop, Crashed):
            f.kind = "crashed"
            f.cause, f.signal, f.message = stop.cause, stop.signal or 0, stop.message
            f.vector, f.error_code = stop.vector, stop.error_code
            f.fault_addr, f.rip, f.status = stop.fault_addr, stop.rip, stop.status
            f.exit_reason = stop.exit_reason
        elif stop is not None:
            f.kind = type(stop).__name__.lower()
            f.signal = getattr(stop, "signal", 0) or 0
            f.status = getattr(stop, "status", None)
        return f

    @classmethod
    def from_core(cls, core) -> "Facts":
        """From a coredump.reader.CoreFile: its UKDBG notes (and Linux notes)."""
        u = core.ukdbg
        f = cls.from_stop(core.stop_reason())
        c = u.crash
        if c is not None:
            f.kind = c.kind
            f.cause, f.message, f.signal = c.cause, c.message, c.signal
        f.argv = tuple(u.argv or ())
        f.guest_cmdline = u.guest_cmdline or ""
        f.version = u.version or ""
        f.pid = u.pid
        f.app_path = core.exec_path()
        f.app_size = u.image_size
        f.app_sha256 = u.image_sha256 or None
        f.build_id = u.build_id or None
        f.console = u.console or b""
        f.console_total = u.console_total or 0
        f.hypercalls = {HYPERCALLS.get(nr, str(nr)): n for nr, n in u.hypercalls.items()}
        f.exits = dict(u.exits)
        f.sregs = u.sregs
        f.mem_size = u.mem_size
        f.uptime = u.uptime_ns / 1e9 if u.uptime_ns else None
        f.dump_time = u.dump_time_ns / 1e9 if u.dump_time_ns else None
        f.core_path = core.path
        f.flight = u.flight
        return f

    @classmethod
    def from_target(cls, target) -> "Facts":
        """Whatever a target offers: a core's notes, else its stop_reason() and info()."""
        if hasattr(target, "ukdbg") and hasattr(target, "prstatus"):
            return cls.from_core(target)
        try:
            stop = target.stop_reason()
        except Exception:
            stop = None
        f = cls.from_stop(stop)
        try:
            info = target.info() or {}
        except Exception:
            info = {}
        f.argv = tuple(info.get("argv") or ())
        f.app_path = info.get("app")
        f.mem_size = info.get("mem_size")
        f.hypercalls = dict(info.get("hypercalls") or {})
        f.guest_cmdline = info.get("cmdline") or ""
        return f

    def as_dict(self) -> dict:
        d = {}
        for k in self.FIELDS:
            if k == "flight":           # the raw note: `history` decodes it
                continue
            v = getattr(self, k)
            if isinstance(v, (bytes, bytearray)):
                v = bytes(v).hex() if k != "console" else bytes(v).decode("utf-8", "replace")
            elif isinstance(v, tuple):
                v = list(v)
            d[k] = v
        return d


class Session:
    """target: a target.Target; symbols: inspect.symbols.Symbols or None; disasm: an
    inspect.disasm.Disassembler; facts: Facts (default: asked from the target)."""

    def __init__(self, target, symbols=None, disasm=None, facts=None, warnings=()):
        from .disasm import Disassembler
        self.target = target
        self.symbols = symbols
        self.disasm = disasm if disasm is not None else Disassembler()
        self.facts = facts if facts is not None else Facts.from_target(target)
        self.warnings = list(warnings)
        self.selected = 0
        self._regs = None
        self._bt = None
        self._map = None
        self.gdb = None             # commands/gdb.py: a pygdbmi controller, on demand

    # --- registers and frames -------------------------------------------------------------
    @property
    def regs(self):
        """arch.x86_64.Regs of the stop (frame 0)."""
        if self._regs is None:
            self._regs = self.target.read_registers()
        return self._regs

    def backtrace(self):
        if self._bt is None:
            from .unwind import backtrace
            self._bt = backtrace(self.target, self.regs, self.symbols)
        return self._bt

    def frame(self, n=None):
        frames = self.backtrace().frames
        n = self.selected if n is None else n
        return frames[n] if 0 <= n < len(frames) else None

    def frame_regs(self) -> dict:
        """{name: value} known in the selected frame (all of them in frame 0)."""
        if self.selected == 0:
            return self.regs.as_dict()
        f = self.frame()
        return dict(f.regs) if f is not None else {}

    def select(self, n: int):
        frames = self.backtrace().frames
        if not 0 <= n < len(frames):
            raise ValueError(f"no frame {n} (the backtrace has {len(frames)})")
        self.selected = n
        return frames[n]

    @property
    def fault_pc(self):
        """The faulting instruction's address, when the target crashed (an abort has
        none: the guest stopped itself)."""
        if not self.facts.crashed or self.facts.cause == "abort":
            return None
        return self.stop_pc

    @property
    def stop_pc(self):
        """The instruction the stop is about: rip; the port I/O instruction just before
        it when the exit came after it (PVM reports I/O exits past the `out`); the
        trap frame's rip when the registers are not the faulting context's."""
        pc = self.regs.rip
        rip = self.facts.rip
        if self.facts.cause == "trap" and rip is not None and rip != pc:
            # registers taken at the guest's HALT (its trap hooks were not armed): the
            # faulting rip is the one the guest's trap frame recorded
            return rip
        if self.facts.cause in IO_CAUSES:
            prev = self._io_before(pc)
            if prev is not None:
                return prev
        return pc

    def _io_before(self, pc):
        here = self.disasm.one(self.try_read(pc, 16), pc) if self.try_read(pc, 1) else None
        if here is not None and here.mnemonic.startswith(("out", "in")):
            return None
        start = pc - 15
        fr = self.symbols.function_range(pc - 1) if self.symbols is not None else None
        if fr is not None and pc - fr[0] <= 4096:
            ins = self.disasm.disassemble(self.try_read(fr[0], pc - fr[0]), fr[0])
            cands = [i for i in ins if i.addr + i.size == pc]
        else:
            cands = []
            for a in range(pc - 2, pc):
                i = self.disasm.one(self.try_read(a, pc - a), a)
                if i is not None and i.addr + i.size == pc:
                    cands.append(i)
        for i in cands:
            if i.mnemonic.startswith(("out", "in")) and i.addr >= start:
                return i.addr
        return None

    # --- memory ---------------------------------------------------------------------------
    def read(self, addr: int, size: int) -> bytes:
        """Guest-virtual bytes; short at an unreadable page; TargetError if none."""
        if addr < 0 or addr >= 1 << 64:
            raise TargetError(14, f"cannot access memory at {addr:#x}")
        return self.target.read_memory(addr, min(size, (1 << 64) - addr))

    def try_read(self, addr: int, size: int) -> bytes:
        try:
            return self.read(addr, size)
        except TargetError:
            return b""

    def memory_map(self) -> list:
        if self._map is None:
            try:
                self._map = list(self.target.memory_map())
            except TargetError:
                self._map = []
        return self._map

    def region_name(self, r) -> str:
        """A region's name: the target's, else what the image or the hvt layout says."""
        if r.name:
            return r.name
        if self.symbols is not None:
            try:
                for seg in self.symbols.elf.segments:
                    if seg.type == 1 and seg.vaddr <= r.start and r.end <= seg.vaddr + \
                            ((seg.memsz + 0xFFF) & ~0xFFF):
                        return "image"
            except ValueError:
                pass
        if 0x10000 <= r.start < 0x100000:
            return "boot info"
        return ""

    def touched(self, phys: int, size: int):
        """Bytes of guest-physical [phys, phys+size) the guest ever wrote, when the
        target knows (a core records it), else None."""
        u = getattr(self.target, "ukdbg", None)
        ext = getattr(u, "phys_extents", None) if u is not None else None
        if ext is None or phys is None:
            return None
        end = phys + size
        return sum(max(0, min(hi, end) - max(lo, phys)) for lo, hi in ext)

    def touched_runs(self, phys: int, size: int) -> list:
        """[(lo, hi)] guest-physical runs written by the guest inside [phys, phys+size)."""
        u = getattr(self.target, "ukdbg", None)
        ext = getattr(u, "phys_extents", None) if u is not None else None
        if not ext or phys is None:
            return []
        end = phys + size
        return [(max(lo, phys), min(hi, end)) for lo, hi in ext if lo < end and phys < hi]

    def region_of(self, addr: int):
        for r in self.memory_map():
            if r.start <= addr < r.end:
                return r
        return None

    def translate(self, gva: int):
        """mmu.Translation or a falsy mmu.WalkFailure (None if the target cannot say)."""
        t = getattr(self.target, "translate", None)
        if t is not None:
            try:
                return t(gva)
            except Exception:
                return None
        phys = getattr(self.target, "read_physical", None)
        if phys is None:
            return None

        def read_u64(gpa):
            try:
                b = phys(gpa, 8)
            except Exception:
                return None
            return int.from_bytes(b, "little") if len(b) == 8 else None
        r = self.regs
        return mmu.walk(read_u64, r.cr0, r.cr3, r.cr4, r.efer, gva)

    def flight_log(self):
        """The flight recorder's coredump.flight.FlightLog, None without one; a bad note
        raises coredump.flight.FlightFormatError (a ValueError, one line)."""
        if self.facts.flight is None:
            return None
        if getattr(self, "_flight", None) is None:
            from ..coredump.flight import unpack
            self._flight = unpack(self.facts.flight)
        return self._flight

    # --- names ------------------------------------------------------------------------------
    def describe(self, addr: int) -> str:
        return self.symbols.describe(addr) if self.symbols is not None else ""

    def line_for(self, addr: int):
        return self.symbols.line_for(addr) if self.symbols is not None else None

    def exception_name(self) -> str:
        v = self.facts.vector
        if v is None:
            return ""
        return f"{VECTORS[v][0]} {VECTORS[v][1]}" if v in VECTORS else f"exception {v}"

    def close(self) -> None:
        if self.gdb is not None:
            from .commands.gdb import close
            close(self.gdb)
            self.gdb = None
        close = getattr(self.target, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass


# --- opening a core ------------------------------------------------------------------------
def open_core(path: str, app=None) -> Session:
    """A Session on a core file. Finds the unikernel from the path the core records
    (or `app`) and checks it against the recorded size, sha256 and build-id: a missing
    or different binary is a warning, and the session works on what the core holds.
    Raises CoreFormatError (one line) for a bad core."""
    from ..coredump.reader import CoreFile
    core = CoreFile.open(path)
    facts = Facts.from_core(core)
    symbols, warnings = find_image(core.path, facts, app)
    return Session(core, symbols, facts=facts, warnings=warnings)


def find_image(core_path: str, facts: Facts, app=None):
    """(Symbols or None, [warnings]) for the unikernel that wrote the core."""
    import os
    from .symbols import Symbols
    recorded = facts.app_path
    if app is not None:
        candidates = [app]
    elif recorded:
        base = os.path.basename(recorded)
        candidates = [recorded, os.path.join(os.path.dirname(core_path) or ".", base)]
    else:
        return None, ["the core does not record its unikernel: no symbols "
                      "(give --app APP)"]
    warnings = []
    for cand in dict.fromkeys(candidates):
        if not os.path.isfile(cand):
            continue
        why = image_mismatch(cand, facts)
        if why and app is None:
            warnings.append(f"{cand} is not the unikernel that crashed ({why}); its "
                            "symbols are not used (give --app to use them anyway)")
            continue
        if why:
            warnings.append(f"{cand} is not the unikernel that crashed ({why}); "
                            "symbols and source lines may be wrong")
        try:
            return Symbols.open(cand), warnings
        except (OSError, ValueError) as e:
            warnings.append(f"cannot read {cand}: {e}; no symbols")
            return None, warnings
    if app is not None and not os.path.isfile(app):
        warnings.append(f"{app}: no such file; no symbols")
    elif not warnings:
        warnings.append(f"the unikernel {recorded} is missing: no symbols or source "
                        "lines (give --app APP)")
    return None, warnings


def image_mismatch(path: str, facts: Facts) -> str:
    """'' when the file at path is the recorded image, else how it differs."""
    import hashlib
    from ..errors import UkdbgError
    from ..files import IMAGE_MAX, read_regular
    try:
        data = read_regular(path, IMAGE_MAX, "an hvt image")
    except UkdbgError as e:
        return f"unreadable: {str(e).removeprefix(path + ': ')}"
    if facts.app_size is not None and len(data) != facts.app_size:
        return f"size {len(data)}, the core records {facts.app_size}"
    if facts.build_id:
        from ..elf import ElfFile, PT_NOTE
        try:
            elf = ElfFile(data, path)
            ids = [bytes(elf.data[off:off + n]).hex()
                   for seg in elf.segments if seg.type == PT_NOTE
                   for name, t, off, n in elf.notes(seg) if name == "GNU" and t == 3]
        except ValueError:
            ids = []
        if ids and facts.build_id not in ids:
            return f"build-id {ids[0]}, the core records {facts.build_id}"
    if facts.app_sha256 and hashlib.sha256(data).hexdigest() != facts.app_sha256:
        return "sha256 differs"
    return ""
