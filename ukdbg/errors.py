"""ukdbg/errors.py: the exception tree. Each error carries its fields and one-line message.

The CLI turns any UkdbgError into `ukdbg: <message>` on stderr and `exit_code`; nothing
else reaches the user as a traceback.
"""


class UkdbgError(Exception):
    """Base class: `str(e)` is the one-line message, `exit_code` the process status."""

    exit_code = 1
    hint = ""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        if hint:
            self.hint = hint


class UsageError(UkdbgError):
    """Bad command line."""

    exit_code = 2


class KvmUnavailable(UkdbgError):
    """/dev/kvm is missing, inaccessible or too old."""


class KvmError(UkdbgError):
    """A KVM ioctl failed: names the ioctl and errno."""

    def __init__(self, what: str, errno_: int):
        import os
        super().__init__(f"KVM: {what} failed: {os.strerror(errno_)} (errno {errno_})")
        self.what = what
        self.errno = errno_


class ExecutableError(UkdbgError):
    """The unikernel image is rejected (hvt-abi.md §13-§15)."""


class DeviceError(UkdbgError):
    """A block or network device cannot be attached or used."""


class GuestMemoryError(UkdbgError):
    """An access outside guest memory (or into read-only memory) was refused."""

    def __init__(self, gpa: int, size: int, reason: str = "outside guest memory"):
        super().__init__(f"guest access gpa={gpa:#x} size={size:#x} {reason}")
        self.gpa = gpa
        self.size = size
        self.reason = reason


class TargetError(UkdbgError):
    """Non-fatal debugger-visible error: becomes an `Exx` reply in the gdb stub."""

    def __init__(self, errno_: int, message: str = ""):
        super().__init__(message or f"target error {errno_}")
        self.errno = errno_


class CoreFormatError(UkdbgError):
    """A core file is truncated, corrupt or not ours."""
