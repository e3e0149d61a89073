"""ukdbg/target.py: what a debuggable target is, for a live VM and a core file alike.

The gdb stub, the core writer and the inspector see only this interface: a live VM
(debugger/live_target.py, its read side tender/view.py) and a core file (coredump/reader.py) both implement it, and
a target advertises optional powers (writing, resuming, breakpoints, watchpoints) by
returning an object from the matching capability method, else None (the gdbstub
crate's "IDET" pattern). Stops are small plain classes: they are built on the run
path, which must not import dataclasses or enum.
"""

# Signal numbers as gdb and Linux cores use them (x86-64 Linux).
SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE = 1, 2, 3, 4, 5, 6, 7, 8
SIGKILL, SIGUSR1, SIGSEGV, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM = 9, 10, 11, 12, 13, 14, 15
SIGSYS = 31
SIGNAL_NAMES = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP",
                6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1",
                11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM",
                31: "SIGSYS"}

# x86 exception vector -> (mnemonic, signal): how a guest fault looks to a debugger.
VECTORS = {
    0: ("#DE", "divide error", SIGFPE), 1: ("#DB", "debug", SIGTRAP),
    2: ("#NMI", "non-maskable interrupt", SIGBUS), 3: ("#BP", "breakpoint", SIGTRAP),
    4: ("#OF", "overflow", SIGSEGV), 5: ("#BR", "bound range exceeded", SIGSEGV),
    6: ("#UD", "invalid opcode", SIGILL), 7: ("#NM", "device not available", SIGFPE),
    8: ("#DF", "double fault", SIGSEGV), 10: ("#TS", "invalid TSS", SIGSEGV),
    11: ("#NP", "segment not present", SIGBUS), 12: ("#SS", "stack-segment fault", SIGBUS),
    13: ("#GP", "general protection fault", SIGSEGV), 14: ("#PF", "page fault", SIGSEGV),
    16: ("#MF", "x87 floating-point error", SIGFPE), 17: ("#AC", "alignment check", SIGBUS),
    18: ("#MC", "machine check", SIGBUS), 19: ("#XM", "SIMD floating-point exception",
                                                SIGFPE),
    20: ("#VE", "virtualization exception", SIGSEGV),
}
VECTORS_WITH_ERROR_CODE = frozenset((8, 10, 11, 12, 13, 14, 17))


def vector_name(v: int) -> str:
    return VECTORS[v][0] if v in VECTORS else f"#{v}"


class Stop:
    """Why the target is not running. `signal` is what gdb and a core report."""
    __slots__ = ()
    signal = 0

    def __repr__(self):
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Exited(Stop):
    """The guest called HALT with `status` and no trap frame."""
    __slots__ = ("status", "cookie")

    def __init__(self, status: int, cookie: int = 0):
        self.status = status
        self.cookie = cookie


class Crashed(Stop):
    """The guest died: its own trap report (cookie), an abort, or a fault the monitor saw.

    cause: short code (see tender/endings.py CAUSES); message: one line for people;
    rip: where; vector/error_code/fault_addr: the exception, when known;
    regs: arch.x86_64.Regs *of the faulting instruction* when captured, else None.
    """
    __slots__ = ("cause", "signal", "message", "rip", "vector", "error_code", "fault_addr",
                 "exit_reason", "regs", "status")

    def __init__(self, cause, signal, message, rip=None, vector=None, error_code=None,
                 fault_addr=None, exit_reason=None, regs=None, status=None):
        self.cause = cause
        self.signal = signal
        self.message = message
        self.rip = rip
        self.vector = vector
        self.error_code = error_code
        self.fault_addr = fault_addr
        self.exit_reason = exit_reason
        self.regs = regs
        self.status = status


class Killed(Stop):
    """The monitor was told to end the guest: a signal, a timeout, `stop` or gdb's kill."""
    __slots__ = ("signal", "reason")

    def __init__(self, signal: int, reason: str = ""):
        self.signal = signal
        self.reason = reason


class Interrupted(Stop):
    """Stopped on request (gdb's Ctrl-C, an attach, `pause`)."""
    __slots__ = ()
    signal = SIGINT


class Breakpoint(Stop):
    __slots__ = ("addr", "hardware")
    signal = SIGTRAP

    def __init__(self, addr: int, hardware: bool = False):
        self.addr = addr
        self.hardware = hardware


class Stepped(Stop):
    __slots__ = ()
    signal = SIGTRAP


class Watchpoint(Stop):
    """kind: 'watch' (write), 'rwatch' (read) or 'awatch' (access); addr: watched address."""
    __slots__ = ("kind", "addr")
    signal = SIGTRAP

    def __init__(self, kind: str, addr: int):
        self.kind = kind
        self.addr = addr


class MemoryRegion:
    """A guest-virtual range and its permissions ('rwx' subset), as a core or the page
    tables describe it. `touched` is False when no byte of it was ever written."""
    __slots__ = ("start", "end", "perms", "phys", "name")

    def __init__(self, start, end, perms, phys=None, name=""):
        self.start = start
        self.end = end
        self.perms = perms
        self.phys = phys
        self.name = name

    def __repr__(self):
        return f"MemoryRegion({self.start:#x}-{self.end:#x} {self.perms} {self.name})"


# --- the protocol (documentation; implementations duck-type it) ------------------------
class Target:
    """Read side, for every target.

    read_registers() -> arch.x86_64.Regs      general, segment and system registers
    read_fpu() -> arch.x86_64.Fpu             x87/SSE state
    read_memory(addr, size) -> bytes          guest-virtual; may return short; raises
                                              TargetError(EFAULT) when nothing is readable
    memory_map() -> [MemoryRegion]
    stop_reason() -> Stop
    exec_path() -> str | None                 the unikernel image
    info() -> dict                            monitor facts for `monitor info`/reports
    Capabilities (return an object or None):
    writable()   write_registers(regs), write_fpu(fpu), write_memory(addr, data)
    resumable()  resume(step=False) -> Stop (blocks), interrupt() (any thread), kill()
    breakpoints() add/remove_sw_breakpoint(addr), add/remove_hw_breakpoint(addr)
    watchpoints() add/remove_watchpoint(kind, addr, size)
    """


class ReadOnly:
    """The capabilities of a target that only reads (a core, the tender's MachineView):
    none. LiveTarget overrides them."""

    def writable(self):
        return None

    def resumable(self):
        return None

    def breakpoints(self):
        return None

    def watchpoints(self):
        return None
