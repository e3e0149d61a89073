"""The seccomp filter's argument checks, syscall by syscall, in a confined child process
(ukdbg/sandbox.py): what must pass does, what must not fails with its own errno."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

CHILD = r'''
import errno, json, mmap, os, socket, sys
from ukdbg import sandbox
how = sandbox.install()
d = sys.argv[1]
res = {"how": how, "mode": open("/proc/self/status").read().split("Seccomp:")[1].split()[0]}

def t(name, fn):
    try:
        fn()
        res[name] = "ok"
    except OSError as e:
        res[name] = sandbox.refused(e) or f"errno {e.errno}"

existing = os.path.join(d, "existing")
t("read-only open", lambda: os.close(os.open(existing, os.O_RDONLY)))
t("open for writing", lambda: os.open(existing, os.O_WRONLY))
t("open O_RDWR", lambda: os.open(existing, os.O_RDWR))
t("truncate", lambda: os.open(existing, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
t("create, not exclusive", lambda: os.open(os.path.join(d, "n1"), os.O_WRONLY | os.O_CREAT, 0o600))
t("create exclusive", lambda: os.close(os.open(os.path.join(d, "n2"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)))
t("O_TMPFILE", lambda: os.close(os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600)))
t("unix socket", lambda: socket.socket(socket.AF_UNIX).close())
t("tcp socket", lambda: socket.socket(socket.AF_INET).close())
t("netlink socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
t("packet socket", lambda: socket.socket(17, socket.SOCK_RAW, 0))
def connect():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("/nonexistent-ukdbg")
    finally:
        s.close()
t("connect", connect)
t("anonymous rw mmap", lambda: mmap.mmap(-1, 4096).close())
t("anonymous exec mmap", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC))
t("execve", lambda: os.execv("/bin/true", ["true"]))
t("fork", lambda: os.fork())
t("kill", lambda: os.kill(os.getppid(), 0))
t("rename", lambda: os.rename(existing, existing + ".2"))
t("chown", lambda: os.chown(existing, 0, 0))
import fcntl, termios
t("ioctl TIOCSTI", lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x"))
r, w = os.pipe()
t("ioctl FIONREAD", lambda: fcntl.ioctl(r, termios.FIONREAD, b"\0\0\0\0"))
from ukdbg import native
t("number 500", lambda: native.syscall(500))        # none on x86-64 (yet)
t("number 100000", lambda: native.syscall(100000))
t("i386 getpid", lambda: native.syscall(0x40000000 | 39))   # the x32 ABI
print(json.dumps(res))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("sbx")
    (d / "existing").write_bytes(b"keep")
    r = subprocess.run([sys.executable, "-c", CHILD, str(d)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["_dir"] = d
    return res


def test_confined(results):
    assert results["mode"] == "2" and results["how"] in ("cached", "compiled")


@pytest.mark.parametrize("what", ["read-only open", "create exclusive", "O_TMPFILE",
                                  "unix socket", "tcp socket", "anonymous rw mmap",
                                  "ioctl FIONREAD"])
def test_allowed(results, what):
    assert results[what] == "ok"


@pytest.mark.parametrize("what,name", [
    ("open for writing", "openat"), ("open O_RDWR", "openat"), ("truncate", "openat"),
    ("create, not exclusive", "openat"), ("netlink socket", "socket"),
    ("packet socket", "socket"), ("connect", "connect"), ("anonymous exec mmap", "mmap"),
    ("execve", "execve"), ("fork", "clone"), ("kill", "kill"), ("rename", "rename"),
    ("chown", "chown"),
])
def test_refused_and_named(results, what, name):
    assert results[what] == name


def test_numbers_without_a_syscall(results):
    """The default action's tail (sandbox._numbered) names any number below MAX_NR;
    from it on, one errno; another ABI's calls another."""
    assert results["number 500"] == "syscall 500"
    assert results["number 100000"].startswith("an unknown syscall")
    assert results["i386 getpid"] in ("a syscall of another architecture",
                                      "an unknown syscall (number 512 or more)")


def test_the_program_is_libseccomps_plus_the_numbering_tail():
    from ukdbg import sandbox
    ret_default = (0x06).to_bytes(2, "little") + b"\0\0" + \
        (sandbox.SECCOMP_RET_ERRNO | (sandbox.BASE + sandbox.MAX_NR)).to_bytes(4, "little")
    prog = ret_default + (0x06).to_bytes(2, "little") + b"\0\0" + (0x7fff0000).to_bytes(4, "little")
    out = sandbox._numbered(prog)
    assert len(out) == len(prog) + 6 * 8
    assert out[:2] == (0x05).to_bytes(2, "little")                   # now a jump...
    assert int.from_bytes(out[4:8], "little") == 1                     # ...over the allow
    assert out[8:16] == prog[8:16]
    assert out[-8:] == ret_default


def test_refused_ioctl_is_reported_as_such(results):
    assert results["ioctl TIOCSTI"].startswith("ioctl with a request outside the allowlist")


def test_nothing_was_changed(results):
    d = results["_dir"]
    assert (d / "existing").read_bytes() == b"keep"
    assert sorted(os.listdir(d)) == ["existing", "n2"]


def test_a_new_program_replaces_the_stale_programs_of_other_policies(tmp_path):
    """Those not written for 30 days go; a recent one may be another install's."""
    import time
    from ukdbg import sandbox
    month = time.time() - 31 * 86400
    for old in ("seccomp-1-3000-25f3-18ed4341b4df4945.bpf", "seccomp-398be1e3.bpf"):
        (tmp_path / old).write_bytes(b"old")
        os.utime(tmp_path / old, (month, month))
    (tmp_path / "seccomp-2-3000-9-9.bpf").write_bytes(b"another install's")
    (tmp_path / "other-file").write_bytes(b"keep")
    os.utime(tmp_path / "other-file", (month, month))
    sandbox._write_cache(str(tmp_path / "seccomp-2-3000-1-2.bpf"), b"UKSB")
    assert sorted(os.listdir(tmp_path)) == ["other-file", "seccomp-2-3000-1-2.bpf",
                                            "seccomp-2-3000-9-9.bpf"]
