"""tender/loader.py: every rule of hvt-abi.md §13-§15, on mutated fixture images."""

import struct

import pytest

from ukdbg.elf import NHDR, PF_W, PF_X, PHDR, PT_LOAD, PT_NOTE, ElfFile
from ukdbg.errors import ExecutableError
from ukdbg.kvm.memory import GuestMemory
from ukdbg.tender import abi
from ukdbg.tender.loader import load, plan_segments, read_image
from ukdbg.tender.manifest import Manifest


@pytest.fixture
def hello(app):
    with open(app("hello"), "rb") as f:
        return bytearray(f.read())


def write(tmp_path, data, name="x.hvt"):
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return str(p)


def phdrs(data):
    e = ElfFile(bytes(data))
    return [(e.phoff + i * PHDR.size, s) for i, s in enumerate(e.segments)]


def set_phdr(data, off, **kw):
    fields = list(PHDR.unpack_from(data, off))
    names = ["type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align"]
    for k, v in kw.items():
        fields[names.index(k)] = v
    PHDR.pack_into(data, off, *fields)


def note_desc(data, ntype):
    for off, s in phdrs(data):
        if s.type == PT_NOTE and s.filesz >= 20:
            namesz, descsz, t = NHDR.unpack_from(data, s.offset)
            if t == ntype and data[s.offset + 12:s.offset + 18] == b"Solo5\0":
                return off, s
    raise AssertionError("note not found")


def rejects(tmp_path, data, msg):
    with pytest.raises(ExecutableError, match=msg):
        img = read_image(write(tmp_path, data))
        plan_segments(img, 64 << 20)


def test_fixture_is_accepted(hello, tmp_path):
    img = read_image(write(tmp_path, hello))
    assert img.abi_version == 2 and img.entry >= 0x100000
    segs = plan_segments(img, 64 << 20)
    assert segs and all(s.start % 4096 == 0 for s in segs)


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.__setitem__(slice(0, 4), b"\x7fELG"), "bad magic"),
    (lambda d: d.__setitem__(4, 1), "not a 64-bit"),
    (lambda d: d.__setitem__(5, 2), "not a little-endian"),
    (lambda d: struct.pack_into("<H", d, 16, 3), "position-independent"),
    (lambda d: struct.pack_into("<H", d, 16, 4), "not an executable"),
    (lambda d: struct.pack_into("<H", d, 18, 183), "not x86-64"),
    (lambda d: struct.pack_into("<I", d, 20, 2), "unsupported ELF version"),
    (lambda d: struct.pack_into("<H", d, 54, 40), "malformed ELF header"),
    (lambda d: struct.pack_into("<H", d, 56, 0), "no program headers"),
    (lambda d: struct.pack_into("<Q", d, 32, 1 << 40), "outside the file"),
])
def test_header_rules(hello, tmp_path, mutate, msg):
    mutate(hello)
    rejects(tmp_path, hello, msg)


def test_truncated_file(hello, tmp_path):
    rejects(tmp_path, hello[:40], "too small")
    rejects(tmp_path, hello[:200], "outside the file")


def test_entry_must_be_in_guest_memory(hello, tmp_path):
    struct.pack_into("<Q", hello, 24, 0x1000)
    rejects(tmp_path, hello, "entry point 0x1000")


def test_abi_note_rules(hello, tmp_path):
    off, s = note_desc(hello, abi.NOTE_ABI1)
    d = bytearray(hello)
    struct.pack_into("<I", d, s.offset + 20, 3)          # target virtio
    rejects(tmp_path, d, "not for the solo5-hvt target .*virtio")
    d = bytearray(hello)
    struct.pack_into("<I", d, s.offset + 24, 1)          # ABI version 1
    rejects(tmp_path, d, "unsupported ABI version 1")
    d = bytearray(hello)
    struct.pack_into("<I", d, s.offset + 8, 0x12345)     # no ABI1 note at all
    rejects(tmp_path, d, "no Solo5 ABI information")
    d = bytearray(hello)
    struct.pack_into("<I", d, s.offset + 4, 100)         # descsz beyond the max (32)
    rejects(tmp_path, d, "descriptor size 100 is invalid")
    d = bytearray(hello)
    set_phdr(d, off, filesz=10)                          # PT_NOTE smaller than a header
    rejects(tmp_path, d, "note segment too small")


def test_manifest_rules(hello, tmp_path):
    off, s = note_desc(hello, abi.NOTE_MFT1)
    d = bytearray(hello)
    struct.pack_into("<I", d, s.offset + 8, 0x777)
    rejects(tmp_path, d, "no Solo5 manifest")
    d = bytearray(hello)
    struct.pack_into("<I", d, s.offset + 24, 2)          # mft version
    rejects(tmp_path, d, "manifest is invalid: version 2")
    d = bytearray(hello)
    struct.pack_into("<I", d, s.offset + 28, 0)          # 0 entries
    rejects(tmp_path, d, "0 entries")
    d = bytearray(hello)
    struct.pack_into("<I", d, s.offset + 4, 4 + 8 + 104 + 8)
    rejects(tmp_path, d, "invalid")     # descsz past the segment, or size mismatch


def test_manifest_validation_directly():
    entry0 = bytearray(104)
    struct.pack_into("<I", entry0, 68, abi.MFT_RESERVED_FIRST)
    dev = bytearray(104)
    dev[:7] = b"storage"
    struct.pack_into("<I", dev, 68, abi.MFT_DEV_BLOCK_BASIC)
    good = struct.pack("<II", 1, 2) + entry0 + dev
    m = Manifest(good)
    assert [(d.index, d.name, d.type_name) for d in m.devices] == [(1, "storage", "BLOCK_BASIC")]
    bad = bytearray(good)
    bad[8 + 104 + 96] = 1                               # attached in the file
    with pytest.raises(ExecutableError, match="marked attached"):
        Manifest(bytes(bad))
    bad = bytearray(good)
    bad[8 + 104 + 67] = ord("x")                        # name not NUL-terminated
    with pytest.raises(ExecutableError, match="NUL-terminated"):
        Manifest(bytes(bad))
    bad = bytearray(good)
    bad[8] = ord("a")                                   # entry 0 not the reserved one
    with pytest.raises(ExecutableError, match="reserved entry"):
        Manifest(bytes(bad))
    with pytest.raises(ExecutableError, match="65 entries"):
        Manifest(struct.pack("<II", 1, 65) + bytes(65 * 104))


def first_load(data):
    for off, s in phdrs(data):
        if s.type == PT_LOAD and s.filesz:
            return off, s


def test_segment_rules(hello, tmp_path):
    off, s = first_load(hello)
    for kw, msg in [
        (dict(vaddr=0x1000, paddr=0x1000), "below 0x100000"),
        (dict(align=3), "not a power of two"),
        (dict(align=0), "not a power of two"),
        (dict(memsz=1), "smaller than p_filesz"),
        (dict(flags=PF_W | PF_X | 4), "WRITE and EXEC"),
        (dict(vaddr=0x100010, align=16), "not 4 KiB aligned"),
        (dict(offset=len(hello) - 16), "past the end of the file"),
    ]:
        d = bytearray(hello)
        set_phdr(d, off, **kw)
        rejects(tmp_path, d, msg)


def test_segment_must_fit_in_memory(hello, tmp_path):
    off, s = [(o, s) for o, s in phdrs(hello) if s.type == PT_LOAD and s.filesz][-1]
    d = bytearray(hello)
    set_phdr(d, off, vaddr=(64 << 20) - 0x1000, paddr=(64 << 20) - 0x1000, memsz=0x2000)
    rejects(tmp_path, d, "does not fit in guest memory")


def test_overlapping_segments(hello, tmp_path):
    loads = [(off, s) for off, s in phdrs(hello) if s.type == PT_LOAD and s.filesz]
    (off2, s2) = loads[1]
    d = bytearray(hello)
    set_phdr(d, off2, vaddr=loads[0][1].vaddr, paddr=loads[0][1].vaddr)
    rejects(tmp_path, d, "overlaps|ascending")


def test_load_copies_segments_and_marks_readonly(app):
    img = read_image(app("hello"))
    mem = GuestMemory(8 << 20)
    try:
        load(img, mem)
        text = img.segments[0]
        data = ElfFile.open(app("hello")).data
        assert mem.read(text.vaddr, 64) == data[text.offset:text.offset + 64]
        assert mem.readonly and mem.readonly[0][0] == text.start
        assert img.kernel_end == max(s.end for s in img.segments)
    finally:
        mem.close()
