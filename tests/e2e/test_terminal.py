"""Terminals and scripts: what ukdbg prints on a real pseudo-terminal (colour, NO_COLOR,
progress bars) and what it prints when piped (nothing but the text)."""

import os
import pty
import re
import subprocess
import sys
import time

import pytest

from gdbguest import app_path
from helpers import ROOT, pty_read

pytestmark = pytest.mark.kvm


def on_pty(argv, env=None, cwd=None, timeout=60, stdout=None):
    """Run `python -m ukdbg ARGV` with stdin, stdout and stderr on one pty (stdout:
    elsewhere if given); (rc, bytes)."""
    e = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "UKDBG_DEBUG")}
    e.update(env or {})
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", *argv], stdin=slave,
                         stdout=slave if stdout is None else stdout,
                         stderr=slave, env=e, cwd=cwd or ROOT)
    os.close(slave)
    out = b""
    while (chunk := pty_read(master, None)) is not None:
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
            chunk = pty_read(master)
            if chunk is None:
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


# --- the replay's bar -------------------------------------------------------------------
def screen(out: bytes) -> str:
    """What a terminal shows once `out` is written to it: only the sequences rich and
    ukdbg's bars use are understood (anything else fails the test)."""
    rows, r, c = [[]], 0, 0
    text, i = out.decode(), 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch == "\x1b":
            m = re.match(r"\[(\??)([\d;]*)([A-Za-z])", text[i:])
            assert m, f"unexpected escape sequence {text[i - 1:i + 12]!r}"
            i += m.end()
            private, n, cmd = m.groups()
            if private or cmd == "m":            # cursor shown/hidden, colours
                continue
            if cmd == "K" and n == "2":
                rows[r] = []
            elif cmd == "A":
                r = max(0, r - int(n or 1))
            else:
                raise AssertionError(f"unexpected escape sequence {m.group(0)!r}")
        elif ch == "\r":
            c = 0
        elif ch == "\n":
            r += 1
            if r == len(rows):
                rows.append([])
        else:
            line = rows[r]
            line.extend(" " * (c + 1 - len(line)))
            line[c] = ch
            c += 1
    return "\n".join("".join(line).rstrip() for line in rows).strip("\n")


@pytest.fixture(scope="module")
def banner_rec(tmp_path_factory):
    """A recording of `banner 300`: 300 lines, one every few events (~0.5 s replay)."""
    from helpers import ukdbg
    d = tmp_path_factory.mktemp("rec")
    rec = str(d / "banner.rec")
    r = ukdbg("run", "--mem=8", "--no-control", "--no-core", "--record", rec,
              app_path("banner"), "300", cwd=d)
    assert r.returncode == 0 and r.stdout.count("banner: round") == 300, r.stderr
    return rec, r.stdout


@pytest.fixture(scope="module")
def quiet_rec(tmp_path_factory):
    """A recording of `rev 3 200000`: three lines, then ~1.5 s of computing without a
    word or an exit (burn()), then a last line."""
    from helpers import ukdbg
    d = tmp_path_factory.mktemp("rev")
    rec = str(d / "rev.rec")
    r = ukdbg("run", "--mem=8", "--no-control", "--no-core", "--record", rec,
              app_path("rev"), "3", "200000", cwd=d)
    assert r.returncode == 0 and "round 2 total" in r.stdout, r.stderr
    return rec


def test_replay_progress_on_a_terminal_only(quiet_rec, tmp_path):
    """On a terminal: a bar of events replayed, drawn below the console's line while the
    guest computes, gone at the end (the screen shows exactly what a piped replay
    prints). NO_COLOR: a plain line. Piped: nothing (delay 0 here; the default is
    tested in tests/unit/test_progress.py)."""
    from helpers import ukdbg
    argv = ["replay", "--no-core", quiet_rec]
    r = ukdbg(*argv, env={"UKDBG_PROGRESS_DELAY": "0"}, cwd=tmp_path)
    assert r.returncode == 0 and "round 2 total" in r.stdout, r.stderr
    assert "replaying" not in r.stderr and "\x1b" not in r.stdout + r.stderr, r.stderr
    piped = (r.stdout + r.stderr).strip("\n")

    rc, out = on_pty(argv, env={"UKDBG_PROGRESS_DELAY": "0"}, cwd=tmp_path)
    assert rc == 0 and "━".encode() in out, out
    after = out[out.index(b"round 2 total"):]
    draws = re.findall(rb"replaying .*?(\d+)/(\d+)", after)
    assert draws, out                      # drawn while it computes (kicked: no exits)
    assert all(total == draws[0][1] for _, total in draws), draws
    assert screen(out) == piped, out                   # transient, no mix-up

    rc, out = on_pty(argv, env={"UKDBG_PROGRESS_DELAY": "0", "NO_COLOR": "1"},
                     cwd=tmp_path)
    assert rc == 0 and b"\rreplaying: " in out and b" events)" in out, out
    assert out.index(b"\rreplaying: ", out.index(b"round 2 total")) > 0
    assert b"\x1b" not in out, out
    assert screen(out) == piped, out


def test_replay_bar_and_a_chatty_console(banner_rec, tmp_path):
    """300 lines in ~0.5 s: the bar gives way to the console, which the screen shows
    intact."""
    rec, console = banner_rec
    rc, out = on_pty(["replay", "--no-core", rec], env={"UKDBG_PROGRESS_DELAY": "0"},
                     cwd=tmp_path)
    assert rc == 0 and screen(out) == console.strip("\n"), out


def test_replay_bar_waits_for_the_end_of_a_console_line(tmp_path):
    """A guest prints "working..." and computes ~1.5 s without an exit before " done":
    the bar must not be drawn over the unfinished line (it would erase it)."""
    from helpers import ukdbg
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(8192))
    rec = str(tmp_path / "partial.rec")
    r = ukdbg("run", "--mem=8", "--no-control", "--no-core", f"--block:storage={disk}",
              "--record", rec, app_path("rrbench"), "partial", "200000", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("working... done\n"), r.stderr
    rc, out = on_pty(["replay", "--no-core", rec], env={"UKDBG_PROGRESS_DELAY": "0"},
                     cwd=tmp_path)
    assert rc == 0 and b"working... done" in out, out
    assert screen(out) == r.stdout.strip("\n"), out


def test_replay_progress_with_stdout_elsewhere(banner_rec, tmp_path):
    """stdout into a file: the bar on the terminal (stderr), the file exactly the
    console. stdout into a pipe (a pager may own the terminal), or --trace on stderr:
    no bar."""
    rec, console = banner_rec
    argv = ["replay", "--no-core", rec]
    with open(tmp_path / "out", "wb") as f:
        rc, out = on_pty(argv, env={"UKDBG_PROGRESS_DELAY": "0"}, cwd=tmp_path, stdout=f)
    assert rc == 0 and b"replaying" in out and screen(out) == "", out
    assert (tmp_path / "out").read_text() == console
    r, w = os.pipe()
    try:
        rc, out = on_pty(argv, env={"UKDBG_PROGRESS_DELAY": "0"}, cwd=tmp_path, stdout=w)
    finally:
        os.close(w)
        piped = os.read(r, 1 << 20)
        os.close(r)
    assert rc == 0 and out == b"" and piped.decode() == console, out
    rc, out = on_pty(argv[:-1] + ["--trace", rec], env={"UKDBG_PROGRESS_DELAY": "0"},
                     cwd=tmp_path)            # the trace's lines own stderr
    assert rc == 0 and b"puts(" in out, out
    assert b"replaying" not in out, out


@pytest.mark.gdb
def test_no_replay_bar_under_gdb(banner_rec, tmp_path):
    """A replay driven by gdb (the user steps): no bar, even with delay 0."""
    rec, console = banner_rec
    e = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "UKDBG_DEBUG")}
    e["UKDBG_PROGRESS_DELAY"] = "0"
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", "replay", "--no-core", "--gdb",
                          "127.0.0.1:0", "--gdb-wait", rec], stdin=slave, stdout=slave,
                         stderr=slave, env=e, cwd=tmp_path)
    os.close(slave)
    out, g = b"", None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            chunk = pty_read(master)
            if chunk is None:
                break
            out += chunk
            m = re.search(rb"listening on (\S+?),", out)
            if m and g is None:
                g = subprocess.Popen(["gdb", "-q", "-nx", "-batch", "-ex", "set confirm off",
                                      "-ex", f"target remote {m.group(1).decode()}",
                                      "-ex", "continue", app_path("banner")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    assert g is not None, out
    text = g.communicate(timeout=60)[0].decode()
    assert p.wait(10) == 0, out
    assert "detached" in text, text            # gdb ran it to the end of the recording
    assert out.count(b"banner: round") == 300, out
    assert b"replaying" not in out and "━".encode() not in out, out
