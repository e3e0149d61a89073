"""tender/endings.py: every kind of exit gets a cause, a one-line message and an exit
code, including exits this host's KVM cannot produce (entry failures, EFAULT)."""

import pytest

from ukdbg.kvm import uapi
from ukdbg.kvm.exits import (HLT, HOST_FAULT, SHUTDOWN, Debug, FailEntry, InternalError,
                             IoIn, Mmio, Other)
from ukdbg.kvm.memory import GuestMemory
from ukdbg.target import Crashed, Exited, Killed
from ukdbg.tender import abi, endings
from ukdbg.tender.machine import Machine
from ukdbg.tender.options import RunOptions


class FakeVcpu:
    def get_regs(self):
        return uapi.kvm_regs(rip=0x100abc)

    def get_sregs(self):
        return uapi.kvm_sregs()


class Image:
    path = "app.hvt"
    elf = None
    segments = []

    class manifest:
        devices = []


@pytest.fixture
def m():
    mem = GuestMemory(4 << 20)
    yield Machine(None, None, FakeVcpu(), mem, Image(), RunOptions(), {})
    mem.close()


@pytest.mark.parametrize("ex,cause,code,text", [
    (SHUTDOWN, "triple-fault", 139, "triple-faulted (shutdown) at rip=0x100abc"),
    (InternalError(1, ()), "internal-error", 132, "instruction emulation failed"),
    (InternalError(3, (1, 2)), "internal-error", 132, "failure while delivering an event"),
    (FailEntry(0x80000021, 0), "fail-entry", 132, "hardware reason 0x80000021"),
    (HOST_FAULT, "host-fault", 139, "translation fault"),
    (HLT, "halted", 132, "executed hlt"),
    (Mmio(0x5000000, 4, False, b""), "unmapped", 135, "read from unbacked guest-physical "
                                                      "address 0x5000000 (4 bytes)"),
    (Mmio(0x100000, 2, True, b"ab"), "readonly", 139, "wrote 2 bytes to read-only memory"),
    (Mmio(0x9000000, 8, True, b"abcdefgh"), "unmapped", 135, "write to unbacked"),
    (IoIn(0x60, 1, 1, 0), "bad-port", 159, "in port=0x60 size=1"),
    (Debug(3, 0x100abc, 0, 0), "breakpoint", 133, "unexpected debug exit"),
    (Other(24, 0), "unknown-exit", 132, "unhandled KVM exit SYSTEM_EVENT (24)"),
])
def test_classify(m, ex, cause, code, text):
    stop = endings.classify(m, ex)
    assert isinstance(stop, Crashed) and stop.cause == cause
    assert text in stop.message and "\n" not in stop.message
    assert stop.rip == 0x100abc
    assert endings.exit_code(stop) == code


def test_halt_plain_abort_and_trap(m):
    m.mem.write(0x200000, abi.HC_HALT_ST.pack(0, 3))
    stop = endings.halt(m, 0x200000)
    assert isinstance(stop, Exited) and endings.exit_code(stop) == 3
    m.mem.write(0x200000, abi.HC_HALT_ST.pack(0, 255))
    stop = endings.halt(m, 0x200000)
    assert stop.cause == "abort" and endings.exit_code(stop) == 255
    # A trap frame cookie: cr2, ec, rip, cs, rflags, rsp, ss
    m.mem.write(0x300000, abi.TRAP_FRAME_ST.pack(0xdead, 2, 0x100123, 8, 0x10046, 0x3ff000, 0x10))
    m.mem.write(0x200000, abi.HC_HALT_ST.pack(0x300000, 255))
    stop = endings.halt(m, 0x200000)
    assert stop.cause == "trap" and stop.rip == 0x100123 and endings.exit_code(stop) == 255
    # A cookie outside memory is a hostile pointer, not a crash of the monitor.
    m.mem.write(0x200000, abi.HC_HALT_ST.pack((4 << 20) - 100, 255))
    stop = endings.halt(m, 0x200000)
    assert stop.cause == "hostile-pointer" and endings.exit_code(stop) == 159


def test_negative_and_large_statuses(m):
    m.mem.write(0x200000, abi.HC_HALT_ST.pack(0, -1))
    assert endings.exit_code(endings.halt(m, 0x200000)) == 255
    m.mem.write(0x200000, abi.HC_HALT_ST.pack(0, 0x1234))
    assert endings.exit_code(endings.halt(m, 0x200000)) == 0x34


def test_killed_codes():
    assert endings.exit_code(Killed(2)) == 130
    assert endings.exit_code(Killed(15)) == 143
    assert endings.exit_code(Killed(14, "timeout")) == 124
