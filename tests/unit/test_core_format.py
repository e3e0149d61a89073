"""coredump: the writer and the reader agree (registers, FPU, memory, map, UKDBG notes),
the file is sparse, placement is atomic and never overwrites, and the reader survives
any mutation or truncation of a core with a CoreFormatError (hypothesis)."""

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ukdbg.arch.x86_64 import REG_FIELDS, Fpu, Regs
from ukdbg.coredump import format as F
from ukdbg.coredump.reader import CoreFile
from ukdbg.coredump.writer import CoreSource, CoreWriteError, write_core, write_core_file
from ukdbg.errors import CoreFormatError, TargetError
from ukdbg.target import MemoryRegion

MiB = 1 << 20


def make_source(phys_size=4 * MiB) -> CoreSource:
    """A synthetic guest: identity-mapped image + an alias mapping, a few touched pages."""
    src = CoreSource()
    phys = bytearray(phys_size)
    phys[0x2000:0x2008] = struct.pack("<Q", 0x3003)          # a "page table" page
    phys[0x100000:0x100010] = b"\x55\x48\x89\xe5" + b"\x90" * 12  # "text"
    phys[0x101000:0x101004] = b"RODA"
    phys[0x200000:0x200800] = bytes(range(256)) * 8            # "data"
    src.phys = phys
    src.phys_extents = [(0x2000, 0x3000), (0x100000, 0x102000), (0x200000, 0x201000)]
    src.regions = [MemoryRegion(0x100000, 0x101000, "r-x", phys=0x100000),
                   MemoryRegion(0x101000, 0x102000, "r--", phys=0x101000),
                   MemoryRegion(0x200000, 0x400000, "rw-", phys=0x200000),
                   # the same physical data seen at a second virtual address
                   MemoryRegion(0x40000000, 0x40001000, "rw-", phys=0x200000)]
    src.patches = {0x100000: 0x55}
    phys[0x100000] = 0xCC                                      # a planted int3
    src.regs = Regs(**{f: (i + 1) * 0x1111111111111111 & (2**64 - 1)
                       for i, f in enumerate(REG_FIELDS)})
    src.regs.cs, src.regs.ss = 0x8, 0x10
    fpu = Fpu()
    fpu.xmm = [bytes([0x10 + k]) * 8 + bytes([0x80 + k]) * 8 for k in range(16)]
    src.fpu = fpu
    area = bytearray(4096)
    area[:512] = fpu.to_fxsave()
    area[512:520] = struct.pack("<Q", 3)
    src.xsave = (bytes(area), 1)
    src.signal, src.si_code, src.si_addr = 11, F.SEGV_MAPERR, 0
    src.crash = F.CrashInfo("crashed", 11, vector=14, error_code=2, fault_addr=0,
                            rip=0x100004, status=255, exit_reason=None, cause="trap",
                            message="guest trapped: #PF page fault")
    src.sregs = bytes(range(256)) + bytes(56)
    src.app_name, src.psargs, src.entry = "app.hvt", "/x/app.hvt a b", 0x100020
    src.version, src.argv, src.guest_cmdline = "0.1.0", ["ukdbg", "run", "app.hvt"], "a b"
    src.mem_size = phys_size
    src.image_path, src.image_size = "/x/app.hvt", 1234
    src.image_sha256, src.build_id = bytes(range(32)), b"\xaa\xbb"
    src.hypercalls, src.exits = {1: 3, 2: 7, 8: 1}, {2: 11}
    src.console, src.console_total = b"hello\nworld\n", 12
    return src


@pytest.fixture
def core(tmp_path):
    src = make_source()
    path = write_core_file(src, str(tmp_path / "app.1.core"))
    c = CoreFile.open(path)
    yield src, c, path
    c.close()


def test_registers_round_trip(core):
    src, c, _ = core
    r = c.read_registers()
    for f in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r15", "rip",
              "rflags", "fs_base", "gs_base", "cs", "ss"):
        assert getattr(r, f) == getattr(src.regs, f), f
    assert c.read_fpu() == src.fpu
    area, xcr0 = c.read_xsave()
    assert xcr0 == 3 and len(area) == 576           # x87+SSE: legacy area + header
    assert area[160 + 16 * 3:176 + 16 * 3] == src.fpu.xmm[3]


def test_memory_and_map_round_trip(core):
    _src, c, _ = core
    assert c.read_memory(0x101000, 4) == b"RODA"
    assert c.read_memory(0x200000, 512) == bytes(range(256)) * 2
    # the alias reads the same physical page
    assert c.read_memory(0x40000000, 16) == bytes(range(16))
    # untouched memory inside a region reads as zeros (a hole in the file)
    assert c.read_memory(0x300000, 64) == bytes(64)
    # a read that runs off the end of a region comes back short; nothing -> EFAULT
    assert len(c.read_memory(0x3FFFF0, 64)) == 16
    with pytest.raises(TargetError):
        c.read_memory(0x500000, 4)
    m = [(r.start, r.end, r.perms, r.phys) for r in c.memory_map()]
    assert m == [(0x100000, 0x101000, "r-x", 0x100000), (0x101000, 0x102000, "r--", 0x101000),
                 (0x200000, 0x400000, "rw-", 0x200000),
                 (0x40000000, 0x40001000, "rw-", 0x200000)]


def test_planted_breakpoints_are_hidden(core):
    _src, c, _ = core
    assert c.read_memory(0x100000, 4) == b"\x55\x48\x89\xe5"
    assert c.read_physical(0x100000, 1) == b"\x55"


def test_physical_image_holds_page_tables(core):
    _src, c, _ = core
    assert c.read_physical(0x2000, 8) == struct.pack("<Q", 0x3003)
    assert c.touched(0x2000) and not c.touched(0x5000)
    with pytest.raises(TargetError):
        c.read_physical(4 * MiB - 4, 8)


def test_ukdbg_notes_round_trip(core):
    src, c, _ = core
    u = c.ukdbg
    assert u.crash.cause == "trap" and u.crash.vector == 14 and u.crash.error_code == 2
    assert u.crash.fault_addr == 0 and u.crash.status == 255 and u.crash.exit_reason is None
    assert u.argv == src.argv and u.version == "0.1.0" and u.guest_cmdline == "a b"
    assert u.image_path == "/x/app.hvt" and u.image_size == 1234
    assert u.image_sha256 == bytes(range(32)).hex() and u.build_id == "aabb"
    assert u.hypercalls == {1: 3, 2: 7, 8: 1} and u.exits == {2: 11}
    assert u.console == b"hello\nworld\n" and u.console_total == 12
    assert u.sregs["cs"]["base"] == int.from_bytes(bytes(range(8)), "little")
    stop = c.stop_reason()
    assert stop.signal == 11 and stop.cause == "trap" and stop.regs.rip == src.regs.rip
    info = c.info()
    assert info["app"] == "/x/app.hvt" and info["entry"] == 0x100020
    assert c.siginfo[0] == 11 and c.siginfo[2] == F.SEGV_MAPERR
    assert c.exec_path() == "/x/app.hvt"
    assert c.writable() is None and c.resumable() is None and c.breakpoints() is None


def test_prstatus_layout_is_linux(core):
    _src, c, _ = core
    n = c.find_note("CORE", F.NT_PRSTATUS)
    assert len(n.desc) == 336
    assert struct.unpack_from("<h", n.desc, 12)[0] == 11            # pr_cursig
    # pr_reg starts at 112: r15 first, rip at index 16 (user_regs_struct)
    r15, = struct.unpack_from("<Q", n.desc, 112)
    rip, = struct.unpack_from("<Q", n.desc, 112 + 16 * 8)
    assert r15 == c.read_registers().r15 and rip == c.read_registers().rip
    ps = c.find_note("CORE", F.NT_PRPSINFO)
    assert len(ps.desc) == 136 and ps.desc[40:47] == b"app.hvt"
    assert c.auxv[F.AT_ENTRY] == 0x100020


def test_openbsd_notes_for_lldb(core):
    """namesz 5 over "OpenBSD\\0" (docs/core-format.md), after the LINUX note, with
    OpenBSD's struct reg order and the same values as the Linux notes."""
    src, _c, path = core
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    pos = data.index(b"OpenBSD\0") - F.NHDR.size
    found, linux = {}, data.index(b"LINUX\0")
    assert linux < pos
    while True:
        namesz, descsz, ntype = F.NHDR.unpack_from(data, pos)
        if data[pos + 12:pos + 20] != b"OpenBSD\0":
            break
        assert namesz == 5
        found[ntype] = data[pos + 20:pos + 20 + descsz]
        pos += 20 + -(-descsz // 4) * 4
    assert sorted(found) == [10, 11, 20, 21]
    regs = struct.unpack("<24Q", found[F.NT_OPENBSD_REGS])
    assert regs[0] == src.regs.rdi and regs[14] == src.regs.rax
    assert regs[16] == src.regs.rip and regs[17] == src.regs.rflags
    assert regs[18:20] == (0x8, 0x10)
    assert found[F.NT_OPENBSD_FPREGS] == src.fpu.to_fxsave()
    assert found[F.NT_OPENBSD_AUXV] == F.pack_auxv(0x100020)
    signo, = struct.unpack_from("<I", found[F.NT_OPENBSD_PROCINFO], 8)
    assert signo == 11


def test_file_is_sparse(tmp_path):
    src = make_source(phys_size=64 * MiB)
    path = write_core_file(src, str(tmp_path / "big.core"))
    st = os.stat(path)
    touched = sum(hi - lo for lo, hi in src.phys_extents)
    assert st.st_size > 64 * MiB
    assert st.st_blocks * 512 <= touched + 64 * 1024
    assert oct(st.st_mode & 0o777) == "0o600"


def test_never_overwrites(tmp_path):
    src = make_source()
    p = str(tmp_path / "a.core")
    assert write_core_file(src, p) == p
    assert write_core_file(src, p) == p + ".1"
    assert write_core_file(src, p) == p + ".2"
    with pytest.raises(CoreWriteError, match="already exists"):
        write_core_file(src, p, unique=False)
    assert sorted(os.listdir(tmp_path)) == ["a.core", "a.core.1", "a.core.2"]


def test_unwritable_place_is_one_line_and_leaves_nothing(tmp_path):
    src = make_source()
    with pytest.raises(CoreWriteError) as e:
        write_core_file(src, str(tmp_path / "missing" / "a.core"))
    assert "\n" not in str(e.value) and "No such file" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_write_error_removes_the_partial_file(tmp_path, monkeypatch):
    src = make_source()
    real = os.pwrite
    calls = []

    def failing(fd, data, off):
        calls.append(off)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(fd, data, off)
    monkeypatch.setattr(os, "pwrite", failing)
    with pytest.raises(CoreWriteError, match="No space left on device"):
        write_core_file(src, str(tmp_path / "a.core"))
    assert os.listdir(tmp_path) == []


# --- robustness ------------------------------------------------------------------------
def test_foreign_and_broken_files(tmp_path):
    def err(data):
        p = tmp_path / "x"
        p.write_bytes(data)
        with pytest.raises(CoreFormatError) as e:
            CoreFile.open(str(p))
        assert "\n" not in str(e.value)
        return str(e.value)
    assert "too short" in err(b"")
    assert "bad magic" in err(b"#!/bin/sh\n" * 10)
    assert "not a core" in err(open("/bin/true", "rb").read() if os.path.exists("/bin/true")
                               else b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00" + bytes(60))
    with pytest.raises(CoreFormatError, match="cannot open"):
        CoreFile.open(str(tmp_path / "nope"))
    with pytest.raises(CoreFormatError, match="regular file"):
        CoreFile.open(str(tmp_path))


def test_linux_core_without_ukdbg_notes_is_refused(tmp_path):
    src = make_source()
    with open(tmp_path / "c", "wb") as f:
        write_core(src, f.fileno())
    data = bytearray((tmp_path / "c").read_bytes())
    i = data.find(b"UKDBG\0")
    while i >= 0:                       # rename every UKDBG note: a foreign core
        data[i:i + 5] = b"OTHER"
        i = data.find(b"UKDBG\0", i + 1)
    (tmp_path / "c").write_bytes(data)
    with pytest.raises(CoreFormatError, match="not a core written by ukdbg"):
        CoreFile.open(str(tmp_path / "c"))


def test_truncated_core(tmp_path):
    src = make_source()
    p = write_core_file(src, str(tmp_path / "t.core"))
    size = os.path.getsize(p)
    for cut in (size - 1, size // 2, 4096, 1000, 100, 63):
        os.truncate(p, cut)
        with pytest.raises(CoreFormatError) as e:
            CoreFile.open(p)
        assert "\n" not in str(e.value)


def _small_core() -> bytes:
    src = make_source(phys_size=0x300000)
    src.regions = [r for r in src.regions if r.phys < 0x300000]
    src.regions[2] = MemoryRegion(0x200000, 0x300000, "rw-", phys=0x200000)
    src.regions[3] = MemoryRegion(0x40000000, 0x40001000, "rw-", phys=0x200000)
    import tempfile
    with tempfile.TemporaryFile() as f:
        write_core(src, f.fileno())
        f.seek(0)
        return f.read()


SMALL = None


def small():
    global SMALL
    if SMALL is None:
        SMALL = _small_core()
    return SMALL


def _exercise(c):
    """Everything a user of the Target does; only TargetError may come out."""
    c.read_registers()
    c.read_fpu()
    c.read_xsave()
    c.memory_map()
    c.stop_reason()
    c.info()
    c.exec_path()
    for r in c.memory_map()[:4]:
        for a in (r.start, r.end - 1):
            try:
                c.read_memory(a, 64)
            except TargetError:
                pass
    try:
        c.read_physical(0x2000, 8)
        c.translate(0x100000)
    except TargetError:
        pass


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_cores(tmp_path, data):
    """Flip, overwrite and truncate bytes of the headers and notes: either a clean
    CoreFormatError or a core that reads without any other exception."""
    raw = bytearray(small())
    _t, _f, off, _v, _p, filesz, _m, _a = F.PHDR.unpack_from(raw, F.EHDR.size)
    head = off + filesz                          # mutate headers and notes
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["byte", "u32", "u64"]))
        pos = data.draw(st.integers(0, head - 8))
        if kind == "byte":
            raw[pos] = data.draw(st.integers(0, 255))
        elif kind == "u32":
            raw[pos:pos + 4] = struct.pack("<I", data.draw(
                st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 336, 4096,
                                 data.draw(st.integers(0, 2**32 - 1))])))
        else:
            raw[pos:pos + 8] = struct.pack("<Q", data.draw(
                st.sampled_from([0, 2**64 - 1, 2**63, 0x1000, len(raw),
                                 data.draw(st.integers(0, 2**64 - 1))])))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    p = tmp_path / "fuzz.core"
    p.write_bytes(raw)
    try:
        c = CoreFile.open(str(p))
    except CoreFormatError as e:
        assert "\n" not in str(e)
        return
    try:
        _exercise(c)
    finally:
        c.close()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_fuzz_garbage(tmp_path, blob):
    p = tmp_path / "g.core"
    p.write_bytes(b"\x7fELF\x02\x01\x01\x00" + blob if blob[:1] == b"E" else blob)
    try:
        c = CoreFile.open(str(p))
    except CoreFormatError:
        return
    _exercise(c)
    c.close()


def test_siginfo_codes():
    assert F.siginfo_code(11, "trap", 14, 2) == F.SEGV_MAPERR
    assert F.siginfo_code(11, "trap", 14, 3) == F.SEGV_ACCERR
    assert F.siginfo_code(8, "trap", 0, 0) == F.FPE_INTDIV
    assert F.siginfo_code(4, "trap", 6, None) == F.ILL_ILLOPN
    assert F.siginfo_code(6, "abort", None, None) == F.SI_TKILL
    assert F.siginfo_code(3, "signal", None, None) == F.SI_USER
    assert F.siginfo_code(11, "readonly", None, None) == F.SEGV_ACCERR
    assert F.siginfo_code(7, "unmapped", None, None) == F.BUS_ADRERR
    assert F.siginfo_code(11, "triple-fault", None, None) == F.SI_KERNEL


def test_xstate_trimmed_to_xcr0():
    area = bytes(4096)
    assert len(F.pack_xstate(area, 1)) == 576
    assert len(F.pack_xstate(area, 7)) == 832                     # + AVX
    assert len(F.pack_xstate(area, 0xE7)) == 2688                 # + AVX-512
    x = F.pack_xstate(area, 7)
    assert struct.unpack_from("<Q", x, 464)[0] == 7


def test_unnamed_tmpfile_or_fallback_leave_only_the_core(tmp_path, monkeypatch):
    """O_TMPFILE (nothing visible until linked), and the named fallback for a
    filesystem without it: both end with exactly the core, mode 0600."""
    import errno
    from ukdbg.coredump import writer
    src = make_source()
    p = write_core_file(src, str(tmp_path / "a.core"))
    assert os.listdir(tmp_path) == ["a.core"] and os.stat(p).st_mode & 0o777 == 0o600
    real_open = os.open

    def no_tmpfile(path, flags, *a, **kw):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *a, **kw)
    monkeypatch.setattr(writer.os, "open", no_tmpfile)
    p2 = write_core_file(src, str(tmp_path / "a.core"))
    assert p2 == str(tmp_path / "a.core.1")
    assert sorted(os.listdir(tmp_path)) == ["a.core", "a.core.1"]
    CoreFile.open(p2).close()
