"""Golden outputs of every inspector command on the cores of the crash fixtures.

Each fixture's core (made by the real `ukdbg run --mem=8`) is opened and a fixed list
of commands runs; the plain-text rendering (what `ukdbg core CORE -c ...` prints when
stdout is not a terminal) must equal tests/e2e/golden/inspect/<name>.txt, after the
temporary directory, the monitor's pid and the checkout path are replaced by <TMP>,
<PID> and <ROOT>.

Addresses in the goldens come from the fixture images: rebuilding the fixtures with
other sources or another compiler changes them. Regenerate the goldens, review the
diff, and commit:

    UKDBG_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/e2e/test_inspect_golden.py

That run always fails (each golden test names its file, CHANGED or unchanged), so
regenerating can never make a test pass; run again without the variable.

Independently of the goldens, tests/e2e/test_inspect_gdb.py checks the same commands'
substance against stock gdb, and the last test here against values computed from the
ELF images.
"""

import os
import re
import time

import pytest

from helpers import ROOT
from inspect_support import CRASHES, app_path, core_dir, core_of

from ukdbg.inspect import render, report
from ukdbg.inspect.commands import execute
from ukdbg.inspect.session import open_core

pytestmark = pytest.mark.kvm
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "inspect")
REGEN = bool(os.environ.get("UKDBG_REGEN_GOLDEN"))


def commands(name):
    return ["info", "bt", "frame 1", "regs", "x/8xg $rsp", "x/16xb $pc", "disas",
            "sym main", "sym $pc", "console", "mem", "history"]


def transcript(core, cmds):
    """What `ukdbg core CORE -c CMDS` prints, plus the crash report, normalized."""
    s = open_core(core)
    out = []
    try:
        for c in cmds:
            out.append(f"(ukdbg) {c}\n")
            out.append(render.plain(execute(s, c)))
        out.append("(ukdbg core --report)\n")
        out.append(render.plain(report.build(s, core=s.facts.core_path)))
    finally:
        s.close()
    return normalize("".join(out), core)


def normalize(text, core):
    pid = re.search(r"\.(\d+)\.core", os.path.basename(core)).group(1)
    text = text.replace(core_dir(), "<TMP>").replace(ROOT, "<ROOT>")
    # Only where a pid is printed (core names, "pid N"): a size can equal the pid.
    text = re.sub(rf"\.{pid}\.core", ".<PID>.core", text)
    text = re.sub(rf"\bpid {pid}\b", "pid <PID>", text)
    # The guest keeps the wall-clock time (ns) in memory: a value within a day of now.
    now = time.time_ns()

    def walltime(m):
        v = int(m.group(0), 16)
        return "<WALLTIME>" if abs(v - now) < 86400 * 10**9 else m.group(0)
    text = re.sub(r"0x[0-9a-f]{15,16}\b", walltime, text)
    # The flight recorder's times since the guest's start, and WALLTIME's results.
    text = re.sub(r"\+\d+\.\d{6}s\b", "+<T>s", text)
    return re.sub(r"nsecs=\d+", "nsecs=<WALLTIME>", text)


def check(name, text):
    path = os.path.join(GOLDEN, f"{name}.txt")
    if REGEN:
        # A regeneration run never passes: it writes the files and fails, naming the
        # ones that changed, so a wrong output cannot become green by regenerating.
        old = None
        if os.path.exists(path):
            with open(path) as f:
                old = f.read()
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        pytest.fail(f"UKDBG_REGEN_GOLDEN: {os.path.relpath(path, ROOT)} "
                    f"{'unchanged' if old == text else 'CHANGED: review the diff'}; "
                    "rerun without UKDBG_REGEN_GOLDEN to test", pytrace=False)
    assert os.path.exists(path), f"no golden {path}: run with UKDBG_REGEN_GOLDEN=1"
    with open(path) as f:
        want = f.read()
    assert text == want, f"{name}: output differs from {path} (see the module docstring)"


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_golden(name):
    core, _ = core_of(name)
    check(name, transcript(core, commands(name)))


def test_golden_help_and_errors():
    core, _ = core_of("nullwrite")
    s = open_core(core)
    out = []
    from ukdbg.inspect.cli import run_one
    for c in ("help", "help x", "frame 99", "x/8q $rsp", "x nosuch", "x $nosuch",
              "disas 0,+0", "sym", "bogus", "bt 2", "x/4xg 0xfffffffffffff000",
              "x/s rt_trap_names", "x/3dw $rsp", "x/4c $rsp", "x/2i $pc", "f 2",
              "regs", "disas", "console 1"):
        view, err = run_one(s, c)
        out.append(f"(ukdbg) {c}\n")
        out.append(err + "\n" if err else render.plain(view))
    s.close()
    check("nullwrite-help-and-errors", normalize("".join(out), core))


def test_goldens_agree_with_the_elf():
    """What the goldens pin down, recomputed from the images (nm, addr2line), so a
    regenerated golden cannot hide a wrong symbol or line."""
    import subprocess
    # (not badhypercall: binutils 2.40's addr2line names the wrong file for code from
    # a header in a DWARF 5 unit there; gdb and ukdbg agree on rt/rt.h)
    for name in ("nullwrite", "recursion", "regs", "abort", "divzero"):
        app, _args, func, sig = CRASHES[name]
        core, _ = core_of(name)
        s = open_core(core)
        pc = s.regs.rip
        s.close()
        text = transcript(core, ["sym $pc", "bt 2", "info"])
        nm = subprocess.run(["nm", "-n", "-S", app_path(app)], capture_output=True,
                            text=True).stdout
        # the sized function holding pc (as gdb's `info symbol`)
        (addr, sym), = [(int(f[0], 16), f[3]) for f in (ln.split() for ln in nm.splitlines())
                        if len(f) == 4 and f[2] in "Tt"
                        and int(f[0], 16) <= pc < int(f[0], 16) + int(f[1], 16)]
        assert f"{pc:#x} is {sym}+{pc - addr:#x} in .text" in text, text
        out = subprocess.run(["addr2line", "-f", "-i", "-e", app_path(app), f"{pc:#x}"],
                             capture_output=True, text=True).stdout.split("\n")
        # innermost first: function, file:line [, caller of the inlined code, ...]
        first = (out[0], os.path.relpath(out[1].split()[0].rsplit(":", 1)[0],
                                         os.path.join(ROOT, "fixtures")),
                 out[1].split()[0].rsplit(":", 1)[1])
        assert first[0] == func
        assert f"#0  {pc:#x} {func}" in text and f"at {first[1]}:{first[2]}" in text, text
        assert f"({sig})" in text
