"""ukdbg/tender/modules/block.py: BLOCK_BASIC devices (--block:NAME=PATH), §9 and §14."""

import os

from ...errors import DeviceError
from ...target import SIGBUS, Crashed
from .. import abi

_BLK = abi.HC_BLOCK_ST
_SSIZE_MAX = (1 << 63) - 1


class BlockBackend:
    def __init__(self, name, path, block_size):
        self.name = name
        self.path = path
        from ...files import open_regular
        try:
            self.fd, self.capacity = open_regular(path, None, "a block device backing",
                                                  flags=os.O_RDWR, allow_block=True,
                                                  error=DeviceError)
        except DeviceError as e:
            raise DeviceError(f"block device '{name}': cannot open {e}") from None
        if self.capacity < block_size:
            raise DeviceError(f"block device '{name}': {path} is smaller than one "
                              f"{block_size}-byte block ({self.capacity} bytes)")
        if self.capacity % block_size:
            raise DeviceError(f"block device '{name}': backing storage size must be "
                              f"block aligned ({self.capacity} bytes, block size "
                              f"{block_size})")
        self.bytes_read = 0
        self.bytes_written = 0

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def setup(m, opts) -> None:
    if not opts.blocks:
        return
    for name, path in opts.blocks.items():
        dev = m.image.manifest.find(name)
        bs = opts.block_sector.get(name, 512)
        dev.host = BlockBackend(name, path, bs)
        dev.capacity = dev.host.capacity
        dev.block_size = bs
        dev.attached = True
    m.hypercalls[abi.HC_BLOCK_WRITE] = block_write
    m.hypercalls[abi.HC_BLOCK_READ] = block_read


def _request(m, gpa):
    """(device, offset, data, len) or None after answering EINVAL."""
    handle, off, data, n, _ = m.mem.unpack(_BLK, gpa)
    m.mem.check_guest_write(gpa, _BLK.size)
    devs = m.devices
    dev = devs[handle - 1] if 1 <= handle <= len(devs) else None
    if (dev is None or dev.type != abi.MFT_DEV_BLOCK_BASIC or not dev.attached
            or n > _SSIZE_MAX or off >= dev.capacity or off + n > dev.capacity):
        m.mem.guest_write(gpa + abi.BLOCK_RET_OFF, abi.RET_ST.pack(abi.SOLO5_R_EINVAL))
        return None
    return dev, off, data, n


def _host_failure(m, dev, what, e):
    from ... import sandbox           # a refused syscall is named (ukdbg/sandbox.py)
    err = e if isinstance(e, str) else (
        sandbox.describe(e, f"block device '{dev.name}'") or e.strerror)
    return Crashed("host-io", SIGBUS, f"block device '{dev.name}' ({dev.host.path}): {what} "
                   f"failed: {err}")


def block_write(m, gpa):
    req = _request(m, gpa)
    if req is None:
        return None
    dev, off, data, n = req
    buf = m.mem.slice(data, n)
    try:
        done = os.pwrite(dev.host.fd, buf, off)
    except OSError as e:
        return _host_failure(m, dev, f"write of {n} bytes at {off}", e)
    if done != n:
        return _host_failure(m, dev, f"write of {n} bytes at {off}", f"short write ({done})")
    dev.host.bytes_written += n
    m.mem.guest_write(gpa + abi.BLOCK_RET_OFF, abi.RET_ST.pack(abi.SOLO5_R_OK))
    return None


def block_read(m, gpa):
    req = _request(m, gpa)
    if req is None:
        return None
    dev, off, data, n = req
    m.mem.check_guest_write(data, n)
    buf = m.mem.slice(data, n)
    try:
        done = os.preadv(dev.host.fd, [buf], off)
    except OSError as e:
        return _host_failure(m, dev, f"read of {n} bytes at {off}", e)
    if done != n:
        return _host_failure(m, dev, f"read of {n} bytes at {off}", f"short read ({done})")
    dev.host.bytes_read += n
    m.mem.guest_write(gpa + abi.BLOCK_RET_OFF, abi.RET_ST.pack(abi.SOLO5_R_OK))
    return None
