"""ukdbg/inspect/unwind.py: backtraces from DWARF CFI (.eh_frame, .debug_frame, signal
frames, per-register rules), falling back to frame pointers; each physical frame then
expands into the inlined calls at its pc, as gdb shows them.
"""

# DWARF register numbers of x86-64 (System V psABI, figure 3.36).
DWARF_REGS = {0: "rax", 1: "rdx", 2: "rcx", 3: "rbx", 4: "rsi", 5: "rdi", 6: "rbp",
              7: "rsp", 8: "r8", 9: "r9", 10: "r10", 11: "r11", 12: "r12", 13: "r13",
              14: "r14", 15: "r15", 16: "rip", 49: "rflags", 50: "es", 51: "cs",
              52: "ss", 53: "ds", 54: "fs", 55: "gs"}
RSP, RBP, RIP = 7, 6, 16
CALLEE_SAVED = (3, 6, 12, 13, 14, 15)
CALLER_SAVED = (0, 1, 2, 4, 5, 8, 9, 10, 11)
MAX_FRAMES = 256


class Frame:
    """One frame as a debugger shows it.

    level: number in the backtrace; pc; func/offset: ELF symbol (offset None for an
    inlined call); line: SourceLine; regs: {name: value} known in this frame (inlined
    frames share their physical frame's); cfa; how: 'regs' (frame 0), 'cfi', 'fp'
    (frame pointers), 'inline'; signal: a trap stub (gdb: <signal handler called>).
    """
    __slots__ = ("level", "pc", "lookup_pc", "func", "offset", "line", "regs", "cfa", "how",
                 "signal", "inline")

    def __init__(self, pc, lookup_pc, regs, cfa, how, signal=False):
        self.level = 0
        self.pc, self.lookup_pc, self.regs, self.cfa = pc, lookup_pc, regs, cfa
        self.how, self.signal = how, signal
        self.func = None
        self.offset = None
        self.line = None
        self.inline = False

    def __repr__(self):
        return f"Frame(#{self.level} {self.pc:#x} {self.func} {self.line})"


class Backtrace:
    """frames (innermost first) and why unwinding stopped (`end`, words)."""
    __slots__ = ("frames", "end")

    def __init__(self, frames, end):
        self.frames, self.end = frames, end


def backtrace(target, regs, symbols, limit: int = MAX_FRAMES) -> Backtrace:
    """Unwind from regs (arch.x86_64.Regs) over target's memory."""
    state = {n: getattr(regs, name) for n, name in DWARF_REGS.items()
             if hasattr(regs, name)}
    mem = _Memory(target)
    physical = []               # [pc, lookup pc, cfa, state, signal, how]
    exact = True                # frame 0's pc (and a signal frame's caller's) is exact
    how = "regs"
    seen = set()
    end = "frame limit reached"
    while len(physical) < limit:
        pc = state.get(RIP)
        lookup = pc if exact else pc - 1
        frame = [pc, lookup, None, state, False, how]
        physical.append(frame)
        key = (pc, state.get(RSP))
        if key in seen:
            end = "the stack repeats (corrupt stack?)"
            break
        seen.add(key)
        res = _step(state, lookup, symbols, mem)
        if isinstance(res, str):
            end = res
            break
        caller, cfa, signal, via_cfi = res
        frame[2], frame[4] = cfa, signal
        new_pc = caller.get(RIP)
        if not new_pc:
            end = "no caller (outermost frame)"
            break
        old_sp, new_sp = state.get(RSP), caller.get(RSP)
        if not signal and old_sp is not None and new_sp is not None and new_sp <= old_sp:
            end = "the caller's stack is inner to this frame (corrupt stack?)"
            break
        if not mem.readable(new_pc):
            end = f"the return address {new_pc:#x} is not in memory"
            break
        state, exact, how = caller, signal, "cfi" if via_cfi else "fp"
    frames = []
    for pc, lookup, cfa, st, signal, how in physical:
        named = {DWARF_REGS[k]: v for k, v in st.items() if k in DWARF_REGS}
        frames.extend(_logical(pc, lookup, named, cfa, how, signal, symbols))
    for i, f in enumerate(frames):
        f.level = i
    return Backtrace(frames, end)


def _logical(pc, lookup, regs, cfa, how, signal, symbols):
    """A physical frame as [innermost inlined call, ..., the real function]."""
    # A return address may lie past a noreturn call, in the next function: name the
    # caller from lookup (pc - 1), as gdb does.
    hit = symbols.symbolize(lookup) if symbols is not None else None
    func, off = (hit[0].name, pc - hit[0].value) if hit else (None, None)
    line = symbols.line_for(lookup) if symbols is not None else None
    chain = symbols.inline_chain(lookup) if symbols is not None else []
    base = Frame(pc, lookup, regs, cfa, how, signal)
    if len(chain) <= 1:
        base.func = chain[0][0] if chain and chain[0][0] and not hit else func
        base.offset = off
        base.line = line
        return [base]
    out = []
    for k in range(len(chain) - 1, -1, -1):
        f = Frame(pc, lookup, regs, cfa, "inline" if k else how, signal and k == 0)
        f.func = chain[k][0]
        f.inline = k > 0
        f.line = line if k == len(chain) - 1 else chain[k + 1][1]
        if k == 0:
            f.func = func or chain[0][0]
            f.offset = off
        out.append(f)
    return out


class _Memory:
    def __init__(self, target):
        self.target = target

    def readable(self, addr) -> bool:
        try:
            return 0 <= addr < 1 << 64 and len(self.target.read_memory(addr, 1)) == 1
        except Exception:
            return False

    def u64(self, addr):
        if addr is None or addr < 0 or addr >= 1 << 64:
            return None
        try:
            b = self.target.read_memory(addr, 8)
        except Exception:       # TargetError; a corrupt core must not crash a backtrace
            return None
        return int.from_bytes(b, "little") if len(b) == 8 else None


def _step(state, lookup, symbols, mem):
    """One frame up: (caller state, cfa, this frame is a signal frame, via CFI) or a
    string saying why not."""
    row = symbols.cfi_row(lookup) if symbols is not None else None
    if row is not None:
        res = _step_cfi(state, row, mem)
        if not isinstance(res, str):
            return res + (True,)
        if res.startswith("outermost"):
            return res
    return _step_fp(state, lookup, symbols, mem)


def _step_cfi(state, row, mem):
    cfa_rule = row.cfa
    if cfa_rule.expr is not None:
        cfa = _eval(cfa_rule.expr, state, mem, None)
    elif cfa_rule.reg in state:
        cfa = (state[cfa_rule.reg] + cfa_rule.offset) & (1 << 64) - 1
    else:
        cfa = None
    if cfa is None:
        return "cannot compute the frame address"
    new = {}
    for n, v in state.items():
        if n in (RIP, RSP):
            continue
        if n in CALLER_SAVED and not row.signal:
            continue                # clobbered by the call unless a rule says where
        new[n] = v
    for reg, rule in row.rules.items():
        t = rule.type
        if t == "OFFSET":
            v = mem.u64(cfa + rule.arg)
        elif t == "VAL_OFFSET":
            v = cfa + rule.arg
        elif t == "REGISTER":
            v = state.get(rule.arg)
        elif t == "SAME_VALUE":
            v = state.get(reg)
        elif t == "EXPRESSION":
            a = _eval(rule.arg, state, mem, cfa)
            v = mem.u64(a) if a is not None else None
        elif t == "VAL_EXPRESSION":
            v = _eval(rule.arg, state, mem, cfa)
        else:                       # UNDEFINED, ARCHITECTURAL
            v = None
        if v is None:
            new.pop(reg, None)
        else:
            new[reg] = v & (1 << 64) - 1
    if row.ra in row.rules and row.rules[row.ra].type == "UNDEFINED":
        return "outermost frame (its return address is undefined in the CFI)"
    if RSP not in row.rules:
        new[RSP] = cfa
    ra = new.get(row.ra)
    if ra is None:
        return "the return address is not readable"
    new[RIP] = ra
    return new, cfa, row.signal


def _step_fp(state, lookup, symbols, mem):
    """The rbp chain; at a function's first two instructions, the frame is not set up."""
    sp, bp, pc = state.get(RSP), state.get(RBP), state.get(RIP)
    start = None
    if symbols is not None:
        fr = symbols.function_range(lookup)
        start = fr[0] if fr else None
    new = {n: v for n, v in state.items() if n in CALLEE_SAVED + (49, 50, 51, 52, 53, 54, 55)}
    if start is not None and pc == start and sp is not None:
        ra, cfa = mem.u64(sp), sp + 8
    elif start is not None and pc == start + 1 and sp is not None:   # after push %rbp
        ra, cfa = mem.u64(sp + 8), sp + 16
        new[RBP] = mem.u64(sp)
    elif bp:
        ra, cfa = mem.u64(bp + 8), bp + 16
        new[RBP] = mem.u64(bp)
    else:
        return "no frame information and no frame pointer (rbp is 0)"
    if ra is None or new.get(RBP, 0) is None:
        return "cannot read the frame-pointer chain"
    new[RSP] = cfa
    new[RIP] = ra
    return new, cfa, False, False


_PARSER = None
_M64 = (1 << 64) - 1
_BINARY = {"DW_OP_plus": lambda a, b: a + b, "DW_OP_minus": lambda a, b: a - b,
           "DW_OP_mul": lambda a, b: a * b, "DW_OP_and": lambda a, b: a & b,
           "DW_OP_or": lambda a, b: a | b, "DW_OP_xor": lambda a, b: a ^ b,
           "DW_OP_shl": lambda a, b: a << b, "DW_OP_shr": lambda a, b: (a & _M64) >> b}
_CONSTS = {"DW_OP_const1u", "DW_OP_const1s", "DW_OP_const2u", "DW_OP_const2s",
           "DW_OP_const4u", "DW_OP_const4s", "DW_OP_const8u", "DW_OP_const8s",
           "DW_OP_constu", "DW_OP_consts", "DW_OP_addr"}


def _ops(expr):
    """pyelftools' DWARFExprParser decodes the expression (opcodes, LEB128 operands)."""
    global _PARSER
    if _PARSER is None:
        from elftools.dwarf.dwarf_expr import DWARFExprParser
        from elftools.dwarf.structs import DWARFStructs
        _PARSER = DWARFExprParser(DWARFStructs(little_endian=True, dwarf_format=32,
                                               address_size=8))
    return _PARSER.parse_expr(list(expr))


def _eval(expr, state, mem, cfa):
    """Evaluate a DWARF expression (the stack machine CFI needs: registers, constants,
    arithmetic, stack ops, deref). Returns the top of stack, or None when it cannot be
    computed (an op outside that set, an unknown register, unreadable memory)."""
    stack = [cfa] if cfa is not None else []
    try:
        for op in _ops(expr):
            n, args = op.op_name, op.args
            if n.startswith("DW_OP_breg") and n != "DW_OP_bregx":
                stack.append(state[int(n[10:])] + args[0])
            elif n == "DW_OP_bregx":
                stack.append(state[args[0]] + args[1])
            elif n.startswith("DW_OP_reg") and n != "DW_OP_regx":
                stack.append(state[int(n[9:])])
            elif n.startswith("DW_OP_lit"):
                stack.append(int(n[9:]))
            elif n in _CONSTS:
                stack.append(args[0])
            elif n == "DW_OP_deref":
                v = mem.u64(stack.pop() & _M64)
                if v is None:
                    return None
                stack.append(v)
            elif n == "DW_OP_plus_uconst":
                stack.append(stack.pop() + args[0])
            elif n in _BINARY:
                b, a = stack.pop(), stack.pop()
                stack.append(_BINARY[n](a, b))
            elif n == "DW_OP_neg":
                stack.append(-stack.pop())
            elif n == "DW_OP_dup":
                stack.append(stack[-1])
            elif n == "DW_OP_drop":
                stack.pop()
            elif n == "DW_OP_over":
                stack.append(stack[-2])
            elif n == "DW_OP_pick":
                stack.append(stack[-1 - args[0]])
            elif n == "DW_OP_swap":
                stack[-1], stack[-2] = stack[-2], stack[-1]
            else:
                return None
    except (IndexError, KeyError, ValueError, TypeError):
        return None
    except Exception:           # pyelftools on a truncated or unknown opcode
        return None
    return stack[-1] & _M64 if stack else None
