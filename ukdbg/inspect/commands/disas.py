"""ukdbg/inspect/commands/disas.py: `disas [FUNC|ADDR|A,+N|A,B]`: a capstone listing with
symbols and source lines; `=>` marks the frame's pc, `!` the faulting instruction.
"""

from dataclasses import dataclass, field

from . import CommandError, eval_address

MAX_FUNCTION = 1 << 16
DEFAULT_COUNT = 16


@dataclass
class Insn:
    addr: int
    label: str            # '<+9>' inside a function, '<sym+off>' otherwise
    raw: bytes
    text: str
    target: str = ""      # '<crash_here>' for a direct call/jump
    pc: bool = False      # the selected frame's pc
    fault: bool = False   # the faulting instruction

    def to_json(self):
        return {"addr": self.addr, "label": self.label, "bytes": self.raw.hex(),
                "text": self.text, "target": self.target, "pc": self.pc,
                "fault": self.fault}


@dataclass
class Source:
    file: str
    line: int
    text: str | None

    def to_json(self):
        return {"file": self.file, "line": self.line, "text": self.text}


@dataclass
class DisasView:
    title: str
    items: list = field(default_factory=list)    # Insn | Source
    error: str = ""

    def to_json(self):
        return {"title": self.title, "error": self.error,
                "items": [dict(kind=type(i).__name__.lower(), **i.to_json())
                          for i in self.items]}


def run(session, args):
    args = args.strip()
    if not args:
        f = session.frame()
        if f is None:
            raise CommandError("no frame selected")
        return function_listing(session, f.pc)
    if "," in args:
        a, b = args.split(",", 1)
        start = eval_address(session, a)
        b = b.strip()
        end = start + eval_address(session, b[1:]) if b.startswith("+") else \
            eval_address(session, b)
        if not start < end <= start + MAX_FUNCTION:
            raise CommandError("disas: the range must be positive and at most 64 KiB")
        return listing(session, start, end=end)
    return function_listing(session, eval_address(session, args))


def function_listing(session, addr):
    fr = session.symbols.function_range(addr) if session.symbols is not None else None
    if fr is None or fr[1] - fr[0] > MAX_FUNCTION:
        return listing(session, addr, count=DEFAULT_COUNT)
    start, end, name = fr
    return listing(session, start, end=end, func=(start, name))


def listing(session, start, count=None, end=None, func=None) -> DisasView:
    size = (end - start) if end is not None else 16 * (count or DEFAULT_COUNT)
    code = session.try_read(start, size)
    title = f"{func[1]} ({start:#x}-{end:#x})" if func else f"{start:#x}"
    if session.symbols is None:
        title += " (no symbols: the unikernel binary is not loaded)"
    view = DisasView(title)
    if not code:
        view.error = f"cannot access memory at {start:#x}"
        return view
    ins = session.disasm.disassemble(code, start, count or 0)
    if end is not None and len(code) < end - start:
        view.error = f"cannot access memory at {start + len(code):#x}"
    frame = session.frame()
    pc = frame.pc if frame is not None else None
    fault = session.fault_pc
    prev = None
    for i in ins:
        sl = session.line_for(i.addr)
        if sl is not None and sl != prev:
            view.items.append(Source(sl.file, sl.line, session.symbols.source(sl)))
        prev = sl if sl is not None else prev
        if func is not None:
            label = f"<+{i.addr - func[0]}>"
        else:
            d = session.describe(i.addr)
            label = f"<{d}>" if d else ""
        tgt = ""
        if i.target is not None:
            d = session.describe(i.target)
            tgt = f"<{d}>" if d else ""
        view.items.append(Insn(i.addr, label, i.raw, i.text, tgt, i.addr == pc,
                               i.addr == fault))
    return view
