"""Helpers for the gdb stub tests: a `ukdbg run --gdb` in the background (on a port the
stub picks itself), and the real gdb / lldb driven in batch mode against it."""

import os
import re
import socket
import subprocess

from helpers import ROOT, Background

FIXTURES = os.path.join(ROOT, "fixtures", "build")


def app_path(name: str) -> str:
    return os.path.join(FIXTURES, f"{name}.hvt")


class Guest(Background):
    """`ukdbg run --gdb 127.0.0.1:0 [--gdb-wait] APP ARGS` with output in files."""

    def __init__(self, app, *args, wait=True, mem=8, extra=(), gdb="127.0.0.1:0",
                 cwd=None, env=None):
        self.app = app_path(app)
        argv = ["run", f"--mem={mem}", "--no-core", "--no-control", *extra]
        if gdb:
            argv += ["--gdb", gdb]
        if wait and gdb:
            argv.append("--gdb-wait")
        argv += [self.app, *map(str, args)]
        super().__init__(argv, env=env, cwd=cwd, prefix="ukgdb")
        self.address = None
        if gdb:
            self.address = self.wait_for_text(r"listening on (\S+?)[:,]? ", self.stderr)

    def wait_for_text(self, pattern, source, timeout=20.0):
        """The first group (or the whole match) of pattern in source()."""
        def found():
            m = re.search(pattern, source())
            return m and (m.group(1) if m.groups() else m.group(0))
        return self.wait_for(found, repr(pattern), timeout)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


