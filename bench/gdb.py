#!/usr/bin/env python3
"""bench/gdb.py: figures for ukdbg's gdb stub, driven by the real gdb (prints, asserts nothing).

    .venv/bin/python bench/gdb.py [-n RUNS] [--modes stepi memread bp interrupt packets]
                                  [--baselines native gdbserver] [--qemu]

Each run starts a fresh `ukdbg run --gdb ... --gdb-wait` on a fixture and a fresh
`gdb -batch -x bench/gdb_inside.py`:
  stepi      3,000 x `stepi` from `tick` (a gdb Python loop)         -> steps/s
  memread    `dump binary memory` of 16 MiB (--mem 64)               -> MiB/s
  bp         500 x `continue` to `break tick`                        -> hits/s
  interrupt  SIGINT to gdb while the guest spins (loop), to the stop -> ms
  packets    gdb->stub packets per stepi and per breakpoint hit (remotelogfile)
stepi and bp print, per operation, the CPU time of gdb and of the stub's process (the
monitor, gdbserver) next to the rate: a ping-pong's wall time is about their sum plus
the wake-ups. stepi and bp also run, with the same gdb script, against two baselines built from
bench/native/tick.c (the same loop as the `tick` fixture, gcc -O0 -g):
  native     stock gdb on the Linux process (ptrace): the fastest baseline there is
  gdbserver  the process under gdbserver, gdb attached over TCP (loopback)
Runs of one figure alternate between ukdbg and the baselines (this host's timings
drift); each figure prints ukdbg's ratio to native gdb, median over median.
--qemu also runs QEMU's gdbstub through the peer harness in /work/shared/peers/qemu
(bench/bench_gdb.py, its own guest; needs qemu-system-x86_64) in the same session.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSIDE = os.path.join(ROOT, "bench", "gdb_inside.py")
NATIVE_SRC = os.path.join(ROOT, "bench", "native", "tick.c")
BASELINES = ("native", "gdbserver")
PEER = "/work/shared/peers/qemu/bench/bench_gdb.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixture(name):
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "fixtures")], check=True)
    return os.path.join(ROOT, "fixtures", "build", f"{name}.hvt")


def native_binary(tmp):
    """bench/native/tick.c built with gcc (-O0 -g, frame pointers, as the fixtures)."""
    out = os.path.join(tmp, "tick")
    subprocess.run(["gcc", "-O0", "-g", "-fno-omit-frame-pointer", "-o", out, NATIVE_SRC],
                   check=True)
    return out


def one(mode, env_extra=None, remotelog=False, target="ukdbg", native=None):
    """One measurement: a fresh debuggee (`target`: ukdbg, native or gdbserver) and gdb."""
    app, args, mem = {"interrupt": ("loop", [], 8), "memread": ("tick", ["10"], 64)} \
        .get(mode, ("tick", ["100000"], 8))
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="ukdbg-gdbbench-")
    vmm = None
    try:
        if target == "native":
            exe, addr = native, ""
        elif target == "gdbserver":
            exe, addr = native, f"127.0.0.1:{port}"
            vmm = subprocess.Popen(["gdbserver", "--once", addr, native, *args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            line = b""
            while b"Listening" not in line:      # "Process ... created" comes first
                line = vmm.stderr.readline()
                if not line:
                    return {"ok": False, "error": "gdbserver did not start"}
        else:
            # "ukdbg", or "ukdbg@TREE": the ukdbg of another checkout (before/after
            # figures in one session), on this tree's fixture.
            tree = target.partition("@")[2] or ROOT
            exe, addr = fixture(app), f"127.0.0.1:{port}"
            vmm = subprocess.Popen(
                [sys.executable, "-m", "ukdbg", "run", f"--mem={mem}", "--no-core",
                 "--no-control", "--gdb", addr, "--gdb-wait", exe, *args],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tree)
            line = vmm.stderr.readline()           # "ukdbg: gdb: listening on ..."
            if b"listening" not in line:
                return {"ok": False, "error": line.decode(errors="replace")}
        env = dict(os.environ, BENCH_MODE=mode, BENCH_ADDR=addr,
                   BENCH_PID=str(vmm.pid) if vmm is not None else "",
                   BENCH_ARGS=" ".join(args),
                   BENCH_RESULT=os.path.join(tmp, "r.json"),
                   BENCH_READY=os.path.join(tmp, "ready"),
                   BENCH_DUMP_FILE=os.path.join(tmp, "dump.bin"), **(env_extra or {}))
        if remotelog:
            env["BENCH_REMOTELOG"] = os.path.join(tmp, "remote.log")
        gdbp = subprocess.Popen(["gdb", "-q", "-batch", "-nx", "-x", INSIDE, exe],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        t_sig = None
        if mode == "interrupt":
            while not os.path.exists(env["BENCH_READY"]) and gdbp.poll() is None:
                time.sleep(0.001)
            time.sleep(0.3)
            t_sig = time.time()
            gdbp.send_signal(signal.SIGINT)
        out, _ = gdbp.communicate(timeout=300)
        try:
            with open(env["BENCH_RESULT"]) as f:
                res = json.load(f)
        except (OSError, ValueError):
            res = {"ok": False, "error": out[-600:]}
        if t_sig is not None and "t_stop" in res:
            res["latency_ms"] = (res["t_stop"] - t_sig) * 1000
        if remotelog:
            res["packets"] = count_packets(env["BENCH_REMOTELOG"], res)
        return res
    finally:
        if vmm is not None:
            try:
                vmm.wait(timeout=5)
            except subprocess.TimeoutExpired:
                vmm.kill()
                vmm.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def count_packets(path, res):
    """gdb->stub packets between the two `monitor help` markers, per operation."""
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    pk = re.findall(r"^w \+?\$([^#]*)#", text, re.M)
    marks = [i for i, p in enumerate(pk) if p.startswith("qRcmd,")]
    if len(marks) < 2:
        return None
    between = pk[marks[0] + 1:marks[1]]
    ops = res.get("steps") or res.get("hits") or 1
    kinds = {}
    for p in between:
        k = re.match(r"[a-zA-Z?]*", p).group(0) or p[:1]
        kinds[k] = kinds.get(k, 0) + 1
    return {"per_op": len(between) / ops, "by_kind": kinds}


def summary(values, unit, digits=1):
    if not values:
        return "no successful run"
    med = statistics.median(values)
    return (f"{med:.{digits}f} {unit} (min {min(values):.{digits}f}, max {max(values):.{digits}f}, "
            f"N={len(values)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3, help="runs per figure (default 3)")
    ap.add_argument("--modes", nargs="+", default=["stepi", "memread", "bp", "interrupt",
                                                   "packets"])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--hits", type=int, default=500)
    ap.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES,
                    help="baselines for stepi and bp (default: both; none: ukdbg only)")
    ap.add_argument("--qemu", action="store_true", help="also measure QEMU's gdbstub")
    ap.add_argument("--also-tree", metavar="PATH",
                    help="also measure the ukdbg of another checkout (before/after)")
    args = ap.parse_args()
    if "gdbserver" in args.baselines and not shutil.which("gdbserver"):
        print("  gdbserver: not measured (not installed; scripts/setup.sh installs it)")
        args.baselines.remove("gdbserver")
    print(f"ukdbg gdb stub, gdb {gdb_version()}, {args.n} runs per figure")
    btmp = tempfile.mkdtemp(prefix="ukdbg-gdbbench-native-")
    try:
        native = native_binary(btmp) if args.baselines else None
        for mode in args.modes:
            if mode == "packets":
                for target in ["ukdbg"] + [b for b in args.baselines if b != "native"]:
                    r = one("stepi", {"BENCH_STEPS": "200"}, remotelog=True, target=target,
                            native=native)
                    b = one("bp", {"BENCH_HITS": "100"}, remotelog=True, target=target,
                            native=native)
                    print(f"  {target}: packets per stepi: {r.get('packets')}")
                    print(f"  {target}: packets per breakpoint hit: {b.get('packets')}")
                continue
            env = {"BENCH_STEPS": str(args.steps), "BENCH_HITS": str(args.hits)}
            targets = ["ukdbg"] + ([f"ukdbg@{args.also_tree}"] if args.also_tree else []) \
                + (args.baselines if mode in ("stepi", "bp") else [])
            runs = {t: [] for t in targets}
            for _ in range(args.n):
                for t in targets:
                    runs[t].append(one(mode, env, target=t, native=native))
            key, unit, d = {"stepi": ("per_s", "steps/s", 0),
                            "memread": ("mib_per_s", "MiB/s", 1),
                            "bp": ("per_s", "hits/s", 0),
                            "interrupt": ("latency_ms", "ms", 2)}[mode]
            meds = {}
            for t in targets:
                bad = [r for r in runs[t] if not r.get("ok")]
                vals = [r[key] for r in runs[t] if r.get("ok") and key in r]
                if vals:
                    meds[t] = statistics.median(vals)
                label = mode if t == "ukdbg" else f"  {t}"
                cpu = [(r["gdb_cpu_us"], r.get("stub_cpu_us")) for r in runs[t]
                       if r.get("ok") and "gdb_cpu_us" in r]
                cpu_s = ""
                if cpu:
                    # Where a stop's time goes: gdb's own CPU, and the stub's (the
                    # monitor or gdbserver; the native baseline has none).
                    cpu_s = f"  cpu/op: gdb {statistics.median(c[0] for c in cpu):.0f} us"
                    if all(c[1] is not None for c in cpu):
                        cpu_s += f", stub {statistics.median(c[1] for c in cpu):.0f} us"
                print(f"  {label:12s} {summary(vals, unit, d)}{cpu_s}"
                      + (f"  [{len(bad)} failed: {bad[0].get('error', bad[0])}]"
                         if bad else ""))
            best = {t: max(r[key] for r in runs[t] if r.get("ok") and key in r)
                    for t in meds}
            for t in [t for t in targets if t.startswith("ukdbg")]:
                if t in meds and "native" in meds:
                    # Load only ever slows a run down: the best runs' ratio is the
                    # steadier figure on a shared host.
                    print(f"  {'  ratio':12s} {t} / native gdb = "
                          f"{meds[t] / meds['native']:.2f}x median, "
                          f"{best[t] / best['native']:.2f}x best (goal >= 0.8x)")
    finally:
        shutil.rmtree(btmp, ignore_errors=True)
    if args.qemu:
        qemu(args.n)


def gdb_version():
    try:
        out = subprocess.run(["gdb", "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].split()[-1]
    except (OSError, IndexError):
        return "?"


def qemu(n):
    if not os.path.exists(PEER) or not shutil.which("qemu-system-x86_64"):
        print("  qemu: not measured (needs qemu-system-x86_64 and " + PEER + ")")
        return
    peer = os.path.dirname(os.path.dirname(PEER))
    subprocess.run(["make", "-s", "-C", os.path.join(peer, "guest")], check=False,
                   capture_output=True)
    out = subprocess.run([sys.executable, PEER, "stepi", "memread", "bp", "interrupt",
                          "-n", str(n), "--bp", "hbreak", "--interrupt-kernels", "spin.elf"],
                         capture_output=True, text=True, cwd=os.path.dirname(PEER)).stdout
    print("QEMU 7.2 + KVM gdbstub (peer harness, hbreak; its own guest):")
    for line in out.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "summary" and rec.get("human"):
            print(f"  {rec['mode']:10s} {rec['human']}")


if __name__ == "__main__":
    main()
