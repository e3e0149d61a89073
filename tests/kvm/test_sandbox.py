"""Issue 9, the anchor practice: `ukdbg run` confines itself with a seccomp allowlist
after set-up (ukdbg/sandbox.py, docs/security.md), in every mode, and a refused syscall
is reported by name with its Python stack while the guest runs on."""

import json
import os
import re
import socket
import subprocess
import time

import pytest

from helpers import gdb_path, ukdbg
from running import RuntimeDir

from ukdbg import sandbox, sandbox_policy

pytestmark = pytest.mark.kvm


def seccomp_mode(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^Seccomp:\s+(\d)", f.read(), re.M).group(1))


def request(sock, obj, timeout=10.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    s.sendall(json.dumps(obj).encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def running(m, rt):
    r = rt.cli("status", "--json", m.pid)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["state"] in ("running", "sleeping")


def test_plain_run_is_confined_and_still_served(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    assert seccomp_mode(m.pid) == 2
    assert running(m, rt)                                   # control socket, json import
    r = rt.cli("pause", m.pid)
    assert r.returncode == 0, r.stderr
    assert rt.cli("resume", m.pid).returncode == 0
    assert seccomp_mode(m.pid) == 2
    assert "sandbox refused" not in m.stderr(), m.stderr()


def test_no_sandbox_is_not_confined(app, rt, monitors):
    m = monitors("--mem=8", "--no-sandbox", app("loop"))
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    assert seccomp_mode(m.pid) == 0


def test_live_dump_under_the_filter(app, rt, monitors, tmp_path):
    m = monitors("--mem=64", "--core-dir", tmp_path, app("fill"), "32")
    m.wait_for(lambda: "filled" in m.stdout(), "the guest's output")
    r = rt.cli("dump", m.pid, timeout=60)
    assert r.returncode == 0, r.stderr
    core = r.stdout.strip()
    assert os.path.getsize(core) > 0
    assert seccomp_mode(m.pid) == 2 and running(m, rt)
    r = rt.cli("dump", m.pid, "-o", tmp_path / "explicit.core")
    assert r.returncode == 0, r.stderr
    from ukdbg.coredump.reader import CoreFile
    with CoreFile.open(str(tmp_path / "explicit.core")) as c:
        assert c.read_registers().rip >= 0x100000
    assert "sandbox refused" not in m.stderr(), m.stderr()


def test_crash_core_report_trace_log_under_the_filter(app, tmp_path):
    log = tmp_path / "log.jsonl"
    r = ukdbg("run", "--mem=8", "--core-dir", tmp_path, "--trace", "--trace-summary",
              "--log", log, app("nullwrite"))
    assert r.returncode == 255, r.stderr
    assert "sandbox refused" not in r.stderr, r.stderr
    assert "% time" in r.stderr                            # the summary
    assert re.search(r"core: .*nullwrite\.\d+\.core", r.stderr), r.stderr
    assert "guest trapped" in r.stderr
    events = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "core", "exit"], events
    assert os.path.exists(events[1]["path"])
    assert events[-1]["reason"] == "crashed" and events[-1]["status"] == 255


@pytest.mark.gdb
def test_gdb_session_under_the_filter(app, rt, monitors, tmp_path):
    import socket as s_
    with s_.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m = monitors("--mem=8", "--gdb", f"127.0.0.1:{port}", "--gdb-wait", app("loop"),
                 wait_socket=False)
    m.wait_for(lambda: f"127.0.0.1:{port}" in m.stderr(), "the stub's address")
    # confined while it waits for gdb (the filter follows the stub's set-up at once)
    m.wait_for(lambda: seccomp_mode(m.pid) == 2, "the filter", timeout=5)
    core = tmp_path / "g.core"
    g = subprocess.run([gdb_path(), "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{port}",
                        "-ex", "break spin", "-ex", "continue", "-ex", "stepi",
                        "-ex", "print spin_counter >= 0", "-ex", f"monitor core {core}",
                        "-ex", "detach", app("loop")],
                       capture_output=True, text=True, timeout=60)
    assert "Breakpoint 1, " in g.stdout, g.stdout + g.stderr
    assert "$1 = 1" in g.stdout, g.stdout + g.stderr
    assert core.exists()
    assert seccomp_mode(m.pid) == 2
    assert "sandbox refused" not in m.stderr(), m.stderr()


@pytest.mark.gdb
def test_attach_under_the_filter(app, rt, monitors):
    m = monitors("--mem=8", app("loop"))
    m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
    r = rt.cli("attach", "--print", m.pid)
    assert r.returncode == 0, r.stderr
    addr = re.search(r"target remote (\S+)'", r.stdout).group(1)
    g = subprocess.run([gdb_path(), "-batch", "-nx", "-ex", f"target remote {addr}",
                        "-ex", "bt 1", "-ex", "detach", app("loop")],
                       capture_output=True, text=True, timeout=60)
    assert re.search(r"#0 .*spin", g.stdout), g.stdout + g.stderr
    assert seccomp_mode(m.pid) == 2 and running(m, rt)
    assert "sandbox refused" not in m.stderr(), m.stderr()


def test_refused_syscall_is_reported_and_the_guest_runs_on(app, rt, tmp_path):
    log = tmp_path / "log.jsonl"
    env_rt = RuntimeDir()
    try:
        from helpers import Background
        b = Background(["run", "--mem=8", "--log", str(log), app("time"), "100000"],
                       env={"XDG_RUNTIME_DIR": env_rt.path, "UKDBG_TEST_HOOKS": "1"})
        try:
            sock = os.path.join(env_rt.sockets, f"{b.pid}.sock")
            b.wait_for(lambda: os.path.exists(sock), "the control socket")

            def answers():
                try:
                    return request(sock, {"cmd": "status"})["ok"]
                except OSError:            # bound but not yet listening
                    return False
            b.wait_for(answers, "the control socket to answer")
            b.wait_for(lambda: "t=" in b.stdout(), "the guest's output")
            reply = request(sock, {"cmd": "selftest-execve"})
            assert reply == {"ok": False, "error": "refused by the sandbox: execve"}, reply
            err = b.stderr()
            assert "ukdbg: sandbox refused execve (in control request selftest-execve); " \
                   "the guest runs on" in err, err
            assert "Python stack of the refused call" in err
            assert "_selftest_execve" in err and "os.execv" in err, err
            # the same process, still confined, the guest still running and printing
            assert open(f"/proc/{b.pid}/cmdline", "rb").read().count(b"ukdbg") >= 1
            assert seccomp_mode(b.pid) == 2
            n = b.stdout().count("t=")
            b.wait_for(lambda: b.stdout().count("t=") > n + 2, "more guest output")
            assert request(sock, {"cmd": "status"})["ok"] is True
            events = [json.loads(ln) for ln in log.read_text().splitlines()]
            ev = [e for e in events if e.get("event") == "sandbox"]
            assert ev and ev[0]["syscall"] == "execve" and "_selftest_execve" in ev[0]["stack"]
        finally:
            b.close()
    finally:
        env_rt.cleanup()


def test_policy_names_real_syscalls_and_refusals_map_back():
    f, names = sandbox_policy.build_filter()
    rev = {v: k for k, v in names.items()}
    for name in sandbox_policy.allowed_names():
        assert name in rev, f"{name} is not a syscall here"
    for bad in ("execve", "execveat", "fork", "vfork", "clone", "clone3", "ptrace",
                "connect", "mount", "kill", "setuid", "rename", "chown", "bpf",
                "process_vm_writev", "init_module", "open", "openat2"):
        assert bad not in sandbox_policy.allowed_names(), bad
    e = OSError(sandbox.BASE + rev["execve"], "x")
    sandbox._state["path"] = None
    sandbox._NAMES = names
    assert sandbox.refused(e) == "execve"
    assert sandbox.refused(OSError(2, "x")) == ""


def test_docs_list_exactly_the_policy():
    """docs/security.md's allowlist table is the policy, syscall for syscall."""
    from helpers import ROOT
    text = open(os.path.join(ROOT, "docs", "security.md")).read()
    table = text.split("### The allowlist", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.M)
    assert documented == sandbox_policy.allowed_names()
    assert f"### The allowlist ({len(sandbox_policy.POLICY)} syscalls)" in text
