"""ukdbg/kvm/libc.py: ioctl and the few process facts the kvm layer needs, without ctypes.

ctypes costs ~2 ms to import and the run path has an 8 ms budget, so ioctls go through
fcntl.ioctl (which returns EINTR as an exception instead of retrying) and the address
of guest RAM is read from /proc/self/maps.
"""

import fcntl
import os

_ioctl = fcntl.ioctl


def ioctl(fd: int, request: int, arg=0):
    """ioctl(2): arg is an int or a bytes-like buffer. Returns the int result, or the
    output bytes for a bytes arg; raises OSError."""
    return _ioctl(fd, request, arg)


def ioctl_inout(fd: int, request: int, buf: bytearray) -> int:
    """ioctl(2) that the kernel may write into: buf (any size) is updated in place."""
    return _ioctl(fd, request, buf, True)


def mapping_address(memfd_name: str, size: int) -> int:
    """Start address of this process's MAP_SHARED mapping of memfd `memfd_name`."""
    want = f"/memfd:{memfd_name}"
    with open(f"/proc/{os.getpid()}/maps", "rb") as f:
        for line in f.read().decode("latin-1").splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].split(" (deleted)")[0] == want:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if hi - lo == size:
                    return lo
    raise OSError(f"mapping of memfd {memfd_name} not found in /proc/self/maps")
