"""Pure parts of issue 6: runtime-directory rules, the reply parser, rendering, trace
decoding helpers and log records (no KVM)."""

import os
import stat

import pytest

from ukdbg.control import client, paths
from ukdbg.tender.modules import trace
from ukdbg.tender.modules.log import exit_record
from ukdbg.target import Crashed, Exited, Killed


# --- runtime directory ---------------------------------------------------------------------
def test_runtime_dir_prefers_an_owned_xdg_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.runtime_dir() == str(tmp_path / "ukdbg")
    assert paths.socket_path(42) == str(tmp_path / "ukdbg" / "42.sock")


@pytest.mark.parametrize("xdg", ["", "relative/dir", "/nonexistent/xdg"])
def test_runtime_dir_falls_back(monkeypatch, xdg):
    monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    uid = os.getuid()
    want = (f"/run/user/{uid}/ukdbg" if os.path.isdir(f"/run/user/{uid}")
            and os.stat(f"/run/user/{uid}").st_uid == uid else f"/tmp/ukdbg-{uid}")
    assert paths.runtime_dir() == want


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown")
def test_runtime_dir_ignores_an_xdg_dir_of_another_user(tmp_path, monkeypatch):
    os.chown(tmp_path, 65534, 65534)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert not paths.runtime_dir().startswith(str(tmp_path))
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(OSError, match=r"belongs to uid 65534, not 0"):
        paths.check_private(str(d))


def test_ensure_runtime_dir_is_private_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    old = os.umask(0)
    try:
        d = paths.ensure_runtime_dir()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert paths.ensure_runtime_dir() == d          # idempotent


def test_check_private_refuses_wide_modes_and_symlinks(tmp_path):
    d = tmp_path / "wide"
    d.mkdir()
    os.chmod(d, 0o755)
    with pytest.raises(OSError, match=r"has mode 0755, not 0700"):
        paths.check_private(str(d))
    link = tmp_path / "link"
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link.symlink_to(real)
    with pytest.raises(OSError, match="is not a directory"):
        paths.check_private(str(link))


def test_list_sockets_takes_only_pid_sockets(tmp_path):
    for n in ("12.sock", "7.sock", "x.sock", "12.sock.tmp", "99"):
        (tmp_path / n).write_text("")
    assert paths.list_sockets(str(tmp_path)) == [(7, str(tmp_path / "7.sock")),
                                                 (12, str(tmp_path / "12.sock"))]
    assert paths.list_sockets(str(tmp_path / "missing")) == []


# --- the reply parser -------------------------------------------------------------------------
def test_loads_matches_json():
    import json
    doc = {"ok": True, "n": 12, "f": 1.5, "s": "é\n\"", "l": [None, False], "d": {}}
    assert client.loads(json.dumps(doc).encode()) == doc
    assert client.loads(b'  {"a": 1}\n') == {"a": 1}
    for bad in (b"", b"nope", b'{"a": 1} x', b'{"a": }'):
        with pytest.raises(ValueError):
            client.loads(bad)


# --- rendering -----------------------------------------------------------------------------------
def test_human_units():
    assert client.human_bytes(512, "") == "512B"
    assert client.human_bytes(8 << 20, "") == "8MiB"
    assert client.human_bytes(8 << 20) == "8 MiB"
    assert client.human_bytes(1536) == "1.5 KiB"
    assert client.human_bytes(12345678) == "11.8 MiB"
    assert client.human_duration(3725.9) == "01:02:05"
    assert client.human_duration(2 * 86400 + 5) == "2-00:00:05"


def _status(pid, app, state, up, size, res, gdb=None):
    return {"pid": pid, "app": app, "state": state, "uptime": up,
            "memory": {"size": size, "resident": res}, "gdb": gdb}


def test_ps_table_aligns_columns():
    out = client.ps_table([_status(7, "/x/loop.hvt", "running", 65, 8 << 20, 53248),
                           _status(12345, "/y/time.hvt", "sleeping", 3, 16 << 20, 4096,
                                   "127.0.0.1:4000")])
    assert out == ("  PID  APP       STATE       UPTIME    MEM    RSS  GDB\n"
                   "    7  loop.hvt  running   00:01:05   8MiB  52KiB  -\n"
                   "12345  time.hvt  sleeping  00:00:03  16MiB   4KiB  127.0.0.1:4000\n")
    rows = [ln.split() for ln in out.splitlines()]
    assert rows[1] == ["7", "loop.hvt", "running", "00:01:05", "8MiB", "52KiB", "-"]
    assert rows[2] == ["12345", "time.hvt", "sleeping", "00:00:03", "16MiB", "4KiB",
                       "127.0.0.1:4000"]


def test_render_status_lists_devices_and_counters():
    st = _status(7, "/x/net.hvt", "paused", 1.5, 8 << 20, 4096)
    st.update(argv=["ukdbg", "run", "--net:service=tap0", "/x/net.hvt"], paused_seconds=2.0,
              console_bytes=37, exits={"io": 5, "intr": 2},
              hypercalls={"walltime": 1, "puts": 2, "poll": 2, "block_read": 0},
              devices=[{"name": "service", "type": "net", "backend": "tap0",
                        "bytes_read": 60, "bytes_written": 60}], cores=["/c/x.core"])
    out = client.render_status(st)
    assert out.splitlines()[0] == "pid 7: /x/net.hvt"
    assert "  state       paused (paused 2.000 s in all)\n" in out
    assert "    service      net    tap0" in out and "read 60 B, written 60 B" in out
    assert "  vm exits    io 5, intr 2\n" in out
    assert "  hypercalls  walltime 1, puts 2, poll 2\n" in out        # zero counts left out
    assert "  core        /c/x.core\n" in out
    assert "not listening (ukdbg attach starts it)" in out


def test_gdb_command():
    assert client.gdb_command("/a/b.hvt", "127.0.0.1:5") == \
        ["gdb", "/a/b.hvt", "-ex", "target remote 127.0.0.1:5"]
    assert client.gdb_command("/a/b.hvt", "unix:/r/s") == \
        ["gdb", "/a/b.hvt", "-ex", "target remote /r/s"]


# --- trace helpers ------------------------------------------------------------------------------
def test_c_string_escapes_like_strace():
    assert trace.c_string(b'a\n\t\r"\\\0\x01\xff z') == 'a\\n\\t\\r\\"\\\\\\0\\x01\\xff z'


def test_summary_table_is_strace_c_shaped():
    counts = {1: [3, 0, 0.000006], 2: [4, 0, 0.000030], 5: [2, 1, 0.000064], 8: [1, 0, 0.0],
              4: [0, 0, 0.0]}
    assert trace.summary_table(counts) == (
        "% time     seconds  usecs/call     calls    errors hypercall\n"
        "------ ----------- ----------- --------- --------- ----------------\n"
        " 64.00    0.000064          32         2         1 block_read\n"
        " 30.00    0.000030           8         4           puts\n"
        "  6.00    0.000006           2         3           walltime\n"
        "  0.00    0.000000           0         1           halt\n"
        "------ ----------- ----------- --------- --------- ----------------\n"
        "100.00    0.000100          10        10         1 total\n")


# --- log records -----------------------------------------------------------------------------------
class _M:
    started = 0.0


@pytest.mark.parametrize("stop,want", [
    (Exited(3), {"reason": "exited", "status": 3, "guest_status": 3}),
    (Killed(15, "signal"), {"reason": "signal", "status": 143, "signal": "SIGTERM"}),
    (Killed(15, "control"), {"reason": "stopped", "status": 143, "signal": "SIGTERM"}),
    (Killed(14, "timeout"), {"reason": "timeout", "status": 124, "signal": "SIGALRM"}),
    (Crashed("bad-port", 31, "invalid guest port access"),
     {"reason": "crashed", "status": 159, "cause": "bad-port", "signal": "SIGSYS",
      "message": "invalid guest port access"}),
])
def test_exit_record(stop, want):
    assert exit_record(_M(), stop) == want
