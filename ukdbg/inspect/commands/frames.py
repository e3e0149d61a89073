"""ukdbg/inspect/commands/frames.py: `bt` (the backtrace) and `frame N` (select one)."""

from dataclasses import dataclass, field


@dataclass
class FrameRow:
    level: int
    pc: int
    func: str | None
    offset: int | None
    file: str | None
    line: int | None
    inline: bool = False
    signal: bool = False
    how: str = ""
    selected: bool = False
    source: str | None = None       # the text of the line, when the file is on disk

    def to_json(self):
        return {"level": self.level, "pc": self.pc, "function": self.func,
                "offset": self.offset, "file": self.file, "line": self.line,
                "inline": self.inline, "signal_frame": self.signal, "unwound_by": self.how}


@dataclass
class BacktraceView:
    frames: list = field(default_factory=list)
    end: str = ""
    more: int = 0                    # frames not shown (bt N)

    def to_json(self):
        return {"frames": [f.to_json() for f in self.frames], "end": self.end,
                "more": self.more}


@dataclass
class FrameView:
    frame: FrameRow

    def to_json(self):
        return self.frame.to_json()


def row(session, f, with_source=False) -> FrameRow:
    src = None
    if with_source and f.line is not None and session.symbols is not None:
        src = session.symbols.source(f.line)
    return FrameRow(f.level, f.pc, f.func, f.offset, f.line.file if f.line else None,
                    f.line.line if f.line else None, f.inline, f.signal, f.how,
                    f.level == session.selected, src)


def bt(session, args):
    from . import optional_int
    limit = optional_int(args, "bt", "a number of frames")
    b = session.backtrace()
    frames = b.frames if limit is None else b.frames[:max(limit, 0)]
    return BacktraceView([row(session, f) for f in frames], b.end,
                         len(b.frames) - len(frames))


def frame(session, args):
    from . import CommandError, optional_int
    n = optional_int(args, "frame", "a frame number")
    if n is not None:
        try:
            session.select(n)
        except ValueError as e:
            raise CommandError(str(e)) from None
    return FrameView(row(session, session.frame(), with_source=True))
