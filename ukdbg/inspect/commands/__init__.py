"""ukdbg/inspect/commands: the inspector's commands in one explicit table. A command is
run(session, args) -> a view (data with to_json()); render.py draws views; bad
arguments raise CommandError (one line).
"""

from ...errors import TargetError


class CommandError(Exception):
    """A command cannot run with these arguments (one line for the user)."""


def optional_int(args: str, command: str, what: str):
    """A command's one optional number (decimal or 0x...), None when it has none."""
    text = args.strip()
    if not text:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise CommandError(f"{command}: expected {what}, got '{text}'") from None


class Command:
    __slots__ = ("name", "module", "usage", "summary", "args")

    def __init__(self, name, module, usage, summary, args=""):
        self.name, self.module, self.usage, self.summary = name, module, usage, summary
        self.args = args          # what to complete: "" none, "symbol", "command"


# name -> Command. module: "module:function" under this package, imported on first use.
TABLE = {c.name: c for c in (
    Command("info", "info:run", "info",
            "why the guest stopped: exception, error code, faulting address, exit reason"),
    Command("bt", "frames:bt", "bt [N]", "backtrace (DWARF CFI, else frame pointers)"),
    Command("frame", "frames:frame", "frame [N]", "select frame N (or show the current one)"),
    Command("regs", "regs:run", "regs",
            "registers of the selected frame: general, segment, control, flags (decoded)"),
    Command("x", "memory:examine", "x[/N][bwhg][xduc] ADDR|SYMBOL|$reg[+OFF]",
            "examine memory (default /1xw)", "symbol"),
    Command("disas", "disas:run", "disas [ADDR|FUNC|ADDR,+LEN]",
            "disassemble, with source lines; => the frame's pc, ! the faulting instruction",
            "symbol"),
    Command("sym", "sym:run", "sym ADDR|NAME", "symbol, section and source line of an "
            "address, or the address of a name", "symbol"),
    Command("console", "console:run", "console [N]",
            "the guest's console output kept in the core (last N lines)"),
    Command("mem", "memory:mem", "mem", "the memory map and what the guest touched"),
    Command("history", "history:run", "history [N]",
            "the last N events before the core (flight recorder): hypercalls, exits, "
            "signals, debugger actions"),
    Command("gdb", "gdb:run", "gdb GDB-COMMAND",
            "run a command in stock gdb on the same core (e.g. gdb print counter)"),
    Command("help", "help:run", "help [COMMAND]", "this list, or one command's usage",
            "command"),
)}
ALIASES = {"where": "bt", "backtrace": "bt", "f": "frame", "registers": "regs",
           "disassemble": "disas", "h": "help", "?": "help", "info registers": "regs"}
QUIT = ("quit", "exit", "q")


def split_commands(text: str) -> list:
    """'info; bt; regs' -> ['info', 'bt', 'regs'] (newlines separate too)."""
    out = []
    for part in text.replace("\n", ";").split(";"):
        part = part.strip()
        if part:
            out.append(part)
    return out


def parse(line: str):
    """'x/4xg $rsp' -> (Command, '/4xg $rsp'); raises CommandError."""
    line = line.strip()
    if line in ALIASES:
        line = ALIASES[line]
    word = line
    rest = ""
    for i, ch in enumerate(line):
        if ch in " \t/":
            word, rest = line[:i], line[i:]
            break
    word = ALIASES.get(word, word)
    cmd = TABLE.get(word)
    if cmd is None:
        hits = [n for n in TABLE if n.startswith(word)] if word else []
        if len(hits) == 1:
            cmd = TABLE[hits[0]]
        else:
            more = f" (did you mean {', '.join(hits)}?)" if hits else " (try help)"
            raise CommandError(f"unknown command '{word}'{more}")
    return cmd, rest.strip() if not rest.startswith("/") else rest


def execute(session, line: str):
    """Run one command line; returns its view. CommandError for bad input; target
    errors (unreadable memory) become CommandError too."""
    cmd, args = parse(line)
    modname, func = cmd.module.split(":")
    import importlib
    mod = importlib.import_module(f"{__name__}.{modname}")
    try:
        return getattr(mod, func)(session, args)
    except TargetError as e:
        raise CommandError(str(e)) from None


# --- address expressions: 0x1000, 4096, symbol, $reg, with + and - --------------------------
REG_ALIASES = {"pc": "rip", "sp": "rsp", "fp": "rbp", "eflags": "rflags"}


def eval_address(session, text: str) -> int:
    """Evaluate ADDR|SYMBOL|$reg[(+|-)TERM...] in the selected frame."""
    text = text.strip()
    if not text:
        raise CommandError("missing address")
    if text.startswith("*"):
        text = text[1:].strip()
    total = 0
    sign = 1
    term = ""
    for ch in text + "+":
        if ch in "+-" and term.strip():
            total += sign * _term(session, term.strip())
            sign = 1 if ch == "+" else -1
            term = ""
        elif ch in "+-" and not term.strip():
            sign = -sign if ch == "-" else sign
        else:
            term += ch
    return total & ((1 << 64) - 1)


def _term(session, t: str) -> int:
    if t.startswith("$"):
        name = REG_ALIASES.get(t[1:], t[1:])
        regs = session.frame_regs()
        if name not in regs:
            if session.selected and name in session.regs.as_dict():
                raise CommandError(f"${name} is not saved in frame {session.selected}")
            raise CommandError(f"unknown register ${t[1:]}")
        return regs[name]
    try:
        return int(t, 0)
    except ValueError:
        pass
    if session.symbols is not None:
        s = session.symbols.lookup(t)
        if s is not None:
            return s.value
    if session.symbols is None:
        raise CommandError(f"no symbol '{t}' (the unikernel binary is not loaded)")
    raise CommandError(f"no symbol '{t}'")
