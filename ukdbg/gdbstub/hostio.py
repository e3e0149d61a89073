"""ukdbg/gdbstub/hostio.py: vFile host I/O (GDB manual, "Host I/O Packets"), read-only
and limited to the files a session is allowed to show (the unikernel image), so that
plain `target remote` finds the executable without opening the host to the client."""

import errno
import os
import struct

from .packets import escape

# gdb's File-I/O errno values ("Errno Values").
_GDB_ERRNO = {errno.EPERM: 1, errno.ENOENT: 2, errno.EINTR: 4, errno.EBADF: 9,
              errno.EACCES: 13, errno.EFAULT: 14, errno.EBUSY: 16, errno.EEXIST: 17,
              errno.ENODEV: 19, errno.ENOTDIR: 20, errno.EISDIR: 21, errno.EINVAL: 22,
              errno.ENFILE: 23, errno.EMFILE: 24, errno.EFBIG: 27, errno.ENOSPC: 28,
              errno.ESPIPE: 29, errno.EROFS: 30, errno.ENAMETOOLONG: 91}
EUNKNOWN = 9999
MAX_OPEN = 16
# struct fio_stat: every field big-endian (dev ino mode nlink uid gid rdev u32, size
# blksize blocks u64, atime mtime ctime u32).
_FIO_STAT = struct.Struct(">IIIIIIIQQQIII")


def _err(e: int) -> bytes:
    return b"F-1,%x" % _GDB_ERRNO.get(e, EUNKNOWN)


class HostIO:
    def __init__(self, allowed=(), max_read: int = 0x8000):
        self.allowed = {os.path.realpath(p) for p in allowed if p}
        self.files = {}               # our fd -> os fd
        self.max_read = max_read

    def close_all(self) -> None:
        for fd in self.files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.files.clear()

    def handle(self, op: str, args: tuple) -> bytes:
        fn = getattr(self, "_" + op, None)
        if fn is None:
            return b""
        try:
            return fn(*args)
        except OSError as e:
            return _err(e.errno or errno.EIO)

    def _setfs(self, pid):
        return b"F0"

    def _open(self, path, flags, mode):
        if flags & 3:                               # O_WRONLY / O_RDWR
            return _err(errno.EACCES)
        try:
            p = os.path.realpath(os.fsdecode(path))
        except (ValueError, UnicodeDecodeError):
            return _err(errno.ENOENT)
        if p not in self.allowed:
            return _err(errno.ENOENT)
        if len(self.files) >= MAX_OPEN:
            return _err(errno.EMFILE)
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        n = 0
        while n in self.files:
            n += 1
        self.files[n] = fd
        return b"F%x" % n

    def _pread(self, fd, count, offset):
        f = self.files.get(fd)
        if f is None:
            return _err(errno.EBADF)
        data = os.pread(f, min(count, self.max_read), offset)
        return b"F%x;" % len(data) + escape(data)

    def _close(self, fd):
        f = self.files.pop(fd, None)
        if f is None:
            return _err(errno.EBADF)
        os.close(f)
        return b"F0"

    def _fstat(self, fd):
        f = self.files.get(fd)
        if f is None:
            return _err(errno.EBADF)
        st = os.fstat(f)
        m32 = 0xFFFFFFFF
        raw = _FIO_STAT.pack(st.st_dev & m32, st.st_ino & m32, st.st_mode & m32,
                             st.st_nlink & m32, st.st_uid & m32, st.st_gid & m32,
                             0, st.st_size, 4096, (st.st_size + 511) // 512,
                             int(st.st_atime) & m32, int(st.st_mtime) & m32,
                             int(st.st_ctime) & m32)
        return b"F%x;" % len(raw) + escape(raw)

    def _unlink(self, path):
        return _err(errno.EPERM)

    def _readlink(self, path):
        return _err(errno.EINVAL)
