"""ukdbg/sandbox.py: the seccomp allowlist `ukdbg run` confines itself to after set-up.

As solo5-hvt does: once the guest is set up (image loaded, devices and files open), a
seccomp filter allows only what the run loop, the gdb stub, the control socket, cores,
the trace, logs and a recording need (POLICY, with the reason for each; docs/security.md
is the reader's copy). A bug in hypercall handling then cannot become an arbitrary host
syscall (execve, ptrace, mount, connect, opening a file for writing, ...).

A refused syscall never kills the monitor or the guest: syscall number N fails with
errno BASE + N, which refused() maps back to the syscall's name, and report() logs it
with the Python stack (stderr and --log). The request that tried it fails; the guest
runs on.

Cost at start-up. libseccomp (through the pyseccomp binding) compiles POLICY into BPF;
importing it and compiling costs ~30-100 ms (ctypes, typing, a `ldconfig -p`), far over
the 2 ms budget. So the compiled program is cached in ~/.cache/ukdbg (0700, checked to
be the user's own), keyed by a CRC of the policy: the first run compiles it with
libseccomp and loads it with libseccomp's seccomp_load(); every later run loads
libseccomp's cached program with one seccomp(2) call through the C-level _ctypes
module (~0.3 ms). No BPF is written by hand here.
"""

import os

BASE = 3000              # refused syscall nr N -> errno BASE + N (< 4096: still an error)
MAX_NR = 512             # x86-64 syscall numbers below this are named in reports
FORMAT = 1               # of the cache file

# ioctl requests besides KVM's (type 0xAE): terminal and socket queries Python makes.
TCGETS, TIOCGWINSZ, FIONREAD, FIONBIO, FIOCLEX, FIONCLEX = \
    0x5401, 0x5413, 0x541B, 0x5421, 0x5451, 0x5450
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
O_ACCMODE, O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o3, 0o100, 0o200, 0o1000, 0o2000
O_TMPFILE = 0o20200000       # __O_TMPFILE | O_DIRECTORY
PROT_EXEC, MAP_ANONYMOUS = 0x4, 0x20
# Condition ops (libseccomp's SCMP_CMP_*): (arg index, op, a[, b]).
EQ, MASKED_EQ = 4, 7

# (syscall, why, [condition sets]); no condition sets: any arguments. Several sets: any
# one of them (each set: all of its conditions).
POLICY = (
    # --- the run loop and KVM
    ("ioctl", "KVM_RUN and every other KVM request (type 0xAE: vCPU registers, memory "
              "slots, dirty log, debug); isatty, window size and FIONREAD/FIONBIO/FIOCLEX "
              "queries that Python's io and socket layers make",
     [[(1, MASKED_EQ, 0xFF00, 0xAE00)]] + [[(1, EQ, r)] for r in
                                            (TCGETS, TIOCGWINSZ, FIONREAD, FIONBIO,
                                             FIOCLEX, FIONCLEX)]),
    ("rt_sigtimedwait", "the vCPU loop consumes the signals that ended KVM_RUN (EINTR): "
                        "SIGIO, SIGALRM, SIGTERM... (tender/events.py)", None),
    ("rt_sigprocmask", "signals are unblocked only around poll() (Events.wait)", None),
    ("rt_sigaction", "Python's signal module (handlers restored at the end)", None),
    ("rt_sigreturn", "return from a signal handler", None),
    ("restart_syscall", "the kernel's restart of a poll() interrupted by a signal", None),
    ("tgkill", "SIGUSR1 only: Events.post() wakes the vCPU thread (gdb's Ctrl-C)",
     [[(2, EQ, 10)]]),
    ("setitimer", "--timeout and the control socket's delayed opening", None),
    ("poll", "Events.wait: the POLL hypercall, a paused guest, a stopped gdb session; "
             "the control and gdb sockets", None),
    ("ppoll", "the same, as libc may issue it", None),
    ("epoll_create1", "the selectors module (the gdb stub's connection)", None),
    ("epoll_ctl", "the same", None),
    ("epoll_wait", "the same", None),
    ("clock_gettime", "timestamps (trace, uptime, POLL deadlines) when the vDSO defers",
     None),
    ("futex", "the GIL and libc locks", None),
    ("getrandom", "Python's os.urandom (random names), hash seeds of late imports", None),
    ("exit_group", "the monitor's exit", None),
    # --- memory: Python's heap, guest-memory views, a recording
    ("mmap", "Python's allocator; guest-memory views; a late C extension (the crash "
             "report's disassembler): never anonymous executable memory",
     [[(2, MASKED_EQ, PROT_EXEC, 0)], [(3, MASKED_EQ, MAP_ANONYMOUS, 0)]]),
    ("mprotect", "the allocator and the dynamic loader; never to add PROT_EXEC",
     [[(2, MASKED_EQ, PROT_EXEC, 0)]]),
    ("munmap", "the allocator, guest-memory views", None),
    ("mremap", "the allocator (growing buffers)", None),
    ("brk", "the allocator", None),
    ("madvise", "the allocator; a recording's dirty-page tracking (--record)", None),
    ("memfd_create", "a recording's snapshot of guest memory (--record)", None),
    # --- files: read anything, write only fds opened at set-up or brand-new files
    ("read", "console, sockets, tap (NET_READ), late imports", None),
    ("write", "console output, --trace, --log, --console, sockets, tap (NET_WRITE)", None),
    ("readv", "NET_READ straight into guest memory", None),
    ("pread64", "reading cores' pages and the image for gdb's vFile", None),
    ("preadv2", "BLOCK_READ straight into guest memory (os.preadv)", None),
    ("pwrite64", "BLOCK_WRITE; writing a core", None),
    ("pwritev2", "BLOCK_WRITE, as libc may issue it", None),
    ("lseek", "SEEK_DATA/SEEK_HOLE over guest memory (sparse cores); late imports", None),
    ("close", "sockets and files the monitor is done with", None),
    ("openat", "late imports (read-only); a core: an unnamed O_TMPFILE, or O_CREAT|O_EXCL "
               "on a filesystem without it. No open can truncate or write an existing "
               "file",
     [[(2, MASKED_EQ, O_ACCMODE | O_CREAT | O_TRUNC, 0)],
      [(2, MASKED_EQ, O_TMPFILE | O_TRUNC, O_TMPFILE)],
      [(2, MASKED_EQ, O_CREAT | O_EXCL | O_TRUNC, O_CREAT | O_EXCL)]]),
    ("newfstatat", "late imports; fstat of open files", None),
    ("fstat", "the same, as older libcs issue it", None),
    ("readlink", "os.path.realpath (gdb's vFile allowlist, imports)", None),
    ("getdents64", "late imports (directory listings)", None),
    ("getcwd", "absolute paths of cores", None),
    ("fcntl", "O_ASYNC, F_SETOWN_EX and F_SETSIG on sockets; O_NONBLOCK", None),
    ("pipe2", "Events.wait's wake-up pipe", None),
    ("fsync", "a core is on disk before it is linked in, and so is its directory", None),
    ("ftruncate", "a core's size (sparse) before it is written", None),
    ("linkat", "a finished core is linked in under its name (never replaces a file)", None),
    ("link", "the same, for the named temporary on a filesystem without O_TMPFILE", None),
    ("unlink", "the control and gdb sockets' files at the end; a failed core's named "
               "temporary", None),
    ("mkdir", "the runtime directory (0700) when the control socket opens", None),
    ("umask", "sockets are created mode 0600", None),
    ("chmod", "a unix gdb socket is made mode 0600", None),
    # --- sockets: the control socket and the gdb stub (listening only, no connect)
    ("socket", "the control socket (unix) and a gdb stub started later (unix, TCP v4/v6)",
     [[(0, EQ, AF_UNIX)], [(0, EQ, AF_INET)], [(0, EQ, AF_INET6)]]),
    ("bind", "the same", None),
    ("listen", "the same", None),
    ("accept4", "a control or gdb client", None),
    ("getsockname", "the address a stub bound (port 0)", None),
    ("getsockopt", "SO_PEERCRED: the control socket's peer uid; SO_ERROR", None),
    ("setsockopt", "TCP_NODELAY, SO_REUSEADDR", None),
    ("sendto", "replies to gdb and control clients", None),
    ("recvfrom", "requests from gdb and control clients", None),
    # --- identity (reads only)
    ("getpid", "core names, --log records, the control socket's name", None),
    ("gettid", "F_SETOWN_EX: SIGIO goes to the vCPU thread", None),
    ("getuid", "the control socket's owner check", None),
    ("sched_getaffinity", "os.cpu_count() in late imports", None),
)

# Refused arguments of a conditional syscall get its own errno (named in the report)
# only through rules that match them: libseccomp lets an unconditional rule override
# the conditional ALLOWs. So each complement is spelled out where it is cheap; ioctl's
# is not (255 request types on the KVM_RUN path), and falls to the default action.
REFUSE = {
    "mprotect": [[(2, MASKED_EQ, PROT_EXEC, PROT_EXEC)]],
    "mmap": [[(2, MASKED_EQ, PROT_EXEC, PROT_EXEC), (3, MASKED_EQ, MAP_ANONYMOUS,
                                                      MAP_ANONYMOUS)]],
    "socket": [[(0, EQ, f)] for f in (0, 3, 4, 5, 6, 7, 8, 9)] + [[(0, 5, 11)]],  # GE 11
    "openat": [[(2, MASKED_EQ, O_TRUNC, O_TRUNC)],
               [(2, MASKED_EQ, O_CREAT | O_EXCL | O_TRUNC, O_CREAT)]]
              + [[(2, MASKED_EQ, O_ACCMODE | O_CREAT | 0o20000000, acc)] for acc in (1, 2, 3)],
}
UNNAMED = "ioctl with a request outside the allowlist (or an unknown syscall)"

_NAMES = None            # nr -> name, read from the cache file on the first report
_state = {"active": False, "path": None, "m": None}


def allowed_names() -> list:
    return [p[0] for p in POLICY]


def active() -> bool:
    return _state["active"]


def _key() -> str:
    import binascii
    return "%08x" % binascii.crc32(repr((FORMAT, BASE, MAX_NR, POLICY, REFUSE)).encode())


def cache_dir() -> str:
    """$XDG_CACHE_HOME/ukdbg or ~/.cache/ukdbg (created 0700)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not base.startswith("/"):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ukdbg")


def _cache_path():
    """The cache file's path, or None when there is no private place for it: it must
    be a directory of ours that nobody else can write (else: compile every time)."""
    d = cache_dir()
    try:
        os.makedirs(d, 0o700, exist_ok=True)
        st = os.lstat(d)
    except OSError:
        return None
    if st.st_mode & 0o170000 != 0o040000 or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    return os.path.join(d, f"seccomp-{_key()}.bpf")


def install(m=None) -> str:
    """Load the filter into this thread (and what it starts). Returns how: "cached" or
    "compiled". Raises OSError or ImportError if it cannot (the caller reports it).
    m: the machine, whose --log gets the reports."""
    path = _cache_path()
    blob = _read_cache(path) if path else None
    if blob is None:
        bpf, names = _compile(path)
        how = "compiled"
    else:
        bpf = blob
        _load_bpf(bpf)
        how = "cached"
    _state["active"] = True
    _state["path"] = path
    _state["m"] = m
    return how


def _read_cache(path):
    """The cached program, or None (missing, or not ours and private)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000 != 0o100000 or st.st_uid != os.getuid()
                or st.st_mode & 0o022 or st.st_size > 1 << 20):
            return None
        data = os.read(fd, st.st_size + 1)
    finally:
        os.close(fd)
    if data[:4] != b"UKSB" or len(data) < 8:
        return None
    n = int.from_bytes(data[4:8], "little")
    bpf = data[8:8 + n]
    if n == 0 or n % 8 or len(bpf) != n:
        return None
    return bpf


def _names_from_cache(path) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
        n = int.from_bytes(data[4:8], "little")
        return dict(enumerate(data[8 + n:].decode().split("\n")))
    except (OSError, ValueError):
        return {}


def build_filter():
    """The libseccomp filter of POLICY (pyseccomp), plus {nr: name}."""
    import pyseccomp as S
    f = S.SyscallFilter(S.ERRNO(BASE + MAX_NR))      # unknown numbers
    f.set_attr(S.Attr.ACT_BADARCH, S.ERRNO(BASE + MAX_NR))
    try:
        f.set_attr(S.Attr.CTL_OPTIMIZE, 2)           # a binary tree: KVM_RUN stays cheap
    except OSError:
        pass
    names = {}
    allowed = set()
    for name, _why, conds in POLICY:
        nr = S.resolve_syscall(S.Arch.NATIVE, name)
        if nr < 0:
            continue                                  # not on this architecture
        allowed.add(nr)
        for cset in conds or [[]]:
            f.add_rule(S.ALLOW, nr, *[S.Arg(*c) for c in cset])
        for cset in REFUSE.get(name, ()):   # other arguments: named in the report
            f.add_rule(S.ERRNO(BASE + nr), nr, *[S.Arg(*c) for c in cset])
    for nr in range(MAX_NR):
        try:
            names[nr] = S.resolve_syscall(S.Arch.NATIVE, nr).decode()
        except ValueError:
            continue
        if nr not in allowed:
            f.add_rule(S.ERRNO(BASE + nr), nr)
    return f, names


def _compile(path):
    """Compile with libseccomp, load it with seccomp_load(), cache the program."""
    f, names = build_filter()
    r, w = os.pipe()
    try:
        class _W:
            def fileno(self):
                return w
        f.export_bpf(_W())
        os.close(w)
        w = -1
        bpf = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            bpf += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    global _NAMES
    _NAMES = names
    if path:
        table = "\n".join(names.get(i, "") for i in range(MAX_NR)).encode()
        _write_cache(path, b"UKSB" + len(bpf).to_bytes(4, "little") + bpf + table)
    f.load()
    return bpf, names


def _write_cache(path, data) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _load_bpf(bpf: bytes) -> None:
    """prctl(PR_SET_NO_NEW_PRIVS) and seccomp(SECCOMP_SET_MODE_FILTER) with libseccomp's
    compiled program, through the C-level _ctypes (ctypes' own import costs ~1.7 ms)."""
    import _ctypes

    class c_long(_ctypes._SimpleCData):
        _type_ = "l"

    class c_char(_ctypes._SimpleCData):
        _type_ = "c"

    class Syscall(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = c_long
        _argtypes_ = (c_long,) * 6

    class Prog(_ctypes.Array):
        _type_ = c_char
        _length_ = len(bpf)

    class Fprog(_ctypes.Array):
        _type_ = c_char
        _length_ = 16

    syscall = Syscall(_ctypes.dlsym(_ctypes.dlopen(None, 0), "syscall"))
    prog = Prog.from_buffer_copy(bpf)
    fprog = Fprog.from_buffer_copy(
        (len(bpf) // 8).to_bytes(8, "little") + _ctypes.addressof(prog).to_bytes(8, "little"))
    # SYS_prctl = 157, PR_SET_NO_NEW_PRIVS = 38; SYS_seccomp = 317, SET_MODE_FILTER = 1
    for args in ((157, 38, 1, 0, 0, 0), (317, 1, 0, _ctypes.addressof(fprog), 0, 0)):
        if syscall(*args) != 0:
            e = _ctypes.get_errno()
            raise OSError(e, os.strerror(e))


# --- reports ---------------------------------------------------------------------------
def refused(exc) -> str:
    """The name of the syscall the sandbox refused, if exc (or what caused it) is that
    refusal; else ''."""
    seen = 0
    while exc is not None and seen < 8:
        e = getattr(exc, "errno", None)
        if isinstance(e, int) and BASE <= e <= BASE + MAX_NR:
            return _name(e - BASE)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return ""


def _name(nr: int) -> str:
    global _NAMES
    if nr == MAX_NR:
        return UNNAMED
    if _NAMES is None:
        _NAMES = _names_from_cache(_state["path"]) if _state["path"] else {}
    return _NAMES.get(nr) or f"syscall {nr}"


def describe(exc, where: str):
    """For a catch site: None if exc is not a sandbox refusal; else report it (once:
    the syscall's name and the Python stack on stderr and in --log) and return the one
    line to show in place of the error, e.g. "refused by the sandbox: execve"."""
    name = refused(exc) if _state["active"] else ""
    if not name:
        return None
    if not getattr(exc, "_ukdbg_reported", False):
        report(exc, where)
        try:
            exc._ukdbg_reported = True
        except AttributeError:
            pass
    return f"refused by the sandbox: {name}"


def report(exc, where: str) -> str:
    """Log a refusal (syscall name, Python stack) on stderr and in --log; returns the
    one-line summary."""
    import sys
    import traceback
    name = refused(exc)
    line = f"sandbox refused {name} (in {where}); the guest runs on"
    stack = "".join(traceback.format_stack()[:-2]) + "".join(
        traceback.format_tb(exc.__traceback__))
    try:
        sys.stderr.write(f"ukdbg: {line}\nukdbg: Python stack of the refused call:\n"
                         + "".join(f"ukdbg: {ln}\n" for ln in stack.splitlines()))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    m = _state.get("m")
    if m is not None and getattr(m, "log", None) is not None:
        try:
            from .tender.modules.log import log_event
            log_event(m, "sandbox", syscall=name, where=where, stack=stack)
        except Exception:
            pass
    return line
