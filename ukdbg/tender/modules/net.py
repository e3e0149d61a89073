"""ukdbg/tender/modules/net.py: NET_BASIC devices on tap interfaces (--net:NAME=IFACE)."""

import fcntl
import os
import struct

from ...errors import DeviceError
from ...target import SIGBUS, Crashed
from .. import abi

_NET = abi.HC_NET_ST
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SIOCGIFMTU = 0x8921
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IFNAMSIZ = 16


def _ifreq_query(iface, request):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r = fcntl.ioctl(s.fileno(), request, struct.pack("16s16x", iface.encode()))
    finally:
        s.close()
    return struct.unpack_from("<h", r, 16)[0] if request == SIOCGIFFLAGS else \
        struct.unpack_from("<i", r, 16)[0]


class TapBackend:
    def __init__(self, name, iface):
        self.name = name
        self.iface = iface
        if not iface or len(iface) >= IFNAMSIZ:
            raise DeviceError(f"net device '{name}': bad interface name '{iface}'")
        try:
            flags = _ifreq_query(iface, SIOCGIFFLAGS)
        except OSError:
            raise DeviceError(f"net device '{name}': no interface '{iface}'",
                              f"create it first: ip tuntap add {iface} mode tap && "
                              f"ip link set dev {iface} up") from None
        if not flags & IFF_UP:
            raise DeviceError(f"net device '{name}': interface '{iface}' is down",
                              f"ip link set dev {iface} up")
        self.mtu = _ifreq_query(iface, SIOCGIFMTU)
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise DeviceError(f"net device '{name}': /dev/net/tun: {e.strerror}") from None
        try:
            fcntl.ioctl(self.fd, TUNSETIFF,
                        struct.pack("16sH22x", iface.encode(), IFF_TAP | IFF_NO_PI))
        except OSError as e:
            os.close(self.fd)
            raise DeviceError(f"net device '{name}': cannot attach to tap '{iface}': "
                              f"{e.strerror}") from None
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)     # no GRO/GSO: frames <= MTU
        except OSError:
            pass
        self.bytes_read = 0
        self.bytes_written = 0

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        mac = b""
    if len(parts) != 6 or len(mac) != 6 or any(len(p) != 2 for p in parts):
        raise ValueError(f"malformed MAC address '{text}' (want xx:xx:xx:xx:xx:xx)")
    return mac


def random_mac() -> bytes:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02           # unicast, locally administered
    return bytes(b)


def setup(m, opts) -> None:
    if not opts.nets:
        return
    for name, iface in opts.nets.items():
        dev = m.image.manifest.find(name)
        dev.host = TapBackend(name, iface)
        dev.mtu = dev.host.mtu
        dev.mac = opts.net_macs.get(name) or random_mac()
        dev.attached = True
        m.net_fds[dev.host.fd] = dev.index
    m.hypercalls[abi.HC_NET_WRITE], m.hypercalls[abi.HC_NET_READ] = handlers(m)


def handlers(m):
    """(net_write, net_read) for m's attached NET_BASIC devices.

    Hot path (bench/hypercalls.py): the struct is checked once (it holds the results),
    the guest's handle is one dict lookup, guest memory is reached through accessors
    bound here (kvm/memory.py). modules/block.py's handlers are built the same way."""
    mem = m.mem
    load, raw = mem.struct_window(_NET)
    view, guest_view = mem.slicers()
    taps = m.attached(abi.MFT_DEV_NET_BASIC)              # handle -> device
    put_ret = abi.RET_ST.pack_into
    put_len_ret = abi.NET_LEN_RET.pack_into
    ok, again, einval = abi.SOLO5_R_OK, abi.SOLO5_R_AGAIN, abi.SOLO5_R_EINVAL
    len_ret = abi.NET_LEN_RET_OFF
    write, readv = os.write, os.readv

    def request(gpa):
        """(device, data, len) of the guest's request, or None once answered EINVAL."""
        handle, data, n, _ = load(gpa)
        dev = taps.get(handle)
        if dev is None:
            put_ret(raw, gpa + 24, einval)
            return None
        return dev, data, n

    def net_write(m, gpa):
        req = request(gpa)
        if req is None:
            return None
        dev, data, n = req
        host = dev.host
        try:
            done = write(host.fd, view(data, n))
        except OSError as e:
            from ... import sandbox
            done = sandbox.describe(e, f"net device '{dev.name}'") or e
        if done != n:
            return Crashed("host-io", SIGBUS, f"net device '{dev.name}' ({host.iface}): "
                           f"write of {n} bytes failed: {done}")
        host.bytes_written += n
        put_ret(raw, gpa + 24, ok)
        return None

    def net_read(m, gpa):
        req = request(gpa)
        if req is None:
            return None
        dev, data, n = req
        host = dev.host
        buf = guest_view(data, n)
        try:
            got = readv(host.fd, [buf])
        except BlockingIOError:
            put_ret(raw, gpa + 24, again)
            return None
        except OSError as e:
            from ... import sandbox
            return Crashed("host-io", SIGBUS, f"net device '{dev.name}' ({host.iface}): "
                           f"read failed: {sandbox.describe(e, 'NET_READ') or e.strerror}")
        if got == 0:
            put_ret(raw, gpa + 24, again)
            return None
        host.bytes_read += got
        put_len_ret(raw, gpa + len_ret, got, ok)
        return None

    return net_write, net_read
