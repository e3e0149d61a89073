"""Helpers for tests of running unikernels: start `ukdbg run` in the background, find its
control socket, drive the `ukdbg` commands, and always clean up."""

import os
import shutil
import tempfile

from helpers import Background, ukdbg


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


class Monitor(Background):
    """`ukdbg run ARGS` in the background, sharing runtime directory `rt`."""

    def __init__(self, rt, *args, cwd=None, wrap=(), wait_socket=True):
        self.rt = rt
        self.args = [str(a) for a in args]
        super().__init__(["run", *self.args], env={"XDG_RUNTIME_DIR": rt.path}, cwd=cwd,
                         wrap=wrap, prefix="ukmon")
        self.sock = os.path.join(rt.sockets, f"{self.pid}.sock")
        if wait_socket:
            self.wait_for(lambda: os.path.exists(self.sock), "its control socket")
