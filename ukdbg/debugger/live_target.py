"""ukdbg/debugger/live_target.py: LiveTarget, the target.Target of a Machine under a debugger.

The read side is the tender's MachineView (what cores and reports see); the debugger
powers (writing, resuming, breakpoints, watchpoints) are capabilities on top, served
by debugger.py's LiveDebugger.
"""

from ..arch import mmu
from ..tender.view import MachineView


class LiveTarget(MachineView):
    def read_memory(self, addr: int, size: int) -> bytes:
        """A read inside one page (gdb's stack line after every step, the stub's
        prefetch) takes mmu.gpa_of's short walk when the paging registers cost no
        ioctl; the rest, and what it cannot read, goes MachineView's way."""
        if 0 < size <= 0x1000 - (addr & 0xFFF) and 0 <= addr < 1 << 64 and \
                (self._sregs is not None or self.m.vcpu.mirrors_sregs):
            mem = self.m.mem
            gpa = mmu.gpa_of(mem.view, mem.size, *self.paging(), addr)
            if gpa is not None and mem.contains(gpa, size):
                data = mem.read(gpa, size)
                dc = self.m.debug
                return dc.shadow(gpa, data) if dc is not None else data
        return super().read_memory(addr, size)

    def write_fpu_state(self, fpu) -> None:
        """Store x87/SSE state. Through XSAVE when KVM has it: on this PVM host
        KVM_GET_FPU reports MXCSR 0 and KVM_SET_FPU leaves XSTATE_BV alone (so the guest
        may not get it back); an XSAVE write with the x87+SSE bits set in XSTATE_BV
        does stick (tests/kvm/test_kvm_layer.py)."""
        if self.m.caps.get("xsave"):
            area = bytearray(self.m.vcpu.get_xsave())
            area[0:512] = fpu.to_fxsave()
            bv = int.from_bytes(area[512:520], "little") | 3
            area[512:520] = bv.to_bytes(8, "little")
            self.m.vcpu.set_xsave(bytes(area))
            return
        from ..kvm import uapi
        k = uapi.kvm_fpu()
        fpu.to_kvm(k)
        self.m.vcpu.set_fpu(k)

    # --- capabilities (issue 3): the powers live in debugger.py ---------------------------
    def debugger(self):
        """The LiveDebugger of this target (created on first use)."""
        d = getattr(self, "_debugger", None)
        if d is None:
            from .debugger import LiveDebugger
            d = self._debugger = LiveDebugger(self)
        return d

    def _reverse(self):
        """The reverse-execution engine (issue 11) when it is on: it takes the running
        capabilities over, to keep track of positions."""
        rv = getattr(self.m, "reverse", None)
        return rv.bind(self) if rv is not None and self.m.caps.get("guest_debug") else None

    def writable(self):
        # A write makes reverse execution start its history again there.
        rv = self._reverse()
        return rv.writer() if rv is not None else self.debugger()

    def resumable(self):
        return self._reverse() or (self.debugger() if self.m.caps.get("guest_debug")
                                   else None)

    def breakpoints(self):
        return self._reverse() or (self.debugger() if self.m.caps.get("guest_debug")
                                   else None)

    def watchpoints(self):
        return self._reverse() or self.debugger()

    def reversible(self):
        return self._reverse()

    def monitor_commands(self) -> dict:
        rv = self._reverse()
        return rv.monitor_commands() if rv is not None else {}
