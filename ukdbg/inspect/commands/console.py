"""ukdbg/inspect/commands/console.py: `console [N]`: the guest's output kept in the core."""

from dataclasses import dataclass, field

from . import optional_int


@dataclass
class ConsoleView:
    lines: list = field(default_factory=list)
    kept: int = 0            # bytes kept (the last 64 KiB)
    total: int = 0           # bytes the guest wrote in all
    shown_from: int = 0      # index of the first line shown

    def to_json(self):
        return {"lines": self.lines, "kept_bytes": self.kept, "total_bytes": self.total}


def tail_lines(data: bytes, n=None) -> list:
    text = bytes(data).decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines if n is None else lines[-n:] if n > 0 else []


def run(session, args):
    n = optional_int(args, "console", "a number of lines")
    f = session.facts
    data = f.console or b""
    all_lines = tail_lines(data)
    lines = all_lines if n is None else all_lines[-n:] if n > 0 else []
    return ConsoleView(lines, len(data), max(f.console_total or 0, len(data)),
                       len(all_lines) - len(lines))
