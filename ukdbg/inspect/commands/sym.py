"""ukdbg/inspect/commands/sym.py: `sym ADDR|NAME`: address -> symbol+offset, section and
source line; name -> address, size, kind (and an object's value in the core); a glob
(`sym rt_trap_*`) lists the matching names."""

from dataclasses import dataclass, field

from . import CommandError, eval_address


@dataclass
class SymRow:
    name: str
    addr: int
    size: int
    kind: str              # function | object | label
    offset: int = 0        # addr asked about - symbol start
    section: str = ""
    line: str = ""
    value: int | None = None   # an object's current value (size <= 8)

    def to_json(self):
        return {"name": self.name, "addr": self.addr, "size": self.size,
                "kind": self.kind, "offset": self.offset, "section": self.section,
                "line": self.line, "value": self.value}


@dataclass
class SymView:
    query: str
    addr: int | None = None          # set when an address was asked about
    rows: list = field(default_factory=list)
    where: str = ""                  # what lies at the address (no symbol)

    def to_json(self):
        return {"query": self.query, "addr": self.addr,
                "symbols": [r.to_json() for r in self.rows], "where": self.where}


def run(session, args):
    q = args.strip()
    if not q:
        raise CommandError("sym: expected an address or a name")
    syms = session.symbols
    if syms is None and not q.startswith(("0", "1", "2", "3", "4", "5", "6", "7", "8",
                                          "9", "$")):
        raise CommandError("sym: no symbols (the unikernel binary is not loaded)")
    if any(c in q for c in "*?[") and syms is not None:
        import fnmatch
        names = [n for n in syms.names() if fnmatch.fnmatchcase(n, q)]
        if not names:
            raise CommandError(f"sym: no symbol matches '{q}'")
        return SymView(q, rows=[_row(session, syms.lookup(n), syms.lookup(n).value)
                                for n in names[:200]])
    if syms is not None and syms.lookup(q) is not None:
        s = syms.lookup(q)
        return SymView(q, rows=[_row(session, s, s.value, with_value=True)])
    addr = eval_address(session, q)
    v = SymView(q, addr)
    hit = syms.symbolize(addr) if syms is not None else None
    if hit is not None:
        v.rows.append(_row(session, hit[0], addr))
    from .info import what_is_at
    v.where = what_is_at(session, addr)
    return v


def _row(session, s, addr, with_value=False):
    syms = session.symbols
    kind = {2: "function", 1: "object"}.get(s.type, "label")
    sl = syms.line_for(addr) if kind != "object" else None
    r = SymRow(s.name, s.value, s.size, kind, addr - s.value, syms.section_of(s.value),
               str(sl) if sl else "")
    if with_value and kind == "object" and s.size in (1, 2, 4, 8):
        data = session.try_read(s.value, s.size)
        if len(data) == s.size:
            r.value = int.from_bytes(data, "little")
    return r
