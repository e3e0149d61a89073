"""ukdbg/tender/debug.py: DebugControl, the vCPU's debug facilities (no gdb knowledge).

Software breakpoints (planted int3 bytes), hardware execution breakpoints (DR0-DR3),
single-step, all applied with KVM_SET_GUEST_DEBUG. Several owners may share one
breakpoint address (the gdb stub, the crash-capture hooks of traps.py); a hit is
offered to each owner's handler.

A planted int3 shows up in two ways (platform.md): KVM_EXIT_DEBUG with exception 3 on
VMX/SVM, or KVM_EXIT_INTERNAL_ERROR (emulation failure) at the int3 on this PVM host.
identify() accepts both, so callers never see the difference.
"""

from ..arch import mmu
from ..kvm import uapi
from ..kvm.exits import Debug, InternalError
from .machine import HANDLED

INT3 = 0xCC
DR6_BS = 1 << 14                  # single-step trap
DR7_RESERVED_1 = 1 << 10


class SwBreakpoint:
    __slots__ = ("gva", "gpa", "orig", "owners", "lifted")

    def __init__(self, gva, gpa, orig):
        self.gva, self.gpa, self.orig = gva, gpa, orig
        self.owners = set()
        self.lifted = False


class DebugControl:
    def __init__(self, m):
        self.m = m
        self.sw = {}                 # gpa -> SwBreakpoint
        self.hw = [None] * 4         # gva per debug register slot
        self.single_step = False
        self.handlers = {}           # owner -> fn(m, kind, gva) -> Stop | HANDLED | None
        # owner -> fn(m, gva) -> Stop | None: the owner performs the instruction under
        # its breakpoint itself (replay's RDTSC...); a step over it must call this
        self.emulators = {}
        self._quick = None               # apply()'s inputs when it last ran
        self._hit = None                 # the SwBreakpoint identify() last found
        self._hooked = False
        # While a debugger is stopped, gdb removes and re-inserts its breakpoints at
        # every stop: KVM_SET_GUEST_DEBUG (~10-20 us here) waits for the next run
        # (set_single_step, or loop.run's flush), which then often finds no change.
        self.hold = False

    # --- address translation (guest-virtual -> guest-physical, current page tables) ---
    def translate(self, gva: int, paging=None):
        """gpa for gva, or None when unmapped (walks the guest's tables). paging:
        (cr0, cr3, cr4, efer) to walk with (kvm_sregs.paging(); default: the vCPU's now)."""
        mem = self.m.mem
        gpa = mmu.gpa_of(mem.view, mem.size, *(paging or self.m.vcpu.paging_regs()), gva)
        return gpa if gpa is not None and mem.contains(gpa, 1) else None

    # --- software breakpoints -----------------------------------------------------------
    def add_sw(self, gva: int, owner: str) -> bool:
        gpa = self.translate(gva)
        if gpa is None:
            return False
        self.add_sw_at(gva, gpa, owner)
        return True

    def add_sw_at(self, gva: int, gpa: int, owner: str) -> None:
        """add_sw where the caller has translated gva (gpa: in guest RAM)."""
        self._plant(gva, gpa, owner)
        self._install_hook()
        self.apply()

    def _plant(self, gva, gpa, owner):
        bp = self.sw.get(gpa)
        if bp is None:
            bp = SwBreakpoint(gva, gpa, self.m.mem.read(gpa, 1)[0])
            self.sw[gpa] = bp
            self.m.mem.write(gpa, bytes((INT3,)))
        bp.owners.add(owner)

    def add_sw_many(self, gvas, owner: str, paging=None) -> list:
        """add_sw for many addresses with one translation context (translate's paging)
        and one KVM_SET_GUEST_DEBUG; returns the addresses planted."""
        paging = paging or self.m.vcpu.paging_regs()
        done = []
        pages = {}                   # one page walk per page (traps.py: 16 handlers)
        for gva in gvas:
            page = gva >> 12
            if page not in pages:
                pages[page] = self.translate(page << 12, paging)
            gpa = pages[page]
            if gpa is None:
                continue
            gpa += gva & 0xFFF
            if not self.m.mem.contains(gpa, 1):
                continue
            self._plant(gva, gpa, owner)
            done.append(gva)
        if done:
            self._install_hook()
            self.apply()
        return done

    def remove_sw(self, gva: int, owner: str, paging=None) -> bool:
        gpa = self.translate(gva, paging)
        return gpa is not None and self.remove_sw_at(gpa, owner)

    def remove_sw_at(self, gpa: int, owner: str) -> bool:
        """owner's breakpoint planted at gpa goes (where it was planted, whatever the
        page tables say now)."""
        bp = self.sw.get(gpa)
        if bp is None or owner not in bp.owners:
            return False
        bp.owners.discard(owner)
        if not bp.owners:
            if not bp.lifted:
                self.m.mem.write(gpa, bytes((bp.orig,)))
            del self.sw[gpa]
            self.apply()
        return True

    def remove_owner(self, owner: str) -> None:
        """Drop every breakpoint of owner (a debugger that went away)."""
        for bp in list(self.sw.values()):
            if owner in bp.owners:
                self.remove_sw_at(bp.gpa, owner)
        if owner == "gdb":
            self.hw = [None] * 4
            self.single_step = False
            self.apply()

    def lift(self, gpa: int) -> None:
        """Put the original byte back for a step over this breakpoint."""
        bp = self.sw.get(gpa)
        if bp is not None and not bp.lifted:
            self.m.mem.write(gpa, bytes((bp.orig,)))
            bp.lifted = True

    def emulator_at(self, gva: int):
        """The emulator of an owner of the breakpoint planted at gva, or None."""
        if not self.emulators:
            return None
        for bp in self.sw.values():
            if bp.gva == gva and not bp.lifted:
                for owner in bp.owners:
                    fn = self.emulators.get(owner)
                    if fn is not None:
                        return fn
        return None

    def replant(self) -> None:
        for bp in self.sw.values():
            if bp.lifted:
                self.m.mem.write(bp.gpa, bytes((INT3,)))
                bp.lifted = False

    def shadow(self, gpa: int, data: bytes) -> bytes:
        """data read from guest-physical gpa, with planted int3s replaced by the
        original bytes: what debuggers and cores must see."""
        if not self.sw:
            return data
        end = gpa + len(data)
        out = None
        for bpa, bp in self.sw.items():
            if gpa <= bpa < end and not bp.lifted:
                if out is None:
                    out = bytearray(data)
                out[bpa - gpa] = bp.orig
        return bytes(out) if out is not None else data

    def write_through(self, gpa: int, data: bytes) -> None:
        """A debugger write into memory that may hold planted bytes: the original
        byte is updated and the int3 stays."""
        self.m.mem.write(gpa, data)
        end = gpa + len(data)
        for bpa, bp in self.sw.items():
            if gpa <= bpa < end:
                bp.orig = data[bpa - gpa]
                if not bp.lifted:
                    self.m.mem.write(bpa, bytes((INT3,)))

    # --- hardware breakpoints -------------------------------------------------------------
    def add_hw(self, gva: int) -> bool:
        if gva in self.hw:
            return True
        try:
            slot = self.hw.index(None)
        except ValueError:
            return False
        self.hw[slot] = gva
        self._install_hook()
        self.apply()
        return True

    def remove_hw(self, gva: int) -> bool:
        if gva not in self.hw:
            return False
        self.hw[self.hw.index(gva)] = None
        self.apply()
        return True

    # --- KVM_SET_GUEST_DEBUG -------------------------------------------------------------------
    def apply(self) -> None:
        if self.hold:
            return
        hw = self.hw
        quick = (bool(self.sw), self.single_step, hw[0], hw[1], hw[2], hw[3])
        if quick == self._quick:
            return                    # control and dr are a function of these: as applied
        control = 0
        dr = [0] * 8
        if self.sw:
            control |= uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_USE_SW_BP
        if any(a is not None for a in self.hw):
            control |= uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_USE_HW_BP
            dr7 = DR7_RESERVED_1
            for i, a in enumerate(self.hw):
                if a is not None:
                    dr[i] = a
                    dr7 |= 1 << (2 * i)
            dr[7] = dr7
        if self.single_step:
            control |= uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_SINGLESTEP
        self.m.vcpu.set_guest_debug(control, dr)
        self._quick = quick

    def flush(self) -> None:
        """Apply what a stopped debugger changed (before the guest runs)."""
        self.hold = False
        self.apply()

    def set_single_step(self, on: bool) -> None:
        self.single_step = on
        self.hold = False
        if on:
            self._install_hook()
        self.apply()

    # --- exits -----------------------------------------------------------------------------------
    def _install_hook(self):
        if not self._hooked:
            self.m.vmexit_hooks.insert(0, self.vmexit_hook)
            self._hooked = True

    def identify(self, ex):
        """('sw', gva) | ('hw', gva) | ('step', None) | None for a debug-related exit."""
        if ex.__class__ is Debug:
            if ex.exception == 3:
                return self._sw_at(ex.pc)
            if ex.exception == 1:
                if ex.dr6 & 0xF:
                    slot = (ex.dr6 & 0xF).bit_length() - 1
                    return ("hw", self.hw[slot] if self.hw[slot] is not None else ex.pc)
                if ex.dr6 & DR6_BS or self.single_step:
                    return ("step", None)
            return None
        if ex.__class__ is InternalError and ex.suberror == 1 and self.sw:
            return self._sw_at(self.m.vcpu.get_regs().rip)
        return None

    def _sw_at(self, rip):
        gpa = self.translate(rip)
        bp = self.sw.get(gpa) if gpa is not None else None
        if bp is not None and not bp.lifted:
            self._hit = bp                # for vmexit_hook: no second page walk
            return ("sw", rip)
        return None

    def vmexit_hook(self, m, ex):
        """Turn debug exits into the owners' answers: handlers[owner](m, kind, gva)
        returns a Stop, HANDLED (run on) or None (not mine)."""
        if ex.__class__ is not Debug and ex.__class__ is not InternalError:
            return None
        what = self.identify(ex)
        if what is None:
            return None
        kind, gva = what
        owners = ("gdb",)
        if kind == "sw":
            bp, self._hit = self._hit, None
            owners = tuple(bp.owners) if len(bp.owners) == 1 else \
                sorted(bp.owners, key=lambda o: o != "gdb")
        result = None
        for owner in owners:
            fn = self.handlers.get(owner)
            r = fn(m, kind, gva) if fn else None
            if r is HANDLED:
                result = HANDLED
            elif r is not None:
                return r
        if result is None and kind == "step":
            return HANDLED              # a stale single-step nobody asked for
        return result
