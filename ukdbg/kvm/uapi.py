"""ukdbg/kvm/uapi.py: linux/kvm.h transcribed for x86-64: ioctl numbers and layouts.

Data only, no behaviour (the kvm-bindings split). Layouts are struct.Struct formats
wrapped in small __slots__ records, not ctypes Structures: the run path must start in
a few milliseconds and ctypes alone costs ~2 ms to import. Numbers and sizes were checked
against the machine's <linux/kvm.h>; tests/unit/test_uapi.py repeats the check with gcc.
Plain ints, not IntEnum: the run path must not import `enum` either.
"""

import _struct as struct  # not struct.py: one import less at start-up
from itertools import repeat as _repeat

# --- ioctl numbers (Documentation/virt/kvm/api.rst), grouped by file descriptor ------
# /dev/kvm
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03          # also on a VM fd
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_GET_SUPPORTED_CPUID = 0xC008AE05
# VM fd
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_GET_DIRTY_LOG = 0x4010AE42          # struct kvm_dirty_log: slot, pad, bitmap pointer
# vCPU fd
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_TRANSLATE = 0xC018AE85
KVM_SET_SIGNAL_MASK = 0x4004AE8B
KVM_GET_FPU = 0x81A0AE8C
KVM_SET_FPU = 0x41A0AE8D
KVM_SET_CPUID2 = 0x4008AE90
KVM_GET_MSRS = 0xC008AE88
KVM_SET_GUEST_DEBUG = 0x4048AE9B      # KVM_CAP_SET_GUEST_DEBUG
KVM_GET_VCPU_EVENTS = 0x8040AE9F      # KVM_CAP_VCPU_EVENTS
KVM_SET_VCPU_EVENTS = 0x4040AEA0
KVM_GET_DEBUGREGS = 0x8080AEA1        # KVM_CAP_DEBUGREGS
KVM_SET_DEBUGREGS = 0x4080AEA2
KVM_SET_MSRS = 0x4008AE89
KVM_GET_TSC_KHZ = 0xAEA3              # KVM_CAP_GET_TSC_KHZ
KVM_GET_XSAVE = 0x9000AEA4            # KVM_CAP_XSAVE
KVM_SET_XSAVE = 0x5000AEA5
KVM_GET_XCRS = 0x8188AEA6             # KVM_CAP_XCRS
KVM_SET_XCRS = 0x4188AEA7

KVM_API_VERSION = 12

# --- capabilities (KVM_CHECK_EXTENSION) -----------------------------------------------
KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_IOEVENTFD = 36
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_XSAVE2 = 208
KVM_CAP_SYNC_REGS = 74                # the KVM_SYNC_X86_* bits kvm_run can mirror
KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1

# --- memory slots -------------------------------------------------------------------
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# --- guest debug (struct kvm_guest_debug.control) -------------------------------------
KVM_GUESTDBG_ENABLE = 0x1
KVM_GUESTDBG_SINGLESTEP = 0x2
KVM_GUESTDBG_USE_SW_BP = 0x10000
KVM_GUESTDBG_USE_HW_BP = 0x20000

# --- exit reasons (struct kvm_run.exit_reason) -----------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

EXIT_NAMES = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT",
    6: "MMIO", 7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR",
    17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT",
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

INTERNAL_ERROR_NAMES = {
    1: "instruction emulation failed",
    2: "exception while delivering an exception",
    3: "failure while delivering an event",
    4: "unexpected exit reason",
}

# --- struct kvm_run: offsets into the mmapped page (the union starts at 32) -----------
RUN_IMMEDIATE_EXIT = 1        # u8
RUN_EXIT_REASON = 8           # u32
RUN_UNION = 32
RUN_IO = struct.Struct("<BBHIQ")          # direction, size, port, count, data_offset
RUN_MMIO = struct.Struct("<Q8sIB")        # phys_addr, data[8], len, is_write
RUN_MMIO_DATA = 40
RUN_DEBUG = struct.Struct("<IIQQQ")       # exception, pad, pc, dr6, dr7
RUN_INTERNAL = struct.Struct("<II")       # suberror, ndata; then u64 data[16] at 40
RUN_FAIL_ENTRY = struct.Struct("<QI")     # hardware_entry_failure_reason, cpu
RUN_HW = struct.Struct("<Q")              # hardware_exit_reason
RUN_VALID_REGS = 288          # u64 kvm_valid_regs (KVM_CAP_SYNC_REGS)
RUN_SYNC_REGS = 304           # union s: struct kvm_sync_regs, kvm_regs first
RUN_SYNC_SREGS = RUN_SYNC_REGS + 144
RUN_SYNC_RIP = RUN_SYNC_REGS + 128      # s.regs.regs.rip
# The io union and, 400 bytes on, s.regs.regs.rip: one unpack per hypercall exit.
RUN_IO_RIP = struct.Struct("<BBHIQ384xQ")
# exit_reason (at 8), then from 32 the above: one unpack for a whole I/O exit.
RUN_REASON_IO_RIP = struct.Struct("<8xI20x" + RUN_IO_RIP.format.lstrip("<"))
assert RUN_REASON_IO_RIP.size == RUN_UNION + RUN_IO_RIP.size


# --- records ------------------------------------------------------------------------------
FILL_AFTER = 16         # unpacks of a Record class before its fill is generated


class Record:
    """A fixed C struct as a mutable record: ST (struct.Struct) and FIELDS in order."""
    __slots__ = ()
    ST = None
    FIELDS = ()

    def __init__(self, *values, **kw):
        if not values:
            values = (0,) * len(self.FIELDS)
        for f, v in zip(self.FIELDS, values):
            setattr(self, f, v)
        for f, v in kw.items():
            setattr(self, f, v)

    @classmethod
    def unpack(cls, buf, offset=0):
        r = cls.__new__(cls)
        values = cls.ST.unpack_from(buf, offset)
        fill = cls.__dict__.get("_fill")
        if fill is not None:
            fill(r, values)
            return r
        # The first uses (a plain run's few) set the fields through C-level calls; a
        # class decoded often (kvm_regs at every debugger stop) gets a generated fill,
        # 4x faster per call but ~0.1-0.2 ms to compile: not a cost for start-up.
        any(map(setattr, _repeat(r), cls.FIELDS, values))
        n = cls.__dict__.get("_unpacked", 0) + 1
        cls._unpacked = n
        if n >= FILL_AFTER:
            cls._make_fill()
        return r

    @classmethod
    def _make_fill(cls):
        """fill(record, values): one generated assignment per field (a setattr loop,
        even a C-level one, costs 4x more)."""
        body = "\n".join(f"    r.{f} = v[{i}]" for i, f in enumerate(cls.FIELDS)) or "    pass"
        ns = {}
        exec(f"def fill(r, v):\n{body}\n", ns)
        cls._fill = staticmethod(ns["fill"])
        return ns["fill"]

    def pack(self) -> bytes:
        return self.ST.pack(*[getattr(self, f) for f in self.FIELDS])

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(
            f"{f}={getattr(self, f)!r}" for f in self.FIELDS) + ")"

    def __eq__(self, other):
        return type(self) is type(other) and self.pack() == other.pack()


class kvm_regs(Record):
    FIELDS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10",
              "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
    __slots__ = FIELDS
    ST = struct.Struct("<18Q")


class kvm_segment(Record):
    FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g",
              "avl", "unusable")
    __slots__ = FIELDS
    ST = struct.Struct("<QIHBBBBBBBBBx")


class kvm_dtable(Record):
    FIELDS = ("base", "limit")
    __slots__ = FIELDS
    ST = struct.Struct("<QH6x")


SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


class kvm_sregs:
    """struct kvm_sregs: 8 segments, gdt, idt, control registers, interrupt bitmap."""
    __slots__ = SEGMENT_NAMES + ("gdt", "idt", "cr0", "cr2", "cr3", "cr4", "cr8", "efer",
                                 "apic_base", "interrupt_bitmap")
    _TAIL = struct.Struct("<7Q4Q")
    SIZE = 312

    def __init__(self):
        for n in SEGMENT_NAMES:
            setattr(self, n, kvm_segment())
        self.gdt, self.idt = kvm_dtable(), kvm_dtable()
        self.cr0 = self.cr2 = self.cr3 = self.cr4 = self.cr8 = self.efer = 0
        self.apic_base = 0
        self.interrupt_bitmap = (0, 0, 0, 0)

    @classmethod
    def unpack(cls, buf, offset=0):
        s = cls.__new__(cls)
        seg = kvm_segment.ST.size
        for i, n in enumerate(SEGMENT_NAMES):
            setattr(s, n, kvm_segment.unpack(buf, offset + i * seg))
        off = offset + 8 * seg
        s.gdt = kvm_dtable.unpack(buf, off)
        s.idt = kvm_dtable.unpack(buf, off + 16)
        t = cls._TAIL.unpack_from(buf, off + 32)
        s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base = t[:7]
        s.interrupt_bitmap = t[7:]
        return s

    def paging(self) -> tuple:
        """(cr0, cr3, cr4, efer): what a page walk needs."""
        return self.cr0, self.cr3, self.cr4, self.efer

    def pack(self) -> bytes:
        return b"".join([getattr(self, n).pack() for n in SEGMENT_NAMES]
                        + [self.gdt.pack(), self.idt.pack(),
                           self._TAIL.pack(self.cr0, self.cr2, self.cr3, self.cr4, self.cr8,
                                           self.efer, self.apic_base,
                                           *self.interrupt_bitmap)])


class kvm_fpu(Record):
    """fpr: 8 x 16 bytes (80-bit values), xmm: 16 x 16 bytes, kept as bytes."""
    FIELDS = ("fpr", "fcw", "fsw", "ftwx", "last_opcode", "last_ip", "last_dp", "xmm",
              "mxcsr")
    __slots__ = FIELDS
    ST = struct.Struct("<128sHHBxHQQ256sI4x")

    def __init__(self, *values, **kw):
        super().__init__(*values, **kw)
        if not values:
            self.fpr, self.xmm = b"\0" * 128, b"\0" * 256


class kvm_guest_debug(Record):
    FIELDS = ("control", "debugreg")
    __slots__ = FIELDS
    ST = struct.Struct("<I4x8Q")

    def pack(self) -> bytes:
        return self.ST.pack(self.control, *self.debugreg)


class kvm_userspace_memory_region(Record):
    FIELDS = ("slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr")
    __slots__ = FIELDS
    ST = struct.Struct("<IIQQQ")


class kvm_translation(Record):
    FIELDS = ("linear_address", "physical_address", "valid", "writeable", "usermode")
    __slots__ = FIELDS
    ST = struct.Struct("<QQBBB5x")


class kvm_debugregs(Record):
    FIELDS = ("db0", "db1", "db2", "db3", "dr6", "dr7", "flags")
    __slots__ = FIELDS
    ST = struct.Struct("<7Q72x")


class kvm_vcpu_events(Record):
    FIELDS = ("exception_injected", "exception_nr", "exception_has_error_code",
              "exception_pending", "exception_error_code", "interrupt", "nmi",
              "sipi_vector", "flags", "smi", "triple_fault_pending",
              "exception_has_payload", "exception_payload")
    __slots__ = FIELDS
    ST = struct.Struct("<BBBBI4s4sII4sB26xBQ")


XSAVE_SIZE = 4096
XCRS_SIZE = 392
XCRS_HEAD = struct.Struct("<II")          # nr_xcrs, flags; then 16 x {u32 xcr, u32, u64}
XCR_ENTRY = struct.Struct("<IIQ")
CPUID_MAX_ENTRIES = 100                   # the buffer Solo5 uses (hvt-abi.md §5)
CPUID_ENTRY_SIZE = 40
CPUID_HEAD = struct.Struct("<II")         # nent, padding
CPUID_SIZE = CPUID_HEAD.size + CPUID_MAX_ENTRIES * CPUID_ENTRY_SIZE   # the whole buffer
DIRTY_LOG = struct.Struct("<IIQ")         # slot, padding, dirty_bitmap (user pointer)
MSRS_HEAD = struct.Struct("<II")          # nmsrs, pad; then {u32 index, u32, u64 data}
MSR_ENTRY = struct.Struct("<IIQ")
SIGNAL_MASK = struct.Struct("<IQ")        # len (= 8), the kernel's 64-bit sigset

for _s, _n in ((kvm_regs, 144), (kvm_segment, 24), (kvm_dtable, 16), (kvm_fpu, 416),
               (kvm_guest_debug, 72), (kvm_userspace_memory_region, 32),
               (kvm_translation, 24), (kvm_debugregs, 128), (kvm_vcpu_events, 64)):
    assert _s.ST.size == _n, (_s.__name__, _s.ST.size)
assert SIGNAL_MASK.size == 12
