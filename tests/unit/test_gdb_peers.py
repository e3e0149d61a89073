"""Who may use a gdb stub (issue 9): the listener's peer checks over real sockets, with
a real second uid when the tests run as root (a client that setuid()s to nobody),
and through a user namespace otherwise; binding rules; `monitor core FILE`'s path
rule. No KVM needed."""

import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from ukdbg.errors import TargetError
from ukdbg.gdbstub import monitor
from ukdbg.gdbstub.transport import (Listener, TransportError, refusal, refuse_now,
                                     tcp_peer_uid)
from ukdbg.tender.modules.dumpcore import core_path_rule

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534


def connect(address):
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address[5:])
    else:
        host, _, port = address.rpartition(":")
        s = socket.create_connection((host.strip("[]"), int(port)), 5)
    s.settimeout(5)
    return s


def accept(lst, timeout=5.0):
    import select
    assert select.select([lst.sock], [], [], timeout)[0], "no connection came"
    return lst.accept()


def read_all(s) -> bytes:
    out = b""
    while True:
        d = s.recv(4096)
        if not d:
            return out
        out += d


@pytest.fixture
def refusals():
    got = []
    yield got


# --- the owner's own connections ------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_loopback_client_of_the_owners_uid_is_served(host, refusals):
    try:
        lst = Listener(f"[{host}]:0" if ":" in host else f"{host}:0", refused=refusals.append)
    except TransportError as e:
        pytest.skip(f"no {host} here: {e}")
    with lst.sock:
        c = connect(lst.address)
        conn, peer = accept(lst)
        assert peer.owner and peer.uid == os.getuid()
        assert tcp_peer_uid(conn.getpeername()[:2], conn.getsockname()[:2]) == os.getuid()
        assert refusals == []
        conn.close()
        c.close()


def test_a_peer_of_another_uid_is_refused_once_with_a_reason(refusals):
    """The same lookup with the stub's owner set to a uid the client does not have
    (works for any user; the root-only test below uses a real second uid)."""
    other = os.getuid() + 1
    lst = Listener("127.0.0.1:0", refused=refusals.append, owner_uid=other)
    with lst.sock:
        c = connect(lst.address)
        conn, peer = accept(lst)
        assert not peer.owner and peer.refused
        c.sendall(b"$?#3f")
        refuse_now(conn, refusal(peer))
        reply = read_all(c)
        assert reply.startswith(b"+$E.ukdbg refused this connection: 127.0.0.1:"), reply
        assert f"(uid {os.getuid()}): only uid {other}, the monitor's owner".encode() in reply
        assert len(refusals) == 1
        assert refusals[0].startswith("gdb: refused a connection from 127.0.0.1:")
        assert f"(uid {os.getuid()}): only uid {other}, the monitor's owner, may use " \
            "this stub" in refusals[0]


def test_a_unix_socket_is_0600_from_the_start_and_checks_the_peer(tmp_path, refusals):
    path = str(tmp_path / "g.sock")
    lst = Listener(f"unix:{path}", refused=refusals.append)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    c = connect(lst.address)
    conn, peer = accept(lst)
    assert peer.owner and peer.uid == os.getuid()
    conn.close()
    c.close()
    lst.close()
    assert not os.path.exists(path)
    lst = Listener(f"unix:{path}", refused=refusals.append, owner_uid=os.getuid() + 1)
    c = connect(lst.address)
    conn, peer = accept(lst)
    refuse_now(conn, refusal(peer))
    assert b"only uid" in read_all(c) and len(refusals) == 1
    lst.close()


# --- binding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0"])
def test_a_non_loopback_address_needs_allow_remote(address):
    with pytest.raises(TransportError, match="not a loopback address.*--gdb-allow-remote"):
        Listener(address)
    try:
        lst = Listener(address, allow_remote=True)
    except TransportError as e:
        pytest.skip(str(e))
    assert lst.remote
    lst.close()


def test_a_control_character_in_an_address_leaves_nothing_behind(tmp_path):
    for bad in (f"unix:{tmp_path}/x\0y", f"unix:{tmp_path}/x\ny", "127.0.0.1\0:0"):
        with pytest.raises(TransportError, match="control characters or NUL"):
            Listener(bad)
    assert os.listdir(tmp_path) == []


def test_a_bind_failure_leaves_no_socket_file(tmp_path):
    with pytest.raises(TransportError, match="cannot listen"):
        Listener(f"unix:{tmp_path}/no/such/dir/s")
    assert os.listdir(tmp_path) == []


# --- a real second uid -------------------------------------------------------------------------
CLIENT = textwrap.dedent("""
    import encodings.idna, os, socket, sys  # (imported before giving up root)
    os.setgroups([]); os.setgid({uid}); os.setuid({uid})
    host, port = sys.argv[1], int(sys.argv[2])
    s = socket.create_connection((host, port), 5)
    s.settimeout(5)
    s.sendall(b"$m100000,8#%02x" % (sum(b"m100000,8") & 0xFF))
    out = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        out += d
    sys.stdout.write(out.decode())
""")


@pytest.mark.skipif(os.getuid() != 0, reason="a second uid needs root (the user "
                    "namespace test below covers the refusal path without it)")
def test_a_client_running_as_nobody_is_refused(refusals):
    lst = Listener("127.0.0.1:0", refused=refusals.append)
    with lst.sock:
        host, port = lst.address.rsplit(":", 1)
        p = subprocess.Popen([sys.executable, "-c", CLIENT.format(uid=NOBODY), host, port],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, peer = accept(lst)
        refuse_now(conn, refusal(peer))
        out, err = p.communicate(timeout=10)
        assert p.returncode == 0, err
        assert out.startswith("+$E.ukdbg refused this connection: 127.0.0.1:")
        assert f"(uid {NOBODY}): only uid 0, the monitor's owner" in out
        assert len(refusals) == 1 and f"(uid {NOBODY})" in refusals[0]


USERNS = textwrap.dedent("""
    import os, socket, sys, select
    sys.path.insert(0, {root!r})
    from ukdbg.gdbstub.transport import Listener
    said = []
    lst = Listener("127.0.0.1:0", refused=said.append)
    host, port = lst.address.rsplit(":", 1)
    c = socket.create_connection((host, int(port)), 5)
    select.select([lst.sock], [], [], 5)
    print(os.getuid(), lst.accept()[1].refused is not None, said)
""")


def test_in_a_user_namespace_without_uid_mapping_peers_are_refused():
    """Inside a user namespace that maps no uid, this process and every other uid
    show as the overflow uid: a uid check could not tell them apart, so the stub
    refuses all TCP peers and says to use a unix socket."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    r = subprocess.run([unshare, "--user", sys.executable, "-c",
                        USERNS.format(root=ROOT)], capture_output=True, text=True, timeout=30)
    if r.returncode and "unshare failed" in r.stderr:
        pytest.skip(f"user namespaces are not available here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    uid, got, said = r.stdout.split(" ", 2)
    assert got == "True", r.stdout
    assert "runs as the overflow uid" in said and "use a unix:PATH stub" in said, said


# --- monitor core FILE ---------------------------------------------------------------------------
def test_core_path_rule_for_a_client_that_is_not_the_owner(tmp_path):
    d = str(tmp_path)
    assert core_path_rule(d, "x.core", owner=False) == os.path.join(d, "x.core")
    os.symlink("/", tmp_path / "link")
    assert core_path_rule(str(tmp_path / "link"), "x", owner=False) == "/x"  # resolved once
    for bad in ("/tmp/evil", "../x", "a/b", ".hidden", "..", ".", "", "x\0y", "x\ny",
                "a" * 256):
        with pytest.raises(TargetError):
            core_path_rule(d, bad, owner=False)


def test_core_path_rule_for_the_owner(tmp_path):
    d = str(tmp_path)
    assert core_path_rule(d, "/abs/x.core", owner=True) == "/abs/x.core"
    assert core_path_rule(d, "sub/x.core", owner=True) == os.path.join(d, "sub/x.core")
    with pytest.raises(TargetError):
        core_path_rule(d, "x\0y", owner=True)


class CoreTarget:
    def __init__(self):
        self.calls = []

    def dump_core(self, path, owner=False):
        self.calls.append((path, owner))
        return path


def test_monitor_core_passes_who_asks():
    t = CoreTarget()
    monitor.run(t, "core /tmp/a")
    monitor.run(t, "core /tmp/b", owner=True)
    assert t.calls == [("/tmp/a", False), ("/tmp/b", True)]     # not the owner by default
