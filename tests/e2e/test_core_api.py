"""dumpcore.dump(), the API behind `monitor core FILE` and the control socket's `core`,
on a real machine: explicit paths are never overwritten, planted breakpoint bytes stay
out of the core, and the reader gets back what the machine had (registers, memory, map).

The machine runs in a child process: arming the event model blocks signals in the
calling thread, which must not happen to pytest itself."""

import json
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = [pytest.mark.kvm, pytest.mark.gdb]

SCRIPT = r"""
import json, os, sys
from ukdbg import run
from ukdbg.debugger.live_target import LiveTarget
from ukdbg.tender.modules import dumpcore
from ukdbg.errors import UkdbgError

app, d = sys.argv[1], sys.argv[2]
m = run.prepare(["--mem=8", "--no-control", "--core-dir", d, app],
                only=("tender.modules.core", "tender.traps", "tender.modules.dumpcore"), warn=print)
image = m.image
m.events.arm()
stop = run.drive(m)
stop.regs = stop.regs or m.fault.regs
main = image.elf.lookup("main").value
orig = m.mem.read(main, 1)[0]
m.debug_control().add_sw(main, "test")          # a debugger's breakpoint, planted
out = {"stop": repr(stop), "main": main, "orig": orig, "planted": m.mem.read(main, 1)[0]}
out["resident"] = m.mem.resident_bytes()
out["p1"] = dumpcore.dump(m, stop, path=os.path.join(d, "monitor.core"))
try:
    dumpcore.dump(m, stop, path=os.path.join(d, "monitor.core"))
except UkdbgError as e:
    out["again"] = str(e)
out["p2"] = dumpcore.dump(m)                    # no stop: the vCPU as it is
t = LiveTarget(m)
out["regs"] = stop.regs.as_dict()
out["vcpu_rip"] = t.read_registers().rip
from ukdbg.tender.core_source import _regions
out["map"] = [[r.start, r.end, r.perms] for r in _regions(t, m.mem.size)]
out["text"] = t.read_memory(0x100000, 0x1000).hex()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def dumped(tmp_path_factory, fixtures_dir):
    d = tmp_path_factory.mktemp("api")
    r = subprocess.run([sys.executable, "-c", SCRIPT, os.path.join(fixtures_dir,
                                                                   "nullwrite.hvt"), str(d)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1]), d, fixtures_dir


def test_explicit_path_is_exact_and_never_overwritten(dumped):
    out, d, _ = dumped
    assert out["p1"] == os.path.join(d, "monitor.core")
    assert "already exists" in out["again"] and "\n" not in out["again"]
    assert re.fullmatch(r"nullwrite\.\d+\.core", os.path.basename(out["p2"]))
    assert sorted(os.listdir(d)) == sorted(["monitor.core", os.path.basename(out["p2"])])


def test_reader_gets_back_what_the_machine_had(dumped):
    from ukdbg.coredump.reader import CoreFile
    out, _d, _ = dumped
    with CoreFile.open(out["p1"]) as c:
        r = c.read_registers().as_dict()
        for k, v in out["regs"].items():
            if k not in ("cr0", "cr3", "cr4", "cr8", "efer"):    # from the UKDBG note
                assert r[k] == v, k
        assert [[x.start, x.end, x.perms] for x in c.memory_map()] == out["map"]
        assert c.read_memory(0x100000, 0x1000).hex() == out["text"]
        # planted int3 hidden: the core holds the original byte
        assert out["planted"] == 0xCC != out["orig"]
        assert c.read_memory(out["main"], 1)[0] == out["orig"]
        assert c.stop_reason().cause == "trap" and c.stop_reason().vector == 14
        assert c.info()["resident"] == out["resident"]
        st = os.stat(out["p1"])
        assert st.st_blocks * 512 <= out["resident"] + 64 * 1024
    with CoreFile.open(out["p2"]) as c:
        assert c.read_registers().rip == out["vcpu_rip"]
        assert c.ukdbg.crash.kind == "live"


def test_gdb_sees_the_original_instruction(dumped):
    out, _d, fx = dumped
    g = subprocess.run(["gdb", "-nx", "-batch", os.path.join(fx, "nullwrite.hvt"), out["p1"],
                        "-ex", "x/1i main", "-ex", "bt"], capture_output=True, text=True,
                       timeout=60).stdout
    assert re.search(r"<main>:\s+push\s+%rbp", g), g
    assert "int3" not in g
    assert "#0  crash_here () at apps/nullwrite.c:8" in g
    g = subprocess.run(["gdb", "-nx", "-batch", os.path.join(fx, "nullwrite.hvt"), out["p2"],
                        "-ex", "bt"], capture_output=True, text=True, timeout=60).stdout
    # the vCPU itself sits in the HALT hypercall, below the guest's trap handler
    assert re.search(r"#0 .*rt_hypercall", g) and "rt_trap_handler" in g, g


def test_gdb_monitor_core_on_a_running_guest(fixtures_dir, tmp_path):
    """gdb's `monitor core FILE` (issue 3's stub calling dumpcore.dump): attach to a
    running guest, dump, detach; the core reads like the live session."""
    import socket
    import time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    app = os.path.join(fixtures_dir, "loop.hvt")
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", "run", "--mem=8", "--no-control",
                          "--gdb", f"127.0.0.1:{port}", app], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert p.stdout.readline() == "looping\n"
        core = tmp_path / "mon.core"
        live = ""
        for _ in range(50):
            live = subprocess.run(["gdb", "-nx", "-batch", app, "-ex",
                                   f"target remote 127.0.0.1:{port}", "-ex", "bt",
                                   "-ex", "p spin_counter", "-ex", f"monitor core {core}",
                                   "-ex", "detach"],
                                  capture_output=True, text=True, timeout=60).stdout
            if "spin" in live:
                break
            time.sleep(0.1)
        assert core.exists(), live
        assert p.poll() is None, "the guest must still run after the dump"
        at_dump = int(re.search(r"^\$1 = (\d+)", live, re.M).group(1))
        g = subprocess.run(["gdb", "-nx", "-batch", app, str(core), "-ex", "bt",
                            "-ex", "p spin_counter"], capture_output=True, text=True,
                           timeout=60).stdout
        assert re.search(r"#0 .*spin \(\) at apps/loop.c:11", g), g
        assert re.search(r"^\$1 = (\d+)", g, re.M).group(1) == str(at_dump)
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert p.returncode == 143
