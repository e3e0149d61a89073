"""The recording format (docs/replay.md), the trap-site scanner and the instruction
emulation, and the replay cursor: no KVM needed."""

import json
import os

import pytest

from ukdbg.replay import format as F
from ukdbg.replay import traps
from ukdbg.replay.replayer import Cursor


def write(path, events, end=True, limit=None, per_chunk=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    w = F.Writer(fd, limit)
    w.add(F.R_META, json.dumps({"format": 1}).encode())
    w.add(F.R_IMAGE, b"\x7fELF" + bytes(100))
    w.add(F.R_CPUID, b"")
    w.flush()
    for i, e in enumerate(events):
        w.add(F.R_TRAP, F.TRAP_ST.pack(F.T_RDTSC, 0x100000 + i, e, 0))
        if per_chunk:
            w.flush()
    if end:
        w.add(F.R_END, json.dumps({"stop": {"type": "Exited", "status": 0},
                                   "exit": 0}).encode())
        w.close()
    else:
        w.flush()
        os.close(fd)
    return w


def test_round_trip(tmp_path):
    p = str(tmp_path / "a.rec")
    write(p, range(1000))
    r = F.Recording(p)
    assert r.complete and not r.truncated and not r.limited
    assert r.meta == {"format": 1} and r.image.startswith(b"\x7fELF")
    assert len(r.events) == 1001
    assert F.TRAP_ST.unpack(r.events[5][1]) == (F.T_RDTSC, 0x100005, 5, 0)


def test_every_cut_is_a_prefix_or_a_clean_error(tmp_path):
    p = str(tmp_path / "a.rec")
    write(p, range(50), per_chunk=True)
    data = open(p, "rb").read()
    q = str(tmp_path / "cut.rec")
    last = -1
    for n in range(0, len(data), 7):
        open(q, "wb").write(data[:n])
        try:
            r = F.Recording(q)
        except F.RecordingError as e:
            assert "boot state" in str(e) or "bad magic" in str(e)
            continue
        assert r.truncated and not r.complete
        assert len(r.events) >= last             # a longer prefix never has fewer
        last = len(r.events)
        for i, (t, payload) in enumerate(r.events):
            assert F.TRAP_ST.unpack(payload)[2] == i
    assert last >= 45


def test_any_flipped_byte_is_caught(tmp_path):
    p = str(tmp_path / "a.rec")
    write(p, range(200))
    data = open(p, "rb").read()
    q = str(tmp_path / "bad.rec")
    for pos in range(F.HEADER.size, len(data), max(1, len(data) // 97)):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        open(q, "wb").write(bad)
        try:
            r = F.Recording(q)
        except F.RecordingError:
            continue
        # a flipped length field may read as a cut file: then it is a strict prefix
        assert r.truncated and len(r.events) < 201


def test_limit_mark_and_a_bad_version(tmp_path):
    p = str(tmp_path / "a.rec")
    write(p, range(20000), end=False, limit=4000, per_chunk=True)
    assert os.path.getsize(p) <= 4000
    r = F.Recording(p)
    assert r.limited and not r.truncated and 0 < len(r.events) < 20000
    open(p, "wb").write(F.HEADER.pack(F.MAGIC, 7, 0, 0))
    with pytest.raises(F.RecordingError, match="version 7"):
        F.Recording(p)


def test_hc_records_round_trip():
    b = F.encode_hc(7, F.HC_STOP, 0x1234, b"a" * 32, b"b" * 32, b"data", 99, b"{}")
    assert F.decode_hc(b) == (7, F.HC_STOP, 0x1234, b"a" * 32, b"b" * 32, b"data", 99, b"{}")
    with pytest.raises(ValueError):
        F.decode_hc(b[:F.HC_HEAD.size + 10])


# --- trap sites -------------------------------------------------------------------------
def test_scanner_finds_instructions_and_ignores_lookalike_bytes():
    code = bytes.fromhex(
        "0f31"                  # rdtsc
        "b80f310000"            # mov eax, 0x310f: 0F 31 inside an immediate
        "0f01f9"                # rdtscp
        "480fc7f0"              # rdrand rax
        "0fc7f9"                # rdseed ecx
        "66410fc7f3"            # rdrand r11w
        "f30fc7f8"              # rdpid rax: not ours
        "c3")
    sites = traps.scan_segment(code, 0x100000)
    got = [(s.gva - 0x100000, F.TRAP_NAMES[s.kind], s.length, s.reg, s.bits)
           for s in sites]
    assert got == [(0, "rdtsc", 2, None, 0), (7, "rdtscp", 3, None, 0),
                   (10, "rdrand", 4, "rax", 64), (14, "rdseed", 3, "rcx", 32),
                   (17, "rdrand", 5, "r11", 16)]
    assert traps.scan_segment(b"\x90" * 64 + b"\xc3", 0) == []


class K:
    FIELDS = ("rax", "rcx", "rdx", "r11", "rip", "rflags")

    def __init__(self):
        self.rax = self.rcx = self.rdx = self.r11 = 0xFFFFFFFFFFFFFFFF
        self.rip = 0x100000
        self.rflags = 0x2 | 0x800 | 0x40


def test_emulation_sets_registers_as_the_cpu_would():
    k = K()
    traps.apply(k, traps.Site(0x100000, F.T_RDTSCP, 3), 0x1122334455667788, 7)
    assert (k.rax, k.rdx, k.rcx, k.rip) == (0x55667788, 0x11223344, 7, 0x100003)
    k = K()
    traps.apply(k, traps.Site(0x100000, F.T_RDRAND, 5, "r11", 16), 0xABCD, 1)
    assert k.r11 == 0xFFFFFFFFFFFFABCD and k.rflags == 0x3 and k.rip == 0x100005
    k = K()
    traps.apply(k, traps.Site(0x100000, F.T_RDSEED, 3, "rcx", 32), 0x12345678, 0)
    assert k.rcx == 0x12345678 and k.rflags == 0x2


def test_cursor_save_restore_is_an_immutable_value():
    c = Cursor([(F.R_TRAP, b"")] * 10)
    c.index, c.console = 4, 100
    s = c.save()
    assert c.position() == (4, 100)
    c.index, c.console = 9, 300
    c.restore(s)
    assert c.position() == (4, 100) and s == (4, 100)
    with pytest.raises(ValueError):
        c.restore((11, 0))



def test_meta_from_a_reencoded_file_is_checked_as_it_is_used(tmp_path):
    """CRCs catch damage; a file re-encoded with nonsense decodes, and each field is
    then refused where it is read (no traceback: RecordingError or ValueError)."""
    p = str(tmp_path / "a.rec")
    write(p, range(3))
    r = F.Recording(p)
    assert r.meta == {"format": 1}
    from ukdbg.replay.replayer import describe_event
    assert describe_event(F.R_TRAP, b"\x01") == "a malformed record (type 11)"
    assert describe_event(F.R_END, b"{") == "a malformed record (type 13)"


def test_scanner_sweeps_from_the_function_start_it_is_given():
    # data in front of the function throws a sweep from the segment start out of step
    # (48 b8 = mov rax, imm64 swallows the function); the function's start is known
    code = bytes.fromhex("48b8" + "55" "4889e5" "0f31" "5d" "c3" + "90" * 8)
    assert traps.scan_segment(code, 0x1000) == []
    sites = traps.scan_segment(code, 0x1000, lambda addr: 0x1002)
    assert [(s.gva, s.kind) for s in sites] == [(0x1006, F.T_RDTSC)]
