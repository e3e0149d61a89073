"""The flight recorder (tender/flight.py) on real KVM, in real cores: the NT_UKDBG_FLIGHT
note (docs/core-format.md), `ukdbg core -c history`, the crash report's last events,
--flight N, live dumps, gdb's actions, damaged notes, and stock gdb on such a core.

The `flight` fixture's history is known exactly: WALLTIME at boot, N PUTS of
"line I\\n" (7 bytes for I < 10, 8 after), the #PF caught at the guest's handler (an
exit), the guest's three trap-report PUTS, HALT with status 255.
"""

import glob
import json
import os
import re
import struct
import subprocess

import pytest

from helpers import gdb_path, ukdbg
from running import Monitor, RuntimeDir

from ukdbg.coredump import flight as F
from ukdbg.coredump.format import NT_UKDBG_FLIGHT
from ukdbg.coredump.reader import CoreFile

pytestmark = pytest.mark.kvm
LINES = 12
# kind and the fields that do not vary between runs or machines (not times, rips,
# WALLTIME, nor the trap report's lengths, which print addresses)
EXPECTED = ([("walltime", {})]
            + [("puts", {"len": 7 if i < 10 else 8}) for i in range(LINES)]
            + [("exit", {})]
            + [("puts", {}), ("puts", {}), ("puts", {}), ("halt", {"status": 255})])


def crash(app, d, *opts):
    """`ukdbg run` of the flight fixture into directory d: (CompletedProcess, core)."""
    os.makedirs(d, exist_ok=True)
    r = ukdbg("run", "--mem=8", "--core-dir", d, *opts, app("flight"), str(LINES))
    cores = glob.glob(os.path.join(d, "*.core"))
    assert len(cores) == 1, (r.stderr, cores)
    return r, cores[0]


def log_of(core):
    with CoreFile.open(core) as c:
        note = c.find_note("UKDBG", NT_UKDBG_FLIGHT)
        return None if note is None else F.unpack(note.desc)


def shape(events, fields=None):
    """(kind, the fields EXPECTED pins) of each event."""
    n = len(EXPECTED)
    out = []
    for e in events:
        i = e.index if fields is None else fields[len(out)]
        keep = EXPECTED[i][1] if 0 <= i < n else {}
        f = e.fields if isinstance(e, F.Event) else e
        out.append((e.kind, {k: f[k] for k in keep}))
    return out


@pytest.fixture(scope="module")
def flight_core(app, tmp_path_factory):
    return crash(app, str(tmp_path_factory.mktemp("flight")))


def test_the_note_holds_the_known_history_in_order(flight_core, app):
    r, core = flight_core
    assert r.returncode == 255, r.stderr
    log = log_of(core)
    assert log is not None, "no NT_UKDBG_FLIGHT note"
    assert (log.capacity, log.total, log.dropped) == (1024, len(EXPECTED), 0)
    assert shape(log.events) == EXPECTED
    assert [e.index for e in log.events] == list(range(len(EXPECTED)))
    # the fault: KVM_EXIT_DEBUG (VMX/SVM) or an emulation failure (PVM) at the handler
    fault = log.events[1 + LINES]
    assert fault.fields["reason"] in (4, 17)
    times = [e.t_ns for e in log.events]
    assert log.start_ns <= times[0] and times == sorted(times) and times[-1] <= log.dump_ns
    halt = log.events[-1]
    assert halt.fields["cookie"] != 0          # the trap frame the guest handed over
    # rips name the code that made each call (kvm_run's synced registers)
    nm = subprocess.run(["nm", app("flight")], capture_output=True, text=True).stdout
    syms = {ln.split()[2]: int(ln.split()[0], 16) for ln in nm.splitlines()
            if len(ln.split()) == 3}
    for e in log.events:
        if e.kind == "puts":
            assert syms["rt_puts"] < e.rip < syms["rt_puts"] + 0x80, hex(e.rip)
    assert syms["rt_halt"] < halt.rip < syms["rt_halt"] + 0x80
    assert syms["rt_walltime"] < log.events[0].rip < syms["rt_walltime"] + 0x80


def test_history_command_text_and_json(flight_core):
    _r, core = flight_core
    r = ukdbg("core", core, "-c", "history 4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    n = len(EXPECTED)
    assert lines[0] == f"({n - 4} earlier events: {n - 4} not shown)"
    assert [ln.split()[0] for ln in lines[1:]] == [f"#{i}" for i in range(n - 4, n)]
    assert re.search(r"<rt_halt\+0x[0-9a-f]+>  halt cookie=0x[0-9a-f]+ status=255$",
                     lines[-1]), lines[-1]
    assert re.search(r"<rt_puts\+0x[0-9a-f]+>  puts data=0x[0-9a-f]+ len=\d+$", lines[1])
    r = ukdbg("core", core, "--json", "-c", "history")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)
    h = res["result"]
    assert (h["total"], h["capacity"], h["not_kept"], h["not_shown"]) == (n, 1024, 0, 0)
    got = [(e["kind"], {k: e["fields"][k] for k in EXPECTED[e["index"]][1]})
           for e in h["events"]]
    assert got == EXPECTED
    assert h["events"][1]["where"].startswith("rt_puts+")
    assert all(isinstance(e["time"], float) and e["time"] >= 0 for e in h["events"])


def test_crash_report_shows_the_last_10_events(flight_core):
    r, core = flight_core
    text = r.stderr
    assert "last events before the crash:" in text, text
    after = text.split("last events before the crash:\n", 1)[1].splitlines()
    shown = [ln for ln in after[:11] if ln.startswith("  #")]
    assert len(shown) == 10, after
    n = len(EXPECTED)
    assert [ln.split()[0] for ln in shown] == [f"#{i}" for i in range(n - 10, n)]
    assert after[10].startswith("core: "), after
    # the same lines as `history 10` of the core (the report is built the same way)
    h = ukdbg("core", core, "-c", "history 10").stdout.splitlines()[1:]
    assert [ln.strip() for ln in shown] == h
    # `ukdbg core --report` of the core, and the JSON report
    rep = ukdbg("core", core, "--report").stdout
    assert [ln.strip() for ln in rep.split("last events before the crash:\n")[1]
            .splitlines()[:10]] == h
    j = json.loads(ukdbg("core", core, "--json").stdout)
    assert [e["kind"] for e in j["last_events"]] == [k for k, _ in EXPECTED[-10:]]


def test_flight_0_leaves_no_note(app, tmp_path):
    r, core = crash(app, str(tmp_path), "--flight", "0")
    assert r.returncode == 255
    assert log_of(core) is None
    assert "last events before the crash" not in r.stderr
    h = ukdbg("core", core, "-c", "history")
    assert h.returncode == 0 and "no flight recorder in this core" in h.stdout


def test_flight_4_keeps_exactly_the_last_4(app, tmp_path, flight_core):
    r, core = crash(app, str(tmp_path), "--flight=4")
    assert r.returncode == 255
    log = log_of(core)
    n = len(EXPECTED)
    assert (log.capacity, log.total, log.dropped) == (4, n, n - 4)
    assert [e.index for e in log.events] == list(range(n - 4, n))
    full = log_of(flight_core[1]).events[-4:]
    assert shape(log.events) == shape(full) == EXPECTED[-4:]
    h = ukdbg("core", core, "-c", "history").stdout.splitlines()
    assert h[0] == f"({n - 4} earlier events: {n - 4} no longer kept (the ring holds 4))"
    assert len(h) == 5
    # the crash report shows what is kept
    events = r.stderr.split("last events before the crash:\n")[1].split("core: ")[0]
    assert [ln.split()[0] for ln in events.splitlines()] == [f"#{i}" for i in range(n - 4, n)]


def test_bad_flight_option_is_a_usage_error(app):
    for bad in ("-1", "x", "2000000"):
        r = ukdbg("run", "--flight", bad, app("hello"))
        assert r.returncode == 2 and "--flight" in r.stderr and r.stderr.count("\n") == 1


def _desc_at(data):
    """(offset of the NT_UKDBG_FLIGHT desc in the core, its size)."""
    tag = struct.pack("<I", NT_UKDBG_FLIGHT) + b"UKDBG\0\0\0"
    pos = data.index(tag)
    (size,) = struct.unpack_from("<I", data, pos - 4)
    return pos + len(tag), size


@pytest.mark.parametrize("how,message", [
    ("version", "flight recorder note version 7 is not known"),
    ("count", "more than its"),
    ("truncated", "flight recorder note truncated in event"),
    ("kind", "has kind 60000"),
])
def test_a_damaged_note_is_a_clean_error(flight_core, tmp_path, how, message):
    _r, core = flight_core
    data = bytearray(open(core, "rb").read())
    off, size = _desc_at(data)
    head = F.HEAD.unpack_from(data, off)
    if how == "version":
        struct.pack_into("<I", data, off, 7)
    elif how == "count":
        struct.pack_into("<I", data, off + 36, 0xFFFFFFFF)
    elif how == "truncated":                  # one more event than the note holds
        struct.pack_into("<I", data, off + 36, head[6] + 1)
        struct.pack_into("<Q", data, off + 8, head[2] + 1)
    else:                                     # the last event's kind index
        log = F.unpack(bytes(data[off:off + size]))
        ev = off + size - (F.EVENT.size + 8 * len(log.events[-1].fields)
                           + len(log.events[-1].text.encode()))
        struct.pack_into("<H", data, ev, 60000)
    bad = tmp_path / "bad.core"
    bad.write_bytes(bytes(data))
    r = ukdbg("core", str(bad), "-c", "history")
    assert r.returncode == 1
    out = r.stdout + r.stderr          # the inspector's batch errors: one line each
    assert out.startswith("error: ") and message in out and out.count("\n") == 1, out
    # the rest of the core is still readable, and the report says what is wrong
    r = ukdbg("core", str(bad), "-c", "bt 1")
    assert r.returncode == 0 and "crash_after_lines" in r.stdout, r.stdout + r.stderr
    r = ukdbg("core", str(bad), "--report")
    assert r.returncode == 0 and "last events before the crash: flight recorder" in r.stdout


@pytest.mark.gdb
def test_stock_gdb_reads_a_core_with_the_note(flight_core, app):
    _r, core = flight_core
    g = subprocess.run([gdb_path(), "-nx", "-batch", "-ex", "bt", "-ex", "info registers rip",
                        app("flight"), core], capture_output=True, text=True, timeout=60)
    assert re.search(r"#0 .*crash_after_lines \(\) at .*flight\.c:\d+", g.stdout), \
        g.stdout + g.stderr
    assert re.search(r"#1 .*main \(", g.stdout), g.stdout
    assert "warning" not in g.stderr.lower() or "core file may not match" in g.stderr, \
        g.stderr


def test_a_live_dump_carries_pauses_and_resumes(app, tmp_path):
    rt = RuntimeDir()
    m = Monitor(rt, "--mem=8", app("loop"), cwd=str(tmp_path))
    try:
        m.wait_for(lambda: "looping" in m.stdout(), "the guest's output")
        for cmd in ("pause", "resume"):
            r = rt.cli(cmd, m.pid)
            assert r.returncode == 0, r.stderr
        core = tmp_path / "live.core"
        r = rt.cli("dump", m.pid, "-o", core)
        assert r.returncode == 0, r.stderr
        log = log_of(str(core))
        kinds = [(e.kind, e.text) for e in log.events]
        assert kinds[:2] == [("walltime", ""), ("puts", "")], kinds
        assert log.events[1].fields["len"] == len("looping\n")
        assert kinds[-2:] == [("pause", "control"), ("resume", "control")], kinds
        h = ukdbg("core", str(core), "-c", "history 2").stdout
        assert "pause control" in h and "resume control" in h, h
    finally:
        m.proc.kill()
        m.proc.wait()
        rt.cleanup()


@pytest.mark.gdb
def test_gdb_actions_that_change_the_guest_are_recorded(app, tmp_path):
    from gdbguest import Guest
    core = tmp_path / "gdb.core"
    with Guest("watch") as g:
        out = g.gdb("break main", "continue", "set var watch_me = 1234",
                    "set var $rax = 7", f"monitor core {core}", "kill")
    assert core.exists(), out
    log = log_of(str(core))
    gdb = [(e.text, e.fields) for e in log.events if e.kind == "gdb"]
    texts = [t for t, _ in gdb]
    assert texts[:2] == ["attach", "continue"], texts
    assert "write memory" in texts and "write registers" in texts, texts
    mem = [f for t, f in gdb if t == "write memory"][0]
    nm = subprocess.run(["nm", app("watch")], capture_output=True, text=True).stdout
    addr = int(re.search(r"^([0-9a-f]+) \w watch_me$", nm, re.M).group(1), 16)
    assert mem == {"addr": addr, "len": 4}
    # the breakpoint stop at main is an exit between `continue` and the writes
    kinds = [e.kind for e in log.events]
    assert "exit" in kinds[kinds.index("gdb") + 2:], kinds


@pytest.mark.gdb
def test_a_gdb_interrupt_is_recorded(app, tmp_path):
    """Ctrl-C in gdb (a 0x03 byte while the guest runs) is an event; `monitor core`
    right after it carries it, the last before the core."""
    import signal
    import time
    from gdbguest import Guest
    core = tmp_path / "int.core"
    with Guest("loop") as g:
        p = g.gdb_background("continue", f"monitor core {core}", "kill")
        g.wait_for_text("looping", g.stdout)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    assert core.exists(), out
    gdb = [e.text for e in log_of(str(core)).events if e.kind == "gdb"]
    assert gdb == ["attach", "continue", "interrupt"], gdb
