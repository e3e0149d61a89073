"""ukdbg/kvm/vm.py: VmFd, a KVM virtual machine (VM ioctls)."""

import os

from ..errors import KvmError
from . import uapi
from .libc import ioctl


class VmFd:
    def __init__(self, fd: int, kvm):
        self.fd = fd
        self.kvm = kvm

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM (the per-VM answer)."""
        try:
            return max(ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap), 0)
        except OSError:
            return 0

    def set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int,
                               host_addr: int) -> None:
        """KVM_SET_USER_MEMORY_REGION. size 0 deletes the slot.

        Safety: [host_addr, host_addr+size) must stay mapped while the slot exists;
        the guest reads and writes it behind Python's back.
        """
        region = uapi.kvm_userspace_memory_region(slot, flags, gpa, size, host_addr)
        try:
            ioctl(self.fd, uapi.KVM_SET_USER_MEMORY_REGION, region.pack())
        except OSError as e:
            raise KvmError(f"KVM_SET_USER_MEMORY_REGION(slot {slot}, gpa {gpa:#x}, "
                           f"size {size:#x})", e.errno) from None

    def get_dirty_log(self, slot: int, bitmap: bytearray) -> None:
        """KVM_GET_DIRTY_LOG: fill bitmap (one bit per page of the slot, whole u64 words)
        with the pages the guest wrote since the last call, and clear them in KVM.
        Only for a slot created with KVM_MEM_LOG_DIRTY_PAGES. ctypes (for the buffer's
        address) loads only here: dirty logging is a debugger feature."""
        import ctypes
        addr = ctypes.addressof((ctypes.c_char * len(bitmap)).from_buffer(bitmap))
        try:
            ioctl(self.fd, uapi.KVM_GET_DIRTY_LOG, uapi.DIRTY_LOG.pack(slot, 0, addr))
        except OSError as e:
            raise KvmError(f"KVM_GET_DIRTY_LOG(slot {slot})", e.errno) from None

    def create_vcpu(self, vcpu_id: int = 0):
        """KVM_CREATE_VCPU, then mmap of its struct kvm_run."""
        from .vcpu import VcpuFd
        try:
            fd = ioctl(self.fd, uapi.KVM_CREATE_VCPU, vcpu_id)
        except OSError as e:
            raise KvmError("KVM_CREATE_VCPU", e.errno) from None
        return VcpuFd(fd, self.kvm.vcpu_mmap_size())

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
