"""ukdbg/reverse/checkpoint.py: whole-machine checkpoints (vCPU state + guest memory).

Memory is kept as deltas in a tree. The root holds every touched page (SEEK_DATA on
the memfd); every other checkpoint holds the pages written since its parent, which is
the checkpoint the machine was restored to (or last took) before it ran to this one.
Writes are seen two ways:
  * the guest's: KVM dirty logging on every read-write memslot (KVM_GET_DIRTY_LOG).
    The memslots are split (read-only text, watchpoint pages); a slot that is about
    to be deleted is harvested first (MemSlots.before_change);
  * the monitor's (hypercall results, emulated watchpoint writes, breakpoint bytes):
    GuestMemory's write methods are wrapped while checkpoints are on.
Pages are stored as the guest sees them, with planted breakpoint bytes replaced by the
original ones (DebugControl.shadow), so a restore works whatever is planted then.

restore(j) rewrites only the pages that can differ: those dirty since the current
base, plus those in the deltas on the tree path from the base to j. A page's content
at j is the one in the nearest checkpoint on j's path to the root that holds it (else
the page was an untouched hole: zeros).
"""

from ..kvm import uapi

PAGE = 4096
ZERO = bytes(PAGE)
# MSRs a guest may set and the vCPU state does not otherwise cover (EFER, FS/GS base
# are in the sregs). Probed once: those KVM cannot read are left out.
MSRS = (0x174, 0x175, 0x176, 0x277, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,
        0xC0000102, 0xC0000103)


class VcpuState:
    """Everything KVM keeps for the vCPU that a guest can change."""
    __slots__ = ("regs", "sregs", "xsave", "xcrs", "debugregs", "events", "msrs")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def size(self) -> int:
        return 144 + 312 + len(self.xsave or b"") + len(self.xcrs or b"") + 128 + 64 + \
            16 * len(self.msrs or ())


class Checkpoint:
    __slots__ = ("id", "parent", "legs", "vcpu", "pages", "extra", "events", "t",
                 "children", "label")

    def __init__(self, id_, parent, legs, vcpu, pages, extra, events, t):
        self.id = id_
        self.parent = parent          # Checkpoint | None (the root)
        self.legs = legs              # how to get here from parent (engine.Leg tuple)
        self.vcpu = vcpu
        self.pages = pages            # {page number: bytes} written since parent
        self.extra = extra            # monitor-side state (engine's)
        self.events = events          # hypercalls done before this point
        self.t = t                    # guest run time from the root (s), estimated
        self.children = []
        self.label = ""

    def nbytes(self) -> int:
        return len(self.pages) * PAGE + self.vcpu.size()

    def path(self):
        """self, parent, ..., root."""
        c = self
        while c is not None:
            yield c
            c = c.parent


class DirtyTracker:
    """Pages written since reset(): the guest's (KVM dirty log) and the monitor's."""

    def __init__(self, m):
        self.m = m
        self.pages = set()
        self._bitmaps = {}
        mem = m.mem
        self._orig = {}
        for name in ("write", "guest_write", "write_u64", "pack", "slice"):
            self._orig[name] = getattr(mem, name)
        pages = self.pages

        size = mem.size

        def mark(gpa, n):
            n = min(gpa + n, size) - gpa
            if n > 0 and gpa >= 0:
                pages.update(range(gpa // PAGE, (gpa + n - 1) // PAGE + 1))
        self.mark = mark

        o = self._orig

        def write(gpa, data):
            o["write"](gpa, data)
            mark(gpa, len(data))

        def guest_write(gpa, data):
            o["guest_write"](gpa, data)
            mark(gpa, len(data))

        def write_u64(gpa, value):
            o["write_u64"](gpa, value)
            mark(gpa, 8)

        def pack(st, gpa, *values):
            o["pack"](st, gpa, *values)
            mark(gpa, st.size)

        def slice_(gpa, size):
            v = o["slice"](gpa, size)
            mark(gpa, size)               # a writable view: assume it is written
            return v

        mem.write, mem.guest_write, mem.write_u64 = write, guest_write, write_u64
        mem.pack, mem.slice = pack, slice_
        m.slots.log_dirty = True
        m.slots.before_change = self.harvest
        m.slots.install()                 # re-creates the rw slots with logging on
        self.harvest()
        self.pages.clear()

    def harvest(self) -> None:
        """Move the KVM dirty logs of the current slots into self.pages."""
        vm = self.m.vm
        for (gpa, size, flags), slot in self.m.slots.current.items():
            if not flags & uapi.KVM_MEM_LOG_DIRTY_PAGES:
                continue
            npages = size // PAGE
            bm = self._bitmaps.get((gpa, size))
            if bm is None:
                bm = self._bitmaps[(gpa, size)] = bytearray((npages + 63) // 64 * 8)
            vm.get_dirty_log(slot, bm)
            if not bm.count(0) == len(bm):
                v = int.from_bytes(bm, "little")
                base = gpa // PAGE
                while v:
                    low = v & -v
                    self.pages.add(base + low.bit_length() - 1)
                    v ^= low

    def dirty(self) -> set:
        self.harvest()
        return self.pages

    def reset(self) -> None:
        self.harvest()
        self.pages.clear()

    def raw_write(self, gpa, data) -> None:
        """A restore's write: not a change since the base."""
        self._orig["write"](gpa, data)


class Store:
    """The checkpoints of one machine and the restore logic (see the module doc)."""

    def __init__(self, m, limit_bytes):
        self.m = m
        self.limit = limit_bytes
        self.tracker = DirtyTracker(m)
        self.root = None
        self.base = None              # the checkpoint the machine's memory derives from
        self.all = []
        self.next_id = 0
        self.nbytes = 0
        self.thinned = 0
        self.msrs = self._probe_msrs()

    def _probe_msrs(self):
        ok = []
        for i in MSRS:
            try:
                if i in self.m.vcpu.get_msrs((i,)):
                    ok.append(i)
            except Exception:
                pass
        return tuple(ok)

    # --- vCPU ------------------------------------------------------------------------------
    def save_vcpu(self) -> VcpuState:
        v, caps = self.m.vcpu, self.m.caps
        return VcpuState(
            regs=v.get_regs(), sregs=v.get_sregs(),
            xsave=v.get_xsave() if caps.get("xsave") else None,
            xcrs=v.get_xcrs_raw() if caps.get("xcrs") else None,
            debugregs=v.get_debugregs() if caps.get("debugregs") else None,
            events=v.get_vcpu_events() if caps.get("vcpu_events") else None,
            msrs=v.get_msrs(self.msrs) if self.msrs else {})

    def restore_vcpu(self, s: VcpuState) -> None:
        v = self.m.vcpu
        v.set_sregs(s.sregs)
        if s.xcrs is not None:
            v.set_xcrs_raw(s.xcrs)
        if s.xsave is not None:
            v.set_xsave(s.xsave)
        if s.msrs:
            v.set_msrs(s.msrs)
        if s.debugregs is not None:
            v.set_debugregs(s.debugregs)
        if s.events is not None:
            v.set_vcpu_events(s.events)
        v.set_regs(s.regs)

    # --- memory ----------------------------------------------------------------------------
    def _page(self, p) -> bytes:
        gpa = p * PAGE
        data = self.m.mem.read(gpa, PAGE)
        dc = self.m.debug
        return dc.shadow(gpa, data) if dc is not None else data

    def take(self, legs, extra, events, t):
        """A checkpoint of the machine now, child of the base (None: the root)."""
        if self.root is None:
            pages = {}
            for lo, hi in self.m.mem.touched_extents():
                for p in range(lo // PAGE, (hi + PAGE - 1) // PAGE):
                    pages[p] = self._page(p)
            self.tracker.reset()
        else:
            pages = {p: self._page(p) for p in self.tracker.dirty()}
            self.tracker.pages.clear()
        c = Checkpoint(self.next_id, self.base, legs, self.save_vcpu(), pages, extra,
                       events, t)
        self.next_id += 1
        if self.base is not None:
            self.base.children.append(c)
        else:
            self.root = c
        self.all.append(c)
        self.base = c
        self.nbytes += c.nbytes()
        return c

    def restore(self, c) -> None:
        """Make the machine's vCPU and memory what they were at checkpoint c."""
        todo = set(self.tracker.dirty())
        here = set(id(x) for x in self.base.path())
        lca = None
        for x in c.path():
            if id(x) in here:
                lca = x
                break
        for start in (self.base, c):
            for x in start.path():
                if x is lca:
                    break
                todo.update(x.pages)
        mem = self.m.mem
        dc = self.m.debug
        planted = {}
        if dc is not None:
            for gpa, bp in dc.sw.items():
                if not bp.lifted:
                    planted.setdefault(gpa // PAGE, []).append(bp)
        chain = list(c.path())
        for p in todo:
            data = ZERO
            for x in chain:
                d = x.pages.get(p)
                if d is not None:
                    data = d
                    break
            if p * PAGE + PAGE > mem.size:
                continue
            if p in planted:
                buf = bytearray(data)
                for bp in planted[p]:
                    bp.orig = buf[bp.gpa - p * PAGE]
                    buf[bp.gpa - p * PAGE] = 0xCC
                data = bytes(buf)
            self.tracker.raw_write(p * PAGE, data)
        self.tracker.pages.clear()
        self.restore_vcpu(c.vcpu)
        self.base = c

    def reset(self) -> None:
        """Forget every checkpoint (the next take() is a new root)."""
        self.root = self.base = None
        self.all = []
        self.nbytes = 0

    # --- bounding the memory ---------------------------------------------------------------
    def drop(self, c, keep) -> None:
        """Remove checkpoint c: its children take its delta and its legs; `keep` are
        checkpoints that must stay (the base, the pinned ones)."""
        p = c.parent
        for ch in c.children:
            for page, data in c.pages.items():
                if page not in ch.pages:
                    ch.pages[page] = data
                    self.nbytes += PAGE
            ch.legs = tuple(c.legs) + tuple(ch.legs)
            ch.parent = p
            p.children.append(ch)
        p.children.remove(c)
        self.all.remove(c)
        self.nbytes -= c.nbytes()
        self.thinned += 1

    def thin(self, keep) -> list:
        """Drop old checkpoints until the total fits the limit: the one with the fewest
        children whose neighbours are closest in guest time, oldest first. Returns the
        dropped ones (bookmarks anchored there must be re-anchored)."""
        dropped = []
        while self.nbytes > self.limit:
            cands = [c for c in self.all if c.parent is not None and c not in keep
                     and len(c.children) <= 1]
            if not cands:
                break
            now = max(c.t for c in self.all) or 1.0

            def score(c):
                nxt = c.children[0].t if c.children else now
                gap = nxt - c.parent.t
                age = now - c.t + 1e-6
                return gap / age
            c = min(cands, key=score)
            self.drop(c, keep)
            dropped.append(c)
        return dropped
