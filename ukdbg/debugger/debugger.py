"""ukdbg/debugger/debugger.py: LiveDebugger, the debugger powers of a LiveTarget: writing
registers and memory, resume/step/interrupt/kill, breakpoints and watchpoints.

It implements the Writable, Resumable, Breakpoints and Watchpoints capabilities of
target.py over one Machine. The guest runs in loop.run(m) on this (the vCPU) thread;
debug exits reach `on_debug` through DebugControl's handler for the owner "gdb".
Resuming from an address with a planted breakpoint (ours or the crash hooks') first
single-steps over the original instruction, so a breakpoint is never hit twice nor
skipped, and single-stepping never executes a planted int3.
"""

import errno

from ..errors import TargetError
from ..kvm import uapi
from ..kvm.exits import Mmio
from ..target import Breakpoint, Crashed, Exited, Interrupted, Killed, SIGKILL, Stepped
from ..tender import flight, loop
from ..tender.machine import HANDLED
from .watch import Watchpoints

OWNER = "gdb"
SYNC_BITS = uapi.KVM_SYNC_X86_REGS | uapi.KVM_SYNC_X86_SREGS
PAGE = 4096
_TF = 1 << 8


def _terminal(stop) -> bool:
    if isinstance(stop, (Exited, Killed)):
        return True
    return isinstance(stop, Crashed) and stop.cause != "exception"


class LiveDebugger:
    def __init__(self, target):
        self.t = target
        self.m = target.m
        self.dc = self.m.debug_control()
        self.watch = Watchpoints(self.m, self._translate)
        self.stepping = False
        self.attached = False
        self._sync_before = 0         # the vCPU's register mirror before attach()
        self.dead = None              # the terminal stop, once the guest cannot run on
        self.sw = set()               # gva of our software breakpoints
        self._sw_gpa = {}             # ... -> the gpa each was planted at
        self.hw = set()

    # --- session ------------------------------------------------------------------------
    def attach(self) -> None:
        """A debugger arrived: its breakpoints get hits, guest faults stop it."""
        self.attached = True
        self.dc.handlers[OWNER] = self.on_debug
        # Registers mirrored into kvm_run at every exit: a stop costs no register
        # ioctl (vcpu.py set_sync_regs).
        v = self.m.vcpu
        self._sync_before = v.sync_bits
        v.set_sync_regs(v.sync_bits | (self.m.caps.get("sync_regs", 0) & SYNC_BITS))
        traps = getattr(self.m, "traps", None)
        if traps is not None:
            traps.policy = "stop"
        self.complete_io()

    def detach(self) -> None:
        """The debugger left: nothing of it stays in the guest (breakpoint bytes,
        protected pages, single-step); the guest runs on as if never debugged."""
        self.attached = False
        self.dc.remove_owner(OWNER)
        self.dc.handlers.pop(OWNER, None)
        self.sw.clear()
        self._sw_gpa.clear()
        self.hw.clear()
        self.watch.clear()
        self.stepping = False
        self.dc.set_single_step(False)
        self.m.vcpu.set_sync_regs(self._sync_before)
        traps = getattr(self.m, "traps", None)
        if traps is not None:
            traps.policy = "continue"
        self.t.fault_view = None
        self.t.invalidate()

    def complete_io(self) -> None:
        """Finish a port or MMIO access the vCPU was stopped in the middle of (an
        interrupt that ended a POLL), so a debugger sees the state after it."""
        if self.dead is not None:
            return
        vcpu = self.m.vcpu
        vcpu.set_immediate_exit(True)
        try:
            for _ in range(8):
                ex = vcpu.run()
                if ex.__class__ is Mmio:
                    r = self.watch.vmexit_hook(self.m, ex) if self.watch.pages else None
                    if r is None:
                        break            # a real MMIO access: leave it to the loop
                    continue
                break
        finally:
            vcpu.set_immediate_exit(False)
        self.t.invalidate()

    # --- Writable -----------------------------------------------------------------------
    def _translate(self, gva):
        t = self.t.translate(gva)
        return t.gpa if t else None

    def write_registers(self, regs) -> None:
        observers = self.m.write_observers
        before = self.m.vcpu.get_regs() if observers else None
        self._write_registers(regs)
        for obs in observers:                    # with the registers before the write
            obs(self.m, "regs", before)

    def _write_registers(self, regs) -> None:
        from ..arch.x86_64 import GPRS
        flight.log(self.m, "gdb", "write registers", new_rip=regs.rip)
        vcpu = self.m.vcpu
        fv = self.t.fault_view
        if fv is not None:
            # At a caught fault the vCPU sits at the handler's first instruction: the
            # general registers are shared, rip cs rflags rsp ss are the CPU's
            # exception frame on the handler's stack.
            from ..target import VECTORS_WITH_ERROR_CODE
            off = 8 if fv.vector in VECTORS_WITH_ERROR_CODE else 0
            words = (regs.rip, regs.cs, regs.rflags, regs.rsp, regs.ss)
            data = b"".join((w & (1 << 64) - 1).to_bytes(8, "little") for w in words)
            self.write_memory(fv.frame + off, data)
            k = vcpu.get_regs()
            for f in GPRS:
                if f != "rsp":
                    setattr(k, f, getattr(regs, f))
            vcpu.set_regs(k)
            fv.regs = regs.copy()
            self.t.invalidate()
            return
        from ..arch.x86_64 import Regs
        k, s = vcpu.get_regs(), vcpu.get_sregs()
        old = Regs.from_kvm(k, s)
        regs.to_kvm(k, s)
        vcpu.set_regs(k)
        if any(getattr(old, f) != getattr(regs, f) for f in
               ("cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base", "cr0", "cr2",
                "cr3", "cr4", "cr8", "efer")):
            vcpu.set_sregs(s)
        self.t.invalidate()

    def write_fpu(self, fpu) -> None:
        flight.log(self.m, "gdb", "write fpu")
        self.t.write_fpu_state(fpu)
        for obs in self.m.write_observers:
            obs(self.m, "fpu", fpu)

    def write_memory(self, addr: int, data: bytes) -> None:
        """Guest-virtual write, all or nothing; planted breakpoints stay planted (the
        bytes under them are updated)."""
        pieces = []
        pos, end = addr, addr + len(data)
        mem = self.m.mem
        while pos < end:
            t = self.t.translate(pos)
            n = min(end, (pos | (PAGE - 1)) + 1) - pos
            if not t or not mem.contains(t.gpa, n):
                raise TargetError(errno.EFAULT, f"cannot access memory at {pos:#x}")
            pieces.append((t.gpa, data[pos - addr:pos - addr + n]))
            pos += n
        flight.log(self.m, "gdb", "write memory", addr=addr, len=len(data))
        for gpa, chunk in pieces:
            for obs in self.m.write_observers:
                obs(self.m, "mem", (gpa, chunk))
            if self.m.debug is not None and self.m.debug.sw:
                self.m.debug.write_through(gpa, chunk)
            else:
                mem.write(gpa, chunk)

    # --- Resumable ----------------------------------------------------------------------
    def resume(self, step: bool = False):
        """Run (or single-step) the guest until it stops; returns the Stop."""
        if self.dead is not None:
            return self.dead
        t = self.t
        k = t.kregs()                 # still this stop's (writes invalidate it)
        rip, rflags, fault = k.rip, k.rflags, self.m.fault
        fl = self.m.flight
        if fl is not None:
            fl.add("gdb", rip, "step" if step else "continue")
        self.watch.sync()
        stop = None
        t.fault_view = None
        t.invalidate()
        if self._planted_at(rip):
            stop = self._step_over(rip)
            self._untrace_fault(fault, rflags)
            if step or not isinstance(stop, Stepped):
                return self._stopped(stop)
            t.invalidate()
        self.stepping = step
        self.dc.set_single_step(step)
        try:
            stop = loop.run(self.m)
        finally:
            self.stepping = False
        if step:
            self._untrace_fault(fault, rflags)
        return self._stopped(stop)

    def _untrace_fault(self, fault_before, rflags_before):
        """KVM single-steps by setting TF in the guest's RFLAGS; an instruction that
        faults while stepped has that TF pushed in its exception frame. Take it out
        (of the frame and of the recorded fault) unless the guest had set TF itself."""
        f = self.m.fault
        if f is None or f is fault_before or rflags_before & _TF or not f.regs.rflags & _TF:
            return
        from ..target import VECTORS_WITH_ERROR_CODE
        f.regs.rflags &= ~_TF
        off = (8 if f.vector in VECTORS_WITH_ERROR_CODE else 0) + 16
        try:
            self.write_memory(f.frame + off, f.regs.rflags.to_bytes(8, "little"))
        except TargetError:
            pass

    def _planted_at(self, rip) -> bool:
        dc = self.dc
        if rip in dc.hw:
            return True
        # By virtual address (as planted): no page walk on every step.
        for bp in dc.sw.values():
            if bp.gva == rip and not bp.lifted:
                return True
        return False

    def _step_over(self, rip):
        """One instruction with the breakpoint at rip lifted, then put back. An
        instruction a breakpoint owner emulates (replay's RDTSC...) is emulated."""
        dc = self.dc
        emulate = dc.emulator_at(rip)
        if emulate is not None:
            stop = emulate(self.m, rip)     # NotImplemented: not emulated, step it
            if stop is not NotImplemented:
                return Stepped() if stop is None else stop
        for gpa, bp in dc.sw.items():
            if bp.gva == rip:
                dc.lift(gpa)
                break
        slots = [i for i, a in enumerate(dc.hw) if a == rip]
        for i in slots:
            dc.hw[i] = None
        self.stepping = True
        dc.set_single_step(True)
        try:
            return loop.run(self.m)
        finally:
            self.stepping = False
            dc.replant()
            for i in slots:
                dc.hw[i] = rip
            dc.apply()

    def _stopped(self, stop):
        t = self.t
        if self.attached:
            self.dc.hold = True       # breakpoint changes wait for the next resume
        k = t._kregs if isinstance(stop, Stepped) else None
        t.invalidate()
        t._kregs = k
        if isinstance(stop, Crashed) and stop.regs is not None and self.m.fault is not None \
                and stop.regs is self.m.fault.regs:
            t.fault_view = self.m.fault
        if isinstance(stop, Interrupted):
            self.complete_io()
        if _terminal(stop):
            self.dead = stop
        t.set_stop(stop)
        return stop

    def on_debug(self, m, kind, gva):
        """DebugControl handler for our breakpoints and single-steps."""
        if kind == "sw":
            return Breakpoint(gva) if gva in self.sw else None
        if kind == "hw":
            return Breakpoint(gva, hardware=True)
        if kind == "step":
            if not self.stepping:
                return None
            traps = getattr(m, "traps", None)
            if traps is not None and traps.armed:
                # A step that faulted ends at the handler's first instruction: that
                # is the fault, seen where the crash hooks would have seen it.
                k = m.vcpu.get_regs()
                self.t._kregs = k          # this stop's registers: read once
                rip = k.rip
                if rip in traps.by_handler:
                    r = traps.on_hit(m, "sw", rip)
                    if r is not None and r is not HANDLED:
                        return r
            return Stepped()
        return None

    def interrupt(self) -> None:
        """Stop the running guest (any thread)."""
        flight.log(self.m, "gdb", "interrupt")
        self.m.events.post(lambda m: Interrupted())

    def kill(self):
        flight.log(self.m, "gdb", "kill")
        self.dead = Killed(SIGKILL, "gdb")
        return self.dead

    # --- Breakpoints --------------------------------------------------------------------
    def add_sw_breakpoint(self, addr: int) -> bool:
        if addr in self.sw:
            return True
        gpa = self.dc.translate(addr, self.t.paging())
        if gpa is None:
            return False
        self.dc.add_sw_at(addr, gpa, OWNER)
        self.sw.add(addr)
        self._sw_gpa[addr] = gpa
        return True

    def remove_sw_breakpoint(self, addr: int) -> bool:
        # Where it was planted: no page walk (gdb removes its breakpoints at every
        # stop), and no int3 left behind if the guest has remapped the page since.
        if addr not in self.sw:
            return False
        self.sw.discard(addr)
        return self.dc.remove_sw_at(self._sw_gpa.pop(addr), OWNER)

    def add_hw_breakpoint(self, addr: int) -> bool:
        if not self.dc.add_hw(addr):
            return False
        self.hw.add(addr)
        return True

    def remove_hw_breakpoint(self, addr: int) -> bool:
        if addr not in self.hw:
            return False
        self.hw.discard(addr)
        return self.dc.remove_hw(addr)

    # --- Watchpoints --------------------------------------------------------------------
    def add_watchpoint(self, kind: str, addr: int, size: int) -> bool:
        ok = self.watch.add(kind, addr, size, self.t.sregs(), self.m.vcpu.get_regs().rip)
        if not ok and self.watch.refused:
            import sys
            sys.stderr.write(f"ukdbg: gdb: {kind} {addr:#x} ({size} bytes) refused: "
                             f"{self.watch.refused}\n")
        return ok

    def remove_watchpoint(self, kind: str, addr: int, size: int) -> bool:
        return self.watch.remove(kind, addr, size)
