"""ukdbg/tender/boot.py: the x86-64 long-mode entry state of an hvt guest (§3-§5).

Page tables, the boot GDT, and the register values at the first instruction.
"""

import _struct as struct  # not struct.py: one import less at start-up

from ..kvm import uapi
from . import abi

PTE_P, PTE_RW, PTE_PS = 0x1, 0x2, 0x80
CR0_PE, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 5, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
BOOT_CR0 = CR0_PE | CR0_NE | CR0_WP | CR0_PG          # 0x80010021
BOOT_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT      # 0x620
BOOT_EFER = EFER_LME | EFER_LMA                       # 0x500
GDT_CODE = 0x00AF99000000FFFF
GDT_DATA = 0x00CF93000000FFFF
SEL_CODE, SEL_DATA = 0x08, 0x10
TWO_MB = 2 << 20


def setup_page_tables(mem, alloc_size: int) -> None:
    """§3: identity map, 4 KiB pages in the first 2 MiB (low 64 KiB absent, boot info
    window read-only), 2 MiB pages above, up to alloc_size."""
    mem.write(abi.BOOT_PML4, struct.pack("<Q", abi.BOOT_PDPTE | PTE_P | PTE_RW))
    mem.write(abi.BOOT_PDPTE, struct.pack("<4Q", *((abi.BOOT_PDE + i * 0x1000) | PTE_P | PTE_RW
                                                   for i in range(4))))
    # Entries as ranges (address + flags, the flags below the alignment): built in C,
    # ~0.08 ms less than generators at every start.
    n = alloc_size // TWO_MB
    big = PTE_P | PTE_RW | PTE_PS
    mem.write(abi.BOOT_PDE, struct.pack(f"<{n}Q", abi.BOOT_PT0 | PTE_P | PTE_RW,
                                        *range(TWO_MB + big, n * TWO_MB + big, TWO_MB)))
    mem.write(abi.BOOT_PT0, struct.pack("<512Q", *(0,) * 16,
                                        *range(16 * 0x1000 + PTE_P, 256 * 0x1000, 0x1000),
                                        *range(256 * 0x1000 + (PTE_P | PTE_RW),
                                               512 * 0x1000, 0x1000)))


def setup_gdt(mem) -> None:
    """§4: null, 64-bit code (0x08), data (0x10) at 0x1000."""
    mem.write(abi.BOOT_GDT, struct.pack("<3Q", 0, GDT_CODE, GDT_DATA))


def _segment(seg, selector, type_, l, db):
    seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, selector, type_
    seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g = 1, 0, db, 1, l, 1
    seg.avl, seg.unusable = 0, 0


def boot_sregs(sregs: uapi.kvm_sregs) -> uapi.kvm_sregs:
    """§5 system registers, on top of KVM's defaults (apic_base etc. are kept)."""
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = BOOT_CR0, abi.BOOT_PML4, BOOT_CR4, BOOT_EFER
    _segment(sregs.cs, SEL_CODE, 9, 1, 0)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _segment(getattr(sregs, name), SEL_DATA, 3, 0, 1)
    tr = sregs.tr
    tr.base, tr.limit, tr.selector, tr.type, tr.present, tr.s = 0, 0, 0, 11, 1, 0
    tr.dpl = tr.db = tr.l = tr.g = tr.avl = tr.unusable = 0
    sregs.ldt.unusable = 1
    sregs.ldt.present = 0
    sregs.gdt.base, sregs.gdt.limit = abi.BOOT_GDT, 3 * 8 - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    return sregs


def boot_regs(entry: int, mem_size: int) -> uapi.kvm_regs:
    """§5: RIP = entry, RSP = top of memory - 8, RDI = boot info, RFLAGS = 2."""
    regs = uapi.kvm_regs()
    regs.rip = entry
    regs.rsp = mem_size - 8
    regs.rdi = abi.BOOT_INFO
    regs.rflags = 0x2
    return regs
