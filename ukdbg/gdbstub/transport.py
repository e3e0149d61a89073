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


class Listener:
    """A listening socket; `address` is what a client connects to."""

    def __init__(self, address: str):
        kind, where = parse_address(address)
        self.kind = kind
        self.path = None
        try:
            if kind == "unix":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                if os.path.exists(where) and _is_stale_socket(where):
                    os.unlink(where)
                s.bind(where)
                os.chmod(where, 0o600)
                self.path = where
                self.address = f"unix:{where}"
            else:
                host, port = where
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                h, p = s.getsockname()[:2]
                self.address = f"[{h}]:{p}" if fam == socket.AF_INET6 else f"{h}:{p}"
            s.listen(2)
        except OSError as e:
            raise TransportError(f"cannot listen for gdb on {address}: {e.strerror}") \
                from None
        s.set_inheritable(False)
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self):
        """A connected socket (TCP_NODELAY, blocking off) or None."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return None
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        return conn

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if self.path:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
                self.path = None


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
                data = self.sock.recv(1 << 18)
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

