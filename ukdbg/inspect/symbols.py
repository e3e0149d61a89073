"""ukdbg/inspect/symbols.py: one image's symbols (ukdbg.elf), DWARF line tables, inlined
calls and call-frame information (pyelftools), each loaded on first use and once; a
compilation unit's tables only when an address in it is asked about.
"""

import bisect
import io
import os

from ..elf import STT_FUNC, ElfFile


class SourceLine:
    """file: as a debugger shows it (apps/x.c); path: on disk (may not exist)."""
    __slots__ = ("file", "path", "line", "addr")

    def __init__(self, file, path, line, addr):
        self.file, self.path, self.line, self.addr = file, path, line, addr

    def __str__(self):
        return f"{self.file}:{self.line}"

    def __eq__(self, other):
        return isinstance(other, SourceLine) and (self.path, self.line) == \
            (other.path, other.line)

    def __hash__(self):
        return hash((self.path, self.line))


class CfiRow:
    """The CFI rule row for one pc: cfa (pyelftools CFARule), rules {dwarf reg: rule},
    ra (return-address column) and signal (the CIE says 'signal frame', augmentation S)."""
    __slots__ = ("cfa", "rules", "ra", "signal", "start")

    def __init__(self, cfa, rules, ra, signal, start):
        self.cfa, self.rules, self.ra, self.signal, self.start = cfa, rules, ra, signal, start


class Symbols:
    def __init__(self, elf: ElfFile):
        self.elf = elf
        self.path = elf.path
        self._by_name = None
        self._dwarf = None
        self._dwarf_error = None
        self._cu_lines = {}           # CU offset -> sorted [(lo, hi, SourceLine)]
        self._cu_starts = {}          # CU offset -> [lo of each interval] (bisect)
        self._cu_files = {}           # CU offset -> file index resolver
        self._cu_scopes = {}          # CU offset -> [Scope] (functions, inlined calls)
        self._all_lines = None
        self._cfi = None
        self._sources = {}

    @classmethod
    def open(cls, path: str) -> "Symbols":
        """Raises ukdbg.elf.ElfFormatError or OSError."""
        return cls(ElfFile.open(path))

    # --- ELF symbols ---------------------------------------------------------------------
    def symbolize(self, addr: int):
        """(elf.Symbol, offset) of the symbol holding addr, or None."""
        try:
            return self.elf.symbolize(addr)
        except Exception:
            return None

    def describe(self, addr: int) -> str:
        """'func+0x12', 'func', or '' when no symbol covers addr."""
        hit = self.symbolize(addr)
        if hit is None:
            return ""
        sym, off = hit
        return f"{sym.name}+{off:#x}" if off else sym.name

    def lookup(self, name: str):
        if self._by_name is None:
            by = {}
            for s in self._symbols():
                if s.name not in by or (s.type == STT_FUNC and by[s.name].type != STT_FUNC):
                    by[s.name] = s
            self._by_name = by
        return self._by_name.get(name)

    def names(self) -> list:
        self.lookup("")
        return sorted(self._by_name)

    def _symbols(self):
        try:
            return self.elf.symbols
        except Exception:
            return []

    def function_range(self, addr: int):
        """(start, end, name) of the sized function or label holding addr, or None."""
        hit = self.symbolize(addr)
        if hit is None:
            return None
        sym, _ = hit
        end = sym.value + sym.size if sym.size else None
        if end is None:          # an assembly label: up to the next symbol
            syms = self._symbols()
            later = [s.value for s in syms if s.value > sym.value]
            end = min(later) if later else sym.value + 0x100
        return sym.value, end, sym.name

    def section_of(self, addr: int) -> str:
        try:
            for (name, _t, a, _o, size, _l, _e) in self.elf.sections():
                if a and a <= addr < a + size:
                    return name
        except Exception:
            pass
        return ""

    # --- DWARF -----------------------------------------------------------------------------
    @property
    def dwarf(self):
        """pyelftools DWARFInfo, or None when the image has none (or it is unreadable)."""
        if self._dwarf is None and self._dwarf_error is None:
            try:
                from elftools.elf.elffile import ELFFile
                ef = ELFFile(io.BytesIO(self.elf.data))
                self._pyelf = ef
                self._dwarf = ef.get_dwarf_info(relocate_dwarf_sections=False)
            except Exception as e:       # pyelftools raises many kinds on bad input
                self._dwarf_error = f"{type(e).__name__}: {e}"
        return self._dwarf

    def has_lines(self) -> bool:
        d = self.dwarf
        return d is not None and d.has_debug_info

    def _cu_offset(self, addr):
        d = self.dwarf
        try:
            ar = d.get_aranges()
            return ar.cu_offset_at_addr(addr) if ar is not None else None
        except Exception:
            return None

    def _lines_of_cu(self, cu):
        """Sorted intervals [(lo, hi, SourceLine)] of one compilation unit."""
        key = cu.cu_offset
        if key in self._cu_lines:
            return self._cu_lines[key]
        out = []
        try:
            lp = self.dwarf.line_program_for_CU(cu)
            if lp is not None:
                out = self._intervals(cu, lp)
        except Exception:
            out = []
        out.sort(key=lambda t: t[0])
        self._cu_lines[key] = out
        return out

    def _file_names(self, cu, lp):
        """file index -> (shown, path) resolver of one line program (DWARF 2-5 rules)."""
        v5 = lp.header["version"] >= 5
        top = cu.get_top_DIE()
        comp = top.attributes.get("DW_AT_comp_dir")
        comp_dir = _s(comp.value) if comp is not None else ""
        dirs = [_s(d) for d in lp["include_directory"]]
        files = lp["file_entry"]
        names = {}

        def source(idx):
            if idx in names:
                return names[idx]
            i = idx if v5 else idx - 1
            if not 0 <= i < len(files):
                names[idx] = None
                return None
            fe = files[i]
            name = _s(fe.name)
            di = fe.dir_index
            d = ""
            if v5 and 0 < di < len(dirs):
                d = dirs[di]
            elif not v5 and 0 < di <= len(dirs):
                d = dirs[di - 1]
            shown = name if os.path.isabs(name) or not d else os.path.join(d, name)
            path = shown if os.path.isabs(shown) else os.path.join(comp_dir, shown)
            names[idx] = (shown, path)
            return names[idx]
        return source

    def _intervals(self, cu, lp):
        source = self._file_names(cu, lp)
        self._cu_files[cu.cu_offset] = source
        rows = []
        out = []
        for e in lp.get_entries():
            st = e.state
            if st is None:
                continue
            if st.end_sequence:
                rows.append((st.address, None, 0))
                for (a, f, ln), (b, _f, _l) in zip(rows, rows[1:]):
                    if a < b and f is not None:
                        src = source(f)
                        if src is not None:
                            out.append((a, b, SourceLine(src[0], src[1], ln, a)))
                rows = []
            else:
                rows.append((st.address, st.file, st.line))
        return out

    def _all_intervals(self):
        if self._all_lines is None:
            out = []
            try:
                for cu in self.dwarf.iter_CUs():
                    out.extend(self._lines_of_cu(cu))
            except Exception:
                pass
            out.sort(key=lambda t: t[0])
            self._all_lines = (out, [t[0] for t in out])
        return self._all_lines

    def line_for(self, addr: int):
        """SourceLine of addr (gdb's rule: the last row at or below addr), or None.
        Only the line program of addr's compilation unit is read (.debug_aranges);
        without aranges, all of them, once."""
        if not self.has_lines():
            return None
        if self._has_aranges():
            off = self._cu_offset(addr)
            if off is None:
                return None
            try:
                ivs = self._lines_of_cu(self.dwarf.get_CU_at(off))
            except Exception:
                return None
            starts = self._cu_starts.get(off)
            if starts is None:
                starts = self._cu_starts[off] = [t[0] for t in ivs]
            return _find(ivs, starts, addr)
        ivs, starts = self._all_intervals()
        return _find(ivs, starts, addr)

    def _has_aranges(self) -> bool:
        try:
            return self.dwarf.get_aranges() is not None
        except Exception:
            return False

    def source(self, sl: SourceLine):
        """The text of a source line, when the file is on disk."""
        lines = self._sources.get(sl.path)
        if lines is None:
            from ..errors import UkdbgError
            from ..files import read_regular
            try:   # a hostile image may name /dev/zero as its source file
                lines = read_regular(sl.path, 64 << 20, "a source file").decode(
                    "utf-8", "replace").splitlines()
            except UkdbgError:
                lines = []
            self._sources[sl.path] = lines
        return lines[sl.line - 1] if 0 < sl.line <= len(lines) else None

    # --- functions and inlined calls (DW_TAG_subprogram, DW_TAG_inlined_subroutine) ------
    def _cu_at(self, addr):
        d = self.dwarf
        off = self._cu_offset(addr)
        try:
            if off is not None:
                return d.get_CU_at(off)
            for cu in d.iter_CUs():
                for lo, hi in self._ranges(cu.get_top_DIE(), cu, 0):
                    if lo <= addr < hi:
                        return cu
        except Exception:
            pass
        return None

    def _ranges(self, die, cu, base):
        """[(lo, hi)] of a DIE from low_pc/high_pc or DW_AT_ranges."""
        at = die.attributes
        lo = at.get("DW_AT_low_pc")
        hi = at.get("DW_AT_high_pc")
        if lo is not None and hi is not None:
            end = hi.value if hi.form == "DW_FORM_addr" else lo.value + hi.value
            return [(lo.value, end)]
        rng = at.get("DW_AT_ranges")
        if rng is None or rng.form != "DW_FORM_sec_offset":
            return []
        rl = self.dwarf.range_lists()
        if rl is None:
            return []
        out = []
        for e in rl.get_range_list_at_offset(rng.value, cu=cu):
            if hasattr(e, "base_address"):
                base = e.base_address
            elif e.is_absolute:
                out.append((e.begin_offset, e.end_offset))
            else:
                out.append((base + e.begin_offset, base + e.end_offset))
        return out

    def _scopes_of(self, cu):
        key = cu.cu_offset
        if key in self._cu_scopes:
            return self._cu_scopes[key]
        top = cu.get_top_DIE()
        lo = top.attributes.get("DW_AT_low_pc")
        base = lo.value if lo is not None else 0
        out = []

        def walk(die, into):
            for child in die.iter_children():
                tag = child.tag
                if tag in ("DW_TAG_subprogram", "DW_TAG_inlined_subroutine"):
                    ranges = self._ranges(child, cu, base)
                    if not ranges:
                        continue
                    at = child.attributes
                    cf, cl = at.get("DW_AT_call_file"), at.get("DW_AT_call_line")
                    sc = Scope(_die_name(child), ranges, cf.value if cf else None,
                               cl.value if cl else 0, tag == "DW_TAG_inlined_subroutine")
                    into.append(sc)
                    walk(child, sc.children)
                elif tag == "DW_TAG_lexical_block":
                    walk(child, into)
        try:
            walk(top, out)
        except Exception:
            pass
        self._cu_scopes[key] = out
        return out

    def inline_chain(self, pc: int) -> list:
        """[(name, call site SourceLine or None)] from the function holding pc inwards
        through the inlined calls at pc; [] without DWARF. The call site of scope k
        is where scope k-1's code called it."""
        if not self.has_lines():
            return []
        cu = self._cu_at(pc)
        if cu is None:
            return []
        try:
            scopes = self._scopes_of(cu)
            self._lines_of_cu(cu)
            files = self._cu_files.get(cu.cu_offset)
        except Exception:
            return []
        chain = []
        level = scopes
        while True:
            hit = next((sc for sc in level if any(lo <= pc < hi for lo, hi in sc.ranges)),
                       None)
            if hit is None:
                break
            call = None
            if hit.inlined and hit.call_file is not None and files is not None:
                src = files(hit.call_file)
                if src is not None:
                    call = SourceLine(src[0], src[1], hit.call_line, None)
            chain.append((hit.name, call))
            level = hit.children
        return chain

    # --- call-frame information ------------------------------------------------------------
    def _cfi_index(self):
        if self._cfi is None:
            from elftools.dwarf.callframe import FDE
            fdes = []
            d = self.dwarf
            sections = () if d is None else (
                (d.eh_frame_sec, True), (d.debug_frame_sec, False))
            for sec, eh in sections:
                if sec is None:
                    continue
                try:
                    cfi = _cfi_class()(stream=sec.stream, size=sec.size, address=sec.address,
                                       base_structs=d.structs, for_eh_frame=eh)
                    for e in cfi.get_entries():
                        if isinstance(e, FDE) and e["address_range"] > 0:
                            lo = e["initial_location"]
                            fdes.append((lo, lo + e["address_range"], e))
                except Exception:       # one bad section must not hide the other
                    continue
            fdes.sort(key=lambda t: t[0])
            self._cfi = (fdes, [t[0] for t in fdes])
        return self._cfi

    def cfi_row(self, pc: int):
        """The CfiRow for pc, or None when no FDE covers it (or it does not decode)."""
        fdes, starts = self._cfi_index()
        i = bisect.bisect_right(starts, pc) - 1
        while i >= 0 and fdes[i][0] <= pc:
            lo, hi, fde = fdes[i]
            if pc < hi:
                try:
                    table = fde.get_decoded().table
                    cie = fde.cie
                    aug = cie.header.get("augmentation") or b""
                    ra = cie["return_address_register"]
                except Exception:
                    return None
                row = None
                for r in table:
                    if r["pc"] <= pc:
                        row = r
                    else:
                        break
                if row is None:
                    return None
                rules = {k: v for k, v in row.items() if isinstance(k, int)}
                return CfiRow(row["cfa"], rules, ra, b"S" in aug, lo)
            i -= 1
        return None


_CFI = []


def _cfi_class():
    """pyelftools' CallFrameInfo, taught the .debug_frame augmentation "S" (a signal
    frame, no augmentation data) that gas emits and pyelftools 0.33 rejects."""
    if not _CFI:
        from elftools.dwarf.callframe import CallFrameInfo

        class CFI(CallFrameInfo):
            def _parse_cie_augmentation(self, header, entry_structs):
                aug = header.get("augmentation") or b""
                if aug and not aug.startswith(b"z") and set(aug) <= {ord("S")}:
                    return b"", {}
                return super()._parse_cie_augmentation(header, entry_structs)
        _CFI.append(CFI)
    return _CFI[0]


class Scope:
    __slots__ = ("name", "ranges", "call_file", "call_line", "inlined", "children")

    def __init__(self, name, ranges, call_file, call_line, inlined):
        self.name, self.ranges = name, ranges
        self.call_file, self.call_line, self.inlined = call_file, call_line, inlined
        self.children = []


def _die_name(die, depth=0):
    at = die.attributes
    if "DW_AT_name" in at:
        return _s(at["DW_AT_name"].value)
    for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
        if ref in at and depth < 4:
            try:
                return _die_name(die.get_DIE_from_attribute(ref), depth + 1)
            except Exception:
                return None
    return None


def _s(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _find(ivs, starts, addr):
    """The interval holding addr (sequences may nest, so look a few back)."""
    i = bisect.bisect_right(starts, addr) - 1
    for j in range(i, max(-1, i - 8), -1):
        lo, hi, sl = ivs[j]
        if lo <= addr < hi:
            return sl
    return None
