"""ukdbg/coredump/format.py: the bytes of an ukdbg core: ELF headers, Linux notes, UKDBG notes.

Pure layouts (struct.Struct, no I/O) shared by writer.py and reader.py. The Linux
notes follow include/uapi/linux/elfcore.h and the x86-64 ABI, so that stock gdb and
lldb read a core like a process's; the UKDBG notes are ours and are documented byte
for byte in docs/core-format.md.
"""

import struct

# --- ELF: the structs and numbers of ukdbg/elf.py, the one definition -------------------
from ..elf import (EHDR, EM_X86_64, ET_CORE, NHDR, PF_R, PF_W, PF_X,  # noqa: F401
                   PHDR, PT_LOAD, PT_NOTE)
ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV = 2, 1, 1, 0
PAGE = 4096
NOTE_ALIGN = 4                                    # core notes pad name and desc to 4

# Linux note types (name "CORE" unless said otherwise)
NT_PRSTATUS, NT_FPREGSET, NT_PRPSINFO, NT_AUXV = 1, 2, 3, 6
NT_SIGINFO = 0x53494749                           # "SIGI"
NT_X86_XSTATE = 0x202                             # name "LINUX"
NT_GNU_BUILD_ID = 3                               # name "GNU" (in the unikernel image)

# struct elf_prstatus (x86-64): siginfo head (signo, code, errno), pr_cursig, pad,
# sigpend, sighold, pid, ppid, pgrp, sid, 4 x struct timeval, pr_reg (user_regs_struct,
# 27 x u64), pr_fpvalid, pad.
PRSTATUS = struct.Struct("<3ih2xQQ4I8Q216sI4x")
assert PRSTATUS.size == 336
PR_REG_OFFSET = 112
# struct elf_prpsinfo (x86-64)
PRPSINFO = struct.Struct("<bcbb4xQIIIIII16s80s")
assert PRPSINFO.size == 136
# siginfo_t: signo, errno, code, pad, then the union (si_addr for faults, si_pid/si_uid
# for signals sent by a process); 128 bytes in all.
SIGINFO_HEAD = struct.Struct("<iii4xQ")
SIGINFO_SIZE = 128
AUXV_ENTRY = struct.Struct("<QQ")
AT_NULL, AT_PAGESZ, AT_ENTRY = 0, 6, 9
FXSAVE_SIZE = 512
XSAVE_XCR0_OFFSET = 464                           # Linux: sw_reserved[0] = XCR0 (gdb reads it)
XSAVE_HDR_OFFSET = 512
# Standard-format offsets of the XSAVE components: bit -> (offset, size).
XSTATE_COMPONENTS = {2: (576, 256), 3: (960, 64), 4: (1024, 64), 5: (1088, 64),
                     6: (1152, 512), 7: (1664, 1024), 9: (2688, 8)}

# si_code values (include/uapi/asm-generic/siginfo.h)
SI_USER, SI_KERNEL, SI_TKILL = 0, 0x80, -6
SEGV_MAPERR, SEGV_ACCERR = 1, 2
BUS_ADRERR = 2
ILL_ILLOPN = 2
FPE_INTDIV, FPE_FLTINV = 1, 7
TRAP_BRKPT = 1
SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV = 4, 5, 6, 7, 8, 11
_FAULT_SIGNALS = (SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV)


def xstate_size(xcr0: int, available: int) -> int:
    """Bytes of the XSAVE area that hold the components of xcr0 (like Linux's
    xstate size), at least the legacy area and header, at most what we have."""
    size = 576
    for bit, (off, sz) in XSTATE_COMPONENTS.items():
        if xcr0 >> bit & 1:
            size = max(size, off + sz)
    return min(size, available)


def siginfo_code(signal: int, cause: str, vector, error_code) -> int:
    """The si_code a Linux process would get for this ending."""
    if signal == SIGABRT:
        return SI_TKILL                                  # abort() raises with tgkill
    if cause in ("signal", "timeout", "live", ""):
        return SI_USER
    if vector == 14:
        return SEGV_ACCERR if (error_code or 0) & 1 else SEGV_MAPERR
    if vector == 0:
        return FPE_INTDIV
    if vector == 6:
        return ILL_ILLOPN
    if vector in (16, 19):
        return FPE_FLTINV
    if vector == 3:
        return TRAP_BRKPT
    if cause == "readonly":
        return SEGV_ACCERR
    if cause == "unmapped":
        return BUS_ADRERR
    return SI_KERNEL


def pack_note(name: str, ntype: int, desc: bytes) -> bytes:
    n = name.encode() + b"\0"
    return (NHDR.pack(len(n), len(desc), ntype) + _pad(n) + _pad(bytes(desc)))


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % NOTE_ALIGN)


def pack_prstatus(signal: int, pid: int, user_regs: bytes, si_code: int = 0) -> bytes:
    return PRSTATUS.pack(signal, si_code, 0, signal, 0, 0, pid, pid, pid, pid,
                         *([0] * 8), user_regs, 1)


def pack_prpsinfo(pid: int, fname: str, psargs: str) -> bytes:
    return PRPSINFO.pack(0, b"R", 0, 0, 0, 0, 0, pid, pid, pid, pid,
                         fname.encode("utf-8", "replace")[:16],  # NUL-less at 16, as bfd allows
                         psargs.encode("utf-8", "replace")[:79])


def pack_siginfo(signo: int, code: int, addr: int = 0) -> bytes:
    return SIGINFO_HEAD.pack(signo, 0, code, addr & (2**64 - 1)).ljust(SIGINFO_SIZE, b"\0")


def pack_auxv(entry: int) -> bytes:
    return b"".join(AUXV_ENTRY.pack(k, v) for k, v in
                    ((AT_ENTRY, entry), (AT_PAGESZ, PAGE), (AT_NULL, 0)))


def pack_xstate(area: bytes, xcr0: int) -> bytes:
    """The XSAVE area trimmed to the size of xcr0's components, with XCR0 stored at
    offset 464 as Linux does (gdb picks its register set from it)."""
    mask = xcr0 | 0x3       # x87 and SSE always live in the legacy area
    b = bytearray(area[:xstate_size(mask, len(area))])
    struct.pack_into("<Q", b, XSAVE_XCR0_OFFSET, mask)
    return bytes(b)


# --- OpenBSD notes, for lldb ------------------------------------------------------------
# lldb reads a Solo5 image as an OpenBSD executable (its "not OpenBSD" note) and loads it
# from a core only if the core is OpenBSD's too; it then wants OpenBSD's own register
# notes. BFD (gdb) would also decode them (a second thread) but matches the owner on
# namesz bytes, lldb on the NUL-terminated name: namesz 5 over "OpenBSD\0" is "OpenB"
# to BFD (decoded by type: these types mean nothing to it) and "OpenBSD" to lldb.
OPENBSD_OWNER, OPENBSD_NAMESZ = b"OpenBSD\0", 5
NT_OPENBSD_PROCINFO, NT_OPENBSD_AUXV, NT_OPENBSD_REGS, NT_OPENBSD_FPREGS = 10, 11, 20, 21
# struct elfcore_procinfo: version, size, signo, sigcode, 4 signal sets, pid, ppid, pgrp,
# sid, 6 ids, name[32]
OPENBSD_PROCINFO = struct.Struct("<8I4i6I32s")
assert OPENBSD_PROCINFO.size == 0x68
# struct reg (amd64)
OPENBSD_REG_FIELDS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9", "r10", "r11", "r12", "r13",
                      "r14", "r15", "rbp", "rbx", "rax", "rsp", "rip", "rflags", "cs", "ss",
                      "ds", "es", "fs", "gs")
OPENBSD_REG = struct.Struct("<24Q")


def pack_openbsd_note(ntype: int, desc: bytes) -> bytes:
    return NHDR.pack(OPENBSD_NAMESZ, len(desc), ntype) + OPENBSD_OWNER + _pad(bytes(desc))


def pack_openbsd_notes(regs, fxsave: bytes, signal: int, pid: int, name: str,
                       entry: int) -> bytes:
    """The four notes lldb's OpenBSD core reader needs (regs: arch.x86_64.Regs)."""
    procinfo = OPENBSD_PROCINFO.pack(1, OPENBSD_PROCINFO.size, signal, 0, 0, 0, 0, 0,
                                     pid, pid, pid, pid, 0, 0, 0, 0, 0, 0,
                                     name.encode("utf-8", "replace")[:31])
    gp = OPENBSD_REG.pack(*(getattr(regs, f) & 0xFFFFFFFFFFFFFFFF
                            for f in OPENBSD_REG_FIELDS))
    return b"".join((pack_openbsd_note(NT_OPENBSD_PROCINFO, procinfo),
                     pack_openbsd_note(NT_OPENBSD_AUXV, pack_auxv(entry)),
                     pack_openbsd_note(NT_OPENBSD_REGS, gp),
                     pack_openbsd_note(NT_OPENBSD_FPREGS, fxsave)))


# --- UKDBG notes: name "UKDBG", one type per record (docs/core-format.md) --------------
UKDBG_NAME = "UKDBG"
UKDBG_VERSION = 1
# BFD (gdb) decodes core notes by type whatever their name, so our types stay clear
# of every Linux/BSD/Solaris note type: 0x554b44xx ("UKD" + record number).
NT_UKDBG_BASE = 0x554B4400
NT_UKDBG_SREGS = NT_UKDBG_BASE + 1     # struct kvm_sregs as KVM_GET_SREGS returned it
NT_UKDBG_CRASH = NT_UKDBG_BASE + 2     # why the guest stopped
NT_UKDBG_MONITOR = NT_UKDBG_BASE + 3   # the monitor: pid, version, command line, times
NT_UKDBG_IMAGE = NT_UKDBG_BASE + 4     # the unikernel: path, size, sha256, build-id
NT_UKDBG_STATS = NT_UKDBG_BASE + 5     # hypercall and VM-exit counts
NT_UKDBG_CONSOLE = NT_UKDBG_BASE + 6   # the last 64 KiB of console output
NT_UKDBG_PHYS = NT_UKDBG_BASE + 7      # where guest-physical memory lies in the file
NT_UKDBG_FLIGHT = NT_UKDBG_BASE + 8    # the flight recorder's last events (coredump/flight.py)

# kvm_sregs: 8 x kvm_segment (cs ds es fs gs ss tr ldt), gdt, idt, cr0 cr2 cr3 cr4 cr8
# efer apic_base, interrupt_bitmap[4]
KVM_SEGMENT = struct.Struct("<QIHBBBBBBBBBx")
KVM_DTABLE = struct.Struct("<QH6x")
SREGS_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
SREGS_TAIL = struct.Struct("<7Q4Q")
SREGS_SIZE = 8 * KVM_SEGMENT.size + 2 * KVM_DTABLE.size + SREGS_TAIL.size
assert SREGS_SIZE == 312

CRASH_HEAD = struct.Struct("<IIIiiIQQQQ")   # version kind signal vector status exit_reason
#                                           # flags error_code fault_addr rip
CRASH_KINDS = ("live", "exited", "crashed", "killed", "interrupted", "stopped")
CRASH_HAS_VECTOR, CRASH_HAS_EC, CRASH_HAS_ADDR, CRASH_HAS_RIP, CRASH_HAS_STATUS, \
    CRASH_HAS_EXIT_REASON = 1, 2, 4, 8, 16, 32
MONITOR_HEAD = struct.Struct("<IIQQQ")      # version pid dump_time_ns uptime_ns mem_size
IMAGE_HEAD = struct.Struct("<IIQ32s")       # version pad size sha256
STATS_ENTRY = struct.Struct("<IIQ")         # kind(0 hypercall, 1 exit) number count
CONSOLE_HEAD = struct.Struct("<IIQ")        # version pad total_bytes
PHYS_HEAD = struct.Struct("<IIQQQ")         # version n_extents file_offset size mem_size
PHYS_EXTENT = struct.Struct("<QQ")


def pack_strings(*strings) -> bytes:
    """Each string as u32 length + UTF-8 bytes (no NUL, no padding)."""
    out = []
    for s in strings:
        b = s if isinstance(s, bytes) else str(s).encode("utf-8", "replace")
        out.append(struct.pack("<I", len(b)) + b)
    return b"".join(out)


def unpack_strings(data: bytes, pos: int, count=None):
    """(list of bytes, end position); raises ValueError when a length runs past data."""
    out = []
    while pos < len(data) if count is None else len(out) < count:
        if pos + 4 > len(data):
            raise ValueError("string length runs past the note")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + n > len(data):
            raise ValueError("string runs past the note")
        out.append(bytes(data[pos:pos + n]))
        pos += n
    return out, pos


class CrashInfo:
    """NT_UKDBG_CRASH decoded (also what the writer packs)."""
    __slots__ = ("kind", "signal", "vector", "error_code", "fault_addr", "rip", "status",
                 "exit_reason", "cause", "message")

    def __init__(self, kind="live", signal=0, vector=None, error_code=None,
                 fault_addr=None, rip=None, status=None, exit_reason=None, cause="",
                 message=""):
        self.kind, self.signal, self.vector = kind, signal, vector
        self.error_code, self.fault_addr, self.rip = error_code, fault_addr, rip
        self.status, self.exit_reason = status, exit_reason
        self.cause, self.message = cause, message

    def pack(self) -> bytes:
        flags = 0
        for bit, v in ((CRASH_HAS_VECTOR, self.vector), (CRASH_HAS_EC, self.error_code),
                       (CRASH_HAS_ADDR, self.fault_addr), (CRASH_HAS_RIP, self.rip),
                       (CRASH_HAS_STATUS, self.status),
                       (CRASH_HAS_EXIT_REASON, self.exit_reason)):
            if v is not None:
                flags |= bit
        m64 = 2**64 - 1
        head = CRASH_HEAD.pack(UKDBG_VERSION, CRASH_KINDS.index(self.kind),
                               self.signal & 0xFFFFFFFF,
                               self.vector if self.vector is not None else -1,
                               _i32(self.status if self.status is not None else 0),
                               (self.exit_reason or 0) & 0xFFFFFFFF, flags,
                               (self.error_code or 0) & m64, (self.fault_addr or 0) & m64,
                               (self.rip or 0) & m64)
        return head + pack_strings(self.cause, self.message)

    @classmethod
    def unpack(cls, data: bytes) -> "CrashInfo":
        if len(data) < CRASH_HEAD.size:
            raise ValueError("crash record too short")
        (_ver, kind, sig, vec, status, reason, flags, ec, addr,
         rip) = CRASH_HEAD.unpack_from(data, 0)
        if kind >= len(CRASH_KINDS):
            raise ValueError(f"unknown stop kind {kind}")
        (cause, message), _ = unpack_strings(data, CRASH_HEAD.size, 2)
        c = cls(CRASH_KINDS[kind], sig)
        c.vector = vec if flags & CRASH_HAS_VECTOR else None
        c.error_code = ec if flags & CRASH_HAS_EC else None
        c.fault_addr = addr if flags & CRASH_HAS_ADDR else None
        c.rip = rip if flags & CRASH_HAS_RIP else None
        c.status = status if flags & CRASH_HAS_STATUS else None
        c.exit_reason = reason if flags & CRASH_HAS_EXIT_REASON else None
        c.cause = cause.decode("utf-8", "replace")
        c.message = message.decode("utf-8", "replace")
        return c


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def unpack_sregs(data: bytes) -> dict:
    """NT_UKDBG_SREGS -> {'cs': {base, limit, selector, ...}, ..., 'gdt': {base, limit},
    'cr0': ..., 'apic_base': ..., 'interrupt_bitmap': (4 x u64)}."""
    if len(data) < SREGS_SIZE:
        raise ValueError("sregs record too short")
    out = {}
    fields = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g",
              "avl", "unusable")
    for i, n in enumerate(SREGS_SEGMENTS):
        out[n] = dict(zip(fields, KVM_SEGMENT.unpack_from(data, i * KVM_SEGMENT.size)))
    off = 8 * KVM_SEGMENT.size
    for i, n in enumerate(("gdt", "idt")):
        out[n] = dict(zip(("base", "limit"), KVM_DTABLE.unpack_from(data, off + 16 * i)))
    t = SREGS_TAIL.unpack_from(data, off + 32)
    for n, v in zip(("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"), t[:7]):
        out[n] = v
    out["interrupt_bitmap"] = t[7:]
    return out
