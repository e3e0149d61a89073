"""ukdbg/replay/traps.py: the instructions that read the outside world without an exit.

RDTSC, RDTSCP, RDRAND and RDSEED run inside the guest without any exit to the monitor,
on VMX/SVM KVM and on PVM alike (platform.md). To record and replay them, find them
in the image's executable segments at load and plant an int3 on each, as software
breakpoints are planted (tender/debug.py DebugControl, whose identify() knows both
ways an int3 exits). A hit is emulated: the registers are set and rip moves past the
instruction; the original instruction never runs.

Finding them: a byte search for the opcodes (0F 31, 0F 01 F9, 0F C7 /6 /7 with mod=11)
gives candidates; only if there are any, capstone disassembles the segment linearly
and only candidates that start a decoded instruction of that mnemonic are kept (a
0F 31 inside an immediate or a displacement is not an instruction).

Not covered (docs/replay.md): code written at run time (the loader's segments are the
only ones scanned; hvt text is read-only, so the image cannot patch itself), code the
linear sweep decodes out of step (data inside text), and CPUID, which exits to KVM
itself and answers from the table the recording carries.
"""

import os

from ..elf import PF_X, PT_LOAD
from .format import T_RDRAND, T_RDSEED, T_RDTSC, T_RDTSCP, TRAP_NAMES

MSR_TSC = 0x10
MSR_TSC_AUX = 0xC0000103
# x86 register number -> kvm_regs field
REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_FLAGS_CLEARED = (1 << 0) | (1 << 2) | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 11)
_M32 = 0xFFFFFFFF


class Site:
    """One trapped instruction: where, what, its length and (RDRAND/RDSEED) the
    destination register and operand size in bits."""
    __slots__ = ("gva", "kind", "length", "reg", "bits")

    def __init__(self, gva, kind, length, reg=None, bits=64):
        self.gva, self.kind, self.length, self.reg, self.bits = gva, kind, length, reg, bits

    def __repr__(self):
        r = f" {self.reg}/{self.bits}" if self.reg else ""
        return f"Site({self.gva:#x} {TRAP_NAMES[self.kind]}{r})"


def _decode(code: bytes, off: int, size: int):
    """A Site's (kind, reg, bits) from the instruction bytes, or None."""
    i, end = off, off + size
    opsize16 = False
    rex = 0
    while i < end and code[i] in (0x66, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65):
        if code[i] in (0xF2, 0xF3):
            return None                      # F3 0F C7 /7 is RDPID: not ours
        opsize16 |= code[i] == 0x66
        i += 1
    if i < end and 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    op = code[i:end]
    if op == b"\x0f\x31":
        return T_RDTSC, None, 0
    if op == b"\x0f\x01\xf9":
        return T_RDTSCP, None, 0
    if len(op) == 3 and op[:2] == b"\x0f\xc7" and op[2] >> 6 == 3 and (op[2] >> 3) & 7 in (6, 7):
        kind = T_RDRAND if (op[2] >> 3) & 7 == 6 else T_RDSEED
        reg = REG_NAMES[(op[2] & 7) | (8 if rex & 1 else 0)]
        bits = 64 if rex & 8 else (16 if opsize16 else 32)
        return kind, reg, bits
    return None


def scan_segment(code: bytes, base: int, start_of=None) -> list:
    """The Sites in one executable segment loaded at `base`. start_of(addr) gives a
    known instruction boundary at or below addr (its function's start), so only the
    functions with candidates are disassembled; without one, the sweep starts at the
    segment's start."""
    cands = set()
    for pat in (b"\x0f\x31", b"\x0f\x01\xf9", b"\x0f\xc7"):
        i = code.find(pat)
        while i >= 0:
            cands.add(i)
            i = code.find(pat, i + 1)
    if not cands:
        return []                           # the common case: no capstone at all
    import capstone
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    groups = {}                             # sweep start offset -> candidates
    for c in sorted(cands):
        s = start_of(base + c) if start_of else None
        off = s - base if s is not None and 0 <= s - base <= c else 0
        groups.setdefault(off, []).append(c)
    sites = {}
    for off, group in sorted(groups.items()):
        _sweep(md, code, base, off, max(group) + 16, cands, sites)
    return [sites[k] for k in sorted(sites)]


def _sweep(md, code, base, pos, end, cands, sites) -> None:
    """Linear disassembly of code[pos:end]; candidates that start an instruction of
    ours (or sit inside an RDRAND/RDSEED's prefixes) become Sites."""
    end = min(end, len(code))
    while pos < end:
        last = None
        for addr, size, mnem, _ops in md.disasm_lite(code[pos:end + 16], base + pos):
            off = addr - base
            last = off + size
            if mnem in ("rdtsc", "rdtscp", "rdrand", "rdseed") and off in cands \
                    or mnem in ("rdrand", "rdseed") and any(off < c < last for c in cands):
                d = _decode(code, off, size)
                if d is not None:
                    sites[addr] = Site(addr, d[0], size, d[1], d[2])
            if last >= end:
                break
        # capstone stops at bytes it cannot decode: go on one byte further
        pos = pos + 1 if last is None else last


def scan_image(image) -> list:
    """Sites in every executable PT_LOAD of the image, sorted by address."""
    elf = image.elf
    sites = []

    def start_of(addr):
        try:
            hit = elf.symbolize(addr)
        except Exception:               # a damaged symbol table: sweep from the start
            return None
        if hit is None or not hit[0].size or hit[0].type != 2:      # STT_FUNC
            return None
        return hit[0].value
    for seg in elf.segments:
        if seg.type != PT_LOAD or not seg.flags & PF_X or not seg.filesz:
            continue
        code = elf._slice(seg.offset, seg.filesz, "text")
        sites.extend(scan_segment(bytes(code), seg.vaddr, start_of))
    sites.sort(key=lambda s: s.gva)
    return sites


# --- emulation ------------------------------------------------------------------------
def live_values(m, site):
    """(value, aux) as the real instruction would give them now."""
    if site.kind in (T_RDTSC, T_RDTSCP):
        tsc = m.vcpu.get_msr(MSR_TSC)
        aux = m.vcpu.get_msr(MSR_TSC_AUX) if site.kind == T_RDTSCP else 0
        return tsc, aux
    v = int.from_bytes(os.urandom(8), "little") & ((1 << site.bits) - 1)
    return v, 1                             # aux = CF: the hardware had a number


def apply(k, site, value: int, aux: int) -> None:
    """Set kvm_regs k as the instruction at `site` would, and step past it."""
    if site.kind in (T_RDTSC, T_RDTSCP):
        k.rax = value & _M32
        k.rdx = (value >> 32) & _M32
        if site.kind == T_RDTSCP:
            k.rcx = aux & _M32
    else:
        old = getattr(k, site.reg)
        if site.bits == 16:
            new = (old & ~0xFFFF) | (value & 0xFFFF)
        elif site.bits == 32:
            new = value & _M32
        else:
            new = value & ((1 << 64) - 1)
        setattr(k, site.reg, new)
        k.rflags = (k.rflags & ~_FLAGS_CLEARED) | (1 if aux else 0)
    k.rip = (site.gva + site.length) & ((1 << 64) - 1)


def fast_hook(m, sites, owner, emulate, skip=lambda gva: False):
    """A vmexit hook for the hot path: a hit on one of `sites` is recognised with one
    KVM_GET_REGS (DebugControl's general path translates the address twice) and handed
    to emulate(m, gva, kregs) -> Stop | None. A site that another owner (gdb) also has
    a breakpoint on, or that skip(gva) claims, goes the general way."""
    from ..tender.machine import HANDLED
    vcpu = m.vcpu
    sw = m.debug.sw

    def hook(m, ex):
        reason = ex.reason
        if reason == 17:                    # emulation failure at an int3 (PVM)
            if ex.suberror != 1:
                return None
            k = vcpu.get_regs()
            gva = k.rip
        elif reason == 4 and ex.exception == 3:     # KVM_EXIT_DEBUG, #BP (VMX/SVM)
            k = vcpu.get_regs()
            gva = ex.pc
        else:
            return None
        if gva not in sites:
            return None
        bp = sw.get(gva)                    # hvt maps 1:1; anything else: general path
        if bp is None or bp.gva != gva or bp.lifted or len(bp.owners) != 1 \
                or owner not in bp.owners or skip(gva):
            return None
        r = emulate(m, gva, k)
        return HANDLED if r is None else r
    return hook
