"""ukdbg/replay/format.py: the recording file, version 1 (docs/replay.md, "File format").

    header   "UKDBGREC" u16 version u16 flags u32 reserved            (16 bytes)
    chunks   u32 length, u32 crc32 of the bytes, the bytes             (repeated)

The chunks' bytes, concatenated, are one zlib stream. The writer ends every chunk with
Z_SYNC_FLUSH, so each chunk decompresses completely given the ones before it: a file
cut anywhere (a SIGKILLed monitor) still yields every record of its complete chunks,
and the CRC tells a cut from tampering. A chunk of length 0 and crc LIMIT_MARK says
the writer hit --record-limit there and stopped.

The decompressed stream is a sequence of records, u8 type + u32 length + payload:
META (JSON boot state), IMAGE (the .hvt bytes), CPUID (the kvm_cpuid2 table), then
events: HC (a hypercall), TRAP (an emulated instruction), EXT (something from outside
the guest at an exact position), END (how the run ended).
"""

import os
import struct
import time
import zlib

from ..errors import UkdbgError

MAGIC = b"UKDBGREC"
VERSION = 1
HEADER = struct.Struct("<8sHHI")
CHUNK = struct.Struct("<II")
LIMIT_MARK = 0xFFFFFFFF
REC = struct.Struct("<BI")

R_META, R_IMAGE, R_CPUID = 1, 2, 3
R_HC, R_TRAP, R_EXT, R_END = 10, 11, 12, 13
EVENT_TYPES = (R_HC, R_TRAP, R_EXT, R_END)

# HC: nr, flags, gpa, len(before), len(after), len(data), check (adler32 of guest output)
HC_HEAD = struct.Struct("<BBQHHII")
HC_RAISED = 1          # the handler refused a guest pointer; tail = the message
HC_STOP = 2            # the handler returned a Stop; tail = its JSON
# TRAP: kind, rip, value, aux
TRAP_ST = struct.Struct("<BQQQ")
T_RDTSC, T_RDTSCP, T_RDRAND, T_RDSEED = 1, 2, 3, 4
TRAP_NAMES = {T_RDTSC: "rdtsc", T_RDTSCP: "rdtscp", T_RDRAND: "rdrand", T_RDSEED: "rdseed"}
# EXT: kind, then the 18 kvm_regs words where it happened, then kind-specific data
EXT_HEAD = struct.Struct("<B18Q")
X_MEMWRITE = 1         # data: u64 gpa + bytes            (a debugger wrote memory)
X_REGS = 2             # data: kvm_regs (144) + kvm_sregs (312) after the write
X_FPU = 3              # data: the 512-byte FXSAVE image after the write
X_STOP = 4             # data: JSON Stop that ended the guest here (signal, timeout)
X_PAUSE = 5            # data: b"" (informational: a pause at this position)
X_RESUME = 6
EXT_NAMES = {X_MEMWRITE: "memory write", X_REGS: "register write", X_FPU: "fpu write",
             X_STOP: "stop", X_PAUSE: "pause", X_RESUME: "resume"}

FLUSH_BYTES = 64 * 1024
FLUSH_SECONDS = 0.2


class RecordingError(UkdbgError):
    """A recording that cannot be read: not ours, another version, corrupt."""


class Writer:
    """Appends records to an open fd, compressed, in self-contained chunks.

    add() is on the hypercall path: it only appends to a buffer; flush() compresses
    and writes a chunk (every FLUSH_BYTES, when the guest is about to sleep, and at
    least every FLUSH_SECONDS of events)."""

    def __init__(self, fd: int, limit=None, warn=None, level: int = 1):
        self.fd = fd
        self.limit = limit
        self.warn = warn
        self.z = zlib.compressobj(level)
        self.buf = bytearray()
        self.stopped = False
        self.events = 0
        self.written = 0
        self.last_flush = time.monotonic()
        self._write(HEADER.pack(MAGIC, VERSION, 0, 0))

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.written += len(data)

    def add(self, rtype: int, payload) -> None:
        if self.stopped:
            return                      # (the hypercall wrappers append to buf itself)
        b = self.buf
        b += REC.pack(rtype, len(payload))
        b += payload
        self.events += 1
        if len(b) >= FLUSH_BYTES or not self.events & 63:
            self.maybe_flush()

    def maybe_flush(self) -> None:
        """From the hot paths, every 64 events: flush a full buffer or old events."""
        if len(self.buf) >= FLUSH_BYTES or \
                time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self, final: bool = False) -> None:
        if self.stopped:
            self.buf.clear()            # hot paths append to it directly
            return
        if not self.buf and not final:
            return
        data = self.z.compress(self.buf)
        data += self.z.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
        self.buf.clear()
        self.last_flush = time.monotonic()
        if self.limit is not None and \
                self.written + len(data) + 2 * CHUNK.size > self.limit:
            self._write(CHUNK.pack(0, LIMIT_MARK))
            self.stopped = True
            if self.warn:
                self.warn(f"recording reached --record-limit ({self.limit} bytes): "
                          "recording stopped, the guest runs on")
            return
        self._write(CHUNK.pack(len(data), zlib.crc32(data)) + data)
        if final:
            self.stopped = True

    def close(self) -> None:
        try:
            self.flush(final=True)
        finally:
            os.close(self.fd)
            self.fd = -1


RECORDING_MAX = 4 << 30      # bytes of a recording file that replay reads into memory


class Recording:
    """A recording read back: meta (dict), image (bytes), cpuid (bytes), events (a list
    of (type, payload) for HC/TRAP/EXT/END) and how the file ends: `complete` (an END
    record), `limited` (--record-limit), else cut short (`truncated`)."""

    def __init__(self, path: str):
        self.path = path
        from ..files import read_regular     # a regular file of sane size, nothing else
        raw = read_regular(path, RECORDING_MAX, "a ukdbg recording", error=RecordingError)
        self.file_size = len(raw)
        if len(raw) < HEADER.size or raw[:8] != MAGIC:
            raise RecordingError(f"{path}: not a ukdbg recording (bad magic)")
        _magic, version, _flags, _ = HEADER.unpack_from(raw, 0)
        if version != VERSION:
            raise RecordingError(f"{path}: recording format version {version} is not "
                                 f"supported (this ukdbg reads version {VERSION})")
        self.limited = False
        self.truncated = False
        stream = self._decompress(raw)
        self.meta = None
        self.image = None
        self.cpuid = None
        self.events = []
        self._parse(stream)
        self.complete = bool(self.events) and self.events[-1][0] == R_END
        if not self.complete and not self.limited:
            self.truncated = True

    def _corrupt(self, what: str):
        return RecordingError(f"{self.path}: the recording is corrupt ({what})",
                              "it was modified or damaged after it was written")

    def _decompress(self, raw: bytes) -> bytes:
        d = zlib.decompressobj()
        out = []
        pos = HEADER.size
        while pos < len(raw):
            if pos + CHUNK.size > len(raw):
                break                                   # cut inside a chunk header
            n, crc = CHUNK.unpack_from(raw, pos)
            if n == 0 and crc == LIMIT_MARK:
                self.limited = True
                pos += CHUNK.size
                if pos != len(raw):
                    raise self._corrupt(f"data after the limit mark at offset {pos}")
                break
            body = raw[pos + CHUNK.size:pos + CHUNK.size + n]
            if len(body) < n:
                break                                   # cut inside a chunk: a prefix
            if zlib.crc32(body) != crc:
                raise self._corrupt(f"chunk at offset {pos} fails its checksum")
            try:
                out.append(d.decompress(body))
            except zlib.error as e:
                raise self._corrupt(f"chunk at offset {pos}: {e}") from None
            pos += CHUNK.size + n
            if d.eof:
                if pos != len(raw) or d.unused_data:
                    raise self._corrupt(f"data after the end of the stream at offset {pos}")
                break
        return b"".join(out)

    def _parse(self, s: bytes) -> None:
        import json
        pos = 0
        n = len(s)
        while pos < n:
            if pos + REC.size > n:
                break                                   # a record cut by a SIGKILL
            t, size = REC.unpack_from(s, pos)
            if pos + REC.size + size > n:
                break
            payload = s[pos + REC.size:pos + REC.size + size]
            pos += REC.size + size
            if t in EVENT_TYPES:
                if self.meta is None or self.image is None:
                    raise self._corrupt("an event before the boot state")
                self.events.append((t, payload))
                if t == R_END:
                    if pos != n:
                        raise self._corrupt("records after the end of the run")
            elif t == R_META:
                try:
                    self.meta = json.loads(payload)
                except ValueError:
                    raise self._corrupt("the boot state is not valid JSON") from None
                if not isinstance(self.meta, dict):
                    raise self._corrupt("the boot state is not a JSON object")
            elif t == R_IMAGE:
                self.image = payload
            elif t == R_CPUID:
                self.cpuid = payload
            else:
                raise self._corrupt(f"unknown record type {t} at stream offset {pos}")
        if self.meta is None or self.image is None:
            raise RecordingError(f"{self.path}: the recording ends before its boot state "
                                 "(the recorder was killed at once?)")


def decode_hc(payload: bytes):
    """(nr, flags, gpa, before, after, data, check, tail) of an HC record."""
    nr, flags, gpa, nb, na, nd, check = HC_HEAD.unpack_from(payload, 0)
    p = HC_HEAD.size
    if p + nb + na + nd > len(payload):
        raise ValueError("hypercall record too short")
    before = payload[p:p + nb]
    after = payload[p + nb:p + nb + na]
    data = payload[p + nb + na:p + nb + na + nd]
    tail = payload[p + nb + na + nd:]
    return nr, flags, gpa, before, after, data, check, tail


def encode_hc(nr, flags, gpa, before, after, data, check, tail=b"") -> bytes:
    return b"".join((HC_HEAD.pack(nr, flags, gpa, len(before), len(after), len(data),
                                  check), before, after, data, tail))


def stop_to_json(stop) -> dict:
    """The parts of a target.Stop a replay needs to end the same way."""
    d = {"type": type(stop).__name__}
    for k in ("status", "cookie", "cause", "signal", "message", "rip", "vector",
              "error_code", "fault_addr", "exit_reason", "reason"):
        v = getattr(stop, k, None)
        if v is not None and isinstance(v, (int, str)):
            d[k] = v
    return d


def stop_from_json(d: dict):
    from .. import target as T
    t = d.get("type")
    if t == "Killed":
        return T.Killed(int(d.get("signal", 9)), str(d.get("reason", "signal")))
    if t == "Exited":
        return T.Exited(int(d.get("status", 0)), int(d.get("cookie", 0)))
    if t == "Crashed":
        return T.Crashed(str(d.get("cause", "replay")), int(d.get("signal", 11)),
                         str(d.get("message", "")), rip=d.get("rip"),
                         vector=d.get("vector"), error_code=d.get("error_code"),
                         fault_addr=d.get("fault_addr"), exit_reason=d.get("exit_reason"),
                         status=d.get("status"))
    return None
