"""kvm/uapi.py against the machine's <linux/kvm.h>, compiled with gcc."""

import os
import shutil
import subprocess

import pytest

from ukdbg.kvm import uapi

NAMES = ["KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION",
         "KVM_GET_VCPU_MMAP_SIZE", "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU",
         "KVM_SET_USER_MEMORY_REGION", "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS",
         "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_TRANSLATE", "KVM_SET_SIGNAL_MASK",
         "KVM_GET_FPU", "KVM_SET_FPU", "KVM_SET_CPUID2", "KVM_GET_MSRS", "KVM_SET_GUEST_DEBUG",
         "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_GET_DEBUGREGS", "KVM_GET_TSC_KHZ",
         "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_GET_XCRS", "KVM_SET_XCRS",
         "KVM_SET_MSRS", "KVM_SET_DEBUGREGS", "KVM_GET_DIRTY_LOG", "KVM_MEM_LOG_DIRTY_PAGES",
         "KVM_CAP_USER_MEMORY", "KVM_CAP_SET_GUEST_DEBUG", "KVM_CAP_READONLY_MEM",
         "KVM_CAP_IMMEDIATE_EXIT", "KVM_CAP_XSAVE", "KVM_CAP_XCRS", "KVM_CAP_GET_TSC_KHZ",
         "KVM_MEM_READONLY", "KVM_GUESTDBG_ENABLE", "KVM_GUESTDBG_SINGLESTEP",
         "KVM_GUESTDBG_USE_SW_BP", "KVM_GUESTDBG_USE_HW_BP", "KVM_EXIT_IO", "KVM_EXIT_MMIO",
         "KVM_EXIT_DEBUG", "KVM_EXIT_SHUTDOWN", "KVM_EXIT_FAIL_ENTRY", "KVM_EXIT_INTR",
         "KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_HLT", "KVM_CAP_SYNC_REGS", "KVM_SYNC_X86_REGS"]
SIZES = {"kvm_regs": 144, "kvm_sregs": 312, "kvm_fpu": 416, "kvm_guest_debug": 72,
         "kvm_userspace_memory_region": 32, "kvm_translation": 24, "kvm_debugregs": 128,
         "kvm_vcpu_events": 64, "kvm_segment": 24, "kvm_dtable": 16, "kvm_xcrs": 392}
OFFSETS = ["io.port", "io.data_offset", "mmio.phys_addr", "mmio.data", "mmio.len",
           "mmio.is_write", "debug.arch.exception", "debug.arch.pc", "debug.arch.dr6",
           "internal.suberror", "internal.ndata", "internal.data", "exit_reason",
           "immediate_exit", "kvm_valid_regs", "s.regs.regs.rip"]


@pytest.fixture(scope="module")
def header_values(tmp_path_factory):
    if not shutil.which("gcc") or not os.path.exists("/usr/include/linux/kvm.h"):
        pytest.skip("gcc or <linux/kvm.h> missing")
    d = tmp_path_factory.mktemp("uapi")
    src = d / "v.c"
    lines = ["#include <linux/kvm.h>", "#include <stdio.h>", "#include <stddef.h>",
             "int main(void){"]
    lines += [f'printf("{n} %lu\\n", (unsigned long)({n}));' for n in NAMES]
    lines += [f'printf("sizeof_{n} %lu\\n", (unsigned long)sizeof(struct {n}));'
              for n in SIZES]
    lines += [f'printf("off_{o} %lu\\n", (unsigned long)offsetof(struct kvm_run, {o}));'
              for o in OFFSETS]
    lines.append("return 0;}")
    src.write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(d / "v"), str(src)], check=True)
    out = subprocess.run([str(d / "v")], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (ln.split() for ln in out.splitlines())}


def test_ioctl_numbers_and_constants(header_values):
    for n in NAMES:
        assert getattr(uapi, n) == header_values[n], n


def test_struct_sizes(header_values):
    ours = {"kvm_regs": uapi.kvm_regs.ST.size, "kvm_sregs": uapi.kvm_sregs.SIZE,
            "kvm_fpu": uapi.kvm_fpu.ST.size, "kvm_guest_debug": uapi.kvm_guest_debug.ST.size,
            "kvm_userspace_memory_region": uapi.kvm_userspace_memory_region.ST.size,
            "kvm_translation": uapi.kvm_translation.ST.size,
            "kvm_debugregs": uapi.kvm_debugregs.ST.size,
            "kvm_vcpu_events": uapi.kvm_vcpu_events.ST.size,
            "kvm_segment": uapi.kvm_segment.ST.size, "kvm_dtable": uapi.kvm_dtable.ST.size,
            "kvm_xcrs": uapi.XCRS_SIZE}
    for n, size in SIZES.items():
        assert ours[n] == header_values[f"sizeof_{n}"] == size, n


def test_kvm_run_offsets(header_values):
    h = header_values
    assert h["off_exit_reason"] == uapi.RUN_EXIT_REASON
    assert h["off_immediate_exit"] == uapi.RUN_IMMEDIATE_EXIT
    assert h["off_io.port"] == uapi.RUN_UNION + 2
    assert h["off_io.data_offset"] == uapi.RUN_UNION + 8
    assert h["off_mmio.data"] == uapi.RUN_MMIO_DATA
    assert h["off_mmio.len"] == uapi.RUN_UNION + 16
    assert h["off_mmio.is_write"] == uapi.RUN_UNION + 20
    assert h["off_debug.arch.pc"] == uapi.RUN_UNION + 8
    assert h["off_debug.arch.dr6"] == uapi.RUN_UNION + 16
    assert h["off_internal.data"] == uapi.RUN_UNION + 8
    assert h["off_kvm_valid_regs"] == uapi.RUN_VALID_REGS
    assert h["off_s.regs.regs.rip"] == uapi.RUN_SYNC_RIP
    assert uapi.RUN_IO_RIP.size == uapi.RUN_SYNC_RIP + 8 - uapi.RUN_UNION


def test_sregs_round_trip():
    s = uapi.kvm_sregs()
    s.cs.selector, s.cs.l, s.gdt.base, s.cr3, s.efer = 8, 1, 0x1000, 0x2000, 0x500
    s.interrupt_bitmap = (1, 2, 3, 4)
    raw = s.pack()
    assert len(raw) == 312
    back = uapi.kvm_sregs.unpack(raw)
    assert back.pack() == raw
    assert back.cs.selector == 8 and back.cs.l == 1 and back.cr3 == 0x2000
