"""ukdbg/inspect/commands/memory.py: `x` (examine memory) and `mem` (the memory map)."""

from dataclasses import dataclass, field

from . import CommandError, eval_address

SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}
FORMATS = "xducsi"
MAX_BYTES = 1 << 16


@dataclass
class XView:
    addr: int
    size: int                    # unit size in bytes
    fmt: str
    rows: list = field(default_factory=list)   # [(addr, label, [values], ascii)]
    strings: list = field(default_factory=list)  # fmt s: [(addr, label, text)]
    error: str = ""              # set when the read stopped early

    def to_json(self):
        return {"addr": self.addr, "unit": self.size, "format": self.fmt,
                "rows": [{"addr": a, "label": lab, "values": vals}
                         for a, lab, vals, _ in self.rows],
                "strings": [{"addr": a, "label": lab, "text": t}
                            for a, lab, t in self.strings],
                "error": self.error}


def parse_x(args: str):
    """'/4xg $rsp' -> (4, 'x', 8, '$rsp'); gdb's defaults: /1xw."""
    count, fmt, size = 1, "x", 4
    rest = args
    if args.startswith("/"):
        spec, _, rest = args[1:].partition(" ")
        digits = ""
        for ch in spec:
            if ch.isdigit():
                digits += ch
            elif ch in SIZES:
                size = SIZES[ch]
            elif ch in FORMATS:
                fmt = ch
            else:
                raise CommandError(f"x: unknown format letter '{ch}' (sizes bhwg, "
                                   "formats xducsi)")
        if digits:
            count = int(digits)
        if fmt == "c" and not any(ch in SIZES for ch in spec):
            size = 1
    if count <= 0:
        raise CommandError("x: the count must be positive")
    return count, fmt, size, rest.strip()


def examine(session, args):
    count, fmt, size, expr = parse_x(args)
    if not expr:
        raise CommandError("x: missing address (x/8xg $rsp, x/16xb SYMBOL)")
    addr = eval_address(session, expr)
    if fmt == "i":
        from .disas import listing
        return listing(session, addr, count=count)
    v = XView(addr, size, fmt)
    label = _label(session, addr)
    if fmt == "s":
        a = addr
        for _ in range(min(count, 256)):
            data = session.try_read(a, 4096)
            if not data:
                v.error = f"cannot access memory at {a:#x}"
                break
            end = data.find(b"\0")
            s = data if end < 0 else data[:end]
            v.strings.append((a, _label(session, a), s.decode("utf-8", "backslashreplace")))
            a += len(s) + 1
        return v
    total = count * size
    if total > MAX_BYTES:
        raise CommandError(f"x: at most {MAX_BYTES} bytes at a time")
    data = session.try_read(addr, total)
    if len(data) < total:
        v.error = f"cannot access memory at {addr + len(data) - len(data) % size:#x}"
    per_row = 16 // size if fmt != "c" else 8
    units = len(data) // size
    for i in range(0, units, per_row):
        a = addr + i * size
        chunk = data[i * size:min(units, i + per_row) * size]
        vals = [int.from_bytes(chunk[j:j + size], "little", signed=(fmt == "d"))
                for j in range(0, len(chunk), size)]
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk) if size == 1 else ""
        v.rows.append((a, label if i == 0 else _label(session, a, only_exact=True),
                       vals, asc))
    return v


def _label(session, addr, only_exact=False) -> str:
    hit = session.symbols.symbolize(addr) if session.symbols is not None else None
    if hit is None:
        return ""
    sym, off = hit
    if only_exact and off:
        return ""
    return f"{sym.name}+{off}" if off else sym.name


# --- mem ---------------------------------------------------------------------------------
@dataclass
class MemView:
    regions: list = field(default_factory=list)  # [(start, end, perms, name, phys, touched)]
    runs: dict = field(default_factory=dict)     # region start -> [(lo, hi, note)] virtual
    mem_size: int | None = None
    touched_total: int | None = None
    notes: list = field(default_factory=list)

    def to_json(self):
        return {"regions": [{"start": s, "end": e, "perms": p, "name": n, "phys": ph,
                             "touched": t,
                             "touched_runs": [[lo, hi] for lo, hi, _ in self.runs.get(s, [])]}
                            for s, e, p, n, ph, t in self.regions],
                "mem_size": self.mem_size, "touched": self.touched_total,
                "notes": self.notes}


def mem(session, args):
    if args.strip():
        raise CommandError("mem takes no arguments")
    v = MemView(mem_size=session.facts.mem_size)
    rsp = session.regs.rsp
    total = None
    sections = _sections(session)
    for r in session.memory_map():
        name = session.region_name(r)
        if r.start <= rsp < r.end:
            name = (name + ", " if name else "") + "stack (rsp)"
        secs = [n for (n, lo, hi) in sections if lo < r.end and hi > r.start]
        if secs:
            name = (name + ": " if name else "") + " ".join(secs)
        t = session.touched(r.phys, r.end - r.start)
        if t is not None:
            total = (total or 0) + t
        v.regions.append((r.start, r.end, r.perms, name, r.phys, t))
        if r.end - r.start > 1 << 20 and r.phys is not None:
            runs = []
            for lo, hi in session.touched_runs(r.phys, r.end - r.start):
                va = r.start + (lo - r.phys)
                vb = va + (hi - lo)
                runs.append((va, vb, _what(session, va, vb, rsp)))
            v.runs[r.start] = runs
    v.touched_total = total
    if total is None:
        v.notes.append("this target does not say which pages the guest touched")
    return v


def _what(session, lo, hi, rsp) -> str:
    notes = []
    if lo <= rsp < hi or 0 <= lo - rsp < 0x1000:
        notes.append("stack")
    for n, a, b in _sections(session):
        if a < hi and lo < b:
            notes.append(n)
    if session.symbols is not None:
        hit = session.symbols.symbolize(lo)
        if hit is not None and hit[0].size and lo < hit[0].value + hit[0].size:
            notes.append(hit[0].name)
    return ", ".join(notes)


def _sections(session):
    if session.symbols is None:
        return []
    out = []
    try:
        for (n, _t, a, _o, size, _l, _e) in session.symbols.elf.sections():
            if a and size and n:
                out.append((n, a, a + size))
    except Exception:
        return []
    return out
