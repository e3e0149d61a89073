#!/usr/bin/env python3
"""bench/boot.py: boot-to-exit time of `ukdbg run hello`, next to `python -c pass`.

Runs the two commands alternately (A, B, A, B, ...; this host's timings drift), N times
each, and prints medians plus a breakdown of ukdbg's part:
  interpreter start   `python -c pass`
  imports             `python -c 'import <the run path>'` minus the interpreter start
  VM set-up           in-process: options, image, VM, memory, vCPU, modules (median)
  guest run           in-process: first KVM_RUN to the guest's HALT (median)
It also checks that the run path imports nothing outside the standard library.

The seccomp sandbox's start-up cost is measured apart (sandbox_cost), on its own lines.

usage: bench/boot.py [-n 20] [--app fixtures/build/hello.hvt] [--sandbox-only]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PATH_IMPORTS = ("ukdbg.cli", "ukdbg.run", "ukdbg.tender.modules.core",
                    "ukdbg.tender.traps", "ukdbg.tender.debug")


def timed(cmd, env):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = (time.perf_counter() - t) * 1000
    if r.returncode != 0:
        sys.exit(f"{cmd} failed ({r.returncode}): {r.stderr.decode()[-300:]}")
    return dt


def stats(xs):
    return f"{statistics.median(xs):7.2f} ms  (min {min(xs):.2f}, max {max(xs):.2f}, N={len(xs)})"


def in_process(app, n):
    """Medians of the set-up and guest-run phases, measured inside one interpreter."""
    code = f"""
import sys, time, os
from ukdbg import run as R
res = []
for i in range({n}):
    marks = [("start", time.perf_counter())]
    fd = os.dup(1); nul = os.open(os.devnull, os.O_WRONLY); os.dup2(nul, 1)
    try:
        R.run_main(["--no-sandbox", {app!r}],
                   mark=lambda p: marks.append((p, time.perf_counter())))
    finally:
        os.dup2(fd, 1); os.close(fd); os.close(nul)
    res.append({{p: (t - marks[i][1]) * 1000 for i, (p, t) in enumerate(marks[1:])}})
leaked = sorted(m for m in sys.modules if m.split('.')[0] in
                ('rich', 'elftools', 'capstone', 'prompt_toolkit', 'pygdbmi', 'ctypes',
                 'enum', 're', 'json', 'argparse', 'threading', 'socket'))
import json
print(json.dumps({{"res": res, "leaked": leaked}}))
"""
    import json
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        sys.exit(out.stderr)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["res"], data["leaked"]


def sandbox_cost(app, n, env, ukdbg):
    """The seccomp filter's start-up cost (ukdbg/sandbox.py), three ways:
      in-process   import ukdbg.sandbox + install() in a fresh interpreter, with the
                   compiled program cached (every run after the first since boot)
      cold         the same with an empty cache directory: libseccomp compiles
                   (pyseccomp import, ldconfig, compile, seccomp_load), once per policy
      end to end   `ukdbg run hello` minus `ukdbg run --no-sandbox hello`, alternating
    Returns (cached ms list, cold ms list, with list, without list, allowlist size)."""
    import tempfile
    code = ("import time; t = time.perf_counter(); from ukdbg import sandbox; "
            "how = sandbox.install(); print(how, (time.perf_counter() - t) * 1000, "
            "len(__import__('ukdbg.sandbox_policy').sandbox_policy.POLICY))")

    def one(e):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=e, cwd=ROOT)
        if r.returncode:
            sys.exit(f"sandbox install failed: {r.stderr[-300:]}")
        how, ms, size = r.stdout.split()
        return how, float(ms), int(size)
    one(env)                                  # make sure the cache exists
    cached, cold, size = [], [], 0
    for _ in range(n):
        how, ms, size = one(env)
        assert how == "cached", how
        cached.append(ms)
    for _ in range(min(n, 5)):
        with tempfile.TemporaryDirectory() as d:
            os.chmod(d, 0o700)
            how, ms, _ = one(dict(env, XDG_CACHE_HOME=d))
            assert how == "compiled", how
            cold.append(ms)
    on, off = [], []
    for _ in range(n):
        on.append(timed([ukdbg, "run", app], env))
        off.append(timed([ukdbg, "run", "--no-sandbox", app], env))
    return cached, cold, on, off, size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--app", default=os.path.join(ROOT, "fixtures/build/hello.hvt"))
    ap.add_argument("--sandbox-only", action="store_true",
                    help="only the seccomp sandbox's lines")
    a = ap.parse_args()
    py = sys.executable
    ukdbg = os.path.join(os.path.dirname(py), "ukdbg")
    if not os.path.exists(ukdbg):
        sys.exit("the ukdbg console script is not installed in this venv (pip install -e .)")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # Installed packages have their bytecode compiled; make sure ours is too.
    subprocess.run([py, "-m", "compileall", "-q", os.path.join(ROOT, "ukdbg")], check=True)
    if a.sandbox_only:
        return print_sandbox(a, env, ukdbg)
    imports = [py, "-c", "import " + ", ".join(RUN_PATH_IMPORTS)]
    for _ in range(3):        # warm the page cache
        timed([py, "-c", "pass"], env), timed([ukdbg, "run", a.app], env)
    base, run, imp = [], [], []
    for _ in range(a.n):
        base.append(timed([py, "-c", "pass"], env))
        run.append(timed([ukdbg, "run", a.app], env))
        imp.append(timed(imports, env))
    phases, leaked = in_process(a.app, a.n)
    setup = [p["setup"] for p in phases]
    guest = [p["run"] for p in phases]
    d = statistics.median(run) - statistics.median(base)
    print(f"boot to exit of {os.path.relpath(a.app, ROOT)}, {a.n} runs each, alternating")
    print(f"  python -c pass          {stats(base)}")
    print(f"  ukdbg run hello         {stats(run)}")
    print(f"  difference (median)     {d:7.2f} ms   target <= 8 ms: "
          f"{'met' if d <= 8 else 'NOT met'}")
    print("breakdown of ukdbg run:")
    print(f"  interpreter start       {statistics.median(base):7.2f} ms")
    print(f"  imports                 {statistics.median(imp) - statistics.median(base):7.2f} ms")
    print(f"  VM set-up               {statistics.median(setup):7.2f} ms")
    print(f"  guest run               {statistics.median(guest):7.2f} ms")
    print(f"non-stdlib or heavy stdlib modules on the run path: {leaked or 'none'}")
    # The seccomp sandbox (issue 9): its own lines, so the breakdown above stays as is.
    print_sandbox(a, env, ukdbg)


def print_sandbox(a, env, ukdbg):
    cached, cold, on, off, size = sandbox_cost(a.app, a.n, env, ukdbg)
    dd = statistics.median(on) - statistics.median(off)
    print(f"seccomp sandbox ({size} syscalls allowed):")
    print(f"  install, cached program {stats(cached)}   target <= 2 ms: "
          f"{'met' if statistics.median(cached) <= 2 else 'NOT met'}")
    print(f"  install, cold (compile) {stats(cold)}   (once per policy and user)")
    print(f"  ukdbg run hello         {stats(on)}")
    print(f"  ... --no-sandbox        {stats(off)}")
    print(f"  difference (median)     {dd:7.2f} ms")


if __name__ == "__main__":
    main()
