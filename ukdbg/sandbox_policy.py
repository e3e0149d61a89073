"""ukdbg/sandbox_policy.py: what the seccomp filter of `ukdbg run` allows, and why.

The data behind ukdbg/sandbox.py, apart so that the run path never loads it: a run
loads the compiled program from the cache, keyed by a CRC of this file's text. Each
entry: (syscall, why it is needed after set-up, argument conditions or None).
docs/security.md is the reader's copy (a test keeps the two the same).
"""

from .sandbox import BASE, MAX_NR

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
    ("tgkill", "the monitor's own signals only (HUP, INT, QUIT, USR1, ALRM, TERM, IO): "
               "Events.post() wakes the vCPU thread with SIGUSR1 (gdb's Ctrl-C); a gdb "
               "session that ends makes the signals it took pending again",
     [[(2, EQ, sig)] for sig in (1, 2, 3, 10, 14, 15, 29)]),
    ("setitimer", "--timeout and the control socket's delayed opening", None),
    ("poll", "Events.wait: the POLL hypercall, a paused guest, a stopped gdb session; "
             "the control and gdb sockets", None),
    ("ppoll", "the same, as libc may issue it", None),
    ("select", "the gdb stub's socket writes wait with select() when the client is slow "
               "(gdbstub/transport.py send_all)", None),
    ("pselect6", "the same, as libc may issue it", None),
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
    ("getpeername", "a TCP gdb client's address, to find its uid in /proc/net/tcp", None),
    ("shutdown", "a refused gdb client is half-closed, so it reads the reason", None),
    ("getsockopt", "SO_PEERCRED: the control socket's peer uid; SO_ERROR", None),
    ("setsockopt", "TCP_NODELAY, SO_REUSEADDR", None),
    ("sendto", "replies to gdb and control clients", None),
    ("recvfrom", "requests from gdb and control clients", None),
    # --- identity (reads only)
    ("getpid", "core names, --log records, the control socket's name", None),
    ("gettid", "F_SETOWN_EX: SIGIO goes to the vCPU thread", None),
    ("getuid", "the control socket's owner check", None),
    ("sched_getaffinity", "os.cpu_count() in late imports", None),
    ("sched_yield", "a stopped gdb session's spin lets a waiting task run (gdb, when it "
                    "shares the monitor's CPU)", None),
)

def build_filter():
    """The libseccomp filter of POLICY (pyseccomp), plus {nr: name}. Everything it does
    not allow gets the default action, errno BASE + MAX_NR, which sandbox.py turns into
    errno BASE + the syscall's number (refused arguments of an allowed syscall
    included); another architecture's syscalls get BASE + MAX_NR + 1."""
    import pyseccomp as S
    f = S.SyscallFilter(S.ERRNO(BASE + MAX_NR))
    f.set_attr(S.Attr.ACT_BADARCH, S.ERRNO(BASE + MAX_NR + 1))
    try:
        f.set_attr(S.Attr.CTL_OPTIMIZE, 2)           # a binary tree: KVM_RUN stays cheap
    except OSError:
        pass
    names = {}
    for name, _why, conds in POLICY:
        nr = S.resolve_syscall(S.Arch.NATIVE, name)
        if nr < 0:
            continue                                  # not on this architecture
        for cset in conds or [[]]:
            f.add_rule(S.ALLOW, nr, *[S.Arg(*c) for c in cset])
    for nr in range(MAX_NR):
        try:
            names[nr] = S.resolve_syscall(S.Arch.NATIVE, nr).decode()
        except ValueError:
            continue
    return f, names


def allowed_names() -> list:
    return [p[0] for p in POLICY]
