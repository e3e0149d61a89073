"""gdbstub/server.py over a FakeTarget (in memory): the packet groups follow the target's
capabilities, stop replies, register and memory round trips, host I/O limits, and a
hypothesis test that no packet sequence breaks a session."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ukdbg.arch import x86_64 as arch
from ukdbg.errors import TargetError
from ukdbg.gdbstub import packets as P
from ukdbg.gdbstub.server import GdbServer, SessionEnded
from ukdbg.target import (Breakpoint, Crashed, Exited, Interrupted, Killed, MemoryRegion,
                          Stepped, Watchpoint)

BASE = 0x100000


class FakeTarget:
    """A Target in memory: one RAM range at BASE, scripted stops."""

    def __init__(self, resumable=True, stops=()):
        self.regs = arch.Regs(rip=BASE + 0x20, rsp=0x7ffff8, rbp=0x7ffff0, rax=0x1234,
                              cs=8, ss=0x10, cr0=0x80010021)
        self.fpu = arch.Fpu()
        self.mem = bytearray(os.urandom(0x2000))
        self.stops = list(stops)
        self.steps = []
        self.sw, self.hw, self.watches = set(), set(), []
        self._resumable = resumable
        self.exe = os.path.abspath(__file__)

    # read side
    def read_registers(self):
        return self.regs.copy()

    def read_fpu(self):
        f = arch.Fpu()
        f.xmm = list(self.fpu.xmm)
        f.mxcsr = self.fpu.mxcsr
        return f

    def read_memory(self, addr, size):
        if not BASE <= addr < BASE + len(self.mem):
            raise TargetError(14, "unmapped")
        return bytes(self.mem[addr - BASE:addr - BASE + size])

    def memory_map(self):
        return [MemoryRegion(BASE, BASE + len(self.mem), "rwx", name="image")]

    def stop_reason(self):
        return Stepped()

    def exec_path(self):
        return self.exe

    def info(self):
        return {"app": "fake", "mem_size": len(self.mem)}

    # capabilities
    def writable(self):
        return self

    def resumable(self):
        return self if self._resumable else None

    def breakpoints(self):
        return self if self._resumable else None

    def watchpoints(self):
        return self if self._resumable else None

    def write_registers(self, regs):
        self.regs = regs.copy()

    def write_fpu(self, fpu):
        self.fpu = fpu

    def write_memory(self, addr, data):
        if not BASE <= addr <= addr + len(data) <= BASE + len(self.mem):
            raise TargetError(14, "unmapped")
        self.mem[addr - BASE:addr - BASE + len(data)] = data

    def resume(self, step=False):
        self.steps.append(step)
        return self.stops.pop(0) if self.stops else Stepped()

    def add_sw_breakpoint(self, a):
        self.sw.add(a)
        return True

    def remove_sw_breakpoint(self, a):
        return a in self.sw and not self.sw.discard(a)

    def add_hw_breakpoint(self, a):
        if len(self.hw) >= 4:
            return False
        self.hw.add(a)
        return True

    def remove_hw_breakpoint(self, a):
        return a in self.hw and not self.hw.discard(a)

    def add_watchpoint(self, kind, addr, size):
        self.watches.append((kind, addr, size))
        return True

    def remove_watchpoint(self, kind, addr, size):
        self.watches.remove((kind, addr, size))
        return True


class FakeChannel:
    running = False
    ctrl_c = False

    def __init__(self, chunks=(), end=None):
        self.chunks = list(chunks)
        self.out = bytearray()
        self.eof = False
        self.end = end                 # a Stop to raise as SessionEnded at the end

    def read(self):
        if self.chunks:
            return self.chunks.pop(0)
        if self.end is not None:
            raise SessionEnded(self.end)
        self.eof = True
        return b""

    def write(self, data):
        self.out += data


def session(packets, target=None, noack=True, end=None, raw=False):
    """Run a server over packets; returns (outcome, [reply bodies], target, channel)."""
    t = target or FakeTarget()
    stream = []
    if noack:
        stream.append(P.frame(b"QStartNoAckMode"))
    for p in packets:
        stream.append(p if raw else P.frame(p))
    ch = FakeChannel(stream, end=end)
    out = GdbServer(t, ch).serve(Stepped())
    replies = [b for k, b in P.PacketReader().feed(bytes(ch.out)) if k == P.PACKET]
    if noack:
        assert replies[0] == b"OK"
        replies = replies[1:]
    return out, replies, t, ch


def test_qsupported_follows_capabilities():
    _, (live,), _, _ = session([b"qSupported:multiprocess+;swbreak+"])
    _, (core,), _, _ = session([b"qSupported:multiprocess+"],
                               FakeTarget(resumable=False))
    for feat in (b"PacketSize=20000", b"QStartNoAckMode+", b"qXfer:features:read+",
                 b"qXfer:exec-file:read+", b"multiprocess+"):
        assert feat in live and feat in core
    for feat in (b"vContSupported+", b"swbreak+", b"hwbreak+"):
        assert feat in live and feat not in core


def test_read_only_target_refuses_running_and_breakpoints():
    out, r, t, _ = session([b"vCont?", b"Z0,100000,1", b"c", b"vCont;c", b"?"],
                           FakeTarget(resumable=False))
    assert r[:4] == [b"", b"", b"E26", b""]
    assert r[4].startswith(b"T05")
    assert out.kind == "disconnect"


def test_ack_mode_acks_and_resends_on_nak():
    out, r, _, ch = session([P.frame(b"?"), b"-"], noack=False, raw=True)
    assert ch.out.startswith(b"+$T05")
    assert r[0] == r[1]                        # resent after the NAK ('$-#2d' is a packet)


def test_bad_checksum_gets_a_nak():
    _, _, _, ch = session([b"$?#00"], noack=False, raw=True)
    assert ch.out == b"-"


def test_registers_round_trip():
    t = FakeTarget()
    g = session([b"g"], t)[1][0]
    raw = bytes.fromhex(g.decode())
    assert len(raw) == arch.GDB_G_SIZE
    assert raw[:8] == (0x1234).to_bytes(8, "little")
    new = bytearray(raw)
    new[8:16] = (0xdeadbeef).to_bytes(8, "little")           # rbx
    xmm2 = arch.GDB_REG_INDEX["xmm2"]
    _, r, t, _ = session([b"G" + bytes(new).hex().encode(), b"g",
                          b"P%x=%s" % (xmm2, bytes(range(16)).hex().encode()),
                          b"p%x" % xmm2, b"p0", b"p%x" % 999], t)
    assert r[0] == b"OK" and bytes.fromhex(r[1].decode()) == bytes(new)
    assert t.regs.rbx == 0xdeadbeef
    assert r[2] == b"OK" and r[3] == bytes(range(16)).hex().encode()
    assert t.fpu.xmm[2] == bytes(range(16))
    assert r[4] == (0x1234).to_bytes(8, "little").hex().encode()
    assert r[5] == b"E16"


def test_memory_read_write():
    t = FakeTarget()
    t.mem[0x100:0x200] = bytes(256)
    _, r, t, _ = session([b"m100100,100", b"M100000,3:010203", b"X100003,2:" +
                          P.escape(b"}#"), b"m100000,5", b"m0,4", b"M0,1:00",
                          b"m100000,0"], t)
    assert P.rle_decode(r[0]) == b"00" * 256
    assert r[1] == r[2] == b"OK"
    assert r[3] == b"010203" + b"}#".hex().encode()
    assert r[4] == b"E0e" and r[5] == b"E0e" and r[6] == b""


@pytest.mark.parametrize("stop,expect", [
    (Stepped(), b"T05thread:p1.1;06:f0ff7f0000000000;07:f8ff7f0000000000;"
                b"10:2000100000000000;"),
    (Breakpoint(0x100020), b"swbreak:;"),
    (Breakpoint(0x100020, hardware=True), b"hwbreak:;"),
    (Watchpoint("watch", 0x104000), b"watch:104000;"),
    (Watchpoint("rwatch", 0x104008), b"rwatch:104008;"),
    (Watchpoint("awatch", 0x104010), b"awatch:104010;"),
    (Interrupted(), b"T02thread"),
    (Crashed("exception", 11, "segv"), b"T0bthread"),
    (Crashed("exception", 7, "bus"), b"T0athread"),           # SIGBUS is gdb's 10
])
def test_stop_replies(stop, expect):
    _, r, t, _ = session([b"qSupported:multiprocess+", b"vCont;s:p1.1;c:p1.-1"],
                         FakeTarget(stops=[stop]))
    assert expect in r[1], r[1]
    assert t.steps == [True]


def test_exit_and_kill_end_the_session():
    out, r, _, _ = session([b"c"], FakeTarget(stops=[Exited(7)]))
    assert r == [b"W07"] and out.kind == "end" and isinstance(out.stop, Exited)
    out, r, _, _ = session([b"c"], FakeTarget(stops=[Killed(15)]))
    assert r == [b"X0f"] and out.kind == "end"
    out, r, _, _ = session([b"vKill;1", b"?"])
    assert r == [b"OK"] and out.kind == "end" and out.stop.signal == 9
    out, r, _, _ = session([b"D"])
    assert r == [b"OK"] and out.kind == "detach"


def test_a_fault_then_its_end_like_a_process():
    # Caught at the handler (signal), continued: the guest's handler ends it (W ff).
    out, r, t, _ = session([b"c", b"c"], FakeTarget(stops=[
        Crashed("exception", 11, "pf"), Crashed("trap", 11, "trap", status=255)]))
    assert r[0].startswith(b"T0b") and r[1] == b"Wff" and out.kind == "end"
    # A terminal crash (triple fault) is shown once; resuming reports the end without
    # running anything.
    out, r, t, _ = session([b"c", b"bt-is-gdb-side?", b"c"], FakeTarget(stops=[
        Crashed("triple-fault", 11, "triple")]))
    assert r[0].startswith(b"T0b") and r[2] == b"X0b" and t.steps == [False]


def test_session_ended_by_the_monitor():
    out, r, _, _ = session([b"?"], end=Killed(15))
    assert r[-1] == b"X0f" and out.kind == "end"


def test_breakpoints_and_watchpoints_reach_the_target():
    _, r, t, _ = session([b"Z0,100020,1", b"Z1,100030,1", b"Z2,104000,8", b"Z3,104008,4",
                          b"Z4,104010,40", b"z0,100020,1", b"z0,100020,1", b"Z2,1,0",
                          *[b"Z1,%x,1" % a for a in range(4)]])
    assert r[:7] == [b"OK"] * 6 + [b"E02"]
    assert r[7] == b"E16"                       # zero-length watchpoint
    assert r[8:] == [b"OK", b"OK", b"OK", b"E1c"]   # the fifth debug register
    assert t.sw == set() and t.hw == {0x100030, 0, 1, 2}
    assert t.watches == [("watch", 0x104000, 8), ("rwatch", 0x104008, 4),
                         ("awatch", 0x104010, 0x40)]


def test_xfer_objects():
    _, r, t, _ = session([b"qXfer:features:read:target.xml:0,40",
                          b"qXfer:features:read:target.xml:40,100000",
                          b"qXfer:features:read:other.xml:0,100",
                          b"qXfer:exec-file:read:1:0,1000",
                          b"qXfer:threads:read::0,1000", b"qXfer:libraries:read::0,10"])
    assert r[0][:1] == b"m" and r[1][:1] == b"l"
    xml = P.unescape(r[0][1:] + r[1][1:]).decode()
    assert xml.startswith('<?xml version="1.0"?>') and xml.endswith("</target>")
    assert 'name="r12"' in xml and 'name="cr8"' in xml and 'generic="pc"' in xml
    assert r[2] == b"E02"
    assert r[3] == b"l" + os.path.abspath(__file__).encode()
    assert b'<thread id="1"' in r[4]
    assert r[5] == b""


def test_host_io_shows_only_the_executable():
    exe = os.path.abspath(__file__).encode()
    _, r, t, _ = session([b"vFile:setfs:0", b"vFile:open:%s,0,0" % exe.hex().encode(),
                          b"vFile:pread:0,20,0", b"vFile:fstat:0", b"vFile:close:0",
                          b"vFile:close:0", b"vFile:open:%s,0,0" % b"/etc/passwd".hex().encode(),
                          b"vFile:open:%s,2,0" % exe.hex().encode(),
                          b"vFile:pread:7,1,0", b"vFile:unlink:%s" % exe.hex().encode()])
    with open(__file__, "rb") as f:
        head = f.read(0x20)
    assert r[0] == b"F0" and r[1] == b"F0"
    assert r[2] == b"F20;" + P.escape(head)
    st = P.unescape(r[3][4:])
    assert r[3].startswith(b"F40;") and int.from_bytes(st[28:36], "big") == \
        os.path.getsize(__file__)
    assert r[4] == b"F0" and r[5] == b"F-1,9"
    assert r[6] == b"F-1,2" and r[7] == b"F-1,d" and r[8] == b"F-1,9" and r[9] == b"F-1,1"


def test_monitor_output_and_errors():
    _, r, _, _ = session([b"qRcmd," + b"help".hex().encode(),
                          b"qRcmd," + b"bogus".hex().encode(),
                          b"qRcmd," + b"info".hex().encode()])
    texts, i = [], 0
    while i < len(r):
        t = b""
        while r[i].startswith(b"O") and r[i] != b"OK":
            t += bytes.fromhex(r[i][1:].decode())
            i += 1
        texts.append((t.decode(), r[i]))
        i += 1
    assert "monitor pt ADDR" in texts[0][0] and texts[0][1] == b"OK"
    assert "unknown monitor command 'bogus'" in texts[1][0] and texts[1][1] == b"E16"
    assert "image:      fake" in texts[2][0]


def test_lldb_queries():
    _, r, _, _ = session([b"qHostInfo", b"qProcessInfo", b"qMemoryRegionInfo:100010",
                          b"qMemoryRegionInfo:10", b"qMemoryRegionInfo:200000", b"qC",
                          b"qfThreadInfo", b"qsThreadInfo", b"QThreadSuffixSupported"])
    assert b"ptrsize:8" in r[0] and b"pid:1" in r[1]
    assert r[2] == b"start:100000;size:2000;permissions:rwx;"
    assert r[3] == b"start:0;size:100000;"
    assert r[4] == b"start:102000;size:%x;" % ((1 << 64) - 1 - 0x102000)
    assert r[5:8] == [b"QC1", b"m1", b"l"] and r[8] == b""


_BODIES = st.one_of(
    st.binary(max_size=30),
    st.builds(lambda p, s: p + s.encode(),
              st.sampled_from([b"m", b"M", b"X", b"g", b"G", b"p", b"P", b"Z0,", b"z1,",
                               b"Z2,", b"c", b"s", b"vCont;", b"vCont?", b"qXfer:",
                               b"qRcmd,", b"vFile:", b"H", b"T", b"?", b"qSupported:",
                               b"qMemoryRegionInfo:"]),
              st.text(alphabet="0123456789abcdef,:;=.p-", max_size=24)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_BODIES, max_size=25), st.lists(st.integers(1, 40), max_size=10))
def test_no_packet_sequence_breaks_a_session(bodies, splits):
    t = FakeTarget(stops=[Stepped(), Breakpoint(BASE), Interrupted()] * 20)
    stream = b"".join(P.frame(P.escape(b)) for b in bodies if not b.startswith((b"D", b"k")))
    chunks, pos = [], 0
    for n in splits:
        chunks.append(stream[pos:pos + n])
        pos += n
    chunks.append(stream[pos:])
    ch = FakeChannel([c for c in chunks if c])
    out = GdbServer(t, ch).serve(Stepped())          # must not raise
    assert out.kind in ("disconnect", "end", "detach")
    # Every reply is a well-formed packet.
    for k, _b in P.PacketReader().feed(bytes(ch.out)):
        assert k in (P.PACKET, P.ACK)


class ReverseTarget(FakeTarget):
    """A FakeTarget with reverse execution: bs/bc answer scripted stops."""

    def __init__(self, back):
        super().__init__()
        self.back = list(back)
        self.calls = []

    def reversible(self):
        return self

    def reverse(self, step):
        self.calls.append("bs" if step else "bc")
        return self.back.pop(0)


class _Edge(Stepped):
    __slots__ = ("replaylog",)

    def __init__(self, where):
        self.replaylog = where


def test_reverse_packets_follow_the_capability():
    _, (feats, bs, bc), _, _ = session([b"qSupported:swbreak+", b"bs", b"bc"])
    assert b"ReverseStep+" not in feats and b"ReverseContinue+" not in feats
    assert bs == b"" and bc == b""                 # unsupported: empty replies
    t = ReverseTarget([Stepped(), Breakpoint(BASE + 4), _Edge("begin"), _Edge("end"),
                       Watchpoint("watch", BASE + 0x100)])
    _, r, _, _ = session([b"qSupported:swbreak+", b"bs", b"bc", b"bs", b"bc", b"bc"], t)
    assert b"ReverseStep+" in r[0] and b"ReverseContinue+" in r[0]
    assert t.calls == ["bs", "bc", "bs", "bc", "bc"]
    assert r[1].startswith(b"T05") and b"swbreak" not in r[1]
    assert b"swbreak:;" in r[2]
    assert b"replaylog:begin;" in r[3] and b"replaylog:end;" in r[4]
    assert b"watch:%x;" % (BASE + 0x100) in r[5]
