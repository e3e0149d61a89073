"""Terminals and scripts: what ukdbg prints on a real pseudo-terminal (colour, NO_COLOR,
progress bars) and what it prints when piped (nothing but the text)."""

import os
import pty
import subprocess
import sys

import pytest

from gdbguest import app_path
from helpers import ROOT

pytestmark = pytest.mark.kvm


def on_pty(argv, env=None, cwd=None, timeout=60):
    """Run `python -m ukdbg ARGV` with stdin, stdout and stderr on one pty; (rc, bytes)."""
    e = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "UKDBG_DEBUG")}
    e.update(env or {})
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", *argv], stdin=slave, stdout=slave,
                         stderr=slave, env=e, cwd=cwd or ROOT)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                  # EIO: every writer closed the pty
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(timeout=timeout), out


def test_crash_report_styles_on_a_terminal_and_none_with_no_color(tmp_path):
    argv = ["run", "--mem=8", "--no-core", app_path("nullwrite")]
    rc, styled = on_pty(argv, cwd=tmp_path)
    assert rc == 255 and b"registers:" in styled
    assert styled.count(b"\x1b[") > 10          # bold heads, colours: on by default
    rc, plain = on_pty(argv, env={"NO_COLOR": "1"}, cwd=tmp_path)
    assert rc == 255 and b"registers:" in plain and b"backtrace:" in plain
    assert b"\x1b" not in plain, plain


def test_core_report_no_color(tmp_path):
    from helpers import ukdbg
    ukdbg("run", "--mem=8", app_path("divzero"), cwd=tmp_path)
    (core,) = [str(tmp_path / p) for p in os.listdir(tmp_path) if p.endswith(".core")]
    rc, styled = on_pty(["core", "--report", core])
    assert rc == 0 and b"\x1b[" in styled
    rc, plain = on_pty(["core", "--report", core], env={"NO_COLOR": "1"})
    assert rc == 0 and b"backtrace:" in plain and b"\x1b" not in plain, plain
    rc, forced = on_pty(["core", "--report", "--color", "always", core],
                        env={"NO_COLOR": "1"})
    assert rc == 0 and b"\x1b[" in forced        # an explicit --color always still wins


def test_repl_prints_no_cpr_warning_where_nobody_answers(tmp_path):
    """Like pexpect or an IDE console: a terminal that never answers prompt_toolkit's
    cursor position request (prompt_toolkit warns after 2 s of silence)."""
    import select
    import time
    from helpers import ukdbg
    ukdbg("run", "--mem=8", app_path("nullwrite"), cwd=tmp_path)
    (core,) = [str(tmp_path / p) for p in os.listdir(tmp_path) if p.endswith(".core")]
    e = {k: v for k, v in os.environ.items() if k != "PROMPT_TOOLKIT_NO_CPR"}
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", "core", core], stdin=slave,
                         stdout=slave, stderr=slave, env=e)
    os.close(slave)
    out, t0, sent = b"", time.monotonic(), []
    try:
        while time.monotonic() - t0 < 30:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elapsed = time.monotonic() - t0
            if not sent and elapsed > 3.0 and b"(ukdbg)" in out:
                os.write(master, b"bt\r")
                sent.append("bt")
                mark = len(out)
            elif sent == ["bt"] and b"crash_here" in out[mark:]:
                os.write(master, b"quit\r")
                sent.append("quit")
            if p.poll() is not None and not ready:
                break
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    assert p.wait(10) == 0, out
    assert sent == ["bt", "quit"], out
    assert b"cursor position" not in out and b"CPR" not in out, out


def test_core_dump_progress_on_a_terminal_only(tmp_path):
    """The bar of a core dump (delay 0 here: the fixtures' dumps take milliseconds; the
    0.5 s default is tested in tests/unit/test_progress.py)."""
    from helpers import ukdbg
    argv = ["run", "--mem=8", app_path("nullwrite")]
    rc, out = on_pty(argv, env={"UKDBG_PROGRESS_DELAY": "0"}, cwd=tmp_path)
    assert rc == 255 and b"writing core" in out and "━".encode() in out, out
    rc, out = on_pty(argv, env={"UKDBG_PROGRESS_DELAY": "0", "NO_COLOR": "1"},
                     cwd=tmp_path)
    assert rc == 255 and b"\rwriting core: " in out and b"\x1b" not in out, out
    r = ukdbg(*argv, env={"UKDBG_PROGRESS_DELAY": "0"}, cwd=tmp_path)
    assert r.returncode == 255 and "writing core" not in r.stderr, r.stderr
    assert "\x1b" not in r.stderr
    rc, out = on_pty(argv, cwd=tmp_path)                     # the default delay
    assert rc == 255 and b"writing core" not in out
