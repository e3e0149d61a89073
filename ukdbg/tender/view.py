"""ukdbg/tender/view.py: MachineView, the read side of a running Machine as a target.Target.

Registers, FPU, guest-virtual memory through the guest's page tables, the memory map:
what cores, the crash report and the endings' diagnosis read. It has no capabilities
(a core-like, read-only Target); the live debugger's LiveTarget (ukdbg/debugger/
live_target.py) adds writing, resuming, breakpoints and watchpoints on top.

When the vCPU sits at a guest exception handler caught by tender/traps.py, the
registers shown are those *of the faulting instruction* (`fault_view`), as a debugger
of a crashed process expects.
"""

import errno

from ..arch import mmu
from ..errors import TargetError
from ..target import MemoryRegion, ReadOnly

PAGE = 4096


class MachineView(ReadOnly):
    def __init__(self, m):
        self.m = m
        self.fault_view = None        # a traps.FaultContext while stopped at a fault
        self._stop = None
        self._sregs = None            # cached between resumes (translations use it)
        self._kregs = None            # KVM_GET_REGS of this stop (the debugger's)

    # --- state caching --------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget cached vCPU state (call before and after the guest runs)."""
        self._sregs = None
        self._kregs = None

    def kregs(self):
        if self._kregs is None:
            self._kregs = self.m.vcpu.get_regs()
        return self._kregs

    def sregs(self):
        if self._sregs is None:
            self._sregs = self.m.vcpu.get_sregs()
        return self._sregs

    def paging(self):
        """(cr0, cr3, cr4, efer) now: a page walk's context, without decoding the
        segments when kvm_run mirrors the sregs."""
        s = self._sregs
        if s is None:
            if self.m.vcpu.mirrors_sregs:
                return self.m.vcpu.paging_regs()
            s = self.sregs()                  # one KVM_GET_SREGS per stop
        return s.paging()

    # --- registers ---------------------------------------------------------------------------
    def read_registers(self):
        """arch.x86_64.Regs: the faulting context at a caught fault, else the vCPU's."""
        from ..arch.x86_64 import Regs
        if self.fault_view is not None:
            return self.fault_view.regs.copy()
        return Regs.from_kvm(self.kregs(), self.sregs())

    def read_expedited(self):
        """(rbp, rsp, rip) for a stop reply, with one KVM_GET_REGS."""
        if self.fault_view is not None:
            r = self.fault_view.regs
            return r.rbp, r.rsp, r.rip
        k = self.kregs()
        return k.rbp, k.rsp, k.rip

    def read_fpu(self):
        from ..arch.x86_64 import Fpu
        if self.m.caps.get("xsave"):
            return Fpu.from_fxsave(self.m.vcpu.get_xsave()[:512])
        return Fpu.from_kvm(self.m.vcpu.get_fpu())

    def read_xsave(self):
        """(xsave area bytes, xcr0) or None when KVM has no XSAVE."""
        if not self.m.caps.get("xsave"):
            return None
        xcr0 = self.m.vcpu.get_xcrs().get(0, 1) if self.m.caps.get("xcrs") else 1
        return self.m.vcpu.get_xsave(), xcr0

    # --- memory ------------------------------------------------------------------------------
    def _read_u64_phys(self, gpa):
        mem = self.m.mem
        return mem.read_u64(gpa) if mem.contains(gpa, 8) else None

    def translate(self, gva: int):
        """mmu.Translation, or a falsy mmu.WalkFailure."""
        cr0, cr3, cr4, efer = self.paging()
        return mmu.walk(self._read_u64_phys, cr0, cr3, cr4, efer, gva)

    def read_memory(self, addr: int, size: int) -> bytes:
        """Guest-virtual read; may return short at an unmapped page, raises
        TargetError(EFAULT) when nothing at addr is readable. Planted breakpoint
        bytes read back as the original instructions."""
        out = bytearray()
        mem = self.m.mem
        dc = self.m.debug
        if self._sregs is None and 0 < size <= 0x1000 - (addr & 0xFFF) \
                and not self.m.vcpu.mirrors_sregs:
            # One page, first use in this stop (a debugger's stack read after each
            # step): KVM_TRANSLATE costs far less than KVM_GET_SREGS + a page walk
            # (unless kvm_run mirrors the sregs: then the walk needs no ioctl).
            t = self.m.vcpu.translate(addr) if 0 <= addr < 1 << 64 else None
            if t is not None and mem.contains(t[0], size):
                data = mem.read(t[0], size)
                return dc.shadow(t[0], data) if dc is not None else data
        while size > 0:
            t = self.translate(addr)
            if not t:
                break
            chunk = min(size, t.page_size - (addr & (t.page_size - 1)))
            if not mem.contains(t.gpa, chunk):
                chunk = max(0, mem.size - t.gpa) if mem.contains(t.gpa, 1) else 0
                if not chunk:
                    break
            data = mem.read(t.gpa, chunk)
            if dc is not None:
                data = dc.shadow(t.gpa, data)
            out += data
            addr += chunk
            size -= chunk
        if not out and size > 0:
            raise TargetError(errno.EFAULT, f"cannot access memory at {addr:#x}")
        return bytes(out)

    def read_physical(self, gpa: int, size: int) -> bytes:
        data = self.m.mem.read(gpa, size)
        return self.m.debug.shadow(gpa, data) if self.m.debug is not None else data

    def memory_map(self) -> list:
        """The guest-virtual map from its page tables, named after the image segments."""
        s = self.sregs()
        segs = [(sg.start, sg.end, sg.perms) for sg in self.m.image.segments]
        out = []
        for va, pa, size, w, x in mmu.mapped_ranges(self._read_u64_phys, s.cr0, s.cr3,
                                                    s.cr4, s.efer, limit=1 << 47):
            end = va + size
            # Split the run where image segments start and end, so each region has
            # the unikernel's own permissions.
            cuts = sorted({va, end} | {b for lo, hi, _ in segs for b in (lo, hi)
                                       if va < b < end})
            for lo, hi in zip(cuts, cuts[1:]):
                perms = "r" + ("w" if w else "-") + ("x" if x else "-")
                name = ""
                for slo, shi, sperm in segs:
                    if slo <= lo and hi <= shi:
                        perms, name = sperm, "image"
                        break
                if not name and lo < 0x100000:
                    name = "boot info" if lo >= 0x10000 else ""
                out.append(MemoryRegion(lo, hi, perms, phys=pa + (lo - va), name=name))
        return out

    # --- the rest of the read-side protocol ---------------------------------------------------
    def stop_reason(self):
        return self._stop

    def set_stop(self, stop) -> None:
        self._stop = stop

    def exec_path(self) -> str:
        return self.m.image.path

    def info(self) -> dict:
        """Monitor facts for `monitor info`, reports and cores."""
        import time
        from . import abi
        m = self.m
        return {
            "app": m.image.path,
            "mem_size": m.mem_size,
            "resident": m.mem.resident_bytes(),
            "uptime": time.monotonic() - m.started if m.started else 0.0,
            "cmdline": m.cmdline.decode("utf-8", "replace"),
            "argv": list(m.argv),
            "devices": [{"name": d.name, "type": d.type_name, "attached": d.attached,
                         "read": getattr(d.host, "bytes_read", 0),
                         "written": getattr(d.host, "bytes_written", 0)}
                        for d in m.devices],
            "hypercalls": {abi.HC_NAMES[i]: n for i, n in enumerate(m.stats.hypercalls)
                           if i in abi.HC_NAMES},
            "exits": dict(m.stats.exits),
            "exit_names": _exit_names(),
            "caps": dict(m.caps),
        }


    # --- for `monitor` commands ----------------------------------------------------------
    def system_state(self) -> dict:
        """Descriptor tables and the pending fault, decoded for `monitor regs`."""
        s = self.sregs()
        out = {"gdtr": f"base {s.gdt.base:#x} limit {s.gdt.limit:#x}",
               "idtr": f"base {s.idt.base:#x} limit {s.idt.limit:#x}",
               "tr": f"selector {s.tr.selector:#x} base {s.tr.base:#x} "
                     f"limit {s.tr.limit:#x}",
               "ldtr": f"selector {s.ldt.selector:#x}"
                       + (" (unusable)" if s.ldt.unusable else ""),
               "apic": f"base {s.apic_base:#x}"}
        f = self.fault_view
        if f is not None:
            from ..target import VECTORS
            name = VECTORS[f.vector][0] if f.vector in VECTORS else f"#{f.vector}"
            ec = "" if f.error_code is None else f" error code {f.error_code:#x}"
            out["fault"] = f"{name}{ec} cr2 {f.cr2:#x}, handler {f.handler:#x}"
        return out

    def auxv(self) -> bytes:
        """An auxiliary vector as a Linux process has (AT_PAGESZ, AT_BASE, AT_ENTRY), for
        debuggers that place the executable from AT_ENTRY (lldb's POSIX loader) and
        gdb's `info auxv`."""
        import struct
        return struct.pack("<8Q", 6, 4096, 9, self.m.image.entry, 7, 0, 0, 0)

    def dump_core(self, path: str, owner: bool = False) -> str:
        """`monitor core FILE`: a core of the guest now (issue 4's writer); FILE as
        dumpcore.core_path_rule allows it for this client."""
        try:
            from .modules import dumpcore
        except ImportError:
            raise TargetError(errno.ENOSYS, "core dumps are not available") from None
        path = dumpcore.core_path_rule(self.m.opts.core_dir, path, owner)
        return dumpcore.dump(self.m, stop=self._stop, path=path)


def _exit_names():
    from ..kvm import uapi
    return dict(uapi.EXIT_NAMES)
