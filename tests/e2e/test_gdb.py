"""The gdb stub end to end: real unikernels on real KVM, driven by the real gdb (13).

Each test boots a fixture with `ukdbg run --gdb 127.0.0.1:0` (the stub picks a free
port and prints it) and runs `gdb -batch` against it; the fixtures' lines and values
are those of fixtures/README.md."""

import os
import re
import signal
import subprocess
import time

import pytest

from gdbguest import Guest, app_path

pytestmark = [pytest.mark.kvm, pytest.mark.gdb]

REGS_CONSTANTS = {"rax": 1, "rbx": 2, "rcx": 3, "rdx": 4, "rsi": 5, "rdi": 6, "rbp": 7,
                  "r8": 8, "r9": 9, "r10": 10, "r11": 11, "r12": 12, "r13": 13, "r14": 14,
                  "r15": 15}


def reg_values(out: str) -> dict:
    """{name: value} from `info registers` output."""
    return {m.group(1): int(m.group(2), 16)
            for m in re.finditer(r"^(\w+)\s+(0x[0-9a-f]+)", out, re.M)}


def test_break_continue_backtrace_and_exit_status(fixtures_dir):
    with Guest("tick", 3) as g:
        out = g.gdb("break tick", "continue", "bt", "continue", "print tick_count",
                    "delete", "continue")
        assert "Breakpoint 1, tick () at apps/tick.c:10" in out, out
        assert re.search(r"#0\s+tick \(\) at apps/tick.c:10", out), out
        assert re.search(r"#1\s+0x[0-9a-f]+ in main \(cmdline=0x[0-9a-f]+ \"3\"\) at "
                         r"apps/tick.c:18", out), out
        assert "$1 = 1" in out, out
        assert "[Inferior 1 (process 1) exited normally]" in out, out
        assert g.wait() == 0
        assert "tick_count=3" in g.stdout()


def test_exit_status_reaches_gdb(fixtures_dir):
    with Guest("exit", 7) as g:
        out = g.gdb("continue")
        assert "exited with code 07" in out, out
        assert g.wait() == 7


def test_info_registers_are_the_fixture_constants(fixtures_dir):
    with Guest("regs") as g:
        out = g.gdb("break regs_loaded", "continue", "info registers",
                    "continue", "info registers", "bt", "x/i $pc")
        first, _, second = out.partition("Program received signal SIGILL")
        assert "Breakpoint 1, load_regs_and_fault () at apps/regs_asm.S:48" in first, out
        for part in (first, second):
            vals = reg_values(part)
            for name, k in REGS_CONSTANTS.items():
                assert vals[name] == 0x1111111111111111 * k, (name, part)
        # The fault: SIGILL at the ud2 with every register of the faulting instruction.
        assert "load_regs_and_fault () at apps/regs_asm.S:48" in second, out
        assert re.search(r"#1\s+0x[0-9a-f]+ in main .* at apps/regs.c:19", second), out
        assert "ud2" in second
        regs = reg_values(second)
        assert regs["eflags"] & 0x100 == 0        # no trap flag leaked from stepping
        assert regs["cs"] == 0x8 and regs["ss"] == 0x10


def test_sse_registers_at_a_fault(fixtures_dir):
    with Guest("sse", "crash") as g:
        out = g.gdb("continue", "p/x $xmm3.uint128", "p/x $xmm15.v2_int64",
                    "info registers mxcsr", "kill")
        assert "Program received signal SIGILL" in out, out
        assert "load_xmm_and_fault () at apps/sse_asm.S:26" in out, out
        assert "$1 = 0x83838383838383831313131313131313" in out, out
        assert "$2 = {0x1f1f1f1f1f1f1f1f, 0x8f8f8f8f8f8f8f8f}" in out, out
        assert re.search(r"mxcsr\s+0x1f80", out), out


@pytest.mark.parametrize("app,signame,where", [
    ("nullwrite", "SIGSEGV, Segmentation fault", "crash_here () at apps/nullwrite.c:8"),
    ("divzero", "SIGFPE, Arithmetic exception", "divide (dividend=42) at apps/divzero.c:10"),
    ("ud2", "SIGILL, Illegal instruction", "do_ud2 () at apps/ud2.c:8"),
    ("abort", "SIGABRT, Aborted", "rt_hypercall"),
    ("triple", "SIGSEGV, Segmentation fault", "triple_fault () at apps/triple.c:17"),
])
def test_faults_stop_with_the_matching_signal(fixtures_dir, app, signame, where):
    with Guest(app) as g:
        out = g.gdb("continue", "bt", "continue")
        assert f"Program received signal {signame}" in out, out
        assert where in out, out
        if app == "abort":
            assert "give_up () at apps/abort.c:8" in out, out
        # Continuing past the fatal signal ends the guest, as for a process.
        assert ("exited with code 0377" in out or
                "terminated with signal SIGSEGV" in out), out
        rc = g.wait()
        assert rc == (139 if app == "triple" else 255)


def test_stepi_next_step_finish(fixtures_dir):
    with Guest("tick", 5) as g:
        out = g.gdb("break main", "continue", "next", "next", "step", "bt 1",
                    "stepi", "info registers rip", "finish", "next", "kill")
        assert "Breakpoint 1, main (cmdline=" in out, out
        assert "tick () at apps/tick.c:10" in out, out               # step entered tick
        # stepi moved inside tick; finish returned to main; next went on in main.
        assert re.search(r"rip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <tick\+\d+>\n"
                         r"main \(cmdline=0x[0-9a-f]+ \"5\"\) at apps/tick.c:17\n.*\n"
                         r"18\t\s+tick\(\);", out), out
        assert g.wait() == 137
        assert "killed by gdb" in g.stderr()


def test_stepping_over_a_breakpoint_runs_each_hit_once(fixtures_dir):
    with Guest("tick", 4) as g:
        out = g.gdb("break tick", "break main", "continue", "continue", "stepi", "stepi",
                    "continue", "continue", "print tick_count", "delete", "continue")
        # main, tick (1st call), two steps, tick (2nd), tick (3rd): tick_count == 2
        assert out.count("Breakpoint 1, tick ()") == 3, out
        assert "$1 = 2" in out, out
        assert g.wait() == 0
        assert "tick_count=4" in g.stdout()


def test_hbreak(fixtures_dir):
    with Guest("tick", 3) as g:
        out = g.gdb("hbreak tick", "continue", "continue", "print tick_count",
                    "info breakpoints", "delete", "continue")
        assert out.count("Breakpoint 1, tick () at apps/tick.c:10") == 2, out
        assert "hw breakpoint" in out
        assert "$1 = 1" in out, out
        assert g.wait() == 0


def test_x_and_set_var_reach_the_guest(fixtures_dir):
    with Guest("tick", 3) as g:
        out = g.gdb("break main", "continue", "set var tick_count = 1000",
                    "x/2xg &tick_count", "print $rsp", "set $r12 = 0x1234abcd",
                    "print/x $r12", "print $xmm0", "set $xmm0.v4_int32[1] = 77",
                    "print $xmm0.v4_int32", "x/s 0x100000", "continue")
        assert re.search(r"<tick_count>:\s+0x00000000000003e8\s+0x0", out), out
        assert "0x1234abcd" in out, out
        assert "{0, 77, 0, 0}" in out, out
        assert '"/nonexistent/solo5/"' in out, out
        assert g.wait() == 0
        assert "tick_count=1003" in g.stdout()       # the guest saw gdb's write


def test_write_watchpoint_old_and_new_values(fixtures_dir):
    with Guest("watch") as g:
        out = g.gdb("break main", "continue", "watch watch_me", "continue", "continue",
                    "continue", "delete", "continue")
        hits = re.findall(r"Old value = (-?\d+)\nNew value = (-?\d+)\n(.*)\n(\d+)", out)
        assert [(o, n) for o, n, _, _ in hits] == [("-1", "0"), ("0", "10"), ("10", "20")], out
        for _, _, frame, line in hits:
            # The stop is after the store of line 25: gdb shows where execution goes on.
            assert "main (cmdline=" in frame and line in ("25", "26"), out
        assert g.wait() == 0
        assert "watch_me=90 counter=10" in g.stdout()


def test_read_and_access_watchpoints(fixtures_dir):
    with Guest("watch") as g:
        out = g.gdb("break main", "continue", "rwatch read_me", "continue", "continue",
                    "delete", "awatch counter", "continue", "continue", "continue",
                    "delete", "continue")
        assert out.count("Hardware read watchpoint 2: read_me\n\nValue = 7") == 2, out
        assert re.search(r"read watchpoint 2: read_me\n\nValue = 7\n.*in main .* at "
                         r"apps/watch.c:26", out), out
        acc = re.findall(r"access \(read/write\) watchpoint 3: counter\n\n(Value = \d+|"
                         r"Old value = \d+\nNew value = \d+)", out)
        assert len(acc) == 3, out
        assert g.wait() == 0


def test_many_watchpoints_of_any_size(fixtures_dir):
    # More than four (the debug-register limit) and wider than 8 bytes (arr: 64 bytes).
    with Guest("watch") as g:
        out = g.gdb("break main", "continue", "watch arr", "watch counter", "watch arr[9]",
                    "rwatch read_me", "watch watch_me", "info watchpoints",
                    "continue", "continue", "continue", "continue", "continue",
                    "delete", "continue")
        stops = re.findall(r"\n(Hardware (?:read )?watchpoint \d+: [\w\[\]]+)\n", out)
        # watch_me (line 25), read_me (26), counter (28), arr (29), then watch_me again
        assert stops[-5:] == ["Hardware watchpoint 6: watch_me",
                              "Hardware read watchpoint 5: read_me",
                              "Hardware watchpoint 3: counter",
                              "Hardware watchpoint 2: arr",
                              "Hardware watchpoint 6: watch_me"], out
        assert g.wait() == 0
        assert "arr[9]=81" in g.stdout()


def test_ctrl_c_stops_an_endless_loop(fixtures_dir):
    with Guest("loop") as g:
        p = g.gdb_background("continue", "bt", "print spin_counter > 0", "kill")
        g.wait_for_text("looping", g.stdout)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
        assert "Program received signal SIGINT, Interrupt." in out, out
        assert re.search(r"#0\s+(0x[0-9a-f]+ in )?spin \(\) at apps/loop.c:11", out), out
        assert re.search(r"#1\s+0x[0-9a-f]+ in main", out), out
        assert "$1 = 1" in out, out
        assert g.wait() == 137


def test_attach_to_a_running_guest_detach_and_attach_again(fixtures_dir):
    with Guest("loop", wait=False) as g:
        g.wait_for_text("looping", g.stdout)
        out1 = g.gdb("bt", "print spin_counter", "detach")
        assert re.search(r"#0\s+(0x[0-9a-f]+ in )?spin \(\) at apps/loop.c:11", out1), out1
        assert "[Inferior 1 (process 1) detached]" in out1, out1
        n1 = int(re.search(r"\$1 = (\d+)", out1).group(1))
        time.sleep(0.3)
        assert g.proc.poll() is None                 # it runs on without gdb
        out2 = g.gdb("print spin_counter", "kill")
        n2 = int(re.search(r"\$1 = (\d+)", out2).group(1))
        assert n2 > n1, (out1, out2)
        assert g.wait() == 137


def test_attach_while_the_guest_sleeps_in_poll(fixtures_dir):
    with Guest("time", 6, wait=False) as g:
        g.wait_for_text(r"t=\d+\n", g.stdout)
        out = g.gdb("bt", "stepi", "continue")
        # Stopped at the POLL hypercall, which is complete: its `out` is behind rip.
        assert re.search(r"#0\s+0x[0-9a-f]+ in rt_hypercall \(arg=0x[0-9a-f]+, nr=3\)", out), out
        assert re.search(r"#1\s+rt_poll \(timeout_ns=100000000", out), out
        assert re.search(r"#2\s+0x[0-9a-f]+ in main .* at apps/time.c", out), out
        assert "exited normally" in out, out
        assert g.wait() == 0
        assert len(re.findall(r"^t=\d+$", g.stdout(), re.M)) == 6


def test_plain_target_remote_finds_the_executable(fixtures_dir):
    with Guest("tick", 2) as g:
        out = g.gdb("break tick", "continue", "bt", "info symbol $pc", "kill", exe=False)
        assert f"Reading symbols from target:{os.path.abspath(app_path('tick'))}" in out, out
        assert "Breakpoint 1, tick () at apps/tick.c:10" in out, out
        assert "tick + 4 in section .text" in out, out


def test_monitor_commands(fixtures_dir, tmp_path):
    core = tmp_path / "mon.core"
    with Guest("tick", 2) as g:
        out = g.gdb("break tick", "continue", "monitor help", "monitor info",
                    "monitor regs", "monitor pt 0x100020", "monitor pt 0x1000",
                    f"monitor core {core}", "kill")
        assert "monitor pt ADDR" in out, out
        assert re.search(r"memory:\s+8 MiB", out), out
        assert "stopped:    breakpoint at 0x" in out, out
        assert "cr0    0x80010021 [PE NE WP PG]" in out, out
        assert "efer   0x500 [LME LMA]" in out, out
        assert re.search(r"idtr\s+base 0x[0-9a-f]+ limit 0x14f", out), out
        assert "-> physical 0x100020 (4 KiB page at 0x100000" in out, out
        assert "-> not mapped: PT[1] not present" in out, out
    if "core dumps are not available" not in out:
        assert f"core written to {core}" in out, out
        assert core.stat().st_size > 0


def test_unix_socket_transport(fixtures_dir, tmp_path):
    path = tmp_path / "gdb.sock"
    with Guest("tick", 2, gdb=f"unix:{path}") as g:
        assert g.address == f"unix:{path}"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        out = g.gdb("break tick", "continue", "kill")
        assert "Breakpoint 1, tick ()" in out, out
        assert g.wait() == 137
    assert not path.exists()


def test_second_client_is_refused(fixtures_dir):
    with Guest("loop") as g:
        first = g.gdb_background("continue")
        g.wait_for_text("looping", g.stdout)
        out = g.gdb("bt")
        assert "another debugger is already attached" in out, out
        assert g.proc.poll() is None
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
        assert "refused a second client" in g.stderr()


def test_second_client_while_the_first_holds_the_guest_stopped(fixtures_dir, tmp_path):
    flag = tmp_path / "stopped"
    with Guest("tick", 3) as g:
        first = g.gdb_background("break tick", "continue", f"shell touch {flag}",
                                 "shell sleep 1", "bt", "continue", "continue",
                                 "print tick_count")
        g.wait_for_text("yes", lambda: "yes" if flag.exists() else "")
        out = g.gdb("bt")
        assert "another debugger is already attached" in out, out
        out1, _ = first.communicate(timeout=60)
        assert re.search(r"#1\s+0x[0-9a-f]+ in main", out1), out1
        assert "$1 = 2" in out1, out1


def test_sigterm_to_the_monitor_ends_a_stopped_session(fixtures_dir, tmp_path):
    flag = tmp_path / "stopped"
    with Guest("tick", 3) as g:
        p = g.gdb_background("break tick", "continue", f"shell touch {flag}",
                             "shell sleep 2")
        g.wait_for_text("yes", lambda: "yes" if flag.exists() else "")
        g.proc.send_signal(signal.SIGTERM)       # while gdb holds it stopped
        assert g.wait() == 143
        assert "received SIGTERM" in g.stderr()
        p.kill()
        p.communicate()


def test_gdb_on_crash_holds_the_guest_for_gdb(fixtures_dir):
    with Guest("nullwrite", gdb=None, extra=("--gdb-on-crash",)) as g:
        cmd = g.wait_for_text(r"frozen for gdb \(Ctrl-C to end\): (gdb .*)\n", g.stderr)
        addr = re.search(r"target remote (\S+)'", cmd).group(1)
        assert cmd == f"gdb {g.app} -ex 'target remote {addr}'"
        g.address = addr
        out = g.gdb("bt", "info registers rip", "detach")
        assert re.search(r"#0\s+crash_here \(\) at apps/nullwrite.c:8", out), out
        assert re.search(r"#1\s+0x[0-9a-f]+ in main .* at apps/nullwrite.c:14", out), out
        assert g.wait() == 255
        assert "Solo5: trap: type=#PF" in g.stdout()


def test_packets_per_stepi(fixtures_dir, tmp_path):
    log = tmp_path / "remote.log"
    # In spin() (one endless loop), so no step changes frames.
    with Guest("loop") as g:
        steps = 30
        g.gdb("break spin", "continue", "delete", "monitor help", *["stepi"] * steps,
              "monitor help", "kill", pre=(f"set remotelogfile {log}",))
    text = log.read_text(errors="replace")
    pk = re.findall(r"^w \+?\$([^#]*)#", text, re.M)
    marks = [i for i, p in enumerate(pk) if p.startswith("qRcmd,")]
    between = pk[marks[0] + 1:marks[1]]
    # vCont;s, the stack read for the frame id, the thread list; +1: the first frame.
    assert len(between) <= 3 * steps + 1, (len(between), between)
    assert sum(p.startswith("vCont;s") for p in between) == steps
    assert not any(p == "g" for p in between), between       # expedited registers


def test_idle_guest_under_gdb_costs_no_cpu(fixtures_dir):
    # `time 20` sleeps 100 ms at a time in POLL: with gdb attached and the guest
    # running, the monitor must sleep too (no polling loop).
    with Guest("time", 20) as g:
        p = g.gdb_background("continue")
        g.wait_for_text(r"t=\d+\n", g.stdout)
        c0, t0 = g.cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        used = (g.cpu_seconds() - c0) / (time.monotonic() - t0)
        assert used < 0.1, f"monitor used {used:.0%} of a CPU"
        out, _ = p.communicate(timeout=60)
        assert "exited normally" in out, out
        assert g.wait() == 0


def test_gdb_through_the_control_socket(fixtures_dir, tmp_path):
    """`ukdbg attach --print` starts the stub in a monitor run without --gdb."""
    from helpers import ukdbg
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    argv = ["run", "--mem=8", "--no-core", app_path("loop")]
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "ukdbg", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **env})
    try:
        assert proc.stdout.readline() == b"looping\n"
        r = ukdbg("attach", proc.pid, "--print", env=env)
        assert r.returncode == 0, r.stderr
        m = re.search(r"target remote (\S+?)'?$", r.stdout.strip(), re.M)
        assert m, r.stdout
        out = subprocess.run(["gdb", "-q", "-nx", "-batch", "-ex", f"target remote "
                              f"{m.group(1)}", "-ex", "bt", "-ex", "kill", app_path("loop")],
                             capture_output=True, text=True, timeout=60).stdout
        assert re.search(r"spin \(\) at apps/loop.c:11", out), out
        assert proc.wait(30) == 137
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
