"""ukdbg/inspect/disasm.py: capstone -> Instruction records (AT&T syntax, as gdb shows);
no printing: commands decorate the records and render.py draws them.
"""

import re


class Instruction:
    __slots__ = ("addr", "size", "raw", "mnemonic", "operands", "target")

    def __init__(self, addr, size, raw, mnemonic, operands, target=None):
        self.addr, self.size, self.raw = addr, size, raw
        self.mnemonic, self.operands = mnemonic, operands
        self.target = target          # branch/call destination, when direct

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.operands}".rstrip()

    def __repr__(self):
        return f"Instruction({self.addr:#x}, {self.text!r})"


class Disassembler:
    """x86-64 disassembler; capstone loads on first use (it costs ~80 ms to import)."""

    def __init__(self, syntax: str = "att"):
        self.syntax = syntax
        self._cs = None

    def _engine(self):
        if self._cs is None:
            import capstone
            cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            if self.syntax == "att":
                cs.syntax = capstone.CS_OPT_SYNTAX_ATT
            cs.detail = False
            self._cs = cs
        return self._cs

    def disassemble(self, code: bytes, addr: int, count: int = 0) -> list:
        """Decode up to `count` instructions (0: all) of code at addr. Undecodable bytes
        become one-byte `(bad)` records, so a listing never stops early."""
        cs = self._engine()
        out = []
        pos = 0
        while pos < len(code) and (not count or len(out) < count):
            got = False
            for (a, size, mn, ops) in cs.disasm_lite(code[pos:], addr + pos):
                out.append(Instruction(a, size, bytes(code[pos:pos + size]), mn,
                                       hex_operands(mn, ops), _target(mn, ops)))
                pos += size
                got = True
                if count and len(out) >= count:
                    break
            if not got:
                out.append(Instruction(addr + pos, 1, bytes(code[pos:pos + 1]), "(bad)", ""))
                pos += 1
        return out

    def one(self, code: bytes, addr: int):
        ins = self.disassemble(code[:16], addr, 1)
        return ins[0] if ins else None


_BRANCH = ("call", "jmp", "j", "loop")
# Capstone prints numbers below 10, and some 64-bit ones, in decimal
# (`movabsq $9838263505978427528, %r8` beside `$0x1111111111111111`); gdb prints hex
# throughout: immediates as unsigned values of the operand size, displacements signed.
_IMM = re.compile(r"\$(-?\d+)(?![\dx])")
_DISP = re.compile(r"(?<![\w$])(-?\d+)(?=\(|$|,)")
_BITS = {"b": 8, "w": 16, "l": 32, "q": 64}


def hex_operands(mnemonic: str, ops: str) -> str:
    if not ops or not any(c.isdigit() for c in ops):
        return ops

    def imm(m):
        v = int(m.group(1))
        if v < 0:
            v &= (1 << _BITS.get(mnemonic[-1:], 64)) - 1
        return f"${v:#x}"

    def disp(m):
        v = int(m.group(1))
        return f"-{-v:#x}" if v < 0 else f"{v:#x}"
    return _DISP.sub(disp, _IMM.sub(imm, ops))


def _target(mnemonic: str, operands: str):
    """The destination of a direct call/jump (`call 0x100efb`), else None."""
    if not mnemonic.startswith(_BRANCH):
        return None
    op = operands.strip()
    if op.startswith("$"):
        op = op[1:]
    try:
        return int(op, 16) if op.startswith("0x") else None
    except ValueError:
        return None
