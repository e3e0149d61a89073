"""The interactive inspector: a REPL session typed through prompt_toolkit's pipe input
(keys, Tab completion, history, errors), and `ukdbg core` in a real terminal (tmux),
where the screen must show the prompt, the opening `info` and command output in
colour."""

import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from helpers import ROOT
from inspect_support import core_of

from ukdbg.inspect import render
from ukdbg.inspect.repl import UkdbgCompleter, run_repl
from ukdbg.inspect.session import open_core

pytestmark = pytest.mark.kvm
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b[()][AB0-2]|\r")


def type_into(inp, keys, screen, delay=0.05):
    """Type keys (strings) one chunk at a time, waiting for the screen to settle, as a
    person would (completion runs between key presses)."""
    for k in keys:
        inp.send_text(k)
        time.sleep(delay)
        before = -1
        for _ in range(100):
            if len(screen.getvalue()) == before:
                break
            before = len(screen.getvalue())
            time.sleep(0.02)


def repl_session(core, keys, history):
    """Run the REPL on a pipe input; returns the screen as text (prompt_toolkit's
    VT100 output and the command output share one stream, as on a terminal)."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output.vt100 import Vt100_Output
    from prompt_toolkit.data_structures import Size
    s = open_core(core)
    screen = io.StringIO()
    vt = Vt100_Output(screen, lambda: Size(rows=40, columns=120), term="xterm")
    out = render.Output(screen, color=False)
    result = {}
    with create_pipe_input() as inp:
        t = threading.Thread(target=lambda: result.setdefault(
            "rc", run_repl(s, out, input=inp, output=vt, history=history)))
        t.start()
        time.sleep(0.3)
        type_into(inp, keys, screen)
        t.join(20)
        assert not t.is_alive(), "the REPL did not leave on quit"
    s.close()
    return ANSI.sub("", screen.getvalue()), result["rc"]


def test_repl_types_commands_completes_and_remembers(tmp_path):
    core, _ = core_of("recursion")
    hist = str(tmp_path / "history")
    text, rc = repl_session(core, [
        "bt 2\r",
        "fra", "\t", " 3\r",              # Tab completes the command
        "sym recursion_", "\t", "\r",     # ... and a symbol
        "x/1xg $rsp\r",
        "p", "\x1b[A", "\r",              # Up: history (x/1xg $rsp again)
        "bogus\r",
        "\r",                             # empty line: nothing
        "quit\r"], hist)
    assert rc == 0
    # opening: info is shown
    assert "#PF page fault (SIGSEGV)" in text
    assert "(ukdbg) bt 2" in text
    assert re.search(r"\*#0 +0x[0-9a-f]+ recurse\+0x[0-9a-f]+ at apps/recursion\.c:16", text)
    assert "(... 33 more frames)" in text
    assert "(ukdbg) frame 3" in text
    assert re.search(r"#3 +0x[0-9a-f]+ recurse\+0x[0-9a-f]+ at apps/recursion\.c:18", text)
    assert "(ukdbg) sym recursion_sink" in text
    assert re.search(r"recursion_sink = 0x[0-9a-f]+  object, \d+ bytes, \.bss", text)
    # x/1xg $rsp ran twice (the second time from history), in frame 3
    assert len(re.findall(r"^0x[0-9a-f]+:  0x[0-9a-f]{16}$", text, re.M)) == 2
    assert "error: unknown command 'bogus' (try help)" in text
    with open(hist) as f:
        saved = f.read()
    for cmd in ("bt 2", "frame 3", "sym recursion_sink", "x/1xg $rsp", "bogus"):
        assert f"+{cmd}\n" in saved


def test_repl_ctrl_c_and_ctrl_d(tmp_path):
    core, _ = core_of("nullwrite")
    text, rc = repl_session(core, ["reg", "\x03", "bt\r", "\x04"], str(tmp_path / "h"))
    assert rc == 0
    assert "#0  0x" in text and "crash_here" in text
    assert "frame 0" not in text        # the cancelled `reg` never ran


def test_completer_offers_commands_symbols_and_registers():
    from prompt_toolkit.document import Document
    core, _ = core_of("nullwrite")
    s = open_core(core)
    c = UkdbgCompleter(s)

    def comp(text):
        return sorted(x.text for x in c.get_completions(Document(text), None))
    assert comp("di") == ["disas", "disassemble"]
    assert comp("x/4xg $rs") == ["$rsi", "$rsp"]
    assert comp("disas crash_") == ["crash_here"]
    assert comp("sym rt_trap_1") == sorted(f"rt_trap_{n}" for n in
                                           (1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19))
    assert comp("x/8xg main+") == []
    assert comp("help re") == ["regs"]
    assert comp("bt ") == []
    s.close()


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")
def test_in_a_real_terminal(tmp_path):
    """`ukdbg core` under tmux: prompt, opening info, colour, Tab, output on screen."""
    core, _ = core_of("nullwrite")
    sock = str(tmp_path / "tmux.sock")
    env = dict(os.environ, UKDBG_HISTORY=str(tmp_path / "hist"), TERM="xterm-256color")
    cmd = f"{sys.executable} -m ukdbg core {core}"

    def tmux(*a):
        return subprocess.run(["tmux", "-S", sock, *a], capture_output=True, text=True,
                              env=env, timeout=20)
    r = tmux("new-session", "-d", "-x", "140", "-y", "50", "-c", ROOT, cmd)
    assert r.returncode == 0, r.stderr
    try:
        screen = wait_for(tmux, "(ukdbg)")
        assert "#PF page fault (SIGSEGV)" in screen
        assert "Type help for the commands" in screen
        tmux("send-keys", "-t", "0", "dis", "Tab")
        wait_for(tmux, "(ukdbg) disas")
        tmux("send-keys", "-t", "0", "Enter")
        screen = wait_for(tmux, "<- faulting instruction")
        assert re.search(r"=>! 0x[0-9a-f]+ <\+9>:  movl \$0x1, \(%rax\)", screen)
        colored = tmux("capture-pane", "-p", "-e", "-t", "0").stdout
        assert "\x1b[" in colored                      # colour on a terminal
        tmux("send-keys", "-t", "0", "quit", "Enter")
        for _ in range(100):
            if tmux("has-session").returncode != 0:
                break
            time.sleep(0.05)
        assert tmux("has-session").returncode != 0, "ukdbg core did not leave"
    finally:
        tmux("kill-server")


def wait_for(tmux, text, timeout=20.0):
    end = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < end:
        screen = tmux("capture-pane", "-p", "-t", "0").stdout
        if text in screen:
            return screen
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared on the screen:\n{screen}")
