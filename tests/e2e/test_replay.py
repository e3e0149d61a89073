"""Record and replay (issue 10, docs/replay.md): real guests on real KVM, real gdb.

Every test records a run with `ukdbg run --record`, then replays it with `ukdbg replay`
and compares what a user sees: the console byte for byte, the exit status, the core's
registers and backtrace in gdb."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib

import pytest

from helpers import ROOT, Background, gdb_path, need_tap_netns, tap_netns, ukdbg


def stub_address(g, end=","):
    """The address a monitor's gdb stub listens on (its stderr line), once it is up."""
    pattern = r"listening on (\S+?)" + end
    return g.wait_for(lambda: (re.search(pattern, g.stderr()) or [None, None])[1],
                      "the stub")


def gdb_batch_argv(addr, exe, *cmds):
    """gdb -batch connected to addr, running cmds on exe's symbols."""
    argv = ["gdb", "-q", "-nx", "-batch", "-ex", "set confirm off",
            "-ex", f"target remote {addr}"]
    for c in cmds:
        argv += ["-ex", c]
    return argv + [exe]

pytestmark = pytest.mark.kvm


def record(tmp, app, *args, name="r.rec", extra=()):
    d = os.path.join(tmp, "rec")
    os.makedirs(d, exist_ok=True)
    rec = os.path.join(tmp, name)
    r = ukdbg("run", "--mem=8", "--no-control", "--core-dir", d, "--record", rec, *extra,
              app, *args, cwd=d)
    return r, rec


def replay(tmp, rec, *extra, sub="rep"):
    d = os.path.join(tmp, sub)
    os.makedirs(d, exist_ok=True)
    return ukdbg("replay", "--core-dir", d, *extra, rec, cwd=d)


def core_in(d):
    cores = glob.glob(os.path.join(d, "*.core*"))
    assert len(cores) == 1, cores
    return cores[0]


def gdb_on_core(app, core):
    r = subprocess.run(["gdb", "-nx", "-batch", app, core, "-ex", "info registers",
                        "-ex", "bt"], capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    regs = {m.group(1): int(m.group(2), 16)
            for m in re.finditer(r"^(\w+)\s+(0x[0-9a-f]+)", out, re.M)}
    frames = {}                             # gdb prints frame #0 on loading, then bt
    for n, fn in re.findall(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\w+) ", out, re.M):
        frames[int(n)] = fn
    return regs, [frames[i] for i in sorted(frames)]


# --- the non-deterministic fixture --------------------------------------------------------
@pytest.mark.gdb
def test_nondet_runs_differ_and_each_replay_matches_its_recording(app, tmp_path):
    tmp = str(tmp_path)
    a = ukdbg("run", "--mem=8", "--no-core", "--no-control", app("nondet"))
    b = ukdbg("run", "--mem=8", "--no-core", "--no-control", app("nondet"))
    assert a.returncode == b.returncode == 255
    assert a.stdout != b.stdout                         # RDRAND, RDTSC, WALLTIME differ
    r, rec = record(tmp, app("nondet"))
    assert r.returncode == 255 and "use_victim" in r.stderr, r.stderr
    p = replay(tmp, rec)
    assert p.stdout == r.stdout
    assert p.returncode == r.returncode
    assert "#PF" in p.stderr and "use_victim" in p.stderr
    rec_regs, rec_bt = gdb_on_core(app("nondet"), core_in(os.path.join(tmp, "rec")))
    rep_regs, rep_bt = gdb_on_core(app("nondet"), core_in(os.path.join(tmp, "rep")))
    assert rec_regs and rec_regs == rep_regs
    assert rec_bt[:2] == ["use_victim", "main"] and rep_bt == rec_bt
    # a second recording is another execution, replayed as exactly
    r2, rec2 = record(tmp, app("nondet"), name="r2.rec")
    assert r2.stdout != r.stdout
    p2 = replay(tmp, rec2, "--no-core", sub="rep2")
    assert p2.stdout == r2.stdout and p2.returncode == r2.returncode


def test_replay_traces_trapped_instructions(app, tmp_path):
    r, rec = record(str(tmp_path), app("nondet"), extra=("--no-core",))
    p = replay(str(tmp_path), rec, "--no-core", "--trace")
    assert p.stdout == r.stdout
    assert re.search(r"\[replay\] event \d+: rdtsc at 0x[0-9a-f]+ = 0x", p.stderr)
    assert re.search(r"\[replay\] event \d+: rdrand at 0x[0-9a-f]+ = 0x", p.stderr)
    assert "walltime(" in p.stderr                      # the hypercall trace


# --- devices ---------------------------------------------------------------------------------
def test_block_guest_replays_with_the_disk_file_gone(app, tmp_path):
    tmp = str(tmp_path)
    disk = os.path.join(tmp, "disk.img")
    with open(disk, "wb") as f:
        f.write(bytes(64 * 1024))
    first = ukdbg("run", "--mem=8", "--no-control", f"--block:storage={disk}", app("block"))
    assert first.returncode == 0, first.stderr
    r, rec = record(tmp, app("block"), "verify", extra=(f"--block:storage={disk}",))
    assert r.returncode == 0 and "block: ok" in r.stdout, r.stdout + r.stderr
    os.unlink(disk)
    p = replay(tmp, rec)
    assert p.returncode == 0, p.stderr
    assert p.stdout == r.stdout


@pytest.fixture
def netns():
    need_tap_netns()
    with tap_netns("ukdbg-rr") as name:
        yield name


def test_net_echo_session_replays_without_a_tap(app, tmp_path, netns):
    rec = os.path.join(str(tmp_path), "net.rec")
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable,
                        os.path.join(ROOT, "tests/kvm/netns_echo.py"), app("net"), "tap0",
                        "02:12:34:56:78:9a", "4", "--no-control", "--record", rec],
                       capture_output=True, text=True, timeout=90, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0 and len(res["echoed"]) == 4, res
    recorded = res["first"] + res["stdout"]
    p = replay(str(tmp_path), rec)                     # outside the netns: no tap at all
    assert p.returncode == 0, p.stderr
    assert p.stdout == recorded
    assert "net: echoed frame 4" in p.stdout


# --- external events ---------------------------------------------------------------------------
def test_sigterm_mid_run_of_a_sleeping_guest(app, tmp_path):
    rec = os.path.join(str(tmp_path), "t.rec")
    with Background(["run", "--mem=8", "--no-control", "--record", rec, app("time"),
                     "100"]) as g:
        g.wait_for(lambda: g.stdout().count("t=") >= 3, "three lines")
        g.proc.send_signal(signal.SIGTERM)
        assert g.wait() == 143
        out = g.stdout()
    p = replay(str(tmp_path), rec)
    assert p.returncode == 143, p.stderr
    assert p.stdout == out
    assert "received SIGTERM" in p.stderr


def test_sigquit_mid_run_of_a_busy_guest_stops_at_the_same_instruction(app, tmp_path):
    rec = os.path.join(str(tmp_path), "l.rec")
    with Background(["run", "--mem=8", "--no-control", "--record", rec, app("loop")]) as g:
        g.wait_for(lambda: "looping" in g.stdout(), "the loop")
        time.sleep(0.05)
        g.proc.send_signal(signal.SIGQUIT)               # a core, with the registers
        assert g.wait() == 131
        rec_core = os.path.join(str(tmp_path), "recorded.core")
        shutil.copy(core_in(g.dir), rec_core)
        out = g.stdout()
    p = replay(str(tmp_path), rec)
    assert p.returncode == 131, p.stderr
    assert p.stdout == out
    rep_core = core_in(os.path.join(str(tmp_path), "rep"))
    if gdb_path():
        a, bt_a = gdb_on_core(app("loop"), rec_core)
        b, bt_b = gdb_on_core(app("loop"), rep_core)
        assert a and a == b and bt_a == bt_b and bt_a[0] == "spin"


@pytest.mark.gdb
def test_gdb_writes_while_recording_are_replayed(app, tmp_path):
    """gdb returns early from corrupt() (registers) and sets `total` (memory): the
    guest survives; the replay, without gdb, survives the same way."""
    rec = os.path.join(str(tmp_path), "g.rec")
    with Background(["run", "--mem=8", "--no-control", "--no-core", "--record", rec,
                     "--gdb", "127.0.0.1:0", "--gdb-wait", app("nondet")]) as g:
        addr = stub_address(g)
        out = subprocess.run(gdb_batch_argv(addr, app("nondet"), "break corrupt", "continue",
                                            "return", "set var total = 424242", "continue"),
                             capture_output=True, text=True, timeout=120)
        assert g.wait(60) == 0, out.stdout + out.stderr + g.stderr()
        live = g.stdout()
    assert "nondet: survived, total=" in live
    total = int(re.search(r"total=(-?\d+)", live).group(1))
    assert total >= 424242
    p = replay(str(tmp_path), rec)
    assert p.returncode == 0, p.stderr
    assert p.stdout == live


# --- damaged recordings ---------------------------------------------------------------------
def test_prefix_left_by_a_killed_recorder_replays_to_its_last_event(app, tmp_path):
    rec = os.path.join(str(tmp_path), "k.rec")
    with Background(["run", "--mem=8", "--no-control", "--record", rec, app("time"),
                     "100"]) as g:
        g.wait_for(lambda: g.stdout().count("t=") >= 4, "four lines")
        g.proc.send_signal(signal.SIGKILL)
        g.wait()
        out = g.stdout()
    p = replay(str(tmp_path), rec)
    assert p.returncode == 126, p.stderr
    assert "incomplete" in p.stderr and "end of the recording" in p.stderr
    assert p.stdout and out.startswith(p.stdout)
    assert p.stdout.count("t=") >= 4


def test_a_recording_or_image_that_is_not_a_regular_file_is_refused_at_once(app, tmp_path):
    """Issue 9, defect 3, for recordings: /dev/zero (endless), a FIFO (blocks), a
    directory: one line and exit 1 within a second, never a hang."""
    import time
    tmp = str(tmp_path)
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    for path in ("/dev/zero", "/dev/urandom", fifo, tmp):
        t = time.monotonic()
        p = replay(tmp, path)
        assert p.returncode == 1, (path, p.stderr)
        assert time.monotonic() - t < 5 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "not a regular file (a ukdbg recording)" in p.stderr
        assert "Traceback" not in p.stderr
    r, rec = record(tmp, app("hello"))
    assert r.returncode == 0, r.stderr
    p = replay(tmp, rec, "--image", "/dev/zero")
    assert p.returncode == 1 and "not a regular file (an hvt image)" in p.stderr, p.stderr


def test_tampered_truncated_and_foreign_recordings_are_clean_errors(app, tmp_path):
    tmp = str(tmp_path)
    r, rec = record(tmp, app("nondet"), extra=("--no-core",))
    data = open(rec, "rb").read()
    # a flipped byte inside a chunk: its CRC fails
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x40
    open(os.path.join(tmp, "bad.rec"), "wb").write(bad)
    p = replay(tmp, os.path.join(tmp, "bad.rec"))
    assert p.returncode == 1 and "corrupt" in p.stderr and len(p.stderr.splitlines()) == 1
    # cut short: the prefix replays, with exit 126
    open(os.path.join(tmp, "cut.rec"), "wb").write(data[:-40])
    p = replay(tmp, os.path.join(tmp, "cut.rec"))
    assert p.returncode in (126, 125), p.stderr
    assert r.stdout.startswith(p.stdout)
    # cut inside the image: nothing to replay, one line
    open(os.path.join(tmp, "tiny.rec"), "wb").write(data[:300])
    p = replay(tmp, os.path.join(tmp, "tiny.rec"))
    assert p.returncode == 1 and "boot state" in p.stderr, p.stderr
    # not a recording, another version
    for blob, what in ((b"hello world" * 10, "not a ukdbg recording"),
                       (b"UKDBGREC\x09\x00" + bytes(20), "version 9")):
        path = os.path.join(tmp, "x.rec")
        open(path, "wb").write(blob)
        p = replay(tmp, path)
        assert p.returncode == 1 and what in p.stderr, p.stderr
    p = replay(tmp, os.path.join(tmp, "missing.rec"))
    assert p.returncode == 1 and "no such file" in p.stderr, p.stderr
    # re-encoded (valid CRCs) with nonsense inside: refused where it is read
    def bad_traps(t, b):
        return json.dumps(dict(json.loads(b), traps=[["x"]])).encode() if t == 1 else b
    for name, change in (("meta", lambda t, b: b"{}" if t == 1 else b),
                         ("traps", bad_traps),
                         ("trap", lambda t, b: b"\x01" if t == 11 else b)):
        path = os.path.join(tmp, f"{name}.rec")
        _rewrite(rec, path, change)
        p = replay(tmp, path, "--no-core", sub=name)
        assert p.returncode in (1, 125), p.stderr
        assert "malformed" in p.stderr or "incomplete" in p.stderr, p.stderr


def _rewrite(src, dst, change):
    """Re-encode a recording with change(type, payload) -> payload applied."""
    from ukdbg.replay import format as F
    rec = F.Recording(src)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    w = F.Writer(fd)
    w.add(F.R_META, change(F.R_META, json.dumps(rec.meta).encode()))
    w.add(F.R_IMAGE, change(F.R_IMAGE, rec.image))
    w.add(F.R_CPUID, change(F.R_CPUID, rec.cpuid))
    for t, p in rec.events:
        w.add(t, change(t, p))
    w.close()


def test_another_image_is_refused_with_a_hash_mismatch(app, tmp_path):
    tmp = str(tmp_path)
    r, rec = record(tmp, app("nondet"), extra=("--no-core",))
    p = replay(tmp, rec, "--image", app("hello"))
    assert p.returncode == 1 and "not the recorded image" in p.stderr, p.stderr
    p = replay(tmp, rec, "--image", app("nondet"), "--no-core")
    assert p.returncode == 255 and p.stdout == r.stdout
    hello = open(app("hello"), "rb").read()
    swapped = os.path.join(tmp, "swapped.rec")
    _rewrite(rec, swapped, lambda t, p: hello if t == 2 else p)
    p = replay(tmp, swapped)
    assert p.returncode == 1 and "does not match its recorded hash" in p.stderr, p.stderr


def test_a_changed_input_is_a_divergence_with_index_and_backtrace(app, tmp_path):
    """A recorded PUTS whose checksum no longer matches what the guest prints: exit 125,
    the event index, recorded vs happened, rip and a backtrace."""
    from ukdbg.replay import format as F
    tmp = str(tmp_path)
    r, rec = record(tmp, app("nondet"), extra=("--no-core",))
    seen = []

    def change(t, p):
        if t == F.R_HC and p[0] == 2 and len(seen) < 3:   # the third PUTS
            seen.append(1)
            if len(seen) == 3:
                nr, fl, gpa, b, a, d, check, tail = F.decode_hc(p)
                return F.encode_hc(nr, fl, gpa, b, a, d, check ^ 1, tail)
        return p
    _rewrite(rec, os.path.join(tmp, "div.rec"), change)
    p = replay(tmp, os.path.join(tmp, "div.rec"), "--no-core")
    assert p.returncode == 125, p.stderr
    m = re.search(r"replay diverged at event (\d+): recorded puts of \d+ bytes with adler32 "
                  r"0x[0-9a-f]+, but the guest did puts of other bytes", p.stderr)
    assert m, p.stderr
    assert "rt_puts" in p.stderr or "rt_printf" in p.stderr     # the backtrace
    assert r.stdout.startswith(p.stdout)


def test_record_limit_stops_recording_not_the_guest(app, tmp_path):
    tmp = str(tmp_path)
    _r, small = record(tmp, app("time"), "1", name="small.rec", extra=("--no-core",))
    limit = os.path.getsize(small) + 300            # ~31 bytes an iteration
    r, rec = record(tmp, app("time"), "30", extra=("--record-limit", str(limit),
                                                   "--no-core"))
    assert r.returncode == 0 and r.stdout.count("t=") == 30
    assert r.stderr.count("--record-limit") == 1, r.stderr
    assert os.path.getsize(rec) <= limit
    p = replay(tmp, rec)
    assert p.returncode == 126 and "--record-limit" in p.stderr, p.stderr
    assert r.stdout.startswith(p.stdout) and p.stdout.count("t=") >= 2
    bad = ukdbg("run", "--record-limit", "lots", "--record", rec, app("hello"))
    assert bad.returncode == 2 and "--record-limit" in bad.stderr
    tiny = ukdbg("run", "--record-limit", "100", "--record", rec, app("hello"))
    assert tiny.returncode == 1 and "boot state" in tiny.stderr


# --- gdb on a replay ---------------------------------------------------------------------------
@pytest.mark.gdb
def test_gdb_on_a_replay_breaks_steps_and_reads_registers(app, tmp_path):
    tmp = str(tmp_path)
    r, rec = record(tmp, app("nondet"), extra=("--no-core",))
    with Background(["replay", "--no-core", "--gdb", "127.0.0.1:0", "--gdb-wait",
                     rec]) as g:
        addr = stub_address(g)
        out = subprocess.run(
            gdb_batch_argv(addr, app("nondet"), "break corrupt", "continue", "bt",
                           "print victim", "stepi", "stepi",
                           "info registers rip rsp eflags r15", "watch victim", "continue",
                           "print victim", "delete", "continue"),
            capture_output=True, text=True, timeout=180)
        text = out.stdout + out.stderr
        assert g.wait(60) == 255, text + g.stderr()
        assert g.stdout() == r.stdout
    assert re.search(r"Breakpoint 1, corrupt \(i=\d+\)", text), text
    assert re.search(r"#1 .* in main", text), text
    assert "(struct item *) 0x" in text
    assert re.search(r"^rip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <corrupt\+\d+>", text, re.M), text
    assert re.search(r"^r15\s+0x", text, re.M)
    assert re.search(r"Old value = .*\nNew value = \(struct item \*\) 0x40000", text), text
    assert "SIGSEGV" in text


def test_pause_and_resume_are_recorded_at_their_position(app, tmp_path):
    from running import RuntimeDir
    from ukdbg.replay import format as F
    rt = RuntimeDir()
    rec = os.path.join(str(tmp_path), "p.rec")
    try:
        with Background(["run", "--mem=8", "--record", rec, app("time"), "12"],
                        env={"XDG_RUNTIME_DIR": rt.path}) as g:
            g.wait_for(lambda: g.stdout().count("t=") >= 3, "three lines")
            g.wait_for(lambda: rt.cli("pause", g.pid).returncode == 0, "a pause")
            time.sleep(0.3)
            assert rt.cli("resume", g.pid).returncode == 0
            assert g.wait() == 0, g.stderr()
            out = g.stdout()
    finally:
        rt.cleanup()
    kinds = [p[0] for t, p in F.Recording(rec).events if t == F.R_EXT]
    assert kinds == [F.X_PAUSE, F.X_RESUME]
    p = replay(str(tmp_path), rec, "--trace")
    assert p.returncode == 0 and p.stdout == out
    assert re.search(r"\[replay\] event \d+: pause at rip=0x", p.stderr), p.stderr


@pytest.mark.gdb
def test_ctrl_c_in_gdb_stops_a_replay_and_it_resumes_on_course(app, tmp_path):
    """A busy guest ended by SIGTERM: its replay runs the loop up to that instruction.
    Ctrl-C in gdb stops it there; detached, it still ends as recorded."""
    rec = os.path.join(str(tmp_path), "l.rec")
    with Background(["run", "--mem=8", "--no-control", "--record", rec, app("loop")]) as g:
        g.wait_for(lambda: "looping" in g.stdout(), "the loop")
        time.sleep(0.15)
        g.proc.send_signal(signal.SIGTERM)
        assert g.wait() == 143
    with Background(["replay", "--no-core", "--gdb", "127.0.0.1:0", rec]) as g:
        addr = stub_address(g, end="(?:,|: )")
        p = subprocess.Popen(gdb_batch_argv(addr, app("loop"), "continue", "bt",
                                            "print spin_counter > 0", "detach"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.5)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
        assert "Program received signal SIGINT, Interrupt." in out, out
        assert re.search(r"#0\s+(0x[0-9a-f]+ in )?spin \(\)", out), out
        assert "$1 = 1" in out, out
        assert g.wait(300) == 143, g.stderr()
        assert "received SIGTERM" in g.stderr()


def test_a_signal_to_a_busy_guest_is_held_for_its_next_exit(app, tmp_path):
    """SIGTERM while the guest computes: recording holds it until the guest's next
    hypercall (a WALLTIME every 4096 iterations), so the end is recorded at that exit
    and the replay reaches it without any breakpoint."""
    from ukdbg.elf import ElfFile
    from ukdbg.replay import format as F
    tmp = str(tmp_path)
    disk = os.path.join(tmp, "disk.img")
    with open(disk, "wb") as f:
        f.write(bytes(8192))
    rec = os.path.join(tmp, "s.rec")
    with Background(["run", "--mem=8", "--no-control", "--no-core", "--record", rec,
                     f"--block:storage={disk}", app("rrbench"), "spin", "100000000"]) as g:
        g.wait_for(lambda: os.path.exists(rec) and os.path.getsize(rec) > 1000, "a run")
        time.sleep(0.5)
        g.proc.send_signal(signal.SIGTERM)
        assert g.wait() == 143
    events = F.Recording(rec).events
    t, p = events[-2]
    assert t == F.R_EXT and p[0] == F.X_STOP
    rip = F.EXT_HEAD.unpack_from(p)[17]
    sym, _off = ElfFile.open(app("rrbench")).symbolize(rip)
    assert sym.name == "rt_walltime", hex(rip)
    os.unlink(disk)
    p = replay(tmp, rec, "--no-core")
    assert p.returncode == 143 and "received SIGTERM" in p.stderr, p.stderr


@pytest.mark.gdb
def test_a_gdb_write_during_replay_is_a_divergence_the_user_chose(app, tmp_path):
    """`return` from corrupt() in a replay: the guest no longer crashes where the
    recording says, so the replay stops at the first input that differs, names the
    debugger's write, and gdb is stopped there (the stop is final)."""
    tmp = str(tmp_path)
    r, rec = record(tmp, app("nondet"), extra=("--no-core",))
    with Background(["replay", "--no-core", "--gdb", "127.0.0.1:0", "--gdb-wait",
                     rec]) as g:
        addr = stub_address(g)
        out = subprocess.run(
            gdb_batch_argv(addr, app("nondet"), "break corrupt", "continue", "return",
                           "continue", "bt", "continue"),
            capture_output=True, text=True, timeout=180)
        text = out.stdout + out.stderr
        assert g.wait(60) == 125, text + g.stderr()
        err = g.stderr()
    assert "the debugger wrote guest regs at event" in err, err
    assert re.search(r"replay diverged at event \d+ \(after a debugger write at event "
                     r"\d+\): recorded .*, but the guest did .*; rip=0x", err), err
    assert "Program received signal SIGTRAP" in text, text
    assert re.search(r"#\d+ .* in main", text), text


@pytest.mark.gdb
def test_gdb_stepping_over_a_trapped_rdtsc_records_and_replays_it(app, tmp_path):
    """A gdb breakpoint on the RDTSC itself, then stepi: the step is the recorder's
    emulation (recorded), and in the replay the same step feeds the recorded value."""
    tmp = str(tmp_path)
    rec = os.path.join(tmp, "s.rec")
    cmds = ["break *rdtsc+8", "continue", "x/i $pc", "stepi", "x/i $pc",
            "print/x $rax", "delete", "continue"]

    def session(argv):
        with Background(argv) as g:
            addr = stub_address(g)
            out = subprocess.run(gdb_batch_argv(addr, app("nondet"), *cmds),
                                 capture_output=True, text=True, timeout=180)
            rc = g.wait(60)
            return rc, g.stdout(), out.stdout + out.stderr
    rc, live, text = session(["run", "--mem=8", "--no-control", "--no-core", "--record",
                              rec, "--gdb", "127.0.0.1:0", "--gdb-wait", app("nondet")])
    assert rc == 255, text
    assert re.search(r"=> 0x[0-9a-f]+ <rdtsc\+8>:\s+rdtsc", text), text
    assert re.search(r"=> 0x[0-9a-f]+ <rdtsc\+10>:", text), text
    rax_live = re.search(r"\$1 = (0x[0-9a-f]+)", text).group(1)
    rc, replayed, text = session(["replay", "--no-core", "--gdb", "127.0.0.1:0",
                                  "--gdb-wait", rec])
    assert rc == 255, text
    assert replayed == live
    assert re.search(r"\$1 = (0x[0-9a-f]+)", text).group(1) == rax_live
    p = replay(tmp, rec, "--no-core")
    assert p.returncode == 255 and p.stdout == live


@pytest.mark.gdb
def test_timeout_is_replayed_with_the_same_core(app, tmp_path):
    tmp = str(tmp_path)
    disk = os.path.join(tmp, "disk.img")
    with open(disk, "wb") as f:
        f.write(bytes(8192))
    r, rec = record(tmp, app("rrbench"), "spin", "100000000",
                    extra=("--timeout", "0.5", f"--block:storage={disk}"))
    assert r.returncode == 124, r.stderr
    os.unlink(disk)
    p = replay(tmp, rec)
    assert p.returncode == 124, p.stderr
    assert "--timeout expired" in p.stderr
    a, bt_a = gdb_on_core(app("rrbench"), core_in(os.path.join(tmp, "rec")))
    b, bt_b = gdb_on_core(app("rrbench"), core_in(os.path.join(tmp, "rep")))
    assert a and a == b and bt_a == bt_b and "main" in bt_a


def test_a_plain_run_does_not_load_the_recorder(app, tmp_path):
    # The monitor is confined after the run (no dup2 back): the list goes to stderr.
    code = ("import sys\n"
            "from ukdbg.run import run_main\n"
            "run_main(sys.argv[1:])\n"
            "sys.stderr.write('MODULES ' + ' '.join(m for m in sys.modules "
            "if m.startswith('ukdbg.replay')) + '\\n')\n")

    def replay_modules(*argv):
        r = subprocess.run([sys.executable, "-c", code, "--no-control", *argv],
                           capture_output=True, text=True, cwd=ROOT, check=True)
        return r.stderr.split("MODULES", 1)[1].split()
    assert replay_modules(app("hello")) == []
    assert "ukdbg.replay.recorder" in replay_modules("--record", str(tmp_path / "h.rec"),
                                                     app("hello"))


def test_cpuid_is_answered_from_the_recorded_table(app, tmp_path):
    """CPUID exits to KVM, not to ukdbg; the replay hands KVM the recorded table. A
    recording whose table says another vendor makes the replayed guest print that
    vendor, which the recording's checksum of that line catches."""
    import struct as S
    from ukdbg.replay import format as F
    tmp = str(tmp_path)
    r, rec = record(tmp, app("nondet"), extra=("--no-core",))
    vendor = re.search(r"cpu=(\w+)", r.stdout).group(1)
    other = "GenuineIntel" if vendor != "GenuineIntel" else "AuthenticAMD"

    def change(t, b):
        if t != F.R_CPUID:
            return b
        b = bytearray(b)
        nent = S.unpack_from("<I", b, 0)[0]
        for i in range(nent):
            off = 8 + 40 * i
            if S.unpack_from("<I", b, off)[0] == 0:        # leaf 0: the vendor
                v = other.encode()
                S.pack_into("<4s4s4s", b, off + 16, v[0:4], v[8:12], v[4:8])  # ebx ecx edx
        return bytes(b)
    _rewrite(rec, os.path.join(tmp, "cpuid.rec"), change)
    p = replay(tmp, os.path.join(tmp, "cpuid.rec"), "--no-core")
    assert p.returncode == 125, p.stderr
    assert f"cpu={other}" in p.stderr        # the guest's line, in the divergence report
    assert "replay diverged at event" in p.stderr
