"""ukdbg/tender/loader.py: check and load a Solo5 hvt ELF image (hvt-abi.md §13, §15).

read_image() parses the notes before the memory size is known (the manifest decides
which options are valid); load() then checks the segments against the memory size and
copies them into GuestMemory.
"""

from ..elf import (EM_X86_64, ET_DYN, ET_EXEC, PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE,
                   ElfFile, ElfFormatError)
from ..errors import ExecutableError
from ..files import IMAGE_MAX, read_regular
from . import abi
from .manifest import Manifest

PAGE = 4096


class LoadedSegment:
    __slots__ = ("vaddr", "offset", "filesz", "memsz", "flags", "start", "end")

    def __init__(self, vaddr, offset, filesz, memsz, flags, start, end):
        self.vaddr, self.offset, self.filesz, self.memsz = vaddr, offset, filesz, memsz
        self.flags, self.start, self.end = flags, start, end

    @property
    def perms(self) -> str:
        return (("r" if self.flags & PF_R else "-") + ("w" if self.flags & PF_W else "-")
                + ("x" if self.flags & PF_X else "-"))


class Image:
    """A checked hvt unikernel: its ELF, ABI version and manifest."""

    def __init__(self, path: str, elf: ElfFile, abi_version: int, manifest: Manifest):
        self.path = path
        self.elf = elf
        self.abi_version = abi_version
        self.manifest = manifest
        self.entry = elf.entry
        self.segments = []          # filled by load()
        self.kernel_end = 0


def _bad(path, msg):
    return ExecutableError(f"{path}: {msg}")


def _check_header(path: str, elf: ElfFile) -> None:
    if elf.version != 1:
        raise _bad(path, f"unsupported ELF version {elf.version}")
    if elf.ehsize != 64 or elf.phentsize != 56:
        raise _bad(path, "malformed ELF header (e_ehsize/e_phentsize)")
    if elf.phnum < 1:
        raise _bad(path, "ELF image has no program headers")
    if elf.machine != EM_X86_64:
        raise _bad(path, f"ELF image is for machine {elf.machine}, not x86-64")
    if elf.type == ET_DYN:
        raise _bad(path, "ELF image is position-independent (ET_DYN); hvt needs ET_EXEC "
                         "(link with -no-pie)")
    if elf.type != ET_EXEC:
        raise _bad(path, f"ELF image is not an executable (e_type {elf.type})")


def _solo5_note(path: str, elf: ElfFile, ntype: int, max_desc: int, align: int):
    """The desc payload of the first Solo5 note of `ntype` (elf_load_note), or None."""
    for i, seg in enumerate(elf.segments):
        if seg.type != PT_NOTE:
            continue
        if seg.filesz < 12:
            raise _bad(path, f"phdr[{i}]: note segment too small ({seg.filesz} bytes)")
        if seg.filesz < 20:
            continue
        raw = elf._slice(seg.offset, 20, f"phdr[{i}] note")
        namesz = int.from_bytes(raw[0:4], "little")
        descsz = int.from_bytes(raw[4:8], "little")
        t = int.from_bytes(raw[8:12], "little")
        if namesz != 6 or raw[12:18] != b"Solo5\0" or t != ntype:
            continue
        if descsz < 1 or descsz > max_desc or seg.filesz < 20 + descsz:
            raise _bad(path, f"phdr[{i}]: note descriptor size {descsz} is invalid")
        off = (20 + align - 1) & ~(align - 1)
        length = descsz - (off - 20)
        if length <= 0:
            raise _bad(path, f"phdr[{i}]: note does not fall within valid size")
        return elf._slice(seg.offset + off, length, f"phdr[{i}] note descriptor")
    return None


def read_image(path: str) -> Image:
    """Open and check an hvt image's header, ABI1 and MFT1 notes (the §13 order)."""
    data = read_regular(path, IMAGE_MAX, "an hvt image", error=ExecutableError)
    try:
        elf = ElfFile(data, path)
        _check_header(path, elf)
        abi1 = _solo5_note(path, elf, abi.NOTE_ABI1, abi.ABI1_MAX_DESC, 4)
        if abi1 is None:
            raise _bad(path, "no Solo5 ABI information found in executable "
                             "(is this a Solo5 unikernel?)")
        if len(abi1) < 8:
            raise _bad(path, "Solo5 ABI note is too short")
        target, version = abi1[0:4], abi1[4:8]
        target = int.from_bytes(target, "little")
        version = int.from_bytes(version, "little")
        if target != abi.HVT_ABI_TARGET:
            name = abi.ABI_TARGET_NAMES.get(target, str(target))
            raise _bad(path, f"executable is not for the solo5-hvt target (it is built "
                             f"for {name})")
        if version != abi.HVT_ABI_VERSION:
            raise _bad(path, f"executable requests unsupported ABI version {version} "
                             f"(this monitor implements version {abi.HVT_ABI_VERSION})")
        mft = _solo5_note(path, elf, abi.NOTE_MFT1, abi.MFT1_MAX_DESC, 8)
        if mft is None:
            raise _bad(path, "no Solo5 manifest found in executable")
        try:
            manifest = Manifest(mft)
        except ExecutableError as e:
            raise _bad(path, str(e)) from None
    except ElfFormatError as e:
        raise _bad(path, str(e)) from None
    return Image(path, elf, version, manifest)


def plan_segments(image: Image, mem_size: int) -> list:
    """The §15 segment checks; returns the LoadedSegments to copy."""
    path, elf = image.path, image.elf
    if not abi.GUEST_MIN_BASE <= elf.entry < mem_size:
        raise _bad(path, f"entry point {elf.entry:#x} is outside guest memory "
                         f"[{abi.GUEST_MIN_BASE:#x}, {mem_size:#x})")
    out = []
    prev_end = abi.GUEST_MIN_BASE
    prev_vaddr = 0
    for i, s in enumerate(elf.segments):
        if s.type != PT_LOAD or s.filesz == 0:
            continue
        where = f"phdr[{i}] (vaddr {s.vaddr:#x})"
        if s.vaddr < abi.GUEST_MIN_BASE:
            raise _bad(path, f"{where} is below {abi.GUEST_MIN_BASE:#x}")
        if s.vaddr < prev_vaddr:
            raise _bad(path, f"{where}: segments are not in ascending order")
        if s.align == 0 or s.align & (s.align - 1):
            raise _bad(path, f"{where}: alignment {s.align:#x} is not a power of two")
        start = s.vaddr & -s.align
        if start < abi.GUEST_MIN_BASE or start < prev_end:
            raise _bad(path, f"{where} overlaps the previous segment or low memory")
        if s.vaddr >= mem_size or s.vaddr + s.filesz > mem_size:
            raise _bad(path, f"{where} does not fit in guest memory ({mem_size:#x} bytes)")
        if s.memsz < s.filesz:
            raise _bad(path, f"{where}: p_memsz is smaller than p_filesz")
        end = (s.vaddr + s.memsz + s.align - 1) & -s.align
        if end > mem_size:
            raise _bad(path, f"{where} does not fit in guest memory ({mem_size:#x} bytes)")
        if start % PAGE or end % PAGE:
            raise _bad(path, f"{where} is not 4 KiB aligned")
        if s.flags & PF_W and s.flags & PF_X:
            raise _bad(path, f"{where} requests WRITE and EXEC permissions")
        if s.offset + s.filesz > len(elf.data):
            raise _bad(path, f"{where}: file contents lie past the end of the file")
        out.append(LoadedSegment(s.vaddr, s.offset, s.filesz, s.memsz, s.flags, start, end))
        prev_end = end
        prev_vaddr = s.vaddr
    if not out:
        raise _bad(path, "no loadable segments")
    return out


def load(image: Image, mem) -> None:
    """Copy the image into GuestMemory `mem` (§15): p_filesz bytes at p_vaddr; the rest
    of each segment is already zero. Records the read-only ranges and kernel_end."""
    segs = plan_segments(image, mem.size)
    data = image.elf.data
    for s in segs:
        mem.write(s.vaddr, memoryview(data)[s.offset:s.offset + s.filesz])
        if not s.flags & PF_W:
            mem.protect(s.start, s.end)
    image.segments = segs
    image.kernel_end = max(s.end for s in segs)
