"""ukdbg/inspect/commands/info.py: `info`: why the guest stopped, in words: exception and
error code, the faulting address and what lies there (symbol, stack, segment, the
page walk's verdict), the KVM exit, the monitor's command line.
"""

from dataclasses import dataclass, field

from ...target import VECTORS_WITH_ERROR_CODE

# KVM_EXIT_* names (linux/kvm.h) for the exit reasons cores record.
KVM_EXITS = {0: "KVM_EXIT_UNKNOWN", 1: "KVM_EXIT_EXCEPTION", 2: "KVM_EXIT_IO",
             3: "KVM_EXIT_HYPERCALL", 4: "KVM_EXIT_DEBUG", 5: "KVM_EXIT_HLT",
             6: "KVM_EXIT_MMIO", 7: "KVM_EXIT_IRQ_WINDOW_OPEN", 8: "KVM_EXIT_SHUTDOWN",
             9: "KVM_EXIT_FAIL_ENTRY", 10: "KVM_EXIT_INTR", 17: "KVM_EXIT_INTERNAL_ERROR",
             24: "KVM_EXIT_SYSTEM_EVENT"}

CAUSE_WORDS = {
    "abort": "the guest aborted (solo5_abort, a failed assertion, a panic)",
    "trap": "the guest took a CPU exception and reported it (its trap handler)",
    "exception": "the guest took a CPU exception",
    "triple-fault": "triple fault: an exception the guest could not handle",
    "internal-error": "KVM could not execute the guest (internal error)",
    "fail-entry": "the CPU refused to enter the guest (invalid guest state)",
    "unmapped": "the guest accessed guest-physical memory that does not exist",
    "readonly": "the guest wrote to its read-only memory",
    "host-fault": "the host could not back a guest access",
    "bad-port": "the guest used an I/O port that is not a hypercall",
    "bad-hypercall": "the guest made a hypercall that does not exist or is not enabled",
    "hostile-pointer": "the guest passed a hypercall a pointer outside its memory",
    "host-io": "a host I/O operation on the guest's behalf failed",
    "halted": "the guest executed HLT with nothing to wake it",
    "breakpoint": "the guest executed an int3 that is not a debugger's",
    "timeout": "--timeout expired",
    "signal": "the monitor was sent a signal",
    "live": "a live core: the guest went on running",
}


@dataclass
class InfoView:
    title: str                       # one line: what happened
    rows: list = field(default_factory=list)    # [(label, text)]
    data: dict = field(default_factory=dict)    # the same, for machines

    def to_json(self):
        return {"title": self.title, **self.data}


def decode_error_code(vector, ec) -> str:
    """The error code in words (SDM vol. 3, 4.7 for #PF; 6.13 for selector codes)."""
    if ec is None:
        return ""
    if vector == 14:
        parts = ["protection violation" if ec & 1 else "page not present",
                 "write" if ec & 2 else ("instruction fetch" if ec & 16 else "read"),
                 "user mode" if ec & 4 else "supervisor mode"]
        if ec & 8:
            parts.append("reserved bit set in a paging entry")
        if ec & 32:
            parts.append("protection key")
        if ec & (1 << 15):
            parts.append("SGX")
        return ", ".join(parts)
    if vector in (10, 11, 12, 13, 17) and ec:
        table = {0: "GDT", 1: "IDT", 2: "LDT", 3: "IDT"}[(ec >> 1) & 3]
        ext = ", external event" if ec & 1 else ""
        return f"selector index {ec >> 3} in the {table}{ext}"
    if vector in VECTORS_WITH_ERROR_CODE:
        return "0 (no selector involved)" if ec == 0 else ""
    return ""


PHYSICAL_CAUSES = ("unmapped", "readonly", "host-fault", "hostile-pointer")


def what_is_at(session, addr: int, physical: bool = False) -> str:
    """What lies at an address, in words (a guest-virtual one unless physical)."""
    parts = []
    size = session.facts.mem_size
    if physical:
        parts.append("guest-physical")
        if size and addr >= size:
            parts.append(f"beyond the end of guest memory ({size:#x} bytes): "
                         "no RAM there")
            return "; ".join(parts)
        t = session.translate(addr)
        if not t or t.gpa != addr:       # not identity-mapped: no symbol to name
            return "; ".join(parts)
    if addr < 0x1000:
        parts.append("the NULL page (a null pointer dereference)")
    desc = session.describe(addr)
    if desc:
        sec = session.symbols.section_of(addr) if session.symbols else ""
        parts.append(f"<{desc}>" + (f" in {sec}" if sec else ""))
    rsp = session.regs.rsp
    if 0 <= addr - rsp < 0x10000 or 0 < rsp - addr <= 0x1000:
        off = addr - rsp
        parts.append(f"the stack (rsp{'+' if off >= 0 else '-'}{abs(off):#x})")
    t = session.translate(addr)
    region = session.region_of(addr)
    rdesc = ""
    if region is not None:
        name = session.region_name(region)
        rdesc = f"{name + ' ' if name else ''}memory {region.perms}"
        if "w" not in region.perms:
            rdesc += " (read-only)"
    if t is None:
        parts.append(rdesc or "not in the memory map")
    elif not t:
        parts.append(f"unmapped: {t.reason}")
    else:
        phys = f" -> guest-physical {t.gpa:#x}" if t.gpa != addr else ""
        parts.append((rdesc or f"mapped {t.perms}") + phys)
        if size and t.gpa >= size:
            parts.append("beyond the end of guest memory: no RAM there")
    return "; ".join(parts)


def run(session, args):
    if args.strip():
        from . import CommandError
        raise CommandError("info takes no arguments (regs shows registers)")
    return build(session)


def build(session) -> InfoView:
    f = session.facts
    regs = session.regs
    rows = []
    data = {"kind": f.kind, "cause": f.cause, "signal": f.signal_name,
            "message": f.message}
    exc = session.exception_name()
    if f.crashed:
        head = exc or CAUSE_WORDS.get(f.cause, f.cause or "crashed")
        title = f"{head} ({f.signal_name})" if f.signal_name else head
    elif f.kind:
        title = CAUSE_WORDS.get(f.cause, "") or f"stopped: {f.kind}"
        if f.signal_name and f.kind != "exited":
            title += f" ({f.signal_name})"
    else:
        title = "stopped"
    if f.message:
        rows.append(("what", f.message))
    if f.cause:
        rows.append(("cause", f"{f.cause}: {CAUSE_WORDS.get(f.cause, '')}".rstrip(": ")))
    if exc:
        rows.append(("exception", f"vector {f.vector}: {exc}"))
        data["exception"] = {"vector": f.vector, "name": exc}
    if f.error_code is not None:
        words = decode_error_code(f.vector, f.error_code)
        rows.append(("error code", f"{f.error_code:#x}" + (f": {words}" if words else "")))
        data["error_code"] = {"value": f.error_code, "decoded": words}
    pc = regs.rip
    where = session.describe(pc)
    line = session.line_for(pc)
    rows.append(("rip", f"{pc:#x}" + (f" <{where}>" if where else "")
                 + (f" at {line}" if line else "")))
    data["rip"] = {"value": pc, "symbol": where, "line": str(line) if line else None}
    fpc = session.fault_pc
    if fpc is not None and fpc != pc:
        d, sl = session.describe(fpc), session.line_for(fpc)
        rows.append(("faulting at", f"{fpc:#x}" + (f" <{d}>" if d else "")
                     + (f" at {sl}" if sl else "")))
        data["faulting_instruction"] = fpc
    fault = f.fault_addr
    if fault is None and f.vector == 14:
        fault = regs.cr2
    if fault is not None:
        what = what_is_at(session, fault, f.cause in PHYSICAL_CAUSES)
        rows.append(("fault address", f"{fault:#x}: {what}"))
        data["fault_address"] = {"value": fault, "what": what}
    if f.exit_reason is not None:
        name = KVM_EXITS.get(f.exit_reason, f"exit {f.exit_reason}")
        note = ": the guest's HALT hypercall" if f.exit_reason == 2 and \
            f.cause in ("trap", "abort") else ""
        rows.append(("KVM exit", f"{name} ({f.exit_reason}){note}"))
        data["kvm_exit"] = {"value": f.exit_reason, "name": name}
    if f.status is not None:
        rows.append(("exit status", str(f.status)))
        data["exit_status"] = f.status
    if f.argv:
        cl = " ".join(_quote(a) for a in f.argv)
        rows.append(("monitor", cl))
        data["monitor_command_line"] = list(f.argv)
    if f.guest_cmdline:
        rows.append(("guest args", f.guest_cmdline))
    if f.app_path:
        rows.append(("unikernel", f.app_path))
        data["unikernel"] = f.app_path
    if session.symbols is not None and session.symbols.path != f.app_path:
        rows.append(("symbols", session.symbols.path))
    data["symbols"] = session.symbols.path if session.symbols is not None else None
    if f.core_path:
        rows.append(("core", f.core_path))
        data["core"] = f.core_path
    for w in session.warnings:
        rows.append(("warning", w))
    data["warnings"] = list(session.warnings)
    return InfoView(title, rows, data)


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)
