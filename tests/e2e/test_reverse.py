"""Reverse execution end to end (issue 11): `ukdbg run --reverse --gdb` with the real
gdb's reverse commands, on the deterministic `rev` fixture (fixtures/README.md:
round i adds 3i + 10 to `total`, prints `round i total T`)."""

import re

import pytest

from gdbguest import Guest, RawClient

pytestmark = [pytest.mark.kvm, pytest.mark.gdb]


def rev_guest(n=6):
    return Guest("rev", n, extra=("--reverse",))


def test_protocol_features_and_start_of_history(fixtures_dir):
    with rev_guest() as g:
        c = RawClient(g.address)
        try:
            feats = c.packet(b"qSupported:multiprocess+;swbreak+;hwbreak+")
            assert b"ReverseStep+" in feats and b"ReverseContinue+" in feats, feats
            for pkt in (b"bs", b"bc"):
                r = c.packet(pkt)
                assert r.startswith(b"T05") and b"replaylog:begin;" in r, r
        finally:
            c.close()


def test_reverse_continue_to_breakpoints_and_the_start(fixtures_dir):
    with rev_guest() as g:
        out = g.gdb("break round_", "continue", "continue", "continue", "continue",
                    "print i", "reverse-continue", "print i", "reverse-continue",
                    "print i", "reverse-continue", "print i",
                    "reverse-continue", "info symbol $pc", "continue", "print i")
        assert re.findall(r"\$\d+ = (\d+)", out) == ["3", "2", "1", "0", "0"], out
        assert "No more reverse-execution history." in out, out
        assert "_start in section .text" in out, out


def test_reverse_stepi_nexti_step_next_finish(fixtures_dir):
    with rev_guest() as g:
        out = g.gdb("break work", "continue", "continue", "delete", "finish",
                    "print $pc", "reverse-stepi", "print $pc", "stepi", "print $pc",
                    "reverse-step", "reverse-finish", "info symbol $pc", "reverse-next",
                    "reverse-nexti", "print $pc", "next", "print total")
        pcs = re.findall(r"\(void \(\*\)\(\)\) (0x[0-9a-f]+) <(\w+)\+\d+>", out)
        # finish returns into round_ (after the call); reverse-stepi goes back to
        # work's ret; stepi comes back to the same pc.
        assert [f for _, f in pcs] == ["round_", "work", "round_", "round_"], out
        assert pcs[0][0] == pcs[2][0] and pcs[1][0] != pcs[0][0], out
        rest = out.split("$4 = ")[1]
        assert re.search(r"work \(i=1\) at apps/rev.c:25", rest), out    # reverse-step
        assert re.search(r"round_ \+ \d+ in section \.text", rest), out   # reverse-finish
        # reverse-next goes to the start of line 29, reverse-nexti into the prologue
        # (line 28); `next` then stops at line 29 again, before round 1 adds to total.
        assert re.search(r"0x[0-9a-f]+\s+28\s+\{", rest), out
        assert int(pcs[3][0], 16) < int(pcs[0][0], 16), out
        assert re.search(r"\$\d+ = 10\n", rest), out


def test_watch_backwards_old_and_new_value_and_forward_again(fixtures_dir):
    with rev_guest() as g:
        out = g.gdb("break round_", "continue", "continue", "continue", "delete",
                    "watch total", "reverse-continue", "x/i $pc", "print total",
                    "continue", "print total")
        back, _, fwd = out.partition("$1 = ")
        assert re.search(r"Old value = 23\s+New value = 10", back), out
        assert re.search(r"=> 0x[0-9a-f]+ <round_\+\d+>:\s+mov\s+%rax,0x[0-9a-f]+\(%rip\)"
                         r"\s+# 0x[0-9a-f]+ <total>", back), out
        assert fwd.startswith("10"), out
        assert re.search(r"Old value = 10\s+New value = 23", fwd), out
        assert "$2 = 23" in fwd, out


def test_breakpoints_and_watchpoints_set_while_going_backwards(fixtures_dir):
    with rev_guest() as g:
        out = g.gdb("break round_", "continue", "continue", "continue", "continue",
                    "reverse-continue", "break work", "reverse-continue", "print i",
                    "delete", "watch history[0]", "reverse-continue", "print history[0]",
                    "reverse-continue")
        assert re.search(r"Breakpoint 2, work \(i=1\)", out), out
        # history[0] = 10 was written in round 0; before that it was 0.
        assert re.search(r"Old value = 10\s+New value = 0", out), out
        assert re.search(r"round_ \(i=0\) at apps/rev.c:30", out), out
        assert out.count("No more reverse-execution history.") == 1, out


def test_console_output_is_not_printed_twice(fixtures_dir):
    with rev_guest(5) as g:
        g.gdb("break round_", "continue", "continue", "continue", "continue",
              "reverse-continue", "reverse-continue", "reverse-stepi", "continue",
              "continue", "continue", "reverse-continue", "delete", "continue")
        assert g.wait() == 0
        out = g.stdout()
        assert out == "".join(f"round {i} total {t}\n" for i, t in
                              enumerate((10, 23, 39, 58, 80))) + "done 80\n" \
            "Solo5: solo5_exit(0) called\n", out


def test_monitor_when_goto_checkpoints(fixtures_dir):
    with rev_guest() as g:
        out = g.gdb("break round_", "continue", "continue", "monitor when", "continue",
                    "continue", "print i", "monitor goto 1", "maintenance flush register-cache",
                    "maintenance flush dcache", "print i",
                    "monitor checkpoints", "monitor goto 99", "monitor goto start",
                    "maintenance flush register-cache", "info symbol $pc")
        assert re.search(r"position 1: event \d+ \(hypercalls done\)", out), out
        assert "$1 = 3" in out and "$2 = 1" in out, out
        assert re.search(r"\d+ checkpoint\(s\), [\d.]+ MiB of 256 MiB", out), out
        assert "no position '99'" in out, out
        assert "_start in section .text" in out, out


def test_a_write_starts_the_history_again(fixtures_dir):
    with rev_guest() as g:
        out = g.gdb("break round_", "continue", "continue", "set var total = 100",
                    "continue", "print total", "reverse-continue", "print total",
                    "reverse-continue", "print total", "print i")
        # round 1 adds 13 to the written 100; going back stops at the write (round
        # 1's breakpoint), the new start: the breakpoint there is not before it.
        assert re.findall(r"\$\d+ = (\d+)", out) == ["113", "100", "100", "1"], out
        assert out.count("No more reverse-execution history.") == 2, out


def test_ctrl_c_then_back_and_forth(fixtures_dir):
    """Ctrl-C in a long burn(): the stop gets a position, reverse-stepi and stepi
    go back and forth from it."""
    import signal
    import time
    with Guest("rev", "3 100000000", extra=("--reverse",)) as g:
        p = g.gdb_background("break finish", "continue", "print $pc", "reverse-stepi",
                             "print $pc", "stepi", "print $pc", "info symbol $pc", "kill")
        g.wait_for_text("round 2", g.stdout)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=120)
        assert "Program received signal SIGINT, Interrupt." in out, out
        pcs = re.findall(r"\$\d+ = \(void \(\*\)\(\)\) (0x[0-9a-f]+)", out)
        assert len(pcs) == 3 and pcs[0] == pcs[2] and pcs[1] != pcs[0], out
        assert "burn + " in out, out
