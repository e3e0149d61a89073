"""Only the monitor's owner may use its gdb stub (issue 9), against a real monitor: a
client running as another uid (nobody) is refused on a TCP stub, with one line on
stderr and in the log, and cannot reach the unix socket that `ukdbg attach` starts;
the owner's gdb is served and its relative `monitor core FILE` lands in --core-dir.

A second uid needs root: as another user this module is skipped (and not counted as
a skipped KVM test); tests/unit/test_gdb_peers.py covers the refusal path for any
user."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from gdbguest import RawClient
from running import Monitor

ROOT_ONLY = os.getuid() == 0
pytestmark = [pytest.mark.kvm] if ROOT_ONLY else [
    pytest.mark.skip(reason="a second uid needs root (see tests/unit/test_gdb_peers.py)")]
# Not marked gdb either when skipped: a skipped gdb test fails the run (conftest.py).
GDB = pytest.mark.gdb if ROOT_ONLY else (lambda f: f)
NOBODY = 65534

AS_NOBODY = textwrap.dedent("""
    import encodings.idna, os, socket, sys  # (imported before giving up root)
    os.setgroups([]); os.setgid({uid}); os.setuid({uid})
    where = sys.argv[1]
    try:
        if where.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(where[5:])
        else:
            host, port = where.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), 5)
    except OSError as e:
        print("connect:", e.strerror)
        sys.exit(0)
    s.settimeout(5)
    s.sendall(b"$m100000,8#%02x" % (sum(b"m100000,8") & 0xFF))
    out = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        out += d
    print(out.decode())
""")


def as_nobody(address) -> str:
    r = subprocess.run([sys.executable, "-c", AS_NOBODY.format(uid=NOBODY), address],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_tcp_stub_refuses_another_uid_and_serves_the_owner(app, rt, tmp_path):
    log = tmp_path / "events.log"
    cores = tmp_path / "cores"
    cores.mkdir()
    with Monitor(rt, "--mem=8", "--no-core", "--log", log, "--core-dir", cores,
                 "--gdb", "127.0.0.1:0", "--gdb-wait", app("loop")) as mon:
        addr = mon.wait_for(lambda: (re.search(r"listening on (\S+?),", mon.stderr())
                                     or [0, 0])[1], "the gdb stub")
        out = as_nobody(addr)
        assert out.startswith("+$E.ukdbg refused this connection: 127.0.0.1:"), out
        line = [ln for ln in mon.stderr().splitlines() if "refused" in ln]
        assert len(line) == 1, mon.stderr()
        assert re.fullmatch(rf"ukdbg: gdb: refused a connection from 127\.0\.0\.1:\d+ "
                            rf"\(uid {NOBODY}\): only uid 0, the monitor's owner, may use "
                            r"this stub", line[0]), line
        # The owner is served; its relative `monitor core FILE` goes in --core-dir.
        c = RawClient(addr)
        assert c.packet(b"m100000,4") == b"2f6e6f6e"
        assert c.packet(b"qRcmd," + b"core mine.core".hex().encode()).startswith(b"O")
        assert c.reply() == b"OK"
        assert (cores / "mine.core").exists()
        assert c.packet(b"D") == b"OK"
        c.close()
        mon.wait_for(lambda: "looping" in mon.stdout(), "the guest to run on")
        r = rt.cli("stop", mon.pid)
        assert r.returncode == 0, r.stderr
        assert mon.wait() == 143
    events = [json.loads(x) for x in log.read_text().splitlines()]
    refused = [e for e in events if e["event"] == "gdb-refused"]
    assert len(refused) == 1 and f"(uid {NOBODY})" in refused[0]["reason"]


def test_the_stub_attach_starts_is_out_of_reach_of_another_uid(app, rt):
    with Monitor(rt, "--mem=8", "--no-core", app("loop")) as mon:
        mon.wait_for(lambda: "looping" in mon.stdout(), "the guest's output")
        r = rt.cli("attach", "--print", mon.pid)
        assert r.returncode == 0, r.stderr
        path = re.search(r"target remote (\S+)'", r.stdout).group(1)
        assert as_nobody(f"unix:{path}").strip() == "connect: Permission denied"
        assert rt.cli("status", mon.pid).returncode == 0
        r = rt.cli("stop", mon.pid)
        assert r.returncode == 0 and mon.wait() == 143


@GDB
def test_gdb_run_by_another_uid_shows_why_it_is_refused(app, rt, tmp_path):
    with Monitor(rt, "--mem=8", "--no-core", "--gdb", "127.0.0.1:0", "--gdb-wait",
                 app("loop")) as mon:
        addr = mon.wait_for(lambda: (re.search(r"listening on (\S+?),", mon.stderr())
                                     or [0, 0])[1], "the gdb stub")
        os.chmod(tmp_path, 0o777)
        r = subprocess.run(["gdb", "-q", "-nx", "-batch", "-ex", f"target remote {addr}"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path,
                           user=NOBODY, group=NOBODY, extra_groups=[])
        out = r.stdout + r.stderr
        assert re.search(rf"Remote failure reply: E\.ukdbg refused this connection: "
                         rf"127\.0\.0\.1:\d+ \(uid {NOBODY}\): only uid 0", out), out
        assert rt.cli("status", mon.pid).returncode == 0
        mon.proc.terminate()
        assert mon.wait() == 143


REMOTE_CLIENT = textwrap.dedent("""
    import socket, sys, json
    host, port = sys.argv[1], int(sys.argv[2])
    s = socket.create_connection((host, port), 10)
    s.settimeout(10)
    buf = b""

    def packet(body):
        global buf
        s.sendall(b"$%s#%02x" % (body, sum(body) & 0xFF))
        out = []
        while True:
            i = buf.find(b"$")
            j = buf.find(b"#", i + 1)
            if i >= 0 and j >= 0 and len(buf) >= j + 3:
                b = buf[i + 1:j]
                buf = buf[j + 3:]
                s.sendall(b"+")
                if b.startswith(b"O") and b != b"OK" and body.startswith(b"qRcmd"):
                    out.append(bytes.fromhex(b[1:].decode()).decode())
                    continue
                return (b.decode(), "".join(out))
            d = s.recv(65536)
            if not d:
                return ("EOF", "".join(out))
            buf += d

    res = {"m": packet(b"m100000,4")}
    for name in sys.argv[3:]:
        res[name] = packet(b"qRcmd," + ("core " + name).encode().hex().encode())
    packet(b"D")
    print(json.dumps(res))
""")


@pytest.fixture
def veth():
    """A network namespace joined to this one by a veth pair: a peer in it is remote
    (its socket is not in this namespace's /proc/net/tcp)."""
    import shutil
    if shutil.which("ip") is None:
        pytest.skip("ip(8) is not installed")
    tag = f"{os.getpid() % 100000}"
    ns, a, b = f"ukrsp{tag}", f"ukra{tag}", f"ukrb{tag}"
    net = f"10.{231 + os.getpid() % 20}.{os.getpid() % 250}"

    def ip(*args, ns_=None):
        pre = ["ip", "netns", "exec", ns_] if ns_ else []
        subprocess.run([*pre, "ip", *args], check=True, capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        ip("link", "set", b, "netns", ns)
        ip("addr", "add", f"{net}.1/24", "dev", a)
        ip("link", "set", a, "up")
        ip("addr", "add", f"{net}.2/24", "dev", b, ns_=ns)
        ip("link", "set", b, "up", ns_=ns)
        ip("link", "set", "lo", "up", ns_=ns)
        yield ns, f"{net}.1"
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_remote_peer_may_only_write_plain_names_in_core_dir(app, rt, tmp_path, veth):
    ns, host = veth
    cores = tmp_path / "cores"
    cores.mkdir()
    escape = tmp_path / "escaped.core"
    with Monitor(rt, "--mem=8", "--no-core", "--core-dir", cores, "--gdb", f"{host}:0",
                 "--gdb-allow-remote", "--gdb-wait", app("loop")) as mon:
        addr = mon.wait_for(lambda: (re.search(r"listening on (\S+?),", mon.stderr())
                                     or [0, 0])[1], "the gdb stub")
        assert f"gdb: WARNING: the stub listens on {addr}, which is not a loopback " \
            "address" in mon.stderr()
        names = ["../escaped.core", str(escape), ".hidden", "sub/x.core", "ok.core"]
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", REMOTE_CLIENT,
                            *addr.rsplit(":", 1), *names],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["m"][0] == "2f6e6f6e"                   # a remote peer debugs the guest
        for bad in names[:-1]:
            reply, text = res[bad]
            assert reply == "E16" and "this client may only name a file in the " \
                "monitor's --core-dir" in text, (bad, res[bad])
        assert res["ok.core"] == ["OK", f"core written to {cores}/ok.core\n"]
        assert sorted(os.listdir(cores)) == ["ok.core"]
        assert not escape.exists() and not (tmp_path / ".hidden").exists()
        mon.wait_for(lambda: "looping" in mon.stdout(), "the guest to run on")
        mon.proc.terminate()
        assert mon.wait() == 143
