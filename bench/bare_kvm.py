"""bench/bare_kvm.py: the floor of any Python KVM monitor's start-up (bench/boot.py runs it).

No ukdbg: only the standard library's fcntl, mmap and struct, and the kernel calls a
run's set-up makes. A VM like `ukdbg run`'s (512 MiB memfd, the same three slots,
one vCPU, KVM's CPUID table, its special registers) runs two `hlt`s in real mode at
0x1000, and the process exits. Its time over `python -c pass` is what the platform
costs before a monitor does anything of its own: imports of three C modules, KVM's
set-up and teardown, and the page faults of both.
"""

import fcntl
import mmap
import os
import struct

KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_RUN = 0xAE01, 0xAE41, 0xAE80
KVM_GET_VCPU_MMAP_SIZE, KVM_SET_USER_MEMORY_REGION = 0xAE04, 0x4020AE46
KVM_GET_SUPPORTED_CPUID, KVM_SET_CPUID2 = 0xC008AE05, 0x4008AE90
KVM_GET_SREGS, KVM_SET_SREGS, KVM_SET_REGS = 0x8138AE83, 0x4138AE84, 0x4090AE82
KVM_EXIT_HLT = 5
SIZE = 512 << 20


def main():
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    fd = os.memfd_create("bare-kvm", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    mem = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    mem[0x1000:0x1002] = b"\xf4\xf4"                        # hlt; hlt
    with open("/proc/self/maps") as f:                      # the mapping's address
        addr = next(int(ln.split("-")[0], 16) for ln in f if "/memfd:bare-kvm" in ln)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run = mmap.mmap(vcpu, fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), mmap.MAP_SHARED,
                    mmap.PROT_READ | mmap.PROT_WRITE)
    # ukdbg's slots: 1 MiB, 12 KiB read-only, the rest
    for slot, (gpa, size, flags) in enumerate(((0, 1 << 20, 0), (1 << 20, 12288, 2),
                                               ((1 << 20) + 12288, SIZE - (1 << 20) - 12288, 0))):
        fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION,
                    struct.pack("<IIQQQ", slot, flags, gpa, size, addr + gpa))
    cpuid = bytearray(8 + 100 * 40)
    struct.pack_into("<II", cpuid, 0, 100, 0)
    fcntl.ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid)
    fcntl.ioctl(vcpu, KVM_SET_CPUID2, cpuid)
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    struct.pack_into("<QIH", sregs, 0, 0, 0xFFFF, 0)       # cs: base 0, selector 0
    fcntl.ioctl(vcpu, KVM_SET_SREGS, sregs)
    regs = bytearray(144)
    struct.pack_into("<QQ", regs, 128, 0x1000, 2)           # rip, rflags
    fcntl.ioctl(vcpu, KVM_SET_REGS, regs)
    fcntl.ioctl(vcpu, KVM_RUN, 0)
    reason = struct.unpack_from("<I", run, 8)[0]
    if reason != KVM_EXIT_HLT:
        raise SystemExit(f"bare_kvm: exit reason {reason}, not HLT")
    os._exit(0)


if __name__ == "__main__":
    main()
