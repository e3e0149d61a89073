"""gdbstub/commands.py: every parser on valid, malformed and overflowing input; a
property test that parse() is total (never raises, returns a command, Unknown or None)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ukdbg.gdbstub import commands as C
from ukdbg.gdbstub.packets import escape


@pytest.mark.parametrize("body,cmd", [
    (b"?", C.Simple("?")),
    (b"g", C.Simple("g")),
    (b"m100000,40", C.ReadMemory(0x100000, 0x40)),
    (b"mffffffffffffffff,1", C.ReadMemory((1 << 64) - 1, 1)),
    (b"M10,2:abcd", C.WriteMemory(0x10, b"\xab\xcd")),
    (b"X10,3:" + escape(b"}#$"), C.WriteMemory(0x10, b"}#$")),
    (b"X10,0:", C.WriteMemory(0x10, b"")),
    (b"G0011", C.WriteRegisters(b"\x00\x11")),
    (b"p10", C.ReadRegister(16)),
    (b"P7=0102030405060708", C.WriteRegister(7, bytes(range(1, 9)))),
    (b"c", C.Resume("c", 0, None)),
    (b"c100020", C.Resume("c", 0, 0x100020)),
    (b"s", C.Resume("s", 0, None)),
    (b"C0b", C.Resume("c", 11, None)),
    (b"S05;1000", C.Resume("s", 5, 0x1000)),
    (b"vCont?", C.Simple("vCont?")),
    (b"vCont;c", C.VCont((("c", 0, None),))),
    (b"vCont;s:p1.1;c:p1.-1", C.VCont((("s", 0, (1, 1)), ("c", 0, (1, -1))))),
    (b"vCont;C0b:1", C.VCont((("c", 11, (0, 1)),))),
    (b"vCont;t", C.VCont((("t", 0, None),))),
    (b"vCont;r100,200:1", C.VCont((("s", 0, (0, 1)),))),
    (b"Z0,100eff,1", C.Breakpoint(True, 0, 0x100eff, 1)),
    (b"z1,100eff,1", C.Breakpoint(False, 1, 0x100eff, 1)),
    (b"Z2,104000,4;X2,abcd", C.Breakpoint(True, 2, 0x104000, 4)),
    (b"Hgp0.0", C.SetThread("g", (0, 0))),
    (b"Hc-1", C.SetThread("c", (0, -1))),
    (b"Tp1.1", C.ThreadAlive((1, 1))),
    (b"D", C.Detach(None)),
    (b"D;1", C.Detach(1)),
    (b"k", C.Kill(None)),
    (b"vKill;1", C.Kill(1)),
    (b"qSupported:multiprocess+;swbreak+;xmlRegisters=i386;foo-",
     C.Supported({"multiprocess": True, "swbreak": True, "xmlRegisters": "i386",
                  "foo": False})),
    (b"qXfer:features:read:target.xml:0,ffb", C.XferRead("features", "target.xml", 0, 0xffb)),
    (b"qXfer:exec-file:read:1:10,20", C.XferRead("exec-file", "1", 0x10, 0x20)),
    (b"qRcmd,68656c70", C.Monitor("help")),
    (b"vFile:open:2f61,0,1c0", C.VFile("open", (b"/a", 0, 0x1c0))),
    (b"vFile:pread:0,1000,20", C.VFile("pread", (0, 0x1000, 0x20))),
    (b"vFile:close:3", C.VFile("close", (3,))),
    (b"vFile:setfs:0", C.VFile("setfs", (0,))),
    (b"qMemoryRegionInfo:100000", C.MemoryRegionInfo(0x100000)),
    (b"qAttached:1", C.Simple("qAttached")),
])
def test_valid_packets(body, cmd):
    assert C.parse(body) == cmd


@pytest.mark.parametrize("body", [
    b"m", b"m100000", b"mzz,4", b"m1,", b"m,4", b"m1,4,5", b"m11111111111111111,1",
    b"m1,1000000000", b"M10,2:abc", b"M10,3:abcd", b"M10,2abcd", b"Xzz,1:a", b"X10,2:a",
    b"X10,1:a}", b"Gabc", b"Gzz", b"p", b"pzz", b"p12345", b"P7", b"P7=", b"P7=1",
    b"Pzz=00", b"Cx", b"C", b"S05;zz", b"cxyz", b"vCont;", b"vCont;x",
    b"vCont;cc", b"vCont;s:", b"vCont;s:pz.1", b"vCont;Czz", b"vCont;r1", b"Z0,1",
    b"Z5,1,1", b"Zz,1,1", b"Z0,zz,1", b"H", b"Hg", b"Hgzz", b"T", b"Tx", b"Dx", b"D;zz",
    b"vKill;zz", b"qXfer:features:read:target.xml:0", b"qXfer:features:read:x:zz,1",
    b"qRcmd,6", b"qRcmd,zz", b"vFile:open:zz,0,0", b"vFile:open:2f", b"vFile:pread:1,2",
    b"vFile:close:", b"vFile:x", b"qMemoryRegionInfo:zz",
])
def test_malformed_packets_are_none(body):
    assert C.parse(body) is None


@pytest.mark.parametrize("body", [b"", b"qTfV", b"vRun;", b"vCont", b"QNonStop:1", b"x0,0",
                                  b"qXfer:features:write:a:0:00", b"vFile:pwrite:1,2,3",
                                  b"jThreadsInfo", b"!", b"R00"])
def test_unknown_packets(body):
    assert isinstance(C.parse(body), C.Unknown)


def test_thread_ids():
    assert C.parse_thread(b"p1.1") == (1, 1)
    assert C.parse_thread(b"p1") == (1, -1)
    assert C.parse_thread(b"p-1.-1") == (-1, -1)
    assert C.parse_thread(b"-1") == (0, -1)
    assert C.parse_thread(b"0") == (0, 0)
    assert C.parse_thread(b"") is None
    assert C.parse_thread(b"p.1") is None


@settings(max_examples=2000)
@given(st.binary(max_size=80))
def test_parse_is_total(body):
    r = C.parse(body)
    assert r is None or type(r).__module__ == C.__name__


@settings(max_examples=500)
@given(st.sampled_from([b"m", b"M", b"X", b"p", b"P", b"Z", b"z", b"vCont;", b"qXfer:",
                        b"vFile:", b"qRcmd,", b"H", b"C", b"S", b"D;", b"vKill;",
                        b"qSupported:", b"qMemoryRegionInfo:"]),
       st.text(alphabet="0123456789abcdefxyzpP.,:;=-+}*#$ ", max_size=40))
def test_parse_is_total_near_valid_syntax(prefix, rest):
    r = C.parse(prefix + rest.encode())
    assert r is None or type(r).__module__ == C.__name__


@given(st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFFF))
def test_read_memory_round_trip(addr, n):
    assert C.parse(b"m%x,%x" % (addr, n)) == C.ReadMemory(addr, n)


@given(st.integers(0, (1 << 64) - 1), st.binary(max_size=300))
def test_binary_write_round_trip(addr, data):
    body = b"X%x,%x:" % (addr, len(data)) + escape(data)
    assert C.parse(body) == C.WriteMemory(addr, data)
