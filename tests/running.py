"""Helpers for tests of running unikernels: start `ukdbg run` in the background, find its
control socket, drive the `ukdbg` commands, and always clean up."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from helpers import ROOT, ukdbg


def runtime_env(rt_dir):
    """Environment for a monitor and its clients sharing a private runtime directory."""
    e = dict(os.environ)
    e.pop("UKDBG_DEBUG", None)
    e["XDG_RUNTIME_DIR"] = rt_dir
    return e


class RuntimeDir:
    """A private XDG_RUNTIME_DIR (short path: unix socket paths are limited to 108 bytes)."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="ukrt")
        self.env = runtime_env(self.path)
        self.sockets = os.path.join(self.path, "ukdbg")

    def cli(self, *args, **kw):
        return ukdbg(*args, env={"XDG_RUNTIME_DIR": self.path}, **kw)

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Monitor:
    """`ukdbg run ARGS` in the background; stdout/stderr go to files."""

    def __init__(self, rt, *args, cwd=None, wrap=(), wait_socket=True):
        self.rt = rt
        self.dir = tempfile.mkdtemp(prefix="ukmon")
        self.out_path = os.path.join(self.dir, "stdout")
        self.err_path = os.path.join(self.dir, "stderr")
        self.args = [str(a) for a in args]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([*wrap, sys.executable, "-m", "ukdbg", "run",
                                          *self.args], stdout=out, stderr=err,
                                         env=rt.env, cwd=cwd or self.dir)
        self.pid = self.proc.pid
        self.sock = os.path.join(rt.sockets, f"{self.pid}.sock")
        if wait_socket:
            self.wait_for(lambda: os.path.exists(self.sock), "its control socket")

    def wait_for(self, cond, what, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"monitor exited ({self.proc.returncode}) while "
                                     f"waiting for {what}: {self.stderr()}")
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}; stderr: {self.stderr()}")

    def stdout(self) -> str:
        with open(self.out_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stderr(self) -> str:
        with open(self.err_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
