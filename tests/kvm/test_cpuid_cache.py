"""The vCPU's CPUID table (tender/machine.py supported_cpuid): KVM's answer with our one
vCPU's APIC IDs, the same on every host CPU, cached per loaded kvm module."""

import os
import struct

import pytest

from ukdbg.kvm import uapi
from ukdbg.kvm.system import Kvm
from ukdbg.tender.machine import for_vcpu0, supported_cpuid

pytestmark = pytest.mark.kvm


def entries(buf):
    n = uapi.CPUID_HEAD.unpack_from(buf)[0]
    return {struct.unpack_from("<II", buf, 8 + 40 * i): struct.unpack_from("<IIII", buf, 20 + 40 * i)
            for i in range(n)}       # (function, index) -> (eax, ebx, ecx, edx)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "ukdbg"


def test_apic_ids_are_vcpu0s_and_nothing_else_changes():
    kvm = Kvm()
    try:
        raw = kvm.supported_cpuid()
        fixed = entries(for_vcpu0(bytearray(raw)))
        for key, (eax, ebx, ecx, edx) in entries(raw).items():
            f = key[0]
            if f == 1:
                assert fixed[key] == (eax, ebx & 0x00FFFFFF, ecx, edx)
            elif f in (0xB, 0x1F):
                assert fixed[key] == (eax, ebx, ecx, 0)
            else:
                assert fixed[key] == (eax, ebx, ecx, edx), hex(f)
    finally:
        kvm.close()


def test_the_same_table_from_any_host_cpu_and_from_the_cache(cache):
    kvm = Kvm()
    cpus = sorted(os.sched_getaffinity(0))
    try:
        tables = []
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            tables.append(bytes(for_vcpu0(kvm.supported_cpuid())))
        assert len(set(tables)) == 1
        first = supported_cpuid(kvm)              # asks KVM, writes the cache
        files = os.listdir(cache)
        assert len(files) == 1 and files[0].startswith("cpuid-")
        assert oct(os.stat(cache / files[0]).st_mode & 0o777) == "0o600"
        assert bytes(first) == tables[0]
        (cache / files[0]).write_bytes(bytes(first[:8]) + b"\xff" * (len(first) - 8))
        assert supported_cpuid(kvm) == bytearray(bytes(first[:8]) + b"\xff" * (len(first) - 8))
    finally:
        os.sched_setaffinity(0, set(cpus))
        kvm.close()


@pytest.mark.parametrize("damage", ["short", "group-writable", "symlink", "no entries"])
def test_a_damaged_or_foreign_cache_file_is_not_used(cache, damage, tmp_path):
    kvm = Kvm()
    try:
        good = supported_cpuid(kvm)
        path = cache / os.listdir(cache)[0]
        other = bytearray(good)
        other[-1] ^= 0xFF                 # well-formed, but not KVM's: never to be used
        if damage == "short":
            path.write_bytes(bytes(other)[:100])
        elif damage == "group-writable":
            path.write_bytes(bytes(other))
            os.chmod(path, 0o620)
        elif damage == "symlink":
            elsewhere = tmp_path / "elsewhere"
            elsewhere.write_bytes(bytes(other))
            path.unlink()
            path.symlink_to(elsewhere)
        else:
            path.write_bytes(b"\0" * len(good))
        assert supported_cpuid(kvm) == good
    finally:
        kvm.close()


def test_a_new_key_replaces_the_old_files(cache):
    cache.mkdir(mode=0o700)
    (cache / "cpuid-old-boot-1-2.bin").write_bytes(b"x")
    (cache / "seccomp-2-3000-1-2.bpf").write_bytes(b"y")
    kvm = Kvm()
    try:
        supported_cpuid(kvm)
    finally:
        kvm.close()
    names = sorted(os.listdir(cache))
    assert len(names) == 2 and names[1] == "seccomp-2-3000-1-2.bpf"
    assert names[0].startswith("cpuid-") and names[0] != "cpuid-old-boot-1-2.bin"
