"""ukdbg/tender/modules/block.py: BLOCK_BASIC devices (--block:NAME=PATH), §9 and §14."""

import os

from ...errors import DeviceError
from ...target import SIGBUS, Crashed
from .. import abi

_BLK = abi.HC_BLOCK_ST


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
    m.hypercalls[abi.HC_BLOCK_WRITE], m.hypercalls[abi.HC_BLOCK_READ] = handlers(m)


def _host_failure(m, dev, what, e):
    from ... import sandbox           # a refused syscall is named (ukdbg/sandbox.py)
    err = e if isinstance(e, str) else (
        sandbox.describe(e, f"block device '{dev.name}'") or e.strerror)
    return Crashed("host-io", SIGBUS, f"block device '{dev.name}' ({dev.host.path}): {what} "
                   f"failed: {err}")


def handlers(m):
    """(block_write, block_read) for m's attached BLOCK_BASIC devices.

    Hot path (bench/hypercalls.py): as modules/net.py's handlers."""
    mem = m.mem
    load, raw = mem.struct_window(_BLK)
    view, guest_view = mem.slicers()
    disks = m.attached(abi.MFT_DEV_BLOCK_BASIC)           # handle -> device
    put_ret = abi.RET_ST.pack_into
    ret_off = abi.BLOCK_RET_OFF
    ok, einval = abi.SOLO5_R_OK, abi.SOLO5_R_EINVAL
    pwrite, preadv = os.pwrite, os.preadv

    def request(gpa):
        """(device, offset, data, len) of the guest's request, or None once answered
        EINVAL: a bad handle or a range outside the device (a block_size multiple is the
        guest's business, as in Solo5's hvt)."""
        handle, off, data, n, _ = load(gpa)
        dev = disks.get(handle)
        if dev is None or off + n > dev.capacity or off >= dev.capacity:
            put_ret(raw, gpa + ret_off, einval)
            return None
        return dev, off, data, n

    def block_write(m, gpa):
        req = request(gpa)
        if req is None:
            return None
        dev, off, data, n = req
        try:
            done = pwrite(dev.host.fd, view(data, n), off)
        except OSError as e:
            return _host_failure(m, dev, f"write of {n} bytes at {off}", e)
        if done != n:
            return _host_failure(m, dev, f"write of {n} bytes at {off}", f"short write ({done})")
        dev.host.bytes_written += n
        put_ret(raw, gpa + ret_off, ok)
        return None

    def block_read(m, gpa):
        req = request(gpa)
        if req is None:
            return None
        dev, off, data, n = req
        try:
            done = preadv(dev.host.fd, [guest_view(data, n)], off)
        except OSError as e:
            return _host_failure(m, dev, f"read of {n} bytes at {off}", e)
        if done != n:
            return _host_failure(m, dev, f"read of {n} bytes at {off}", f"short read ({done})")
        dev.host.bytes_read += n
        put_ret(raw, gpa + ret_off, ok)
        return None

    return block_write, block_read
