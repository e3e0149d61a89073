"""ukdbg/sandbox.py: the seccomp allowlist `ukdbg run` confines itself to after set-up.

As solo5-hvt does: once the guest is set up (image loaded, devices and files open), a
seccomp filter allows only what the run loop, the gdb stub, the control socket, cores,
the trace, logs and a recording need (sandbox_policy.py, with the reason for each;
docs/security.md is the reader's copy). A bug in hypercall handling then cannot become an arbitrary host
syscall (execve, ptrace, mount, connect, opening a file for writing, ...).

A refused syscall never kills the monitor or the guest: syscall number N fails with
errno BASE + N, which refused() maps back to the syscall's name, and report() logs it
with the Python stack (stderr and --log). The request that tried it fails; the guest
runs on. libseccomp has no action computed from the syscall's number, so the one
piece of BPF written here is a 6-instruction tail that the default action jumps to
(_numbered()); one rule per refused syscall made the program 5x longer, ~0.2 ms more
to load at every run.

Cost at start-up. libseccomp (through the pyseccomp binding) compiles POLICY into BPF;
importing it and compiling costs ~30-100 ms (ctypes, typing, a `ldconfig -p`), far over
the 2 ms budget. So the compiled program is cached in ~/.cache/ukdbg (0700, checked to
be the user's own), keyed by the policy file's size and mtime: the first run compiles it
with libseccomp, and every run loads the program with one seccomp(2) call through
native.py (the C-level _ctypes module).
"""

import os

BASE = 3000              # refused syscall nr N -> errno BASE + N (< 4096: still an error)
MAX_NR = 512             # x86-64 syscall numbers below this are named in reports
FORMAT = 2               # of the cache file
SECCOMP_RET_ERRNO = 0x00050000

_NAMES = None            # nr -> name, read from the cache file on the first report
_state = {"active": False, "path": None, "m": None}


def active() -> bool:
    return _state["active"]


def _key() -> str:
    """The policy file's size and mtime (a stat: hashing would load binascii, ~0.3 ms,
    on every run); without the file (installed without sources), a CRC of its values."""
    src = os.path.join(os.path.dirname(__file__), "sandbox_policy.py")
    try:
        st = os.stat(src)
        return f"{FORMAT}-{BASE}-{st.st_size:x}-{st.st_mtime_ns:x}"
    except OSError:
        import binascii
        from . import sandbox_policy as P
        return "%d-%08x" % (FORMAT, binascii.crc32(repr(P.POLICY).encode()))


def _cache_path():
    """The cache file's path, or None when there is no private place for it (then the
    program is compiled every time)."""
    from .files import private_cache_dir
    d = private_cache_dir()
    return os.path.join(d, f"seccomp-{_key()}.bpf") if d else None


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
    from .files import read_private
    data = read_private(path, 1 << 20)
    if data is None or data[:4] != b"UKSB" or len(data) < 8:
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


def _compile(path):
    """Compile with libseccomp, number its refusals, cache the program and load it."""
    from .sandbox_policy import build_filter
    f, names = build_filter()
    r, w = os.pipe()
    try:
        class _W:
            def fileno(self):
                return w
        f.export_bpf(_W())
        os.close(w)
        w = -1
        from .files import read_to_end
        bpf = _numbered(read_to_end(r))
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    global _NAMES
    _NAMES = names
    if path:
        table = "\n".join(names.get(i, "") for i in range(MAX_NR)).encode()
        _write_cache(path, b"UKSB" + len(bpf).to_bytes(4, "little") + bpf + table)
    _load_bpf(bpf)
    return bpf, names


def _numbered(bpf: bytes) -> bytes:
    """libseccomp's program with each return of the default action (errno BASE +
    MAX_NR) turned into a jump to a tail that returns errno BASE + the syscall's
    number, or BASE + MAX_NR for a number from MAX_NR on (an errno stays < 4096)."""
    import struct
    insn = struct.Struct("<HBBI")          # struct sock_filter: code, jt, jf, k
    default = SECCOMP_RET_ERRNO | (BASE + MAX_NR)
    n = len(bpf) // insn.size
    out = bytearray(bpf)
    for i in range(n):
        code, jt, jf, k = insn.unpack_from(bpf, i * insn.size)
        if code == 0x06 and k == default:                      # BPF_RET | BPF_K
            insn.pack_into(out, i * insn.size, 0x05, 0, 0, n - i - 1)   # BPF_JMP | BPF_JA
    tail = [
        (0x20, 0, 0, 0),                   # A = seccomp_data.nr  (BPF_LD | BPF_W | BPF_ABS)
        (0x35, 3, 0, MAX_NR),              # A >= MAX_NR: to the last  (BPF_JMP | BPF_JGE | BPF_K)
        (0x04, 0, 0, BASE),                # A += BASE  (BPF_ALU | BPF_ADD | BPF_K)
        (0x44, 0, 0, SECCOMP_RET_ERRNO),   # A |= SECCOMP_RET_ERRNO  (BPF_ALU | BPF_OR | BPF_K)
        (0x16, 0, 0, 0),                   # return A  (BPF_RET | BPF_A)
        (0x06, 0, 0, default),             # return errno BASE + MAX_NR
    ]
    for t in tail:
        out += insn.pack(*t)
    return bytes(out)


def _write_cache(path, data) -> None:
    """Write the program, and drop those of other policies not written for 30 days:
    each change of the policy leaves one, but two installs of ukdbg (a checkout and
    a venv) each have theirs, and deleting the other's would make both compile at
    every other run."""
    from .files import replace_cached
    replace_cached(path, data, "seccomp-", older_than=30 * 86400)


def _audit() -> bool:
    return os.environ.get("UKDBG_SANDBOX_AUDIT") == "1"


def _load_bpf(bpf: bytes) -> None:
    """prctl(PR_SET_NO_NEW_PRIVS) and seccomp(SECCOMP_SET_MODE_FILTER) with libseccomp's
    compiled program, through native.py (the C-level _ctypes: ctypes' own import costs
    ~1.7 ms)."""
    from . import native
    prog = native.Buffer(bpf)
    # struct sock_fprog: u16 len (padded to 8), then the program's address
    fprog = native.Buffer((len(bpf) // 8).to_bytes(8, "little")
                          + prog.address.to_bytes(8, "little"))
    # PR_SET_NO_NEW_PRIVS = 38; SECCOMP_SET_MODE_FILTER = 1, and with
    # UKDBG_SANDBOX_AUDIT=1 SECCOMP_FILTER_FLAG_LOG (2): the kernel also logs each
    # refusal (dmesg, "audit: type=1326 ... syscall=N"), even those ukdbg ignores.
    native.syscall(native.SYS_PRCTL, 38, 1)
    native.syscall(native.SYS_SECCOMP, 1, 2 if _audit() else 0, fprog.address)


# --- reports ---------------------------------------------------------------------------
def refused(exc) -> str:
    """The name of the syscall the sandbox refused, if exc (or what caused it) is that
    refusal; else ''."""
    seen = 0
    while exc is not None and seen < 8:
        e = getattr(exc, "errno", None)
        if isinstance(e, int) and BASE <= e <= BASE + MAX_NR + 1:
            return _name(e - BASE)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return ""


def _name(nr: int) -> str:
    global _NAMES
    if nr == MAX_NR:
        return f"an unknown syscall (number {MAX_NR} or more)"
    if nr == MAX_NR + 1:
        return "a syscall of another architecture"
    if _NAMES is None:
        _NAMES = _names_from_cache(_state["path"]) if _state["path"] else {}
    name = _NAMES.get(nr) or f"syscall {nr}"
    if name == "ioctl":     # allowed for KVM's and a few requests: this was another
        return "ioctl with a request outside the allowlist"
    return name


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
