"""The inspector against stock gdb on the same cores: the unwinder gives the same
functions and lines as gdb's `bt` (crash cores, cores taken inside the trap handler,
where the trap stubs' signal-frame CFI matters, and an image whose CFI is in
.debug_frame), and memory, registers and symbols agree with gdb's."""

import os
import re
import shutil
import subprocess

import pytest

from inspect_support import CRASHES, app_path, boot, core_of, gdb_bt, my_bt

from ukdbg.inspect import render
from ukdbg.inspect.commands import execute
from ukdbg.inspect.session import open_core

pytestmark = [pytest.mark.kvm, pytest.mark.gdb]


def gdb(image, core, *cmds):
    args = ["gdb", "-nx", "-batch", image, core]
    for c in cmds:
        args += ["-ex", c]
    return subprocess.run(args, capture_output=True, text=True, timeout=60).stdout


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_backtrace_matches_gdb(name):
    core, _ = core_of(name)
    s = open_core(core)
    app = app_path(CRASHES[name][0])
    theirs, out = gdb_bt(app, core)
    assert len(theirs) >= 3, out
    assert my_bt(s) == theirs, out
    assert s.backtrace().frames[0].func == CRASHES[name][2] or \
        my_bt(s)[0][0] == CRASHES[name][2]
    s.close()


def _halt_time_core(tmp_path, path, *args):
    """A core of the guest as it HALTs from its trap handler: the registers are
    rt_hypercall's, and the way back to the fault goes through the trap stub."""
    from ukdbg.tender.modules.dumpcore import dump
    m, stop = boot(path, *args, policy="continue")
    try:
        assert stop.cause == "trap", stop
        return dump(m, None, str(tmp_path / "halt.core"))
    finally:
        m.close()


@pytest.mark.parametrize("app,vector_stub", [("nullwrite", "rt_trap_common"),
                                             ("divzero", "rt_trap_common"),
                                             ("ud2", "rt_trap_common")])
def test_signal_frame_unwinding_matches_gdb(tmp_path, app, vector_stub):
    core = _halt_time_core(tmp_path, app_path(app))
    s = open_core(core)
    mine = my_bt(s)
    theirs, out = gdb_bt(app_path(app), core)
    assert mine == theirs, out
    names = [n for n, _ in mine]
    # rt_hypercall <- rt_halt <- rt_trap_handler <- <signal> <- the faulting function
    assert names[:4] == ["rt_hypercall", "rt_halt", "rt_trap_handler",
                         "<signal handler called>"], names
    sig = s.backtrace().frames[3]
    assert sig.func == vector_stub and sig.signal and sig.how == "cfi"
    # The frame above the signal frame has the faulting context's registers,
    # recovered from the stub's save area and the CPU frame.
    fault = s.backtrace().frames[4]
    assert fault.func == CRASHES[app][2]
    crash = open_core(core_of(app)[0])
    assert fault.pc == crash.regs.rip          # the faulting instruction, exactly
    assert fault.regs["rsp"] == crash.regs.rsp
    crash.close()
    s.close()


@pytest.fixture(scope="module")
def debug_frame_build(tmp_path_factory):
    """Fixtures rebuilt with their CFI in .debug_frame (no .eh_frame at all)."""
    root = os.path.dirname(app_path("x"))
    src = os.path.dirname(root)
    d = tmp_path_factory.mktemp("dbgframe") / "fixtures"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("build"))
    start = d / "rt" / "start.S"
    start.write_text("    .cfi_sections .debug_frame\n" + start.read_text())
    cflags = ("-g -O0 -std=gnu11 -Wall -Wextra -Werror -ffreestanding -fno-builtin "
              "-fno-stack-protector -fno-pic -fno-pie -mno-red-zone "
              "-fno-omit-frame-pointer -fno-asynchronous-unwind-tables -fno-unwind-tables "
              "-fcf-protection=none -fno-common -mcmodel=small -Irt")
    r = subprocess.run(["make", "-s", "-C", str(d), f"CFLAGS_COMMON={cflags}",
                        "build/nullwrite.hvt", "build/recursion.hvt"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d / "build"


@pytest.mark.parametrize("app,halt_time", [("nullwrite", True), ("recursion", False)])
def test_debug_frame_unwinding_matches_gdb(tmp_path, debug_frame_build, app, halt_time):
    from ukdbg.tender.modules.dumpcore import dump
    image = str(debug_frame_build / f"{app}.hvt")
    sections = subprocess.run(["readelf", "-SW", image], capture_output=True,
                              text=True).stdout
    assert ".debug_frame" in sections and ".eh_frame" not in sections
    m, stop = boot(image, policy="continue" if halt_time else "stop")
    try:
        core = dump(m, None if halt_time else stop, str(tmp_path / "c.core"))
    finally:
        m.close()
    s = open_core(core, app=image)
    theirs, out = gdb_bt(image, core)
    mine = my_bt(s)
    assert mine == theirs, out
    assert all(f.how in ("regs", "cfi", "inline") for f in s.backtrace().frames)
    if halt_time:
        assert "<signal handler called>" in [n for n, _ in mine]
    else:
        assert [n for n, _ in mine].count("recurse") == 32
    s.close()


def test_registers_memory_and_symbols_match_gdb():
    core, _ = core_of("regs")
    app = app_path("regs")
    s = open_core(core)
    out = gdb(app, core, "info registers", "x/8xg $rsp", "info symbol $pc",
              "info line *$pc")
    out1 = gdb(app, core, "frame 1", "info registers rip rsp rbp")
    theirs = {m.group(1): int(m.group(2), 16)
              for m in re.finditer(r"^(\w+)\s+(0x[0-9a-f]+)", out, re.M)}
    v = execute(s, "regs")
    mine = {n: val for n, val, _ in v.general}
    for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
              "r12", "r13", "r14", "r15", "rsp", "rip"):
        assert mine[n] == theirs[n], n
    assert mine["rax"] == 0x1111111111111111 and mine["r15"] == 0xFFFFFFFFFFFFFFFF
    assert v.flags[1] == theirs["eflags"]
    for n in ("cs", "ss", "ds", "es", "fs", "gs"):
        assert dict((a, b) for a, b, _ in v.segments)[n] == theirs[n], n
    # gdb's x/8xg $rsp
    g = re.findall(r"^0x[0-9a-f]+(?: <[^>]*>)?:\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", out, re.M)
    gdb_words = [int(x, 16) for pair in g for x in pair][:8]
    x = execute(s, "x/8xg $rsp")
    assert len(gdb_words) == 8
    assert [val for _a, _l, vals, _ in x.rows for val in vals] == gdb_words
    # info symbol $pc: "load_regs_and_fault + 160 in section .text"
    m = re.search(r"^(\w+) \+ (\d+) in section (\S+)", out, re.M)
    sv = execute(s, "sym $pc")
    assert (sv.rows[0].name, sv.rows[0].offset, sv.rows[0].section) == \
        (m.group(1), int(m.group(2)), m.group(3))
    m = re.search(r'Line (\d+) of "([^"]+)"', out)
    assert sv.rows[0].line == f"{m.group(2)}:{m.group(1)}"
    # frame 1's registers (after `frame 1`, gdb's last `info registers`)
    f1 = {m.group(1): int(m.group(2), 16)
          for m in re.finditer(r"^(rip|rsp|rbp)\s+(0x[0-9a-f]+)", out1, re.M)}
    assert len(f1) == 3, out1
    execute(s, "frame 1")
    fr = execute(s, "regs")
    mine1 = {n: val for n, val, _ in fr.general}
    assert {k: mine1[k] for k in ("rip", "rsp", "rbp")} == f1
    assert theirs["rip"] == s.regs.rip
    s.close()


def test_disas_marks_the_faulting_instruction_gdb_reports():
    core, _ = core_of("nullwrite")
    s = open_core(core)
    out = gdb(app_path("nullwrite"), core, "x/i $pc")
    pc = int(re.search(r"=> (0x[0-9a-f]+)", out).group(1), 16)
    v = execute(s, "disas")
    marked = [i for i in v.items if type(i).__name__ == "Insn" and i.fault]
    assert [i.addr for i in marked] == [pc]
    assert "movl" in marked[0].text and "(%rax)" in marked[0].text
    assert "<- faulting instruction" in render.plain(v)
    s.close()


@pytest.mark.parametrize("name,func", [("regs", "load_regs_and_fault"),
                                       ("recursion", "recurse"), ("rowrite", "main")])
def test_disas_numbers_are_hex_like_gdbs(name, func):
    """Every immediate and displacement, in the same base and value as gdb's."""
    core, _ = core_of(name)
    s = open_core(core)
    try:
        mine = render.plain(execute(s, f"disas {func}"))
    finally:
        s.close()
    out = gdb(app_path(CRASHES[name][0]), core, f"disassemble {func}")
    num = re.compile(r"\$0x[0-9a-f]+|-?0x[0-9a-f]+(?=\()")
    theirs = [num.findall(ln.split(":", 1)[1]) for ln in out.splitlines()
              if re.match(r"\s*(=>)?\s*0x[0-9a-f]+ <\+\d+>:", ln)]
    ours = [num.findall(ln.split(">:", 1)[1]) for ln in mine.splitlines()
            if re.match(r"\S*\s+0x[0-9a-f]+ <\+\d+>:", ln)]
    assert len(ours) == len(theirs) > 5, (mine, out)
    assert ours == theirs, (mine, out)
    assert not re.search(r"\$-?\d+(?![\dx])|[ ,]-?\d+\(", mine), mine


def test_gdb_command_prints_dwarf_variables():
    core, _ = core_of("recursion")
    s = open_core(core)
    try:
        v = execute(s, "gdb print depth")
        assert v.output == ["$1 = 32"], v
        execute(s, "frame 3")
        v = execute(s, "gdb print depth")
        assert v.output == ["$2 = 29"], v
        v = execute(s, "gdb print no_such_thing")
        assert "No symbol" in v.error
    finally:
        s.close()
    core, _ = core_of("divzero")
    s = open_core(core)
    try:
        assert execute(s, "gdb print divisor").output == ["$1 = 0"]
    finally:
        s.close()
