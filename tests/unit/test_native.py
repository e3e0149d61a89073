"""ukdbg/native.py: the C calls of the run path through _ctypes (the sandbox's seccomp,
the control socket's listener, events.wait's poll, the address of guest RAM)."""

import errno
import mmap
import os
import signal
import socket
import stat
import threading
import time

import pytest

from ukdbg import native


def test_a_failing_syscall_raises_its_errno():
    with pytest.raises(OSError) as e:
        native.syscall(native.SYS_LISTEN, 1 << 30, 1)      # not a descriptor
    assert e.value.errno == errno.EBADF


def test_buffer_address_is_where_the_mapping_is_and_leaves_it_closable():
    m = mmap.mmap(-1, 3 * 4096)
    addr = native.buffer_address(m)
    ranges = [[int(x, 16) for x in ln.split()[0].split("-")]
              for ln in open("/proc/self/maps").read().splitlines()]
    assert any(lo <= addr and addr + len(m) <= hi for lo, hi in ranges)
    m[0:4] = b"abcd"
    assert native.Buffer(b"x").view[0] == ord("x")
    m.close()                 # no export left behind


def test_unix_listener_listens_with_the_umask_and_refuses_long_paths(tmp_path):
    path = str(tmp_path / "l.sock")
    old = os.umask(0o177)
    try:
        fd = native.unix_listener(path, 4)
    finally:
        os.umask(old)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert os.get_inheritable(fd) is False and os.get_blocking(fd) is False
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, os.dup(fd))
        conn, _ = s.accept()
        conn.close()
        s.close()
        c.close()
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        native.unix_listener("/tmp/" + "x" * 120, 4)
    assert "too long" in str(e.value)
    with pytest.raises(OSError):
        native.unix_listener(path, 4)            # in use: EADDRINUSE, no fd leaked


def test_poller_reports_readable_fds_and_times_out():
    p = native.Poller()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        assert p.poll([r1, r2], 0) == []
        t = time.monotonic()
        assert p.poll([r1, r2], 30) == []
        assert time.monotonic() - t >= 0.025
        os.write(w2, b"x")
        assert p.poll([r1, r2], -1) == [r2]
        os.write(w1, b"x")
        assert sorted(p.poll([r1, r2], 0)) == sorted([r1, r2])
        many = [r1] * 40 + [r2]                   # grows its array
        assert len(p.poll(many, 0)) == 41
        os.close(w1)
        os.read(r1, 1)
        assert r1 in p.poll([r1], 0)              # hang-up counts as ready
    finally:
        for fd in (r1, w2, r2):
            os.close(fd)


def test_poller_returns_early_on_a_signal():
    p = native.Poller()
    r, w = os.pipe()
    old = signal.signal(signal.SIGUSR2, lambda *a: None)
    try:
        threading.Timer(0.05, signal.pthread_kill,
                        (threading.get_ident(), signal.SIGUSR2)).start()
        t = time.monotonic()
        assert p.poll([r], 5000) == []
        assert time.monotonic() - t < 2
    finally:
        signal.signal(signal.SIGUSR2, old)
        os.close(r)
        os.close(w)
