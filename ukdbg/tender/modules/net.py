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
    m.hypercalls[abi.HC_NET_WRITE] = net_write
    m.hypercalls[abi.HC_NET_READ] = net_read


def _device(m, gpa):
    handle, data, n, _ = m.mem.unpack(_NET, gpa)
    m.mem.check_guest_write(gpa, _NET.size)
    devs = m.devices
    dev = devs[handle - 1] if 1 <= handle <= len(devs) else None
    if dev is None or dev.type != abi.MFT_DEV_NET_BASIC or not dev.attached:
        m.mem.guest_write(gpa + 24, abi.RET_ST.pack(abi.SOLO5_R_EINVAL))
        return None
    return dev, data, n


def net_write(m, gpa):
    req = _device(m, gpa)
    if req is None:
        return None
    dev, data, n = req
    try:
        done = os.write(dev.host.fd, m.mem.slice(data, n))
    except OSError as e:
        from ... import sandbox
        done = sandbox.describe(e, f"net device '{dev.name}'") or e
    if done != n:
        return Crashed("host-io", SIGBUS, f"net device '{dev.name}' ({dev.host.iface}): "
                       f"write of {n} bytes failed: {done}")
    dev.host.bytes_written += n
    m.mem.guest_write(gpa + 24, abi.RET_ST.pack(abi.SOLO5_R_OK))
    return None


def net_read(m, gpa):
    req = _device(m, gpa)
    if req is None:
        return None
    dev, data, n = req
    m.mem.check_guest_write(data, n)
    try:
        got = os.readv(dev.host.fd, [m.mem.slice(data, n)])
    except BlockingIOError:
        got = 0
    except OSError as e:
        from ... import sandbox
        return Crashed("host-io", SIGBUS, f"net device '{dev.name}' ({dev.host.iface}): "
                       f"read failed: {sandbox.describe(e, 'NET_READ') or e.strerror}")
    if got == 0:
        m.mem.guest_write(gpa + 24, abi.RET_ST.pack(abi.SOLO5_R_AGAIN))
        return None
    dev.host.bytes_read += got
    m.mem.guest_write(gpa + abi.NET_LEN_RET_OFF, abi.NET_LEN_RET.pack(got, abi.SOLO5_R_OK))
    return None
