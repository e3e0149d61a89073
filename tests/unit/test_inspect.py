"""The inspector's pure parts, without KVM: symbols and line tables against binutils,
the unwinder on hand-made stacks (CFI, frame pointers, corrupt stacks, DWARF
expressions), command parsing, error-code decoding and rendering."""

import errno
import re
import subprocess

import pytest

from ukdbg.arch.x86_64 import Regs
from ukdbg.errors import TargetError
from ukdbg.inspect import render
from ukdbg.inspect.commands import (CommandError, eval_address, execute, parse,
                                    split_commands)
from ukdbg.inspect.commands.info import decode_error_code
from ukdbg.inspect.commands.memory import parse_x
from ukdbg.inspect.session import Facts, Session
from ukdbg.inspect.symbols import Symbols
from ukdbg.inspect.unwind import _eval, backtrace
from ukdbg.target import Crashed, MemoryRegion


class FakeTarget:
    """A target made of a few memory ranges and a register set."""

    def __init__(self, regs, mem=None, stop=None):
        self.regs = regs
        self.mem = dict(mem or {})          # base -> bytes
        self.stop = stop

    def read_registers(self):
        return self.regs.copy()

    def read_memory(self, addr, size):
        for base, data in self.mem.items():
            if base <= addr < base + len(data):
                return data[addr - base:addr - base + size]
        raise TargetError(errno.EFAULT, f"cannot access memory at {addr:#x}")

    def memory_map(self):
        return [MemoryRegion(b, b + len(d), "rw-", phys=b) for b, d in self.mem.items()]

    def stop_reason(self):
        return self.stop

    def info(self):
        return {"app": "fake.hvt", "argv": ["ukdbg", "run", "fake.hvt"]}


@pytest.fixture(scope="module")
def nullwrite(app):
    return Symbols.open(app("nullwrite"))


def addr_of(syms, name):
    return syms.lookup(name).value


def text_of(syms, path):
    """The image's loaded bytes (for instruction fetches in FakeTarget)."""
    elf = syms.elf
    out = {}
    for seg in elf.segments:
        if seg.type == 1 and seg.filesz:
            out[seg.vaddr] = elf.data[seg.offset:seg.offset + seg.filesz]
    return out


def q(*words):
    return b"".join(w.to_bytes(8, "little") for w in words)


# --- symbols ------------------------------------------------------------------------------
def test_symbols_and_lines_agree_with_binutils(app, nullwrite):
    path = app("nullwrite")
    nm = subprocess.run(["nm", path], capture_output=True, text=True).stdout
    for line in nm.splitlines():
        a, t, name = line.split()
        if t in "Tt" and not name.startswith("rt_trap_"):
            assert nullwrite.lookup(name).value == int(a, 16)
    start = addr_of(nullwrite, "crash_here")
    end = addr_of(nullwrite, "main") + nullwrite.lookup("main").size
    addrs = list(range(start, end))
    out = subprocess.run(["addr2line", "-e", path] + [hex(a) for a in addrs],
                         capture_output=True, text=True).stdout.split()
    for a, loc in zip(addrs, out):
        f, ln = loc.rsplit(":", 1)
        ln = ln.split()[0]
        mine = nullwrite.line_for(a)
        assert mine is not None and mine.path == f and str(mine.line) == ln, hex(a)
        assert nullwrite.source(mine) is not None
    assert nullwrite.describe(start + 9) == "crash_here+0x9"
    assert nullwrite.describe(0x10) == ""
    assert nullwrite.line_for(0x10) is None


def test_inlined_calls_agree_with_addr2line(app):
    path = app("abort")
    s = Symbols.open(path)
    halt = s.lookup("rt_halt")
    # every address of rt_halt: the inline chain, innermost first, as addr2line -i
    addrs = range(halt.value, halt.value + halt.size)
    out = subprocess.run(["addr2line", "-f", "-i", "-a", "-e", path] +
                         [hex(a) for a in addrs], capture_output=True, text=True).stdout
    blocks = re.split(r"^0x[0-9a-f]+\n", out, flags=re.M)[1:]
    seen_inline = False
    for a, block in zip(addrs, blocks):
        lines = block.split("\n")
        funcs = lines[0:-1:2]
        chain = s.inline_chain(a)
        assert [n for n, _ in reversed(chain)] == funcs, hex(a)
        if len(chain) > 1:
            seen_inline = True
            # the call site of the inlined function is where addr2line puts its caller
            call = chain[-1][1]
            assert f"{call.path}:{call.line}" == lines[3].split()[0]
    assert seen_inline


def test_lazy_loading(app):
    s = Symbols.open(app("nullwrite"))
    assert s._dwarf is None and s._cfi is None and not s._cu_lines
    s.describe(0x100f04)
    assert s._dwarf is None                       # the symbol table needs no DWARF
    s.line_for(0x100f04)
    assert s._dwarf is not None and len(s._cu_lines) == 1   # one CU, through aranges
    d = s._dwarf
    s.line_for(0x100f05)
    assert s._dwarf is d and len(s._cu_lines) == 1


# --- the unwinder ---------------------------------------------------------------------------
def fault_in_crash_here(syms):
    """The stack of nullwrite at its fault: crash_here <- main <- rt_start <- _start."""
    main_ret = addr_of(syms, "main") + 0x11
    start_ret = addr_of(syms, "rt_start") + 0xF5
    entry_ret = addr_of(syms, "_start") + 0xB
    top = 0x7FFF00
    stack = q(0x7FFF20, main_ret,            # crash_here's frame: saved rbp, ret
              0, 0,                          # main's locals
              0x7FFF50, start_ret,           # main's frame at 0x7fff20
              0, 0, 0, 0,
              0, entry_ret)                  # rt_start's frame at 0x7fff50 (rbp 0)
    regs = Regs(rip=addr_of(syms, "crash_here") + 9, rsp=top, rbp=top, cs=8, ss=0x10)
    return regs, {top: stack}


def test_cfi_backtrace_on_a_hand_made_stack(nullwrite):
    regs, mem = fault_in_crash_here(nullwrite)
    mem.update(text_of(nullwrite, None))
    bt = backtrace(FakeTarget(regs, mem), regs, nullwrite)
    names = [(f.func, str(f.line), f.how) for f in bt.frames]
    assert names == [("crash_here", "apps/nullwrite.c:8", "regs"),
                     ("main", "apps/nullwrite.c:14", "cfi"),
                     ("rt_start", "rt/rt.c:139", "cfi"),
                     ("_start", "rt/start.S:47", "cfi")]
    assert bt.end.startswith("outermost")
    f1 = bt.frames[1]
    assert f1.regs["rsp"] == 0x7FFF10 and f1.regs["rbp"] == 0x7FFF20
    assert "rax" not in f1.regs                  # caller-saved: not known above frame 0


def test_frame_pointer_fallback(nullwrite):
    """No CFI (symbols without it): the rbp chain, and a function's first two
    instructions, where the frame is not set up yet."""
    class NoCfi:
        def __init__(self, s):
            self.s = s

        def cfi_row(self, pc):
            return None

        def __getattr__(self, n):
            return getattr(self.s, n)
    syms = NoCfi(nullwrite)
    regs, mem = fault_in_crash_here(nullwrite)
    mem.update(text_of(nullwrite, None))
    bt = backtrace(FakeTarget(regs, mem), regs, syms)
    assert [f.func for f in bt.frames] == ["crash_here", "main", "rt_start", "_start"]
    assert "rbp is 0" in bt.end
    assert all(f.how == "fp" for f in bt.frames[1:])
    # at crash_here's first instruction: the return address is at rsp
    main_ret = addr_of(nullwrite, "main") + 0x11
    r = Regs(rip=addr_of(nullwrite, "crash_here"), rsp=0x7FFF08, rbp=0x7FFF20)
    bt = backtrace(FakeTarget(r, {0x7FFF08: q(main_ret), **mem}), r, syms)
    assert [f.func for f in bt.frames[:2]] == ["crash_here", "main"]
    assert bt.frames[1].regs["rsp"] == 0x7FFF10
    # after push %rbp
    r = Regs(rip=addr_of(nullwrite, "crash_here") + 1, rsp=0x7FFF00, rbp=0x7FFF20)
    bt = backtrace(FakeTarget(r, mem), r, syms)
    assert [f.func for f in bt.frames[:2]] == ["crash_here", "main"]


def test_corrupt_stacks_end_cleanly(nullwrite):
    crash = addr_of(nullwrite, "crash_here") + 9
    # the return address is garbage
    r = Regs(rip=crash, rsp=0x7FFF00, rbp=0x7FFF00)
    bt = backtrace(FakeTarget(r, {0x7FFF00: q(0x7FFF20, 0xDEAD0000)}), r, nullwrite)
    assert len(bt.frames) == 1 and "not in memory" in bt.end
    # the stack is not readable at all
    bt = backtrace(FakeTarget(r, {}), r, nullwrite)
    assert len(bt.frames) == 1 and bt.end
    # a frame-pointer loop: each frame points at itself
    class NoCfi:
        def cfi_row(self, pc):
            return None

        def __getattr__(self, n):
            return getattr(nullwrite, n)
    r = Regs(rip=crash, rsp=0x7FFF00, rbp=0x7FFF00)
    mem = {0x7FFF00: q(0x7FFF00, crash), **text_of(nullwrite, None)}
    bt = backtrace(FakeTarget(r, mem), r, NoCfi())
    assert len(bt.frames) < 5 and ("inner" in bt.end or "repeats" in bt.end), bt.end
    # no symbols at all, rbp 0
    bt = backtrace(FakeTarget(Regs(rip=0x1234), {}), Regs(rip=0x1234), None)
    assert len(bt.frames) == 1 and bt.frames[0].func is None


def test_dwarf_expressions():
    state = {6: 0x1000, 7: 0x2000}
    mem = type("M", (), {"u64": lambda self, a: {0x0FF8: 0x5555}.get(a)})()
    # DW_OP_breg6 -8; DW_OP_deref   (gcc's CFA after stack realignment)
    assert _eval([0x76, 0x78, 0x06], state, mem, None) == 0x5555
    # DW_OP_breg7 16; DW_OP_plus_uconst 8
    assert _eval([0x77, 0x10, 0x23, 0x08], state, mem, None) == 0x2018
    # with the CFA pushed first: DW_OP_lit8, DW_OP_minus
    assert _eval([0x38, 0x1C], state, mem, 0x3000) == 0x2FF8
    assert _eval([0xE0], state, mem, None) is None             # unknown op
    assert _eval([0x70 + 3, 0], state, mem, None) is None       # unknown register
    assert _eval([0x06], state, mem, 0x1234) is None            # unreadable deref
    # DW_OP_bregx 7 -16; DW_OP_const2s -8; DW_OP_swap; DW_OP_minus (decoded by pyelftools)
    assert _eval([0x92, 0x07, 0x70, 0x0B, 0xF8, 0xFF, 0x16, 0x1C], state, mem, None) \
        == (-8 - 0x1FF0) & (1 << 64) - 1
    assert _eval([0x77], state, mem, None) is None              # truncated operand
    assert _eval([], state, mem, None) is None


# --- commands -------------------------------------------------------------------------------
def session_for(syms, **facts):
    regs, mem = fault_in_crash_here(syms)
    mem.update(text_of(syms, None))
    stop = Crashed("trap", 11, "guest trapped: #PF", rip=regs.rip, vector=14,
                   error_code=2, fault_addr=0)
    t = FakeTarget(regs, mem, stop)
    return Session(t, syms, facts=Facts.from_target(t))


def test_command_parsing():
    assert split_commands("info; bt;regs\nx/2xg $rsp;;") == ["info", "bt", "regs",
                                                              "x/2xg $rsp"]
    assert parse("x/4xg $rsp")[0].name == "x" and parse("x/4xg $rsp")[1] == "/4xg $rsp"
    assert parse("where")[0].name == "bt" and parse("info registers")[0].name == "regs"
    assert parse("dis main")[0].name == "disas"          # unique prefix
    assert parse("co")[0].name == "console"               # unique prefix
    with pytest.raises(CommandError, match="unknown command"):
        parse("frobnicate")
    assert parse_x("/4xg $rsp") == (4, "x", 8, "$rsp")
    assert parse_x("$rsp") == (1, "x", 4, "$rsp")
    assert parse_x("/16b main") == (16, "x", 1, "main")
    assert parse_x("/2c x") == (2, "c", 1, "x")
    for bad in ("/0x $rsp", "/4q $rsp"):
        with pytest.raises(CommandError):
            parse_x(bad)


def test_address_expressions(nullwrite):
    s = session_for(nullwrite)
    crash = addr_of(nullwrite, "crash_here")
    assert eval_address(s, "crash_here") == crash
    assert eval_address(s, "crash_here+9") == crash + 9
    assert eval_address(s, "$rsp + 0x10 - 8") == 0x7FFF08
    assert eval_address(s, "$pc") == crash + 9
    assert eval_address(s, "4096") == 4096
    assert eval_address(s, "*0x10") == 0x10
    with pytest.raises(CommandError, match="no symbol 'nope'"):
        eval_address(s, "nope")
    s.select(1)
    assert eval_address(s, "$rsp") == 0x7FFF10
    with pytest.raises(CommandError, match=r"\$rax is not saved in frame 1"):
        eval_address(s, "$rax")


def test_error_codes():
    assert decode_error_code(14, 0x2) == "page not present, write, supervisor mode"
    assert decode_error_code(14, 0x15) == \
        "protection violation, instruction fetch, user mode"
    assert decode_error_code(14, 0x9).endswith("reserved bit set in a paging entry")
    assert decode_error_code(13, 0x0) == "0 (no selector involved)"
    assert decode_error_code(13, 0x1A) == "selector index 3 in the IDT"
    assert decode_error_code(11, 0x19) == "selector index 3 in the GDT, external event"
    assert decode_error_code(6, None) == ""


def test_views_render_as_stable_plain_text(nullwrite):
    s = session_for(nullwrite)
    for cmd in ("info", "bt", "regs", "x/8xb crash_here", "disas", "sym crash_here",
                "console", "mem", "help", "frame 1"):
        v = execute(s, cmd)
        text = render.plain(v)
        assert text.endswith("\n") and "\x1b" not in text
        assert not any(ln != ln.rstrip() for ln in text.splitlines()), cmd
        assert text == render.plain(execute(s, cmd) if cmd != "frame 1" else v)
        assert isinstance(v.to_json(), dict)
    info = render.plain(execute(s, "info"))
    assert "fault address  0x0: the NULL page" in info
    dis = render.plain(execute(s, "disas crash_here"))      # frame 1 is selected
    assert re.search(r"^  ! 0x100f04 <\+9>:  movl \$0x1, \(%rax\)   <- faulting instruction$",
                     dis, re.M)
    execute(s, "frame 0")
    dis = render.plain(execute(s, "disas crash_here"))
    assert re.search(r"^=>! 0x100f04 <\+9>:  movl \$0x1, \(%rax\)   <- faulting instruction$",
                     dis, re.M)


def test_colour_only_when_asked():
    import io
    from rich.text import Text
    buf = io.StringIO()
    render.Output(buf).write_lines([Text("x", style="red")])     # StringIO: no tty
    assert buf.getvalue() == "x\n"
    buf = io.StringIO()
    render.Output(buf, color=True).write_lines([Text("x", style="red")])
    assert "\x1b[" in buf.getvalue() and "x" in buf.getvalue()


def test_io_stop_points_at_the_out_instruction(app):
    """PVM reports port-I/O exits past the instruction: the report shows the `out`."""
    syms = Symbols.open(app("badport"))
    poke = syms.lookup("poke_port")
    mem = text_of(syms, None)
    code = syms.elf.data
    # find `out %al,$0x80` (e6 80) in poke_port
    seg = next(sg for sg in syms.elf.segments if sg.type == 1 and sg.vaddr <= poke.value
               < sg.vaddr + sg.filesz)
    body = code[seg.offset + poke.value - seg.vaddr:][:poke.size]
    out_at = poke.value + body.index(b"\xe6\x80")
    regs = Regs(rip=out_at + 2, rsp=0x7FFF00, rbp=0x7FFF00)
    stop = Crashed("bad-port", 31, "invalid guest port access", rip=out_at + 2)
    t = FakeTarget(regs, {**mem, 0x7FFF00: q(0, 0)}, stop)
    s = Session(t, syms, facts=Facts.from_target(t))
    assert s.stop_pc == out_at and s.fault_pc == out_at
    # at the instruction itself (VMX): unchanged
    t.regs = Regs(rip=out_at, rsp=0x7FFF00, rbp=0x7FFF00)
    s = Session(t, syms, facts=Facts.from_target(t))
    assert s.stop_pc == out_at


def test_trap_core_with_halt_time_registers_points_at_the_fault(nullwrite):
    """A guest that faulted before its trap hooks were armed: the core's registers are
    its HALT's, the monitor recorded the trap frame's rip; that is the fault."""
    regs, mem = fault_in_crash_here(nullwrite)
    mem.update(text_of(nullwrite, None))
    fault = regs.rip
    regs.rip = addr_of(nullwrite, "rt_halt") + 0x19
    t = FakeTarget(regs, mem, Crashed("trap", 11, "guest trapped", rip=fault, vector=14))
    s = Session(t, nullwrite, facts=Facts.from_target(t))
    assert s.stop_pc == fault and s.fault_pc == fault
    v = execute(s, "disas crash_here")
    assert [i.addr for i in v.items if getattr(i, "fault", False)] == [fault]
    from ukdbg.inspect import report
    r = report.build(s)
    assert r.instruction.addr == fault and r.instruction.fault


def test_disassembly_numbers_are_hex():
    from ukdbg.inspect.disasm import Disassembler
    d = Disassembler()
    cases = {"48c7c0ffffffff": "movq $0xffffffffffffffff, %rax",    # sign-extended imm32
             "4883c4f8": "addq $0xfffffffffffffff8, %rsp",
             "c745f801000000": "movl $0x1, -0x8(%rbp)",
             "49b88888888888888888": "movabsq $0x8888888888888888, %r8",
             "64488b042528000000": "movq %fs:0x28, %rax",
             "8b0498": "movl (%rax, %rbx, 4), %eax"}                # the scale stays
    for code, text in cases.items():
        assert d.disassemble(bytes.fromhex(code), 0x1000)[0].text == text
