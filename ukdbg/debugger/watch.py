"""ukdbg/debugger/watch.py: data watchpoints of any size and count, without debug registers.

Debug-register data watchpoints never fire on PVM hosts (platform.md) and are limited to
four of at most 8 bytes everywhere, so both KVM kinds use the memslots instead: a page
holding a write watchpoint becomes a KVM_MEM_READONLY slot, a page holding a read or
access watchpoint gets no slot at all. A guest access to such a page exits as Mmio:
the monitor performs it (writes through the host mapping, reads answered from it),
decides whether it touched a watched range (a write watchpoint needs the value to
change, as gdb's `watch`), and on a hit completes the instruction with an
immediate-exit KVM_RUN so that the stop shows the state after the access, as a
hardware watchpoint does.

Pages the CPU itself uses cannot be protected: the IDT, GDT and TSS, the page tables,
the exception stacks named by the TSS (event delivery cannot go through an MMIO exit),
and, for read watchpoints, executable pages (instructions cannot be fetched from
MMIO). Such watchpoints are refused.
"""

from ..arch import mmu
from ..kvm.exits import Mmio
from ..target import Watchpoint
from ..tender.machine import HANDLED

PAGE = 4096
KINDS = ("watch", "rwatch", "awatch")


class Watch:
    """One watchpoint: segs = [(gpa, gpa_end, gva)] per page it covers."""
    __slots__ = ("kind", "addr", "size", "segs")

    def __init__(self, kind, addr, size, segs):
        self.kind, self.addr, self.size, self.segs = kind, addr, size, segs


class Watchpoints:
    def __init__(self, m, translate):
        self.m = m
        self.translate = translate        # gva -> gpa | None (current page tables)
        self.watches = []
        self.applied_ro = set()           # page numbers protected now
        self.applied_none = set()
        self.pages = set()                # applied_ro | applied_none
        self.hooked = False
        self.refused = ""                 # why the last add was refused
        self._forbidden = None            # (cr3, {page: reason})
        self.last_hits = []               # (kind, addr, size) hit by the last access
        self.last_write = False           # ... which was a write
        self.pre = ()                     # reverse execution: see _perform
        self.pre_hit = None

    # --- what the debugger asks -------------------------------------------------------
    def add(self, kind: str, addr: int, size: int, sregs=None, rip=None) -> bool:
        if kind not in KINDS or size <= 0 or size > 1 << 30 or addr < 0 \
                or addr + size > 1 << 64:
            self.refused = "bad watchpoint"
            return False
        segs = []
        gva = addr
        end = addr + size
        while gva < end:
            gpa = self.translate(gva)
            if gpa is None:
                self.refused = f"address {gva:#x} is not mapped"
                return False
            n = min(end, (gva | (PAGE - 1)) + 1) - gva
            if not self.m.mem.contains(gpa, n):
                self.refused = f"address {gva:#x} is not in guest RAM"
                return False
            segs.append((gpa, gpa + n, gva))
            gva += n
        why = self._check(kind, segs, sregs, rip)
        if why:
            self.refused = f"cannot watch {addr:#x}: its page holds {why}"
            return False
        self.watches.append(Watch(kind, addr, size, segs))
        return True

    def remove(self, kind: str, addr: int, size: int) -> bool:
        for i, w in enumerate(self.watches):
            if w.kind == kind and w.addr == addr and w.size == size:
                del self.watches[i]
                return True
        return False

    def clear(self) -> None:
        self.watches = []
        self.sync()

    def sync(self) -> None:
        """Apply the protection the watchpoints need (before the guest runs: gdb removes
        and re-inserts them around every stop, which then costs nothing)."""
        if not self.watches and not self.pages:
            return                        # none wanted, none applied (every step)
        ro, none = set(), set()
        # Without read-only slots a write watchpoint's page gets no slot either.
        ro_ok = bool(self.m.caps.get("readonly_mem"))
        for w in self.watches:
            for gpa, gend, _ in w.segs:
                for p in range(gpa // PAGE, (gend - 1) // PAGE + 1):
                    (ro if w.kind == "watch" and ro_ok else none).add(p)
        ro -= none
        if ro == self.applied_ro and none == self.applied_none:
            return
        drop = (self.applied_ro | self.applied_none) - (ro | none)
        # A page that changes kind is unprotected first, then protected again.
        moved = (self.applied_ro & none) | (self.applied_none & ro)
        self.m.slots.protect(pages_ro=ro, pages_none=none, unprotect=drop | moved)
        self.applied_ro, self.applied_none = ro, none
        self.pages = ro | none
        if self.pages and not self.hooked:
            self.m.vmexit_hooks.insert(0, self.vmexit_hook)
            self.hooked = True
        elif not self.pages and self.hooked:
            self.m.vmexit_hooks.remove(self.vmexit_hook)
            self.hooked = False

    # --- safety -------------------------------------------------------------------------
    def _check(self, kind, segs, sregs, rip):
        forbidden = self.forbidden_pages(sregs)
        for gpa, gend, _ in segs:
            for p in range(gpa // PAGE, (gend - 1) // PAGE + 1):
                why = forbidden.get(p)
                if why:
                    return why
                if kind != "watch":
                    if self._executable(p):
                        return "code (instructions cannot be fetched from a trapped page)"
                    if rip is not None:
                        rpa = self.translate(rip)
                        if rpa is not None and rpa // PAGE == p:
                            return "the code being executed"
        return None

    def _executable(self, page) -> bool:
        a = page * PAGE
        for seg in self.m.image.segments:
            if "x" in seg.perms and seg.start < a + PAGE and a < seg.end:
                return True
        return False

    def forbidden_pages(self, sregs=None) -> dict:
        """{page number: reason} of pages the CPU reads or writes behind the guest's
        instructions (cached per CR3)."""
        s = sregs or self.m.vcpu.get_sregs()
        if self._forbidden is not None and self._forbidden[0] == (s.cr3, s.idt.base,
                                                                   s.gdt.base, s.tr.base):
            return self._forbidden[1]
        out = {}
        mem = self.m.mem

        def rd(gpa):
            return mem.read_u64(gpa) if mem.contains(gpa, 8) else None

        def mark_gva(lo, size, why):
            for gva in range(lo & ~(PAGE - 1), lo + max(size, 1), PAGE):
                t = mmu.walk(rd, s.cr0, s.cr3, s.cr4, s.efer, gva)
                if t:
                    out.setdefault(t.gpa // PAGE, why)

        if s.idt.limit:
            mark_gva(s.idt.base, s.idt.limit + 1, "the guest's IDT")
        if s.gdt.limit:
            mark_gva(s.gdt.base, s.gdt.limit + 1, "the guest's GDT")
        if s.tr.limit:
            mark_gva(s.tr.base, s.tr.limit + 1, "the guest's TSS")
            # Exception stacks: RSP0-2 at offset 4, IST1-7 at offset 36.
            for off in (4, 12, 20) + tuple(36 + 8 * i for i in range(7)):
                if off + 8 > s.tr.limit + 1:
                    break
                t = mmu.walk(rd, s.cr0, s.cr3, s.cr4, s.efer, s.tr.base + off)
                if not t or not mem.contains(t.gpa, 8):
                    continue
                top = mem.read_u64(t.gpa)
                if top:
                    mark_gva(top - 1, 1, "an exception stack (named by the TSS)")
        for table in _table_pages(rd, s.cr0, s.cr3):
            out.setdefault(table // PAGE, "page tables")
        self._forbidden = ((s.cr3, s.idt.base, s.gdt.base, s.tr.base), out)
        return out

    # --- exits --------------------------------------------------------------------------
    def vmexit_hook(self, m, ex):
        if ex.__class__ is not Mmio or (ex.addr >> 12) not in self.pages:
            return None
        if ex.is_write and self.m.slots.image_readonly(ex.addr):
            return None                   # a real write to read-only memory: a crash
        hit = self._perform(ex)
        if hit is None:
            return HANDLED                # the next KVM_RUN completes the instruction
        self._complete()
        return hit

    def _perform(self, ex):
        """Do the access for the guest; the Watchpoint stop it hits, or None.
        self.last_hits lists every watchpoint the access hit (reverse execution needs
        them all). A write that hits one of self.pre (reverse execution going to the
        state before it) is not performed: self.pre_hit keeps it."""
        m = self.m
        gpa, n = ex.addr, ex.length
        end = gpa + n
        if ex.is_write:
            old = m.mem.read(gpa, n) if m.mem.contains(gpa, n) else None
            if old is None:
                return None
            new = bytes(ex.data)
        else:
            if not m.mem.contains(gpa, n):
                return None
            data = m.mem.read(gpa, n)
            if m.debug is not None:
                data = m.debug.shadow(gpa, data)
        hits = []
        for w in self.watches:
            if ex.is_write and w.kind == "rwatch" or not ex.is_write and w.kind == "watch":
                continue
            for sg, se, sva in w.segs:
                lo, hi = max(sg, gpa), min(se, end)
                if lo >= hi:
                    continue
                if w.kind == "watch" and old[lo - gpa:hi - gpa] == new[lo - gpa:hi - gpa]:
                    continue
                hits.append((w, sva + (lo - sg)))
                break
        self.last_hits = [(w.kind, w.addr, w.size) for w, _ in hits]
        self.last_write = bool(ex.is_write)
        if ex.is_write and hits and self.pre and \
                any((w.kind, w.addr, w.size) in self.pre for w, _ in hits):
            self.pre_hit = (gpa, new)
        elif ex.is_write:
            if m.debug is not None:
                m.debug.write_through(gpa, new)
            else:
                m.mem.write(gpa, new)
        else:
            m.vcpu.mmio_read_reply(data)
        if hits:
            w, a = hits[0]
            return Watchpoint(w.kind, a)
        return None

    def _complete(self):
        """Finish the trapped instruction without running the guest further."""
        vcpu = self.m.vcpu
        vcpu.set_immediate_exit(True)
        try:
            for _ in range(64):
                ex = vcpu.run()
                if ex.__class__ is Mmio and (ex.addr >> 12) in self.pages:
                    self._perform(ex)     # the same instruction's next piece
                    continue
                break
        finally:
            vcpu.set_immediate_exit(False)


def _table_pages(rd, cr0, cr3):
    """gpa of every page-table page reachable from CR3 (4-level paging)."""
    if not cr0 & mmu.CR0_PG:
        return set()
    out = set()
    todo = [(cr3 & mmu.ADDR_MASK, 4)]
    while todo:
        table, level = todo.pop()
        if table in out:
            continue
        out.add(table)
        if level == 1:
            continue
        for i in range(512):
            e = rd(table + 8 * i)
            if e is None or not e & mmu.PTE_P:
                continue
            if level in (3, 2) and e & mmu.PTE_PS:
                continue
            todo.append((e & mmu.ADDR_MASK, level - 1))
    return out
