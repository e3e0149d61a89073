"""ukdbg/tender/traps.py: catch guest CPU exceptions at the guest's own handlers.

A guest that faults runs its IDT handler, prints a trap report and HALTs; by then its
registers are long gone (Solo5's own cores show stale ones). At the *first instruction*
of the handler, though, every general register still holds the faulting context's
value and the CPU's exception frame (error code, rip, cs, rflags, rsp, ss) is on the
stack (platform.md). So once the guest has loaded its IDT (seen at its first
hypercalls: Solo5 guests read the wall clock and print a banner at boot), a breakpoint
is planted on each exception handler; a hit records a
FaultContext (the registers *of the faulting instruction*) and, unless a debugger
wants to stop there, the hooks are removed and the guest carries on with its report.
A guest that faults before its first hypercall is not caught this way: its core and
report then take rip/rsp/rflags from the guest's trap frame (the HALT cookie) and say so.
"""

import _struct as struct  # not struct.py: one import less at start-up

from ..target import VECTORS, VECTORS_WITH_ERROR_CODE, Crashed
from .machine import HANDLED

# Exceptions worth a hook: every architectural fault with a signal (not #DB/#BP/NMI).
HOOK_VECTORS = (0, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20)
ARM_ATTEMPTS = 64           # hypercalls to wait for an IDT before giving up
_GATE = struct.Struct("<HHBBHIi")


class FaultContext:
    """A guest exception caught at its handler's entry."""
    __slots__ = ("vector", "error_code", "cr2", "regs", "handler", "frame")

    def __init__(self, vector, error_code, cr2, regs, handler, frame):
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.regs = regs          # arch.x86_64.Regs at the faulting instruction
        self.handler = handler    # gva of the handler's first instruction
        self.frame = frame        # gva of the CPU's exception frame


class TrapHooks:
    def __init__(self, m):
        self.m = m
        self.by_handler = {}      # handler gva -> vector
        self.attempts = 0
        self.armed = False
        # 'continue': record and let the guest report; 'stop': return a Crashed stop
        # (a debugger is attached or --gdb-on-crash).
        self.policy = "continue"

    def observe(self, m):
        """Hypercall observer: arm as soon as the guest has an IDT."""
        self.attempts += 1
        s = m.vcpu.get_sregs()
        if s.idt.limit or self.attempts >= ARM_ATTEMPTS:
            m.hypercall_observers.remove(self.observe)
            if s.idt.limit:
                self.arm(s)

    def arm(self, s) -> None:
        dc = self.m.debug_control()
        handlers = {}
        pages = {}                   # one page walk per page, not one per gate
        for v in HOOK_VECTORS:
            off = v * 16
            if off + 15 > s.idt.limit:
                break
            gva = s.idt.base + off
            page = gva >> 12
            if page not in pages:
                pages[page] = dc.translate(page << 12, s.paging())
            gpa = pages[page]
            if gpa is not None:
                gpa += gva & 0xFFF
            if gpa is None or not self.m.mem.contains(gpa, 16):
                continue
            lo, _sel, _ist, attr, mid, hi, _ = _GATE.unpack(self.m.mem.read(gpa, 16))
            if not attr & 0x80:
                continue
            handler = lo | mid << 16 | (hi & 0xFFFFFFFF) << 32
            handlers.setdefault(handler, v)
        if not handlers:
            return
        dc.handlers["trap"] = self.on_hit
        for h in dc.add_sw_many(handlers, "trap", s.paging()):
            self.by_handler[h] = handlers[h]
        self.armed = bool(self.by_handler)

    def disarm(self) -> None:
        if self.armed and self.m.debug is not None:
            self.m.debug.remove_owner("trap")
        self.armed = False

    def on_hit(self, m, kind, gva):
        vector = self.by_handler.get(gva)
        if kind != "sw" or vector is None:
            return None
        from ..arch.x86_64 import Regs
        vcpu = m.vcpu
        kregs, ksregs = vcpu.get_regs(), vcpu.get_sregs()
        regs = Regs.from_kvm(kregs, ksregs)
        frame = regs.rsp
        dc = m.debug
        ec = None
        try:
            words = []
            paging = ksregs.paging()
            for i in range(6):
                gpa = dc.translate(frame + 8 * i, paging)
                words.append(m.mem.read_u64(gpa) if gpa is not None else 0)
        except Exception:
            words = [0] * 6
        if vector in VECTORS_WITH_ERROR_CODE:
            ec, words = words[0], words[1:]
        fault = regs.copy()
        fault.rip, fault.cs, fault.rflags, fault.rsp, fault.ss = words[:5]
        fault.cr2 = ksregs.cr2
        m.fault = FaultContext(vector, ec, ksregs.cr2, fault, gva, frame)
        if self.policy == "stop":
            return self.stop_for(m.fault)
        self.disarm()
        return HANDLED

    def stop_for(self, f: FaultContext) -> Crashed:
        from .endings import fault_message
        sig = VECTORS[f.vector][2] if f.vector in VECTORS else 11
        return Crashed("exception", sig,
                       fault_message(f.vector, self.m.describe(f.regs.rip), f.cr2,
                                     f.error_code),
                       rip=f.regs.rip, vector=f.vector, error_code=f.error_code,
                       fault_addr=f.cr2 if f.vector == 14 else None, regs=f.regs)


def setup(m, opts) -> None:
    if not m.caps.get("guest_debug"):
        return
    m.traps = TrapHooks(m)
    m.hypercall_observers.append(m.traps.observe)
