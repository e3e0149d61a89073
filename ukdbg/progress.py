"""ukdbg/progress.py: progress for long operations (core dumps, core loading, replays), on
a terminal only.

    with Bar("core", total_bytes) as bar:     # work measured in steps
        bar.advance(n)
    with Spinner("loading core"):             # work with no steps to count
        ...

Nothing shows before `delay` seconds (default 0.5; $UKDBG_PROGRESS_DELAY overrides), so
short operations print nothing and never import rich; nothing at all when the stream
is not a terminal (pipes, files, CI logs). Under NO_COLOR or TERM=dumb the bar is one
plain line rewritten with a carriage return: no escape sequence. A bar is transient: it
is erased when the operation ends. Bar draws from the caller's thread (it runs on the
monitor's vCPU thread); Spinner, which has no calls to draw from, uses a timer thread.
Output that shares the terminal (a replayed guest's console) calls bar.hide() first;
the next update() draws the bar again.
"""

import os
import sys
import time

_REFRESH = 0.1          # seconds between redraws


def _delay(delay):
    if delay is not None:
        return delay
    try:
        return float(os.environ.get("UKDBG_PROGRESS_DELAY", "0.5"))
    except ValueError:
        return 0.5


def _mode(file) -> str:
    """'rich', 'plain' (no escape sequences) or '' (not a terminal: nothing)."""
    try:
        if not file.isatty():
            return ""
    except (AttributeError, ValueError):
        return ""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return "plain"
    return "rich"


def _size(n: float) -> str:
    from .units import size
    return size(int(n))


class Bar:
    """A determinate progress bar; total in `unit`s ("bytes" shows sizes and speed)."""

    def __init__(self, label: str, total: int, file=None, delay=None, unit="bytes"):
        self.file = file if file is not None else sys.stderr
        self.label, self.total, self.unit = label, max(0, int(total)), unit
        self.done = 0
        self._mode = _mode(self.file) if self.total else ""
        self._t0 = time.monotonic()
        self._delay = _delay(delay)
        self._next = 0.0
        self._rich = None               # (Progress, task id) once shown
        self._plain = False
        self._shown = False             # on the screen now
        self._width = 0                 # of the plain line drawn

    @property
    def on_terminal(self) -> bool:
        """False: this bar never draws anything (not a terminal, or nothing to count)."""
        return bool(self._mode)

    @property
    def shown(self) -> bool:
        return self._shown

    @property
    def delay(self) -> float:
        return self._delay

    def advance(self, n: int) -> None:
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """Set the work done so far; draws at most every _REFRESH s, after the delay."""
        self.done = done
        if not self._mode:
            return
        now = time.monotonic()
        if now < self._next:
            return
        if not (self._rich or self._plain):
            if now - self._t0 < self._delay:
                return
            self._show()
        self._next = now + _REFRESH
        self._draw()

    def _show(self):
        if self._mode == "plain":
            self._plain = True
            return
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn,
                                   Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)
        cols = [TextColumn("{task.description}"), BarColumn()]
        if self.unit == "bytes":
            cols += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
        else:
            cols += [MofNCompleteColumn()]
        cols.append(TimeRemainingColumn())
        p = Progress(*cols, console=Console(file=self.file), transient=True,
                     auto_refresh=False)
        self._rich = (p, p.add_task(self.label, total=self.total))

    def _draw(self):
        if self._rich:
            p, task = self._rich
            p.update(task, completed=min(self.done, self.total))
            if self._shown:
                p.refresh()
            else:
                p.start()               # draws (again after a hide(): same task, ETA)
                self._shown = True
            return
        pct = 100 * min(self.done, self.total) // self.total
        if self.unit == "bytes":
            of = f"{_size(self.done)} of {_size(self.total)}"
        else:
            of = f"{self.done} of {self.total} {self.unit}"
        line = f"{self.label}: {pct:3d}% ({of})"
        self._write("\r" + line + " " * max(0, self._width - len(line)))
        self._width = len(line)
        self._shown = True

    def _write(self, text):
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError):
            self._mode = ""

    def hide(self) -> None:
        """Erase the bar now (the cursor is left at the start of its line), for
        output to the same terminal; the next update() draws it again."""
        if not self._shown:
            return
        self._shown = False
        if self._rich:
            self._rich[0].stop()        # transient: erased; start() shows it again
        else:
            self._write("\r" + " " * self._width + "\r")
            self._width = 0

    def close(self) -> None:
        self.hide()
        self._rich = None
        self._plain = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Spinner:
    """An indeterminate progress line (label and elapsed time) for work with no steps."""

    def __init__(self, label: str, file=None, delay=None):
        self.file = file if file is not None else sys.stderr
        self.label = label
        self._mode = _mode(self.file)
        self._delay = _delay(delay)
        self._timer = None
        self._status = None
        self._plain = False
        self._done = False

    def __enter__(self):
        if self._mode:
            import threading
            self._timer = threading.Timer(self._delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _show(self):
        if self._done:
            return
        if self._mode == "plain":
            self._plain = True
            self._write(f"\r{self.label} ...")
            return
        from rich.console import Console
        self._status = Console(file=self.file).status(self.label)
        self._status.start()

    def _write(self, text):
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError):
            pass

    def __exit__(self, *exc):
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()
        if self._status is not None:
            self._status.stop()
        elif self._plain:
            self._write("\r" + " " * (len(self.label) + 4) + "\r")
