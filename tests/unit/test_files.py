"""ukdbg/files.py and every reader behind it: only regular files of sane size (issue 9,
defect 3: `ukdbg run /dev/zero` used to read forever)."""

import os
import time

import pytest

from helpers import ukdbg
from ukdbg import files
from ukdbg.coredump.reader import CoreFile
from ukdbg.errors import CoreFormatError, ExecutableError, UkdbgError
from ukdbg.tender.loader import read_image

NOT_REGULAR = ["/dev/zero", "/dev/urandom", "/dev/null"]


def fifo(tmp_path):
    p = tmp_path / "fifo"
    os.mkfifo(p)
    return str(p)


def fast(fn, *args, **kw):
    t = time.monotonic()
    with pytest.raises(UkdbgError) as e:
        fn(*args, **kw)
    assert time.monotonic() - t < 0.1, "must refuse at once"
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("path", NOT_REGULAR)
def test_devices_are_refused_at_once(path):
    msg = fast(read_image, path)
    assert msg == f"{path}: is a character device, not a regular file (an hvt image)"
    assert "character device" in fast(CoreFile.open, path)


def test_fifo_directory_socket_refused_without_blocking(tmp_path):
    assert "is a FIFO" in fast(read_image, fifo(tmp_path))
    assert "is a FIFO" in fast(CoreFile.open, str(tmp_path / "fifo"))
    assert "is a directory" in fast(read_image, str(tmp_path))
    import _socket
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.bind(str(tmp_path / "sock"))
    assert "is a socket" in fast(read_image, str(tmp_path / "sock"))
    s.close()


def test_fstat_not_stat_decides(tmp_path, monkeypatch):
    """A regular file swapped for a FIFO between stat() and open(): the open does not
    block (O_NONBLOCK) and fstat() of what was opened refuses it."""
    p = fifo(tmp_path)
    real = tmp_path / "real"
    real.write_bytes(b"x")
    st = os.stat(real)
    monkeypatch.setattr(files.os, "stat", lambda path: st)
    assert "is a FIFO" in fast(files.open_regular, p, None, "x")


def test_symlink_to_regular_is_fine_and_size_is_bounded(tmp_path):
    real = tmp_path / "real"
    real.write_bytes(b"abc")
    (tmp_path / "link").symlink_to(real)
    assert files.read_regular(str(tmp_path / "link"), 10, "x") == b"abc"
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(files.IMAGE_MAX + 1)          # sparse: nothing is read
    msg = fast(read_image, str(big))
    assert "too large for an hvt image" in msg
    assert "too large" in fast(files.read_regular, str(real), 2, "x")


def test_proc_files_are_read_bounded():
    """/proc files claim size 0 but have content: the bound is on bytes read."""
    assert files.read_regular("/proc/self/status", 1 << 20, "x").startswith(b"Name:")
    with pytest.raises(UkdbgError, match="more than 8 bytes"):
        files.read_regular("/proc/self/status", 8, "x")


def test_nul_in_path_and_missing():
    assert "invalid path" in fast(files.open_regular, "a\0b", None, "x")
    assert fast(files.open_regular, "/nonexistent/x", None, "x") == \
        "/nonexistent/x: no such file"


def test_block_backing_may_be_a_block_device_only_if_allowed(tmp_path):
    r = tmp_path / "disk"
    r.write_bytes(b"\0" * 512)
    fd, size = files.open_regular(str(r), None, "x", allow_block=True)
    os.close(fd)
    assert size == 512
    with pytest.raises(UkdbgError, match="not a regular file or a block device"):
        files.open_regular("/dev/zero", None, "x", allow_block=True)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom"])
def test_cli_one_line_error(path, tmp_path):
    t = time.monotonic()
    r = ukdbg("run", path, timeout=10)
    assert r.returncode == 1
    assert r.stderr == f"ukdbg: {path}: is a character device, not a regular file " \
                       "(an hvt image)\n"
    r = ukdbg("core", path, timeout=10)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "character device" in r.stderr
    r = ukdbg("core", fifo(tmp_path), timeout=10)
    assert r.returncode != 0 and "is a FIFO" in r.stderr
    assert time.monotonic() - t < 8


def test_cli_block_backing_must_be_file_or_block_device(app):
    r = ukdbg("run", "--block:storage=/dev/zero", app("block"), timeout=10)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "character device" in r.stderr and "storage" in r.stderr
