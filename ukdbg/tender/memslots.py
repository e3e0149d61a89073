"""ukdbg/tender/memslots.py: the KVM memslot layout over guest RAM.

RAM is one memfd; KVM sees it through several slots so that pages can differ in what
the guest may do without a host exit:
  rw    ordinary RAM
  ro    KVM_MEM_READONLY: the image's text/rodata, and pages write-watched by a debugger
        (a guest write exits as MMIO with the data and is not performed)
  none  no slot: every access exits as MMIO (pages read-watched by a debugger)
The host mapping stays read-write throughout, so the monitor and debugger can always
write (breakpoints, emulated writes). Changing a page's kind re-lays the slots.
"""

from ..kvm import uapi

PAGE = 4096


class MemSlots:
    def __init__(self, m):
        self.m = m
        self.ro_pages = set()       # debugger write-protected pages (page numbers)
        self.none_pages = set()     # debugger unmapped pages
        self.current = {}           # (gpa, size, flags) -> slot id
        # Dirty logging (reverse execution's checkpoints): rw slots log the pages the
        # guest writes; before_change() harvests the logs of slots about to go.
        self.log_dirty = False
        self.before_change = None
        self._host = None

    def kind(self, gpa: int) -> str:
        """'rw', 'ro' or 'none' for the page holding gpa, as the guest sees it now."""
        page = gpa // PAGE
        if page in self.none_pages:
            return "none"
        if page in self.ro_pages:
            return "ro"
        if self.m.caps.get("readonly_mem"):
            for lo, hi in self.m.mem.readonly:
                if lo <= gpa < hi:
                    return "ro"
        return "rw"

    def image_readonly(self, gpa: int) -> bool:
        return any(lo <= gpa < hi for lo, hi in self.m.mem.readonly)

    def layout(self) -> list:
        """[(gpa, size, flags)] covering RAM, holes left for 'none' pages."""
        size = self.m.mem.size
        marks = {}                       # page -> kind, only for non-rw pages
        if self.m.caps.get("readonly_mem"):
            for lo, hi in self.m.mem.readonly:
                for p in range(lo // PAGE, (hi + PAGE - 1) // PAGE):
                    marks[p] = "ro"
            for p in self.ro_pages:
                marks[p] = "ro"
        for p in self.none_pages:
            marks[p] = "none"
        out = []
        pos = 0
        for p in sorted(marks):
            a = p * PAGE
            if a >= size:
                break
            if a > pos:
                out.append((pos, a - pos, "rw"))
            k = marks[p]
            if out and out[-1][2] == k and out[-1][0] + out[-1][1] == a:
                g, s, _ = out[-1]
                out[-1] = (g, s + PAGE, k)
            else:
                out.append((a, PAGE, k))
            pos = a + PAGE
        if pos < size:
            out.append((pos, size - pos, "rw"))
        merged = []
        for g, s, k in out:
            if merged and merged[-1][2] == k and merged[-1][0] + merged[-1][1] == g:
                merged[-1] = (merged[-1][0], merged[-1][1] + s, k)
            else:
                merged.append((g, s, k))
        rw = uapi.KVM_MEM_LOG_DIRTY_PAGES if self.log_dirty else 0
        return [(g, s, uapi.KVM_MEM_READONLY if k == "ro" else rw)
                for g, s, k in merged if k != "none"]

    def install(self) -> None:
        """Apply the layout, changing only the slots that differ."""
        if self._host is None:
            self._host = self.m.mem.host_address
        want = self.layout()
        if self.before_change is not None and set(want) != set(self.current):
            self.before_change()
        vm = self.m.vm
        keep = {}
        for key, slot in list(self.current.items()):
            if key in want:
                keep[key] = slot
            else:
                vm.set_user_memory_region(slot, key[2], key[0], 0, self._host + key[0])
        used = set(keep.values())
        free = (i for i in range(1 << 15) if i not in used)
        for key in want:
            if key not in keep:
                slot = next(free)
                gpa, size, flags = key
                vm.set_user_memory_region(slot, flags, gpa, size, self._host + gpa)
                keep[key] = slot
        self.current = keep

    def protect(self, pages_ro=(), pages_none=(), unprotect=()) -> None:
        """Debugger control: mark pages write-protected / unmapped, or back to normal."""
        for p in unprotect:
            self.ro_pages.discard(p)
            self.none_pages.discard(p)
        self.ro_pages.update(pages_ro)
        self.none_pages.update(pages_none)
        self.install()
