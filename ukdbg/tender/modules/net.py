"""ukdbg/tender/modules/net.py: NET_BASIC devices on tap interfaces (--net:NAME=IFACE)."""

import _io
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

    Hot path (bench/hypercalls.py): one call checks the struct (it holds the results)
    and cuts the buffer (kvm/memory.py's request()); the guest's handle is one dict
    subscript (a bad one is rare: KeyError); no frame waiting is no exception raised
    (FileIO.readinto answers None where os.readv raises BlockingIOError: ~0.4 us less).
    modules/block.py's handlers are built the same way."""
    mem = m.mem
    load_w, raw, refuse_w = mem.request(_NET, 1)
    load_r, _, refuse_r = mem.request(_NET, 1, fills=True)
    taps = m.attached(abi.MFT_DEV_NET_BASIC)              # handle -> device
    hosts = {h: dev.host for h, dev in taps.items()}
    readers = {h: _io.FileIO(dev.host.fd, "r", closefd=False).readinto
               for h, dev in taps.items()}
    put_ret = abi.RET_ST.pack_into
    put_len_ret = abi.NET_LEN_RET.pack_into
    ok, again, einval = abi.SOLO5_R_OK, abi.SOLO5_R_AGAIN, abi.SOLO5_R_EINVAL
    ret_off, len_ret = abi.NET_RET_OFF, abi.NET_LEN_RET_OFF
    write = os.write

    def net_write(m, gpa):
        (handle, data, n, _), buf = load_w(gpa)
        try:
            host = hosts[handle]
        except KeyError:
            put_ret(raw, gpa + ret_off, einval)
            return None
        if buf is None:
            refuse_w(data, n)
        try:
            done = write(host.fd, buf)
        except OSError as e:
            from ... import sandbox
            done = sandbox.describe(e, f"net device '{taps[handle].name}'") or e
        if done != n:
            return Crashed("host-io", SIGBUS, f"net device '{taps[handle].name}' "
                           f"({host.iface}): write of {n} bytes failed: {done}")
        host.bytes_written += n
        put_ret(raw, gpa + ret_off, ok)
        return None

    def net_read(m, gpa):
        (handle, data, n, _), buf = load_r(gpa)
        try:
            readinto = readers[handle]
        except KeyError:
            put_ret(raw, gpa + ret_off, einval)
            return None
        if buf is None:
            refuse_r(data, n)
        try:
            got = readinto(buf)
        except OSError as e:
            from ... import sandbox
            host = hosts[handle]
            return Crashed("host-io", SIGBUS, f"net device '{taps[handle].name}' "
                           f"({host.iface}): read failed: "
                           f"{sandbox.describe(e, 'NET_READ') or e.strerror}")
        if not got:                       # None: nothing waiting (EAGAIN); 0: EOF
            put_ret(raw, gpa + ret_off, again)
            return None
        hosts[handle].bytes_read += got
        put_len_ret(raw, gpa + len_ret, got, ok)
        return None

    return net_write, net_read
