"""ukdbg/kvm/system.py: Kvm, the /dev/kvm file descriptor (system ioctls)."""

import os

from ..errors import KvmError, KvmUnavailable
from . import uapi
from .libc import ioctl, ioctl_inout

DEV_KVM = "/dev/kvm"


class Kvm:
    """/dev/kvm. `Kvm()` checks the API version; create_vm() makes a VmFd."""

    def __init__(self, path: str = None):
        # UKDBG_KVM_DEVICE: another KVM device node (tests, unusual setups).
        path = path or os.environ.get("UKDBG_KVM_DEVICE") or DEV_KVM
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(
                f"{path} does not exist: this machine offers no KVM",
                "load the kvm module (modprobe kvm_intel or kvm_amd), or run on a host "
                "with hardware virtualisation or nested KVM") from None
        except PermissionError:
            raise KvmUnavailable(
                f"{path}: permission denied",
                f"add your user to the group that owns {path} (usually 'kvm': "
                "sudo usermod -aG kvm $USER), then log in again") from None
        except OSError as e:
            raise KvmUnavailable(f"{path}: {e.strerror}") from None
        try:
            version = ioctl(self.fd, uapi.KVM_GET_API_VERSION)
        except OSError as e:
            raise KvmUnavailable(f"{path} is not a KVM device ({e.strerror})") from None
        if version != uapi.KVM_API_VERSION:
            raise KvmUnavailable(f"{path}: KVM API version {version}, need 12")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 if absent, else a positive capability value."""
        try:
            return max(ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap), 0)
        except OSError:
            return 0

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd (struct kvm_run...)."""
        try:
            return ioctl(self.fd, uapi.KVM_GET_VCPU_MMAP_SIZE)
        except OSError as e:
            raise KvmError("KVM_GET_VCPU_MMAP_SIZE", e.errno) from None

    def supported_cpuid(self) -> bytearray:
        """KVM_GET_SUPPORTED_CPUID into a struct kvm_cpuid2 buffer of 100 entries."""
        buf = bytearray(uapi.CPUID_SIZE)
        uapi.CPUID_HEAD.pack_into(buf, 0, uapi.CPUID_MAX_ENTRIES, 0)
        try:
            ioctl_inout(self.fd, uapi.KVM_GET_SUPPORTED_CPUID, buf)
        except OSError as e:
            raise KvmError("KVM_GET_SUPPORTED_CPUID", e.errno) from None
        return buf

    def create_vm(self):
        """KVM_CREATE_VM (machine type 0)."""
        from .vm import VmFd
        while True:
            try:
                return VmFd(ioctl(self.fd, uapi.KVM_CREATE_VM, 0), self)
            except InterruptedError:
                continue
            except OSError as e:
                raise KvmError("KVM_CREATE_VM", e.errno) from None

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
