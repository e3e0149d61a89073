"""Reverse execution on a replay (issue 11 over issue 10): `ukdbg replay FILE --gdb`
with the real gdb, on a recording of the non-deterministic `nondet` fixture (RDTSC,
RDRAND, WALLTIME, POLL; corrupt() overwrites the global pointer `victim` in an
input-dependent iteration and use_victim() dereferences it in the next one: #PF)."""

import os
import re
import subprocess
import sys

import pytest

from gdbguest import Guest, app_path
from helpers import ROOT, Background

pytestmark = [pytest.mark.kvm, pytest.mark.gdb]


@pytest.fixture(scope="module")
def recording(fixtures_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    rec = str(d / "nondet.rec")
    r = subprocess.run([sys.executable, "-m", "ukdbg", "run", "--no-core", "--no-control",
                        "--record", rec, app_path("nondet")], capture_output=True,
                       text=True, cwd=str(d), timeout=120)
    assert r.returncode == 255 and "use_victim" in r.stderr, r.stderr
    return rec, r.stdout


class ReplayGuest(Guest):
    """`ukdbg replay --gdb 127.0.0.1:0 --gdb-wait FILE`."""

    def __init__(self, rec, app="nondet"):
        self.app = app_path(app)
        Background.__init__(self, ["replay", "--no-core", "--gdb", "127.0.0.1:0",
                                   "--gdb-wait", rec], prefix="ukrev", cwd=ROOT)
        self.address = self.wait_for_text(r"listening on (\S+?)[:,]? ", self.stderr)


def test_killer_case_who_wrote_the_bad_pointer(recording):
    rec, _ = recording
    with ReplayGuest(rec) as g:
        out = g.gdb("continue", "print $pc", "watch victim", "reverse-continue", "bt",
                    "x/i $pc", "continue", "continue", "print $pc")
        crash1, _, rest = out.partition("Hardware watchpoint 1: victim")
        assert "Program received signal SIGSEGV" in crash1, out
        assert re.search(r"in use_victim \(\) at apps/nondet.c:\d+\n\d+\s+victim->count\+\+;",
                         crash1), out
        pc1 = re.search(r"\$1 = .*(0x[0-9a-f]+) <use_victim\+\d+>", out).group(1)
        # Going back: stopped before the write, in corrupt(), with both values.
        assert re.search(r"Old value = \(struct item \*\) 0x40000[0-9a-f]+\s+"
                         r"New value = \(struct item \*\) 0x[0-9a-f]+ <items>", rest), out
        assert re.search(r"corrupt \(i=\d+\) at apps/nondet.c:\d+\n\d+\s+victim = \(struct item",
                         rest), out
        assert re.search(r"#0\s+corrupt \(i=\d+\) at apps/nondet.c:\d+", rest), out
        assert re.search(r"=> 0x[0-9a-f]+ <corrupt\+\d+>:\s+mov\s+%rax,0x[0-9a-f]+\(%rip\)"
                         r"\s+# 0x[0-9a-f]+ <victim>", rest), out
        # Forward again: the write (the watchpoint, as forward), then the same crash.
        assert re.search(r"Old value = \(struct item \*\) 0x[0-9a-f]+ <items>\s+"
                         r"New value = \(struct item \*\) 0x40000[0-9a-f]+", rest), out
        assert rest.count("Program received signal SIGSEGV") == 1, out
        assert re.search(r"\$2 = .*" + pc1 + r" <use_victim", out), out


def test_start_and_end_of_the_history(recording):
    rec, _ = recording
    with ReplayGuest(rec) as g:
        out = g.gdb("reverse-stepi", "info symbol $pc", "continue", "continue",
                    "continue", "reverse-stepi", "print $pc")
        # At the start a reverse command stops at once; at the end (the guest's
        # HALT after its trap report) forward execution stops too, and backward
        # goes on: one instruction back is the HALT hypercall's out.
        assert out.count("No more reverse-execution history.") == 3, out
        assert "_start in section .text" in out, out
        assert "exited" not in out, out
        assert re.search(r"\$1 = .* <rt_halt\+\d+>", out), out


def test_reverse_through_hypercalls_and_trapped_instructions(recording):
    """RDTSC/RDRAND (trapped and replayed), PUTS and POLL on the way back and forth:
    the values seen at a point are the same both ways, and the console shows every
    line once."""
    rec, recorded_stdout = recording
    with ReplayGuest(rec) as g:
        out = g.gdb("break use_victim", "continue", "continue", "continue",
                    "print items", "continue", "continue", "reverse-continue",
                    "reverse-continue", "print items", "reverse-stepi", "reverse-stepi",
                    "reverse-next", "next", "continue", "print items", "delete",
                    "continue", "continue")
        items = re.findall(r"\$\d+ = (\{\{value = .*\}\})", out)
        assert len(items) == 3 and items[0] == items[1], out
        assert items[2] != items[0], out
        assert "Program received signal SIGSEGV" in out, out
        g.wait()
        assert g.stdout() == recorded_stdout, (g.stdout(), recorded_stdout)
