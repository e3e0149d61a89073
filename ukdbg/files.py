"""ukdbg/files.py: open a file a user named (image, core, recording) without trusting it.

Every path ukdbg reads goes through open_regular() or read_regular(), so that
`ukdbg run /dev/zero`, a FIFO, a directory or a 100 GB file is one clear line, at once:
  - stat() first, so a device or FIFO is refused without being opened (opening some
    devices has effects, and a FIFO blocks until a writer comes);
  - open with O_NONBLOCK|O_NOCTTY (a FIFO swapped in after the stat cannot block us);
  - fstat() the open fd: that, not the stat, is the check (no race: it is the file we
    read). Symlinks to regular files are fine, as for any program;
  - sizes are bounded, and read_regular() never reads more than max_size + 1 bytes, so
    a file that grows, or one that lies about its size (/proc), is still bounded.

Usage (by each reader, with its own error class):
    fd, size = open_regular(path, max_size, "core", error=CoreFormatError)
    data = read_regular(path, IMAGE_MAX, "image", error=ExecutableError)
Block devices (--block) pass allow_block=True: a regular file or a block special file.
The per-user cache (the compiled sandbox, KVM's CPUID table) is read and written here
too: private_cache_dir(), read_private(), replace_cached().
Only small C-level modules here: this is on the plain run path.
"""

import os

from .errors import UkdbgError

IMAGE_MAX = 1 << 30            # an hvt image larger than 1 GiB is not one
_KINDS = ((0o020000, "a character device"), (0o060000, "a block device"),
          (0o010000, "a FIFO"), (0o140000, "a socket"), (0o040000, "a directory"))


def _kind(mode: int) -> str:
    fmt = mode & 0o170000
    for bits, name in _KINDS:
        if fmt == bits:
            return name
    return "not a regular file"


def _ok(mode: int, allow_block: bool) -> bool:
    fmt = mode & 0o170000
    return fmt == 0o100000 or (allow_block and fmt == 0o060000)


def _why(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    return e.strerror or str(e)


def open_regular(path, max_size, what: str, *, error=UkdbgError, flags: int = os.O_RDONLY,
                 allow_block: bool = False):
    """(fd, size) of the regular file at path (or block device, if allow_block), opened
    with flags | O_CLOEXEC. max_size: None or the largest acceptable size in bytes.
    Raises error("PATH: WHY") for anything else; the fd is never leaked."""
    want = "a regular file or a block device" if allow_block else "a regular file"
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: {_why(e)}") from None
    except ValueError:                       # an embedded NUL byte
        raise error(f"{path!r}: invalid path") from None
    if not _ok(st.st_mode, allow_block):
        raise error(f"{path}: is {_kind(st.st_mode)}, not {want} ({what})")
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise error(f"{path}: {_why(e)}") from None
    try:
        st = os.fstat(fd)
        if not _ok(st.st_mode, allow_block):
            raise error(f"{path}: is {_kind(st.st_mode)}, not {want} ({what})")
        size = st.st_size
        if st.st_mode & 0o170000 == 0o060000:
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
        if max_size is not None and size > max_size:
            raise error(f"{path}: {size} bytes is too large for {what} (at most "
                        f"{max_size} bytes)")
        os.set_blocking(fd, True)
        return fd, size
    except OSError as e:
        os.close(fd)
        raise error(f"{path}: {_why(e)}") from None
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, max_size: int, what: str, *, error=UkdbgError) -> bytes:
    """The contents of the regular file at path, at most max_size bytes (else error)."""
    fd, size = open_regular(path, max_size, what, error=error)
    try:
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(max(size - total, 0) + 65536, max_size + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_size:
                raise error(f"{path}: more than {max_size} bytes is too large for {what}")
    except OSError as e:
        raise error(f"{path}: read error: {_why(e)}") from None
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_to_end(fd: int, chunk: int = 65536) -> bytes:
    """Everything left to read on fd (a pipe, a /proc file): os.read until EOF, with no
    io objects (the control socket's opening and the sandbox read through this)."""
    data = b""
    while True:
        b = os.read(fd, chunk)
        if not b:
            return data
        data += b


def write_new(path: str, data, mode: int = 0o600) -> None:
    """data as the file at path, whole or not at all: written to a temporary next to it
    (O_EXCL, short writes completed), then renamed over path; the temporary is removed
    if anything fails. Raises OSError. For caches the monitor builds (the run path's
    modules, the compiled sandbox)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --- the per-user cache (compiled sandbox, KVM's CPUID) -----------------------------------
def cache_dir() -> str:
    """$XDG_CACHE_HOME/ukdbg or ~/.cache/ukdbg."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not base.startswith("/"):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ukdbg")


def private_cache_dir():
    """cache_dir(), created 0700, or None when it is not a private place: it must be a
    directory of ours that nobody else can write (its files are then trusted)."""
    d = cache_dir()
    try:
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            os.makedirs(d, 0o700, exist_ok=True)
            st = os.lstat(d)
    except OSError:
        return None
    if st.st_mode & 0o170000 != 0o040000 or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    return d


def read_private(path, max_size: int):
    """The bytes of a cache file, or None unless it is a regular file of ours that
    nobody else can write, of at most max_size bytes (not followed if a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000 != 0o100000 or st.st_uid != os.getuid()
                or st.st_mode & 0o022 or st.st_size > max_size):
            return None
        return os.read(fd, max_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def replace_cached(path, data, prefix: str, older_than: float = 0.0) -> None:
    """Write a cache file (0600) and delete the files of other keys, those of its
    directory named prefix*, written over older_than seconds ago (0: all). A cache
    that cannot be written is no error."""
    try:
        write_new(path, data, 0o600)
    except OSError:
        return
    d, me = os.path.split(path)
    try:
        names = os.listdir(d)
    except OSError:
        return
    import time
    limit = time.time() - older_than
    for name in names:
        if name.startswith(prefix) and name != me and not name.endswith(".tmp"):
            p = os.path.join(d, name)
            try:
                if not older_than or os.lstat(p).st_mtime < limit:
                    os.unlink(p)
            except OSError:
                pass
