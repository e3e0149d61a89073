"""ukdbg/elf.py: a small, strict ELF64 reader (headers, program headers, notes, symbols).

The run path uses this instead of pyelftools (which takes ~40 ms to import here);
the inspector uses pyelftools for DWARF. Every offset read from the file is checked
against the file size, so a malformed image raises ElfFormatError, never IndexError.
"""

import _struct as struct  # not struct.py: one import less at start-up

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
NHDR = struct.Struct("<III")

ET_EXEC, ET_DYN, ET_CORE = 2, 3, 4
EM_X86_64 = 62
PT_LOAD, PT_NOTE, PT_INTERP = 1, 4, 3
PF_X, PF_W, PF_R = 1, 2, 4
SHT_SYMTAB, SHT_NOTE = 2, 7
STT_FUNC, STT_OBJECT = 2, 1


def iter_notes(raw: bytes):
    """Yield (name, type, desc_offset, descsz) for each note in raw (a PT_NOTE's bytes;
    name and desc padded to 4). Raises ElfFormatError for a note past the end."""
    pos = 0
    while pos + NHDR.size <= len(raw):
        namesz, descsz, ntype = NHDR.unpack_from(raw, pos)
        name_off = pos + NHDR.size
        desc_off = name_off + ((namesz + 3) & ~3)
        if desc_off + descsz > len(raw):
            raise ElfFormatError("a note runs past the end of its segment")
        name = raw[name_off:name_off + namesz].split(b"\0", 1)[0].decode("latin-1")
        yield name, ntype, desc_off, descsz
        pos = desc_off + ((descsz + 3) & ~3)


class ElfFormatError(ValueError):
    pass


class Segment:
    __slots__ = ("type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align")

    def __init__(self, t, flags, offset, vaddr, paddr, filesz, memsz, align):
        self.type, self.flags, self.offset, self.vaddr = t, flags, offset, vaddr
        self.paddr, self.filesz, self.memsz, self.align = paddr, filesz, memsz, align


class Symbol:
    __slots__ = ("name", "value", "size", "type")

    def __init__(self, name, value, size, type_):
        self.name, self.value, self.size, self.type = name, value, size, type_

    def __repr__(self):
        return f"Symbol({self.name!r}, {self.value:#x}, {self.size})"


class ElfFile:
    """An ELF64 little-endian image held in memory (`data`)."""

    def __init__(self, data: bytes, path: str = "<memory>"):
        self.data = data
        self.path = path
        if len(data) < EHDR.size:
            raise ElfFormatError("file is too small to be an ELF executable")
        (ident, self.type, self.machine, self.version, self.entry, self.phoff, self.shoff,
         self.flags, self.ehsize, self.phentsize, self.phnum, self.shentsize, self.shnum,
         self.shstrndx) = EHDR.unpack_from(data, 0)
        if ident[:4] != b"\x7fELF":
            raise ElfFormatError("not an ELF file (bad magic)")
        self.ident = ident
        if ident[4] != 2:
            raise ElfFormatError("not a 64-bit ELF file")
        if ident[5] != 1:
            raise ElfFormatError("not a little-endian ELF file")
        self._segments = None
        self._symbols = None
        self._sorted = None

    @classmethod
    def open(cls, path: str, max_size: int = 1 << 30) -> "ElfFile":
        """Only a regular file of at most max_size bytes (ukdbg/files.py)."""
        from .files import read_regular
        return cls(read_regular(path, max_size, "an ELF file", error=ElfFormatError), path)

    def _slice(self, off: int, size: int, what: str) -> bytes:
        if off < 0 or size < 0 or off + size > len(self.data):
            raise ElfFormatError(f"{what} lies outside the file (offset {off:#x}, "
                                 f"size {size:#x}, file {len(self.data):#x})")
        return self.data[off:off + size]

    @property
    def segments(self) -> list:
        if self._segments is None:
            if self.phnum and self.phentsize != PHDR.size:
                raise ElfFormatError(f"bad e_phentsize {self.phentsize}")
            raw = self._slice(self.phoff, self.phnum * PHDR.size, "program header table")
            self._segments = [Segment(*PHDR.unpack_from(raw, i * PHDR.size))
                              for i in range(self.phnum)]
        return self._segments

    def sections(self) -> list:
        """[(name, type, addr, offset, size, link, entsize)]; [] if there is no table."""
        if not self.shoff or not self.shnum:
            return []
        if self.shentsize != SHDR.size:
            raise ElfFormatError(f"bad e_shentsize {self.shentsize}")
        raw = self._slice(self.shoff, self.shnum * SHDR.size, "section header table")
        hdrs = [SHDR.unpack_from(raw, i * SHDR.size) for i in range(self.shnum)]
        names = b""
        if self.shstrndx < len(hdrs):
            s = hdrs[self.shstrndx]
            names = self._slice(s[4], s[5], "section name table")
        out = []
        for (name, typ, _fl, addr, off, size, link, _info, _al, entsize) in hdrs:
            end = names.find(b"\0", name)
            nm = names[name:end if end >= 0 else len(names)].decode("latin-1")
            out.append((nm, typ, addr, off, size, link, entsize))
        return out

    def notes(self, segment: Segment):
        """Yield (name, type, desc_offset_in_file, descsz) for each note in a PT_NOTE."""
        raw = self._slice(segment.offset, segment.filesz, "note segment")
        for name, ntype, desc_off, descsz in iter_notes(raw):
            yield name, ntype, segment.offset + desc_off, descsz

    # --- symbols ---------------------------------------------------------------------------
    @property
    def symbols(self) -> list:
        """Function and object symbols with a value, from .symtab (may be empty)."""
        if self._symbols is None:
            syms = []
            secs = self.sections()
            for (_n, typ, _a, off, size, link, entsize) in secs:
                if typ != SHT_SYMTAB or link >= len(secs):
                    continue
                strtab = secs[link]
                strs = self._slice(strtab[3], strtab[4], "string table")
                table = self._slice(off, size, "symbol table")
                for i in range(0, len(table) - SYM.size + 1, SYM.size):
                    name, info, _other, shndx, value, sz = SYM.unpack_from(table, i)
                    t = info & 0xF
                    if t not in (STT_FUNC, STT_OBJECT, 0) or not value or not name:
                        continue
                    if t == 0 and shndx == 0:
                        continue
                    end = strs.find(b"\0", name)
                    nm = strs[name:end if end >= 0 else len(strs)].decode("utf-8", "replace")
                    syms.append(Symbol(nm, value, sz, t))
            syms.sort(key=lambda s: (s.value, s.type != STT_FUNC))
            self._symbols = syms
        return self._symbols

    def symbolize(self, addr: int):
        """(Symbol, offset) for the symbol containing addr, or None.

        A sized symbol that contains addr wins; otherwise the nearest unsized label
        (assembly entry points) below addr, within 4 KiB.
        """
        import bisect
        syms = self.symbols
        if self._sorted is None:
            self._sorted = [s.value for s in syms]
        i = bisect.bisect_right(self._sorted, addr) - 1
        label = None
        while i >= 0 and addr - syms[i].value < 0x10000:
            s = syms[i]
            if s.size and addr < s.value + s.size:
                return s, addr - s.value
            if not s.size and label is None and addr - s.value < 0x1000:
                label = s
            i -= 1
        return (label, addr - label.value) if label else None

    def lookup(self, name: str):
        for s in self.symbols:
            if s.name == name:
                return s
        return None


def describe_address(elf, addr: int) -> str:
    """'func+0x12' (or '' when there is no symbol); elf may be None."""
    if elf is None:
        return ""
    try:
        hit = elf.symbolize(addr)
    except ElfFormatError:
        return ""
    if hit is None:
        return ""
    sym, off = hit
    return f"{sym.name}+{off:#x}" if off else sym.name
