"""gdb clients that do not play along (issue 9): one that never reads its replies, one
that floods, one that vanishes. The monitor keeps serving the guest, the control socket
and signals; a client that stops reading is dropped after a bounded time; a SIGTERM
ends the monitor within 1 s whatever a client does."""

import json
import re
import select
import signal
import threading
import time

import pytest

from gdbguest import raw_connect
from running import Monitor

pytestmark = pytest.mark.kvm

STALL = 5.0          # ukdbg.tender.modules.gdb.STALL


def pkt(body: bytes) -> bytes:
    return b"$%s#%02x" % (body, sum(body) & 0xFF)


def gdb_monitor(rt, app, *extra):
    """A monitor with a control socket and a TCP stub held for gdb; (monitor, address)."""
    m = Monitor(rt, "--mem=8", "--no-core", "--gdb", "127.0.0.1:0", "--gdb-wait", *extra,
                app("loop"))
    addr = m.wait_for(lambda: (re.search(r"listening on (\S+?),", m.stderr()) or [0, 0])[1],
                      "the gdb stub")
    return m, addr


def status(rt, pid, timeout=10):
    t0 = time.monotonic()
    r = rt.cli("status", "--json", pid, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), time.monotonic() - t0


def flood_unread(addr, n=2000):
    """Connect, no-ack mode, then n 16 KiB memory reads; never read a reply."""
    s = raw_connect(addr)
    s.sendall(pkt(b"QStartNoAckMode"))
    time.sleep(0.2)
    s.setblocking(False)
    data = pkt(b"m100000,4000") * n
    deadline = time.monotonic() + 5
    while data and time.monotonic() < deadline:
        try:
            data = data[s.send(data):]
        except BlockingIOError:
            time.sleep(0.01)
        except OSError:
            break
    return s


def sigterm_ends_within(mon, limit=1.0):
    t0 = time.monotonic()
    mon.proc.send_signal(signal.SIGTERM)
    rc = mon.proc.wait(10)
    took = time.monotonic() - t0
    assert took < limit, f"SIGTERM took {took:.2f} s"
    assert "Traceback" not in mon.stderr(), mon.stderr()
    return rc


def test_client_that_never_reads_is_dropped_while_all_else_is_served(rt, app):
    mon, addr = gdb_monitor(rt, app)
    with mon:
        s = flood_unread(addr)
        time.sleep(0.5)
        st, took = status(rt, mon.pid)                 # the control socket answers
        assert st["state"] == "gdb-stopped" and took < 3, (st, took)
        # Dropped (and logged) after STALL seconds without progress; the guest, held
        # for gdb until then, runs on.
        mon.wait_for(lambda: "dropped the client" in mon.stderr(), "the drop",
                     timeout=STALL + 10)
        assert re.search(r"gdb: dropped the client: it left \d+ bytes of replies unread "
                         r"for 5 s", mon.stderr()), mon.stderr()
        mon.wait_for(lambda: "looping" in mon.stdout(), "the guest to run on")
        assert status(rt, mon.pid)[0]["state"] == "running"
        s.close()
        # A new client is served normally afterwards.
        c = raw_connect(addr)
        c.sendall(pkt(b"?"))
        c.settimeout(10)
        assert c.recv(1) == b"+"
        c.close()
        assert sigterm_ends_within(mon) == 128 + 15


def test_sigterm_ends_the_monitor_within_1s_under_a_client_that_never_reads(rt, app):
    mon, addr = gdb_monitor(rt, app)
    with mon:
        s = flood_unread(addr)
        time.sleep(0.3)
        assert sigterm_ends_within(mon) == 128 + 15
        assert "received SIGTERM" in mon.stderr()
        s.close()


def test_sigterm_and_control_under_a_client_that_floods_and_reads(rt, app):
    """A client that pipelines large reads as fast as it can and takes every byte: the
    stub is busy all the time, yet a control request and a SIGTERM get through."""
    mon, addr = gdb_monitor(rt, app)
    with mon:
        s = raw_connect(addr)
        s.sendall(pkt(b"QStartNoAckMode"))
        time.sleep(0.2)
        stop = threading.Event()
        got = [0]

        def reader():
            while not stop.is_set():
                if not select.select([s], [], [], 0.5)[0]:
                    continue
                try:
                    d = s.recv(1 << 20)
                except OSError:
                    return
                if not d:
                    return
                got[0] += len(d)
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        burst = pkt(b"m100000,10000") * 64
        try:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                s.sendall(burst)
            st, took = status(rt, mon.pid)
            assert st["state"] == "gdb-stopped" and took < 3, (st, took)
            assert got[0] > 1 << 20                     # the stub did answer
            assert sigterm_ends_within(mon) == 128 + 15
        finally:
            stop.set()
            s.close()
            t.join(5)


def test_flooding_requests_while_the_guest_runs_is_dropped(rt, app):
    """Megabytes of requests while the guest runs under `continue` (nothing is read
    until it stops): the client is dropped, not buffered without bound."""
    mon, addr = gdb_monitor(rt, app)
    with mon:
        s = raw_connect(addr)
        s.sendall(pkt(b"QStartNoAckMode"))
        time.sleep(0.2)
        s.sendall(pkt(b"c"))
        mon.wait_for(lambda: "looping" in mon.stdout(), "the guest to run")
        s.setblocking(False)
        junk = pkt(b"qNoSuchThing") * 20000
        deadline = time.monotonic() + 10
        while "dropped the client" not in mon.stderr() and time.monotonic() < deadline:
            try:
                s.send(junk)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        assert "it sent over 1 MiB of requests without reading the replies" in \
            mon.stderr(), mon.stderr()
        assert status(rt, mon.pid)[0]["state"] == "running"
        s.close()
        assert sigterm_ends_within(mon) == 128 + 15


def test_a_non_loopback_stub_needs_allow_remote_and_warns(rt, app):
    from helpers import ukdbg
    r = ukdbg("run", "--mem=8", "--no-core", "--gdb", "0.0.0.0:0", app("hello"))
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "0.0.0.0:0 is not a loopback address" in \
        r.stderr and "--gdb-allow-remote" in r.stderr, r.stderr
    r = ukdbg("run", "--mem=8", "--no-core", "--gdb", "0.0.0.0:0", "--gdb-allow-remote",
              app("hello"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"gdb: WARNING: the stub listens on 0\.0\.0\.0:\d+, which is not a "
                     r"loopback address", r.stderr), r.stderr


def test_many_idle_connections_cost_a_bounded_number_of_descriptors(rt, app):
    """While a session runs, further clients are refused; those that never send (so
    never get their refusal) are held four at most."""
    import os
    mon, addr = gdb_monitor(rt, app)
    with mon:
        s = raw_connect(addr)
        s.sendall(pkt(b"?"))
        assert s.recv(1) == b"+"
        time.sleep(0.2)
        fds = len(os.listdir(f"/proc/{mon.pid}/fd"))
        idle = [raw_connect(addr) for _ in range(40)]
        mon.wait_for(lambda: mon.stderr().count("refused a second client") == 40,
                     "the refusals")
        assert len(os.listdir(f"/proc/{mon.pid}/fd")) <= fds + 4
        late = idle[-1]                                 # still held: it gets the reason
        late.sendall(pkt(b"?"))
        late.settimeout(5)
        assert b"another debugger is already attached" in late.recv(4096)
        for c in idle:
            c.close()
        assert status(rt, mon.pid)[0]["state"] == "gdb-stopped"
        assert sigterm_ends_within(mon) == 128 + 15
        s.close()
