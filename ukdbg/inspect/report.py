"""ukdbg/inspect/report.py: the crash report, one compact page about a dead guest, built
from a Session: the same for `ukdbg run` (live machine) and `ukdbg core --report`
(a core); Report.to_json() is the `--report json` / `--json` form.
"""

import os
import shlex
from dataclasses import dataclass, field

# Every register, as printed (one tuple a row): all GPRs, rip and rflags, the segment
# selectors and bases, and the control registers a fault is explained by.
REG_ROWS = (("rip", "rsp", "rbp", "rflags"), ("rax", "rbx", "rcx", "rdx"),
            ("rsi", "rdi", "r8", "r9"), ("r10", "r11", "r12", "r13"),
            ("r14", "r15", "fs_base", "gs_base"), ("cr0", "cr2", "cr3", "cr4"),
            ("efer", "cs", "ss", "ds", "es", "fs", "gs"))
MAX_FRAMES = 16
CONSOLE_LINES = 5


@dataclass
class Report:
    headline: str
    facts: list = field(default_factory=list)          # [(label, text)]
    instruction: object = None                         # commands.disas.Insn
    fault_line: str = ""
    fault_source: str = ""
    frames: list = field(default_factory=list)         # [commands.frames.FrameRow]
    frames_more: int = 0
    registers: list = field(default_factory=list)      # [[(name, value)]], REG_ROWS
    console: list = field(default_factory=list)
    events: list = field(default_factory=list)         # [commands.history.EventRow]
    events_error: str = ""                             # why there are none
    core: str = ""
    no_core: str = ""
    commands: list = field(default_factory=list)       # [(label, shell command)]
    data: dict = field(default_factory=dict)           # the JSON form's extra fields

    def to_json(self) -> dict:
        d = {"headline": self.headline}
        d.update(self.data)
        d["instruction"] = self.instruction.to_json() if self.instruction else None
        d["backtrace"] = [f.to_json() for f in self.frames]
        d["registers"] = {n: v for row in self.registers for n, v in row}
        d["console"] = self.console
        d["last_events"] = [e.to_json() for e in self.events]
        d["core"] = self.core or None
        d["commands"] = {label: cmd for label, cmd in self.commands}
        return d


def build(session, app_name=None, core=None, no_core="") -> Report:
    """The report of a session. core: the core's path (if one was written); no_core:
    why there is none."""
    from .commands.frames import row
    from .commands.info import PHYSICAL_CAUSES, KVM_EXITS, decode_error_code, what_is_at
    f = session.facts
    regs = session.regs
    app = app_name or os.path.basename(f.app_path or (session.symbols.path
                                                      if session.symbols else "") or "guest")
    headline = f"{app}: {f.message}" if f.message else f"{app}: crashed"
    r = Report(headline)
    data = {"app": f.app_path, "cause": f.cause, "signal": f.signal_name,
            "exit_status": f.status, "message": f.message}
    sig = f.signal_name
    if f.status is not None:
        sig += f"{', ' if sig else ''}exit status {f.status}"
    if sig:
        r.facts.append(("signal", sig))
    exc = session.exception_name()
    if exc:
        text = f"{exc} (vector {f.vector})"
        if f.error_code is not None:
            words = decode_error_code(f.vector, f.error_code)
            text += f", error code {f.error_code:#x}" + (f": {words}" if words else "")
        r.facts.append(("exception", text))
        data["exception"] = {"vector": f.vector, "name": exc, "error_code": f.error_code}
    fault = f.fault_addr
    if fault is None and f.vector == 14:
        fault = regs.cr2
    if fault is not None:
        what = what_is_at(session, fault, f.cause in PHYSICAL_CAUSES)
        r.facts.append(("fault address", f"{fault:#x}: {what}"))
        data["fault_address"] = {"value": fault, "what": what}
    if f.exit_reason is not None:
        name = KVM_EXITS.get(f.exit_reason, f"exit {f.exit_reason}")
        if f.exit_reason == 2 and f.cause in ("trap", "abort"):
            name += ", the guest's HALT hypercall"
        r.facts.append(("KVM exit", name))
        data["kvm_exit"] = name
    for w in session.warnings:
        r.facts.append(("warning", w))

    pc = session.stop_pc
    code = session.try_read(pc, 16)
    if code:
        from .commands.disas import Insn
        i = session.disasm.one(code, pc)
        if i is not None:
            d = session.describe(pc)
            tgt = session.describe(i.target) if i.target is not None else ""
            r.instruction = Insn(pc, f"<{d}>" if d else "", i.raw, i.text,
                                 f"<{tgt}>" if tgt else "", True, pc == session.fault_pc)
    sl = session.line_for(pc)
    if sl is not None:
        r.fault_line = str(sl)
        r.fault_source = session.symbols.source(sl) or ""

    bt = session.backtrace()
    r.frames = [row(session, fr) for fr in bt.frames[:MAX_FRAMES]]
    for fr in r.frames:
        fr.selected = False
    r.frames_more = max(0, len(bt.frames) - MAX_FRAMES)
    data["backtrace_end"] = bt.end

    r.registers = [[(n, getattr(regs, n)) for n in row] for row in REG_ROWS]

    from .commands.console import tail_lines
    r.console = tail_lines(f.console or b"", CONSOLE_LINES)
    from .commands.history import REPORT_EVENTS, rows
    try:
        log = session.flight_log()
        if log is not None:
            r.events = rows(session, log, REPORT_EVENTS)
    except ValueError as e:
        r.events_error = str(e)
    r.core = core or ""
    r.no_core = no_core
    if core:
        image = f.app_path or (session.symbols.path if session.symbols else None)
        if image:
            r.commands.append(("open it with", gdb_command(image, core)))
        r.commands.append(("or", "ukdbg core " + shlex.quote(core)))
    r.data = data
    return r


def gdb_command(image: str, core: str) -> str:
    return f"gdb {shlex.quote(image)} {shlex.quote(core)}"
