"""ukdbg/kvm/vcpu.py: VcpuFd, one virtual CPU (vCPU ioctls) and the kvm_run decoder.

Interrupting KVM_RUN from another thread or by a signal (api.rst: "KVM_RUN",
"KVM_SET_SIGNAL_MASK", "immediate_exit"): the vCPU thread keeps its wake-up signals
*blocked* and gives KVM a signal mask without them (set_signal_mask), so they can land
only while the guest runs. One that arrives between two KVM_RUNs stays pending and
ends the next KVM_RUN at once: no lost wake-ups (tender/events.py consumes them).
`immediate_exit` is the other half: set_immediate_exit(True) makes the next KVM_RUN
complete a pending MMIO/PIO access and return without running the guest further.
"""

import errno as _errno
import mmap
import os
import _struct as struct  # not struct.py: one import less at start-up

from ..errors import KvmError
from . import uapi
from .exits import (HLT, HOST_FAULT, INTERRUPTED, SHUTDOWN, Debug, FailEntry, InternalError,
                    IoIn, IoOut, Mmio, Other)
from .libc import ioctl, ioctl_inout

_EINTR = _errno.EINTR
_EAGAIN = _errno.EAGAIN
_EFAULT = _errno.EFAULT
_EXIT = uapi.RUN_REASON_IO_RIP
_MSRS = struct.Struct("<IIIIQ")      # struct kvm_msrs with one kvm_msr_entry
_U64 = struct.Struct("<Q")
_REGS, _SREGS = uapi.KVM_SYNC_X86_REGS, uapi.KVM_SYNC_X86_SREGS
_PAGING = struct.Struct("<6Q")       # kvm_sregs at 224: cr0, cr2, cr3, cr4, cr8, efer


class VcpuFd:
    def __init__(self, fd: int, mmap_size: int):
        self.fd = fd
        self.run_map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)

    # --- KVM_RUN ------------------------------------------------------------------------
    def run(self):
        """KVM_RUN once; returns a VcpuExit (kvm/exits.py). EINTR comes back as Interrupted."""
        try:
            ioctl(self.fd, 0xAE80, 0)
        except OSError as e:
            if e.errno == _EINTR or e.errno == _EAGAIN:
                return INTERRUPTED
            if e.errno == _EFAULT:
                return HOST_FAULT
            raise KvmError("KVM_RUN", e.errno) from None
        run = self.run_map
        # The reason and the io member (meaningless for other exits) in one unpack.
        reason, direction, size, port, count, off, rip = _EXIT.unpack_from(run)
        if reason == 2:
            n = size * count
            if off + n > len(run):
                return Other(reason, 0)
            if direction:
                return IoOut(port, size, count, run[off:off + n], rip)
            return IoIn(port, size, count, off)
        return self._decode_rare(reason)

    def _decode_rare(self, reason):
        run = self.run_map
        if reason == 6:
            addr, data, length, is_write = uapi.RUN_MMIO.unpack_from(run, 32)
            length = min(length, 8)
            return Mmio(addr, length, bool(is_write), data[:length])
        if reason == 4:
            exc, _, pc, dr6, dr7 = uapi.RUN_DEBUG.unpack_from(run, 32)
            return Debug(exc, pc, dr6, dr7)
        if reason == 10:
            return INTERRUPTED
        if reason == 5:
            return HLT
        if reason == 8:
            return SHUTDOWN
        if reason == 17:
            sub, ndata = uapi.RUN_INTERNAL.unpack_from(run, 32)
            ndata = min(ndata, 16)
            return InternalError(sub, struct.unpack_from(f"<{ndata}Q", run, 40))
        if reason == 9:
            hw, cpu = uapi.RUN_FAIL_ENTRY.unpack_from(run, 32)
            return FailEntry(hw, cpu)
        return Other(reason, uapi.RUN_HW.unpack_from(run, 32)[0])

    def enable_sync_regs(self) -> None:
        """Mirror the general registers from now on (see set_sync_regs): the guest's
        rip at an exit costs no ioctl (IoOut.rip, sync_rip())."""
        self.set_sync_regs(self._sync | uapi.KVM_SYNC_X86_REGS)

    def sync_rip(self) -> int:
        """The guest's rip at the last exit (0 unless enable_sync_regs() is on)."""
        return uapi.RUN_HW.unpack_from(self.run_map, uapi.RUN_SYNC_RIP)[0]

    def set_immediate_exit(self, value: bool) -> None:
        """kvm_run.immediate_exit: the next KVM_RUN completes pending I/O, returns EINTR."""
        self.run_map[uapi.RUN_IMMEDIATE_EXIT] = 1 if value else 0

    def io_in_reply(self, offset: int, data: bytes) -> None:
        """Fill the data of an IoIn exit before the next run()."""
        self.run_map[offset:offset + len(data)] = data

    def mmio_read_reply(self, data: bytes) -> None:
        """Fill kvm_run.mmio.data for an Mmio read exit before the next run()."""
        self.run_map[uapi.RUN_MMIO_DATA:uapi.RUN_MMIO_DATA + len(data)] = data

    # --- register state (one ioctl per method) ---------------------------------------
    def _get(self, request, name, size):
        try:
            return ioctl(self.fd, request, bytes(size))
        except OSError as e:
            raise KvmError(name, e.errno) from None

    def _set(self, request, name, data):
        try:
            ioctl(self.fd, request, data)
        except OSError as e:
            raise KvmError(name, e.errno) from None

    # KVM_CAP_SYNC_REGS (api.rst "kvm_valid_regs"): KVM copies the registers (and the
    # special registers) into kvm_run at every exit; get_regs()/get_sregs() then read
    # them there instead of issuing KVM_GET_REGS/SREGS (~35/~80 us on nested PVM; a
    # debugger reads them at every stop). set_regs()/set_sregs() keep the copies current.
    _sync = 0                          # KVM_SYNC_X86_* bits mirrored now

    @property
    def sync_bits(self) -> int:
        return self._sync

    @property
    def mirrors_sregs(self) -> bool:
        """get_sregs() and paging_regs() read kvm_run (no ioctl)."""
        return bool(self._sync & _SREGS)

    def set_sync_regs(self, bits: int) -> None:
        """Mirror the registers named by bits (KVM_SYNC_X86_REGS|SREGS; 0: none)."""
        run = self.run_map
        self._sync = 0
        if bits & uapi.KVM_SYNC_X86_REGS:
            run[uapi.RUN_SYNC_REGS:uapi.RUN_SYNC_REGS + 144] = \
                self._get(uapi.KVM_GET_REGS, "KVM_GET_REGS", 144)
        if bits & uapi.KVM_SYNC_X86_SREGS:
            run[uapi.RUN_SYNC_SREGS:uapi.RUN_SYNC_SREGS + 312] = \
                self._get(uapi.KVM_GET_SREGS, "KVM_GET_SREGS", 312)
        _U64.pack_into(run, uapi.RUN_VALID_REGS, bits)
        self._sync = bits

    def get_regs(self) -> uapi.kvm_regs:
        if self._sync & _REGS:
            return uapi.kvm_regs.unpack(self.run_map, uapi.RUN_SYNC_REGS)
        return uapi.kvm_regs.unpack(self._get(uapi.KVM_GET_REGS, "KVM_GET_REGS", 144))

    def set_regs(self, regs: uapi.kvm_regs) -> None:
        raw = regs.pack()
        self._set(uapi.KVM_SET_REGS, "KVM_SET_REGS", raw)
        if self._sync & _REGS:
            self.run_map[uapi.RUN_SYNC_REGS:uapi.RUN_SYNC_REGS + len(raw)] = raw

    def paging_regs(self):
        """(cr0, cr3, cr4, efer): what a page walk needs, from the mirror when sregs
        are mirrored (no decoding of the segments), else from KVM_GET_SREGS."""
        if self._sync & _SREGS:
            cr0, _cr2, cr3, cr4, _cr8, efer = _PAGING.unpack_from(
                self.run_map, uapi.RUN_SYNC_SREGS + 224)
            return cr0, cr3, cr4, efer
        return self.get_sregs().paging()

    def get_sregs(self) -> uapi.kvm_sregs:
        if self._sync & _SREGS:
            return uapi.kvm_sregs.unpack(self.run_map, uapi.RUN_SYNC_SREGS)
        return uapi.kvm_sregs.unpack(self._get(uapi.KVM_GET_SREGS, "KVM_GET_SREGS", 312))

    def set_sregs(self, sregs: uapi.kvm_sregs) -> None:
        raw = sregs.pack()
        self._set(uapi.KVM_SET_SREGS, "KVM_SET_SREGS", raw)
        if self._sync & _SREGS:
            self.run_map[uapi.RUN_SYNC_SREGS:uapi.RUN_SYNC_SREGS + len(raw)] = raw

    def get_fpu(self) -> uapi.kvm_fpu:
        return uapi.kvm_fpu.unpack(self._get(uapi.KVM_GET_FPU, "KVM_GET_FPU", 416))

    def set_fpu(self, fpu: uapi.kvm_fpu) -> None:
        self._set(uapi.KVM_SET_FPU, "KVM_SET_FPU", fpu.pack())

    def get_xsave(self) -> bytes:
        """KVM_GET_XSAVE: the 4 KiB XSAVE area (legacy FXSAVE image in its first 512)."""
        buf = bytearray(uapi.XSAVE_SIZE)
        try:
            ioctl_inout(self.fd, uapi.KVM_GET_XSAVE, buf)
        except OSError as e:
            raise KvmError("KVM_GET_XSAVE", e.errno) from None
        return bytes(buf)

    def set_xsave(self, area: bytes) -> None:
        buf = bytearray(area)
        try:
            ioctl_inout(self.fd, uapi.KVM_SET_XSAVE, buf)
        except OSError as e:
            raise KvmError("KVM_SET_XSAVE", e.errno) from None

    def get_xcrs(self) -> dict:
        """KVM_GET_XCRS: {xcr index: value} (XCR0 is what cores record)."""
        raw = self._get(uapi.KVM_GET_XCRS, "KVM_GET_XCRS", uapi.XCRS_SIZE)
        n, _ = uapi.XCRS_HEAD.unpack_from(raw, 0)
        out = {}
        for i in range(min(n, 16)):
            xcr, _, value = uapi.XCR_ENTRY.unpack_from(raw, 8 + 16 * i)
            out[xcr] = value
        return out

    def get_debugregs(self) -> uapi.kvm_debugregs:
        return uapi.kvm_debugregs.unpack(self._get(uapi.KVM_GET_DEBUGREGS,
                                                   "KVM_GET_DEBUGREGS", 128))

    def set_debugregs(self, regs: uapi.kvm_debugregs) -> None:
        self._set(uapi.KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", regs.pack())

    def get_xcrs_raw(self) -> bytes:
        """KVM_GET_XCRS as the raw struct (for an exact KVM_SET_XCRS later)."""
        return self._get(uapi.KVM_GET_XCRS, "KVM_GET_XCRS", uapi.XCRS_SIZE)

    def set_xcrs_raw(self, raw: bytes) -> None:
        self._set(uapi.KVM_SET_XCRS, "KVM_SET_XCRS", raw)

    def get_msrs(self, indices) -> dict:
        """KVM_GET_MSRS: {index: value} for the MSRs KVM could read."""
        indices = list(indices)
        buf = bytearray(uapi.MSRS_HEAD.pack(len(indices), 0)
                        + b"".join(uapi.MSR_ENTRY.pack(i, 0, 0) for i in indices))
        try:
            n = ioctl_inout(self.fd, uapi.KVM_GET_MSRS, buf)
        except OSError as e:
            raise KvmError("KVM_GET_MSRS", e.errno) from None
        out = {}
        for k in range(n):
            idx, _, value = uapi.MSR_ENTRY.unpack_from(buf, 8 + 16 * k)
            out[idx] = value
        return out

    def set_msrs(self, values: dict) -> None:
        items = list(values.items())
        buf = bytearray(uapi.MSRS_HEAD.pack(len(items), 0)
                        + b"".join(uapi.MSR_ENTRY.pack(i, 0, v) for i, v in items))
        try:
            ioctl_inout(self.fd, uapi.KVM_SET_MSRS, buf)
        except OSError as e:
            raise KvmError("KVM_SET_MSRS", e.errno) from None
        if self._sync & _SREGS:
            self.set_sync_regs(self._sync)     # EFER is in sregs: refresh the mirror

    def get_vcpu_events(self) -> uapi.kvm_vcpu_events:
        return uapi.kvm_vcpu_events.unpack(self._get(uapi.KVM_GET_VCPU_EVENTS,
                                                     "KVM_GET_VCPU_EVENTS", 64))

    def set_vcpu_events(self, events: uapi.kvm_vcpu_events) -> None:
        self._set(uapi.KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", events.pack())

    def set_cpuid2(self, cpuid: bytearray) -> None:
        """KVM_SET_CPUID2 with a struct kvm_cpuid2 buffer (Kvm.supported_cpuid())."""
        try:
            ioctl_inout(self.fd, uapi.KVM_SET_CPUID2, cpuid)
        except OSError as e:
            raise KvmError("KVM_SET_CPUID2", e.errno) from None

    def set_guest_debug(self, control: int, debugreg=(0,) * 8) -> None:
        """KVM_SET_GUEST_DEBUG: control = KVM_GUESTDBG_* flags, debugreg = DR0-DR7."""
        dbg = uapi.kvm_guest_debug(control, tuple(debugreg))
        self._set(uapi.KVM_SET_GUEST_DEBUG, "KVM_SET_GUEST_DEBUG", dbg.pack())

    def translate(self, gva: int):
        """KVM_TRANSLATE: (gpa, writeable) or None when the address is not mapped."""
        t = uapi.kvm_translation(gva, 0, 0, 0, 0)
        try:
            out = ioctl(self.fd, uapi.KVM_TRANSLATE, t.pack())
        except OSError as e:
            raise KvmError("KVM_TRANSLATE", e.errno) from None
        t = uapi.kvm_translation.unpack(out)
        if not t.valid:
            return None
        return t.physical_address, bool(t.writeable)

    def get_msr(self, index: int) -> int:
        """KVM_GET_MSRS for one MSR (e.g. 0x10, the guest's TSC)."""
        buf = bytearray(_MSRS.pack(1, 0, index, 0, 0))
        try:
            n = ioctl_inout(self.fd, uapi.KVM_GET_MSRS, buf)
        except OSError as e:
            raise KvmError("KVM_GET_MSRS", e.errno) from None
        if n != 1:
            raise KvmError("KVM_GET_MSRS", _errno.EINVAL)
        return _MSRS.unpack(buf)[4]

    def get_tsc_khz(self) -> int:
        try:
            return ioctl(self.fd, uapi.KVM_GET_TSC_KHZ)
        except OSError as e:
            raise KvmError("KVM_GET_TSC_KHZ", e.errno) from None

    def set_signal_mask(self, blocked_bits: int) -> None:
        """KVM_SET_SIGNAL_MASK: the signals blocked *while the guest runs*."""
        self._set(uapi.KVM_SET_SIGNAL_MASK, "KVM_SET_SIGNAL_MASK",
                  uapi.SIGNAL_MASK.pack(8, blocked_bits))

    def close(self):
        try:
            self.run_map.close()
        except BufferError:
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
