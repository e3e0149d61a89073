"""ukdbg/native.py: the few C calls `ukdbg run` makes through the C-level _ctypes.

_ctypes (0.35 ms to load here) is loaded by every run anyway: the sandbox's prctl and
seccomp exist nowhere else. So the run path uses it instead of loading more shared
objects for one call each: `_socket` (0.36 ms) for the control socket's socket, bind
and listen, `select` (0.16 ms) for events.wait's poll (bench/boot.py). ctypes.py itself
(~1.7 ms) is not imported. A poll through _ctypes costs ~1.1 us against select.poll's
0.4: the hot zero-timeout POLL of a guest with a network device keeps select.poll
(tender/modules/core.py); waits that sleep use this one.
"""

import _ctypes
import _struct
import os

SYS_POLL, SYS_SOCKET, SYS_BIND, SYS_LISTEN, SYS_PRCTL, SYS_SECCOMP = 7, 41, 49, 50, 157, 317
AF_UNIX, SOCK_STREAM = 1, 1
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000
POLLIN = 1
_POLLFD = _struct.Struct("iHH")     # struct pollfd: fd, events, revents


class _long(_ctypes._SimpleCData):
    _type_ = "l"


class _char(_ctypes._SimpleCData):
    _type_ = "c"


class _Syscall(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _long
    _argtypes_ = (_long,) * 7


_syscall = _Syscall(_ctypes.dlsym(_ctypes.dlopen(None, 0), "syscall"))


def syscall(nr: int, a=0, b=0, c=0, d=0, e=0, f=0) -> int:
    """syscall(2): the result, or OSError with the call's errno."""
    r = _syscall(nr, a, b, c, d, e, f)
    if r == -1:
        err = _ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return r


class Buffer:
    """Bytes at a fixed address for the kernel to read or write (kept alive by self)."""

    def __init__(self, data):
        cls = type("buf", (_ctypes.Array,), {"_type_": _char, "_length_": max(len(data), 1)})
        self.obj = cls.from_buffer_copy(bytes(data) or b"\0")
        self.address = _ctypes.addressof(self.obj)
        self.view = memoryview(self.obj).cast("B")


class _Byte(_ctypes.Array):
    _type_ = _char
    _length_ = 1


def buffer_address(buf) -> int:
    """The address of a writable buffer's first byte (an mmap: where it is mapped).
    Nothing keeps the buffer exported: it may be closed afterwards."""
    return _ctypes.addressof(_Byte.from_buffer(buf))     # the probe dies at once


def unix_listener(path: str, backlog: int) -> int:
    """A non-blocking, close-on-exec AF_UNIX stream socket bound to path and listening:
    its fd. The file is created with the process umask, as bind(2) does."""
    raw = os.fsencode(path)
    if len(raw) >= 108:
        raise OSError(36, f"socket path too long ({len(raw)} bytes, the limit is 107)")
    addr = Buffer(AF_UNIX.to_bytes(2, "little") + raw + b"\0")
    fd = syscall(SYS_SOCKET, AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    try:
        syscall(SYS_BIND, fd, addr.address, 2 + len(raw) + 1)
        syscall(SYS_LISTEN, fd, backlog)
    except OSError:
        os.close(fd)
        raise
    return fd


class Poller:
    """poll(2) on a pollfd array made once and refilled per wait (sized to the largest
    fd list seen)."""

    def __init__(self):
        self._buf = None

    def poll(self, fds, timeout_ms: int) -> list:
        """[fd readable or in error] among fds (POLLIN), after at most timeout_ms
        (-1: no limit). A signal that interrupts the wait returns what is ready (the
        caller looks at its wakeup fd and loops)."""
        n = len(fds)
        if self._buf is None or len(self._buf.view) < n * 8:
            self._buf = Buffer(bytes(max(n, 8) * 8))
        view = self._buf.view
        pack = _POLLFD.pack_into
        for i, fd in enumerate(fds):
            pack(view, i * 8, fd, POLLIN, 0)
        try:
            if not syscall(SYS_POLL, self._buf.address, n, timeout_ms):
                return []
        except InterruptedError:
            return []
        out = []
        unpack = _POLLFD.unpack_from
        for i in range(n):
            fd, _ev, rev = unpack(view, i * 8)
            if rev:
                out.append(fd)
        return out
