#!/usr/bin/env python3
"""bench/control.py: what the control socket costs and how fast it answers.

  start-up   `ukdbg run hello` with the socket (the default) vs --no-control,
             alternating, N runs each (the socket opens 10 ms after start: hello ends
             sooner, so this is the price of the module and its opener thread)
  ps         `ukdbg ps` wall time with K unikernels running, all busy (`loop`) and all
             sleeping in POLL (`time`), 5 runs each
  status     one status request's round trip to a monitor whose guest is busy

usage: bench/control.py [-n 30] [-k 20]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
UKDBG = os.path.join(os.path.dirname(sys.executable), "ukdbg")
APPS = os.path.join(ROOT, "fixtures", "build")


def timed(cmd, env):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    if r.returncode:
        sys.exit(f"{cmd} failed: {r.stderr.decode()[-300:]}")
    return (time.perf_counter() - t) * 1000


def start_up(n, env):
    hello = os.path.join(APPS, "hello.hvt")
    on, off = [], []
    for _ in range(3):
        timed([UKDBG, "run", hello], env)
    for _ in range(n):
        on.append(timed([UKDBG, "run", hello], env))
        off.append(timed([UKDBG, "run", "--no-control", hello], env))
    return statistics.median(on), statistics.median(off)


def with_monitors(k, app, args, env, rt):
    procs = [subprocess.Popen([UKDBG, "run", "--mem=4", os.path.join(APPS, app), *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
             for _ in range(k)]
    try:
        deadline = time.monotonic() + 60
        d = os.path.join(rt, "ukdbg")
        while not os.path.isdir(d) or len(os.listdir(d)) < k:
            if time.monotonic() > deadline:
                sys.exit("the monitors did not all open their sockets")
            time.sleep(0.05)
        time.sleep(0.5)
        walls = [timed([UKDBG, "ps"], env) for _ in range(5)]
        from ukdbg.control import client
        lat = []
        for p in procs:
            t = time.perf_counter()
            client.request(p.pid, "status")
            lat.append((time.perf_counter() - t) * 1000)
        return walls, lat
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=30, help="start-up runs of each kind")
    ap.add_argument("-k", type=int, default=20, help="unikernels at once")
    a = ap.parse_args()
    if not os.path.exists(UKDBG):
        sys.exit("the ukdbg console script is not installed in this venv (pip install -e .)")
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "ukdbg")],
                   check=True)
    rt = tempfile.mkdtemp(prefix="ukbench")
    env = dict(os.environ, XDG_RUNTIME_DIR=rt)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["XDG_RUNTIME_DIR"] = rt
    try:
        on, off = start_up(a.n, env)
        print(f"start-up, `ukdbg run hello`, median of {a.n} alternating runs")
        print(f"  control socket on (default)  {on:7.2f} ms")
        print(f"  --no-control                 {off:7.2f} ms")
        print(f"  difference                   {on - off:+7.2f} ms")
        for label, app, args in (("busy (loop)", "loop.hvt", []),
                                 ("sleeping in POLL (time)", "time.hvt", ["1000000"])):
            walls, lat = with_monitors(a.k, app, args, env, rt)
            print(f"{a.k} unikernels at once, {label}, on {os.cpu_count()} CPUs")
            print(f"  `ukdbg ps` wall time        median {statistics.median(walls):6.1f} ms "
                  f"(runs: {', '.join(f'{w:.0f}' for w in walls)})")
            print(f"  one status round trip       median {statistics.median(lat):6.1f} ms, "
                  f"max {max(lat):.1f} ms")
    finally:
        shutil.rmtree(rt, ignore_errors=True)


if __name__ == "__main__":
    main()
