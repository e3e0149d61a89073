"""ukdbg/gdbstub/monitor.py: `monitor` commands (qRcmd) over any Target: help, info, regs,
pt ADDR, core FILE. Each returns text; TargetError becomes an error reply."""

import errno

from ..arch import mmu
from ..arch.x86_64 import CR0_BITS, CR4_BITS, EFER_BITS, RFLAGS_BITS, decode_bits
from ..errors import TargetError, UkdbgError
from ..units import size as _size

HELP = """\
ukdbg monitor commands:
  monitor help        this list
  monitor info        VM state: image, memory, uptime, devices, hypercalls, VM exits
  monitor regs        system registers, decoded (cr0 cr2 cr3 cr4 cr8 efer, rflags,
                      segments, GDT/IDT/TR), and the pending guest fault if any
  monitor pt ADDR     walk the guest page tables for virtual address ADDR
  monitor core FILE   write an ELF core of the guest now (it stays stopped)
"""
REVERSE_HELP = """\
  monitor when        the current position in the execution (event index, ...)
  monitor goto N      go to position N (from 'monitor when'), or 'start'
  monitor checkpoints the checkpoints kept for reverse execution and their memory
"""


def run(target, line: str, owner: bool = False) -> str:
    """owner: the client's uid is the monitor's (see cmd_core)."""
    words = line.split()
    if not words:
        return HELP
    cmd, args = words[0], words[1:]
    extra = getattr(target, "monitor_commands", None)
    extra = extra() if extra is not None else {}
    if cmd == "help" and extra:
        return HELP + REVERSE_HELP
    fn = COMMANDS.get(cmd) or extra.get(cmd)
    if fn is None:
        raise TargetError(errno.EINVAL, f"unknown monitor command '{cmd}' (try "
                                        "'monitor help')")
    if fn is cmd_core:
        return cmd_core(target, args, owner)
    return fn(target, args)


def cmd_help(target, args):
    return HELP


def cmd_info(target, args):
    i = target.info()
    out = []
    stop = target.stop_reason()
    if i.get("app"):
        out.append(f"image:      {i['app']}")
    if "mem_size" in i:
        res = f", {_size(i['resident'])} touched" if "resident" in i else ""
        out.append(f"memory:     {_size(i['mem_size'])}{res}")
    if "uptime" in i:
        out.append(f"uptime:     {i['uptime']:.3f} s")
    if i.get("cmdline"):
        out.append(f"cmdline:    {i['cmdline']}")
    if stop is not None:
        out.append(f"stopped:    {_describe_stop(stop)}")
    devs = i.get("devices") or []
    for d in devs:
        state = "attached" if d.get("attached") else "not attached"
        out.append(f"device:     {d['name']} ({d['type']}, {state}, read {d.get('read', 0)} B, "
                   f"written {d.get('written', 0)} B)")
    hc = {k: v for k, v in (i.get("hypercalls") or {}).items() if v}
    if hc:
        out.append("hypercalls: " + ", ".join(f"{k} {v}" for k, v in hc.items()))
    ex = i.get("exits") or {}
    if ex:
        names = i.get("exit_names") or {}
        out.append("VM exits:   " + ", ".join(f"{names.get(k, k)} {v}"
                                               for k, v in sorted(ex.items())))
    for k in ("core", "kind"):
        if k in i:
            out.append(f"{k + ':':11s} {i[k]}")
    return "\n".join(out) + "\n"


def _describe_stop(stop):
    msg = getattr(stop, "message", None)
    if msg:
        return msg
    name = type(stop).__name__.lower()
    if hasattr(stop, "kind") and hasattr(stop, "addr"):
        return f"{stop.kind} watchpoint at {stop.addr:#x}"
    if hasattr(stop, "addr"):
        kind = "hardware breakpoint" if getattr(stop, "hardware", False) else "breakpoint"
        return f"{kind} at {stop.addr:#x}"
    return name


def _bits(value, table):
    names = decode_bits(value, table)
    return f"{value:#x} [{' '.join(names)}]" if names else f"{value:#x}"


def cmd_regs(target, args):
    r = target.read_registers()
    out = [f"cr0    {_bits(r.cr0, CR0_BITS)}",
           f"cr2    {r.cr2:#x}",
           f"cr3    {r.cr3:#x}",
           f"cr4    {_bits(r.cr4, CR4_BITS)}",
           f"cr8    {r.cr8:#x}",
           f"efer   {_bits(r.efer, EFER_BITS)}",
           f"rflags {_bits(r.rflags, RFLAGS_BITS)}",
           "segs   " + " ".join(f"{s}={getattr(r, s):#x}"
                                for s in ("cs", "ss", "ds", "es", "fs", "gs")),
           f"fs_base {r.fs_base:#x}  gs_base {r.gs_base:#x}"]
    sysfn = getattr(target, "system_state", None)
    if sysfn is not None:
        for name, value in sysfn().items():
            out.append(f"{name:6s} {value}")
    return "\n".join(out) + "\n"


def _read_u64_phys(target):
    rp = getattr(target, "read_physical", None)
    if rp is None:
        raise TargetError(errno.ENOSYS, "this target has no physical memory view")

    def rd(gpa):
        try:
            data = rp(gpa, 8)
        except UkdbgError:
            return None
        return int.from_bytes(data, "little") if len(data) == 8 else None
    return rd


def cmd_pt(target, args):
    if len(args) != 1:
        raise TargetError(errno.EINVAL, "usage: monitor pt ADDR")
    try:
        addr = int(args[0], 0)
    except ValueError:
        addr = None
    if addr is None or not 0 <= addr < 1 << 64:
        raise TargetError(errno.EINVAL, f"monitor pt: bad address '{args[0]}'")
    r = target.read_registers()
    t = mmu.walk(_read_u64_phys(target), r.cr0, r.cr3, r.cr4, r.efer, addr)
    out = [f"cr3 {r.cr3:#x}, virtual address {addr:#x}"]
    for name, table, idx, ent in t.levels:
        flags = [n for bit, n in ((0, "P"), (1, "RW"), (2, "US"), (5, "A"), (6, "D"),
                                  (7, "PS")) if ent >> bit & 1]
        if ent >> 63 & 1:
            flags.append("NX")
        out.append(f"  {name:4s} table {table:#x} [{idx:3d}] = {ent:#018x} {' '.join(flags)}")
    if t:
        out.append(f"-> physical {t.gpa:#x} ({t.page_size >> 10} KiB page at "
                   f"{t.page_base:#x}, {t.perms})")
    else:
        out.append(f"-> not mapped: {t.reason}")
    return "\n".join(out) + "\n"


def cmd_core(target, args, owner=False):
    """A relative FILE goes in --core-dir. Only a client with the monitor's uid may
    name a file elsewhere; any other (a remote one) gives a plain name."""
    if len(args) != 1:
        raise TargetError(errno.EINVAL, "usage: monitor core FILE")
    fn = getattr(target, "dump_core", None)
    if fn is None:
        raise TargetError(errno.ENOSYS, "this target cannot write cores")
    path = fn(args[0], owner=owner)
    return f"core written to {path}\n"


COMMANDS = {"help": cmd_help, "info": cmd_info, "regs": cmd_regs, "pt": cmd_pt,
            "core": cmd_core}
