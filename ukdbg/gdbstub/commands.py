"""ukdbg/gdbstub/commands.py: one pure, total parser per packet (gdbstub's `from_packet`).

parse(body) -> a typed command, Unknown (an empty reply: "not supported") or None
(malformed: an error reply). Nothing here raises on any input; tests fuzz it.
"""

from collections import namedtuple

from .packets import unescape

# --- commands -----------------------------------------------------------------------------
Simple = namedtuple("Simple", "name")                      # ?, g, k, qC, qAttached, ...
Unknown = namedtuple("Unknown", "body")
ReadMemory = namedtuple("ReadMemory", "addr length")
WriteMemory = namedtuple("WriteMemory", "addr data")
WriteRegisters = namedtuple("WriteRegisters", "data")
ReadRegister = namedtuple("ReadRegister", "regnum")
WriteRegister = namedtuple("WriteRegister", "regnum data")
# action: 'c' continue, 's' step, 't' stop; signal: int or 0; addr: resume address or None
Resume = namedtuple("Resume", "action signal addr")
VCont = namedtuple("VCont", "actions")                     # ((action, signal, thread|None), ...)
Breakpoint = namedtuple("Breakpoint", "insert type addr kind")
SetThread = namedtuple("SetThread", "op thread")
ThreadAlive = namedtuple("ThreadAlive", "thread")
Supported = namedtuple("Supported", "features")            # {name: True/False/value}
XferRead = namedtuple("XferRead", "object annex offset length")
Monitor = namedtuple("Monitor", "command")
Detach = namedtuple("Detach", "pid")
Kill = namedtuple("Kill", "pid")
VFile = namedtuple("VFile", "op args")
MemoryRegionInfo = namedtuple("MemoryRegionInfo", "addr")
RegisterInfo = namedtuple("RegisterInfo", "regnum")
ThreadExtraInfo = namedtuple("ThreadExtraInfo", "thread")

MAX_ADDR = (1 << 64) - 1
MAX_LENGTH = 1 << 32
_HEX = b"0123456789abcdefABCDEF"


def parse_hex(s, max_digits: int = 16):
    """An unsigned hex number (1..max_digits digits) or None."""
    if not s or len(s) > max_digits:
        return None
    if isinstance(s, str):
        try:
            s = s.encode("ascii")
        except UnicodeEncodeError:
            return None
    if s.translate(None, _HEX):       # anything but hex digits (int() takes more)
        return None
    return int(s, 16)


def parse_hex_bytes(s):
    """Hex-encoded bytes or None."""
    if len(s) % 2:
        return None
    try:
        return bytes.fromhex(s.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def parse_thread(s):
    """Thread id: `p PID.TID`, `p PID`, `TID`, `-1` (all) or `0` (any) -> (pid, tid)
    with -1 = all, 0 = any; None when malformed. A bare TID means pid 'any'."""
    if not s:
        return None

    def one(x):
        if x == b"-1":
            return -1
        return parse_hex(x)
    if s[:1] == b"p":
        pid, dot, tid = s[1:].partition(b".")
        p = one(pid)
        t = one(tid) if dot else -1
        if p is None or t is None:
            return None
        return (p, t)
    t = one(s)
    return None if t is None else (0, t)


def _addr_len(s):
    a, comma, n = s.partition(b",")
    addr, length = parse_hex(a), parse_hex(n, 9)
    if not comma or addr is None or length is None or length > MAX_LENGTH:
        return None
    return addr, length


# --- one parser per packet ---------------------------------------------------------------
def parse_m(body):
    al = _addr_len(body[1:])
    return ReadMemory(*al) if al else None


def _write_memory(body, decode):
    """M (hex) and X (binary) share one shape: ADDR,LEN:DATA with exactly LEN bytes."""
    head, colon, data = body[1:].partition(b":")
    al = _addr_len(head)
    if not colon or not al:
        return None
    raw = decode(data)
    if raw is None or len(raw) != al[1]:
        return None
    return WriteMemory(al[0], raw)


def parse_M(body):
    return _write_memory(body, parse_hex_bytes)


def parse_X(body):
    return _write_memory(body, unescape)


def parse_G(body):
    raw = parse_hex_bytes(body[1:])
    return WriteRegisters(raw) if raw is not None else None


def parse_p(body):
    n = parse_hex(body[1:], 4)
    return ReadRegister(n) if n is not None else None


def parse_P(body):
    num, eq, val = body[1:].partition(b"=")
    n = parse_hex(num, 4)
    raw = parse_hex_bytes(val)
    if not eq or n is None or raw is None or not raw:
        return None
    return WriteRegister(n, raw)


def parse_resume(body):
    """c [addr], s [addr], C sig[;addr], S sig[;addr]."""
    op = body[:1]
    rest = body[1:]
    sig = 0
    if op in (b"C", b"S"):
        s, _, rest = rest.partition(b";")
        sig = parse_hex(s, 2)
        if sig is None:
            return None
    addr = None
    if rest:
        addr = parse_hex(rest)
        if addr is None:
            return None
    return Resume(op.lower().decode(), sig, addr)


def parse_vcont(body):
    """vCont;ACTION[:THREAD];... (actions c, C sig, s, S sig, t, r start,end)."""
    if body == b"vCont?":
        return Simple("vCont?")
    parts = body[5:].split(b";")
    if parts[0] != b"" or len(parts) < 2:
        return None
    actions = []
    for p in parts[1:]:
        act, colon, th = p.partition(b":")
        thread = None
        if colon:
            thread = parse_thread(th)
            if thread is None:
                return None
        if not act:
            return None
        op = act[:1]
        sig = 0
        if op in (b"C", b"S"):
            sig = parse_hex(act[1:], 2)
            if sig is None:
                return None
        elif op == b"r":
            lo, comma, hi = act[1:].partition(b",")
            if not comma or parse_hex(lo) is None or parse_hex(hi) is None:
                return None
            op = b"s"                 # range stepping degrades to a single step
        elif op not in (b"c", b"s", b"t") or len(act) != 1:
            return None
        actions.append((op.lower().decode(), sig, thread))
    return VCont(tuple(actions))


def parse_z(body):
    """Z/z TYPE,ADDR,KIND[;cond...]: TYPE 0 sw, 1 hw, 2 write, 3 read, 4 access."""
    head = body[1:].split(b";", 1)[0]
    f = head.split(b",")
    if len(f) != 3:
        return None
    t, addr, kind = parse_hex(f[0], 1), parse_hex(f[1]), parse_hex(f[2], 8)
    if t is None or addr is None or kind is None or t > 4:
        return None
    return Breakpoint(body[:1] == b"Z", t, addr, kind)


def parse_H(body):
    if len(body) < 3:
        return None
    th = parse_thread(body[2:])
    if th is None:
        return None
    return SetThread(chr(body[1]), th)


def parse_T(body):
    th = parse_thread(body[1:])
    return ThreadAlive(th) if th is not None else None


def parse_D(body):
    if body == b"D":
        return Detach(None)
    if body[:2] != b"D;":
        return None
    pid = parse_hex(body[2:])
    return Detach(pid) if pid is not None else None


def parse_qsupported(body):
    feats = {}
    _, colon, rest = body.partition(b":")
    if colon:
        for f in rest.split(b";"):
            if not f:
                continue
            try:
                f = f.decode("ascii")
            except UnicodeDecodeError:
                return None
            if "=" in f:
                k, _, v = f.partition("=")
                feats[k] = v
            elif f[-1] in "+-?":
                feats[f[:-1]] = f[-1] == "+"
            else:
                feats[f] = True
    return Supported(feats)


def parse_qxfer(body):
    """qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH (only reads)."""
    f = body.split(b":")
    if len(f) != 5 or f[2] != b"read":
        return Unknown(body) if len(f) >= 3 and f[2] != b"read" else None
    al = _addr_len(f[4])
    if not al:
        return None
    try:
        obj, annex = f[1].decode("ascii"), f[3].decode("ascii")
    except UnicodeDecodeError:
        return None
    return XferRead(obj, annex, al[0], al[1])


def parse_qrcmd(body):
    raw = parse_hex_bytes(body[6:])
    if raw is None:
        return None
    return Monitor(raw.decode("utf-8", "replace"))


def parse_vfile(body):
    """vFile:open:PATHHEX,FLAGS,MODE | pread:FD,COUNT,OFFSET | close:FD | fstat:FD |
    setfs:PID | unlink:PATHHEX | readlink:PATHHEX -> VFile(op, args)."""
    op, colon, rest = body[6:].partition(b":")
    if not colon:
        return None
    args = rest.split(b",")
    try:
        op = op.decode("ascii")
    except UnicodeDecodeError:
        return None
    if op == "open":
        if len(args) != 3:
            return None
        path = parse_hex_bytes(args[0])
        flags, mode = parse_hex(args[1], 8), parse_hex(args[2], 8)
        if path is None or flags is None or mode is None:
            return None
        return VFile(op, (path, flags, mode))
    if op == "pread":
        nums = [parse_hex(a) for a in args]
        if len(nums) != 3 or None in nums:
            return None
        return VFile(op, tuple(nums))
    if op in ("close", "fstat", "setfs"):
        n = parse_hex(args[0], 8) if len(args) == 1 else None
        if n is None:
            return None
        return VFile(op, (n,))
    if op in ("unlink", "readlink"):
        path = parse_hex_bytes(args[0]) if len(args) == 1 else None
        if path is None:
            return None
        return VFile(op, (path,))
    return Unknown(body)


def parse_kill(body):
    if body == b"k":
        return Kill(None)
    pid = parse_hex(body[6:])
    return Kill(pid) if pid is not None else None


def _parse_addr_suffix(cls, body, prefix):
    n = parse_hex(body[len(prefix):])
    return cls(n) if n is not None else None


# Packets with no arguments.
_SIMPLE = frozenset((b"?", b"g", b"qC", b"qAttached", b"qfThreadInfo", b"qsThreadInfo",
                     b"QStartNoAckMode", b"qHostInfo", b"qProcessInfo", b"vMustReplyEmpty",
                     b"qOffsets", b"qSymbol::", b"vStopped", b"qTStatus",
                     b"QThreadSuffixSupported", b"QListThreadsInStopReply",
                     b"qGetWorkingDir", b"qVAttachOrWaitSupported", b"QEnableErrorStrings",
                     b"bs", b"bc"))

_BY_CHAR = {
    ord("m"): parse_m, ord("M"): parse_M, ord("X"): parse_X, ord("G"): parse_G,
    ord("p"): parse_p, ord("P"): parse_P, ord("c"): parse_resume, ord("s"): parse_resume,
    ord("C"): parse_resume, ord("S"): parse_resume, ord("Z"): parse_z, ord("z"): parse_z,
    ord("H"): parse_H, ord("T"): parse_T, ord("D"): parse_D,
}


def parse(body: bytes):
    """A command, Unknown(body) or None (malformed). Never raises."""
    try:
        return _parse(bytes(body))
    except Exception:             # a parser bug must not end the session
        return None


def _parse(body):
    if not body:
        return Unknown(body)
    if body in _SIMPLE:
        return Simple(body.decode("ascii"))
    if body.startswith(b"qAttached:"):
        return Simple("qAttached")
    fn = _BY_CHAR.get(body[0])
    if fn is not None:
        return fn(body)
    if body == b"k" or body.startswith(b"vKill;"):
        return parse_kill(body)
    if body.startswith(b"vCont"):
        return parse_vcont(body) if body == b"vCont?" or body.startswith(b"vCont;") \
            else Unknown(body)
    if body.startswith(b"qSupported"):
        return parse_qsupported(body)
    if body.startswith(b"qXfer:"):
        return parse_qxfer(body)
    if body.startswith(b"qRcmd,"):
        return parse_qrcmd(body)
    if body.startswith(b"vFile:"):
        return parse_vfile(body)
    if body.startswith(b"qMemoryRegionInfo:"):
        return _parse_addr_suffix(MemoryRegionInfo, body, b"qMemoryRegionInfo:")
    if body.startswith(b"qRegisterInfo"):
        return _parse_addr_suffix(RegisterInfo, body, b"qRegisterInfo")
    if body.startswith(b"qThreadExtraInfo,"):
        th = parse_thread(body[17:])
        return ThreadExtraInfo(th) if th is not None else None
    if body.startswith(b"vAttach;"):
        return Simple("vAttach")
    return Unknown(body)
