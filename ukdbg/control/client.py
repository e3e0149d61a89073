"""ukdbg/control/client.py: `ukdbg ps|status|pause|resume|stop|dump|attach`, for people.

Each command talks to running monitors through their control sockets (paths.py, the
protocol in docs/control.md): one JSON request line, one JSON reply line. Only the
caller's own runtime directory is searched, so other users' unikernels are neither
listed nor reachable. `ps` must stay quick on a loaded host: it asks every monitor at
once and imports little (_socket, not socket.py; argparse and shlex only where needed).
"""

import _socket
import os
import select
import struct
import sys
import time

from ..errors import UkdbgError, UsageError
from . import paths
from .wire import dumps, loads  # noqa: F401 (loads: also the tests' reply parser)

TIMEOUT = 5.0              # seconds to wait for a monitor's reply
CORE_TIMEOUT = 300.0       # a core of a large guest takes a while


class ControlError(UkdbgError):
    """A monitor cannot be reached or refused a request."""


# --- finding and reaching a monitor ---------------------------------------------------------
def _proc_uid(pid: int):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _proc_is_monitor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    joined = b" ".join(argv)
    return b"ukdbg" in joined and b"run" in argv


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def _remove_stale(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def explain_missing(pid: int) -> str:
    """Why there is no control socket for pid, in one line."""
    uid = _proc_uid(pid)
    if uid is None:
        return f"no process with pid {pid} (ukdbg ps lists your running unikernels)"
    if uid != os.getuid():
        return (f"pid {pid} belongs to another user (uid {uid}); ukdbg only sees and "
                "controls your own unikernels")
    if _proc_is_monitor(pid):
        return (f"pid {pid} is a ukdbg monitor without a control socket in "
                f"{paths.runtime_dir()} (started with --no-control, or with another "
                "XDG_RUNTIME_DIR)")
    return f"pid {pid} is not a ukdbg monitor (ukdbg ps lists your running unikernels)"


def _peer_check(s, pid: int) -> None:
    peer_pid, uid, _gid = struct.unpack("3i", s.getsockopt(_socket.SOL_SOCKET,
                                                           _socket.SO_PEERCRED, 12))
    if uid != os.getuid() or peer_pid != pid:
        raise ControlError(f"the control socket of pid {pid} is served by pid {peer_pid} "
                           f"(uid {uid}); refusing to talk to it")


def connect(pid: int, timeout: float = TIMEOUT):
    """A connected socket to pid's monitor, or a ControlError saying why not."""
    path = paths.socket_path(pid)
    if not os.path.exists(path):
        raise ControlError(explain_missing(pid))
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                s.connect(path)
                break
            except BlockingIOError:
                # Its backlog is full (a flood of connections): a blocking connect
                # would wait for room; a socket with a timeout gets EAGAIN instead.
                if time.monotonic() >= deadline:
                    raise TimeoutError from None
                time.sleep(0.005)
    except (ConnectionRefusedError, FileNotFoundError):
        s.close()
        gone = not paths.pid_alive(pid) or _zombie_or_gone(pid)
        if gone or not _proc_is_monitor(pid):
            _remove_stale(path)
            raise ControlError(f"no unikernel with pid {pid}: its monitor is gone (removed "
                               "its stale control socket)") from None
        raise ControlError(f"pid {pid} does not accept control connections") from None
    except PermissionError:
        s.close()
        raise ControlError(f"permission denied on {path}") from None
    except TimeoutError:
        s.close()
        raise ControlError(f"pid {pid} did not accept the connection in {timeout:g} s") \
            from None
    except OSError as e:
        s.close()
        raise ControlError(f"cannot connect to pid {pid}: {e.strerror or e}") from None
    _peer_check(s, pid)
    return s


def _read_line(s, pid, timeout):
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ControlError(f"pid {pid} did not answer within {timeout:g} s")
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise ControlError(f"pid {pid} did not answer within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"pid {pid}: connection lost: {e.strerror}") from None
        if not chunk:
            raise ControlError(f"pid {pid} closed the connection without an answer "
                               "(its guest just ended?)")
        buf += chunk
    return bytes(buf[:buf.index(b"\n")])


def request(pid: int, cmd: str, timeout: float = TIMEOUT, keep=False, **fields):
    """Send one request, return the reply dict (ok true) or raise ControlError.
    keep=True returns (reply, socket) with the connection still open."""
    s = connect(pid, timeout)
    try:
        req = {"cmd": cmd}
        req.update(fields)
        s.sendall(dumps(req).encode() + b"\n")
        try:
            reply = loads(_read_line(s, pid, timeout))
        except ValueError as e:
            raise ControlError(f"pid {pid}: unreadable reply ({e})") from None
    except BaseException:
        s.close()
        raise
    if not reply.get("ok"):
        s.close()
        raise ControlError(f"pid {pid}: {reply.get('error', 'request failed')}")
    if keep:
        return reply, s
    s.close()
    return reply


def status_all(timeout: float = 2.0):
    """Ask every monitor of ours at once. Returns (statuses, stale, silent pids)."""
    out, stale, silent = [], [], []
    pending = {}              # fd -> [pid, socket, buffer]
    for pid, path in paths.list_sockets():
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        s.setblocking(False)
        try:
            s.connect(path)
            _peer_check(s, pid)
            s.send(b'{"cmd": "status"}\n')
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if not paths.pid_alive(pid) or _zombie_or_gone(pid) \
                    or not _proc_is_monitor(pid):
                if _remove_stale(path):
                    stale.append(pid)
            continue
        except (OSError, ControlError):
            s.close()
            silent.append(pid)
            continue
        pending[s.fileno()] = [pid, s, bytearray()]
    deadline = time.monotonic() + timeout
    p = select.poll()
    for fd in pending:
        p.register(fd, select.POLLIN)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _ev in p.poll(left * 1000):
            pid, s, buf = pending[fd]
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            buf += chunk
            if b"\n" in buf or not chunk:
                p.unregister(fd)
                del pending[fd]
                s.close()
                try:
                    reply = loads(bytes(buf[:buf.index(b"\n")]))
                except ValueError:
                    reply = None
                if reply and reply.get("ok"):
                    out.append(reply)
                elif chunk:
                    silent.append(pid)
    for pid, s, _ in pending.values():
        s.close()
        silent.append(pid)
    out.sort(key=lambda r: r["pid"])
    return out, stale, sorted(silent)


# --- rendering ------------------------------------------------------------------------------------
def human_bytes(n, sep=" ") -> str:
    from ..units import size
    return size(n, sep)


def human_duration(s) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    mi, s = divmod(s, 60)
    return (f"{d}-" if d else "") + f"{h:02d}:{mi:02d}:{s:02d}"


def ps_table(statuses) -> str:
    """The `ukdbg ps` table, by hand: with rich's Table, importing the client and drawing
    20 rows took 339 ms (min 206) against 59 ms (min 39), 12 runs interleaved on this
    loaded host: over ps's 200 ms budget (tests/e2e/test_control_load.py).
    One token a cell (8MiB) so that `awk '{print $5}'` works."""
    rows = [("PID", "APP", "STATE", "UPTIME", "MEM", "RSS", "GDB")]
    for r in statuses:
        rows.append((str(r["pid"]), os.path.basename(r["app"]), r["state"],
                     human_duration(r["uptime"]), human_bytes(r["memory"]["size"], ""),
                     human_bytes(r["memory"]["resident"], ""), r.get("gdb") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {0, 3, 4, 5}
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def render_status(r) -> str:
    import shlex
    out = [f"pid {r['pid']}: {r['app']}",
           f"  state       {r['state']}" + (f" (paused {r['paused_seconds']:.3f} s in all)"
                                             if r.get("paused_seconds") else ""),
           f"  uptime      {human_duration(r['uptime'])} ({r['uptime']:.3f} s)",
           f"  command     {shlex.join(r['argv'])}",
           f"  memory      {human_bytes(r['memory']['size'])} "
           f"({r['memory']['size']} bytes), "
           f"{human_bytes(r['memory']['resident'])} resident",
           f"  console     {r.get('console_bytes', 0)} bytes written",
           f"  gdb         {r.get('gdb') or 'not listening (ukdbg attach starts it)'}"]
    devs = r.get("devices") or []
    out.append("  devices     " + ("none" if not devs else ""))
    for d in devs:
        out.append(f"    {d['name']:<12} {d['type']:<6} {d.get('backend') or '-':<24} "
                   f"read {d['bytes_read']} B, written {d['bytes_written']} B")
    out.append("  vm exits    " + ", ".join(f"{k} {v}" for k, v in r["exits"].items()))
    out.append("  hypercalls  " + (", ".join(f"{k} {v}" for k, v in r["hypercalls"].items() if v)
                                    or "none"))
    for c in r.get("cores") or []:
        out.append(f"  core        {c}")
    return "\n".join(out) + "\n"


# --- commands -----------------------------------------------------------------------------------
def _parser(cmd, description):
    """An argparse parser whose errors are UsageErrors (argparse is imported only by
    the commands that need it)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UsageError(f"{self.prog}: {message}", f"{self.prog} --help")
    return Parser(prog=f"ukdbg {cmd}", description=description)


def _pid_arg(p):
    p.add_argument("pid", type=_pid, help="the monitor's pid (ukdbg ps)")


def _pid(text):
    if not text.isdigit() or int(text) <= 0:
        import argparse
        raise argparse.ArgumentTypeError(f"'{text}' is not a pid")
    return int(text)


PS_USAGE = """usage: ukdbg ps [--json]

List your running unikernels (pid, app, state, uptime, memory, resident memory, gdb).

options:
  --json      one JSON status object per line (the `status` reply, docs/control.md)
  -h, --help  this help
"""


def ps_main(argv) -> int:
    # Hand-parsed: argparse would triple the time `ps` takes on a loaded host.
    as_json = False
    for a in argv:
        if a in ("-h", "--help"):
            sys.stdout.write(PS_USAGE)
            return 0
        if a != "--json":
            raise UsageError(f"ukdbg ps: unknown argument '{a}'", "ukdbg ps --help")
        as_json = True
    statuses, stale, silent = status_all()
    if as_json:
        import json
        for r in statuses:
            sys.stdout.write(json.dumps(r) + "\n")
    else:
        sys.stdout.write(ps_table(statuses))
    for pid in silent:
        sys.stderr.write(f"ukdbg: pid {pid} did not answer\n")
    if stale:
        sys.stderr.write(f"ukdbg: removed {len(stale)} stale control socket(s) "
                         f"(pids {', '.join(map(str, stale))})\n")
    return 0


def status_main(argv) -> int:
    p = _parser("status", "Show what a running unikernel is doing.")
    _pid_arg(p)
    p.add_argument("--json", action="store_true", help="the raw status reply")
    a = p.parse_args(argv)
    r = request(a.pid, "status")
    import json
    sys.stdout.write(json.dumps(r, indent=2) + "\n" if a.json else render_status(r))
    return 0


def pause_main(argv) -> int:
    p = _parser("pause", "Pause a running unikernel (its vCPU stops between two exits).")
    _pid_arg(p)
    a = p.parse_args(argv)
    r = request(a.pid, "pause")
    print(f"{a.pid}: {'already ' if r.get('already') else ''}paused")
    return 0


def resume_main(argv) -> int:
    p = _parser("resume", "Resume a paused unikernel.")
    _pid_arg(p)
    a = p.parse_args(argv)
    request(a.pid, "resume")
    print(f"{a.pid}: running")
    return 0


def stop_main(argv) -> int:
    p = _parser("stop", "End a running unikernel (its monitor exits 143, as on SIGTERM).")
    _pid_arg(p)
    p.add_argument("--no-wait", action="store_true", help="do not wait for it to end")
    a = p.parse_args(argv)
    _reply, s = request(a.pid, "stop", keep=True)
    if not a.no_wait:
        # The monitor closes its control connections as it ends.
        s.settimeout(10.0)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
        deadline = time.monotonic() + 10.0
        while not _zombie_or_gone(a.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
    s.close()
    print(f"{a.pid}: stopped")
    return 0


def dump_main(argv) -> int:
    p = _parser("dump", "Write a core of a running unikernel; the guest goes on running.")
    _pid_arg(p)
    p.add_argument("-o", "--output", metavar="FILE", help="where (default: the monitor "
                   "picks, in its core directory)")
    a = p.parse_args(argv)
    fields = {}
    if a.output:
        fields["path"] = os.path.abspath(a.output)
    r = request(a.pid, "core", timeout=CORE_TIMEOUT, **fields)
    print(r["path"])
    return 0


def gdb_command(app: str, address: str) -> list:
    target = address[len("unix:"):] if address.startswith("unix:") else address
    return ["gdb", app, "-ex", f"target remote {target}"]


def attach_main(argv) -> int:
    p = _parser("attach", "Attach gdb to a running unikernel (starting its gdb stub).")
    _pid_arg(p)
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="print the gdb command instead of running it")
    p.add_argument("--address", default=None,
                   help="where the stub listens if it must be started (default: a unix "
                        "socket in your private runtime directory; a TCP stub takes "
                        "loopback connections from your uid only)")
    a = p.parse_args(argv)
    st = request(a.pid, "status")
    addr = st.get("gdb")
    if not addr:
        kw = {"address": a.address} if a.address else {}
        addr = request(a.pid, "gdb", **kw)["address"]
    cmd = gdb_command(st["app"], addr)
    import errno
    import shlex
    if a.print_only:
        print(shlex.join(cmd))
        return 0
    sys.stdout.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise ControlError("gdb is not installed; the stub listens at "
                               f"{addr}: {shlex.join(cmd)}") from None
        raise ControlError(f"cannot run gdb: {e.strerror}") from None
    return 0
