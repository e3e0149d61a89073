"""ukdbg/kvm/libc.py: ioctl for the kvm layer, without ctypes.

ctypes costs ~2 ms to import and the run path has a 6 ms budget, so ioctls go through
fcntl.ioctl (which returns EINTR as an exception instead of retrying).
"""

import fcntl

_ioctl = fcntl.ioctl


def ioctl(fd: int, request: int, arg=0):
    """ioctl(2): arg is an int or a bytes-like buffer. Returns the int result, or the
    output bytes for a bytes arg; raises OSError."""
    return _ioctl(fd, request, arg)


def ioctl_inout(fd: int, request: int, buf: bytearray) -> int:
    """ioctl(2) that the kernel may write into: buf (any size) is updated in place."""
    return _ioctl(fd, request, buf, True)
