"""The control socket and the commands for people, end to end: real monitors running real
unikernels in the background, driven by the real `ukdbg` CLI (and gdb)."""

import json
import os
import re
import socket
import stat
import subprocess
import time

import pytest

from helpers import ukdbg

pytestmark = pytest.mark.kvm


def raw(sock_path, *lines, timeout=5.0):
    """Send request lines on one connection; return the reply lines (dicts)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(b"".join(ln + b"\n" for ln in lines))
    buf = b""
    while buf.count(b"\n") < len(lines):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return [json.loads(x) for x in buf.splitlines()]


def status(rt, pid):
    r = rt.cli("status", "--json", pid)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def time_lines(mon):
    return [int(x) for x in re.findall(r"^t=(\d+)$", mon.stdout(), re.M)]


# --- the socket --------------------------------------------------------------------------------
def test_socket_is_private_named_by_pid_and_removed_on_exit(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    d = os.stat(rt.sockets)
    assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == os.getuid()
    s = os.lstat(m.sock)
    assert stat.S_ISSOCK(s.st_mode)
    assert stat.S_IMODE(s.st_mode) == 0o600 and s.st_uid == os.getuid()
    assert os.path.basename(m.sock) == f"{m.pid}.sock"
    r = rt.cli("stop", m.pid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{m.pid}: stopped\n"
    assert m.wait() == 143                       # as for SIGTERM
    assert "stopped by a control request (ukdbg stop)" in m.stderr()
    assert not os.path.exists(m.sock)


def test_socket_removed_when_the_guest_ends_by_itself(app, rt, monitors):
    m = monitors("--mem=8", app("time"), "3")
    assert m.wait() == 0
    assert len(time_lines(m)) == 3
    assert os.listdir(rt.sockets) == []


def test_no_control_opens_no_socket(app, rt, monitors):
    m = monitors("--no-control", "--mem=8", app("loop"), wait_socket=False)
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    time.sleep(0.3)                             # well past the socket's opening delay
    assert not os.path.exists(m.sock)
    r = rt.cli("status", m.pid)
    assert r.returncode == 1
    assert f"pid {m.pid} is a ukdbg monitor without a control socket" in r.stderr
    assert "--no-control" in r.stderr


def test_unsafe_runtime_dir_disables_the_socket_not_the_guest(app, rt):
    os.mkdir(rt.sockets, 0o755)
    os.chmod(rt.sockets, 0o755)
    r = rt.cli("run", "--mem=8", app("time"), "2")
    assert r.returncode == 0, r.stderr
    assert "ukdbg: control socket disabled: " in r.stderr
    assert "has mode 0755, not 0700" in r.stderr
    assert os.listdir(rt.sockets) == []


# --- ps and status ----------------------------------------------------------------------------
def test_ps_lists_running_unikernels(app, rt, monitors):
    busy = monitors("--mem=8", app("loop"))
    sleepy = monitors("--mem=16", app("time"), "100000")
    sleepy.wait_for(lambda: len(time_lines(sleepy)) >= 2, "the guest's output")
    r = rt.cli("ps")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["PID", "APP", "STATE", "UPTIME", "MEM", "RSS", "GDB"]
    rows = {int(ln.split()[0]): ln.split() for ln in lines[1:]}
    assert set(rows) == {busy.pid, sleepy.pid}
    assert rows[busy.pid][1:3] == ["loop.hvt", "running"]
    assert rows[sleepy.pid][1:3] == ["time.hvt", "sleeping"]    # inside POLL
    assert rows[busy.pid][4] == "8MiB" and rows[sleepy.pid][4] == "16MiB"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", rows[busy.pid][3])
    assert rows[busy.pid][6] == "-"
    r = rt.cli("ps", "--json")
    js = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted(j["pid"] for j in js) == sorted([busy.pid, sleepy.pid])


def test_status_answers_while_the_guest_is_busy(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    a = status(rt, m.pid)
    time.sleep(0.2)
    t0 = time.monotonic()
    b = status(rt, m.pid)
    assert time.monotonic() - t0 < 5
    assert a["pid"] == b["pid"] == m.pid and b["ok"] is True and b["protocol"] == 1
    assert b["app"] == app("loop")
    assert b["argv"] == ["ukdbg", "run", "--mem=8", app("loop")]
    assert b["state"] == "running"
    assert b["uptime"] > a["uptime"] >= 0
    assert b["memory"]["size"] == 8 << 20
    assert 0 < b["memory"]["resident"] < 8 << 20
    # the guest did one WALLTIME and one PUTS, then spins: each request interrupts KVM_RUN
    assert b["hypercalls"]["walltime"] == 1 and b["hypercalls"]["puts"] == 1
    assert b["exits"]["io"] == 2
    assert b["exits"]["intr"] > a["exits"]["intr"] >= 1
    assert b["devices"] == [] and b["gdb"] is None
    assert b["console_bytes"] == len("looping\n")
    r = rt.cli("status", m.pid)
    assert r.returncode == 0
    assert r.stdout.startswith(f"pid {m.pid}: {app('loop')}\n  state       running\n")
    assert "  memory      8 MiB (8388608 bytes), " in r.stdout
    assert "  hypercalls  walltime 1, puts 1\n" in r.stdout


def test_pause_and_resume_show_in_the_guests_wall_clock(app, rt, monitors):
    m = monitors("--mem=8", app("time"), "100000")       # t=<walltime> every 100 ms
    m.wait_for(lambda: len(time_lines(m)) >= 3, "three lines of output")
    r = rt.cli("pause", m.pid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{m.pid}: paused\n"
    n = len(time_lines(m))
    assert status(rt, m.pid)["state"] == "paused"
    assert "already paused" in rt.cli("pause", m.pid).stdout
    time.sleep(1.2)
    assert len(time_lines(m)) == n                       # nothing ran while paused
    st = status(rt, m.pid)
    assert st["state"] == "paused"
    r = rt.cli("resume", m.pid)
    assert r.returncode == 0 and r.stdout == f"{m.pid}: running\n"
    m.wait_for(lambda: len(time_lines(m)) >= n + 3, "output after resume")
    ts = time_lines(m)
    gaps = [(b - a) / 1e9 for a, b in zip(ts, ts[1:])]
    assert gaps[n - 1] >= 1.2                            # the pause, seen by the guest
    assert all(g < 1.0 for i, g in enumerate(gaps) if i != n - 1), gaps
    st = status(rt, m.pid)
    assert st["state"] in ("running", "sleeping") and st["paused_seconds"] >= 1.2
    r = rt.cli("resume", m.pid)
    assert r.returncode == 1 and "not paused" in r.stderr


@pytest.mark.gdb
def test_dump_writes_a_live_core_that_gdb_reads(app, rt, monitors, tmp_path):
    m = monitors("--mem=8", app("loop"), cwd=str(tmp_path))
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    core = tmp_path / "live.core"
    r = rt.cli("dump", m.pid, "-o", core)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{core}\n"
    assert core.stat().st_size > 0
    g = subprocess.run(["gdb", "-batch", "-nx", "-ex", "bt", "-ex", "print spin_counter > 0",
                        app("loop"), str(core)], capture_output=True, text=True, timeout=60)
    assert re.search(r"#0 .*spin \(\) at .*loop\.c:11", g.stdout), g.stdout + g.stderr
    assert re.search(r"#1 .*main \(", g.stdout), g.stdout
    assert "$1 = 1" in g.stdout
    # the guest went on running; a second dump goes to the monitor's core directory
    st = status(rt, m.pid)
    assert st["state"] == "running" and st["cores"] == [str(core)]
    r = rt.cli("dump", m.pid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{tmp_path}/loop.{m.pid}.core\n"
    assert os.path.exists(r.stdout.strip())
    r = rt.cli("dump", m.pid, "-o", core)                # exists: refused, guest unharmed
    assert r.returncode == 1 and r.stderr.startswith(f"ukdbg: pid {m.pid}: ")
    assert status(rt, m.pid)["state"] == "running"


@pytest.mark.gdb
def test_attach_to_a_guest_started_without_gdb(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    r = rt.cli("attach", "--print", m.pid)
    assert r.returncode == 0, r.stderr
    # By default a unix socket in the private runtime directory, mode 0600 (issue 9).
    mt = re.fullmatch(r"gdb (\S+) -ex 'target remote (/\S+)'\n", r.stdout)
    assert mt, r.stdout
    assert mt.group(1) == app("loop")
    addr = mt.group(2)
    assert addr == os.path.join(rt.sockets, f"{m.pid}.gdb")
    st_ = os.lstat(addr)
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(rt.sockets).st_mode) == 0o700
    assert status(rt, m.pid)["gdb"] == f"unix:{addr}"
    assert rt.cli("attach", "--print", m.pid).stdout == r.stdout   # the same stub
    rows = rt.cli("ps").stdout.splitlines()[1:]
    assert rows[0].split()[6] == f"unix:{addr}"
    g = subprocess.run(["gdb", "-batch", "-nx", app("loop"), "-ex", f"target remote {addr}",
                        "-ex", "bt", "-ex", "print spin_counter > 0", "-ex", "detach"],
                       capture_output=True, text=True, timeout=60)
    assert re.search(r"#0 .*spin \(\) at .*loop\.c:11", g.stdout), g.stdout + g.stderr
    assert "$1 = 1" in g.stdout
    # after detach the guest runs on; `ukdbg attach` itself execs gdb (commands on stdin)
    assert status(rt, m.pid)["state"] == "running"
    assert os.path.exists(addr)
    r = rt.cli("attach", m.pid, input="bt\nprint spin_counter > 0\ndetach\nquit\n")
    assert r.returncode == 0, r.stderr
    assert re.search(r"#0 .*spin \(\) at .*loop\.c:11", r.stdout), r.stdout + r.stderr
    assert "$1 = 1" in r.stdout
    assert status(rt, m.pid)["state"] == "running"
    assert rt.cli("stop", m.pid).returncode == 0
    assert m.wait() == 143
    assert not os.path.exists(addr)                 # the monitor removes its socket


def test_attach_without_gdb_installed_is_a_clear_message(app, rt, monitors, tmp_path):
    m = monitors("--mem=8", app("loop"))
    r = ukdbg("attach", m.pid, env={"XDG_RUNTIME_DIR": rt.path, "PATH": str(tmp_path)})
    assert r.returncode == 1
    sock = os.path.join(rt.sockets, f"{m.pid}.gdb")
    assert r.stderr.startswith(f"ukdbg: gdb is not installed; the stub listens at unix:{sock}")
    assert f"gdb {app('loop')} -ex 'target remote {sock}'" in r.stderr
    assert status(rt, m.pid)["state"] == "running"


@pytest.mark.gdb
def test_status_while_gdb_holds_the_guest_and_stop_ends_the_session(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    addr = rt.cli("attach", "--print", m.pid).stdout.split("target remote ")[1].rstrip("'\n")
    # gdb connects (the guest stops) and then sits in a shell command for a while
    g = subprocess.Popen(["gdb", "-batch", "-nx", app("loop"), "-ex", f"target remote {addr}",
                          "-ex", "shell sleep 30"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        m.wait_for(lambda: status(rt, m.pid)["gdb_attached"], "gdb to attach")
        st = status(rt, m.pid)
        assert st["state"] == "gdb-stopped" and st["gdb"] == f"unix:{addr}"
        r = rt.cli("pause", m.pid)
        assert r.returncode == 1
        assert "cannot pause: the guest is gdb-stopped" in r.stderr
        r = rt.cli("stop", m.pid)
        assert r.returncode == 0, r.stderr
        assert m.wait() == 143
    finally:
        g.kill()
        g.wait()


def test_a_crashed_guest_held_for_gdb_shows_as_crashed(app, rt, monitors):
    m = monitors("--mem=8", "--no-core", "--gdb-on-crash", app("nullwrite"))
    m.wait_for(lambda: "frozen for gdb" in m.stderr(), "the guest to crash")
    st = status(rt, m.pid)
    assert st["state"] == "crashed"
    assert st["gdb"] and st["gdb"] in m.stderr()
    assert rt.cli("stop", m.pid).returncode == 0
    assert m.wait() == 255                  # the crash's own status, not the stop's


# --- clear messages -------------------------------------------------------------------------------
def test_dead_pid_and_stale_socket(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    m.kill()                                    # SIGKILL: no chance to remove the socket
    assert os.path.exists(m.sock)
    r = rt.cli("status", m.pid)
    assert r.returncode == 1
    assert r.stderr == (f"ukdbg: no unikernel with pid {m.pid}: its monitor is gone "
                        "(removed its stale control socket)\n")
    assert not os.path.exists(m.sock)
    r = rt.cli("status", m.pid)
    assert r.stderr == (f"ukdbg: no process with pid {m.pid} (ukdbg ps lists your "
                        "running unikernels)\n")
    # ps cleans up stale sockets as it goes
    m2 = monitors("--mem=8", app("loop"))
    live = monitors("--mem=8", app("loop"))
    m2.kill()
    r = rt.cli("ps")
    assert r.returncode == 0
    assert [int(ln.split()[0]) for ln in r.stdout.splitlines()[1:]] == [live.pid]
    assert f"removed 1 stale control socket(s) (pids {m2.pid})" in r.stderr
    assert not os.path.exists(m2.sock)
    r = rt.cli("status", os.getpid())
    assert r.returncode == 1 and "is not a ukdbg monitor" in r.stderr
    r = rt.cli("status", "12x")
    assert r.returncode == 2 and "'12x' is not a pid" in r.stderr


def test_protocol_errors_keep_the_guest_running(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    replies = raw(m.sock, b"not json", b'["status"]', b'{"cmd": "frobnicate"}',
                  b'{"cmd": "resume"}', b'{"cmd": "core", "path": "relative.core"}',
                  b'{"cmd": "status", "id": 42}')
    assert [r["ok"] for r in replies] == [False] * 5 + [True]
    assert replies[0]["error"].startswith("bad request (not JSON")
    assert "unknown command 'frobnicate'" in replies[2]["error"]
    assert "not paused" in replies[3]["error"]
    assert "absolute" in replies[4]["error"]
    assert replies[5]["id"] == 42 and replies[5]["state"] == "running"
    # a line that never ends is refused, not buffered without bound
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(m.sock)
    try:
        s.sendall(b"x" * (200 * 1024))
    except OSError:
        pass
    data = s.recv(4096)
    assert b"request line too long" in data
    s.close()
    assert status(rt, m.pid)["state"] == "running"


def test_pipelined_requests_and_pause_on_the_same_connection(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    replies = raw(m.sock, b'{"cmd": "pause"}', b'{"cmd": "status"}', b'{"cmd": "resume"}',
                  b'{"cmd": "status"}')
    assert [r.get("state") for r in replies] == ["paused", "paused", "running", "running"]


# --- other users ---------------------------------------------------------------------------------
NOBODY = 65534


def as_nobody(*cmd, env=None, caps=()):
    extra = []
    if caps:
        c = ",".join(f"+{x}" for x in caps)
        extra = [f"--inh-caps={c}", f"--ambient-caps={c}"]
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", *extra, *cmd], capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.root       # other users: tests/unit/test_control_protocol.py (uid check)
def test_other_users_unikernels_are_not_visible_or_reachable(app, rt, monitors, request):
    import sys
    mine = monitors("--mem=8", app("loop"))
    env = dict(os.environ)
    env.pop("XDG_RUNTIME_DIR", None)
    import pathlib
    import shutil
    import tempfile
    nobody_rt = pathlib.Path(tempfile.mkdtemp(prefix="uknb"))   # /tmp: they can reach it
    request.addfinalizer(lambda: shutil.rmtree(nobody_rt, ignore_errors=True))
    os.chown(nobody_rt, NOBODY, NOBODY)
    env["XDG_RUNTIME_DIR"] = str(nobody_rt)
    py = [sys.executable, "-m", "ukdbg"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root
    # 1. the other user lists nothing and cannot reach my unikernel
    r = as_nobody(*py, "ps", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == []
    r = as_nobody(*py, "status", str(mine.pid), env=env)
    assert r.returncode == 1
    assert r.stderr == (f"ukdbg: pid {mine.pid} belongs to another user (uid 0); ukdbg "
                        "only sees and controls your own unikernels\n")
    # 2. even past the directory's permissions (CAP_DAC_OVERRIDE), my monitor refuses
    # The monitor may refuse (and close) before the request is sent: EPIPE then, and
    # the refusal is still there to read.
    probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
             "try: s.sendall(b'{\"cmd\": \"stop\"}\\n')\n"
             "except BrokenPipeError: pass\n"
             "print(s.recv(4096).decode())")
    r = as_nobody(sys.executable, "-c", probe, mine.sock, env=env, caps=("dac_override",))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": False, "error": f"permission denied: uid {NOBODY} "
                                    "may not control this unikernel"}
    assert status(rt, mine.pid)["state"] == "running"
    assert (f"ukdbg: control socket: refused a connection from uid {NOBODY} (only uid 0 "
            "may control this unikernel)\n") in mine.stderr()
    # 3. and I do not see theirs: a socket in their runtime directory, served by them
    serve = ("import os,socket,sys,time; d=os.path.join(sys.argv[1],'ukdbg');"
             "os.mkdir(d,0o700); s=socket.socket(socket.AF_UNIX);"
             "s.bind(os.path.join(d,f'{os.getpid()}.sock')); s.listen(); print(os.getpid(),"
             "flush=True); time.sleep(60)")
    theirs = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                               "--clear-groups", sys.executable, "-c", serve, str(nobody_rt)],
                              stdout=subprocess.PIPE, text=True)
    try:
        their_pid = int(theirs.stdout.readline())
        assert os.path.exists(nobody_rt / "ukdbg" / f"{their_pid}.sock")
        r = rt.cli("ps")
        assert [int(ln.split()[0]) for ln in r.stdout.splitlines()[1:]] == [mine.pid]
        r = rt.cli("status", their_pid)
        assert r.returncode == 1
        assert f"pid {their_pid} belongs to another user (uid {NOBODY})" in r.stderr
    finally:
        theirs.kill()
        theirs.wait()


def test_a_monitor_that_cannot_tell_uids_apart_opens_no_socket(app, rt):
    """In a user namespace that does not map its uid, every other user would look like
    the owner to SO_PEERCRED: the socket stays closed and the guest runs."""
    import sys
    if subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode:
        pytest.skip("unshare -U is not permitted here")
    env = dict(os.environ, XDG_RUNTIME_DIR=rt.path)
    r = subprocess.run(["unshare", "-U", sys.executable, "-m", "ukdbg", "run", "--mem=8",
                        app("time"), "2"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(time_lines_of(r.stdout)) == 2
    assert re.search(r"^ukdbg: control socket disabled: uid \d+ is not mapped in this user "
                     r"namespace, so the monitor could not tell its owner from other "
                     r"users$", r.stderr, re.M), r.stderr
    assert not os.path.exists(rt.sockets) or os.listdir(rt.sockets) == []


def time_lines_of(text):
    return re.findall(r"^t=(\d+)$", text, re.M)


# --- --log and --console --------------------------------------------------------------------------
def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_log_and_console_files(app, rt, tmp_path):
    log = tmp_path / "events.log"
    con = tmp_path / "console.txt"
    r = rt.cli("run", "--mem=8", "--log", log, "--console", con, app("echo"), "a", "b")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "a b\nSolo5: solo5_exit(0) called\n"
    assert con.read_text() == r.stdout                   # as well as on stdout
    ev = read_log(log)
    assert [e["event"] for e in ev] == ["start", "exit"]
    s, x = ev
    assert s["argv"] == ["ukdbg", "run", "--mem=8", "--log", str(log), "--console", str(con),
                         app("echo"), "a", "b"]
    assert s["app"] == app("echo") and s["mem"] == 8 << 20 and s["devices"] == []
    assert s["cmdline"] == "a b" and isinstance(s["pid"], int)
    assert x["reason"] == "exited" and x["status"] == 0 and x["guest_status"] == 0
    assert x["time"] >= s["time"]
    # a second run appends
    r = rt.cli("run", "--mem=8", "--log", log, "--console", con, app("exit"), "7")
    assert r.returncode == 7
    ev = read_log(log)
    assert [e["event"] for e in ev] == ["start", "exit", "start", "exit"]
    assert ev[3]["status"] == 7 and ev[3]["guest_status"] == 7
    assert con.read_text().endswith("Solo5: solo5_exit(7) called\n")


@pytest.mark.gdb
def test_log_records_control_events(app, rt, monitors, tmp_path):
    log = tmp_path / "events.log"
    m = monitors("--mem=8", "--log", log, app("loop"), cwd=str(tmp_path))
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    assert rt.cli("pause", m.pid).returncode == 0
    assert rt.cli("resume", m.pid).returncode == 0
    core = rt.cli("dump", m.pid).stdout.strip()
    addr = re.search(r"target remote (\S+)'", rt.cli("attach", "--print", m.pid).stdout).group(1)
    g = subprocess.run(["gdb", "-batch", "-nx", app("loop"), "-ex", f"target remote {addr}",
                        "-ex", "detach"], capture_output=True, text=True, timeout=60)
    assert g.returncode == 0, g.stderr
    assert rt.cli("stop", m.pid).returncode == 0
    assert m.wait() == 143
    ev = read_log(log)
    kinds = [e["event"] for e in ev]
    assert kinds[0] == "start" and kinds[-1] == "exit"
    assert {"pause", "resume", "core", "gdb-listen", "gdb-attach", "gdb-detach"} <= set(kinds)
    assert kinds.index("pause") < kinds.index("resume") < kinds.index("core") < \
        kinds.index("gdb-listen") < kinds.index("gdb-attach") < kinds.index("gdb-detach")
    assert [e for e in ev if e["event"] == "core"][0]["path"] == core
    assert [e for e in ev if e["event"] == "gdb-listen"][0]["address"] == f"unix:{addr}"
    assert ev[-1]["reason"] == "stopped" and ev[-1]["status"] == 143
    assert ev[-1]["signal"] == "SIGTERM"
    assert all(e["pid"] == m.pid for e in ev)


def test_log_and_console_errors_are_one_line(app, rt, tmp_path):
    r = rt.cli("run", "--log", tmp_path / "no" / "such" / "dir.log", app("hello"))
    assert r.returncode == 1
    assert r.stderr.startswith("ukdbg: --log ") and r.stderr.count("\n") == 1
    r = rt.cli("run", "--console", tmp_path, app("hello"))
    assert r.returncode == 1
    assert "--console" in r.stderr and "Is a directory" in r.stderr
