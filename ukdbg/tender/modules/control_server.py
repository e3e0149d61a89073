"""ukdbg/tender/modules/control_server.py: the control socket and its requests.

A listening unix socket, <runtime dir>/<pid>.sock (mode 0600), is an events async
source: a request interrupts KVM_RUN (SIGIO) and is answered on the vCPU thread between
two exits, so a busy guest still answers and nothing needs a lock. Connections are
non-blocking. Opened by control.py shortly after start-up.
"""

import _socket
import json
import os
import struct
import time

from ...control import paths
from .. import abi

MAX_LINE = 64 * 1024        # a longer request line ends the connection
MAX_OUT = 1 << 20           # replies a client does not read, before it is dropped
MAX_CONNS = 32
PROTOCOL = 1
_UCRED = struct.Struct("3i")


def _log(m, kind, **fields):
    if getattr(m, "log", None) is not None:
        from .log import log_event
        log_event(m, kind, **fields)


def open_control(m):
    """Open the socket and serve it (on the vCPU thread); m.control is the result."""
    try:
        ctl = Control(m)
    except OSError as e:
        # A convenience, not a reason to stop the guest.
        import sys
        sys.stderr.write(f"ukdbg: control socket disabled: {e}\n")
        return None
    m.control = ctl
    poll = m.hypercalls[abi.HC_POLL]
    if poll is not None:
        def polling(m, gpa):
            ctl.sleeping = True
            try:
                return poll(m, gpa)
            finally:
                ctl.sleeping = False
        m.hypercalls[abi.HC_POLL] = polling
    return ctl


class Conn:
    __slots__ = ("sock", "fd", "inbuf", "outbuf", "eof", "closed")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.eof = False
        self.closed = False


class Control:
    def __init__(self, m):
        self.m = m
        self.uid = os.getuid()
        self.sleeping = False        # the guest is inside the POLL hypercall
        self.paused = False
        self.paused_total = 0.0
        self.cores = []
        self.conns = {}
        self.started_wall = None
        d = paths.ensure_runtime_dir()
        path = paths.socket_path(os.getpid(), d)
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            try:
                os.unlink(path)        # left by a dead monitor that had our pid
            except FileNotFoundError:
                pass
            old = os.umask(0o177)      # born 0600: no window with wider permissions
            try:
                s.bind(path)
            finally:
                os.umask(old)
            s.listen(16)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock = s
        self.path = path
        m.events.add_source(s.fileno(), self.on_listen)
        # `ukdbg run` ends through os._exit after the ending hooks (which remove the
        # socket); atexit covers the runs that end in an exception instead.
        import atexit
        atexit.register(self.close)

    # --- connections ------------------------------------------------------------------------
    def on_listen(self, m):
        self._flush_all()
        while True:
            try:
                fd, _ = self.sock._accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return None
            c = Conn(_socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd))
            try:
                _pid, uid, _gid = _UCRED.unpack(
                    c.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12))
            except OSError:
                c.sock.close()
                continue
            if uid != self.uid or len(self.conns) >= MAX_CONNS:
                why = (f"permission denied: uid {uid} may not control this unikernel"
                       if uid != self.uid else "too many control connections")
                try:
                    c.sock.send(json.dumps({"ok": False, "error": why}).encode() + b"\n")
                except OSError:
                    pass
                c.sock.close()
                continue
            c.sock.setblocking(False)
            self.conns[c.fd] = c
            m.events.add_source(c.fd, lambda m, c=c: self._on_readable(c))
            # A request sent before O_ASYNC was set raised no SIGIO: read it now.
            stop = self._on_readable(c)
            if stop is not None:
                return stop

    def _on_readable(self, c):
        if c.closed:
            return None
        self._flush_all()
        while not c.eof:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(c)
                return None
            if not data:
                c.eof = True
                break
            c.inbuf += data
        stop = None
        while not c.closed and stop is None:
            i = c.inbuf.find(b"\n")
            if i < 0:
                if len(c.inbuf) > MAX_LINE:
                    self._send(c, {"ok": False, "error": "request line too long"})
                    self._drop(c)
                break
            line = bytes(c.inbuf[:i])
            del c.inbuf[:i + 1]
            if line.strip():
                stop = self._request(c, line)
        if c.eof and not c.closed:
            self._drop(c)
        return stop

    def _send(self, c, reply) -> None:
        if c.closed:
            return
        c.outbuf += (json.dumps(reply) + "\n").encode()
        self._flush(c)

    def _flush(self, c) -> None:
        while c.outbuf and not c.closed:
            try:
                n = c.sock.send(c.outbuf)
            except (BlockingIOError, InterruptedError):
                if len(c.outbuf) > MAX_OUT:
                    self._drop(c)
                return
            except OSError:
                self._drop(c)
                return
            del c.outbuf[:n]

    def _flush_all(self) -> None:
        for c in list(self.conns.values()):
            if c.outbuf:
                self._flush(c)

    def _drop(self, c) -> None:
        if c.closed:
            return
        if c.outbuf:
            try:
                c.sock.send(c.outbuf)
            except OSError:
                pass
        c.closed = True
        self.m.events.remove_source(c.fd)
        self.conns.pop(c.fd, None)
        c.sock.close()

    # --- requests ------------------------------------------------------------------------------
    def _request(self, c, line):
        """Answer one request line; returns a Stop when the guest must end."""
        try:
            req = json.loads(line)
        except ValueError as e:
            self._send(c, {"ok": False, "error": f"bad request (not JSON: {e})"})
            return None
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            self._send(c, {"ok": False, "error": 'bad request (want {"cmd": "..."})'})
            return None
        fn = COMMANDS.get(req["cmd"])
        if fn is None:
            reply, after = {"ok": False, "error": f"unknown command '{req['cmd']}' (known: "
                            + ", ".join(sorted(COMMANDS)) + ")"}, None
        else:
            try:
                reply, after = fn(self, req)
            except Exception as e:      # an error here must not end the guest
                from ...errors import UkdbgError
                msg = str(e) if isinstance(e, UkdbgError) else \
                    f"internal error: {type(e).__name__}: {e}"
                reply, after = {"ok": False, "error": msg}, None
        if "id" in req:
            reply["id"] = req["id"]
        self._send(c, reply)
        return after() if after is not None else None

    def state(self) -> str:
        """running | sleeping (in POLL) | paused | gdb-stopped | crashed | ended."""
        m = self.m
        final = getattr(m, "final_stop", None)
        if final is not None:              # ending hooks run (e.g. held for gdb)
            from ...target import Crashed
            return "crashed" if isinstance(final, Crashed) else "ended"
        if self.paused:
            return "paused"
        if self._gdb_holds():
            return "gdb-stopped"
        if self.sleeping:
            return "sleeping"
        return "running"

    def _gdb_session(self):
        return getattr(getattr(self.m, "gdb", None), "session", None)

    def _gdb_holds(self) -> bool:
        """A gdb session has the guest stopped (not under `continue`)."""
        sess = self._gdb_session()
        return sess is not None and not getattr(sess, "running", False)

    def status(self) -> dict:
        from ...kvm.uapi import EXIT_NAMES
        m = self.m
        hc = m.stats.hypercalls
        exits = {"io": sum(hc)}
        for reason, n in sorted(m.stats.exits.items()):
            exits[EXIT_NAMES.get(reason, str(reason)).lower()] = n
        devices = []
        for d in m.devices:
            h = d.host
            e = {"name": d.name, "index": d.index,
                 "type": {abi.MFT_DEV_BLOCK_BASIC: "block",
                          abi.MFT_DEV_NET_BASIC: "net"}.get(d.type, d.type_name),
                 "attached": d.attached,
                 "backend": getattr(h, "path", None) or getattr(h, "iface", None),
                 "bytes_read": getattr(h, "bytes_read", 0),
                 "bytes_written": getattr(h, "bytes_written", 0)}
            if d.type == abi.MFT_DEV_BLOCK_BASIC:
                e["capacity"] = d.capacity
                e["block_size"] = d.block_size
            elif d.type == abi.MFT_DEV_NET_BASIC:
                e["mac"] = ":".join(f"{b:02x}" for b in d.mac)
                e["mtu"] = d.mtu
            devices.append(e)
        up = time.monotonic() - m.started if m.started else 0.0
        if self.started_wall is None and m.started:
            self.started_wall = round(time.time() - up, 6)
        return {
            "ok": True, "protocol": PROTOCOL, "pid": os.getpid(),
            "app": os.path.abspath(m.image.path), "argv": list(m.argv),
            "cmdline": m.cmdline.decode("utf-8", "replace"),
            "state": self.state(), "uptime": round(up, 6),
            "started": self.started_wall,
            "paused_seconds": round(self.paused_total, 6),
            "memory": {"size": m.mem_size, "resident": m.mem.resident_bytes()},
            "devices": devices,
            "exits": exits,
            "hypercalls": {abi.HC_NAMES[i]: n for i, n in enumerate(hc)
                           if i in abi.HC_NAMES},
            "console_bytes": m.console.total,
            "gdb": gdb_address(m),
            "gdb_attached": self._gdb_session() is not None,
            "cores": list(self.cores),
        }

    # --- pause -----------------------------------------------------------------------------------
    def _pause(self):
        """Hold the vCPU thread here, serving events, until `resume` (or a Stop)."""
        m = self.m
        self.paused = True
        t0 = time.monotonic()
        _log(m, "pause", source="control")
        for obs in m.write_observers:       # --record notes where (docs/replay.md)
            obs(m, "pause", None)
        stop = None
        try:
            while self.paused:
                # Requests already read (pipelined after `pause`) raise no new SIGIO.
                for c in list(self.conns.values()):
                    if stop is None and b"\n" in c.inbuf:
                        stop = self._on_readable(c)
                if stop is not None or not self.paused:
                    break
                _ready, stop = m.events.wait((), None)
                if stop is not None:
                    break
        finally:
            self.paused = False
            self.paused_total += time.monotonic() - t0
        if stop is None:
            _log(m, "resume", source="control", paused=round(time.monotonic() - t0, 6))
            for obs in m.write_observers:
                obs(m, "resume", None)
        return stop

    # --- the end ------------------------------------------------------------------------------------
    def end(self, m, stop) -> None:
        from ...target import Killed
        self.close()
        if isinstance(stop, Killed) and stop.reason == "control" and not m.reported:
            import sys
            sys.stderr.write(f"ukdbg: {os.path.basename(m.image.path)}: stopped by a "
                             "control request (ukdbg stop), guest ended\n")
            m.reported = True

    def close(self) -> None:
        for c in list(self.conns.values()):
            self._drop(c)
        if self.path is None:
            return
        self.m.events.remove_source(self.sock.fileno())
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.path = None


def optional_module(m, name):
    """The feature module the composition root (ukdbg/run.py) named for `name` in
    m.features, or None while it does not exist. By name: the tender never imports
    the debugger."""
    import sys
    full = getattr(m, "features", {}).get(name)
    if full is None:
        return None
    try:
        __import__(full)
    except ModuleNotFoundError as e:
        if e.name == full:
            return None
        raise
    return sys.modules[full]


def gdb_address(m):
    """Where the gdb stub listens, if it does."""
    return getattr(m, "gdb_address", None)


# --- commands: (reply, after) where after() runs once the reply is sent ---------------------
def _status(ctl, req):
    return ctl.status(), None


def _pause(ctl, req):
    if ctl.paused:
        return {"ok": True, "state": "paused", "already": True}, None
    if ctl.state() != "running" and ctl.state() != "sleeping":
        return {"ok": False, "error": f"cannot pause: the guest is {ctl.state()}"}, None
    return {"ok": True, "state": "paused"}, ctl._pause


def _resume(ctl, req):
    if not ctl.paused:
        return {"ok": False, "error": f"not paused (the guest is {ctl.state()})"}, None
    ctl.paused = False
    return {"ok": True, "state": "running"}, None


def _core(ctl, req):
    path = req.get("path")
    if path is not None and not (isinstance(path, str) and path.startswith("/")):
        return {"ok": False, "error": "core: path must be an absolute path"}, None
    dumpcore = optional_module(ctl.m, "dumpcore")
    if dumpcore is None:
        return {"ok": False, "error": "live cores are not available in this ukdbg "
                "(ukdbg.tender.modules.dumpcore is missing)"}, None
    p = os.path.abspath(dumpcore.dump(ctl.m, None, path))
    ctl.cores.append(p)
    _log(ctl.m, "core", path=p, reason="control", live=True)
    return {"ok": True, "path": p}, None


def _gdb(ctl, req):
    m = ctl.m
    addr = gdb_address(m)
    if addr:
        return {"ok": True, "address": addr, "started": False}, None
    want = req.get("address") or "127.0.0.1:0"
    if not isinstance(want, str):
        return {"ok": False, "error": "gdb: address must be a string"}, None
    gdb = optional_module(m, "gdb")
    if gdb is None:
        return {"ok": False, "error": "the gdb stub is not available in this ukdbg "
                "(ukdbg.debugger.gdb is missing)"}, None
    try:
        addr = gdb.start_server(m, want)
    except OSError as e:
        return {"ok": False, "error": f"gdb: cannot listen on {want}: {e.strerror or e}"}, None
    if not getattr(m, "gdb_address", None):
        m.gdb_address = addr
    _log(m, "gdb-listen", address=addr, source="control")
    return {"ok": True, "address": addr, "started": True}, None


def _stop(ctl, req):
    from ...target import SIGTERM, Killed
    ctl.paused = False
    return {"ok": True, "state": "stopping"}, lambda: Killed(SIGTERM, "control")


COMMANDS = {"status": _status, "pause": _pause, "resume": _resume, "core": _core,
            "gdb": _gdb, "stop": _stop}
