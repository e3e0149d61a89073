#!/usr/bin/env python3
"""bench/record.py: what `ukdbg run --record` costs and what `ukdbg replay` gains.

  hypercalls  per hypercall type, the time per call of the `rrbench` fixture's loop
              in-process, plain `ukdbg run` against `--record` (rounds alternate on
              freshly built machines; this host's timings drift). Goal: <= 20 %.
              Then the handlers alone, called directly: the recorder's own cost.
  rdtsc       one RDTSC: plain (no exit on VMX; this PVM host traps it itself), under
              --record (an int3 exit, emulated) and under replay
  replay      wall time of a CPU-bound guest (rrbench spin) and a POLL-bound one
              (time: 100 ms sleeps) recorded, then replayed (subprocesses)
  replay bar  a replay on a pseudo-terminal with its progress bar drawn from the start
              ($UKDBG_PROGRESS_DELAY=0) against the same replay with no bar (delay
              3600): hypercall-, console- and CPU-bound (rrbench walltime, puts, spin);
              wall and CPU time
  startup     `ukdbg run hello` against `ukdbg run --record F hello` (median of runs)
  echo        recording size per 10,000 frames echoed by the `net` fixture on a tap in
              a private network namespace (needs root; --echo 0 skips it), and the
              time per echoed frame with and without --record

usage: bench/record.py [-n 20000] [--rounds 3] [--echo 10000]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ukdbg import run as R  # noqa: E402
from ukdbg.tender import loop  # noqa: E402

APP = os.path.join(ROOT, "fixtures/build/rrbench.hvt")
TYPES = ("walltime", "puts", "poll", "block_write", "block_read")


def inproc(tmp, mode, n, record):
    disk = os.path.join(tmp, "disk.img")
    argv = ["--mem=32", "--no-control", "--no-core", f"--block:storage={disk}"]
    if record:
        argv += ["--record", os.path.join(tmp, "bench.rec")]
    m = R.prepare(argv + [APP, mode, str(n)], warn=print)
    m.console.fds = [os.open(os.devnull, os.O_WRONLY)]
    m.events.arm()
    t = time.perf_counter()
    stop = loop.run(m)
    dt = time.perf_counter() - t
    assert type(stop).__name__ == "Exited" and stop.status == 0, stop
    if record:
        m.recorder.on_end(m, stop)
    os.close(m.console.fds[0])
    m.close()
    return dt


def cli(*args, cwd=None):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ukdbg", *args], capture_output=True,
                       cwd=cwd or ROOT)
    return time.perf_counter() - t, r


def bench_hypercalls(tmp, n, rounds):
    print(f"per hypercall type, {n} calls a run, {rounds} rounds alternating "
          "(median us/call):")
    worst = 0.0
    for mode in TYPES:
        p, rc = [], []
        for _ in range(rounds):
            p.append(inproc(tmp, mode, n, False) / n * 1e6)
            rc.append(inproc(tmp, mode, n, True) / n * 1e6)
        a, b = statistics.median(p), statistics.median(rc)
        over = (b - a) / a * 100
        worst = max(worst, over)
        print(f"  {mode:12s} plain {a:7.2f}   --record {b:7.2f}   overhead {over:+6.1f} %")
    print(f"  worst overhead {worst:+.1f} %  (goal <= 20 %: "
          f"{'met' if worst <= 20 else 'NOT met'})")


def bench_handlers(tmp, n=20000):
    """The recorder's own cost: each handler called directly (no KVM_RUN, no noise
    from exits), plain table entry against the recording wrapper."""
    from ukdbg.tender import abi
    gpa, res = 0x200000, {}
    for record in (False, True):
        argv = ["--mem=32", "--no-control", "--no-core",
                f"--block:storage={os.path.join(tmp, 'disk.img')}"]
        if record:
            argv += ["--record", os.path.join(tmp, "h.rec")]
        m = R.prepare(argv + [APP, "walltime", "1"], warn=print)
        m.console.fds = [os.open(os.devnull, os.O_WRONLY)]
        for nr, st, args in ((1, None, ()), (2, abi.HC_PUTS_ST, (0x201000, 1)),
                             (3, abi.HC_POLL_ST, (0, 0, 0)),
                             (4, abi.HC_BLOCK_ST, (1, 0, 0x202000, 512, 0)),
                             (5, abi.HC_BLOCK_ST, (1, 0, 0x202000, 512, 0))):
            if st is not None:
                m.mem.write(gpa, st.pack(*args))
            fn = m.hypercalls[nr]
            t = time.perf_counter()
            for _ in range(n):
                fn(m, gpa)
            res[(record, nr)] = (time.perf_counter() - t) / n * 1e6
        if record:
            m.recorder.w.flush()
        os.close(m.console.fds[0])
        m.close()
    print("handler alone (no exit), us/call:  " + "   ".join(
        f"{abi.HC_NAMES[nr]} {res[(False, nr)]:.2f} -> {res[(True, nr)]:.2f} "
        f"(+{res[(True, nr)] - res[(False, nr)]:.2f})" for nr in (1, 2, 3, 4, 5)))


def bench_rdtsc(tmp, n, rounds):
    p, rc, rp = [], [], []
    for _ in range(rounds):
        p.append(inproc(tmp, "rdtsc", n, False) / n * 1e6)
        rc.append(inproc(tmp, "rdtsc", n, True) / n * 1e6)
        t, r = cli("replay", "--no-core", os.path.join(tmp, "bench.rec"))
        assert r.returncode == 0, r.stderr
        rp.append(t / n * 1e6)          # includes the replay's start-up
    print(f"one RDTSC ({n} a run, median us): plain {statistics.median(p):.2f}, "
          f"--record (trapped) {statistics.median(rc):.2f}, replay (trapped, "
          f"incl. start-up) {statistics.median(rp):.2f}")


def bench_replay(tmp):
    disk = os.path.join(tmp, "disk.img")
    for what, args in (("CPU-bound (rrbench spin 20000)",
                        [f"--block:storage={disk}", APP, "spin", "20000"]),
                       ("POLL-bound (time 20: 20 x 100 ms)",
                        [os.path.join(ROOT, "fixtures/build/time.hvt"), "20"])):
        rec = os.path.join(tmp, "w.rec")
        t0, r0 = cli("run", "--no-control", "--no-core", *args)
        t1, r1 = cli("run", "--no-control", "--no-core", "--record", rec, *args)
        t2, r2 = cli("replay", "--no-core", rec)
        assert r1.returncode == r2.returncode and r1.stdout == r2.stdout, r2.stderr
        print(f"  {what:36s} plain {t0:6.2f} s  recorded {t1:6.2f} s  replay {t2:6.2f} s "
              f"({t1 / t2:.1f}x the recorded run's speed)")


def on_pty(args, env):
    """`ukdbg ARGS` with stdout and stderr on a pseudo-terminal: (wall s, CPU s, output)."""
    import pty
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import pty_read
    master, slave = pty.openpty()
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "ukdbg", *args], stdin=slave,
                         stdout=slave, stderr=slave, cwd=ROOT,
                         env=dict(os.environ, **env))
    os.close(slave)
    out = b""
    while (chunk := pty_read(master, None)) is not None:
        out += chunk
    os.close(master)
    _pid, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, out[-2000:]
    return time.perf_counter() - t, ru.ru_utime + ru.ru_stime, out


def bench_replay_bar(tmp, n, rounds):
    """Both on a terminal: the bar never shown (delay 3600 s) against the bar drawn
    from the start (delay 0; this includes importing rich, ~50 ms, which a replay
    shorter than the 0.5 s default delay never pays)."""
    disk = os.path.join(tmp, "disk.img")
    for what, args in ((f"hypercall-bound (rrbench walltime {n})", ["walltime", str(n)]),
                       (f"console-bound (rrbench puts {n})", ["puts", str(n)]),
                       ("CPU-bound (rrbench spin 200000)", ["spin", "200000"])):
        rec = os.path.join(tmp, "bar.rec")
        _t, r = cli("run", "--no-control", "--no-core", f"--block:storage={disk}",
                    "--record", rec, APP, *args)
        assert r.returncode == 0, r.stderr
        res = {"3600": [], "0": []}
        for _ in range(rounds):
            for delay in res:
                wall, cpu, out = on_pty(["replay", "--no-core", rec],
                                        {"UKDBG_PROGRESS_DELAY": delay})
                assert (b"replaying" in out) == (delay == "0"), out[-2000:]
                res[delay].append((wall, cpu))
        (aw, ac), (bw, bc) = [(statistics.median(w for w, _ in v),
                               statistics.median(c for _, c in v)) for v in res.values()]
        print(f"  {what:40s} no bar {aw:5.2f} s (CPU {ac:5.2f} s), bar {bw:5.2f} s "
              f"(CPU {bc:5.2f} s): wall {(bw - aw) / aw * 100:+.1f} %, "
              f"CPU {(bc - ac) / ac * 100:+.1f} %")


def bench_startup(tmp, runs=10):
    hello = os.path.join(ROOT, "fixtures/build/hello.hvt")
    a, b = [], []
    for i in range(runs):
        a.append(cli("run", "--no-control", hello)[0])
        b.append(cli("run", "--no-control", "--record", os.path.join(tmp, "h.rec"),
                     hello)[0])
    ma, mb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
    print(f"start-up: ukdbg run hello {ma:.1f} ms, with --record {mb:.1f} ms "
          f"(+{mb - ma:.1f} ms; median of {runs})")


ECHO = r'''
import json, socket, subprocess, sys, time
app, rec, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = ["--record", rec] if rec != "-" else []
p = subprocess.Popen([sys.executable, "-m", "ukdbg", "run", "--no-control",
                      "--net:service=tap0", "--net-mac:service=02:12:34:56:78:9a",
                      *extra, app, str(n)], stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
s.bind(("tap0", 0)); s.settimeout(10)
guest = bytes.fromhex("02123456789a"); host = bytes.fromhex("0200000000aa")
time.sleep(0.5)
t = time.perf_counter()
for i in range(n):
    s.send(guest + host + b"\x88\xb5" + bytes([i & 255]) * (46 + (i * 37) % 900))
    while s.recv(65536)[:6] != host:
        pass
dt = time.perf_counter() - t
p.wait(60)
print(json.dumps({"seconds": dt, "rc": p.returncode}))
'''


def bench_echo(tmp, n):
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("echo: skipped (needs root and iproute2)")
        return
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import tap_netns
    with tap_netns("ukdbg-bench") as ns:
        ex = ["ip", "netns", "exec", ns]
        script = os.path.join(tmp, "echo.py")
        with open(script, "w") as f:
            f.write(ECHO)
        app = os.path.join(ROOT, "fixtures/build/net.hvt")
        rec = os.path.join(tmp, "echo.rec")
        res = {}
        for label, r in (("plain", "-"), ("record", rec)):
            out = subprocess.run(ex + [sys.executable, script, app, r, str(n)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=900,
                                 env=dict(os.environ, PYTHONPATH=ROOT))
            res[label] = json.loads(out.stdout.strip().splitlines()[-1])
            assert res[label]["rc"] == 0, out.stderr
        size = os.path.getsize(rec)
        t2, r2 = cli("replay", "--no-core", rec)
        assert r2.returncode == 0, r2.stderr
        print(f"echo: {n} frames (60-945 bytes): recording {size / 1024:.0f} KiB = "
              f"{size / n * 10000 / 1024:.0f} KiB per 10,000 frames; "
              f"{res['plain']['seconds'] / n * 1e6:.0f} us/frame plain, "
              f"{res['record']['seconds'] / n * 1e6:.0f} us/frame recorded; replay "
              f"{t2:.2f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="hypercalls a run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--echo", type=int, default=10000, help="frames to echo (0: skip)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ukdbg-bench-record-")
    try:
        with open(os.path.join(tmp, "disk.img"), "wb") as f:
            f.write(bytes(8192))
        bench_hypercalls(tmp, a.n, a.rounds)
        bench_handlers(tmp)
        bench_rdtsc(tmp, max(1000, a.n // 10), a.rounds)
        print("replay against the recorded run (wall time, subprocesses):")
        bench_replay(tmp)
        print(f"replay on a terminal, with and without its progress bar (median of "
              f"{a.rounds}, alternating):")
        bench_replay_bar(tmp, a.n, a.rounds)
        bench_startup(tmp)
        if a.echo:
            bench_echo(tmp, a.echo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
