"""ukdbg/gdbstub/transport.py: listeners (TCP `[HOST:]PORT`, `unix:PATH`) and the byte
channel a session reads and writes (a plain blocking one for targets that never run;
the live VM's channel, which waits through the monitor's event loop, is in
debugger/gdb.py)."""

import os
import select
import socket

from ..errors import UkdbgError


class TransportError(UkdbgError):
    pass


def parse_address(address: str):
    """'unix:PATH' -> ('unix', PATH); '[HOST:]PORT' -> ('tcp', (HOST, PORT));
    the default host is 127.0.0.1 (binding another address must be explicit)."""
    if any(c < " " or c == "\x7f" for c in address):
        raise TransportError(f"gdb address {address!r}: control characters or NUL")
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise TransportError(f"gdb address '{address}': empty unix socket path")
        return "unix", path
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or int(port) > 65535:
        raise TransportError(f"gdb address '{address}': expected [HOST:]PORT or unix:PATH")
    return "tcp", (host or "127.0.0.1", int(port))


def is_loopback(host: str) -> bool:
    if host.startswith("::ffff:"):
        host = host[7:]
    return host.startswith("127.") or host == "::1"


class Peer:
    """Who is at the other end of an accepted connection. owner: its uid is the
    monitor's (checked: SO_PEERCRED, or /proc/net/tcp for TCP); a remote peer (only
    with allow_remote) is never the owner."""
    __slots__ = ("uid", "owner", "where", "refused")

    def __init__(self, uid, owner, where):
        self.uid = uid
        self.owner = owner
        self.where = where
        self.refused = None           # why this peer may not use the stub

    def __repr__(self):
        return f"Peer(uid={self.uid}, owner={self.owner}, {self.where})"


class Listener:
    """A listening socket; `address` is what a client connects to. accept() hands out
    only connections from the monitor's own uid, or remote ones when allow_remote
    (the caller warned about it); others are refused through refused(message)."""

    def __init__(self, address: str, allow_remote: bool = False, refused=None,
                 owner_uid=None):
        kind, where = parse_address(address)
        self.kind = kind
        self.path = None
        self.remote = False
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.refused = refused or _say
        s = None
        try:
            if kind == "unix":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                if os.path.exists(where) and _is_stale_socket(where):
                    os.unlink(where)
                old = os.umask(0o177)          # created 0600: no window at another mode
                try:
                    s.bind(where)
                finally:
                    os.umask(old)
                self.path = where
                os.chmod(where, 0o600)
                self.address = f"unix:{where}"
            else:
                host, port = where
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                h, p = s.getsockname()[:2]
                self.address = f"[{h}]:{p}" if fam == socket.AF_INET6 else f"{h}:{p}"
                self.remote = not is_loopback(h)
                if self.remote and not allow_remote:
                    raise TransportError(
                        f"gdb: {address} is not a loopback address: whoever reaches it "
                        "could read and write guest memory (use 127.0.0.1, a unix:PATH, "
                        "or --gdb-allow-remote to listen there anyway)")
            s.listen(8)
        except OSError as e:
            self._abandon(s)
            raise TransportError(f"cannot listen for gdb on {address}: {e.strerror or e}") \
                from None
        except BaseException:
            self._abandon(s)
            raise
        s.set_inheritable(False)
        self.sock = s

    def _abandon(self, s):
        """Close s and remove our socket file: no path, error or not, leaves one behind."""
        try:
            if s is not None:
                s.close()
        finally:
            if self.path:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
                self.path = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self):
        """(connected socket (TCP_NODELAY, blocking off), Peer), or None. A peer that
        may not use the stub has `refused` set (and was reported through refused()):
        the caller answers its first packet with refusal(peer) and closes."""
        try:
            conn, addr = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return None
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        peer, why = self.check_peer(conn)
        if peer is None:
            peer = Peer(None, False, why)
            peer.refused = why
            self.refused(f"gdb: refused a connection from {why}")
        return conn, peer

    def check_peer(self, conn):
        """(Peer, None) for a peer this stub serves, else (None, why)."""
        me = self.owner_uid
        if conn.family == socket.AF_UNIX:
            uid = unix_peer_uid(conn)
            if uid == me:
                return Peer(uid, True, "unix socket"), None
            return None, (f"uid {uid} on {self.address}: only uid {me}, the monitor's "
                          "owner, may use this stub")
        try:
            peer = conn.getpeername()[:2]
            local = conn.getsockname()[:2]
        except OSError:
            return None, "a client that went away"
        where = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        uid = tcp_peer_uid(peer, local)
        if uid is None:
            if self.remote and not is_loopback(peer[0]):
                return Peer(None, False, where), None      # remote, as allowed
            return None, (f"{where}: its socket is not in /proc/net/tcp (closed "
                          "already?), so its uid cannot be checked")
        if me == _overflow_uid():
            return None, (f"{where}: this monitor runs as the overflow uid {me} (in a "
                          "user namespace?), which any unmapped uid also shows as; use "
                          "a unix:PATH stub")
        if uid != me:
            return None, (f"{where} (uid {uid}): only uid {me}, the monitor's owner, may "
                          "use this stub")
        return Peer(uid, True, where), None

    def close(self) -> None:
        self._abandon(self.sock)


def _say(msg: str) -> None:
    import sys
    sys.stderr.write(f"ukdbg: {msg}\n")
    sys.stderr.flush()


def unix_peer_uid(conn) -> int:
    """SO_PEERCRED's uid."""
    import struct
    cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", cred)[1]


def _overflow_uid() -> int:
    try:
        with open("/proc/sys/kernel/overflowuid") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65534


def _proc_addr(ip: str, port: int) -> str:
    """An address as /proc/net/tcp6 shows it (IPv4 as v4-mapped IPv6): four 32-bit
    words in host (little-endian) order, then the port, all in upper-case hex."""
    if ":" in ip:
        raw = socket.inet_pton(socket.AF_INET6, ip)
    else:
        raw = b"\0" * 10 + b"\xff\xff" + socket.inet_aton(ip)
    words = "".join("%08X" % int.from_bytes(raw[i:i + 4], "little") for i in range(0, 16, 4))
    return f"{words}:{port:04X}"


def _v4_as_v6(field: str) -> str:
    """A /proc/net/tcp address (8 hex digits) in /proc/net/tcp6's form."""
    ip, port = field.split(":")
    return f"0000000000000000FFFF0000{ip}:{port}"


def tcp_peer_uid(peer, local, proc="/proc/net"):
    """The uid owning the client's end of a TCP connection from this host, or None:
    the client's socket is the row of /proc/net/tcp (or tcp6) whose local address is
    our peer and whose remote address is us; the uid column is its owner (from the
    socket's inode, as seen from this process's user namespace)."""
    want = (_proc_addr(*peer), _proc_addr(*local))
    for name, v4 in (("tcp", True), ("tcp6", False)):
        try:
            with open(os.path.join(proc, name)) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) < 10:
                        continue
                    lo, rem = cols[1], cols[2]
                    if v4:
                        lo, rem = _v4_as_v6(lo), _v4_as_v6(rem)
                    if (lo, rem) == want and cols[9] != "0":
                        return int(cols[7])
        except (OSError, ValueError):
            continue
    return None


def _is_stale_socket(path: str) -> bool:
    """A unix socket nobody listens on any more (safe to replace)."""
    import stat
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return False
    except OSError:
        return True
    finally:
        s.close()


# What a second client gets (debugger/gdb.py): gdb shows "Remote failure reply: ...".
REFUSAL = b"$E.another debugger is already attached to this unikernel#"


def refusal(peer) -> bytes:
    """The reply body for a refused peer's first packet."""
    return b"E.ukdbg refused this connection: " + peer.refused.encode(errors="replace")


def refuse_now(conn, body: bytes, wait: float = 2.0) -> None:
    """Answer a refused client's first packet with body and close (blocking, for
    `ukdbg core --gdb`; the monitor does it asynchronously). Replying before the
    client's packet, or closing on it unread, could reset the connection before
    the client reads the reason."""
    from .packets import frame
    try:
        if select.select([conn], [], [], wait)[0]:
            conn.recv(4096)
        send_all(conn, b"+" + frame(body), stall=wait)
        conn.shutdown(socket.SHUT_WR)
        if select.select([conn], [], [], wait)[0]:
            conn.recv(4096)
    except (OSError, ConnectionError):
        pass
    conn.close()


# The most one recv() asks for. Python allocates the whole size, then shrinks it to
# what came: 256 KiB cost 2 us more per packet than 64 KiB here, and 20 us more (an
# mmap and a munmap) until glibc has raised its mmap threshold past that size.
RECV_CHUNK = 1 << 16


class SocketChannel:
    """Blocking byte channel over a connected socket (for targets that never run)."""

    running = False
    ctrl_c = False

    def __init__(self, sock):
        self.sock = sock
        self.eof = False
        sock.setblocking(False)

    def read(self) -> bytes:
        """At least one byte, or b'' at end of file."""
        while True:
            try:
                data = self.sock.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                select.select([self.sock], [], [])
                continue
            except OSError:
                data = b""
            if not data:
                self.eof = True
            return data

    def write(self, data) -> None:
        send_all(self.sock, data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# A client that takes no output for this long is dropped (see also modules/gdb.py).
STALL = 5.0


def send_all(sock, data, stall: float = STALL) -> None:
    """sendall for a non-blocking socket; raises ConnectionError when the peer is gone
    or has taken nothing for `stall` seconds."""
    import time
    view = memoryview(data)
    deadline = None
    while view:
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            now = time.monotonic()
            if deadline is None:
                deadline = now + stall
            elif now >= deadline:
                raise ConnectionError(f"the client read nothing for {stall:g} s") \
                    from None
            select.select([], [sock], [], deadline - now)
            continue
        except OSError as e:
            raise ConnectionError(str(e)) from None
        view = view[n:]
        deadline = None

