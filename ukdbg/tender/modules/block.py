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

    Hot path (bench/hypercalls.py): as modules/net.py's handlers. A request is refused
    (EINVAL) for a bad handle or a range outside the device (a block_size multiple is
    the guest's business, as in Solo5's hvt), before its buffer is looked at."""
    mem = m.mem
    load_w, raw, refuse_w = mem.request(_BLK, 2)
    load_r, _, refuse_r = mem.request(_BLK, 2, fills=True)
    disks = m.attached(abi.MFT_DEV_BLOCK_BASIC)           # handle -> device
    hosts = {h: dev.host for h, dev in disks.items()}
    put_ret = abi.RET_ST.pack_into
    ret_off = abi.BLOCK_RET_OFF
    ok, einval = abi.SOLO5_R_OK, abi.SOLO5_R_EINVAL
    pwrite, preadv = os.pwrite, os.preadv

    def block_write(m, gpa):
        (handle, off, data, n, _), buf = load_w(gpa)
        try:
            host = hosts[handle]
        except KeyError:
            host = None
        if host is None or off + n > host.capacity or off >= host.capacity:
            put_ret(raw, gpa + ret_off, einval)
            return None
        if buf is None:
            refuse_w(data, n)
        try:
            done = pwrite(host.fd, buf, off)
        except OSError as e:
            return _host_failure(m, disks[handle], f"write of {n} bytes at {off}", e)
        if done != n:
            return _host_failure(m, disks[handle], f"write of {n} bytes at {off}",
                                 f"short write ({done})")
        host.bytes_written += n
        put_ret(raw, gpa + ret_off, ok)
        return None

    def block_read(m, gpa):
        # block_write's checks, inlined in each: a shared helper is one more Python
        # call per hypercall (bench/hypercalls.py)
        (handle, off, data, n, _), buf = load_r(gpa)
        try:
            host = hosts[handle]
        except KeyError:
            host = None
        if host is None or off + n > host.capacity or off >= host.capacity:
            put_ret(raw, gpa + ret_off, einval)
            return None
        if buf is None:
            refuse_r(data, n)
        try:
            done = preadv(host.fd, [buf], off)
        except OSError as e:
            return _host_failure(m, disks[handle], f"read of {n} bytes at {off}", e)
        if done != n:
            return _host_failure(m, disks[handle], f"read of {n} bytes at {off}",
                                 f"short read ({done})")
        host.bytes_read += n
        put_ret(raw, gpa + ret_off, ok)
        return None

    return block_write, block_read
