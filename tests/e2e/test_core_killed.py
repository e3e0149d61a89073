"""Issue 9, defect 6: a dump killed by SIGKILL leaves nothing behind. The core is written
into an unnamed O_TMPFILE and linked in only when complete, so a kill at any point
leaves the directory as it was."""

import os
import subprocess
import sys
import time

import pytest

from running import Monitor, RuntimeDir

pytestmark = pytest.mark.kvm
FILL_MB = 300          # ~300 MiB of touched guest memory: the dump takes a while


def core_fd_open(pid, d):
    """True while the monitor holds a file in d open (the core being written)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith(str(d) + "/"):
            return True
    return False


@pytest.mark.parametrize("attempt", range(2))
def test_sigkill_during_a_large_live_dump_leaves_nothing(app, tmp_path, attempt):
    rt = RuntimeDir()
    d = tmp_path / "cores"
    d.mkdir()
    m = Monitor(rt, "--mem=512", "--core-dir", d, app("fill"), str(FILL_MB))
    try:
        m.wait_for(lambda: "filled" in m.stdout(), "the guest to fill its memory", 60)
        dump = subprocess.Popen([sys.executable, "-m", "ukdbg", "dump", str(m.pid)],
                                env=rt.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not core_fd_open(m.pid, d):
            assert time.monotonic() < deadline, "the dump never started"
            assert dump.poll() is None, f"the dump ended before the kill: {dump.stderr.read()}"
            time.sleep(0.002)
        with open(f"/proc/{m.pid}/status") as f:      # confined during the dump too
            assert "\nSeccomp:\t2\n" in f.read()
        if attempt:
            time.sleep(0.05)            # later into the write
        m.proc.kill()
        m.proc.wait(10)
        dump.communicate(timeout=30)
        assert os.listdir(d) == [], "a killed dump left a file behind"
    finally:
        m.close()
        rt.cleanup()


def test_completed_large_dump_is_linked_in(app, tmp_path):
    rt = RuntimeDir()
    d = tmp_path / "cores"
    d.mkdir()
    m = Monitor(rt, "--mem=512", "--core-dir", d, app("fill"), "64")
    try:
        m.wait_for(lambda: "filled" in m.stdout(), "the guest to fill its memory", 60)
        r = rt.cli("dump", m.pid, timeout=60)
        assert r.returncode == 0, r.stderr
        assert os.listdir(d) == [f"fill.{m.pid}.core"]
        st = os.stat(d / f"fill.{m.pid}.core")
        assert st.st_mode & 0o777 == 0o600
        assert st.st_blocks * 512 >= 64 << 20       # the touched memory is in it
    finally:
        m.close()
        rt.cleanup()
