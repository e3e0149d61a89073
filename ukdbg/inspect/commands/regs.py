"""ukdbg/inspect/commands/regs.py: `regs`: general, segment and control registers, decoded;
in an outer frame only what the unwinder recovered (the rest shows as not saved).
"""

from dataclasses import dataclass, field

from ...arch.x86_64 import (CR0_BITS, CR4_BITS, EFER_BITS, GPRS, RFLAGS_BITS, SEGS,
                            decode_bits)


@dataclass
class RegsView:
    frame: int
    general: list = field(default_factory=list)   # [(name, value | None, note)]
    flags: tuple = ("rflags", None, [])            # (name, value, [bit names] + IOPL)
    segments: list = field(default_factory=list)  # [(name, selector, note)]
    control: list = field(default_factory=list)   # [(name, value, [bit names] | note)]
    tables: list = field(default_factory=list)    # [(name, base, limit)]

    def to_json(self):
        return {"frame": self.frame,
                "general": {n: v for n, v, _ in self.general},
                "rflags": {"value": self.flags[1], "flags": self.flags[2]},
                "segments": {n: v for n, v, _ in self.segments},
                "control": {n: {"value": v, "decoded": d} for n, v, d in self.control},
                "tables": {n: {"base": b, "limit": lim} for n, b, lim in self.tables}}


def annotate(session, value) -> str:
    """A short note for a register value: the symbol it points at, or 'stack'."""
    if value is None:
        return ""
    d = session.describe(value)
    if d:
        return f"<{d}>"
    rsp = session.regs.rsp
    if value and 0 <= value - rsp < 0x10000:
        return "(stack)"
    return ""


def run(session, args):
    if args.strip():
        from . import CommandError
        raise CommandError("regs takes no arguments (use frame N to pick a frame)")
    return build(session)


def build(session) -> RegsView:
    regs = session.regs
    known = session.frame_regs()
    v = RegsView(session.selected)
    for n in GPRS + ("rip",):
        val = known.get(n)
        v.general.append((n, val, annotate(session, val) if n in ("rip", "rbp", "rsp")
                          or val is not None and session.describe(val) else ""))
    fl = known.get("rflags", regs.rflags)
    bits = decode_bits(fl, RFLAGS_BITS) + [f"IOPL={(fl >> 12) & 3}"]
    v.flags = ("rflags", fl, bits)
    sregs = session.facts.sregs or {}
    for s in SEGS:
        note = ""
        d = sregs.get(s) if isinstance(sregs, dict) else None
        if isinstance(d, dict):
            note = _segment_note(d)
        v.segments.append((s, getattr(regs, s), note))
    v.segments.append(("fs_base", regs.fs_base, ""))
    v.segments.append(("gs_base", regs.gs_base, ""))
    v.control.append(("cr0", regs.cr0, decode_bits(regs.cr0, CR0_BITS)))
    v.control.append(("cr2", regs.cr2, [annotate(session, regs.cr2)]
                      if annotate(session, regs.cr2) else []))
    v.control.append(("cr3", regs.cr3, ["page tables at guest-physical "
                                        f"{regs.cr3 & 0x000FFFFFFFFFF000:#x}"]))
    v.control.append(("cr4", regs.cr4, decode_bits(regs.cr4, CR4_BITS)))
    v.control.append(("cr8", regs.cr8, [f"TPR={regs.cr8 & 15}"]))
    v.control.append(("efer", regs.efer, decode_bits(regs.efer, EFER_BITS)))
    for t in ("gdt", "idt"):
        d = sregs.get(t) if isinstance(sregs, dict) else None
        if isinstance(d, dict):
            v.tables.append((t, d.get("base", 0), d.get("limit", 0)))
    for t in ("tr", "ldt"):
        d = sregs.get(t) if isinstance(sregs, dict) else None
        if isinstance(d, dict):
            v.segments.append((t, d.get("selector", 0), _segment_note(d)))
    return v


def _segment_note(d) -> str:
    if d.get("unusable"):
        return "unusable"
    kind = ("code" if d.get("type", 0) & 8 else "data") if d.get("s") else \
        {2: "LDT", 9: "TSS (available)", 11: "TSS (busy)"}.get(d.get("type", 0),
                                                             f"system type {d.get('type')}")
    mode = " 64-bit" if d.get("l") else ""
    return (f"base={d.get('base', 0):#x} limit={d.get('limit', 0):#x} {kind}{mode} "
            f"dpl={d.get('dpl', 0)}" + ("" if d.get("present") else " not-present"))
