"""ukdbg/coredump/reader.py: CoreFile, a core written by ukdbg as a read-only target.Target.

Every offset and size read from the file is checked before use, so a truncated,
corrupt or foreign file raises CoreFormatError with one line, never another exception.
Memory is read with pread (no mmap: a file truncated under us cannot SIGBUS).
"""

import errno
import os
import struct

from ..elf import ElfFormatError, iter_notes
from ..errors import CoreFormatError, TargetError
from ..target import MemoryRegion, ReadOnly
from . import format as F

MAX_NOTES_SIZE = 64 << 20          # a sane bound for the note segment we read whole
PR_CURSIG, PR_PID, PR_REG = 3, 6, 18   # fields of format.PRSTATUS.unpack()


class Note:
    __slots__ = ("name", "type", "desc")

    def __init__(self, name, type_, desc):
        self.name, self.type, self.desc = name, type_, desc

    def __repr__(self):
        return f"Note({self.name!r}, {self.type:#x}, {len(self.desc)} bytes)"


class Load:
    """One PT_LOAD: [vaddr, vaddr+memsz) with file bytes for the first filesz."""
    __slots__ = ("vaddr", "memsz", "offset", "filesz", "paddr", "flags")

    def __init__(self, vaddr, memsz, offset, filesz, paddr, flags):
        self.vaddr, self.memsz, self.offset = vaddr, memsz, offset
        self.filesz, self.paddr, self.flags = filesz, paddr, flags

    @property
    def perms(self) -> str:
        return (("r" if self.flags & F.PF_R else "-") + ("w" if self.flags & F.PF_W else "-")
                + ("x" if self.flags & F.PF_X else "-"))


class UkdbgData:
    """The UKDBG notes, decoded (fields are None when a note is absent)."""

    def __init__(self):
        self.sregs = None            # dict (format.unpack_sregs)
        self.crash = None            # format.CrashInfo
        self.pid = None
        self.dump_time_ns = None
        self.uptime_ns = None
        self.mem_size = None
        self.version = None
        self.guest_cmdline = None
        self.argv = []
        self.image_path = None
        self.image_size = None
        self.image_sha256 = None     # hex string
        self.build_id = None         # hex string or ""
        self.hypercalls = {}         # nr -> count
        self.exits = {}              # KVM exit reason -> count
        self.console = b""
        self.console_total = 0
        self.phys_offset = None      # file offset of guest-physical address 0
        self.phys_size = 0
        self.phys_extents = []       # [(lo, hi)] written
        self.flight = None           # NT_UKDBG_FLIGHT desc, decoded on use (flight_log())


def _bad(path, msg):
    return CoreFormatError(f"{path}: {msg}")


class CoreFile(ReadOnly):
    """A core file as a read-only Target (target.py). Use CoreFile.open(path)."""

    def __init__(self, path: str, fd: int, size: int):
        self.path = path
        self._fd = fd
        self.size = size
        self.loads = []
        self.notes = []
        self.ukdbg = UkdbgData()
        self.prstatus = None
        self.psinfo = None
        self.siginfo = None
        self.auxv = {}
        self._regs = None

    # --- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> "CoreFile":
        from ..files import open_regular
        try:
            fd, size = open_regular(path, None, "a core", error=CoreFormatError)
        except CoreFormatError as e:
            raise CoreFormatError(f"cannot open {e}") from None
        try:
            core = cls(path, fd, size)
            core._parse()
            return core
        except CoreFormatError:
            os.close(fd)
            raise
        except (ValueError, struct.error, OverflowError, UnicodeError, IndexError) as e:
            os.close(fd)
            raise _bad(path, f"corrupt core ({e})") from None
        except OSError as e:
            os.close(fd)
            raise _bad(path, f"read error: {e.strerror or e}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _pread(self, off: int, size: int) -> bytes:
        if off < 0 or size < 0 or off + size > self.size:
            raise _bad(self.path, f"truncated: needs bytes {off:#x}..{off + size:#x}, "
                                  f"file has {self.size:#x}")
        out = bytearray()
        while len(out) < size:
            chunk = os.pread(self._fd, size - len(out), off + len(out))
            if not chunk:
                raise _bad(self.path, "truncated while reading")
            out += chunk
        return bytes(out)

    def _parse(self) -> None:
        p = self.path
        if self.size < F.EHDR.size:
            raise _bad(p, "not an ELF file (too short)")
        ehdr = F.EHDR.unpack(self._pread(0, F.EHDR.size))
        (ident, etype, machine, _ver, _entry, phoff, _shoff, _flags, _ehsize, phentsize,
         phnum, _shentsize, _shnum, _shstrndx) = ehdr
        if ident[:4] != b"\x7fELF":
            raise _bad(p, "not an ELF file (bad magic)")
        if ident[4] != F.ELFCLASS64 or ident[5] != F.ELFDATA2LSB:
            raise _bad(p, "not a 64-bit little-endian ELF file")
        if etype != F.ET_CORE:
            raise _bad(p, f"not a core file (ELF type {etype})")
        if machine != F.EM_X86_64:
            raise _bad(p, f"core is for machine {machine}, not x86-64")
        if phentsize != F.PHDR.size or phnum == 0:
            raise _bad(p, "bad program header table")
        raw = self._pread(phoff, phnum * F.PHDR.size)
        note_segs = []
        for i in range(phnum):
            (ptype, flags, off, vaddr, paddr, filesz, memsz,
             _align) = F.PHDR.unpack_from(raw, i * F.PHDR.size)
            if ptype == F.PT_NOTE:
                note_segs.append((off, filesz))
            elif ptype == F.PT_LOAD:
                if filesz > memsz:
                    raise _bad(p, f"segment {i}: file size exceeds memory size")
                if off + filesz > self.size:
                    raise _bad(p, f"truncated: segment {i} ends at {off + filesz:#x}, "
                                  f"file has {self.size:#x}")
                if vaddr + memsz > 1 << 64:
                    raise _bad(p, f"segment {i} wraps the address space")
                self.loads.append(Load(vaddr, memsz, off, filesz, paddr, flags))
        if not note_segs:
            raise _bad(p, "no notes (not a core written by ukdbg or Linux)")
        for off, size in note_segs:
            if size > MAX_NOTES_SIZE:
                raise _bad(p, "note segment is implausibly large")
            self._parse_notes(self._pread(off, size))
        self.loads.sort(key=lambda ld: ld.vaddr)
        self._decode()

    def _parse_notes(self, raw: bytes) -> None:
        try:
            for name, ntype, off, size in iter_notes(raw):
                self.notes.append(Note(name, ntype, raw[off:off + size]))
        except ElfFormatError as e:
            raise _bad(self.path, str(e)) from None

    def find_note(self, name: str, ntype: int):
        for n in self.notes:
            if n.name == name and n.type == ntype:
                return n
        return None

    def _decode(self) -> None:
        p = self.path
        pr = self.find_note("CORE", F.NT_PRSTATUS)
        if pr is None:
            raise _bad(p, "no NT_PRSTATUS note (no registers)")
        if len(pr.desc) != F.PRSTATUS.size:
            raise _bad(p, f"NT_PRSTATUS has {len(pr.desc)} bytes, expected "
                          f"{F.PRSTATUS.size} (not an x86-64 core?)")
        self.prstatus = F.PRSTATUS.unpack(pr.desc)
        n = self.find_note("CORE", F.NT_PRPSINFO)
        if n is not None and len(n.desc) == F.PRPSINFO.size:
            self.psinfo = F.PRPSINFO.unpack(n.desc)
        n = self.find_note("CORE", F.NT_SIGINFO)
        if n is not None and len(n.desc) >= F.SIGINFO_HEAD.size:
            self.siginfo = F.SIGINFO_HEAD.unpack_from(n.desc, 0)
        n = self.find_note("CORE", F.NT_AUXV)
        if n is not None:
            for i in range(0, len(n.desc) - F.AUXV_ENTRY.size + 1, F.AUXV_ENTRY.size):
                k, v = F.AUXV_ENTRY.unpack_from(n.desc, i)
                if k == F.AT_NULL:
                    break
                self.auxv[k] = v
        if not any(n.name == F.UKDBG_NAME for n in self.notes):
            raise _bad(p, "not a core written by ukdbg (no UKDBG notes: a Linux process "
                          "core? open it with gdb)")
        for note in self.notes:
            if note.name != F.UKDBG_NAME:
                continue
            try:
                self._decode_ukdbg(note)
            except (ValueError, struct.error) as e:
                raise _bad(p, f"bad UKDBG note {note.type:#x}: {e}") from None

    def _decode_ukdbg(self, note) -> None:
        u, d, t = self.ukdbg, note.desc, note.type
        if t == F.NT_UKDBG_SREGS:
            u.sregs = F.unpack_sregs(d)
        elif t == F.NT_UKDBG_CRASH:
            u.crash = F.CrashInfo.unpack(d)
        elif t == F.NT_UKDBG_MONITOR:
            _v, u.pid, u.dump_time_ns, u.uptime_ns, u.mem_size = F.MONITOR_HEAD.unpack_from(d)
            strs, _ = F.unpack_strings(d, F.MONITOR_HEAD.size)
            if len(strs) < 2:
                raise ValueError("monitor record lacks version and command line")
            u.version = strs[0].decode("utf-8", "replace")
            u.guest_cmdline = strs[1].decode("utf-8", "replace")
            u.argv = [s.decode("utf-8", "replace") for s in strs[2:]]
        elif t == F.NT_UKDBG_IMAGE:
            _v, _pad, u.image_size, sha = F.IMAGE_HEAD.unpack_from(d)
            (path, bid), _ = F.unpack_strings(d, F.IMAGE_HEAD.size, 2)
            u.image_sha256 = sha.hex()
            u.image_path = path.decode("utf-8", "replace")
            u.build_id = bid.hex()
        elif t == F.NT_UKDBG_STATS:
            for i in range(0, len(d) - F.STATS_ENTRY.size + 1, F.STATS_ENTRY.size):
                kind, nr, count = F.STATS_ENTRY.unpack_from(d, i)
                (u.hypercalls if kind == 0 else u.exits)[nr] = count
        elif t == F.NT_UKDBG_CONSOLE:
            _v, _pad, u.console_total = F.CONSOLE_HEAD.unpack_from(d)
            u.console = bytes(d[F.CONSOLE_HEAD.size:])
        elif t == F.NT_UKDBG_FLIGHT:
            u.flight = bytes(d)          # a bad one fails `history`, not the whole core
        elif t == F.NT_UKDBG_PHYS:
            _v, n, off, size, mem_size = F.PHYS_HEAD.unpack_from(d)
            if F.PHYS_HEAD.size + n * F.PHYS_EXTENT.size > len(d):
                raise ValueError("extent list runs past the note")
            if off + size > self.size:
                raise ValueError(f"physical image ends at {off + size:#x}, past the "
                                 f"end of the file ({self.size:#x}): truncated")
            u.phys_offset, u.phys_size = off, size
            u.mem_size = u.mem_size or mem_size
            u.phys_extents = [F.PHYS_EXTENT.unpack_from(d, F.PHYS_HEAD.size + 16 * i)
                              for i in range(n)]

    # --- Target: registers -------------------------------------------------------------
    def read_registers(self):
        """arch.x86_64.Regs: NT_PRSTATUS, plus control registers from the UKDBG note."""
        from ..arch.x86_64 import Regs
        if self._regs is None:
            r = Regs.from_user_regs(self.prstatus[PR_REG])
            s = self.ukdbg.sregs
            if s is not None:
                for f in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
                    setattr(r, f, s[f])
            c = self.ukdbg.crash
            if c is not None and c.vector == 14 and c.fault_addr is not None:
                r.cr2 = c.fault_addr
            self._regs = r
        return self._regs.copy()

    def read_fpu(self):
        from ..arch.x86_64 import Fpu
        n = self.find_note("CORE", F.NT_FPREGSET)
        if n is not None and len(n.desc) >= F.FXSAVE_SIZE:
            return Fpu.from_fxsave(n.desc)
        return Fpu()

    def read_xsave(self):
        """(XSAVE area bytes, XCR0) from NT_X86_XSTATE, or None."""
        n = self.find_note("LINUX", F.NT_X86_XSTATE)
        if n is None or len(n.desc) < F.XSAVE_XCR0_OFFSET + 8:
            return None
        (xcr0,) = struct.unpack_from("<Q", n.desc, F.XSAVE_XCR0_OFFSET)
        return bytes(n.desc), xcr0

    # --- Target: memory ----------------------------------------------------------------
    def _load_at(self, addr: int):
        for ld in self.loads:
            if ld.vaddr <= addr < ld.vaddr + ld.memsz:
                return ld
        return None

    def read_memory(self, addr: int, size: int) -> bytes:
        """Guest-virtual read; short at the end of the mapped memory; TargetError(EFAULT)
        when nothing at addr is in the core. Bytes past a segment's file size read 0."""
        if size < 0 or addr < 0:
            raise TargetError(errno.EINVAL, f"bad read {addr:#x}+{size}")
        out = bytearray()
        while size > 0:
            ld = self._load_at(addr)
            if ld is None:
                break
            rel = addr - ld.vaddr
            n = min(size, ld.memsz - rel)
            in_file = max(0, min(n, ld.filesz - rel))
            if in_file:
                out += self._pread(ld.offset + rel, in_file)
            out += bytes(n - in_file)
            addr += n
            size -= n
        if not out and size > 0:
            raise TargetError(errno.EFAULT, f"cannot access memory at {addr:#x}")
        return bytes(out)

    def read_physical(self, gpa: int, size: int) -> bytes:
        """Guest-physical read from the image in the file (page tables included);
        TargetError(EFAULT) outside it or when the core has no physical image."""
        u = self.ukdbg
        if u.phys_offset is None or gpa < 0 or size < 0 or gpa + size > u.phys_size:
            raise TargetError(errno.EFAULT, f"cannot access physical memory at {gpa:#x}")
        return self._pread(u.phys_offset + gpa, size)

    def touched(self, gpa: int, size: int = 1) -> bool:
        """Whether any of [gpa, gpa+size) was written to the core (touched by the guest)."""
        return any(lo < gpa + size and gpa < hi for lo, hi in self.ukdbg.phys_extents)

    def translate(self, gva: int):
        """mmu.Translation or WalkFailure through the page tables in the core."""
        from ..arch import mmu
        r = self.read_registers()
        s = self.ukdbg.sregs or {}

        def rd(gpa):
            try:
                return int.from_bytes(self.read_physical(gpa, 8), "little")
            except TargetError:
                return None
        return mmu.walk(rd, s.get("cr0", r.cr0), s.get("cr3", r.cr3), s.get("cr4", r.cr4),
                        s.get("efer", r.efer), gva)

    def memory_map(self) -> list:
        return [MemoryRegion(ld.vaddr, ld.vaddr + ld.memsz, ld.perms, phys=ld.paddr)
                for ld in self.loads]

    # --- Target: the rest ----------------------------------------------------------------
    def stop_reason(self):
        from ..target import Crashed, Exited, Interrupted, Killed
        c = self.ukdbg.crash
        sig = self.prstatus[PR_CURSIG]
        if c is None:
            return Crashed("core", sig, f"core file (signal {sig})",
                           rip=self.read_registers().rip, regs=self.read_registers())
        if c.kind == "crashed":
            return Crashed(c.cause, c.signal, c.message, rip=c.rip, vector=c.vector,
                           error_code=c.error_code, fault_addr=c.fault_addr,
                           exit_reason=c.exit_reason, regs=self.read_registers(),
                           status=c.status)
        if c.kind == "exited":
            return Exited(c.status or 0)
        if c.kind == "interrupted":
            return Interrupted()
        return Killed(c.signal, c.cause)

    def exec_path(self):
        if self.ukdbg.image_path:
            return self.ukdbg.image_path
        if self.psinfo is not None:
            args = self.psinfo[12].split(b"\0", 1)[0].decode("utf-8", "replace")
            return args.split(" ", 1)[0] or None
        return None

    def info(self) -> dict:
        u = self.ukdbg
        c = u.crash
        return {
            "core": self.path,
            "app": self.exec_path(),
            "image_size": u.image_size,
            "image_sha256": u.image_sha256,
            "build_id": u.build_id,
            "mem_size": u.mem_size,
            "resident": sum(hi - lo for lo, hi in u.phys_extents),
            "uptime": (u.uptime_ns or 0) / 1e9,
            "dump_time_ns": u.dump_time_ns,
            "pid": u.pid if u.pid is not None else self.prstatus[PR_PID],
            "version": u.version,
            "cmdline": u.guest_cmdline,
            "argv": list(u.argv),
            "signal": self.prstatus[PR_CURSIG],
            "cause": c.cause if c else None,
            "message": c.message if c else None,
            "vector": c.vector if c else None,
            "error_code": c.error_code if c else None,
            "fault_addr": c.fault_addr if c else None,
            "exit_reason": c.exit_reason if c else None,
            "hypercalls": dict(u.hypercalls),
            "exits": dict(u.exits),
            "entry": self.auxv.get(F.AT_ENTRY),
        }

    def console(self) -> bytes:
        return self.ukdbg.console

