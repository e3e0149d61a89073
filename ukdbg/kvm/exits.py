"""ukdbg/kvm/exits.py: typed vCPU exits, decoded from struct kvm_run in VcpuFd.run() only.

Plain __slots__ classes rather than frozen dataclasses: one is built per exit on the
hypercall hot path, where a frozen dataclass's __init__ costs about a microsecond.
"""


class VcpuExit:
    __slots__ = ()
    reason = -1

    def __repr__(self):
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None


class IoOut(VcpuExit):
    """`out` to `port`: `data` holds size*count bytes. RIP may already be past it;
    `rip` is the guest's when VcpuFd.enable_sync_regs() is on, else 0."""
    __slots__ = ("port", "size", "count", "data", "rip")
    reason = 2

    def __init__(self, port, size, count, data, rip=0):
        self.port = port
        self.size = size
        self.count = count
        self.data = data
        self.rip = rip


class IoIn(VcpuExit):
    """`in` from `port`: fill run[offset:offset+size*count] before the next run()."""
    __slots__ = ("port", "size", "count", "offset")
    reason = 2

    def __init__(self, port, size, count, offset):
        self.port = port
        self.size = size
        self.count = count
        self.offset = offset


class Mmio(VcpuExit):
    """Access to guest-physical memory with no (writable) memslot behind it."""
    __slots__ = ("addr", "length", "is_write", "data")
    reason = 6

    def __init__(self, addr, length, is_write, data):
        self.addr = addr
        self.length = length
        self.is_write = is_write
        self.data = data


class Debug(VcpuExit):
    """KVM_EXIT_DEBUG: single step / hardware breakpoint (exception 1) or int3 (3)."""
    __slots__ = ("exception", "pc", "dr6", "dr7")
    reason = 4

    def __init__(self, exception, pc, dr6, dr7):
        self.exception = exception
        self.pc = pc
        self.dr6 = dr6
        self.dr7 = dr7


class Hlt(VcpuExit):
    __slots__ = ()
    reason = 5


class Shutdown(VcpuExit):
    """Triple fault (or another shutdown condition)."""
    __slots__ = ()
    reason = 8


class FailEntry(VcpuExit):
    __slots__ = ("hardware_reason", "cpu")
    reason = 9

    def __init__(self, hardware_reason, cpu):
        self.hardware_reason = hardware_reason
        self.cpu = cpu


class InternalError(VcpuExit):
    """KVM_EXIT_INTERNAL_ERROR; suberror 1 is an instruction-emulation failure."""
    __slots__ = ("suberror", "data")
    reason = 17

    def __init__(self, suberror, data):
        self.suberror = suberror
        self.data = data


class Interrupted(VcpuExit):
    """KVM_RUN returned EINTR (a kick or a signal) or KVM_EXIT_INTR."""
    __slots__ = ()
    reason = 10


class HostFault(VcpuExit):
    """KVM_RUN failed with EFAULT: the host mapping refused the guest's access."""
    __slots__ = ()
    reason = -2


class Other(VcpuExit):
    """Any exit the tender has no case for (kept for the diagnosis)."""
    __slots__ = ("exit_reason", "hardware_reason")

    def __init__(self, exit_reason, hardware_reason):
        self.exit_reason = exit_reason
        self.hardware_reason = hardware_reason

    @property
    def reason(self):
        return self.exit_reason


INTERRUPTED = Interrupted()
HLT = Hlt()
SHUTDOWN = Shutdown()
HOST_FAULT = HostFault()
