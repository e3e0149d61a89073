"""Helpers for the gdb stub tests: a `ukdbg run --gdb` in the background (on a port the
stub picks itself), and the real gdb / lldb driven in batch mode against it."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from helpers import ROOT

FIXTURES = os.path.join(ROOT, "fixtures", "build")


def app_path(name: str) -> str:
    return os.path.join(FIXTURES, f"{name}.hvt")


class Guest:
    """`ukdbg run --gdb 127.0.0.1:0 [--gdb-wait] APP ARGS` with output in files."""

    def __init__(self, app, *args, wait=True, mem=8, extra=(), gdb="127.0.0.1:0",
                 cwd=None, env=None):
        self.dir = tempfile.mkdtemp(prefix="ukgdb")
        self.app = app_path(app)
        self.out_path = os.path.join(self.dir, "stdout")
        self.err_path = os.path.join(self.dir, "stderr")
        argv = [sys.executable, "-m", "ukdbg", "run", f"--mem={mem}", "--no-core",
                "--no-control", *extra]
        if gdb:
            argv += ["--gdb", gdb]
        if wait and gdb:
            argv.append("--gdb-wait")
        argv += [self.app, *map(str, args)]
        e = dict(os.environ)
        e.pop("UKDBG_DEBUG", None)
        e.update(env or {})
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd or self.dir,
                                         env=e)
        self.pid = self.proc.pid
        self.address = None
        if gdb:
            self.address = self.wait_for_text(r"listening on (\S+?)[:,]? ", self.stderr)

    # --- the monitor --------------------------------------------------------------------
    def wait_for_text(self, pattern, source, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, source())
            if m:
                return m.group(1) if m.groups() else m.group(0)
            if self.proc.poll() is not None:
                m = re.search(pattern, source())
                if m:
                    return m.group(1) if m.groups() else m.group(0)
                raise AssertionError(f"monitor exited ({self.proc.returncode}) before "
                                     f"{pattern!r}: {self.stderr()}")
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {pattern!r}; stderr: {self.stderr()}")

    def stdout(self) -> str:
        with open(self.out_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stderr(self) -> str:
        with open(self.err_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait(self, timeout=30) -> int:
        return self.proc.wait(timeout)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- debuggers ----------------------------------------------------------------------
    def remote(self) -> str:
        """What follows `target remote`."""
        a = self.address
        return a[5:] if a.startswith("unix:") else a

    def gdb_argv(self, *cmds, exe=True, connect=True, pre=()):
        argv = ["gdb", "-q", "-nx", "-batch", "-ex", "set confirm off",
                "-ex", "set pagination off"]
        for c in pre:
            argv += ["-ex", c]
        if connect:
            argv += ["-ex", f"target remote {self.remote()}"]
        for c in cmds:
            argv += ["-ex", c]
        if exe:
            argv.append(self.app)
        return argv

    def gdb(self, *cmds, exe=True, timeout=60, pre=()) -> str:
        """Run gdb -batch with cmds after `target remote` (pre: before it); its
        stdout+stderr."""
        r = subprocess.run(self.gdb_argv(*cmds, exe=exe, pre=pre), capture_output=True,
                           text=True,
                           timeout=timeout, cwd=self.dir)
        return r.stdout + r.stderr

    def gdb_background(self, *cmds, exe=True):
        return subprocess.Popen(self.gdb_argv(*cmds, exe=exe), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=self.dir)


def raw_connect(address, timeout=10.0):
    """A plain socket to the stub (for protocol-level tests)."""
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address[5:])
    else:
        host, _, port = address.rpartition(":")
        s = socket.create_connection((host, int(port)), timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)     # as gdb does
    s.settimeout(timeout)
    return s


class RawClient:
    """Minimal RSP client: send packets, read replies (acks on)."""

    def __init__(self, address):
        self.s = raw_connect(address)
        self.buf = b""

    def send_raw(self, data: bytes):
        self.s.sendall(data)

    def packet(self, body: bytes) -> bytes:
        """Send body, return the reply body (acks consumed)."""
        cs = sum(body) & 0xFF
        self.s.sendall(b"$" + body + b"#%02x" % cs)
        return self.reply()

    def reply(self) -> bytes:
        while True:
            i = self.buf.find(b"$")
            j = self.buf.find(b"#", i + 1) if i >= 0 else -1
            if i >= 0 and j >= 0 and len(self.buf) >= j + 3:
                body = self.buf[i + 1:j]
                self.buf = self.buf[j + 3:]
                self.s.sendall(b"+")
                return body
            data = self.s.recv(65536)
            if not data:
                raise ConnectionError("stub closed the connection")
            self.buf += data

    def close(self):
        self.s.close()


def lldb_path():
    for name in ("lldb", "lldb-16", "lldb-15", "lldb-14"):
        p = shutil.which(name)
        if p:
            return p
    return None
