#!/usr/bin/env python3
"""bench/gdb_floor.py: the best `ukdbg / native gdb` ratio stock gdb can reach on this host.

bench/gdb.py measures stock gdb stepping (and hitting breakpoints) through ukdbg's stub
and on a native process. This bench measures what such a figure is made of, in the same
run (prints, asserts nothing):

  native gdb     wall time per operation of stock gdb on the native process, and the
                 CPU time gdb itself spends per operation through ukdbg (bench/gdb.py)
  KVM            one single-step KVM_RUN, in process, on the `tick` fixture (no gdb, no
                 stub: the kvm layer alone); a breakpoint hit needs at least two exits
                 (the step off the breakpoint, the run to the next hit)
  round trip     a 1-byte ping-pong between two processes on one CPU (bench/transport.py):
                 the cheapest a packet's round trip can be
  minimal client gdb's exact packets per operation (stepi: vCont;s, m, qXfer:threads;
                 breakpoint hit: qXfer:threads, z0, vCont;s, Z0, vCont;c), sent to
                 ukdbg's stub by a client that does nothing else, on the stub's CPU and on
                 the other one: all that the stub costs per operation, with its round trips

Since stock gdb spends its own CPU time on every operation whatever the stub does:
  floor          gdb's CPU + the KVM exits + one same-CPU round trip per packet: no
                 stub could do better with these packets on this kernel
  today          gdb's CPU + the minimal client's time on one CPU: the stub as it is,
                 if gdb and the stub shared a CPU (the scheduler decides; they do not)
and each is printed as native's wall time over it, the best ratio it allows.

usage: bench/gdb_floor.py [-n 3] [--ops 2000]
"""

import argparse
import importlib.util
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                  os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


G = _bench("gdb")
T = _bench("transport")
APP = os.path.join(ROOT, "fixtures", "build", "tick.hvt")
PACKETS = {"stepi": 3, "bp": 5}


def breakpoint_address() -> int:
    """Where `break tick` puts its breakpoint (after the prologue), as gdb says."""
    out = subprocess.run(["gdb", "-batch", "-nx", "-ex", "break tick", APP],
                         capture_output=True, text=True).stdout
    return int(re.search(r"Breakpoint 1 at (0x[0-9a-f]+)", out).group(1), 16)


def kvm_step_us(bp: int, n: int) -> float:
    """One single-step KVM_RUN at `tick`, in process (median of 5 rounds of n)."""
    from ukdbg.kvm import exits, uapi
    from ukdbg.run import prepare
    m = prepare(["--mem=8", "--no-core", "--no-control", "--no-sandbox", APP, "100000"])
    try:
        m.events.arm()
        v = m.vcpu
        on = uapi.KVM_GUESTDBG_ENABLE
        # a hardware breakpoint at tick (DR7 L0, execute), then single steps
        v.set_guest_debug(on | uapi.KVM_GUESTDBG_USE_HW_BP, (bp, 0, 0, 0, 0, 0, 0, 0x1))
        # The hypercalls on the way are not answered (none matters before the loop,
        # and tick() makes none).
        while not isinstance(v.run(), exits.Debug):
            pass
        v.set_guest_debug(on | uapi.KVM_GUESTDBG_SINGLESTEP)
        rounds = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                v.run()
            rounds.append((time.perf_counter() - t) / n * 1e6)
        return statistics.median(rounds)
    finally:
        m.close()


def client_us(mode: str, bp: int, cpus, n: int) -> float:
    """Per operation: gdb's packets for `mode` from a minimal client (cpus: the stub's
    CPU, the client's CPU), best of 3 rounds of n after a warm-up."""
    tmp = tempfile.mkdtemp(prefix="ukdbg-floor-")
    path = os.path.join(tmp, "gdb.sock")
    vmm = subprocess.Popen(
        ["taskset", "-c", str(cpus[0]), sys.executable, "-m", "ukdbg", "run", "--mem=8",
         "--no-core", "--no-control", "--gdb", f"unix:{path}", "--gdb-wait", APP, "100000"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    home = os.sched_getaffinity(0)
    s = socket.socket(socket.AF_UNIX)
    try:
        if b"listening" not in vmm.stderr.readline():
            raise RuntimeError("ukdbg did not start")
        os.sched_setaffinity(0, {cpus[1]})
        s.connect(path)
        buf = bytearray()

        def rpc(p: bytes) -> bytes:
            s.sendall(b"$%s#%02x" % (p, sum(p) & 0xFF))
            while True:
                i = buf.find(b"$")
                j = buf.find(b"#", i + 1) if i >= 0 else -1
                if j >= 0 and len(buf) >= j + 3:
                    pkt = bytes(buf[i + 1:j])
                    del buf[:j + 3]
                    return pkt
                d = s.recv(65536)
                if not d:
                    raise RuntimeError("the stub hung up")
                buf.extend(d.replace(b"+", b"") if len(buf) == 0 else d)

        rpc(b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+")
        rpc(b"QStartNoAckMode")
        rpc(b"?")
        rpc(b"Z0,%x,1" % bp)
        stop = rpc(b"vCont;c:p1.-1")
        if not stop.startswith(b"T05"):
            raise RuntimeError(f"no stop at tick: {stop[:40]!r}")
        sp = int.from_bytes(bytes.fromhex(stop.split(b"07:")[1][:16].decode()), "little")
        if mode == "stepi":
            rpc(b"z0,%x,1" % bp)
            ops = [b"vCont;s:p1.1;c:p1.-1", b"m%x,40" % (sp & ~0x3F),
                   b"qXfer:threads:read::0,1000"]
        else:
            ops = [b"qXfer:threads:read::0,1000", b"z0,%x,1" % bp, b"vCont;s:p1.1",
                   b"Z0,%x,1" % bp, b"vCont;c:p1.-1"]
        for _ in range(200):
            for p in ops:
                rpc(p)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(n):
                for p in ops:
                    last = rpc(p)
            best = min(best, (time.perf_counter() - t) / n * 1e6)
        if not last.startswith((b"T05", b"l")):
            raise RuntimeError(f"unexpected reply {last[:40]!r}")
        s.sendall(b"$vKill;1#6e")
        return best
    finally:
        os.sched_setaffinity(0, home)
        s.close()
        try:
            vmm.wait(timeout=10)
        except subprocess.TimeoutExpired:
            vmm.kill()
            vmm.wait()
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3, help="runs of each gdb figure")
    ap.add_argument("--ops", type=int, default=2000, help="operations per client round")
    a = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    other = (cpus[0], cpus[1]) if len(cpus) > 1 else None
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "fixtures")], check=True)
    bp = breakpoint_address()
    tmp = tempfile.mkdtemp(prefix="ukdbg-floor-native-")
    try:
        native = G.native_binary(tmp)
        env = {"BENCH_STEPS": "3000", "BENCH_HITS": "500"}
        print(f"stock gdb {G.gdb_version()} through ukdbg's stub against native gdb, "
              f"this host ({len(cpus)} CPUs)")
        kvm = kvm_step_us(bp, a.ops)
        rtt = statistics.median(T.round_trip_us("unix", (cpus[0], cpus[0]), 5000)
                                for _ in range(3))
        for mode in ("stepi", "bp"):
            nat, via = [], []
            for _ in range(a.n):
                nat.append(G.one(mode, env, target="native", native=native))
                via.append(G.one(mode, env, target="ukdbg"))
            nat_us = 1e6 / statistics.median(r["per_s"] for r in nat if r.get("ok"))
            gdb_cpu = statistics.median(r["gdb_cpu_us"] for r in via if r.get("ok"))
            via_us = 1e6 / statistics.median(r["per_s"] for r in via if r.get("ok"))
            one_cpu = client_us(mode, bp, (cpus[0], cpus[0]), a.ops)
            two = client_us(mode, bp, other, a.ops) if other else None
            exits = 1 if mode == "stepi" else 2
            floor = gdb_cpu + exits * kvm + PACKETS[mode] * rtt
            today = gdb_cpu + one_cpu
            name = "stepi" if mode == "stepi" else "breakpoint hit"
            print(f"{name}:")
            print(f"  native gdb            {nat_us:6.0f} us/op   (ukdbg today: {via_us:.0f} "
                  f"us/op, {nat_us / via_us:.2f}x)")
            print(f"  gdb's own CPU         {gdb_cpu:6.0f} us/op   (through ukdbg)")
            print(f"  KVM exits             {exits * kvm:6.0f} us/op   ({exits} x "
                  f"{kvm:.0f} us, single-step KVM_RUN)")
            print(f"  round trips           {PACKETS[mode] * rtt:6.0f} us/op   "
                  f"({PACKETS[mode]} packets x {rtt:.1f} us, one CPU)")
            print(f"  minimal client        {one_cpu:6.0f} us/op on the stub's CPU"
                  + (f", {two:.0f} us/op from the other CPU" if two else ""))
            print(f"  floor                 {floor:6.0f} us/op   -> at best "
                  f"{nat_us / floor:.2f}x native")
            print(f"  today, one CPU        {today:6.0f} us/op   -> at best "
                  f"{nat_us / today:.2f}x native")
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
