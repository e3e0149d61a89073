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
