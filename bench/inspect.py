#!/usr/bin/env python3
"""bench/inspect.py: what the crash report and `ukdbg core` cost.

  crash report   `ukdbg run nullwrite` (a #PF, core written) with the report module and
                 without it (the same command with modules.report taken out of MODULES),
                 run alternately; the difference of the medians is what the report adds
                 (target <= 300 ms)
  ukdbg core     `ukdbg core CORE --report` on the core of a 512 MiB guest
                 (target <= 1 s), and `-c 'info; bt; regs; disas'` for comparison
  breakdown      in one interpreter: importing the inspector, then building the report
                 (symbols, DWARF, CFI, unwinding, disassembly) on the crashed machine

usage: bench/inspect.py [-n 10] [--app fixtures/build/nullwrite.hvt]
"""

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = """
import sys
from ukdbg import run as R
if sys.argv[1] == "without":
    R.MODULES = tuple(m for m in R.MODULES if m[0] != "tender.modules.report")
sys.stdout.flush()
sys.exit(R.run_main(sys.argv[2:]))
"""


def timed(cmd, expect=None):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    dt = (time.perf_counter() - t) * 1000
    if expect is not None and r.returncode != expect:
        sys.exit(f"{cmd} exited {r.returncode}: {r.stderr.decode()[-400:]}")
    return dt, r.stderr.decode()


def stats(xs):
    return f"{statistics.median(xs):8.1f} ms  (min {min(xs):.1f}, max {max(xs):.1f}, " \
        f"N={len(xs)})"


def in_process(app):
    """(import ms, report ms) measured inside one interpreter on a crashed machine."""
    code = f"""
import os, sys, time, json
sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from inspect_support import boot
m, stop = boot({app!r})
t0 = time.perf_counter()
from ukdbg.tender.modules import report
import ukdbg.inspect.report, ukdbg.inspect.render, ukdbg.inspect.symbols
import elftools.elf.elffile, capstone, rich.text
t1 = time.perf_counter()
text = report.render(m, stop)
t2 = time.perf_counter()
print(json.dumps([(t1 - t0) * 1000, (t2 - t1) * 1000, len(text.splitlines())]))
"""
    import json
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT)
    if r.returncode:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--app", default=os.path.join(ROOT, "fixtures/build/nullwrite.hvt"))
    a = ap.parse_args()
    py = sys.executable
    tmp = tempfile.mkdtemp(prefix="ukdbg-bench-")
    try:
        def run(variant, mem=8):
            d = tempfile.mkdtemp(dir=tmp)
            return timed([py, "-c", RUN, variant, f"--mem={mem}", "--core-dir", d,
                          a.app], expect=255)
        for _ in range(2):                      # warm the page cache
            run("with"), run("without")
        with_r, without_r = [], []
        for _ in range(a.n):
            with_r.append(run("with")[0])
            without_r.append(run("without")[0])
        _, err = run("with")
        assert "faulting instruction:" in err, err

        # a 512 MiB guest's core
        d = tempfile.mkdtemp(dir=tmp)
        timed([py, "-m", "ukdbg", "run", "--core-dir", d, a.app], expect=255)
        core = glob.glob(os.path.join(d, "*.core"))[0]
        st = os.stat(core)
        report_t, cmds_t = [], []
        for _ in range(a.n):
            report_t.append(timed([py, "-m", "ukdbg", "core", core, "--report"], 0)[0])
            cmds_t.append(timed([py, "-m", "ukdbg", "core", core, "-c",
                                 "info; bt; regs; disas"], 0)[0])
        imp, build, lines = in_process(a.app)
    finally:
        import shutil
        shutil.rmtree(tmp, True)

    d = statistics.median(with_r) - statistics.median(without_r)
    name = os.path.relpath(a.app, ROOT)
    print(f"crash report: `ukdbg run --mem=8 {name}` (#PF, core written), {a.n} runs each,"
          " alternating")
    print(f"  without the report        {stats(without_r)}")
    print(f"  with the report           {stats(with_r)}")
    print(f"  added by the report       {d:8.1f} ms   target <= 300 ms: "
          f"{'met' if d <= 300 else 'NOT met'}")
    print(f"ukdbg core on the core of a 512 MiB guest ({st.st_size >> 20} MiB file, "
          f"{st.st_blocks * 512 >> 10} KiB allocated)")
    m = statistics.median(report_t)
    print(f"  --report                  {stats(report_t)}   target <= 1000 ms: "
          f"{'met' if m <= 1000 else 'NOT met'}")
    print(f"  -c 'info; bt; regs; disas' {stats(cmds_t)}")
    print("breakdown of the report in one interpreter (crashed machine in memory):")
    print(f"  importing the inspector   {imp:8.1f} ms  (pyelftools, capstone, rich)")
    print(f"  building and rendering    {build:8.1f} ms  ({lines} lines: symbols, DWARF "
          "lines, CFI, unwinding, disassembly)")


if __name__ == "__main__":
    main()
