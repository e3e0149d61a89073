"""ukdbg/tender/modules/control_server.py: the control protocol: requests and their replies.

Imported by the listener (control_listener.py) when the first request line arrives, not
before. It does not import json either: control/wire.py encodes and decodes with json's
C accelerator alone, so even the first request costs no import of re or enum. Each line is checked before it is decoded (nesting depth), decoded with
every error caught, and each field of the request is validated (type, range, length,
NUL) before a command runs: a bad request gets {"ok": false, "error": ...} and the
connection and the guest go on.
"""

import os
import time

from ...control import paths, wire
from .. import abi, flight

PROTOCOL = 1
MAX_DEPTH = 32              # nesting of arrays and objects in a request line
MAX_ID = 256                # characters of a string "id"
MAX_PATH = 4095             # bytes of a path (PATH_MAX less the NUL)
MAX_ADDRESS = 4096          # characters of a gdb address


def _log(m, kind, **fields):
    if getattr(m, "log", None) is not None:
        from .log import log_event
        log_event(m, kind, **fields)


# --- one request line ---------------------------------------------------------------------------
def request(ctl, c, line: bytes):
    """Answer one request line on connection c; returns a Stop when the guest must end."""
    req, err = decode(line)
    if err is None:
        err = validate(req)
    if err is not None:
        reply = {"ok": False, "error": err}
        if isinstance(req, dict) and "id" in req and _id_error(req["id"]) is None:
            reply["id"] = req["id"]
        send(ctl, c, reply)
        return None
    try:
        reply, after = COMMANDS[req["cmd"]](ctl, req)
    except Exception as e:      # an error here must not end the guest
        from ... import sandbox
        from ...errors import UkdbgError
        msg = sandbox.describe(e, f"control request {req['cmd']}") or (
            str(e) if isinstance(e, UkdbgError) else
            f"internal error: {type(e).__name__}: {_one_line(e)}")
        reply, after = {"ok": False, "error": msg}, None
    if "id" in req:
        reply["id"] = req["id"]
    send(ctl, c, reply)
    if after is None:
        return None
    ctl.flush(c)                # the reply goes out before a pause holds or a stop ends
    return after()


def send(ctl, c, reply) -> None:
    ctl.send_bytes(c, (wire.dumps(reply) + "\n").encode())


_BRACKETS = bytes(range(256)).translate(None, b'[]{}"\\')     # all bytes but these


def nesting(line: bytes) -> int:
    """How deeply arrays and objects nest in line, as json's scanner would recurse
    (brackets inside strings do not count); a bound when that is enough to accept.
    String contents are cut out with C-level bytes operations, so only the brackets
    outside strings are counted one by one, and the count stops past MAX_DEPTH."""
    opened = line.count(b"[") + line.count(b"{")
    if opened <= MAX_DEPTH:
        return opened
    kept = line.translate(None, _BRACKETS)          # only [ ] { } " and backslashes
    kept = kept.replace(b"\\\\", b"").replace(b'\\"', b"")      # escapes (in strings)
    outside = b"".join(kept.split(b'"')[::2])       # the parts between strings
    if outside.count(b"[") + outside.count(b"{") <= MAX_DEPTH:
        return MAX_DEPTH
    depth = deepest = 0
    for b in outside:
        if b == 91 or b == 123:                     # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        elif b == 93 or b == 125:                   # ] }
            depth -= 1
    return deepest


def decode(line: bytes):
    """(request, None) or (None, the error message)."""
    if nesting(line) > MAX_DEPTH:
        return None, f"bad request (nested deeper than {MAX_DEPTH} levels)"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"bad request (not UTF-8: byte {e.start})"
    try:
        req = wire.loads(text)
    except RecursionError:              # unreachable after nesting(); never fatal
        return None, "bad request (nested too deeply)"
    except ValueError as e:
        return None, f"bad request (not JSON: {_one_line(e)})"
    except Exception as e:              # noqa: BLE001 - a request never ends the monitor
        return None, f"bad request (not JSON: {type(e).__name__})"
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        return req, 'bad request (want {"cmd": "..."})'
    return req, None


def _one_line(e) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


# --- validation -------------------------------------------------------------------------------------
def _id_error(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        return "id must be an integer or a string"
    if isinstance(v, int) and not -2**63 <= v < 2**63:
        return "id must fit in 64 bits"
    if isinstance(v, str) and len(v) > MAX_ID:
        return f"id must be at most {MAX_ID} characters"
    return None


def _text_error(name, v, limit):
    """Checks shared by string fields that become file names or addresses."""
    if not isinstance(v, str):
        return f"{name} must be a string, not {_json_type(v)}"
    if not v:
        return f"{name} must not be empty"
    if "\0" in v:
        return f"{name} must not contain a NUL character"
    if len(v) > limit:
        return f"{name} is too long (more than {limit} characters)"
    try:
        n = len(os.fsencode(v))
    except UnicodeError:
        return f"{name} is not valid text (lone surrogate)"
    if n > limit:
        return f"{name} is too long (more than {limit} bytes)"
    return None


def _core_path_error(v):
    err = _text_error("path", v, MAX_PATH)
    if err is None and not v.startswith("/"):
        err = "path must be an absolute path"
    return err


_SUN_PATH = 107             # sockaddr_un.sun_path less the NUL


def _gdb_address_error(v):
    err = _text_error("address", v, MAX_ADDRESS)
    if err is not None:
        return err
    if any(ch < " " or ch == "\x7f" for ch in v):
        return "address must not contain control characters"
    if v.startswith("unix:"):
        if len(os.fsencode(v[5:])) > _SUN_PATH:
            return f"address: a unix socket path has at most {_SUN_PATH} bytes"
        return None
    host, _, port = v.rpartition(":")
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        return "address must be [HOST:]PORT (PORT 0-65535) or unix:PATH"
    if not host.isascii() or len(host) > 255:
        return "address: HOST must be an IP address or an ASCII host name"
    return None


def _json_type(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(v), "?")


# cmd -> {optional field: validator(value) -> error or None}; null means absent.
FIELDS = {
    "status": {},
    "pause": {},
    "resume": {},
    "stop": {},
    "core": {"path": _core_path_error},
    "gdb": {"address": _gdb_address_error},
}


def validate(req: dict):
    """The error message for a request that may not run, else None."""
    cmd = req["cmd"]
    fields = FIELDS.get(cmd)
    if fields is None:
        return (f"unknown command {cmd[:64]!r} (known: " + ", ".join(sorted(FIELDS)) + ")")
    for k, v in req.items():
        if k in ("cmd",):
            continue
        if k == "id":
            err = _id_error(v)
            if err is not None:
                return f"bad request ({err})"
            continue
        check = fields.get(k)
        if check is None:
            takes = (", ".join(sorted(fields)) + " and id") if fields else "no field but id"
            return f"{cmd}: unknown field {k[:64]!r} ({cmd} takes {takes})"
        if v is not None:
            err = check(v)
            if err is not None:
                return f"{cmd}: {err}"
    return None


# --- state and status ------------------------------------------------------------------------------
def state(ctl) -> str:
    """running | sleeping (in POLL) | paused | gdb-stopped | crashed | ended."""
    m = ctl.m
    final = getattr(m, "final_stop", None)
    if final is not None:              # ending hooks run (e.g. held for gdb)
        from ...target import Crashed
        return "crashed" if isinstance(final, Crashed) else "ended"
    if ctl.paused:
        return "paused"
    if _gdb_holds(ctl):
        return "gdb-stopped"
    if ctl.sleeping:
        return "sleeping"
    return "running"


def _gdb_session(ctl):
    return getattr(getattr(ctl.m, "gdb", None), "session", None)


def _gdb_holds(ctl) -> bool:
    """A gdb session has the guest stopped (not under `continue`)."""
    sess = _gdb_session(ctl)
    return sess is not None and not getattr(sess, "running", False)


def status(ctl) -> dict:
    from ...kvm.uapi import EXIT_NAMES
    m = ctl.m
    hc = m.stats.hypercalls
    exits = {"io": sum(hc)}
    for reason, n in sorted(m.stats.exits.items()):
        exits[EXIT_NAMES.get(reason, str(reason)).lower()] = n
    devices = []
    for d in m.devices:
        h = d.host
        e = {"name": d.name, "index": d.index,
             "type": {abi.MFT_DEV_BLOCK_BASIC: "block",
                      abi.MFT_DEV_NET_BASIC: "net"}.get(d.type, d.type_name),
             "attached": d.attached,
             "backend": getattr(h, "path", None) or getattr(h, "iface", None),
             "bytes_read": getattr(h, "bytes_read", 0),
             "bytes_written": getattr(h, "bytes_written", 0)}
        if d.type == abi.MFT_DEV_BLOCK_BASIC:
            e["capacity"] = d.capacity
            e["block_size"] = d.block_size
        elif d.type == abi.MFT_DEV_NET_BASIC:
            e["mac"] = ":".join(f"{b:02x}" for b in d.mac)
            e["mtu"] = d.mtu
        devices.append(e)
    up = time.monotonic() - m.started if m.started else 0.0
    if ctl.started_wall is None and m.started:
        ctl.started_wall = round(time.time() - up, 6)
    return {
        "ok": True, "protocol": PROTOCOL, "pid": os.getpid(),
        "app": os.path.abspath(m.image.path), "argv": list(m.argv),
        "cmdline": m.cmdline.decode("utf-8", "replace"),
        "state": state(ctl), "uptime": round(up, 6),
        "started": ctl.started_wall,
        "paused_seconds": round(ctl.paused_total, 6),
        "memory": {"size": m.mem_size, "resident": m.mem.resident_bytes()},
        "devices": devices,
        "exits": exits,
        "hypercalls": {abi.HC_NAMES[i]: n for i, n in enumerate(hc)
                       if i in abi.HC_NAMES},
        "console_bytes": m.console.total,
        "gdb": gdb_address(m),
        "gdb_attached": _gdb_session(ctl) is not None,
        "cores": list(ctl.cores),
    }


# --- pause -----------------------------------------------------------------------------------
def hold(ctl):
    """Hold the vCPU thread here, serving events, until `resume` (or a Stop)."""
    m = ctl.m
    ctl.paused = True
    t0 = time.monotonic()
    _log(m, "pause", source="control")
    flight.log(m, "pause", "control")
    for obs in m.write_observers:       # --record notes where (docs/replay.md)
        obs(m, "pause", None)
    stop = None
    try:
        while ctl.paused:
            # Requests already read (pipelined after `pause`) raise no new SIGIO.
            for c in list(ctl.conns.values()):
                if stop is None and b"\n" in c.inbuf:
                    stop = ctl._on_readable(c)
            if stop is not None or not ctl.paused:
                break
            _ready, stop = m.events.wait((), None)
            if stop is not None:
                break
    finally:
        ctl.paused = False
        ctl.paused_total += time.monotonic() - t0
    if stop is None:
        _log(m, "resume", source="control", paused=round(time.monotonic() - t0, 6))
        flight.log(m, "resume", "control")
        for obs in m.write_observers:
            obs(m, "resume", None)
    return stop


def optional_module(m, name):
    """The feature module the composition root (ukdbg/run.py) named for `name` in
    m.features, or None while it does not exist. By name: the tender never imports
    the debugger."""
    import sys
    full = m.features.get(name)
    if full is None:
        return None
    try:
        __import__(full)
    except ModuleNotFoundError as e:
        if e.name == full:
            return None
        raise
    return sys.modules[full]


def gdb_address(m):
    """Where the gdb stub listens, if it does."""
    return getattr(m, "gdb_address", None)


# --- commands: (reply, after) where after() runs once the reply is sent ---------------------
def _status(ctl, req):
    return status(ctl), None


def _pause(ctl, req):
    if ctl.paused:
        return {"ok": True, "state": "paused", "already": True}, None
    if state(ctl) != "running" and state(ctl) != "sleeping":
        return {"ok": False, "error": f"cannot pause: the guest is {state(ctl)}"}, None
    return {"ok": True, "state": "paused"}, lambda: hold(ctl)


def _resume(ctl, req):
    if not ctl.paused:
        return {"ok": False, "error": f"not paused (the guest is {state(ctl)})"}, None
    ctl.paused = False
    return {"ok": True, "state": "running"}, None


def _core(ctl, req):
    path = req.get("path")          # validated: None or an absolute path
    dumpcore = optional_module(ctl.m, "dumpcore")
    if dumpcore is None:
        return {"ok": False, "error": "live cores are not available in this ukdbg "
                "(ukdbg.tender.modules.dumpcore is missing)"}, None
    p = os.path.abspath(dumpcore.dump(ctl.m, None, path))
    ctl.cores.append(p)
    _log(ctl.m, "core", path=p, reason="control", live=True)
    return {"ok": True, "path": p}, None


def gdb_default_address() -> str:
    """Where the `gdb` request starts a stub by default (so `ukdbg attach` too): a unix
    socket (0600) in the private (0700) runtime directory, next to the control socket:
    only the monitor's owner can reach it (issue 9)."""
    return "unix:" + os.path.join(paths.ensure_runtime_dir(), f"{os.getpid()}.gdb")


def _gdb(ctl, req):
    m = ctl.m
    addr = gdb_address(m)
    if addr:
        return {"ok": True, "address": addr, "started": False}, None
    want = req.get("address") or gdb_default_address()
    if not isinstance(want, str):
        return {"ok": False, "error": "gdb: address must be a string"}, None
    gdb = optional_module(m, "gdb")
    if gdb is None:
        return {"ok": False, "error": "the gdb stub is not available in this ukdbg "
                "(ukdbg.debugger.gdb is missing)"}, None
    try:
        addr = gdb.start_server(m, want)
    except (OSError, ValueError) as e:
        return {"ok": False, "error": f"gdb: cannot listen on {want}: "
                f"{getattr(e, 'strerror', None) or e}"}, None
    if not getattr(m, "gdb_address", None):
        m.gdb_address = addr
    _log(m, "gdb-listen", address=addr, source="control")
    return {"ok": True, "address": addr, "started": True}, None


def _stop(ctl, req):
    from ...target import SIGTERM, Killed
    ctl.paused = False
    flight.log(ctl.m, "control", "stop")
    return {"ok": True, "state": "stopping"}, lambda: Killed(SIGTERM, "control")


def _selftest_execve(ctl, req):
    """Test hook (UKDBG_TEST_HOOKS=1 only): the monitor tries execve, which the sandbox
    must refuse with a report while the guest runs on (tests/kvm/test_sandbox.py)."""
    os.execv("/bin/true", ["true"])


COMMANDS = {"status": _status, "pause": _pause, "resume": _resume, "core": _core,
            "gdb": _gdb, "stop": _stop}
if os.environ.get("UKDBG_TEST_HOOKS") == "1":
    COMMANDS["selftest-execve"] = _selftest_execve
    FIELDS["selftest-execve"] = {}
