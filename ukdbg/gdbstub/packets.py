"""ukdbg/gdbstub/packets.py: RSP framing: checksums, binary escaping, run-length encoding
and PacketReader, the byte-level receive state machine (GDB manual, "Remote Protocol":
"Overview", "Packet Acknowledgment", "Binary Data")."""

import re
import zlib

# The largest packet body we accept (qSupported advertises PACKET_SIZE); anything
# longer is dropped whole and answered with an error.
PACKET_SIZE = 0x20000
MAX_BODY = PACKET_SIZE + 256

ACK, NACK, INTERRUPT, PACKET, BAD_CHECKSUM, OVERSIZED = (
    "ack", "nack", "interrupt", "packet", "bad-checksum", "oversized")

_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_ESCAPED = (b"}", b"#", b"$", b"*")


def checksum(body) -> int:
    """Sum of the bytes modulo 256. Large bodies (memory replies) are summed by zlib's
    adler32 over 256-byte pieces: exact there (256 * 255 < 65521) and ~5x faster."""
    n = len(body)
    if n < 1024:
        return sum(body) & 0xFF
    a32 = zlib.adler32
    mv = memoryview(body)
    total = 0
    for i in range(0, n, 256):
        total += a32(mv[i:i + 256]) & 0xFFFF     # A = 1 + sum of the piece
    return (total - (n + 255) // 256) & 0xFF


def frame(body: bytes) -> bytes:
    """`$body#xx`."""
    return b"$%s#%02x" % (body, checksum(body))


def escape(data: bytes) -> bytes:
    """Binary data for the wire: `}` `#` `$` `*` become `}` + (byte ^ 0x20)."""
    if b"}" in data:
        data = data.replace(b"}", b"}]")
    if b"#" in data:
        data = data.replace(b"#", b"}\x03")
    if b"$" in data:
        data = data.replace(b"$", b"}\x04")
    if b"*" in data:
        data = data.replace(b"*", b"}\x0a")
    return data


def unescape(data: bytes):
    """Inverse of escape(); None when the data ends in a lone `}`."""
    if b"}" not in data:
        return bytes(data)
    parts = bytes(data).split(b"}")
    out = [parts[0]]
    for p in parts[1:]:
        if not p:
            return None
        out.append(bytes((p[0] ^ 0x20,)))
        out.append(p[1:])
    return b"".join(out)


def rle_encode(body: bytes) -> bytes:
    """Run-length encode a textual reply (hex, no escapes): `X*n` repeats X n-29 more
    times. Runs whose count character would be `#` or `$` are shortened."""
    if b"}" in body or b"*" in body:
        return bytes(body)
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        j = i + 1
        while j < n and body[j] == c and j - i < 98:
            j += 1
        run = j - i
        if run < 4:
            out.append(c)
            i += 1
            continue
        extra = run - 1
        while extra + 29 in (0x23, 0x24):     # '#', '$' may not be counts
            extra -= 1
        out.append(c)
        out.append(0x2A)
        out.append(extra + 29)
        i += extra + 1
    return bytes(out)


# Compiled at import (the stub is imported when it is set up): compiling, or importing
# re, at the first stop would cost gdb's first reply milliseconds.
_ZERO_RUN = re.compile(b"\0{16,}")


def hex_rle(data: bytes) -> bytes:
    """data as hex for a reply, runs of zero bytes run-length encoded (`0*~` = 98 '0'
    characters). Guest memory is mostly zero pages; gdb then reads ~30x fewer
    characters. The runs are found with a regular expression (C speed)."""
    if b"\0" * 16 not in data:
        return data.hex().encode()
    out = []
    pos = 0
    for mt in _ZERO_RUN.finditer(data):
        lo, hi = mt.span()
        out.append(data[pos:lo].hex().encode())
        out.append(_zeros((hi - lo) * 2))
        pos = hi
    out.append(data[pos:].hex().encode())
    return b"".join(out)


def _zeros(n: int) -> bytes:
    """n '0' characters, run-length encoded."""
    full, rest = divmod(n, 98)
    tail = b""
    if rest >= 4:
        extra = rest - 1
        if extra in (6, 7):               # counts '#' and '$' are not allowed
            tail = b"0" * (extra - 5)
            extra = 5
        tail = b"0*" + bytes((extra + 29,)) + tail
    else:
        tail = b"0" * rest
    return b"0*~" * full + tail


def rle_decode(body: bytes):
    """Expand `X*n` runs; None when a `*` has no character before or after it."""
    if b"*" not in body:
        return bytes(body)
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == 0x2A:
            if not out or i + 1 >= n or body[i + 1] < 32:
                return None
            out += bytes((out[-1],)) * (body[i + 1] - 29)
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


class PacketReader:
    """Ready -> Body -> Checksum1 -> Checksum2, one byte (or one run of body bytes) at a
    time. feed(data) returns events: (ACK|NACK|INTERRUPT, None), (PACKET, body),
    (BAD_CHECKSUM, body) or (OVERSIZED, None). Bytes outside packets other than
    `+ - \\x03` are ignored; a `$` inside a body restarts the packet (a truncated one
    is dropped)."""

    READY, BODY, CS1, CS2 = range(4)

    def __init__(self, max_body: int = MAX_BODY):
        self.max_body = max_body
        self.state = self.READY
        self.body = bytearray()
        self.cs = 0
        self.overflow = False

    def reset(self) -> None:
        self.state = self.READY
        self.body = bytearray()
        self.overflow = False

    @property
    def idle(self) -> bool:
        return self.state == self.READY

    def feed(self, data) -> list:
        # Fast path: exactly one whole packet (gdb's usual read while stepping).
        if self.state == 0 and data[:1] == b"$":
            j = len(data) - 3
            if j > 0 and data[j] == 0x23 and data.find(b"#", 1, j) < 0 \
                    and data.find(b"$", 1, j) < 0 and j - 1 <= self.max_body:
                body = bytes(data[1:j])
                try:
                    cs = int(data[j + 1:], 16) if data[j + 1] in _HEXDIGITS and \
                        data[j + 2] in _HEXDIGITS else -1
                except ValueError:
                    cs = -1
                if cs >= 0:
                    return [(PACKET, body) if cs == checksum(body) else (BAD_CHECKSUM, body)]
        events = []
        i, n = 0, len(data)
        while i < n:
            st = self.state
            if st == self.READY:
                c = data[i]
                i += 1
                if c == 0x24:              # $
                    self.state = self.BODY
                    self.body = bytearray()
                    self.overflow = False
                elif c == 0x2B:            # +
                    events.append((ACK, None))
                elif c == 0x2D:            # -
                    events.append((NACK, None))
                elif c == 0x03:
                    events.append((INTERRUPT, None))
            elif st == self.BODY:
                j = data.find(b"#", i)
                end = n if j < 0 else j
                k = data.find(b"$", i, end)
                if k >= 0:                 # a new packet starts: drop the partial one
                    self.body = bytearray()
                    self.overflow = False
                    i = k + 1
                    continue
                if not self.overflow:
                    self.body += data[i:end]
                    if len(self.body) > self.max_body:
                        self.overflow = True
                        self.body = bytearray()
                if j < 0:
                    return events
                i = j + 1
                self.state = self.CS1
            elif st == self.CS1:
                c = data[i]
                i += 1
                if c not in _HEXDIGITS:
                    events.append((BAD_CHECKSUM, bytes(self.body)))
                    self.reset()
                    if c == 0x24:
                        i -= 1
                    continue
                self.cs = int(chr(c), 16) << 4
                self.state = self.CS2
            else:
                c = data[i]
                i += 1
                body = bytes(self.body)
                over = self.overflow
                self.reset()
                if c not in _HEXDIGITS:
                    events.append((BAD_CHECKSUM, body))
                    if c == 0x24:
                        i -= 1
                    continue
                if over:
                    events.append((OVERSIZED, None))
                    continue
                cs = self.cs | int(chr(c), 16)
                events.append((PACKET, body) if cs == checksum(body)
                              else (BAD_CHECKSUM, body))
        return events
