"""ukdbg/tender/modules/control_conns.py: the control socket's connections.

The half of the listener (control_listener.py) that serves clients: accepting them
(other uids refused), reading request lines, queueing and flushing replies, and the
bounds on all of it (MAX_LINE, MAX_CONNS, MAX_OUT). Imported with the first client,
not when the socket opens (issue 12: opening costs 1 ms or less); the protocol itself
(control_server, with json) waits for the first request line.
"""

import _socket
import sys

from .control_listener import _CHUNK, MAX_CONNS, MAX_LINE, MAX_OUT, _error_line


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


def on_listen(ctl, m):
    flush_all(ctl)
    if ctl.sock is None:        # the listener opened without _socket (native.py)
        ctl.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, ctl.fd)
    while True:
        try:
            fd, _ = ctl.sock._accept()
        except OSError:             # EAGAIN: all taken; others: try again next time
            return None
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
        try:
            cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        except OSError:
            sock.close()
            continue
        uid = int.from_bytes(cred[4:8], sys.byteorder)      # struct ucred: pid, uid, gid
        if uid != ctl.uid:
            refuse(sock, f"permission denied: uid {uid} may not control this unikernel")
            refused(ctl, m, uid)
            continue
        if len(ctl.conns) >= MAX_CONNS:
            # The newest client is served: one that connected and went silent (or a
            # flood of them) must not lock `ukdbg status` out.
            old = min(ctl.conns.values(), key=lambda c: c.active)
            send_bytes(ctl, old, _error_line(
                f"dropped: too many control connections (at most {MAX_CONNS})"))
            drop(ctl, old)         # sends what it can of its output first
        ctl._seq += 1
        c = Conn(sock, ctl._seq)
        try:
            sock.setblocking(False)
            m.events.add_source(c.fd, lambda m, c=c: on_readable(ctl, c))
        except OSError:
            m.events.remove_source(c.fd)
            sock.close()
            continue
        ctl.conns[c.fd] = c
        # A request sent before O_ASYNC was set raised no SIGIO: read it now.
        stop = on_readable(ctl, c)
        if stop is not None:
            return stop


def refused(ctl, m, uid: int) -> None:
    """Say so on stderr, once per uid (a flood must not flood the output), and in
    the --log file every time."""
    if uid not in ctl.refused:
        ctl.refused.add(uid)
        sys.stderr.write(f"ukdbg: control socket: refused a connection from uid {uid} "
                         f"(only uid {ctl.uid} may control this unikernel)\n")
    if getattr(m, "log", None) is not None:
        from .log import log_event
        log_event(m, "control-refused", uid=uid)


def refuse(sock, why: str) -> None:
    try:
        sock.setblocking(False)
        sock.send(_error_line(why))
    except OSError:
        pass
    sock.close()


def on_readable(ctl, c):
    """Read what c sent, answer each complete line; returns a Stop or None.

    Reads and answers alternate, so the input held stays under MAX_LINE plus one
    chunk whatever the client sends."""
    if c.closed:
        return None
    flush_all(ctl)
    stop = None
    while stop is None and not c.closed:
        stop = lines(ctl, c)
        if stop is not None or c.closed or c.eof:
            break
        try:
            data = c.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            drop(ctl, c)
            return None
        if not data:
            c.eof = True
        else:
            ctl._seq += 1
            c.active = ctl._seq
            c.inbuf += data
    if stop is None and not c.closed:
        stop = lines(ctl, c)
    if c.eof and not c.closed and stop is None:
        drop(ctl, c)
    return stop


def lines(ctl, c):
    """Answer the complete lines in c.inbuf (a Stop ends it early). The replies go
    out together at the end (one send for a pipelined batch)."""
    stop = None
    while not c.closed and stop is None:
        if len(c.outbuf) >= _CHUNK:
            flush(ctl, c)
        i = c.inbuf.find(b"\n")
        if i < 0:
            if len(c.inbuf) > MAX_LINE:
                send_bytes(ctl, c, _error_line(
                    f"request line too long (more than {MAX_LINE} bytes)"))
                drop(ctl, c)
            break
        if i > MAX_LINE:
            send_bytes(ctl, c, _error_line(
                f"request line too long (more than {MAX_LINE} bytes)"))
            drop(ctl, c)
            break
        line = bytes(c.inbuf[:i])
        del c.inbuf[:i + 1]
        if line.strip():
            stop = request(ctl, c, line)
    flush(ctl, c)
    return stop


def request(ctl, c, line):
    if ctl.proto is None:
        from . import control_server
        ctl.proto = control_server
    return ctl.proto.request(ctl, c, line)


def send_bytes(ctl, c, data: bytes) -> None:
    """Queue a reply; it goes out with the next flush (the end of the batch)."""
    if not c.closed:
        c.outbuf += data


def flush(ctl, c) -> None:
    """Send what the client takes; drop it past MAX_OUT unread bytes."""
    while c.outbuf and not c.closed:
        try:
            n = c.sock.send(c.outbuf)
        except (BlockingIOError, InterruptedError):
            if len(c.outbuf) > MAX_OUT:
                drop(ctl, c)
            return
        except OSError:
            drop(ctl, c)
            return
        del c.outbuf[:n]


def flush_all(ctl) -> None:
    for c in list(ctl.conns.values()):
        if c.outbuf:
            flush(ctl, c)


def drop(ctl, c) -> None:
    if c.closed:
        return
    if c.outbuf:
        try:
            c.sock.send(c.outbuf)
        except OSError:
            pass
    c.closed = True
    ctl.m.events.remove_source(c.fd)
    ctl.conns.pop(c.fd, None)
    c.sock.close()
