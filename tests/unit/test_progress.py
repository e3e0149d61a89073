"""ukdbg/progress.py: a bar on a terminal after the delay, nothing piped, no escape
sequence under NO_COLOR, and no rich import for operations shorter than the delay."""

import io
import subprocess
import sys

import pytest

from ukdbg.progress import Bar, Spinner


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def env(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("UKDBG_PROGRESS_DELAY", raising=False)
    monkeypatch.setenv("TERM", "xterm")


def run_bar(file, delay, steps=8, step=1 << 20):
    with Bar("writing core", steps * step, file=file, delay=delay) as bar:
        for _ in range(steps):
            bar.advance(step)
    return file.getvalue()


def test_a_terminal_gets_a_bar_that_is_erased_at_the_end():
    out = run_bar(Tty(), delay=0)
    assert "writing core" in out and "\x1b[" in out
    assert out.endswith("\x1b[1A\x1b[2K")                   # erased: transient


def test_short_operations_and_pipes_print_nothing():
    assert run_bar(Tty(), delay=60) == ""
    assert run_bar(io.StringIO(), delay=0) == ""


def test_no_color_is_a_plain_line(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = run_bar(Tty(), delay=0, steps=4)
    assert "\x1b" not in out
    assert "\rwriting core:  25% (1 MiB of 4 MiB)" in out


def test_env_sets_the_delay(monkeypatch):
    monkeypatch.setenv("UKDBG_PROGRESS_DELAY", "0")
    with Bar("x", 10, file=Tty()) as bar:
        bar.advance(5)
        assert bar._rich is not None


def test_spinner():
    t = Tty()
    with Spinner("loading big.core", file=t, delay=0):
        import time
        time.sleep(0.3)
    assert "loading big.core" in t.getvalue()
    t = Tty()
    with Spinner("loading big.core", file=t, delay=60):
        pass
    assert t.getvalue() == ""


def test_rich_is_not_imported_before_the_delay():
    code = ("import sys, io\n"
            "from ukdbg.progress import Bar\n"
            "class T(io.StringIO):\n"
            "    def isatty(self): return True\n"
            "with Bar('x', 100, file=T(), delay=60) as b:\n"
            "    b.advance(50)\n"
            "print('rich' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


def test_hide_erases_and_update_draws_again(monkeypatch):
    """What a replay does around its guest's console output."""
    import time
    t = Tty()
    bar = Bar("replaying", 10, file=t, delay=0, unit="events")
    bar.update(3)
    assert bar.shown and "3/10" in t.getvalue()
    bar.hide()
    assert not bar.shown and t.getvalue().endswith("\x1b[1A\x1b[2K")     # erased
    time.sleep(0.11)
    bar.update(7)
    assert bar.shown and t.getvalue().rsplit("\x1b[2K", 1)[1].count("7/10") == 1
    bar.close()
    monkeypatch.setenv("NO_COLOR", "1")
    t = Tty()
    bar = Bar("replaying", 10, file=t, delay=0, unit="events")
    bar.update(5)
    bar.hide()
    assert t.getvalue() == "\rreplaying:  50% (5 of 10 events)\r" + " " * 32 + "\r"
    bar.hide()                                         # hidden already: nothing
    bar.close()
    assert "\x1b" not in t.getvalue() and t.getvalue().endswith(" " * 32 + "\r")
