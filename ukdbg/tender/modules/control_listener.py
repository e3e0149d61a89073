"""ukdbg/tender/modules/control_listener.py: the control socket.

A listening unix socket, <runtime dir>/<pid>.sock (mode 0600), is an events async
source: a request interrupts KVM_RUN (SIGIO) and is answered on the vCPU thread between
two exits, so a busy guest still answers and nothing needs a lock. Connections are
non-blocking. Opened by control.py while the guest runs, so opening must stay cheap
(issue 12: 1 ms or less): no module but ukdbg/native.py here (socket, bind and listen
through _ctypes, loaded anyway by the sandbox), and only the opening; serving
connections (control_conns.py) is imported with the first client, the protocol
(control_server, with json) when the first request line arrives.

What a client can send is bounded here, before any decoding: a line of MAX_LINE bytes,
MAX_CONNS connections (a new one evicts the least recently active), MAX_OUT bytes of
unread replies. Other uids are refused (SO_PEERCRED).

Where sockets live (docs/control.md) is defined here too, for the same reason (one
module to import when the socket opens); ukdbg/control/paths.py re-exports it for the
clients.
"""

import os
import sys

from ... import native
from ...files import read_to_end

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
        # os.read, not open(): no io objects on the way to a 1 ms opening
        fd = os.open("/proc/self/uid_map", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = read_to_end(fd)
        finally:
            os.close(fd)
        lines = data.split(b"\n")
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


def _conns():
    from . import control_conns
    return control_conns


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
        try:
            os.unlink(path)            # left by a dead monitor that had our pid
        except FileNotFoundError:
            pass
        old = os.umask(0o177)          # born 0600: no window with wider permissions
        try:
            fd = native.unix_listener(path, 64)
        finally:
            os.umask(old)
        try:
            m.events.add_source(fd, self.on_listen)
        except OSError:
            os.unlink(path)
            os.close(fd)
            raise
        self.fd = fd
        self.sock = None             # a _socket.socket of fd, made with the first client
        self.path = path
        # `ukdbg run` ends through os._exit after the ending hooks (which remove the
        # socket); atexit covers the runs that end in an exception instead.
        import atexit
        atexit.register(self.close)

    # --- connections (control_conns.py, imported with the first client) ------------------
    def on_listen(self, m):
        return _conns().on_listen(self, m)

    def _on_readable(self, c):
        return _conns().on_readable(self, c)

    def send_bytes(self, c, data: bytes) -> None:
        _conns().send_bytes(self, c, data)

    def flush(self, c) -> None:
        _conns().flush(self, c)

    def _drop(self, c) -> None:
        _conns().drop(self, c)

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
        self.m.events.remove_source(self.fd)
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.path = None
