"""ukdbg/tender/modules/trace.py: --trace[=FILE] and --trace-summary, strace for hypercalls.

Imported only when asked for: it wraps the entries of m.hypercalls (and watches HALT
through a halt hook), so a run without tracing runs exactly the code it would without
this module. One line per hypercall, decoded from the guest's argument struct:
  0.001234 block_read(storage, off=4096, len=512) = OK <0.000021>
(seconds since the guest started, the call, its result, its duration in seconds).
"""

import os
import time

from ...errors import GuestMemoryError, UkdbgError
from .. import abi

STRING_MAX = 64            # puts() bytes shown, as strace -s
RET_NAMES = {abi.SOLO5_R_OK: "OK", abi.SOLO5_R_AGAIN: "AGAIN", abi.SOLO5_R_EINVAL: "EINVAL",
             abi.SOLO5_R_EUNSPEC: "EUNSPEC"}
_ESC = {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x22: '\\"', 0x5C: "\\\\", 0x00: "\\0"}


def c_string(data: bytes) -> str:
    """strace-style quoting of guest bytes."""
    out = []
    for b in data:
        if b in _ESC:
            out.append(_ESC[b])
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def _ret(code) -> str:
    return RET_NAMES.get(code, str(code))


def _device(m, handle) -> str:
    devs = m.devices
    if 1 <= handle <= len(devs):
        return devs[handle - 1].name
    return f"handle={handle}"


# --- decoders: args(m, gpa) -> str (before the call); result(m, gpa) -> (str, error?) ----
def _walltime_args(m, gpa):
    return "walltime()"


def _walltime_res(m, gpa):
    ns = m.mem.unpack(abi.HC_WALLTIME_ST, gpa)[0]
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}", False


def _puts_args(m, gpa):
    data, n = m.mem.unpack(abi.HC_PUTS_ST, gpa)
    try:
        s = '"' + c_string(m.mem.read(data, min(n, STRING_MAX))) + '"'
        if n > STRING_MAX:
            s += "..."
    except GuestMemoryError:
        s = f"{data:#x}"
    return f"puts({s}, {n})"


def _puts_res(m, gpa):
    return str(m.mem.unpack(abi.HC_PUTS_ST, gpa)[1]), False


def _poll_args(m, gpa):
    timeout_ns = m.mem.unpack(abi.HC_POLL_ST, gpa)[0]
    return f"poll(timeout={timeout_ns / 1e9:.3f}s)"


def _poll_res(m, gpa):
    ready_set, ret = abi.POLL_OUT.unpack(m.mem.read(gpa + abi.POLL_OUT_OFF, abi.POLL_OUT.size))
    s = f"{ret} ready"
    if ready_set:
        s += " [" + ", ".join(_device(m, i) for i in range(64) if ready_set >> i & 1) + "]"
    return s, False


def _block_args(name):
    def args(m, gpa):
        handle, off, _data, n, _ = m.mem.unpack(abi.HC_BLOCK_ST, gpa)
        return f"{name}({_device(m, handle)}, off={off}, len={n})"
    return args


def _block_res(m, gpa):
    ret = m.mem.unpack(abi.HC_BLOCK_ST, gpa)[4]
    return _ret(ret), ret != abi.SOLO5_R_OK


def _net_write_args(m, gpa):
    handle, _data, n, _ = m.mem.unpack(abi.HC_NET_ST, gpa)
    return f"net_write({_device(m, handle)}, len={n})"


def _net_write_res(m, gpa):
    ret = m.mem.unpack(abi.HC_NET_ST, gpa)[3]
    return _ret(ret), ret != abi.SOLO5_R_OK


def _net_read_args(m, gpa):
    handle, _data, n, _ = m.mem.unpack(abi.HC_NET_ST, gpa)
    return f"net_read({_device(m, handle)}, size={n})"


def _net_read_res(m, gpa):
    _h, _d, _n, ret = m.mem.unpack(abi.HC_NET_ST, gpa)
    if ret == abi.SOLO5_R_OK:
        got = abi.NET_LEN_RET.unpack(m.mem.read(gpa + abi.NET_LEN_RET_OFF,
                                                abi.NET_LEN_RET.size))[0]
        return f"OK len={got}", False
    return _ret(ret), True


DECODERS = {
    abi.HC_WALLTIME: (_walltime_args, _walltime_res),
    abi.HC_PUTS: (_puts_args, _puts_res),
    abi.HC_POLL: (_poll_args, _poll_res),
    abi.HC_BLOCK_WRITE: (_block_args("block_write"), _block_res),
    abi.HC_BLOCK_READ: (_block_args("block_read"), _block_res),
    abi.HC_NET_WRITE: (_net_write_args, _net_write_res),
    abi.HC_NET_READ: (_net_read_args, _net_read_res),
}


class Tracer:
    def __init__(self, m, opts):
        self.m = m
        self.lines = opts.trace is not None
        self.summary = opts.trace_summary
        self.fd = 2
        self.own_fd = False
        if opts.trace not in (None, "-", ""):
            try:
                self.fd = os.open(opts.trace, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                  | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise UkdbgError(f"--trace={opts.trace}: {e.strerror}") from None
            self.own_fd = True
        # nr -> [calls, errors, seconds]
        self.counts = {nr: [0, 0, 0.0] for nr in abi.HC_NAMES}

    def emit(self, line: str) -> None:
        try:
            os.write(self.fd, line.encode())
        except OSError:
            pass

    def stamp(self, t) -> str:
        m = self.m
        return f"{t - m.started if m.started else 0.0:12.6f}"

    def wrap(self, nr, fn):
        args_of, result_of = DECODERS.get(nr, (None, None))
        name = abi.HC_NAMES.get(nr, str(nr))
        counts = self.counts.setdefault(nr, [0, 0, 0.0])
        lines = self.lines
        clock = time.monotonic
        emit = self.emit
        stamp = self.stamp

        def traced(m, gpa):
            call = None
            if lines:
                try:
                    call = args_of(m, gpa) if args_of else f"{name}({gpa:#x})"
                except GuestMemoryError:
                    call = f"{name}({gpa:#x})"
            t0 = clock()
            try:
                stop = fn(m, gpa)
            except GuestMemoryError as e:
                dt = clock() - t0
                counts[0] += 1
                counts[1] += 1
                counts[2] += dt
                if lines:
                    emit(f"{stamp(t0)} {call} = ? <bad guest pointer: {e}>\n")
                raise
            dt = clock() - t0
            counts[0] += 1
            counts[2] += dt
            err = False
            if result_of is not None and (lines or nr >= abi.HC_BLOCK_WRITE):
                try:
                    res, err = result_of(m, gpa)
                except GuestMemoryError:
                    res, err = "?", True
            else:
                res = "?"
            if err:
                counts[1] += 1
            if lines:
                emit(f"{stamp(t0)} {call} = {res} <{dt:.6f}>\n")
            return stop
        return traced

    def wrap_missing(self, nr):
        """A hypercall with no handler still gets its line before the guest ends."""
        from ..endings import bad_hypercall
        name = abi.HC_NAMES.get(nr)

        def refused(m, gpa):
            c = self.counts.setdefault(nr, [0, 0, 0.0])
            c[0] += 1
            c[1] += 1
            if self.lines:
                why = "not enabled: no such device" if name else "no such hypercall"
                self.emit(f"{self.stamp(time.monotonic())} {name or f'hypercall_{nr}'}"
                          f"({gpa:#x}) = ? <{why}>\n")
            return bad_hypercall(m, nr, gpa)
        return refused

    def on_halt(self, m, status, cookie) -> None:
        c = self.counts[abi.HC_HALT]
        c[0] += 1
        if self.lines:
            st = status & 0xFFFFFFFF
            if st & 0x80000000:
                st -= 1 << 32
            extra = f", cookie={cookie:#x}" if cookie else ""
            self.emit(f"{self.stamp(time.monotonic())} halt(status={st}{extra}) = ?\n")

    def end(self, m, stop) -> None:
        if self.summary:
            self.emit(summary_table(self.counts))
        if self.own_fd:
            os.close(self.fd)
            self.own_fd = False
            self.fd = -1


def summary_table(counts) -> str:
    """strace -c: % time, seconds, usecs/call, calls, errors, name; by time, then calls.
    By hand, not rich's Table: importing rich.table+console costs 81-187 ms (min-median of
    15, this loaded 2-CPU host) plus ~10 ms to render, at the end of a run whose whole
    ukdbg import is 24 ms; a rich version gave the same text (checked on 300 tables)."""
    rows = [(c[2], c[0], c[1], abi.HC_NAMES.get(nr, f"hypercall_{nr}"))
            for nr, c in counts.items() if c[0]]
    rows.sort(key=lambda r: (-r[0], -r[1], r[3]))
    total_t = sum(r[0] for r in rows)
    total_n = sum(r[1] for r in rows)
    total_e = sum(r[2] for r in rows)
    sep = "------ ----------- ----------- --------- --------- ----------------\n"
    out = ["% time     seconds  usecs/call     calls    errors hypercall\n", sep]
    for t, n, e, name in rows:
        pct = 100.0 * t / total_t if total_t else 0.0
        out.append(f"{pct:6.2f} {t:11.6f} {round(t * 1e6 / n):11d} {n:9d} "
                   f"{e if e else '':>9} {name}\n")
    out.append(sep)
    out.append(f"{100.0 if total_t else 0.0:6.2f} {total_t:11.6f} "
               f"{round(total_t * 1e6 / total_n) if total_n else 0:11d} {total_n:9d} "
               f"{total_e:9d} total\n")
    return "".join(out)


def setup(m, opts) -> None:
    t = Tracer(m, opts)
    m.tracer = t
    table = m.hypercalls
    for nr, fn in enumerate(table):
        if fn is not None:
            table[nr] = t.wrap(nr, fn)
        elif nr != abi.HC_HALT:
            table[nr] = t.wrap_missing(nr)
    m.halt_hooks.append(t.on_halt)
    m.ending_hooks.append(t.end)
