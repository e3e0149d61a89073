"""ukdbg/inspect/render.py: views -> rich renderables (lines of styled rich.text.Text), one
function per view type. Colour only on a terminal; elsewhere stable plain text with no
terminal width or trailing padding (what the golden tests compare).
"""

from rich.text import Text

from ..units import size as _size

ADDR, SYM, LINE, ERR, HEAD, DIM, MARK, VAL = ("cyan", "yellow", "green", "bold red",
                                              "bold", "dim", "bold red", "")


def lines(view) -> list:
    """The Text lines of a view (or of an error message string)."""
    if isinstance(view, str):
        return [Text(view)]
    fn = _RENDERERS.get(type(view).__name__)
    if fn is None:
        return [Text(repr(view))]
    return fn(view)


def plain(view) -> str:
    return "".join(t.plain.rstrip() + "\n" for t in lines(view))


def error(msg: str) -> list:
    return [Text(msg, style=ERR)]


def color_wanted(file) -> bool:
    """Styles (colour, bold, dim) on a terminal, unless NO_COLOR is set (no-color.org):
    then none at all, not even bold. `--color always` still forces them."""
    import os
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


class Output:
    """Where rendered views go: a rich Console on a terminal, plain text otherwise."""

    def __init__(self, file, color=None):
        self.file = file
        if color is None:
            color = color_wanted(file)
        self.color = color
        self._console = None

    def show(self, view) -> None:
        self.write_lines(lines(view))

    def error(self, msg: str) -> None:
        self.write_lines(error(msg))

    def write_lines(self, ls) -> None:
        if not self.color:
            self.file.write("".join(t.plain.rstrip() + "\n" for t in ls))
            self.file.flush()
            return
        if self._console is None:
            from rich.console import Console
            self._console = Console(file=self.file, force_terminal=True, highlight=False,
                                    soft_wrap=True, emoji=False)
        for t in ls:
            self._console.print(t)
        self.file.flush()


def _t(*parts) -> Text:
    """Text from (text, style) pairs and plain strings."""
    t = Text()
    for p in parts:
        if isinstance(p, tuple):
            t.append(p[0], style=p[1] or None)
        else:
            t.append(p)
    return t


def _loc(file, line):
    return (f"{file}:{line}", LINE) if file else ("", None)


# --- info ----------------------------------------------------------------------------------
def _info(v):
    out = [_t((v.title, HEAD))]
    width = max((len(k) for k, _ in v.rows), default=0)
    for k, text in v.rows:
        style = ERR if k == "warning" else None
        out.append(_t(f"  {k:<{width}}  ", (text, style)))
    return out


# --- frames --------------------------------------------------------------------------------
def frame_line(f, marker=True) -> Text:
    sel = "*" if (f.selected and marker) else " "
    t = _t(sel, f"#{f.level:<2} ")
    if f.signal:
        t.append_text(_t((f"{f.pc:#x}", ADDR), " ", (f.func or "??", SYM),
                         ("  <signal handler called>", DIM)))
    else:
        t.append_text(_t((f"{f.pc:#x}", ADDR), " "))
        name = f.func or "??"
        if f.inline:
            t.append_text(_t((name, SYM), (" (inlined)", DIM)))
        else:
            t.append_text(_t((name, SYM), (f"+{f.offset:#x}" if f.offset else "", SYM)))
    if f.file:
        t.append_text(_t(" at ", _loc(f.file, f.line)))
    return t


def _backtrace(v):
    out = [frame_line(f) for f in v.frames]
    if v.more:
        out.append(_t((f"(... {v.more} more frames)", DIM)))
    elif v.end:
        out.append(_t((f"(end: {v.end})", DIM)))
    return out


def _frame(v):
    out = [frame_line(v.frame, marker=False)]
    if v.frame.source is not None:
        out.append(_t(f"{v.frame.line:<6} ", (v.frame.source.rstrip(), None)))
    return out


# --- regs ----------------------------------------------------------------------------------
def _regs(v):
    out = [_t((f"frame {v.frame}", HEAD))]
    gen = v.general
    for i in range(0, len(gen), 2):
        t = Text()
        for n, val, note in gen[i:i + 2]:
            cell = _t(f"{n:<4} ", (f"{val:#018x}", VAL) if val is not None else
                      ("<not saved>".ljust(18), DIM))
            if note:
                cell.append(" " + note, style=SYM if note.startswith("<") else DIM)
            t.append_text(cell)
            t.append(" " * max(2, 44 - len(cell.plain)))
        out.append(t)
    n, val, bits = v.flags
    out.append(_t(f"{n:<6} ", (f"{val:#x}", VAL), "  [ ", (" ".join(bits), SYM), " ]"))
    segs = " ".join(f"{s}={sel:#x}" for s, sel, _ in v.segments[:6])
    out.append(_t((segs, None)))
    out.append(_t(f"fs_base={v.segments[6][1]:#x} gs_base={v.segments[7][1]:#x}"))
    for s, sel, note in v.segments:
        if note:
            out.append(_t(f"  {s:<4} {sel:#06x} ", (note, DIM)))
    for n, val, bits in v.control:
        out.append(_t(f"{n:<6} ", (f"{val:#x}", VAL),
                      ("  [ " + " ".join(bits) + " ]" if bits else "", SYM)))
    for n, base, limit in v.tables:
        out.append(_t(f"{n:<6} base={base:#x} limit={limit:#x}"))
    return out


# --- memory --------------------------------------------------------------------------------
def _x(v):
    out = []
    if v.fmt == "s":
        for a, lab, text in v.strings:
            out.append(_t((f"{a:#x}", ADDR), (f" <{lab}>" if lab else "", SYM), ":  ",
                          (repr(text)[1:-1] if text else "", None)))
    else:
        width = {1: 4, 2: 6, 4: 10, 8: 18}[v.size]
        for a, lab, vals, asc in v.rows:
            t = _t((f"{a:#x}", ADDR), (f" <{lab}>" if lab else "", SYM), ":")
            for x in vals:
                if v.fmt == "x":
                    s = f"{x:#0{width}x}"
                elif v.fmt == "c":
                    s = f"'{repr(bytes([x]))[2:-1]}'" if x < 256 else f"{x:#x}"
                else:
                    s = str(x)
                t.append("  " + s)
            if asc:
                t.append("  " + asc, style=DIM)
            out.append(t)
    if v.error:
        out.append(_t((v.error, ERR)))
    return out


def _mem(v):
    out = []
    for s, e, p, name, phys, touched in v.regions:
        t = _t((f"{s:#014x}-{e:#014x}", ADDR), f" {p} ", f"{_size(e - s):>9}")
        if touched is not None:
            t.append(f"  touched {_size(touched):>9}")
        if phys is not None and phys != s:
            t.append(f"  phys {phys:#x}", style=DIM)
        if name:
            t.append("  " + name, style=SYM)
        out.append(t)
        runs = v.runs.get(s, [])
        for lo, hi, note in runs[:MAX_RUNS]:
            out.append(_t("    touched ", (f"{lo:#x}-{hi:#x}", ADDR), f" {_size(hi - lo):>9}",
                          (f"  {note}" if note else "", DIM)))
        if len(runs) > MAX_RUNS:
            out.append(_t((f"    (... {len(runs) - MAX_RUNS} more touched runs)", DIM)))
    summary = []
    if v.mem_size:
        summary.append(f"guest memory {_size(v.mem_size)}")
    if v.touched_total is not None:
        summary.append(f"touched {_size(v.touched_total)}")
    if summary:
        out.append(_t((", ".join(summary), HEAD)))
    for n in v.notes:
        out.append(_t((n, DIM)))
    return out


MAX_RUNS = 12




# --- disassembly -----------------------------------------------------------------------------
def insn_line(i, show_bytes=False) -> Text:
    mark = "=>" if i.pc else "  "
    t = _t((mark, MARK), ("!" if i.fault else " ", MARK), " ", (f"{i.addr:#x}", ADDR))
    if i.label:
        t.append(" " + i.label, style=SYM)
    t.append(":  ")
    if show_bytes:
        t.append(f"{i.raw.hex(' '):<24} ", style=DIM)
    t.append(i.text, style=MARK if i.fault else None)
    if i.target:
        t.append(" " + i.target, style=SYM)
    if i.fault:
        t.append("   <- faulting instruction", style=MARK)
    return t


def _disas(v):
    out = [_t((v.title, HEAD))]
    for it in v.items:
        if type(it).__name__ == "Source":
            text = f"  {it.text.strip()}" if it.text else ""
            out.append(_t(_loc(it.file, it.line), (text, DIM)))
        else:
            out.append(insn_line(it))
    if v.error:
        out.append(_t((v.error, ERR)))
    return out


# --- sym, console, gdb, help ---------------------------------------------------------------
def _sym(v):
    out = []
    if v.addr is not None:
        head = _t((f"{v.addr:#x}", ADDR))
        if v.rows:
            r = v.rows[0]
            head.append_text(_t(" is ", (f"{r.name}+{r.offset:#x}" if r.offset else r.name,
                                         SYM)))
            if r.section:
                head.append(f" in {r.section}")
            if r.line:
                head.append_text(_t(" at ", (r.line, LINE)))
        out.append(head)
        if v.where:
            out.append(_t("  ", (v.where, DIM)))
        return out
    for r in v.rows:
        t = _t((r.name, SYM), " = ", (f"{r.addr:#x}", ADDR), f"  {r.kind}")
        if r.size:
            t.append(f", {r.size} bytes")
        if r.section:
            t.append(f", {r.section}")
        if r.line:
            t.append_text(_t(", ", (r.line, LINE)))
        if r.value is not None:
            t.append_text(_t(", value ", (f"{r.value:#x} ({r.value})", VAL)))
        out.append(t)
    return out


def _console(v):
    out = []
    if v.shown_from:
        out.append(_t((f"(... {v.shown_from} earlier lines)", DIM)))
    elif v.total > v.kept:
        out.append(_t((f"(the first {v.total - v.kept} bytes were not kept)", DIM)))
    out.extend(Text(ln) for ln in v.lines)
    if not v.lines:
        out.append(_t(("(no console output)", DIM)))
    return out


def _gdb(v):
    out = [Text(ln) for ln in v.output]
    if v.error:
        out.append(_t((f"gdb: {v.error}", ERR)))
    return out


def _help(v):
    width = max(len(u) for u, _ in v.commands)
    out = [_t((f"{u:<{width}}", HEAD), f"  {s}") for u, s in v.commands]
    if len(v.commands) > 2 and v.aliases:
        out.append(_t(("aliases: " + ", ".join(f"{a} = {t}" for a, t in
                                                sorted(v.aliases.items())), DIM)))
    elif v.aliases:
        out.append(_t(("also: " + ", ".join(sorted(v.aliases)), DIM)))
    return out


def event_line(r) -> Text:
    """One flight recorder event: index, time since start, rip <where>, what."""
    when = f"+{r.time:.6f}s" if r.time is not None else "?"
    return _t(f"#{r.index:<5} ", (f"{when:>12}", DIM), "  ", (f"{r.rip:#x}", ADDR),
              (f" <{r.where}>" if r.where else "", SYM), "  ", r.summary)


def _history(v):
    if not v.recorded:
        return [_t(("(no flight recorder in this core: the run had --flight 0, or an "
                    "older ukdbg wrote it)", DIM))]
    out = []
    if v.not_shown or v.not_kept:
        parts = [f"{v.not_shown} not shown"] if v.not_shown else []
        if v.not_kept:
            parts.append(f"{v.not_kept} no longer kept (the ring holds {v.capacity})")
        out.append(_t((f"({v.not_shown + v.not_kept} earlier events: "
                       f"{', '.join(parts)})", DIM)))
    out.extend(event_line(r) for r in v.rows)
    if not v.rows:
        out.append(_t(("(no events)", DIM)))
    return out


_SELECTORS = frozenset(("cs", "ss", "ds", "es", "fs", "gs"))


# --- the crash report ----------------------------------------------------------------------
def _report(r):
    out = [_t(("ukdbg: ", HEAD), (r.headline, ERR))]
    for k, text in r.facts:
        out.append(_t(f"  {k}: ", (text, None)))
    if r.instruction is not None:
        out.append(_t(("faulting instruction:" if r.instruction.fault else "stopped at:",
                       HEAD)))
        i = r.instruction
        t = _t("  ", (f"{i.addr:#x}", ADDR), (f" {i.label}" if i.label else "", SYM), ":  ",
               (i.text, MARK), (f" {i.target}" if i.target else "", SYM))
        if r.fault_line:
            t.append_text(_t("   ", (r.fault_line, LINE)))
        out.append(t)
        if r.fault_source:
            out.append(_t("  ", (r.fault_source.strip(), DIM)))
    if r.frames:
        out.append(_t(("backtrace:", HEAD)))
        for f in r.frames:
            out.append(_t(" ", frame_line(f, marker=False)))
        if r.frames_more:
            out.append(_t(("   (... " + str(r.frames_more) + " more)", DIM)))
    if r.registers:
        out.append(_t(("registers:", HEAD)))
        for regs in r.registers:
            row = Text("  ")
            for n, v in regs:
                # selectors are 16-bit: 0x0008, not 16 digits of zeros
                sel = n in _SELECTORS
                row.append_text(_t(f"{n} " if sel else f"{n:<8}",
                                   (f"{v:#06x}" if sel else f"{v:#018x}", VAL), "  "))
            out.append(row)
    if r.console:
        n = len(r.console)
        out.append(_t((f"console (last {'line' if n == 1 else f'{n} lines'}):", HEAD)))
        for ln in r.console:
            out.append(_t(("  | ", DIM), ln))
    if r.events:
        out.append(_t(("last events before the crash:", HEAD)))
        for e in r.events:
            out.append(_t("  ", event_line(e)))
    elif r.events_error:
        out.append(_t(("last events before the crash: ", HEAD), (r.events_error, DIM)))
    if r.core:
        out.append(_t(("core: ", HEAD), r.core))
    elif r.no_core:
        out.append(_t(("core: ", HEAD), (r.no_core, DIM)))
    for label, cmd in r.commands:
        out.append(_t((f"{label}: ", HEAD), (cmd, SYM)))
    return out


_RENDERERS = {"InfoView": _info, "BacktraceView": _backtrace, "FrameView": _frame,
              "RegsView": _regs, "XView": _x, "MemView": _mem, "DisasView": _disas,
              "SymView": _sym, "ConsoleView": _console, "GdbView": _gdb,
              "HelpView": _help, "HistoryView": _history, "Report": _report}
