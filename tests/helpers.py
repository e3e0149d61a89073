"""Helpers for tests: run the ukdbg CLI as a real process."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_scratch = []


def scratch_dir() -> str:
    """Where CLI runs happen by default: crashes write cores into the cwd."""
    if not _scratch:
        import tempfile
        _scratch.append(tempfile.mkdtemp(prefix="ukdbg-tests-"))
    return _scratch[0]


def ukdbg(*args, timeout=60, input=None, env=None, cwd=None, check_traceback=True):
    """Run `python -m ukdbg ARGS...`; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.pop("UKDBG_DEBUG", None)
    if env:
        e.update(env)
    r = subprocess.run([sys.executable, "-m", "ukdbg", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, input=input, env=e,
                       cwd=cwd or scratch_dir())
    if check_traceback:
        assert "Traceback" not in r.stderr, r.stderr
    return r
