"""Nothing lost, nothing changed: a core that cannot be written (full disk, read-only or
missing directory) is a one-line error, leaves no partial file, and the guest's own exit
status and diagnosis are still reported; a live dump that fails lets the guest go on."""

import os
import re
import subprocess
import uuid

import pytest

from helpers import ukdbg

pytestmark = pytest.mark.kvm
MEM = 8


@pytest.fixture
def tmpfs(tmp_path):
    """mount(opts) -> a fresh tmpfs directory (skips when mounting is not allowed)."""
    mounted = []

    def mount(opts):
        d = tmp_path / uuid.uuid4().hex[:8]
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return d
    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(d):
    """Use up every byte of the filesystem at d."""
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\xff" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_failed_core(r, d, why, before=()):
    assert r.returncode == 255, r.stderr                  # the guest's own status
    assert "guest trapped: #PF page fault" in r.stderr    # its diagnosis
    lines = [ln for ln in r.stderr.splitlines() if "core" in ln and why in ln]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ukdbg: ")
    assert sorted(os.listdir(d)) == sorted(before), "a partial or temporary file is left"


def test_full_disk(app, tmpfs):
    d = tmpfs("size=256k")
    fill(d)
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--core-dir", d, app("nullwrite"))
    check_failed_core(r, d, "No space left on device", before=["filler"])


def test_read_only_directory(app, tmpfs):
    d = tmpfs("ro,size=64k")
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--core-dir", d, app("nullwrite"))
    check_failed_core(r, d, "Read-only file system")


def test_missing_directory(app, tmp_path):
    d = tmp_path / "no" / "such"
    r = ukdbg("run", f"--mem={MEM}", "--no-control", "--core-dir", d, app("nullwrite"))
    assert r.returncode == 255
    assert re.search(r"^ukdbg: cannot write a core in .*: No such file or directory$",
                     r.stderr, re.M), r.stderr
    assert os.listdir(tmp_path) == []


def test_failed_live_dump_lets_the_guest_continue(app, tmpfs):
    d = tmpfs("ro,size=64k")
    import signal
    import sys
    import time
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", "run", f"--mem={MEM}",
                          "--no-control", "--core-dir", str(d), "--core-on", "USR2",
                          app("time"), "6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().startswith("t=")
        p.send_signal(signal.SIGUSR2)
        time.sleep(0.05)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "solo5_exit(0) called" in out
    assert re.search(r"^ukdbg: cannot write a core in .*: Read-only file system$", err,
                     re.M), err
    assert "Traceback" not in err and os.listdir(d) == []
