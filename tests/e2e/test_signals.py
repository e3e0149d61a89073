"""Signals and exit codes like a process: the monitor ends its guest and exits 128+N on
SIGINT/SIGTERM/SIGHUP, writes a core on SIGQUIT, and --timeout ends a guest that runs
too long with a core and status 124."""

import json
import os
import re
import signal
import subprocess

import pytest

from helpers import ukdbg
from running import Monitor

pytestmark = pytest.mark.kvm


def _started(m):
    """The guest runs and the monitor's signal set-up is done (its socket exists)."""
    m.wait_for(lambda: m.stdout(), "the guest's first output")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                      (signal.SIGHUP, 129)])
@pytest.mark.parametrize("guest", ["busy", "sleeping"])
def test_signal_ends_the_guest_with_128_plus_n(app, rt, tmp_path, sig, code, guest):
    args = [app("loop")] if guest == "busy" else [app("time"), "100000"]
    m = Monitor(rt, "--mem=8", *args, cwd=str(tmp_path))
    try:
        _started(m)
        m.proc.send_signal(sig)
        assert m.wait() == code
        name = signal.Signals(sig).name
        assert m.stderr().endswith(f"ukdbg: {os.path.basename(args[0])}: received {name}, "
                                   "guest stopped\n")
        assert not any(p.name.endswith(".core") for p in tmp_path.iterdir())
        assert not os.path.exists(m.sock)
    finally:
        m.close()


@pytest.mark.gdb
def test_sigquit_writes_a_core_then_exits_131(app, rt, tmp_path):
    m = Monitor(rt, "--mem=8", app("loop"), cwd=str(tmp_path))
    try:
        _started(m)
        m.proc.send_signal(signal.SIGQUIT)
        assert m.wait() == 131
        core = tmp_path / f"loop.{m.pid}.core"
        assert core.exists(), (m.stderr(), os.listdir(tmp_path))
        assert "received SIGQUIT" in m.stderr()
        assert f"core written to loop.{m.pid}.core" in m.stderr()
        g = subprocess.run(["gdb", "-batch", "-nx", "-ex", "bt", app("loop"), str(core)],
                           capture_output=True, text=True, timeout=60)
        assert re.search(r"#0 .*spin \(\) at .*loop\.c:11", g.stdout), g.stdout + g.stderr
        assert "Program terminated with signal SIGQUIT" in g.stdout
    finally:
        m.close()


def test_sigquit_with_no_core(app, rt, tmp_path):
    m = Monitor(rt, "--mem=8", "--no-core", app("loop"), cwd=str(tmp_path))
    try:
        _started(m)
        m.proc.send_signal(signal.SIGQUIT)
        assert m.wait() == 131
        assert list(tmp_path.iterdir()) == []
    finally:
        m.close()


@pytest.mark.parametrize("guest", ["busy", "sleeping"])
def test_timeout_ends_the_guest_with_a_core_and_124(app, tmp_path, guest):
    args = [app("loop")] if guest == "busy" else [app("time"), "100000"]
    log = tmp_path / "log.jsonl"
    r = ukdbg("run", "--mem=8", "--timeout", "0.5", "--log", log, *args, cwd=tmp_path)
    assert r.returncode == 124, r.stderr
    assert "--timeout expired, guest stopped" in r.stderr
    cores = [p for p in tmp_path.iterdir() if p.name.endswith(".core")]
    assert len(cores) == 1, r.stderr
    assert f"core written to {cores[0].name}" in r.stderr
    ev = [json.loads(x) for x in log.read_text().splitlines()]
    assert [e["event"] for e in ev] == ["start", "core", "exit"]
    assert ev[2]["reason"] == "timeout" and ev[2]["status"] == 124
    assert 0.45 <= ev[2]["uptime"] < 5          # the timer starts at set-up, a moment before the guest
    if guest == "sleeping":
        assert 3 <= len(re.findall(r"^t=\d+$", r.stdout, re.M)) <= 7


def test_timeout_not_reached_leaves_the_guests_status(app, tmp_path):
    r = ukdbg("run", "--mem=8", "--timeout", "30", app("exit"), "7", cwd=tmp_path)
    assert r.returncode == 7
    r = ukdbg("run", "--mem=8", "--timeout", "0.3", "--no-core", app("loop"), cwd=tmp_path)
    assert r.returncode == 124
    assert list(tmp_path.iterdir()) == []


def test_bad_timeout_is_a_usage_error(app):
    for bad in ("0", "-1", "soon"):
        r = ukdbg("run", "--timeout", bad, app("hello"))
        assert r.returncode == 2
        assert r.stderr == f"ukdbg: --timeout {bad}: expected a positive number of seconds\n"


def test_exit_codes_are_documented(app):
    r = ukdbg("run", "--help")
    assert r.returncode == 0
    for needle in ("124       --timeout expired", "SIGINT 130", "SIGTERM 143", "SIGHUP 129",
                   "SIGQUIT 131"):
        assert needle in r.stdout
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs",
                            "control.md")).read()
    for needle in ("| 124 |", "| 130 |", "| 143 |", "| 129 |", "| 131 |"):
        assert needle in doc


def test_log_records_a_signal_ending(app, rt, tmp_path):
    log = tmp_path / "log.jsonl"
    m = Monitor(rt, "--mem=8", "--log", log, app("loop"), cwd=str(tmp_path))
    try:
        _started(m)
        m.proc.send_signal(signal.SIGTERM)
        assert m.wait() == 143
        ev = [json.loads(x) for x in log.read_text().splitlines()]
        assert ev[-1]["event"] == "exit"
        assert ev[-1]["reason"] == "signal" and ev[-1]["signal"] == "SIGTERM"
        assert ev[-1]["status"] == 143
    finally:
        m.close()


@pytest.mark.parametrize("sig", ["USR2", "ALRM"])
def test_core_on_signal_keeps_the_guest_and_the_control_socket(app, rt, tmp_path, sig):
    """--core-on SIG writes a live core (logged); with ALRM, which the control socket's
    opening timer would otherwise use, the socket still opens and ALRM still dumps."""
    log = tmp_path / "log.jsonl"
    m = Monitor(rt, "--mem=8", "--log", log, "--core-on", sig, app("loop"), cwd=str(tmp_path))
    try:
        _started(m)
        m.proc.send_signal(getattr(signal, f"SIG{sig}"))
        m.wait_for(lambda: "core written to" in m.stderr(), "the live core")
        core = tmp_path / f"loop.{m.pid}.core"
        assert core.exists()
        r = rt.cli("status", "--json", m.pid)
        assert r.returncode == 0 and json.loads(r.stdout)["state"] == "running"
        ev = [json.loads(x) for x in log.read_text().splitlines()]
        cores = [e for e in ev if e["event"] == "core"]
        assert cores == [{"time": cores[0]["time"], "event": "core", "pid": m.pid,
                          "path": str(core), "reason": f"signal {getattr(signal, 'SIG' + sig)}",
                          "live": True}]
        assert rt.cli("stop", m.pid).returncode == 0
        assert m.wait() == 143
    finally:
        m.close()


def test_a_busy_polling_guest_is_served_and_ends_on_sigterm(app, rt, tmp_path):
    """POLL with a zero timeout skips the wait (modules/core.py): the monitor's signals
    stay blocked through it and end the next KVM_RUN, so a guest that does nothing but
    poll still answers control requests and still ends on SIGTERM."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    m = Monitor(rt, "--mem=8", f"--block:storage={disk}", app("rrbench"), "poll 2000000000",
                cwd=str(tmp_path))
    try:
        r = rt.cli("status", "--json", m.pid)
        assert r.returncode == 0, r.stderr
        before = json.loads(r.stdout)["hypercalls"]["poll"]
        r = rt.cli("status", "--json", m.pid)
        assert json.loads(r.stdout)["hypercalls"]["poll"] > before > 0
        m.proc.send_signal(signal.SIGTERM)
        assert m.wait() == 143
        assert "received SIGTERM, guest stopped" in m.stderr()
    finally:
        m.close()
