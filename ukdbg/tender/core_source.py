"""ukdbg/tender/core_source.py: a Machine as a coredump.writer.CoreSource.

Imported only when a core is written (modules/dumpcore.py keeps the run path light).
What goes in: registers of the faulting instruction, FPU/XSAVE, the guest-virtual map
from the page tables, touched guest-physical extents, and the UKDBG facts.
"""

import os

KVM_EXIT_IO = 2


def build_source(m, stop=None):
    """The CoreSource of m now; stop (a Crashed) supplies the faulting registers."""
    import time
    from .. import __version__
    from ..coredump import format as F
    from ..coredump.writer import CoreSource
    from ..target import SIGINT, Crashed, Killed
    from .view import MachineView

    t = getattr(m, "live_target", None) or MachineView(m)
    if hasattr(t, "invalidate"):
        t.invalidate()
    src = CoreSource()
    regs = getattr(stop, "regs", None) if isinstance(stop, Crashed) else None
    src.regs = regs.copy() if regs is not None else t.read_registers()
    src.fpu = t.read_fpu()
    src.xsave = t.read_xsave()
    sregs = m.vcpu.get_sregs()
    src.sregs = sregs.pack()

    crash = F.CrashInfo()
    signal = getattr(stop, "signal", 0) or 0
    if isinstance(stop, Crashed):
        reason = stop.exit_reason
        if reason is None and stop.status is not None:
            reason = KVM_EXIT_IO            # the guest's own HALT hypercall ended it
        crash = F.CrashInfo("crashed", signal, stop.vector, stop.error_code,
                            stop.fault_addr, stop.rip, stop.status, reason,
                            stop.cause, stop.message)
        if stop.fault_addr is not None:
            src.si_addr = stop.fault_addr
        elif signal in (4, 7, 8, 11):      # SIGILL/SIGBUS/SIGFPE/SIGSEGV: the rip
            src.si_addr = src.regs.rip
    elif isinstance(stop, Killed):
        live = stop.reason == "live"
        crash = F.CrashInfo("live" if live else "killed", signal,
                            cause=stop.reason or "signal",
                            message=f"live core on signal {signal}" if live else
                            ("--timeout expired" if stop.reason == "timeout"
                             else f"killed by signal {signal}"))
    elif stop is not None:
        kind = {"Exited": "exited", "Interrupted": "interrupted"}.get(
            type(stop).__name__, "stopped")
        crash = F.CrashInfo(kind, signal or (SIGINT if kind == "interrupted" else 0),
                            cause=kind, message=repr(stop),
                            status=getattr(stop, "status", None))
    src.crash = crash
    src.signal = crash.signal
    src.si_code = F.siginfo_code(crash.signal, crash.cause, crash.vector,
                                 crash.error_code)

    img = m.image
    name = os.path.basename(img.path)
    src.app_name = name
    src.psargs = " ".join([img.path] + list(getattr(m.opts, "args", []) or []))
    src.entry = img.entry

    mem = m.mem
    src.phys = mem.view
    src.phys_extents = mem.touched_extents()
    src.mem_size = m.mem_size
    src.regions = _regions(t, mem.size)
    dc = m.debug
    if dc is not None:
        src.patches = {bp.gpa: bp.orig for bp in dc.sw.values() if not bp.lifted}

    src.version = __version__
    src.argv = list(m.argv)
    src.guest_cmdline = m.cmdline.decode("utf-8", "replace")
    now = time.monotonic()
    src.uptime_ns = int((now - m.started) * 1e9) if m.started else 0
    src.dump_time_ns = time.time_ns()
    src.image_path = os.path.abspath(img.path)
    src.image_size, src.image_sha256 = _hash(img)
    src.build_id = _build_id(img.elf)
    src.hypercalls = {i: n for i, n in enumerate(m.stats.hypercalls) if n}
    src.exits = dict(m.stats.exits)
    src.console = m.console.last()
    src.console_total = m.console.total
    return src


def _regions(t, phys_size):
    """The guest-virtual map clipped to backed memory (unbacked ranges have no bytes)."""
    from ..target import MemoryRegion
    out = []
    for r in t.memory_map():
        if r.phys is None or r.phys >= phys_size:
            continue
        end = min(r.end, r.start + (phys_size - r.phys))
        out.append(MemoryRegion(r.start, end, r.perms, phys=r.phys, name=r.name))
    return out


_hashes = {}


def _hash(img):
    """(size, sha256) of the image as loaded (its bytes are already in memory); once
    per image, as live dumps may come many times."""
    key = id(img.elf.data)
    if key not in _hashes:
        import hashlib
        data = img.elf.data
        _hashes[key] = (len(data), hashlib.sha256(data).digest(), data)
    size, digest, _keep = _hashes[key]
    return size, digest


def _build_id(elf) -> bytes:
    from ..elf import PT_NOTE
    try:
        for seg in elf.segments:
            if seg.type != PT_NOTE:
                continue
            for name, ntype, off, size in elf.notes(seg):
                if name == "GNU" and ntype == 3:
                    return bytes(elf.data[off:off + size])
    except ValueError:
        pass
    return b""
