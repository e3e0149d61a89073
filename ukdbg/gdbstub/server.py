"""ukdbg/gdbstub/server.py: GdbServer, one debugging session over one connection.

It knows the Target protocol (target.py) and nothing of KVM: the same code serves a
live VM and a core file. Packet groups follow the target's capabilities (writable,
resumable, breakpoints, watchpoints); anything else gets the empty "unsupported" reply.
Session states: Idle (stopped, serving packets) -> Running (inside target.resume(),
the channel turns a Ctrl-C byte into an interrupt) -> Idle ... -> Disconnected.
serve() returns an Outcome: the client detached or vanished (the guest runs on), or
the target ended (exit, kill, a signal to the monitor).
"""

import errno
import _struct as struct
import sys

from ..arch import x86_64 as arch
from ..errors import TargetError, UkdbgError
from ..target import (SIGKILL, SIGTRAP, Breakpoint, Crashed, Exited, Interrupted, Killed,
                      Watchpoint)
from . import commands as C
from . import monitor
from .hostio import HostIO
from .packets import (BAD_CHECKSUM, NACK, OVERSIZED, PACKET, PACKET_SIZE, PacketReader,
                      checksum, escape, frame, hex_rle)

# Linux signal numbers -> GDB's own (include/gdb/signals.def); equal up to 15 but BUS,
# SYS, USR1, USR2.
_GDB_SIGNAL = {7: 10, 31: 12, 10: 30, 12: 31}
WATCH_KEYS = {2: "watch", 3: "rwatch", 4: "awatch"}
_PC, _SP, _FP = arch.GDB_PC, arch.GDB_SP, arch.GDB_FP
# Expedited in every T reply: what gdb needs to show a frame after a step or a
# breakpoint without a `g` round trip.
EXPEDITE = (_FP, _SP, _PC)
_EXPEDITE_FMT = b"".join(b"%02x:%%s;" % n for n in EXPEDITE)
_FPU_FIRST, _FPU_LAST = arch.GDB_REG_INDEX["st0"], arch.GDB_REG_INDEX["mxcsr"]
_M64 = (1 << 64) - 1
_EXPEDITED = struct.Struct("<3Q")
# Parsed commands kept for a repeated request (vCont;s, Z0/z0 at every hit): namedtuples
# of ints, strings and tuples only, so one instance can serve many packets.
_REUSABLE = frozenset((C.VCont, C.Resume, C.Breakpoint, C.ReadMemory, C.ReadRegister,
                       C.XferRead, C.Simple, C.SetThread, C.ThreadAlive))


# DWARF/eh_frame register numbers (System V x86-64 psABI) and lldb's generic roles.
# lldb 14 has no x86-64 ABI plugin for an image it takes for OpenBSD (Solo5's
# "not OpenBSD" note) and then cannot unwind unless the description names them; gdb
# ignores the extra attributes.
_DWARF = dict({n: i for i, n in enumerate(("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp",
                                           "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
                                           "r14", "r15", "rip"))},
              **{f"xmm{i}": 17 + i for i in range(16)}, **{f"st{i}": 33 + i for i in range(8)},
              eflags=49, es=50, cs=51, ss=52, ds=53, fs=54, gs=55, fs_base=58, gs_base=59,
              mxcsr=64, fctrl=65, fstat=66)
_GENERIC = {"rip": "pc", "rsp": "sp", "rbp": "fp", "eflags": "flags"}
_XML = None


def target_xml() -> bytes:
    """arch.TARGET_XML with dwarf_regnum/ehframe_regnum/generic attributes."""
    global _XML
    if _XML is None:
        out = []
        for line in arch.TARGET_XML.split("\n"):
            if line.startswith('<reg name="'):
                name = line[11:line.index('"', 11)]
                extra = ""
                if name in _DWARF:
                    extra += f' dwarf_regnum="{_DWARF[name]}" ehframe_regnum="{_DWARF[name]}"'
                if name in _GENERIC:
                    extra += f' generic="{_GENERIC[name]}"'
                line = line[:-2] + extra + "/>"
            out.append(line)
        _XML = "\n".join(out).encode()
    return _XML


def gdb_signal(sig: int) -> int:
    return _GDB_SIGNAL.get(sig, sig) & 0xFF


class SessionEnded(Exception):
    """Raised by a channel when the monitor ends the session (a signal, a stop
    request); `stop` is the target's final Stop."""

    def __init__(self, stop):
        super().__init__(repr(stop))
        self.stop = stop


class Outcome:
    """How a session ended. kind: 'detach', 'disconnect' (the guest runs on) or 'end'
    (the target is gone: `stop` is its final Stop)."""
    __slots__ = ("kind", "stop")

    def __init__(self, kind, stop=None):
        self.kind = kind
        self.stop = stop

    def __repr__(self):
        return f"Outcome({self.kind}, {self.stop!r})"


def is_terminal(stop) -> bool:
    """A stop after which the guest cannot run on. A Crashed stop with cause
    'exception' was caught at the guest's exception handler: continuing runs it."""
    if isinstance(stop, (Exited, Killed)):
        return True
    return isinstance(stop, Crashed) and stop.cause != "exception"


class GdbServer:
    def __init__(self, target, chan, log=None, owner=False):
        self.t = target
        # The peer's uid is the monitor's (the listener checked it): only then may
        # `monitor core FILE` name a file outside --core-dir (docs/security.md).
        self.owner = owner
        self.chan = chan
        self.log = log                       # fn(str) for session events, or None
        self.w = target.writable()
        self.r = target.resumable()
        self.bp = target.breakpoints()
        self.wp = target.watchpoints() if hasattr(target, "watchpoints") else None
        # Reverse execution (issue 11): reverse(step) -> Stop, for bs and bc.
        self.rv = target.reversible() if hasattr(target, "reversible") else None
        self._expedited = getattr(target, "read_expedited", None)   # (rbp, rsp, rip)
        self.reader = PacketReader()
        self.ack = True
        self.multiprocess = False
        self.stop = None
        self.final = None                    # a terminal stop already shown as a signal
        self.fault_shown = False             # a guest exception was reported as a signal
        self.last = b""                      # last packet sent (for a '-' resend)
        self.hostio = HostIO([self._exec_path()], max_read=PACKET_SIZE // 2)
        self._regs = None
        self._fpu = None
        self._g = None
        # Replies gdb asks for at every stop, framed: body -> packet for constant
        # queries, plus prefetched ones (valid this stop); `_wire*` key the same
        # packets by the request's exact frame, so that a request read whole is
        # answered without parsing it (the hot path of stepping).
        self._static, self._wire_static = {}, {}
        self._cache, self._wire = {}, {}
        self._frames = {}                    # one whole packet's bytes -> its body
        self._parsed = {}                    # body -> command, for repeated requests
        self._prefetch_sp = None
        self._prefetched = None              # the prefetched packet, until gdb reads it
        self._stop_kind = None               # the class of the last stop reported
        self._no_prefetch = set()            # ... classes after which gdb read no line
        self._sp = None
        self.packets = 0                     # received, for tests and benchmarks

    # --- the loop -------------------------------------------------------------------------
    def serve(self, stop) -> Outcome:
        """Serve the client until it detaches or goes away, or the target ends.
        `stop` is the target's state when the client arrived (answered to `?`)."""
        self.stop = stop
        if is_terminal(stop):
            self.final = stop
        read, write, reader = self.chan.read, self.chan.write, self.reader
        try:
            while True:
                data = read()
                if not data:
                    return Outcome("disconnect")
                events = None
                if reader.state == 0:
                    if not self.ack:
                        pkt = self._wire.get(data)
                        if pkt is not None:  # a cached query, read as one packet
                            if pkt is self._prefetched:
                                self._prefetched = None
                            self.packets += 1
                            self.last = pkt
                            write(pkt)
                            continue
                    body = self._frames.get(data)
                    if body is not None:     # a packet seen before, read whole
                        events = ((PACKET, body),)
                if events is None:
                    events = reader.feed(data)
                    if len(data) <= 68 and len(events) == 1 and events[0][0] == PACKET \
                            and reader.state == 0 and data[:1] == b"$" \
                            and data[-3:-2] == b"#":
                        if len(self._frames) >= 256:     # bounded
                            self._frames.clear()
                        self._frames[bytes(data)] = events[0][1]
                for kind, body in events:
                    if kind == PACKET:
                        self.packets += 1
                        if self.ack:
                            self.chan.write(b"+")
                        out = self.handle(body)
                        if out is not None:
                            return out
                    elif kind == BAD_CHECKSUM:
                        if self.ack:
                            self.chan.write(b"-")
                    elif kind == OVERSIZED:
                        if self.ack:
                            self.chan.write(b"+")
                        self.send(b"E%02x" % errno.E2BIG)
                    elif kind == NACK and self.last:
                        self.chan.write(self.last)
                    # ACK: nothing to do; INTERRUPT while stopped: already stopped.
        except ConnectionError:
            return Outcome("disconnect")
        except SessionEnded as e:
            self._try_send(self._exit_packet(e.stop))
            return Outcome("end", e.stop)
        finally:
            self.hostio.close_all()

    def send(self, body: bytes) -> None:
        pkt = frame(body)
        self.last = pkt
        self.chan.write(pkt)

    def _keep(self, body, pkt, static=False) -> None:
        """Answer `body` with the framed `pkt` from now on (until _forget(), or for
        the session if static)."""
        wire = b"$%s#%02x" % (body, checksum(body))
        self._cache[body], self._wire[wire] = pkt, pkt
        if static:
            self._static[body], self._wire_static[wire] = pkt, pkt

    def _try_send(self, body):
        try:
            self.send(body)
        except (ConnectionError, OSError):
            pass

    def _note(self, msg):
        if self.log:
            self.log(msg)

    # --- dispatch -----------------------------------------------------------------------------
    def handle(self, body: bytes):
        """Answer one packet; returns an Outcome when the session ends."""
        cached = self._cache.get(body)
        if cached is not None:
            if cached is self._prefetched:
                self._prefetched = None
            self.last = cached
            self.chan.write(cached)
            return None
        cmd = self._parsed.get(body)
        if cmd is None:
            cmd = C.parse(body)
            if cmd is None:
                self.send(b"E%02x" % errno.EINVAL)
                return None
            if type(cmd) in _REUSABLE and len(body) <= 64:
                if len(self._parsed) >= 256:     # bounded, whatever a client sends
                    self._parsed.clear()
                self._parsed[body] = cmd
        fn = self._dispatch.get(type(cmd))
        if fn is None:
            self.send(b"")
            return None
        try:
            reply = fn(self, cmd)
        except TargetError as e:
            reply = b"E%02x" % (e.errno & 0xFF)
        except (ConnectionError, SessionEnded):
            raise
        except UkdbgError as e:
            self._note(f"gdb: {e}")
            reply = b"E%02x" % errno.EIO
        if isinstance(reply, Outcome):
            return reply
        if reply is not None:
            self.send(reply)
            if type(cmd) is C.XferRead and cmd.object == "threads":
                self._keep(bytes(body), self.last, static=True)   # asked at every stop
        if self._prefetch_sp is not None:
            self._prefetch()
        return None

    def _prefetch(self):
        """After a stop reply has gone out, while gdb digests it: the reads gdb sends
        next for the new frame (its thread list and the 64-byte stack line it caches
        for the frame id) are answered from here without a second look. Valid until
        the target runs or anything is written."""
        sp, self._prefetch_sp = self._prefetch_sp, None
        line = sp & ~0x3F
        try:
            pkt = frame(hex_rle(self.t.read_memory(line, 0x40)))
        except UkdbgError:
            return
        self._keep(b"m%x,40" % line, pkt)
        self._prefetched = pkt

    # --- simple queries -------------------------------------------------------------------------
    def _simple(self, cmd):
        name = cmd.name
        if name == "?":
            return self.stop_reply(self.stop)
        if name == "g":
            return self._g_reply()
        if name == "QStartNoAckMode":
            self.send(b"OK")
            self.ack = False
            return None
        if name == "qC":
            return b"QC" + self._tid()
        if name == "qfThreadInfo":
            return b"m" + self._tid()
        if name == "qsThreadInfo":
            return b"l"
        if name == "qAttached":
            return b"1"
        if name == "vCont?":
            return b"vCont;c;C;s;S;t" if self.r else b""
        if name == "qSymbol::":
            return b"OK"
        if name == "qOffsets":
            # The image runs at its link address. lldb needs this to place it: it takes
            # a Solo5 image for OpenBSD's and has no loader of its own for that.
            return b"Text=0;Data=0;Bss=0"
        if name == "qHostInfo":
            return self._host_info()
        if name == "qProcessInfo":
            return self._host_info() + b"pid:1;parent-pid:1;"
        if name == "vAttach":
            return self.stop_reply(self.stop)
        if name == "QListThreadsInStopReply":
            return b"OK"
        if name in ("bs", "bc") and self.rv is not None:
            return self._reverse(name == "bs")
        return b""

    def _tid(self) -> bytes:
        return b"p1.1" if self.multiprocess else b"1"

    def _host_info(self) -> bytes:
        # No triple: lldb then keeps the executable's own (a triple that differs from
        # the image's makes it drop the image).
        return b"ptrsize:8;endian:little;"

    def _supported(self, cmd):
        f = cmd.features
        self._static, self._wire_static = {}, {}
        self._forget()
        self.multiprocess = bool(f.get("multiprocess"))
        feats = [b"PacketSize=%x" % PACKET_SIZE, b"QStartNoAckMode+",
                 b"qXfer:features:read+", b"qXfer:exec-file:read+",
                 b"qXfer:threads:read+"]
        if getattr(self.t, "auxv", None) is not None:
            feats.append(b"qXfer:auxv:read+")
        if self.multiprocess:
            feats.append(b"multiprocess+")
        if self.r:
            feats.append(b"vContSupported+")
        if self.bp:
            feats += [b"swbreak+", b"hwbreak+"]
        if self.rv is not None:
            feats += [b"ReverseStep+", b"ReverseContinue+"]
        return b";".join(feats)

    # --- registers ----------------------------------------------------------------------------
    def _load_regs(self, fpu=True):
        """(Regs, Fpu) of this stop, read once; Fpu only when asked (an XSAVE read)."""
        if self._regs is None:
            self._regs = self.t.read_registers()
        if fpu and self._fpu is None:
            self._fpu = self.t.read_fpu()
        return self._regs, self._fpu

    def _invalidate(self):
        self._regs = self._fpu = self._g = None

    def _forget(self):
        """Drop prefetched replies (the target is about to change)."""
        if self._prefetched is not None:
            # Not read: gdb reads no stack line after this kind of stop (a breakpoint
            # hit at a function's entry, its own step off a breakpoint). Until it
            # does (_m), such stops prefetch nothing.
            self._no_prefetch.add(self._stop_kind)
            self._prefetched = None
        self._cache = self._static.copy()
        self._wire = self._wire_static.copy()
        self._prefetch_sp = None

    def _g_reply(self):
        if self._g is None:
            r, f = self._load_regs()
            self._g = arch.gdb_encode(r, f).hex().encode()
        return self._g

    def _p(self, cmd):
        if cmd.regnum >= len(arch.GDB_REGS):
            return b"E%02x" % errno.EINVAL
        r, f = self._load_regs(fpu=_FPU_FIRST <= cmd.regnum <= _FPU_LAST)
        return arch.gdb_reg_bytes(r, f, cmd.regnum).hex().encode()

    def _write_regs(self, apply):
        if not self.w:
            return b"E%02x" % errno.EROFS
        r, f = self._load_regs()
        r, f = r.copy(), _copy_fpu(f)
        try:
            apply(r, f)
        except ValueError:
            return b"E%02x" % errno.EINVAL
        old_r, old_f = self._regs, self._fpu
        self._forget()
        if r != old_r:
            self.w.write_registers(r)
        if f != old_f:
            self.w.write_fpu(f)
        self._invalidate()
        return b"OK"

    def _G(self, cmd):
        if len(cmd.data) > arch.GDB_G_SIZE:
            return b"E%02x" % errno.EINVAL
        return self._write_regs(lambda r, f: arch.gdb_decode(cmd.data, r, f))

    def _P(self, cmd):
        if cmd.regnum >= len(arch.GDB_REGS):
            return b"E%02x" % errno.EINVAL
        return self._write_regs(lambda r, f: arch.gdb_set_reg(r, f, cmd.regnum, cmd.data))

    # --- memory ------------------------------------------------------------------------------
    def _m(self, cmd):
        n = min(cmd.length, PACKET_SIZE // 2)
        if n == 0:
            return b""
        if self._no_prefetch and n == 0x40 and self._sp is not None and \
                cmd.addr == self._sp & ~0x3F:
            self._no_prefetch.discard(self._stop_kind)     # gdb wants it again
        return hex_rle(self.t.read_memory(cmd.addr, n))

    def _M(self, cmd):
        if not self.w:
            return b"E%02x" % errno.EROFS
        if cmd.data:
            self._forget()
            self.w.write_memory(cmd.addr, cmd.data)
            self._invalidate()
        return b"OK"

    # --- breakpoints and watchpoints ------------------------------------------------------------
    def _z(self, cmd):
        t = cmd.type
        if t in (0, 1):
            if not self.bp:
                return b""
            if t == 0:
                fn = self.bp.add_sw_breakpoint if cmd.insert else self.bp.remove_sw_breakpoint
            else:
                fn = self.bp.add_hw_breakpoint if cmd.insert else self.bp.remove_hw_breakpoint
            ok = fn(cmd.addr)
        else:
            if not self.wp:
                return b""
            if cmd.kind == 0:
                return b"E%02x" % errno.EINVAL
            fn = self.wp.add_watchpoint if cmd.insert else self.wp.remove_watchpoint
            ok = fn(WATCH_KEYS[t], cmd.addr, cmd.kind)
        if ok:
            return b"OK"
        # A removal of something not there is harmless (gdb may retry after a stop).
        return b"E%02x" % (errno.ENOSPC if cmd.insert else errno.ENOENT)

    # --- running ------------------------------------------------------------------------------
    def _resume_cmd(self, cmd):
        return self._resume(cmd.action, cmd.addr)

    def _vcont(self, cmd):
        if not self.r:
            return b""
        for action, _sig, thread in cmd.actions:
            if thread is None or (thread[0] in (0, -1, 1) and thread[1] in (0, -1, 1)):
                if action == "t":
                    return self.stop_reply(self.stop)
                return self._resume(action, None)
        return b"E%02x" % errno.EINVAL          # no action for our one thread

    def _resume(self, action, addr):
        if not self.r:
            return b"E%02x" % errno.ENOSYS
        if self.final is not None:
            # The guest cannot run on (it crashed for good): as for a process killed
            # by a signal, the next resume reports its end.
            self.send(self._exit_packet(self.final))
            return Outcome("end", self.final)
        if addr is not None and self.w:
            r, _ = self._load_regs(fpu=False)
            r = r.copy()
            r.rip = addr
            self.w.write_registers(r)
        self._invalidate()
        self._forget()
        self.chan.ctrl_c = False
        self.chan.stepping = action == "s"
        self.chan.running = True
        try:
            stop = self.r.resume(step=(action == "s"))
        finally:
            self.chan.running = False
        if self.chan.eof:
            # The client vanished while the guest ran (it is stopped now).
            self.stop = stop
            if is_terminal(stop):
                return Outcome("end", stop)
            return Outcome("disconnect")
        return self._report(stop)

    def _reverse(self, step):
        """bs / bc: the target goes back in its history; a guest that had ended or
        crashed runs again from there."""
        self._invalidate()
        self._forget()
        stop = self.rv.reverse(step)
        self.final = None
        self.fault_shown = False
        return self._report(stop)

    def _report(self, stop):
        """The stop reply for a resume, or the session's end."""
        self.stop = stop
        if isinstance(stop, (Exited, Killed)):
            self.send(self._exit_packet(stop))
            return Outcome("end", stop)
        if isinstance(stop, Crashed):
            if stop.cause == "exception":
                self.fault_shown = True
            elif self.fault_shown:
                # The guest's handler ran after the fault gdb was shown; it has
                # ended now (like a process after its fatal signal).
                self.send(self._exit_packet(stop))
                return Outcome("end", stop)
            else:
                self.final = stop
        reply = self.stop_reply(stop)
        self._stop_kind = stop.__class__
        if self._stop_kind not in self._no_prefetch:
            self._prefetch_sp = self._sp
        return reply

    def _kill(self, cmd):
        stop = Killed(SIGKILL, "gdb")
        if self.r and hasattr(self.r, "kill"):
            stop = self.r.kill() or stop
        # vKill wants OK; a plain `k` needs no answer, but gdb/lldb accept X09 for it.
        self._try_send(b"OK" if cmd.pid is not None else self._exit_packet(stop))
        return Outcome("end", stop)

    def _detach(self, cmd):
        self.send(b"OK")
        return Outcome("detach")

    # --- stop replies ------------------------------------------------------------------------
    def _exit_packet(self, stop) -> bytes:
        status = getattr(stop, "status", None)
        if isinstance(stop, Exited) or (isinstance(stop, Crashed) and status is not None):
            body = b"W%02x" % (status & 0xFF)
        else:
            body = b"X%02x" % gdb_signal(getattr(stop, "signal", SIGKILL) or SIGKILL)
        if self.multiprocess:
            body += b";process:1"
        return body

    def stop_reply(self, stop) -> bytes:
        if stop is None:
            stop = Interrupted()
        if isinstance(stop, (Exited, Killed)):
            return self._exit_packet(stop)
        sig = gdb_signal(stop.signal or SIGTRAP)
        parts = [b"T%02xthread:%s;" % (sig, self._tid())]
        try:
            fast = self._expedited
            if fast is not None:
                fp, sp, pc = fast()
            else:
                r, _ = self._load_regs(fpu=False)
                fp, sp, pc = r.rbp, r.rsp, r.rip
            h = _EXPEDITED.pack(fp & _M64, sp & _M64, pc & _M64).hex().encode()
            parts.append(_EXPEDITE_FMT % (h[:16], h[16:32], h[32:]))
            self._sp = sp
        except UkdbgError:
            pass
        edge = getattr(stop, "replaylog", None)
        if edge:
            parts.append(b"replaylog:%s;" % edge.encode())
        elif isinstance(stop, Breakpoint):
            parts.append(b"hwbreak:;" if stop.hardware else b"swbreak:;")
        elif isinstance(stop, Watchpoint):
            parts.append(b"%s:%x;" % (stop.kind.encode(), stop.addr))
        return b"".join(parts)

    # --- qXfer, monitor, host I/O, lldb queries --------------------------------------------------
    def _exec_path(self):
        fn = getattr(self.t, "exec_path", None)
        return fn() if fn else None

    def _xfer(self, cmd):
        if cmd.object == "features":
            if cmd.annex != "target.xml":
                return b"E%02x" % errno.ENOENT
            data = target_xml()
        elif cmd.object == "threads":
            # gdb refreshes its thread list at every stop: one packet this way
            # instead of qfThreadInfo + qsThreadInfo.
            data = (b'<?xml version="1.0"?>\n<threads><thread id="%s" core="0" '
                    b'name="vcpu0"/></threads>\n' % self._tid())
        elif cmd.object == "auxv":
            # lldb's POSIX loader places the executable from AT_ENTRY.
            fn = getattr(self.t, "auxv", None)
            data = fn() if fn else None
            if not data:
                return b""
        elif cmd.object == "exec-file":
            path = self._exec_path()
            if not path:
                return b"E%02x" % errno.ENOENT
            import os
            data = os.fsencode(os.path.abspath(path))
        else:
            return b""
        chunk = data[cmd.offset:cmd.offset + min(cmd.length, PACKET_SIZE // 2)]
        more = cmd.offset + len(chunk) < len(data)
        return (b"m" if more else b"l") + escape(chunk)

    def _monitor(self, cmd):
        # A monitor command may move the target (reverse execution's `goto`).
        self._invalidate()
        self._forget()
        try:
            text = monitor.run(self.t, cmd.command, owner=self.owner)
            ok = True
        except UkdbgError as e:
            text = f"error: {e}\n"
            ok = False
        data = text.encode("utf-8", "replace")
        step = PACKET_SIZE // 4
        for i in range(0, len(data), step):
            self.send(b"O" + data[i:i + step].hex().encode())
        return b"OK" if ok else b"E%02x" % errno.EINVAL

    def _vfile(self, cmd):
        return self.hostio.handle(cmd.op, cmd.args)

    def _region_info(self, cmd):
        """lldb's qMemoryRegionInfo from the target's memory map."""
        try:
            regions = sorted(self.t.memory_map(), key=lambda r: r.start)
        except UkdbgError:
            return b"E%02x" % errno.EIO
        prev_end = 0
        for reg in regions:
            if reg.start <= cmd.addr < reg.end:
                perms = "".join(c for c in reg.perms if c in "rwx")
                return b"start:%x;size:%x;permissions:%s;" % (
                    reg.start, reg.end - reg.start, perms.encode())
            if cmd.addr < reg.start:
                return b"start:%x;size:%x;" % (prev_end, reg.start - prev_end)
            prev_end = reg.end
        # The last gap ends at 2**64-1 (lldb's invalid address ends its region walks).
        return b"start:%x;size:%x;" % (prev_end, (1 << 64) - 1 - prev_end)

    def _set_thread(self, cmd):
        return b"OK"

    def _thread_alive(self, cmd):
        pid, tid = cmd.thread
        return b"OK" if tid in (1, -1, 0) else b"E%02x" % errno.ESRCH

    def _thread_extra(self, cmd):
        return b"vCPU 0".hex().encode()

    def _unknown(self, cmd):
        return b""

    def _register_info(self, cmd):
        return b""

    _dispatch = {
        C.Simple: _simple, C.Supported: _supported, C.ReadRegister: _p,
        C.WriteRegisters: _G, C.WriteRegister: _P, C.ReadMemory: _m, C.WriteMemory: _M,
        C.Breakpoint: _z, C.Resume: _resume_cmd, C.VCont: _vcont, C.Kill: _kill,
        C.Detach: _detach, C.XferRead: _xfer, C.Monitor: _monitor, C.VFile: _vfile,
        C.MemoryRegionInfo: _region_info, C.SetThread: _set_thread,
        C.ThreadAlive: _thread_alive, C.ThreadExtraInfo: _thread_extra,
        C.RegisterInfo: _register_info, C.Unknown: _unknown,
    }


def _copy_fpu(f):
    g = arch.Fpu()
    for k in arch.Fpu.__slots__:
        v = getattr(f, k)
        setattr(g, k, list(v) if isinstance(v, list) else v)
    return g


# --- serving a target that never runs (a core file) -----------------------------------------
def serve_target(target, address: str, announce=None, allow_remote=False) -> int:
    """Serve any Target on address until the client detaches or kills; returns 0.
    Used by `ukdbg core --gdb`: the target has no resumable() capability, so gdb gets
    no c/s/Z. announce(address) is called once listening (default: print how to
    attach)."""
    from .transport import Listener, SocketChannel
    lst = Listener(address, allow_remote=allow_remote)
    if lst.remote:
        sys.stderr.write(f"ukdbg: gdb: WARNING: serving on {lst.address}, which is not a "
                         "loopback address: anyone who can reach it can read the core "
                         "(the protocol has no authentication)\n")
    try:
        if announce is None:
            exe = _exec_hint(target)
            sys.stderr.write(f"ukdbg: serving {getattr(target, 'path', 'the target')} "
                             f"for gdb on {lst.address}: gdb {exe}-ex 'target remote "
                             f"{_gdb_address(lst.address)}'\n")
            sys.stderr.flush()
        else:
            announce(lst.address)
        while True:
            import select
            select.select([lst.sock], [], [])
            got = lst.accept()
            if got is None:
                continue
            conn, peer = got
            if peer.refused:
                from .transport import refusal, refuse_now
                refuse_now(conn, refusal(peer))
                continue
            chan = SocketChannel(conn)
            try:
                stop = target.stop_reason() if hasattr(target, "stop_reason") else None
                out = GdbServer(target, chan, owner=peer.owner).serve(stop)
            finally:
                chan.close()
            if out.kind in ("detach", "end"):
                return 0
    finally:
        lst.close()


def _exec_hint(target) -> str:
    fn = getattr(target, "exec_path", None)
    p = fn() if fn else None
    return f"{p} " if p else ""


def _gdb_address(address: str) -> str:
    """What to type after `target remote`."""
    if address.startswith("unix:"):
        return address[5:]
    return address
