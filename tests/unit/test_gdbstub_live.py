"""The live debugger (debugger/debugger.py, debugger/watch.py) over a fake vCPU: both ways a
planted int3 shows up (KVM_EXIT_DEBUG exception 3 on VMX/SVM, an emulation failure on
PVM), single-step over a planted breakpoint, hardware breakpoints, and the watchpoint
decisions for writes, reads and accesses. Guest memory and page tables are real."""

import pytest

from ukdbg.kvm import uapi
from ukdbg.kvm.exits import INTERRUPTED, Debug, InternalError, Mmio
from ukdbg.kvm.memory import GuestMemory
from ukdbg.target import Breakpoint, Stepped, Watchpoint
from ukdbg.tender import boot
from ukdbg.tender.debug import INT3
from ukdbg.debugger.live_target import LiveTarget
from ukdbg.tender.machine import HANDLED, Machine
from ukdbg.tender.options import RunOptions

MEM = 4 << 20
CODE = 0x100100


class FakeVcpu:
    """Registers in records; run() pops scripted exits (callables get the vCPU)."""

    def __init__(self):
        self.regs = uapi.kvm_regs(rip=CODE, rsp=0x3ffff8)
        self.sregs = boot.boot_sregs(uapi.kvm_sregs())
        self.exits = []
        self.debug = []             # every KVM_SET_GUEST_DEBUG
        self.mmio_reply = None
        self.immediate = False
        self.runs = 0

    def get_regs(self):
        return uapi.kvm_regs.unpack(self.regs.pack())

    def set_regs(self, r):
        self.regs = r

    def get_sregs(self):
        return uapi.kvm_sregs.unpack(self.sregs.pack())

    def paging_regs(self):
        s = self.sregs
        return s.cr0, s.cr3, s.cr4, s.efer

    def set_guest_debug(self, control, dr):
        self.debug.append((control, tuple(dr)))

    sync_bits = 0
    mirrors_sregs = False

    def set_sync_regs(self, bits):
        self.sync_bits = bits

    def translate(self, gva):
        return (gva, True) if 0x10000 <= gva < MEM else None

    def set_immediate_exit(self, on):
        self.immediate = on

    def mmio_read_reply(self, data):
        self.mmio_reply = bytes(data)

    def run(self):
        self.runs += 1
        if self.immediate or not self.exits:
            return INTERRUPTED
        ex = self.exits.pop(0)
        return ex(self) if callable(ex) else ex


class Image:
    path = "app.hvt"
    elf = None
    entry = CODE
    segments = []

    class manifest:
        devices = []


class FakeSlots:
    def __init__(self):
        self.calls = []

    def protect(self, pages_ro=(), pages_none=(), unprotect=()):
        self.calls.append((set(pages_ro), set(pages_none), set(unprotect)))

    def image_readonly(self, gpa):
        return False


@pytest.fixture
def m():
    mem = GuestMemory(MEM)
    boot.setup_page_tables(mem, MEM)
    mem.write(CODE, bytes(range(0x40, 0x80)))
    vcpu = FakeVcpu()
    mach = Machine(None, None, vcpu, mem, Image(), RunOptions(),
                   {"guest_debug": True, "readonly_mem": True})
    mach.slots = FakeSlots()
    yield mach
    mem.close()


def debugger(m):
    t = LiveTarget(m)
    d = t.debugger()
    d.attach()
    return t, d


def test_sw_breakpoint_hit_on_vmx_is_a_debug_exit_with_exception_3(m):
    t, d = debugger(m)
    assert d.add_sw_breakpoint(CODE + 4)
    assert m.mem.read(CODE + 4, 1) == bytes((INT3,))
    assert t.read_memory(CODE + 4, 1) == b"\x44"            # shadowed for readers
    m.vcpu.regs.rip = CODE + 4
    stop = m.debug.vmexit_hook(m, Debug(3, CODE + 4, 0, 0))
    assert isinstance(stop, Breakpoint) and stop.addr == CODE + 4 and not stop.hardware


def test_sw_breakpoint_hit_on_pvm_is_an_emulation_failure_at_the_int3(m):
    t, d = debugger(m)
    d.add_sw_breakpoint(CODE + 8)
    m.vcpu.regs.rip = CODE + 8
    stop = m.debug.vmexit_hook(m, InternalError(1, (0,)))
    assert isinstance(stop, Breakpoint) and stop.addr == CODE + 8
    # An emulation failure anywhere else is not a breakpoint (a real crash).
    m.vcpu.regs.rip = CODE + 9
    assert m.debug.vmexit_hook(m, InternalError(1, (0,))) is None
    # Nor an int3 the debugger did not plant.
    assert m.debug.vmexit_hook(m, Debug(3, CODE + 12, 0, 0)) is None


def test_hardware_breakpoint_and_single_step(m):
    t, d = debugger(m)
    assert d.add_hw_breakpoint(CODE + 0x10)
    control, dr = m.vcpu.debug[-1]
    assert control & uapi.KVM_GUESTDBG_USE_HW_BP and dr[0] == CODE + 0x10 and dr[7] & 1
    stop = m.debug.vmexit_hook(m, Debug(1, CODE + 0x10, 1, 0))
    assert isinstance(stop, Breakpoint) and stop.hardware
    # A single-step exit is ours only while stepping; a stale one is consumed.
    assert m.debug.vmexit_hook(m, Debug(1, CODE, 1 << 14, 0)) is HANDLED
    d.stepping = True
    assert isinstance(m.debug.vmexit_hook(m, Debug(1, CODE, 1 << 14, 0)), Stepped)


def test_resume_steps_over_a_planted_breakpoint_with_the_original_byte(m):
    t, d = debugger(m)
    d.add_sw_breakpoint(CODE)
    seen = []

    def step(v):                       # the single step: the int3 must be lifted
        seen.append(m.mem.read(CODE, 1))
        v.regs.rip = CODE + 2
        return Debug(1, CODE + 2, 1 << 14, 0)

    def hit(v):                        # running on: the int3 is back
        seen.append(m.mem.read(CODE, 1))
        v.regs.rip = CODE
        return Debug(3, CODE, 0, 0)
    m.vcpu.exits = [step, hit]
    stop = d.resume(step=False)
    assert seen == [b"\x40", bytes((INT3,))]
    assert isinstance(stop, Breakpoint) and stop.addr == CODE
    assert not m.debug.single_step              # stepping was switched off to run on


def test_single_step_never_executes_a_planted_int3(m):
    t, d = debugger(m)
    d.add_sw_breakpoint(CODE)
    seen = []

    def step(v):
        seen.append(m.mem.read(CODE, 1))
        v.regs.rip = CODE + 2
        return Debug(1, CODE + 2, 1 << 14, 0)
    m.vcpu.exits = [step]
    stop = d.resume(step=True)
    assert isinstance(stop, Stepped) and seen == [b"\x40"]
    assert m.mem.read(CODE, 1) == bytes((INT3,))
    d.detach()                                   # nothing of gdb stays behind
    assert m.mem.read(CODE, 1) == b"\x40"
    assert not m.debug.sw and m.debug.hw == [None] * 4


WATCHED = 0x200000


def test_write_watchpoint_needs_the_value_to_change(m):
    t, d = debugger(m)
    m.mem.write(WATCHED, (5).to_bytes(4, "little"))
    assert d.add_watchpoint("watch", WATCHED, 4)
    d.watch.sync()
    assert m.slots.calls[-1][0] == {WATCHED >> 12}
    same = Mmio(WATCHED, 4, True, (5).to_bytes(4, "little"))
    assert d.watch.vmexit_hook(m, same) is HANDLED
    other = Mmio(WATCHED + 8, 4, True, b"\x01\x02\x03\x04")     # same page, not watched
    assert d.watch.vmexit_hook(m, other) is HANDLED
    assert m.mem.read(WATCHED + 8, 4) == b"\x01\x02\x03\x04"   # performed for the guest
    new = Mmio(WATCHED + 2, 2, True, b"\x07\x00")                # overlaps the end
    stop = d.watch.vmexit_hook(m, new)
    assert isinstance(stop, Watchpoint) and stop.kind == "watch" and stop.addr == WATCHED + 2
    assert m.mem.read(WATCHED, 4) == b"\x05\x00\x07\x00"
    assert m.vcpu.immediate is False             # the completion run is over


def test_read_and_access_watchpoints_answer_the_read(m):
    t, d = debugger(m)
    m.mem.write(WATCHED + 0x100, b"ABCDEFGH")
    d.add_watchpoint("rwatch", WATCHED + 0x104, 2)
    d.add_watchpoint("awatch", WATCHED + 0x200, 8)
    d.watch.sync()
    assert m.slots.calls[-1][1] == {WATCHED >> 12}             # no slot: reads exit too
    stop = d.watch.vmexit_hook(m, Mmio(WATCHED + 0x100, 8, False, b""))
    assert m.vcpu.mmio_reply == b"ABCDEFGH"
    assert isinstance(stop, Watchpoint) and stop.kind == "rwatch" and \
        stop.addr == WATCHED + 0x104
    # A write to an rwatch range is performed but is no hit; one to an awatch range is.
    assert d.watch.vmexit_hook(m, Mmio(WATCHED + 0x104, 1, True, b"z")) is HANDLED
    stop = d.watch.vmexit_hook(m, Mmio(WATCHED + 0x1fc, 8, True, b"12345678"))
    assert isinstance(stop, Watchpoint) and stop.kind == "awatch" and \
        stop.addr == WATCHED + 0x200
    # Exits for other pages are not the watchpoints' business.
    assert d.watch.vmexit_hook(m, Mmio(0x300000, 4, False, b"")) is None


def test_watchpoints_refuse_the_cpus_own_pages(m):
    t, d = debugger(m)
    s = m.vcpu.sregs
    s.idt.base, s.idt.limit = 0x105000, 0xFFF
    assert not d.add_watchpoint("watch", 0x105010, 8)
    assert "IDT" in d.watch.refused
    assert not d.add_watchpoint("rwatch", 0x2000, 8) and "not mapped" in d.watch.refused
    # The tender's page tables (PT0 at 0x8000) are the CPU's: never protected.
    assert d.watch.forbidden_pages()[0x8000 >> 12] == "page tables"
    m.vcpu.regs.rip = WATCHED + 0x10
    assert not d.add_watchpoint("rwatch", WATCHED, 4)       # the code being executed
    assert d.add_watchpoint("watch", WATCHED, 4)            # write-protecting it is fine
    d.watch.sync()
    assert m.slots.calls[-1][0] == {WATCHED >> 12}
    d.detach()
    assert m.slots.calls[-1] == (set(), set(), {WATCHED >> 12})
