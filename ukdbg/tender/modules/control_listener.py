"""ukdbg/tender/modules/control_listener.py: the control socket and its connections.

A listening unix socket, <runtime dir>/<pid>.sock (mode 0600), is an events async
source: a request interrupts KVM_RUN (SIGIO) and is answered on the vCPU thread between
two exits, so a busy guest still answers and nothing needs a lock. Connections are
non-blocking. Opened by control.py while the guest runs, so opening must stay cheap
(issue 12: 1 ms or less): only C-level modules here; the protocol (control_server, with
json) is imported when the first request line arrives.

What a client can send is bounded here, before any decoding: a line of MAX_LINE bytes,
MAX_CONNS connections (a new one evicts the least recently active), MAX_OUT bytes of
unread replies. Other uids are refused (SO_PEERCRED).

Where sockets live (docs/control.md) is defined here too, for the same reason (one
module to import when the socket opens); ukdbg/control/paths.py re-exports it for the
clients.
"""

import _socket
import os
import sys

MAX_LINE = 64 * 1024        # a longer request line ends the connection
MAX_OUT = 1 << 20           # replies a client does not read, before it is dropped
MAX_CONNS = 32
_CHUNK = 65536


# --- where control sockets live ---------------------------------------------------------------
SUFFIX = ".sock"


def _owned_dir(path: str, uid: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_uid == uid and (st.st_mode & 0o170000) == 0o040000


def runtime_dir(uid=None) -> str:
    """The directory of this user's control sockets (it may not exist yet)."""
    uid = os.getuid() if uid is None else uid
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/") and _owned_dir(xdg, uid):
        return os.path.join(xdg, "ukdbg")
    run = f"/run/user/{uid}"
    if _owned_dir(run, uid):
        return os.path.join(run, "ukdbg")
    return f"/tmp/ukdbg-{uid}"


def check_private(path: str, uid=None) -> None:
    """Raise OSError unless path is a directory (not a symlink) owned by uid
    and closed to everybody else."""
    uid = os.getuid() if uid is None else uid
    st = os.lstat(path)
    if (st.st_mode & 0o170000) != 0o040000:
        raise OSError(f"{path} is not a directory")
    if st.st_uid != uid:
        raise OSError(f"{path} belongs to uid {st.st_uid}, not {uid}")
    if st.st_mode & 0o077:
        raise OSError(f"{path} has mode {st.st_mode & 0o777:04o}, not 0700")


def ensure_runtime_dir() -> str:
    """Create (mode 0700) and check the runtime directory; returns it."""
    d = runtime_dir()
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    check_private(d)
    return d


def uid_unmapped(uid: int) -> bool:
    """True in a user namespace whose uid_map does not map uid (`unshare -U` with no
    map): the kernel then shows this process and every peer whose uid is not mapped
    either as the same overflow uid, so SO_PEERCRED cannot tell the owner from others."""
    try:
        with open("/proc/self/uid_map", "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:
        return False
    for ln in lines:
        parts = ln.split()
        if len(parts) == 3 and int(parts[0]) <= uid < int(parts[0]) + int(parts[2]):
            return False
    return True


def socket_path(pid: int, directory=None) -> str:
    return os.path.join(directory or runtime_dir(), f"{pid}{SUFFIX}")


# --- the listener ---------------------------------------------------------------------------------
def _error_line(msg: str) -> bytes:
    """A reply {"ok": false, "error": msg}, as json.dumps writes it, for the replies
    sent before the protocol is loaded (msg: ASCII with no quote or backslash)."""
    return b'{"ok": false, "error": "' + msg.encode() + b'"}\n'


def open_control(m):
    """Open the socket and serve it (on the vCPU thread); m.control is the result."""
    try:
        ctl = Control(m)
    except OSError as e:
        # A convenience, not a reason to stop the guest.
        sys.stderr.write(f"ukdbg: control socket disabled: {e}\n")
        return None
    m.control = ctl
    from .. import abi
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
    __slots__ = ("sock", "fd", "inbuf", "outbuf", "eof", "closed", "active")

    def __init__(self, sock, active):
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.eof = False
        self.closed = False
        self.active = active          # when it last sent something (a sequence number)


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
        self.proto = None            # control_server, once a request came
        self.refused = set()         # uids refused so far
        self._seq = 0
        if uid_unmapped(self.uid):
            raise OSError(f"uid {self.uid} is not mapped in this user namespace, so the "
                          "monitor could not tell its owner from other users")
        d = ensure_runtime_dir()
        path = socket_path(os.getpid(), d)
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
            try:
                s.listen(64)
                s.setblocking(False)
                m.events.add_source(s.fileno(), self.on_listen)
            except OSError:
                os.unlink(path)
                raise
        except OSError:
            s.close()
            raise
        self.sock = s
        self.path = path
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
            except OSError:             # EAGAIN: all taken; others: try again next time
                return None
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
            try:
                cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
            except OSError:
                sock.close()
                continue
            uid = int.from_bytes(cred[4:8], sys.byteorder)      # struct ucred: pid, uid, gid
            if uid != self.uid:
                self._refuse(sock, f"permission denied: uid {uid} may not control "
                             "this unikernel")
                self._refused(m, uid)
                continue
            if len(self.conns) >= MAX_CONNS:
                # The newest client is served: one that connected and went silent (or a
                # flood of them) must not lock `ukdbg status` out.
                old = min(self.conns.values(), key=lambda c: c.active)
                self.send_bytes(old, _error_line(
                    f"dropped: too many control connections (at most {MAX_CONNS})"))
                self._drop(old)         # sends what it can of its output first
            self._seq += 1
            c = Conn(sock, self._seq)
            try:
                sock.setblocking(False)
                m.events.add_source(c.fd, lambda m, c=c: self._on_readable(c))
            except OSError:
                m.events.remove_source(c.fd)
                sock.close()
                continue
            self.conns[c.fd] = c
            # A request sent before O_ASYNC was set raised no SIGIO: read it now.
            stop = self._on_readable(c)
            if stop is not None:
                return stop

    def _refused(self, m, uid: int) -> None:
        """Say so on stderr, once per uid (a flood must not flood the output), and in
        the --log file every time."""
        if uid not in self.refused:
            self.refused.add(uid)
            sys.stderr.write(f"ukdbg: control socket: refused a connection from uid {uid} "
                             f"(only uid {self.uid} may control this unikernel)\n")
        if getattr(m, "log", None) is not None:
            from .log import log_event
            log_event(m, "control-refused", uid=uid)

    def _refuse(self, sock, why: str) -> None:
        try:
            sock.setblocking(False)
            sock.send(_error_line(why))
        except OSError:
            pass
        sock.close()

    def _on_readable(self, c):
        """Read what c sent, answer each complete line; returns a Stop or None.

        Reads and answers alternate, so the input held stays under MAX_LINE plus one
        chunk whatever the client sends."""
        if c.closed:
            return None
        self._flush_all()
        stop = None
        while stop is None and not c.closed:
            stop = self._lines(c)
            if stop is not None or c.closed or c.eof:
                break
            try:
                data = c.sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(c)
                return None
            if not data:
                c.eof = True
            else:
                self._seq += 1
                c.active = self._seq
                c.inbuf += data
        if stop is None and not c.closed:
            stop = self._lines(c)
        if c.eof and not c.closed and stop is None:
            self._drop(c)
        return stop

    def _lines(self, c):
        """Answer the complete lines in c.inbuf (a Stop ends it early). The replies go
        out together at the end (one send for a pipelined batch)."""
        stop = None
        while not c.closed and stop is None:
            if len(c.outbuf) >= _CHUNK:
                self.flush(c)
            i = c.inbuf.find(b"\n")
            if i < 0:
                if len(c.inbuf) > MAX_LINE:
                    self.send_bytes(c, _error_line(
                        f"request line too long (more than {MAX_LINE} bytes)"))
                    self._drop(c)
                break
            if i > MAX_LINE:
                self.send_bytes(c, _error_line(
                    f"request line too long (more than {MAX_LINE} bytes)"))
                self._drop(c)
                break
            line = bytes(c.inbuf[:i])
            del c.inbuf[:i + 1]
            if line.strip():
                stop = self._request(c, line)
        self.flush(c)
        return stop

    def _request(self, c, line):
        if self.proto is None:
            from . import control_server
            self.proto = control_server
        return self.proto.request(self, c, line)

    def send_bytes(self, c, data: bytes) -> None:
        """Queue a reply; it goes out with the next flush (the end of the batch)."""
        if not c.closed:
            c.outbuf += data

    def flush(self, c) -> None:
        """Send what the client takes; drop it past MAX_OUT unread bytes."""
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
                self.flush(c)

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

    # --- the end ------------------------------------------------------------------------------------
    def end(self, m, stop) -> None:
        from ...target import Killed
        self.close()
        if isinstance(stop, Killed) and stop.reason == "control" and not m.reported:
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
