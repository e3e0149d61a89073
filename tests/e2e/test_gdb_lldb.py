"""One lldb session against the gdb stub: attach, registers, backtrace, step.

No set-up command: the stub's qOffsets reply places the image (docs/gdb.md, "lldb")."""

import re
import subprocess

import pytest

from gdbguest import Guest
from helpers import lldb_path

pytestmark = [pytest.mark.kvm, pytest.mark.lldb]


def test_lldb_session(fixtures_dir):
    with Guest("regs") as g:
        cmds = ["gdb-remote " + g.remote(),
                "breakpoint set --name load_regs_and_fault",
                "breakpoint set --name regs_loaded",
                "continue",
                "thread step-inst",
                "register read rip",
                "continue",
                "register read rax rbx r12 r15",
                "bt",
                "register read xmm0 mxcsr cr0 fs_base",
                "continue"]
        argv = [lldb_path(), "-b", "--no-lldbinit"]
        for c in cmds:
            argv += ["-o", c]
        argv.append(g.app)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        out = r.stdout
        assert "stop reason = breakpoint 1.1" in out, out + r.stderr
        # One instruction on from the first breakpoint, still in the function.
        step = out.split("thread step-inst", 1)[1]
        assert "stop reason = instruction step into" in step, out
        assert re.search(r"rip = 0x[0-9a-f]+\s+regs.hvt`load_regs_and_fault \+ \d+", step), out
        assert "stop reason = breakpoint 2.1" in out, out
        vals = {m.group(1): int(m.group(2), 16)
                for m in re.finditer(r"^\s+(\w+) = (0x[0-9a-f]+)", out, re.M)}
        assert vals["rax"] == 0x1111111111111111, out
        assert vals["rbx"] == 0x2222222222222222, out
        assert vals["r12"] == 0xcccccccccccccccc, out
        assert vals["r15"] == 0xffffffffffffffff, out
        assert vals["cr0"] == 0x80010021 and vals["mxcsr"] == 0x1f80, out
        # The backtrace goes through the assembly function to main and the runtime.
        assert re.search(r"frame #0: 0x[0-9a-f]+ regs.hvt`load_regs_and_fault", out), out
        assert re.search(r"frame #1: 0x[0-9a-f]+ regs.hvt`main", out), out
        assert re.search(r"frame #2: 0x[0-9a-f]+ regs.hvt`rt_start", out), out
        # Running on into the ud2: the fault is a SIGILL stop at the faulting line.
        assert re.search(r"stop reason = signal SIGILL\n\s+frame #0: 0x[0-9a-f]+ "
                         r"regs.hvt`load_regs_and_fault at regs_asm.S:48", out), out
        assert g.wait() in (137, 255)        # lldb kills (or lets go of) it on exit
