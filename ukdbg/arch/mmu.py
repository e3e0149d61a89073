"""ukdbg/arch/mmu.py: x86-64 4-level page walk, pure (works on a live VM or a core).

hvt guests run identity-mapped on the tender's tables (hvt-abi.md §3), but guests may
install their own, so debuggers translate every virtual address through CR3.
"""

import _struct  # not struct.py: one import less at start-up

PTE_P, PTE_RW, PTE_US, PTE_PS = 0x1, 0x2, 0x4, 0x80
PTE_NX = 1 << 63
ADDR_MASK = 0x000FFFFFFFFFF000
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
_U64 = _struct.Struct("<Q")


class Translation:
    """gva -> gpa; page_size is 4 KiB, 2 MiB or 1 GiB; perms from the whole walk."""
    __slots__ = ("gva", "gpa", "page_size", "writable", "user", "executable", "levels")

    def __init__(self, gva, gpa, page_size, writable, user, executable, levels):
        self.gva, self.gpa, self.page_size = gva, gpa, page_size
        self.writable, self.user, self.executable = writable, user, executable
        self.levels = levels          # [(level name, table gpa, index, entry)]

    @property
    def page_base(self):
        return self.gva & ~(self.page_size - 1)

    @property
    def perms(self):
        return "r" + ("w" if self.writable else "-") + ("x" if self.executable else "-")


class WalkFailure:
    """Why gva does not translate: the level where the walk stopped and its entry."""
    __slots__ = ("gva", "level", "entry", "reason", "levels")

    def __init__(self, gva, level, entry, reason, levels):
        self.gva, self.level, self.entry, self.reason, self.levels = \
            gva, level, entry, reason, levels

    def __bool__(self):
        return False


def canonical(va: int) -> bool:
    top = va >> 47
    return top == 0 or top == 0x1FFFF


def walk(read_u64, cr0: int, cr3: int, cr4: int, efer: int, gva: int):
    """Translate gva. read_u64(gpa) -> int, or None when gpa is not readable.

    Returns a Translation, or a falsy WalkFailure explaining why not.
    With paging off the address is physical.
    """
    if not cr0 & CR0_PG:
        return Translation(gva, gva, 1 << 12, True, True, True, [])
    if not (cr4 & CR4_PAE and efer & EFER_LMA) or cr4 & CR4_LA57:
        # 32-bit or 5-level paging: not used by hvt guests.
        return WalkFailure(gva, "mode", 0, "unsupported paging mode", [])
    if not canonical(gva):
        return WalkFailure(gva, "canonical", 0, "non-canonical address", [])
    nx_on = bool(efer & EFER_NXE)
    table = cr3 & ADDR_MASK
    writable = user = executable = True
    levels = []
    for name, shift in (("PML4", 39), ("PDPT", 30), ("PD", 21), ("PT", 12)):
        idx = (gva >> shift) & 0x1FF
        ent = read_u64(table + idx * 8)
        if ent is None:
            return WalkFailure(gva, name, 0, f"{name} table at {table:#x} is not in memory",
                               levels)
        levels.append((name, table, idx, ent))
        if not ent & PTE_P:
            return WalkFailure(gva, name, ent, f"{name}[{idx}] not present", levels)
        writable = writable and bool(ent & PTE_RW)
        user = user and bool(ent & PTE_US)
        if nx_on and ent & PTE_NX:
            executable = False
        if ent & PTE_PS and name in ("PDPT", "PD"):
            size = 1 << shift
            base = ent & ADDR_MASK & ~(size - 1)
            return Translation(gva, base | (gva & (size - 1)), size, writable, user,
                               executable, levels)
        table = ent & ADDR_MASK
    return Translation(gva, table | (gva & 0xFFF), 1 << 12, writable, user, executable,
                       levels)


def gpa_of(mem, size: int, cr0: int, cr3: int, cr4: int, efer: int, gva: int):
    """walk()'s gpa alone, or None where walk() fails: for hot paths (a debugger's
    stack read after every step, its breakpoint hits). The entries are read straight
    from mem, a buffer holding guest-physical [0, size)."""
    if not cr0 & CR0_PG:
        return gva
    if not (cr4 & CR4_PAE and efer & EFER_LMA) or cr4 & CR4_LA57 or not canonical(gva):
        return None
    unpack = _U64.unpack_from
    table = cr3 & ADDR_MASK
    for shift in (39, 30, 21, 12):
        at = table + ((gva >> shift) & 0x1FF) * 8
        if at + 8 > size:
            return None
        ent = unpack(mem, at)[0]
        if not ent & PTE_P:
            return None
        if ent & PTE_PS and (shift == 30 or shift == 21):
            low = (1 << shift) - 1
            return (ent & ADDR_MASK & ~low) | (gva & low)
        table = ent & ADDR_MASK
    return table | (gva & 0xFFF)


def mapped_ranges(read_u64, cr0, cr3, cr4, efer, limit=1 << 48):
    """Yield (gva, gpa, size, writable, executable) for every mapped page run, walking
    the tables once (fast enough for 4 GiB: 2048 PD entries for hvt's 2 MiB pages)."""
    if not cr0 & CR0_PG:
        return
    nx_on = bool(efer & EFER_NXE)

    def entries(table):
        for i in range(512):
            e = read_u64(table + i * 8)
            if e is not None and e & PTE_P:
                yield i, e

    runs = []

    def emit(va, pa, size, w, x):
        if runs:
            pva, ppa, psz, pw, px = runs[-1]
            if pva + psz == va and ppa + psz == pa and pw == w and px == x:
                runs[-1] = (pva, ppa, psz + size, w, x)
                return
        runs.append((va, pa, size, w, x))

    for i4, e4 in entries(cr3 & ADDR_MASK):
        va4 = i4 << 39
        if va4 >= limit:
            break
        w4, x4 = bool(e4 & PTE_RW), not (nx_on and e4 & PTE_NX)
        for i3, e3 in entries(e4 & ADDR_MASK):
            va3 = va4 | i3 << 30
            w3, x3 = w4 and bool(e3 & PTE_RW), x4 and not (nx_on and e3 & PTE_NX)
            if e3 & PTE_PS:
                emit(va3, e3 & ADDR_MASK & ~((1 << 30) - 1), 1 << 30, w3, x3)
                continue
            for i2, e2 in entries(e3 & ADDR_MASK):
                va2 = va3 | i2 << 21
                w2, x2 = w3 and bool(e2 & PTE_RW), x3 and not (nx_on and e2 & PTE_NX)
                if e2 & PTE_PS:
                    emit(va2, e2 & ADDR_MASK & ~((1 << 21) - 1), 1 << 21, w2, x2)
                    continue
                for i1, e1 in entries(e2 & ADDR_MASK):
                    emit(va2 | i1 << 12, e1 & ADDR_MASK, 1 << 12,
                         w2 and bool(e1 & PTE_RW), x2 and not (nx_on and e1 & PTE_NX))
    for r in runs:
        va = r[0]
        if va >> 47:
            va |= 0xFFFF000000000000
        yield (va,) + r[1:]
