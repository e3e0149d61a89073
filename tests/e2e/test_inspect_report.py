"""The crash report of `ukdbg run`: one compact report on stderr for every kind of
crash (text and --report json), coloured only on a terminal, whose gdb command really
opens the core, and never a traceback from the monitor."""

import json
import os
import pty
import re
import shlex
import sys

import pytest

from helpers import ROOT, ukdbg
from inspect_support import CRASHES, app_path, gdb_bt

pytestmark = pytest.mark.kvm

REPORTED = ["nullwrite", "divzero", "abort", "assert", "recursion", "regs", "triple",
            "badport", "hostileptr", "rowrite", "mmio", "halt"]


def crash(tmp_path, name, *opts):
    app, args, func, sig = CRASHES[name]
    r = ukdbg("run", "--mem=8", "--core-dir", tmp_path, *opts, app_path(app), *args)
    return r


@pytest.mark.gdb
@pytest.mark.parametrize("name", REPORTED)
def test_text_report(tmp_path, name):
    app, _args, func, sig = CRASHES[name]
    r = crash(tmp_path, name)
    err = r.stderr
    assert "\x1b[" not in err                     # no colour off a terminal
    heads = re.findall(r"^ukdbg: ", err, re.M)
    assert len(heads) == 1, err                   # ONE report, no extra monitor lines
    assert err.startswith(f"ukdbg: {app}.hvt: ")
    assert re.search(rf"^  signal: {sig}", err, re.M), err
    assert re.search(r"^(faulting instruction|stopped at):\n  0x[0-9a-f]+ <[^>]+>:  \S",
                     err, re.M), err
    bt = re.findall(r"^  #(\d+) +0x[0-9a-f]+ (\S+?)(?:\+0x[0-9a-f]+| \(inlined\))?"
                    r"(?: at (\S+:\d+))?$", err, re.M)
    assert bt and bt[0][1] == func, err
    assert all(loc for _n, f, loc in bt if f != "??"), err   # every frame has file:line
    assert re.search(r"^registers:\n  rip +0x[0-9a-f]{16}", err, re.M)
    assert re.search(r"^console \(last (line|\d+ lines)\):\n  \| ", err, re.M), err
    core = re.search(r"^core: (\S+)$", err, re.M).group(1)
    assert os.path.isfile(core) and os.path.dirname(core) == str(tmp_path)
    gdb_cmd = re.search(r"^open it with: (.+)$", err, re.M).group(1)
    argv = shlex.split(gdb_cmd)
    assert argv[0] == "gdb" and argv[2] == core
    # the printed command opens the core in stock gdb, with the same backtrace
    theirs, out = gdb_bt(argv[1], argv[2])
    assert theirs and theirs[0][0] == func, out
    assert [f for _n, f, _l in bt] == [f for f, _l in theirs][:len(bt)]
    assert f"or: ukdbg core {core}" in err


@pytest.mark.parametrize("name", ["nullwrite", "abort", "mmio", "badport"])
def test_json_report(tmp_path, name):
    app, _args, func, sig = CRASHES[name]
    r = crash(tmp_path, name, "--report", "json")
    d = json.loads(r.stderr)                      # stderr is exactly one JSON document
    assert d["signal"] == sig and d["app"].endswith(f"{app}.hvt")
    assert d["backtrace"][0]["function"] == func
    assert all(isinstance(f["line"], int) for f in d["backtrace"])
    assert d["instruction"]["addr"] == d["registers"]["rip"] or name in ("badport", "abort")
    assert os.path.isfile(d["core"])
    assert d["commands"]["open it with"] == f"gdb {d['app']} {d['core']}"
    assert isinstance(d["console"], list) and d["console"]
    if name == "nullwrite":
        assert d["exception"] == {"vector": 14, "name": "#PF page fault", "error_code": 2}
        assert d["fault_address"]["value"] == 0
        assert d["exit_status"] == 255
    if name == "mmio":
        assert d["fault_address"]["value"] == 0x200000000
        assert d["kvm_exit"] == "KVM_EXIT_MMIO"


def test_emulation_failure_report(tmp_path):
    """`sse arith`: PVM's emulator cannot run addps (KVM internal error, a report and a
    core); hardware KVM runs it (the guest exits 0, no report)."""
    r = ukdbg("run", "--mem=8", "--core-dir", tmp_path, app_path("sse"), "arith")
    if r.returncode == 0:
        assert "sse: arith ok" in r.stdout and r.stderr == ""
        return
    assert r.returncode == 132, r.stderr
    assert "KVM internal error" in r.stderr.splitlines()[0]
    assert "KVM exit: KVM_EXIT_INTERNAL_ERROR" in r.stderr
    assert re.search(r"^faulting instruction:\n  0x[0-9a-f]+ <do_addps\+0x[0-9a-f]+>:  "
                     r"addps %xmm1, %xmm0   apps/sse.c:68$", r.stderr, re.M), r.stderr


def test_report_without_core(tmp_path):
    r = crash(tmp_path, "nullwrite", "--no-core")
    assert "core: not written (--no-core)" in r.stderr
    assert "open it with" not in r.stderr and not os.listdir(tmp_path)
    assert r.returncode == 255


def test_no_report_when_the_guest_exits(tmp_path, app):
    r = ukdbg("run", "--mem=8", "--core-dir", tmp_path, app("exit"), "3")
    assert r.returncode == 3 and r.stderr == ""


def test_report_is_coloured_on_a_terminal(tmp_path):
    """stderr on a pty: the report is in colour (and still says the same)."""
    pid, fd = pty.fork()
    if pid == 0:                                  # child: stdout/stderr are the pty
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "ukdbg", "run", "--mem=8",
                                  "--core-dir", str(tmp_path), app_path("nullwrite")])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 255
    assert "\x1b[" in text
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\r", "")
    assert "faulting instruction:" in plain and "crash_here+0x9" in plain
    assert "Traceback" not in plain


def test_a_failing_report_falls_back_to_one_line(capsys):
    """If building the report fails, the monitor says so in one line and keeps its own
    diagnosis (no traceback, m.reported stays False)."""
    from ukdbg.target import Crashed
    from ukdbg.tender.modules import report

    class Broken:
        reported = False
        opts = None

        def __getattr__(self, name):
            raise RuntimeError(f"no {name}")
    m = Broken()
    report.on_end(m, Crashed("trap", 11, "guest trapped"))
    err = capsys.readouterr().err
    assert err.startswith("ukdbg: (no crash report: ") and err.count("\n") == 1
    assert m.reported is False
