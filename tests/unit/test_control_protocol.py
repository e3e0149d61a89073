"""The control socket's request checks (issue 9) without KVM: the nesting pre-scan, the
decoder, field validation, and the listener's uid check on a real socket.

The uid check needs a peer of another uid. Root runs get one in
tests/e2e/test_control.py (a client as `nobody`); here, for any user, the listener is
told it belongs to another uid, which is what it sees when a foreign peer connects."""

import json
import os
import socket
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ukdbg.tender.modules import control_listener as L
from ukdbg.tender.modules import control_server as P


# --- the nesting pre-scan ----------------------------------------------------------------------
def nested(depth, kinds, leaf):
    v = leaf
    for k in kinds[:depth]:
        v = [v] if k else {"k[{\"": v}
    return v


@settings(max_examples=150, deadline=None)
@given(depth=st.integers(0, 3 * P.MAX_DEPTH),
       kinds=st.lists(st.booleans(), min_size=3 * P.MAX_DEPTH, max_size=3 * P.MAX_DEPTH),
       leaf=st.text(alphabet='[]{}"\\ax\u0000', max_size=40))
def test_nesting_is_exact_about_the_limit(depth, kinds, leaf):
    """Brackets inside strings (escaped quotes and backslashes included) never count;
    whether a line is over the limit is decided exactly."""
    line = json.dumps(nested(depth, kinds, leaf)).encode()
    assert (P.nesting(line) > P.MAX_DEPTH) == (depth > P.MAX_DEPTH)


def test_nesting_of_the_reported_lines():
    assert P.nesting(b"[" * 1000) > P.MAX_DEPTH
    assert P.nesting(b'{"a":' * 5000) > P.MAX_DEPTH
    assert P.nesting(b'{"cmd": "status", "x": "' + b"[" * 5000 + b'"}') <= P.MAX_DEPTH


# --- decoding and validation ------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.sampled_from([b"[", b"{", b'"a":', b"]", b"}", b",", b'"',
                                           b"\\", b"1", b"\x00", b"\xff", b" "]),
                          max_size=3000).map(b"".join)))
def test_decode_never_raises(line):
    req, err = P.decode(line)
    assert err is None or (isinstance(err, str) and "\n" not in err)
    if err is None:
        assert isinstance(req, dict) and isinstance(req["cmd"], str)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c,
                                                                        max_size=3),
                    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(cmd=st.one_of(st.sampled_from(sorted(P.FIELDS)), st.text()),
       fields=st.dictionaries(st.sampled_from(["id", "path", "address", "x", ""]) | st.text(),
                              JSON, max_size=3))
def test_validate_never_raises(cmd, fields):
    err = P.validate({**fields, "cmd": cmd})
    assert err is None or (isinstance(err, str) and "\n" not in err)
    if err is None:
        assert cmd in P.FIELDS


def test_every_command_has_its_fields_declared():
    assert set(P.FIELDS) == set(P.COMMANDS)


@pytest.mark.parametrize("req,error", [
    ({"cmd": "frobnicate"}, "unknown command 'frobnicate' (known: core, gdb, pause, "
                            "resume, status, stop)"),
    ({"cmd": "status", "x": 1}, "status: unknown field 'x' (status takes no field but id)"),
    ({"cmd": "core", "file": "/x"}, "core: unknown field 'file' (core takes path and id)"),
    ({"cmd": "status", "id": 1.5}, "bad request (id must be an integer or a string)"),
    ({"cmd": "status", "id": True}, "bad request (id must be an integer or a string)"),
    ({"cmd": "status", "id": 2**63}, "bad request (id must fit in 64 bits)"),
    ({"cmd": "status", "id": "x" * 257}, "bad request (id must be at most 256 characters)"),
    ({"cmd": "core", "path": 5}, "core: path must be a string, not a number"),
    ({"cmd": "core", "path": "rel.core"}, "core: path must be an absolute path"),
    ({"cmd": "core", "path": ""}, "core: path must not be empty"),
    ({"cmd": "core", "path": "/a\0b"}, "core: path must not contain a NUL character"),
    ({"cmd": "core", "path": "/" + "a" * 4095},
     "core: path is too long (more than 4095 characters)"),
    ({"cmd": "core", "path": "/" + "é" * 2100}, "core: path is too long (more than 4095 "
                                                "bytes)"),
    ({"cmd": "core", "path": "/\ud800"}, "core: path is not valid text (lone surrogate)"),
    ({"cmd": "gdb", "address": ["x"]}, "gdb: address must be a string, not an array"),
    ({"cmd": "gdb", "address": "unix:/tmp/x\0y"},
     "gdb: address must not contain a NUL character"),
    ({"cmd": "gdb", "address": "unix:/tmp/x\ny"},
     "gdb: address must not contain control characters"),
    ({"cmd": "gdb", "address": "unix:/" + "s" * 107},
     "gdb: address: a unix socket path has at most 107 bytes"),
    ({"cmd": "gdb", "address": "127.0.0.1:65536"},
     "gdb: address must be [HOST:]PORT (PORT 0-65535) or unix:PATH"),
    ({"cmd": "gdb", "address": "localhost:x"},
     "gdb: address must be [HOST:]PORT (PORT 0-65535) or unix:PATH"),
    ({"cmd": "gdb", "address": "hé:1"},
     "gdb: address: HOST must be an IP address or an ASCII host name"),
])
def test_validate_messages(req, error):
    assert P.validate(req) == error


@pytest.mark.parametrize("req", [
    {"cmd": "status"}, {"cmd": "status", "id": None}, {"cmd": "status", "id": "a\0b"},
    {"cmd": "stop", "id": -5}, {"cmd": "core", "path": None}, {"cmd": "core", "path": "/x"},
    {"cmd": "gdb", "address": None}, {"cmd": "gdb", "address": "unix:/tmp/g.sock"},
    {"cmd": "gdb", "address": "1234"}, {"cmd": "gdb", "address": "[::1]:0"},
])
def test_validate_accepts(req):
    assert P.validate(req) is None


# --- the listener, on a real socket -------------------------------------------------------------
class Events:
    """What the listener uses of tender/events.py (no signals in a test process)."""

    def __init__(self):
        self.sources = {}

    def add_source(self, fd, callback):
        self.sources[fd] = callback

    def remove_source(self, fd):
        self.sources.pop(fd, None)


@pytest.fixture
def listener(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    m = types.SimpleNamespace(events=Events())
    ctl = L.Control(m)
    yield ctl
    ctl.close()
    assert not os.path.exists(os.path.join(tmp_path, "ukdbg", f"{os.getpid()}.sock"))


def client(ctl):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(ctl.path)
    return s


def test_a_peer_of_another_uid_is_refused(listener, capsys):
    owner = listener.uid = os.getuid() + 1  # as a monitor of another user sees us
    for _ in range(3):
        s = client(listener)
        listener.on_listen(listener.m)
        assert json.loads(s.recv(4096)) == {
            "ok": False, "error": f"permission denied: uid {os.getuid()} may not control "
                                  "this unikernel"}
        assert s.recv(1) == b""              # and closed
        s.close()
    assert listener.conns == {}
    # the monitor says so once, not once per connection
    assert capsys.readouterr().err == (
        f"ukdbg: control socket: refused a connection from uid {os.getuid()} (only uid "
        f"{owner} may control this unikernel)\n")


def test_the_owner_gets_answers_and_bad_lines_keep_the_connection(listener, tmp_path):
    s = client(listener)
    listener.on_listen(listener.m)
    assert len(listener.conns) == 1
    (fd,) = listener.conns
    stray = tmp_path / "x"
    s.sendall(b"[" * 1000 + b"\n" + b'{"cmd": "gdb", "address": "unix:%s\\u0000y"}\n'
              % str(stray).encode())
    listener.m.events.sources[fd](listener.m)
    replies = [json.loads(x) for x in s.recv(4096).splitlines()]
    assert replies == [
        {"ok": False, "error": f"bad request (nested deeper than {P.MAX_DEPTH} levels)"},
        {"ok": False, "error": "gdb: address must not contain a NUL character"}]
    assert not stray.exists()
    assert len(listener.conns) == 1          # still open
    s.close()


def accept(ctl):
    """A client connection and the listener's fd for it."""
    before = set(ctl.conns)
    s = client(ctl)
    ctl.on_listen(ctl.m)
    (fd,) = set(ctl.conns) - before
    return s, fd


def test_the_newest_connection_evicts_the_least_active(listener):
    conns = [accept(listener) for _ in range(L.MAX_CONNS)]
    assert len(listener.conns) == L.MAX_CONNS
    (s0, _), (s1, fd1) = conns[0], conns[1]
    s1.sendall(b"\n")                         # the second becomes the most recent
    listener.m.events.sources[fd1](listener.m)
    new, _ = accept(listener)
    assert len(listener.conns) == L.MAX_CONNS
    assert json.loads(s0.recv(4096)) == {
        "ok": False, "error": f"dropped: too many control connections (at most "
                              f"{L.MAX_CONNS})"}
    s1.setblocking(False)
    with pytest.raises(BlockingIOError):
        s1.recv(1)                            # still connected, nothing to read
    for s, _ in conns:
        s.close()
    new.close()


# --- the wire format: json's results, without importing json ------------------------------------
@settings(max_examples=300, deadline=None)
@given(JSON)
def test_wire_matches_json(value):
    from ukdbg.control import wire
    assert wire.dumps(value) == json.dumps(value)
    back = wire.loads(json.dumps(value).encode())
    assert json.dumps(back) == json.dumps(json.loads(json.dumps(value)))


def test_wire_refuses_what_json_refuses():
    from ukdbg.control import wire
    for bad in (b"", b"nope", b'{"a": 1} x', b'{"a": }', b"[1,]", b"\xff"):
        with pytest.raises(ValueError):
            wire.loads(bad)


def test_a_request_and_its_reply_import_no_json_re_or_enum():
    """The first request must not cost the ~10 ms of json.decoder's regular expressions."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from ukdbg.tender.modules import control_server as P\n"
            "req, err = P.decode(b'{\"cmd\": \"status\", \"id\": [1, {\"a\": 1.5}]}')\n"
            "assert err is None and P.validate(req) == 'bad request (id must be an integer"
            " or a string)', (req, err)\n"
            "P.wire.dumps({'ok': False, 'error': 'x', 'n': [1, 2.5, None, True]})\n"
            "print(' '.join(m for m in ('json', 're', 'enum') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == []
