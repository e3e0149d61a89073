"""The control socket against hostile input (issue 9): deep nesting, huge lines, NUL
bytes, wrong types, unknown fields, random bytes, and clients that connect and never
send, send half a line and go, or never read. Seeded, with a fixed budget.

Every test asserts the same four things at the end: no traceback (or internal error)
from the monitor, no hang (every socket has a timeout), the monitor alive (a status
request on a fresh connection answers) and the guest unaffected (it kept printing, and
it ends with the exit status it would have had)."""

import json
import os
import random
import re
import socket
import time

import pytest

from running import Monitor

pytestmark = pytest.mark.kvm

SEED = 9                # issue 9
MAX_LINE = 64 * 1024
MAX_DEPTH = 32


@pytest.fixture
def guest(rt):
    """`time 100000`: a guest printing t=<ns> every 100 ms, as long as the test wants."""
    m = Monitor(rt, "--mem=8", app_path("time"), "100000")
    m.wait_for(lambda: len(ticks(m)) >= 2, "the guest's output")
    yield m
    m.close()


def app_path(name):
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "fixtures", "build", f"{name}.hvt")


def ticks(m):
    return [int(x) for x in re.findall(r"^t=(\d+)$", m.stdout(), re.M)]


def connect(m, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(m.sock)
            return s
        except BlockingIOError:         # the backlog is full: wait for room, bounded
            assert time.monotonic() < deadline, "the monitor stopped accepting"
            time.sleep(0.005)


def read_lines(s, n):
    """n reply lines (fewer if the monitor closes the connection)."""
    buf = b""
    while buf.count(b"\n") < n:
        try:
            chunk = s.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return [json.loads(x) for x in buf.split(b"\n")[:-1][:n]]


def exchange(m, lines):
    """Send lines on one connection (pipelined), return one reply per line."""
    s = connect(m)
    try:
        s.sendall(b"".join(ln + b"\n" for ln in lines))
        return read_lines(s, len(lines))
    finally:
        s.close()


def assert_healthy(m, since):
    """The monitor answers a status request and the guest printed more than `since`
    lines; nothing went wrong inside the monitor."""
    r = exchange(m, [b'{"cmd": "status", "id": "health"}'])
    assert len(r) == 1 and r[0]["ok"] is True and r[0]["id"] == "health", r
    assert r[0]["state"] in ("running", "sleeping"), r[0]
    n = len(ticks(m))
    m.wait_for(lambda: len(ticks(m)) > max(n, since), "the guest to go on printing")
    ts = ticks(m)
    gaps = [(b - a) / 1e9 for a, b in zip(ts, ts[1:])]
    assert max(gaps) < 2.0, f"the guest stalled: {max(gaps):.2f} s between two lines"
    err = m.stderr()
    assert "Traceback" not in err and "internal error" not in err, err


def stop_normally(m, rt):
    r = rt.cli("stop", m.pid)
    assert r.returncode == 0, r.stderr
    assert m.wait() == 143
    err = m.stderr()
    assert "Traceback" not in err and "internal error" not in err, err
    assert not os.path.exists(m.sock)


def assert_refused(reply, line):
    assert reply["ok"] is False, (line[:200], reply)
    err = reply["error"]
    assert isinstance(err, str) and err and "\n" not in err, reply
    assert "internal error" not in err and "Traceback" not in err, (line[:200], reply)


# --- the defects of issue 9, as reported --------------------------------------------------------
def test_deep_nesting_is_refused_and_the_connection_stays_open(guest, rt):
    lines = [b"[" * 1000, b"[" * 2000, b'{"a":' * 5000, b"{" * 60000 + b"}" * 10,
             b'{"cmd": "status", "id": 7}']
    s = connect(guest)
    try:
        for ln in lines[:-1]:
            s.sendall(ln + b"\n")
            (r,) = read_lines(s, 1)
            assert_refused(r, ln)
            assert f"nested deeper than {MAX_DEPTH} levels" in r["error"]
        s.sendall(lines[-1] + b"\n")              # the same connection still answers
        (r,) = read_lines(s, 1)
        assert r["ok"] is True and r["id"] == 7
    finally:
        s.close()
    assert_healthy(guest, 0)
    stop_normally(guest, rt)


def test_nul_in_any_field_is_refused_and_leaves_no_file(guest, rt, tmp_path):
    stray = tmp_path / "x"
    reqs = [{"cmd": "gdb", "address": f"unix:{stray}\u0000y"},
            {"cmd": "core", "path": f"{stray}\u0000y"},
            {"cmd": "status", "id": "a\u0000b", "x": 1},
            {"cmd": "stat\u0000us"},
            {"cmd": "status\u0000"}]
    replies = exchange(guest, [json.dumps(r).encode() for r in reqs])
    assert len(replies) == len(reqs)
    for req, r in zip(reqs, replies):
        assert_refused(r, json.dumps(req).encode())
    assert "must not contain a NUL character" in replies[0]["error"]
    assert "must not contain a NUL character" in replies[1]["error"]
    # a raw NUL byte is not JSON either
    (r,) = exchange(guest, [b'{"cmd": "status"\x00}'])
    assert_refused(r, b"raw NUL")
    assert os.listdir(tmp_path) == []               # no stray socket, no core
    assert status(guest)["gdb"] is None             # and no stub started
    assert_healthy(guest, 0)
    stop_normally(guest, rt)


def status(m):
    (r,) = exchange(m, [b'{"cmd": "status"}'])
    return r


# --- fuzzing the request lines ------------------------------------------------------------------
JSON_VALUES = [None, True, False, 0, -1, 2**64, 1.5, 1e308, "", "x", "\u0000", "\ud800",
               "é" * 10, [], [1], {}, {"a": 1}, "/" * 5000]
SAFE = ("status",)                      # the commands a fuzzed line may really run


def gen_line(rnd):
    """One request line that must be refused (or a plain status); never a line that
    could pause, stop, dump or attach for real."""
    kind = rnd.randrange(10)
    if kind == 0:                                   # deep nesting, closed or not
        d = rnd.choice([MAX_DEPTH + 1, 100, 999, 1000, 5000, 20000])
        o, c = rnd.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")])
        d = min(d, (MAX_LINE - 1) // (len(o) + len(c)))    # over it: another test
        return o * d + (c * d if rnd.random() < 0.5 else b"")
    if kind == 1:                                   # nesting hidden in a field
        d = rnd.choice([MAX_DEPTH + 1, 300, 3000])
        return b'{"cmd": "status", "x": ' + b"[" * d + b"]" * d + b"}"
    if kind == 2:                                   # big but under the line limit
        n = rnd.randrange(1, MAX_LINE - 100)
        return json.dumps({"cmd": "status", "pad": "z" * n}).encode()
    if kind == 3:                                   # NUL, escaped or raw
        cmd, field = rnd.choice([("core", "path"), ("gdb", "address"), ("status", "x"),
                                 ("stat\u0000us", "id"), ("gdb", "cmd")])
        base = json.dumps({"cmd": cmd, field: rnd.choice(["a\u0000b", "/tmp/\u0000",
                                                          "unix:/tmp/x\u0000y"])})
        if rnd.random() < 0.5:
            return base.encode()
        b = bytearray(json.dumps({"cmd": "status"}).encode())
        b.insert(rnd.randrange(len(b)), 0)
        return bytes(b)
    if kind == 4:                                   # wrong types
        cmd = rnd.choice(["status", "core", "gdb", "pause", "stop"])
        field = {"core": "path", "gdb": "address"}.get(cmd, "id")
        v = rnd.choice(JSON_VALUES[:4] + JSON_VALUES[5:6] + JSON_VALUES[6:7] +
                       JSON_VALUES[13:17])
        if field == "id":                           # a valid id would run the command
            v = rnd.choice([True, 1.5, [], {}, "x" * 300, 2**64])
        elif v is None:
            v = []
        return json.dumps({"cmd": cmd, field: v}).encode()
    if kind == 5:                                   # unknown fields
        cmd = rnd.choice(["status", "core", "gdb", "pause", "stop", "resume"])
        return json.dumps({"cmd": cmd, rnd.choice(["x", "PATH", "", "\u0000", "é"]):
                           rnd.choice(JSON_VALUES)}).encode()
    if kind == 6:                                   # not a request object
        return json.dumps(rnd.choice([[], [{"cmd": "stop"}], "stop", 1, None,
                                      {"cmd": 1}, {"cmd": None}, {"CMD": "stop"},
                                      {"cmd": ["stop"]}])).encode()
    if kind == 7:                                   # random bytes
        while True:
            b = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))
            b = b.replace(b"\n", b"")
            if b.strip():
                return b
    if kind == 8:                                   # mutated status requests
        b = bytearray(b'{"cmd": "status", "id": %d}' % rnd.randrange(1000))
        for _ in range(rnd.randrange(1, 4)):
            i = rnd.randrange(len(b))
            b[i] = rnd.choice([0, 0x22, 0x5b, 0x7b, 0x5c, 0xff, rnd.randrange(256)])
        b = bytes(b).replace(b"\n", b" ")
        return b if b.strip() else b"x"
    # a valid status now and then: replies must stay in order
    return json.dumps({"cmd": "status", "id": rnd.randrange(1 << 30)}).encode()


def test_fuzzed_request_lines(guest, rt):
    rnd = random.Random(SEED)
    deadline = time.monotonic() + 3.0         # the budget: 2000 lines take ~1 s here
    sent = answered = ok = 0
    since = len(ticks(guest))
    while time.monotonic() < deadline and sent < 2000:
        batch = [gen_line(rnd) for _ in range(rnd.randrange(1, 12))]
        replies = exchange(guest, batch)
        assert len(replies) == len(batch), (batch, replies)
        for line, r in zip(batch, replies):
            want_ok = False
            try:
                req = json.loads(line)
                want_ok = (isinstance(req, dict) and set(req) <= {"cmd", "id"}
                           and req.get("cmd") in SAFE
                           and isinstance(req.get("id"), (int, type(None)))
                           and not isinstance(req.get("id"), bool)
                           and (req.get("id") is None or abs(req["id"]) < 2**63))
            except (ValueError, RecursionError):
                pass
            if want_ok:
                assert r["ok"] is True and r.get("id") == req.get("id"), (line, r)
                ok += 1
            else:
                assert_refused(r, line)
        sent += len(batch)
        answered += len(replies)
    assert sent >= 50 and answered == sent and ok >= 1
    assert_healthy(guest, since)
    stop_normally(guest, rt)


def test_oversized_lines_end_only_their_connection(guest, rt):
    rnd = random.Random(SEED + 1)
    for _ in range(6):
        n = rnd.choice([MAX_LINE + 1, MAX_LINE * 2, 1 << 20, 8 << 20])
        s = connect(guest)
        try:
            body = b"[" * (n // 2) + b"x" * (n - n // 2)
            try:
                s.sendall(body + (b"\n" if rnd.random() < 0.5 else b""))
            except (BrokenPipeError, ConnectionResetError):
                pass                            # it stopped reading: as it should
            r = read_lines(s, 1)
            assert r and "request line too long" in r[0]["error"], r
            try:                                # and closed (reset: input was unread)
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        finally:
            s.close()
    assert_healthy(guest, 0)
    stop_normally(guest, rt)


# --- fuzzing the clients -------------------------------------------------------------------------
def test_many_silent_half_and_deaf_clients(guest, rt):
    """Three times MAX_CONNS clients at once: silent ones, ones that send half a line
    and disconnect, ones that pipeline thousands of requests and never read, and ones
    that behave. The newest always get served; nothing blocks the guest."""
    rnd = random.Random(SEED + 2)
    since = len(ticks(guest))
    rss0 = rss_kib(guest.pid)
    kept = []
    t0 = time.monotonic()
    kinds = (["silent"] * 40 + ["half"] * 30 + ["deaf"] * 6 + ["deafer"] * 2
             + ["good"] * 18)
    rnd.shuffle(kinds)
    try:
        for i, kind in enumerate(kinds):
            s = connect(guest, timeout=5.0)
            if kind == "silent":
                kept.append(s)
            elif kind == "half":
                s.sendall(rnd.choice([b'{"cmd": "sta', b"[" * 5000, b'{"cmd": "stop"',
                                      b'{"cmd": "status"}\n{"cmd"']))
                s.close()
            elif kind.startswith("deaf"):
                # replies pile up: past 1 MiB unread ("deafer") the client is dropped
                s.setblocking(False)
                try:
                    s.send(b'{"cmd": "status"}\n' * (3000 if kind == "deafer" else 20))
                except BlockingIOError:
                    pass
                kept.append(s)
            else:
                s.sendall(b'{"cmd": "status", "id": %d}\n' % i)
                r = read_lines(s, 1)
                # an older silent client may have been evicted, never a new one
                assert r and r[0]["ok"] is True and r[0]["id"] == i, r
                s.close()
        assert_healthy(guest, since)
        # what clients make it hold is bounded: 32 x (64 KiB in + 1 MiB out) at most
        assert rss_kib(guest.pid) - rss0 < 48 * 1024, (rss0, rss_kib(guest.pid))
    finally:
        for s in kept:
            s.close()
    assert time.monotonic() - t0 < 30
    assert_healthy(guest, since)
    stop_normally(guest, rt)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def test_a_guest_that_ends_by_itself_keeps_its_exit_status(rt):
    """Hostile lines during the whole life of a short guest: it prints all its lines
    and exits 0, as it would have without them."""
    m = Monitor(rt, "--mem=8", app_path("time"), "15")          # ~1.5 s
    try:
        rnd = random.Random(SEED + 3)
        while m.proc.poll() is None:
            try:
                s = connect(m, timeout=2.0)
            except (FileNotFoundError, ConnectionRefusedError):
                break                                           # it ended meanwhile
            try:
                s.sendall(b"\n".join(gen_line(rnd) for _ in range(8)) + b"\n")
                read_lines(s, 8)
            except OSError:
                pass
            finally:
                s.close()
        assert m.wait() == 0
        assert len(ticks(m)) == 15
        err = m.stderr()
        assert "Traceback" not in err and "internal error" not in err, err
        assert not os.path.exists(m.sock)
    finally:
        m.close()
