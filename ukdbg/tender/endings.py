"""ukdbg/tender/endings.py: how a guest's run ends: diagnosis, one-line message, exit code.

Every ending that is not a plain HALT becomes a target.Crashed with a cause from CAUSES;
the process exit code follows from it (EXIT_CODES, documented in `ukdbg run --help` and
docs/architecture.md). Guest faults the monitor detects end it like a process killed by
the matching signal: status 128+N.
"""

from ..kvm import uapi
from ..kvm.exits import (Debug, FailEntry, HostFault, Hlt, InternalError, IoIn, IoOut, Mmio,
                         Shutdown)
from ..target import (SIGBUS, SIGILL, SIGSEGV, SIGSYS, SIGTRAP, VECTORS, Crashed, Exited,
                      vector_name)
from . import abi

# cause -> (signal, what it means)
CAUSES = {
    "abort": (6, "the guest aborted (solo5_abort, a failed assertion, a panic)"),
    "trap": (None, "the guest reported a CPU exception it took (its trap handler)"),
    "exception": (None, "the guest took a CPU exception (seen at its handler's entry)"),
    "triple-fault": (SIGSEGV, "triple fault: an exception the guest could not handle"),
    "internal-error": (SIGILL, "KVM could not execute the guest (internal error)"),
    "fail-entry": (SIGILL, "the CPU refused to enter the guest (invalid guest state)"),
    "unmapped": (SIGBUS, "the guest accessed guest-physical memory that does not exist"),
    "readonly": (SIGSEGV, "the guest wrote to its read-only memory"),
    "host-fault": (SIGSEGV, "the host could not back a guest access"),
    "bad-port": (SIGSYS, "the guest used an I/O port that is not a hypercall"),
    "bad-hypercall": (SIGSYS, "the guest made a hypercall that does not exist or is "
                              "not enabled"),
    "hostile-pointer": (SIGSYS, "the guest passed a hypercall a pointer outside its "
                                "memory"),
    "host-io": (SIGBUS, "a host I/O operation on the guest's behalf failed"),
    "halted": (SIGILL, "the guest executed HLT with nothing to wake it"),
    "breakpoint": (SIGTRAP, "the guest executed an int3 that is not a debugger's"),
    "unknown-exit": (SIGILL, "KVM stopped the guest for a reason the monitor cannot "
                             "handle"),
}

# Process exit statuses besides the guest's own (0-255 from HALT).
EXIT_USAGE = 2            # bad command line
EXIT_SETUP = 1            # the monitor could not start the guest (image, KVM, devices)
EXIT_TIMEOUT = 124        # --timeout expired (as timeout(1))


def exit_code(stop) -> int:
    """The process status for a final Stop."""
    from ..target import Killed
    if isinstance(stop, Exited):
        return stop.status & 0xFF
    if isinstance(stop, Crashed):
        if stop.status is not None:            # the guest HALTed itself (abort, trap)
            return stop.status & 0xFF
        return 128 + (stop.signal or SIGSEGV)
    if isinstance(stop, Killed):
        if stop.reason == "timeout":
            return EXIT_TIMEOUT
        return 128 + stop.signal
    return EXIT_SETUP


def _rip(m):
    try:
        return m.vcpu.get_regs().rip
    except Exception:
        return None


def _before_mmio_write(m, rip):
    """(rip, Regs) of the store that made an MMIO write exit: KVM reports it with rip
    already past the instruction, on VMX and PVM alike. Decoded with capstone from the
    start of the enclosing function; (rip, None) when that is not possible."""
    try:
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
        from ..arch.x86_64 import Regs
        from .view import MachineView
        hit = m.image.elf.symbolize(rip)
        start = hit[0].value if hit and hit[1] < 0x4000 else None
        if start is None or rip <= start:
            return rip, None
        code = MachineView(m).read_memory(start, rip - start)
        prev = None
        for addr, size, _mn, _ops in Cs(CS_ARCH_X86, CS_MODE_64).disasm_lite(code, start):
            if addr + size == rip:
                prev = addr
        if prev is None:
            return rip, None
        regs = Regs.from_kvm(m.vcpu.get_regs(), m.vcpu.get_sregs())
        regs.rip = prev
        return prev, regs
    except Exception:            # no capstone, no symbol, unreadable code
        return rip, None


def _crash(m, cause, message, rip=None, **kw):
    sig = kw.pop("signal", None) or CAUSES[cause][0] or SIGSEGV
    return Crashed(cause, sig, message, rip=rip, **kw)


# --- HALT (§11) ----------------------------------------------------------------------------
def halt(m, gpa):
    """HALT hypercall: the guest's own ending, with a trap frame cookie or not."""
    cookie, status = m.mem.unpack(abi.HC_HALT_ST, gpa)
    if cookie:
        try:
            m.mem.check(cookie, abi.HALT_COOKIE_MAX)
        except Exception:
            return _crash(m, "hostile-pointer",
                          f"HALT cookie {cookie:#x} lies outside guest memory",
                          rip=_rip(m), signal=SIGSYS)
    for hook in m.halt_hooks:
        hook(m, status, cookie)
    status &= 0xFFFFFFFF
    if status & 0x80000000:
        status -= 1 << 32
    if status != abi.SOLO5_EXIT_ABORT:
        return Exited(status, cookie)
    fault = m.fault
    if cookie:
        cr2, ec, rip, _cs, _rfl, _rsp, _ss = m.mem.unpack(abi.TRAP_FRAME_ST, cookie)
        vector = fault.vector if fault is not None else None
        sig = VECTORS[vector][2] if vector in VECTORS else SIGSEGV
        what = (f"{vector_name(vector)} {VECTORS[vector][1]}" if vector in VECTORS
                else "a CPU exception")
        regs = fault.regs if fault is not None else None
        if fault is not None:
            rip = fault.regs.rip
            cr2 = fault.cr2
            ec = fault.error_code
        msg = f"guest trapped: {what} at rip={m.describe(rip)}"
        if vector == 14:
            msg += f", fault address {cr2:#x}" + _pf_detail(ec)
        return Crashed("trap", sig, msg, rip=rip, vector=vector, error_code=ec,
                       fault_addr=cr2 if vector == 14 else None, regs=regs, status=status)
    rip = _rip(m)
    return Crashed("abort", 6, f"guest aborted (exit status 255) at rip={m.describe(rip)}",
                   rip=rip, status=status)


def _pf_detail(ec):
    if ec is None:
        return ""
    parts = ["protection violation" if ec & 1 else "page not present",
             "write" if ec & 2 else ("instruction fetch" if ec & 16 else "read")]
    return f" ({', '.join(parts)})"


def fault_message(vector, rip_desc, cr2=None, ec=None) -> str:
    what = f"{vector_name(vector)} {VECTORS[vector][1]}" if vector in VECTORS else "exception"
    msg = f"guest took {what} at rip={rip_desc}"
    if vector == 14 and cr2 is not None:
        msg += f", fault address {cr2:#x}" + _pf_detail(ec)
    return msg


# --- bad requests --------------------------------------------------------------------------
def bad_hypercall(m, nr, gpa):
    name = abi.HC_NAMES.get(nr, "")
    why = f"hypercall {nr} ({name}) is not enabled: the unikernel has no such device" \
        if name else f"invalid hypercall number {nr}"
    return _crash(m, "bad-hypercall", why, rip=_rip(m), exit_reason=uapi.KVM_EXIT_IO)


def hostile_pointer(m, nr, err):
    name = abi.HC_NAMES.get(nr, str(nr))
    return _crash(m, "hostile-pointer",
                  f"{name} hypercall with a bad guest pointer: gpa={err.gpa:#x} "
                  f"size={err.size:#x} {err.reason}",
                  rip=_rip(m), fault_addr=err.gpa, exit_reason=uapi.KVM_EXIT_IO)


def bad_port(m, ex):
    kind = "out" if isinstance(ex, IoOut) else "in"
    return _crash(m, "bad-port",
                  f"invalid guest port access: {kind} port={ex.port:#x} size={ex.size}",
                  rip=_rip(m), exit_reason=uapi.KVM_EXIT_IO)


# --- every other exit ------------------------------------------------------------------------
def classify(m, ex):
    """A Crashed for an exit no hook claimed."""
    m.stats.count_exit(getattr(ex, "reason", -1))
    rip = _rip(m)
    where = m.describe(rip)
    if isinstance(ex, (IoIn, IoOut)):
        return bad_port(m, ex)
    if isinstance(ex, Mmio):
        regs = None
        if ex.is_write:         # issue 4: KVM has completed the store and moved past it
            rip, regs = _before_mmio_write(m, rip)
            where = m.describe(rip)
        if m.mem.contains(ex.addr, max(ex.length, 1)) and ex.is_write:
            return _crash(m, "readonly", f"guest wrote {ex.length} bytes to read-only "
                          f"memory at {m.describe(ex.addr)}, rip={where}",
                          rip=rip, fault_addr=ex.addr, exit_reason=uapi.KVM_EXIT_MMIO,
                          regs=regs)
        access = "write to" if ex.is_write else "read from"
        return _crash(m, "unmapped", f"guest {access} unbacked guest-physical address "
                      f"{ex.addr:#x} ({ex.length} bytes), rip={where}",
                      rip=rip, fault_addr=ex.addr, exit_reason=uapi.KVM_EXIT_MMIO,
                      regs=regs)
    if isinstance(ex, Shutdown):
        return _crash(m, "triple-fault", f"guest triple-faulted (shutdown) at rip={where}",
                      rip=rip, exit_reason=uapi.KVM_EXIT_SHUTDOWN)
    if isinstance(ex, InternalError):
        what = uapi.INTERNAL_ERROR_NAMES.get(ex.suberror, f"suberror {ex.suberror}")
        return _crash(m, "internal-error", f"KVM internal error at rip={where}: {what}"
                      + (" (this host's KVM emulates the guest and cannot run this "
                         "instruction)" if ex.suberror == 1 else ""),
                      rip=rip, exit_reason=uapi.KVM_EXIT_INTERNAL_ERROR)
    if isinstance(ex, FailEntry):
        return _crash(m, "fail-entry", f"KVM entry failure at rip={where}: hardware "
                      f"reason {ex.hardware_reason:#x}",
                      rip=rip, exit_reason=uapi.KVM_EXIT_FAIL_ENTRY)
    if isinstance(ex, HostFault):
        return _crash(m, "host-fault", f"host/guest translation fault at rip={where}",
                      rip=rip)
    if isinstance(ex, Hlt):
        return _crash(m, "halted", f"guest executed hlt at rip={where} with nothing to "
                      "wake it", rip=rip, exit_reason=uapi.KVM_EXIT_HLT)
    if isinstance(ex, Debug):
        return _crash(m, "breakpoint", f"unexpected debug exit (exception {ex.exception}) "
                      f"at rip={where}", rip=rip, exit_reason=uapi.KVM_EXIT_DEBUG)
    reason = getattr(ex, "reason", -1)
    name = uapi.EXIT_NAMES.get(reason, str(reason))
    return _crash(m, "unknown-exit", f"unhandled KVM exit {name} ({reason}) at rip={where}",
                  rip=rip, exit_reason=reason)
