"""ukdbg/tender/machine.py: Machine, one hvt VM and everything modules hang on it.

build_machine() is the one recipe (hvt-abi.md §17 order). Modules plug into the
Machine at a few points, like Solo5's hvt_core (one file per feature):
  hypercalls[nr] = fn(m, gpa)         the hypercall table (HALT is the loop's)
  vmexit_hooks   fn(m, exit) -> None | HANDLED | Stop   first look at every exit that
                 is not a hypercall (wrap hypercalls[nr] to observe those)
  hypercall_observers fn(m)           called before a hypercall while non-empty
  halt_hooks     fn(m, status, cookie_gpa)
  ending_hooks   fn(m, stop)          the guest is gone (or frozen for good): cores, reports
  write_observers fn(m, kind, data)   a debugger writes memory ("mem", before), registers
                 ("regs", after), FPU ("fpu", after); the control socket "pause"/"resume"
  async sources  fn(m) per fd         see events.py
"""

import os

from ..errors import UkdbgError
from ..kvm import uapi
from ..kvm.memory import GuestMemory
from ..kvm.system import Kvm
from . import abi, boot, flight, loader
from .console import Console
from .events import Events
from .memslots import MemSlots

HANDLED = object()     # a vmexit hook consumed the exit; the loop runs on


class Stats:
    """Counters the control socket, the cores and `monitor info` report."""

    def __init__(self):
        self.hypercalls = [0] * abi.HC_MAX
        self.exits = {}

    def count_exit(self, reason: int) -> None:
        self.exits[reason] = self.exits.get(reason, 0) + 1


class Machine:
    def __init__(self, kvm, vm, vcpu, mem, image, opts, caps):
        self.kvm, self.vm, self.vcpu, self.mem = kvm, vm, vcpu, mem
        self.image = image
        self.opts = opts
        self.caps = caps
        self.cpuid = None             # the kvm_cpuid2 table the vCPU was given
        self.mem_size = mem.size
        self.hypercalls = [None] * abi.HC_MAX
        self.vmexit_hooks = []
        self.hypercall_observers = []
        self.halt_hooks = []
        self.ending_hooks = []
        self.write_observers = []  # fn(m, kind, data): a debugger or `pause` acts on the guest
        self.stats = Stats()
        self.console = Console()
        self.events = Events(self)
        self.slots = MemSlots(self)
        self.devices = image.manifest.devices
        self.net_fds = {}          # tap fd -> manifest index, for POLL
        self.debug = None          # tender/debug.py DebugControl, created on demand
        self.fault = None          # tender/traps.py FaultContext of the last guest fault
        self.flight = None         # tender/flight.py FlightRecorder (None: --flight 0)
        self.features = {}         # name -> module path, loaded mid-run (ukdbg/run.py)
        self.started = 0.0         # time.monotonic() when the guest first ran
        self.cmdline = b""
        self.argv = []             # the monitor's own command line

    def attached(self, dev_type: int) -> dict:
        """{handle: device} of the attached devices of one manifest type (a handle is
        the device's index in the manifest plus one, as the guest names it)."""
        return {i + 1: d for i, d in enumerate(self.devices)
                if d.type == dev_type and d.attached}

    # The symbol table is only read when a message needs it.
    def describe(self, addr) -> str:
        """'0x1040a2 <crash_here+0x12>' for messages."""
        from ..elf import describe_address
        if addr is None:
            return "?"
        sym = describe_address(self.image.elf, addr)
        return f"{addr:#x} <{sym}>" if sym else f"{addr:#x}"

    def debug_control(self):
        if self.debug is None:
            from .debug import DebugControl
            self.debug = DebugControl(self)
        return self.debug

    def close(self):
        for d in self.devices:
            close = getattr(d.host, "close", None)
            if close:
                close()
        self.events.close()
        self.vcpu.close()
        self.vm.close()
        self.mem.close()
        self.kvm.close()


def adjust_mem_size(mem_mb: int, warn) -> int:
    """§2: MiB -> bytes, rounded down to 2 MiB, at least 2 MiB, at most 4 GiB."""
    if mem_mb <= 0:
        raise UkdbgError(f"--mem must be a positive number of MiB (got {mem_mb})", "")
    size = mem_mb << 20
    adj = max(size - size % abi.MEM_ALIGN, abi.MEM_MIN)
    if adj > abi.MEM_MAX:
        raise UkdbgError(f"guest memory size {adj} bytes exceeds the maximum "
                         f"{abi.MEM_MAX} bytes (--mem=4096)")
    if adj != size:
        warn(f"adjusting memory to {adj} bytes")
    return adj


def _caps(kvm) -> dict:
    c = kvm.check_extension
    return {
        "readonly_mem": c(uapi.KVM_CAP_READONLY_MEM) > 0,
        "immediate_exit": c(uapi.KVM_CAP_IMMEDIATE_EXIT) > 0,
        "guest_debug": c(uapi.KVM_CAP_SET_GUEST_DEBUG) > 0,
        "xsave": c(uapi.KVM_CAP_XSAVE) > 0,
        "xcrs": c(uapi.KVM_CAP_XCRS) > 0,
        "debugregs": c(uapi.KVM_CAP_DEBUGREGS) > 0,
        "vcpu_events": c(uapi.KVM_CAP_VCPU_EVENTS) > 0,
        "tsc_khz": c(uapi.KVM_CAP_GET_TSC_KHZ) > 0,
        "sync_regs": max(c(uapi.KVM_CAP_SYNC_REGS), 0),    # KVM_SYNC_X86_* bits
        "nr_memslots": c(uapi.KVM_CAP_NR_MEMSLOTS),
    }


def build_machine(image, opts, warn) -> Machine:
    """Create the VM, load the image, set the entry state (§17 steps 1-8)."""
    kvm = Kvm()
    caps = _caps(kvm)
    if not kvm.check_extension(uapi.KVM_CAP_USER_MEMORY):
        raise UkdbgError("KVM lacks KVM_CAP_USER_MEMORY")
    vm = kvm.create_vm()
    mem = GuestMemory(opts.mem_size)
    vcpu = vm.create_vcpu(0)
    m = Machine(kvm, vm, vcpu, mem, image, opts, caps)
    loader.load(image, mem)
    m.slots.install()
    boot.setup_page_tables(mem, mem.size)
    boot.setup_gdt(mem)
    m.cpuid = supported_cpuid(kvm)
    vcpu.set_cpuid2(m.cpuid)
    vcpu.set_sregs(boot.boot_sregs(vcpu.get_sregs()))
    if caps["tsc_khz"]:
        m.tsc_hz = vcpu.get_tsc_khz() * 1000
    else:
        m.tsc_hz = 0
    vcpu.set_regs(boot.boot_regs(image.entry, mem.size))
    flight.setup(m, opts)
    return m


def supported_cpuid(kvm) -> bytearray:
    """KVM_GET_SUPPORTED_CPUID, cached per loaded kvm module: ~0.3 ms of every start-up
    on this nested host. KVM computes the answer when its module loads and never
    changes it, so the cache key is the boot (boot_id) and the /dev/kvm node (inode,
    ctime: reloading the module makes a new node). The file is private
    (files.private_cache_dir) and must have the size of the buffer it fills."""
    from ..files import private_cache_dir, read_private, replace_cached
    size = uapi.CPUID_SIZE
    path = None
    try:
        st = os.fstat(kvm.fd)
        fd = os.open("/proc/sys/kernel/random/boot_id", os.O_RDONLY | os.O_CLOEXEC)
        try:
            boot_id = os.read(fd, 64).strip().decode("ascii", "replace")
        finally:
            os.close(fd)
        d = private_cache_dir()
        if d and boot_id.replace("-", "").isalnum():
            path = f"{d}/cpuid-{boot_id}-{st.st_ino:x}-{st.st_ctime_ns:x}.bin"
    except OSError:
        pass
    data = read_private(path, size) if path else None
    if data is not None and len(data) == size and \
            0 < uapi.CPUID_HEAD.unpack_from(data)[0] <= uapi.CPUID_MAX_ENTRIES:
        return bytearray(data)
    buf = for_vcpu0(kvm.supported_cpuid())
    if path:
        replace_cached(path, buf, "cpuid-")
    return buf


def for_vcpu0(buf: bytearray) -> bytearray:
    """KVM fills the APIC IDs of leaf 1 (EBX[31:24]) and leaves 0xB/0x1F (EDX) from the
    host CPU the ioctl ran on: our one vCPU's are 0 (as Firecracker sets its vCPUs'),
    and the same table on every run and host CPU (a replay's guest sees what the
    recorded one saw)."""
    n = uapi.CPUID_HEAD.unpack_from(buf)[0]
    base = uapi.CPUID_HEAD.size
    for i in range(min(n, uapi.CPUID_MAX_ENTRIES)):
        off = base + i * uapi.CPUID_ENTRY_SIZE
        function = int.from_bytes(buf[off:off + 4], "little")
        if function == 1:
            buf[off + 19] = 0                   # EBX[31:24], at entry offset 16
        elif function in (0xB, 0x1F):
            buf[off + 24:off + 28] = bytes(4)   # EDX
    return buf


def write_boot_info(m: Machine, cmdline: bytes) -> None:
    """§6: boot info, manifest copy (attached set), command line; after module setup."""
    mft = m.image.manifest.host_copy()
    mft_gpa = abi.BOOT_INFO + abi.BOOT_INFO_SIZE
    cmd_gpa = mft_gpa + len(mft)
    if len(cmdline) >= abi.CMDLINE_SIZE:
        raise UkdbgError(f"guest command line too long (max={abi.CMDLINE_SIZE - 1} "
                         "characters)")
    if cmd_gpa + abi.CMDLINE_SIZE > abi.GUEST_MIN_BASE:
        raise UkdbgError("manifest too large for the boot info window")
    m.mem.write(mft_gpa, mft)
    m.mem.write(cmd_gpa, cmdline + b"\0")
    m.mem.write(abi.BOOT_INFO, abi.BOOT_INFO_ST.pack(
        m.mem_size, m.image.kernel_end, m.tsc_hz, cmd_gpa, mft_gpa, 0, 0, 0))
    m.cmdline = cmdline


def check_devices_attached(m: Machine) -> None:
    missing = [d for d in m.devices if d.type < abi.MFT_RESERVED_FIRST and not d.attached]
    if missing:
        names = ", ".join(f"'{d.name}' ({d.type_name})" for d in missing)
        opts = " ".join(("--block:" if d.type == abi.MFT_DEV_BLOCK_BASIC else "--net:")
                        + d.name + "=..." for d in missing)
        raise UkdbgError(f"device {names} declared by the unikernel but not attached",
                         f"attach every declared device, e.g. {opts}")


def pid_tag() -> str:
    return str(os.getpid())
