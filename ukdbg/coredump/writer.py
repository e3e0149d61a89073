"""ukdbg/coredump/writer.py: write an ELF core from a CoreSource, sparse, fast and atomically.

The file is headers + notes, then an image of guest-physical memory in which only the
extents the guest touched are written (the rest are holes): every PT_LOAD points at
its virtual range's physical pages in that image, so aliased mappings cost nothing
and the page tables are in the file even where the guest cannot see them.
"""

import os

from ..errors import UkdbgError
from . import format as F


class CoreWriteError(UkdbgError):
    """The core could not be written (one line; no partial file is left)."""


class CoreSource:
    """What a core holds, independent of where it comes from (a Machine, a test).

    regs: arch.x86_64.Regs of the faulting instruction; fpu: arch.x86_64.Fpu;
    xsave: (area bytes, xcr0) or None; signal/si_code/si_addr: NT_SIGINFO;
    regions: [target.MemoryRegion] guest-virtual ranges with .phys set;
    phys: a buffer of guest-physical memory (len = phys size), phys_extents: the
    [(lo, hi)] of it to write (page aligned), patches: {gpa: byte} to write over
    it (planted breakpoints' original bytes); crash: format.CrashInfo;
    sregs: raw kvm_sregs bytes; the other fields feed the UKDBG notes.
    """

    def __init__(self):
        self.regs = None
        self.fpu = None
        self.xsave = None
        self.signal = 0
        self.si_code = 0
        self.si_addr = 0
        self.pid = os.getpid()
        self.app_name = ""
        self.psargs = ""
        self.entry = 0
        self.regions = []
        self.phys = b""
        self.phys_extents = []
        self.patches = {}
        self.crash = F.CrashInfo()
        self.sregs = None
        self.version = ""
        self.argv = []
        self.guest_cmdline = ""
        self.mem_size = 0
        self.uptime_ns = 0
        self.dump_time_ns = 0
        self.image_path = ""
        self.image_size = 0
        self.image_sha256 = b"\0" * 32
        self.build_id = b""
        self.hypercalls = {}        # nr -> count
        self.exits = {}             # KVM exit reason -> count
        self.console = b""
        self.console_total = 0
        self.flight = None          # NT_UKDBG_FLIGHT desc (coredump/flight.py), or None


def _flags(perms: str) -> int:
    return ((F.PF_R if "r" in perms else 0) | (F.PF_W if "w" in perms else 0)
            | (F.PF_X if "x" in perms else 0))


def build_notes(src: CoreSource, data_off: int) -> bytes:
    """Every note, in the order gdb and lldb expect the thread's to come."""
    notes = [
        F.pack_note("CORE", F.NT_PRSTATUS,
                    F.pack_prstatus(src.signal, src.pid, src.regs.to_user_regs(),
                                    src.si_code)),
        F.pack_note("CORE", F.NT_PRPSINFO, F.pack_prpsinfo(src.pid, src.app_name,
                                                           src.psargs)),
        F.pack_note("CORE", F.NT_SIGINFO, F.pack_siginfo(src.signal, src.si_code,
                                                         src.si_addr)),
        F.pack_note("CORE", F.NT_AUXV, F.pack_auxv(src.entry)),
        F.pack_note("CORE", F.NT_FPREGSET, src.fpu.to_fxsave()),
    ]
    if src.xsave is not None:
        area, xcr0 = src.xsave
        # The legacy area must agree with NT_FPREGSET (KVM's copy already does).
        notes.append(F.pack_note("LINUX", F.NT_X86_XSTATE, F.pack_xstate(area, xcr0)))
    # After "LINUX": lldb takes the last owner it knows for the core's OS.
    notes.append(F.pack_openbsd_notes(src.regs, src.fpu.to_fxsave(), src.signal, src.pid,
                                      src.app_name, src.entry))
    u = F.UKDBG_NAME
    if src.sregs is not None:
        notes.append(F.pack_note(u, F.NT_UKDBG_SREGS, src.sregs))
    notes.append(F.pack_note(u, F.NT_UKDBG_CRASH, src.crash.pack()))
    notes.append(F.pack_note(u, F.NT_UKDBG_MONITOR, F.MONITOR_HEAD.pack(
        F.UKDBG_VERSION, src.pid, src.dump_time_ns, src.uptime_ns, src.mem_size)
        + F.pack_strings(src.version, src.guest_cmdline, *src.argv)))
    notes.append(F.pack_note(u, F.NT_UKDBG_IMAGE, F.IMAGE_HEAD.pack(
        F.UKDBG_VERSION, 0, src.image_size, src.image_sha256)
        + F.pack_strings(src.image_path, src.build_id)))
    stats = [F.STATS_ENTRY.pack(0, nr, n) for nr, n in sorted(src.hypercalls.items())]
    stats += [F.STATS_ENTRY.pack(1, r & 0xFFFFFFFF, n) for r, n in sorted(src.exits.items())]
    notes.append(F.pack_note(u, F.NT_UKDBG_STATS, b"".join(stats)))
    notes.append(F.pack_note(u, F.NT_UKDBG_CONSOLE, F.CONSOLE_HEAD.pack(
        F.UKDBG_VERSION, 0, src.console_total) + bytes(src.console)))
    notes.append(F.pack_note(u, F.NT_UKDBG_PHYS, F.PHYS_HEAD.pack(
        F.UKDBG_VERSION, len(src.phys_extents), data_off, len(src.phys), src.mem_size)
        + b"".join(F.PHYS_EXTENT.pack(lo, hi) for lo, hi in src.phys_extents)))
    if src.flight is not None:
        notes.append(F.pack_note(u, F.NT_UKDBG_FLIGHT, src.flight))
    return b"".join(notes)


def layout(src: CoreSource):
    """(header bytes incl. program headers and notes, data offset, file size)."""
    loads = [r for r in src.regions if r.end > r.start]
    phnum = 1 + len(loads)
    notes_off = F.EHDR.size + phnum * F.PHDR.size
    notes_len = len(build_notes(src, 0))
    data_off = -(-(notes_off + notes_len) // F.PAGE) * F.PAGE
    notes = build_notes(src, data_off)
    ident = b"\x7fELF" + bytes((F.ELFCLASS64, F.ELFDATA2LSB, F.EV_CURRENT, F.ELFOSABI_SYSV))
    ehdr = F.EHDR.pack(ident.ljust(16, b"\0"), F.ET_CORE, F.EM_X86_64, F.EV_CURRENT, 0,
                       F.EHDR.size, 0, 0, F.EHDR.size, F.PHDR.size, phnum, 0, 0, 0)
    ph = [F.PHDR.pack(F.PT_NOTE, 0, notes_off, 0, 0, len(notes), 0, F.NOTE_ALIGN)]
    for r in loads:
        size = r.end - r.start
        ph.append(F.PHDR.pack(F.PT_LOAD, _flags(r.perms), data_off + r.phys, r.start,
                              r.phys, size, size, F.PAGE))
    return ehdr + b"".join(ph) + notes, data_off, data_off + len(src.phys)


def _pwrite_all(fd: int, data, off: int) -> None:
    mv = memoryview(data)
    while len(mv):
        n = os.pwrite(fd, mv[:1 << 30], off)
        mv = mv[n:]
        off += n


_STEP = 64 << 20          # bytes written between two progress reports


def write_core(src: CoreSource, fd: int, progress=None) -> int:
    """Write the core into fd (an empty regular file); returns its (apparent) size.
    progress: fn(bytes) called as guest memory is written (ukdbg.progress.Bar.advance)."""
    head, data_off, size = layout(src)
    os.ftruncate(fd, size)
    _pwrite_all(fd, head, 0)
    phys = memoryview(src.phys)
    for lo, hi in src.phys_extents:
        while hi > lo:
            step = min(hi - lo, _STEP) if progress else hi - lo
            _pwrite_all(fd, phys[lo:lo + step], data_off + lo)
            lo += step
            if progress:
                progress(step)
    for gpa, byte in src.patches.items():
        if 0 <= gpa < len(phys):
            os.pwrite(fd, bytes((byte,)), data_off + gpa)
    return size


def _why(e: OSError) -> str:
    from .. import sandbox
    return sandbox.describe(e, "core writer") or e.strerror or str(e)


def write_core_file(src: CoreSource, path: str, *, unique: bool = True,
                    progress=None) -> str:
    """Write atomically and never overwrite. The core is written into an unnamed
    O_TMPFILE in the target directory, fsynced, then linked in under its name
    (linkat through /proc/self/fd): a dump killed at any point, even by SIGKILL, leaves
    nothing behind. Filesystems without O_TMPFILE fall back to a named temporary file
    (which a SIGKILL can leave). unique: if path exists, try path.1, path.2, ...; else
    fail. Returns the path written. Raises CoreWriteError. progress: as for
    write_core."""
    d = os.path.dirname(path) or "."
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CoreWriteError(f"cannot write a core in {d}: {_why(e)}") from None
    try:
        fd = _open_unnamed(d, dfd)
        if fd is None:
            return _write_named_tmp(src, path, d, unique, progress)
        try:
            write_core(src, fd, progress)
            os.fsync(fd)
            # linkat(AT_SYMLINK_FOLLOW) of the /proc link names the open file itself
            # (os.link uses linkat only when given a dir fd).
            final = _place(f"/proc/self/fd/{fd}", path, unique, dfd=dfd)
        except OSError as e:
            raise CoreWriteError(f"cannot write core {path}: {_why(e)} (no core "
                                 "written)") from None
        finally:
            os.close(fd)
        try:
            os.fsync(dfd)
        except OSError:
            pass
        return final
    finally:
        os.close(dfd)


def _open_unnamed(d: str, dfd: int):
    """An O_TMPFILE fd in directory dfd, or None if the filesystem cannot make one."""
    import errno
    try:
        return os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError as e:
        # EOPNOTSUPP: the filesystem lacks it; EISDIR/EINVAL: a kernel without it.
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise CoreWriteError(f"cannot write a core in {d}: {_why(e)}") from None


def _write_named_tmp(src: CoreSource, path: str, d: str, unique: bool, progress) -> str:
    """The fallback: a temporary file in the same directory, fsync, then a link."""
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}."
                          f"{os.urandom(3).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CoreWriteError(f"cannot write a core in {d}: {_why(e)}") from None
    try:
        try:
            write_core(src, fd, progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = _place(tmp, path, unique)
    except OSError as e:
        _unlink(tmp)
        raise CoreWriteError(f"cannot write core {path}: {_why(e)} (no core written)") \
            from None
    except BaseException:
        _unlink(tmp)
        raise
    _sync_dir(d)
    return final


def _place(tmp: str, path: str, unique: bool, dfd=None) -> str:
    """link(2) tmp to the first free name (atomic, never overwrites), drop tmp.
    dfd: tmp is /proc/self/fd/N of an O_TMPFILE, linked into directory dfd (nothing to
    drop, and no rename fallback: such a file has no name to rename)."""
    import errno
    unnamed = dfd is not None
    for i in range(1000 if unique else 1):
        name = path if i == 0 else f"{path}.{i}"
        try:
            if unnamed:
                os.link(tmp, os.path.basename(name), dst_dir_fd=dfd,
                        follow_symlinks=True)
            else:
                os.link(tmp, name)
        except FileExistsError:
            if not unique:
                raise CoreWriteError(f"{path} already exists; not overwritten") from None
            continue
        except OSError as e:
            if unnamed or e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                                          errno.EMLINK):
                raise
            # A filesystem without hard links: check, then rename (a small race).
            if os.path.lexists(name):
                if not unique:
                    raise CoreWriteError(f"{path} already exists; not overwritten") \
                        from None
                continue
            os.rename(tmp, name)
            return name
        if not unnamed:
            os.unlink(tmp)
        return name
    raise CoreWriteError(f"{path} and {path}.1 ... {path}.999 all exist; no core written")


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _sync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
