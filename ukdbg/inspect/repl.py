"""ukdbg/inspect/repl.py: the interactive loop of `ukdbg core` (prompt_toolkit): history,
Tab completion of commands, symbols and $registers; Ctrl-C cancels a line, Ctrl-D leaves.
"""

import os

from prompt_toolkit.completion import Completer, Completion

PROMPT = "(ukdbg) "


class UkdbgCompleter(Completer):
    """First word: command names; then symbols and $registers (help: command names)."""

    def __init__(self, session):
        self.session = session
        self._symbols = None

    def _names(self):
        if self._symbols is None:
            s = self.session.symbols
            self._symbols = s.names() if s is not None else []
        return self._symbols

    def get_completions(self, document, complete_event):
        from .commands import ALIASES, TABLE
        text = document.text_before_cursor
        stripped = text.lstrip()
        if " " not in stripped and "/" not in stripped:
            for name in sorted(set(TABLE) | {a for a in ALIASES if " " not in a}):
                if name.startswith(stripped):
                    yield Completion(name, -len(stripped), display_meta=_meta(name))
            return
        word = text
        for sep in " \t+-,*":
            word = word.rsplit(sep, 1)[-1]
        cmd = stripped.split("/", 1)[0].split(" ", 1)[0]
        cmd = ALIASES.get(cmd, cmd)
        if cmd == "help":
            for name in sorted(TABLE):
                if name.startswith(word):
                    yield Completion(name, -len(word))
            return
        c = TABLE.get(cmd)
        if c is None or c.args != "symbol":
            return
        if word.startswith("$"):
            from ..arch.x86_64 import REG_FIELDS
            for r in REG_FIELDS + ("pc", "sp", "fp"):
                if ("$" + r).startswith(word):
                    yield Completion("$" + r, -len(word))
            return
        if not word:
            return
        for n in self._names():
            if n.startswith(word):
                yield Completion(n, -len(word))


def _meta(name):
    from .commands import TABLE
    c = TABLE.get(name)
    return c.summary[:40] if c else ""


def history_path() -> str:
    p = os.environ.get("UKDBG_HISTORY")
    if p:
        return p
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".local", "state")
    return os.path.join(base, "ukdbg", "history")


def _history(path):
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    if path is None:
        return InMemoryHistory()
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a"):
            pass
        return FileHistory(path)
    except OSError:
        return InMemoryHistory()


def run_repl(session, out, input=None, output=None, history=...) -> int:
    """Read-eval-print until quit/Ctrl-D. input/output: prompt_toolkit Input/Output
    (tests pass a pipe input and a DummyOutput); out: render.Output for results."""
    from prompt_toolkit import PromptSession
    from .cli import run_one
    from .commands import QUIT, info
    # Cursor position requests only help place the completion menu; pexpect and IDE
    # consoles never answer them, and prompt_toolkit then prints a warning after 2 s.
    os.environ.setdefault("PROMPT_TOOLKIT_NO_CPR", "1")
    ps = PromptSession(history=_history(history_path() if history is ... else history),
                       completer=UkdbgCompleter(session), complete_while_typing=False,
                       input=input, output=output)
    try:
        out.show(info.build(session))
    except Exception as e:
        out.error(f"error: internal: {type(e).__name__}: {e}")
    out.write_lines(_hint())
    while True:
        try:
            line = ps.prompt(PROMPT).strip()
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        if not line:
            continue
        if line in QUIT:
            break
        try:
            view, err = run_one(session, line)
        except KeyboardInterrupt:
            out.error("interrupted")
            continue
        if err is not None:
            out.error(err)
        else:
            out.show(view)
    return 0


def _hint():
    from rich.text import Text
    return [Text("Type help for the commands, Tab to complete, Ctrl-D to leave.",
                 style="dim")]
