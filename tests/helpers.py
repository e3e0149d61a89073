"""Helpers for tests: run the ukdbg CLI as a real process, in the foreground or in the
background (Background: output to files, waiting for conditions, always cleaned up)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_scratch = []


def pty_read(master, timeout=0.1):
    """What the pty `master` has to read now (b"" when nothing came within `timeout`
    seconds; None: wait), or None once every writer has closed it (EIO or EOF)."""
    if timeout is not None:
        import select
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            return b""
    try:
        return os.read(master, 65536) or None
    except OSError:                      # EIO: every writer closed the pty
        return None


def gdb_path():
    return shutil.which("gdb")


def lldb_path():
    for name in ("lldb", "lldb-16", "lldb-15", "lldb-14"):
        p = shutil.which(name)
        if p:
            return p
    return None


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


class Background:
    """`python -m ukdbg ARGV...` in the background, stdout/stderr in files of its own
    directory (the default cwd, so cores land there)."""

    def __init__(self, argv, env=None, cwd=None, wrap=(), prefix="ukbg"):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.out_path = os.path.join(self.dir, "stdout")
        self.err_path = os.path.join(self.dir, "stderr")
        e = dict(os.environ)
        e.pop("UKDBG_DEBUG", None)
        e.update(env or {})
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([*wrap, sys.executable, "-m", "ukdbg",
                                          *map(str, argv)], stdout=out, stderr=err,
                                         env=e, cwd=cwd or self.dir)
        self.pid = self.proc.pid

    def wait_for(self, cond, what, timeout=20.0):
        """Poll cond() until it is truthy; returns its value. Fails with the stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = cond()
            if v:
                return v
            if self.proc.poll() is not None:
                v = cond()
                if v:
                    return v
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def tap_netns(prefix: str, taps=("tap0",)):
    """A private network namespace holding tap devices (the first one up), removed on
    exit; yields its name. Needs root and iproute2. Tests, bench/record.py and
    bench/hypercalls.py use it, so every tap lives in a namespace of its own."""
    name = f"{prefix}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ex = ["ip", "netns", "exec", name]
        for tap in taps:
            subprocess.run(ex + ["ip", "tuntap", "add", tap, "mode", "tap"], check=True)
        # No IPv6 on the tap: the kernel's own router/neighbour solicitations would be
        # frames the guest echoes too.
        subprocess.run(ex + ["sysctl", "-qw", f"net.ipv6.conf.{taps[0]}.disable_ipv6=1"])
        subprocess.run(ex + ["ip", "link", "set", "dev", taps[0], "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name])


def need_tap_netns():
    if os.geteuid() != 0 or not shutil.which("ip") or not os.path.exists("/dev/net/tun"):
        import pytest
        pytest.fail("this test needs root, iproute2 and /dev/net/tun (the CI machines have them)")
