"""ukdbg/arch/x86_64.py: the x86-64 register model, defined once, and every layout of it.

Regs (general, segment, system) and Fpu (x87 + SSE) convert to and from: KVM's structs,
the GDB remote protocol's `g` packet (the order of TARGET_XML), and Linux core dumps'
user_regs_struct (NT_PRSTATUS) and FXSAVE image (NT_FPREGSET). Round trips are tested
in tests/unit/test_arch.py.
"""

import struct

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGS = ("cs", "ss", "ds", "es", "fs", "gs")
SYSREGS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
REG_FIELDS = GPRS + ("rip", "rflags") + SEGS + ("fs_base", "gs_base") + SYSREGS


class Regs:
    """General, segment (selectors + fs/gs base) and system registers."""
    __slots__ = REG_FIELDS

    def __init__(self, **kw):
        for f in REG_FIELDS:
            setattr(self, f, kw.pop(f, 0))
        if kw:
            raise TypeError(f"unknown registers {sorted(kw)}")

    def copy(self) -> "Regs":
        return Regs(**self.as_dict())

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in REG_FIELDS}

    def __eq__(self, other):
        return isinstance(other, Regs) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return "Regs(" + ", ".join(f"{f}={getattr(self, f):#x}" for f in REG_FIELDS) + ")"

    # --- KVM -------------------------------------------------------------------------
    @classmethod
    def from_kvm(cls, kregs, ksregs) -> "Regs":
        r = cls.__new__(cls)
        for f in GPRS:
            setattr(r, f, getattr(kregs, f))
        r.rip, r.rflags = kregs.rip, kregs.rflags
        for s in SEGS:
            setattr(r, s, getattr(ksregs, s).selector)
        r.fs_base, r.gs_base = ksregs.fs.base, ksregs.gs.base
        for f in SYSREGS:
            setattr(r, f, getattr(ksregs, f))
        return r

    def to_kvm(self, kregs, ksregs) -> None:
        """Write into KVM structs in place. Segment selectors change only the selector
        (descriptor caches stay, as a debugger expects); fs/gs base are written."""
        for f in GPRS:
            setattr(kregs, f, getattr(self, f) & MASK64)
        kregs.rip, kregs.rflags = self.rip & MASK64, self.rflags & MASK64
        for s in SEGS:
            getattr(ksregs, s).selector = getattr(self, s) & 0xFFFF
        ksregs.fs.base, ksregs.gs.base = self.fs_base & MASK64, self.gs_base & MASK64
        for f in SYSREGS:
            setattr(ksregs, f, getattr(self, f) & MASK64)

    # --- Linux core: struct user_regs_struct (27 x u64) ---------------------------------
    def to_user_regs(self) -> bytes:
        return USER_REGS.pack(*(getattr(self, f) & MASK64 if f else 0
                                for f in _USER_REGS_FIELDS))

    @classmethod
    def from_user_regs(cls, data: bytes) -> "Regs":
        vals = USER_REGS.unpack_from(data, 0)
        r = cls()
        for f, v in zip(_USER_REGS_FIELDS, vals):
            if f:
                setattr(r, f, v)
        return r


MASK64 = (1 << 64) - 1
# struct user_regs_struct order (sys/user.h); orig_rax has no place in Regs.
_USER_REGS_FIELDS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                     "rax", "rcx", "rdx", "rsi", "rdi", None, "rip", "cs", "rflags", "rsp",
                     "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")
USER_REGS = struct.Struct("<27Q")


class Fpu:
    """x87 and SSE state in FXSAVE terms (ftw is the abridged 8-bit tag)."""
    __slots__ = ("st", "fcw", "fsw", "ftw", "fop", "fip", "fdp", "xmm", "mxcsr")

    def __init__(self):
        self.st = [b"\0" * 10 for _ in range(8)]
        self.fcw, self.fsw, self.ftw, self.fop = 0x37F, 0, 0, 0
        self.fip = self.fdp = 0
        self.xmm = [b"\0" * 16 for _ in range(16)]
        self.mxcsr = 0x1F80

    def __eq__(self, other):
        return isinstance(other, Fpu) and self.to_fxsave() == other.to_fxsave()

    @classmethod
    def from_kvm(cls, k) -> "Fpu":
        """From a kvm.uapi.kvm_fpu record."""
        f = cls()
        f.st = [k.fpr[16 * i:16 * i + 10] for i in range(8)]
        f.fcw, f.fsw, f.ftw, f.fop = k.fcw, k.fsw, k.ftwx, k.last_opcode
        f.fip, f.fdp = k.last_ip, k.last_dp
        f.xmm = [k.xmm[16 * i:16 * i + 16] for i in range(16)]
        f.mxcsr = k.mxcsr
        return f

    def to_kvm(self, k) -> None:
        """Into a kvm.uapi.kvm_fpu record, in place."""
        k.fpr = b"".join(s.ljust(16, b"\0") for s in self.st)
        k.fcw, k.fsw, k.ftwx, k.last_opcode = self.fcw, self.fsw, self.ftw, self.fop
        k.last_ip, k.last_dp = self.fip, self.fdp
        k.xmm = b"".join(self.xmm)
        k.mxcsr = self.mxcsr

    def to_fxsave(self) -> bytes:
        """The 512-byte FXSAVE64 image (NT_FPREGSET, the XSAVE legacy area)."""
        head = FXSAVE_HEAD.pack(self.fcw, self.fsw, self.ftw, self.fop, self.fip, self.fdp,
                                self.mxcsr, 0xFFFF)
        st = b"".join(s.ljust(16, b"\0") for s in self.st)
        xmm = b"".join(self.xmm)
        return head + st + xmm + b"\0" * 96

    @classmethod
    def from_fxsave(cls, data: bytes) -> "Fpu":
        if len(data) < 416:
            raise ValueError("FXSAVE image too short")
        f = cls()
        f.fcw, f.fsw, f.ftw, f.fop, f.fip, f.fdp, f.mxcsr, _ = FXSAVE_HEAD.unpack_from(data, 0)
        f.st = [bytes(data[32 + 16 * i:32 + 16 * i + 10]) for i in range(8)]
        f.xmm = [bytes(data[160 + 16 * i:176 + 16 * i]) for i in range(16)]
        return f

    def full_tag_word(self) -> int:
        """The 16-bit x87 tag word gdb shows, rebuilt from the abridged tag (as
        i387_tag in gdb): 0 valid, 1 zero, 2 special, 3 empty, by physical register."""
        top = (self.fsw >> 11) & 7
        tag = 0
        for phys in range(8):
            if not self.ftw & (1 << phys):
                t = 3
            else:
                raw = self.st[(phys - top) & 7]
                exp = int.from_bytes(raw[8:10], "little") & 0x7FFF
                mant = int.from_bytes(raw[:8], "little")
                if exp == 0x7FFF:
                    t = 2
                elif exp == 0:
                    t = 1 if mant == 0 else 2
                else:
                    t = 0 if mant >> 63 else 2
            tag |= t << (2 * phys)
        return tag

    @staticmethod
    def abridge_tag(full: int) -> int:
        return sum(1 << i for i in range(8) if (full >> (2 * i)) & 3 != 3)


FXSAVE_HEAD = struct.Struct("<HHBxHQQII")   # fcw fsw ftw(abridged) fop fip fdp mxcsr mask
assert FXSAVE_HEAD.size == 32


# --- GDB remote protocol -------------------------------------------------------------------
# (name, bits, gdb type, group) in `g` packet order = the regnums of TARGET_XML.
GDB_REGS = (
    [(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", "general") for n in GPRS]
    + [("rip", 64, "code_ptr", "general"), ("eflags", 32, "i386_eflags", "general")]
    + [(s, 32, "int32", "general") for s in SEGS]
    + [(f"st{i}", 80, "i387_ext", "float") for i in range(8)]
    + [(n, 32, "int", "float") for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff",
                                         "foseg", "fooff", "fop")]
    + [(f"xmm{i}", 128, "vec128", "vector") for i in range(16)]
    + [("mxcsr", 32, "i386_mxcsr", "vector")]
    + [("fs_base", 64, "int", "system"), ("gs_base", 64, "int", "system")]
    + [(n, 64, "int", "system") for n in SYSREGS]
)
GDB_REG_INDEX = {r[0]: i for i, r in enumerate(GDB_REGS)}
GDB_PC, GDB_SP, GDB_FP = GDB_REG_INDEX["rip"], GDB_REG_INDEX["rsp"], GDB_REG_INDEX["rbp"]


def gdb_reg_bytes(regs: Regs, fpu: Fpu, n: int) -> bytes:
    """Register n of the `g` layout as little-endian bytes."""
    name, bits, _t, _g = GDB_REGS[n]
    size = bits // 8
    if name == "eflags":
        v = regs.rflags
    elif name.startswith("st"):
        return fpu.st[int(name[2:])][:10]
    elif name.startswith("xmm"):
        return fpu.xmm[int(name[3:])]
    elif name == "fctrl":
        v = fpu.fcw
    elif name == "fstat":
        v = fpu.fsw
    elif name == "ftag":
        v = fpu.full_tag_word()
    elif name == "fiseg":
        v = (fpu.fip >> 32) & 0xFFFF
    elif name == "fioff":
        v = fpu.fip & 0xFFFFFFFF
    elif name == "foseg":
        v = (fpu.fdp >> 32) & 0xFFFF
    elif name == "fooff":
        v = fpu.fdp & 0xFFFFFFFF
    elif name == "fop":
        v = fpu.fop
    elif name == "mxcsr":
        v = fpu.mxcsr
    else:
        v = getattr(regs, name)
    return (v & ((1 << bits) - 1)).to_bytes(size, "little")


def gdb_set_reg(regs: Regs, fpu: Fpu, n: int, data: bytes) -> None:
    """Store register n from its little-endian bytes (the `P` packet)."""
    name, bits, _t, _g = GDB_REGS[n]
    if len(data) != bits // 8:
        raise ValueError(f"register {name} takes {bits // 8} bytes, got {len(data)}")
    v = int.from_bytes(data, "little")
    if name == "eflags":
        regs.rflags = v
    elif name.startswith("st"):
        fpu.st[int(name[2:])] = bytes(data)
    elif name.startswith("xmm"):
        fpu.xmm[int(name[3:])] = bytes(data)
    elif name == "fctrl":
        fpu.fcw = v & 0xFFFF
    elif name == "fstat":
        fpu.fsw = v & 0xFFFF
    elif name == "ftag":
        fpu.ftw = Fpu.abridge_tag(v)
    elif name == "fiseg":
        fpu.fip = (fpu.fip & 0xFFFFFFFF) | ((v & 0xFFFF) << 32)
    elif name == "fioff":
        fpu.fip = (fpu.fip & ~0xFFFFFFFF) | v
    elif name == "foseg":
        fpu.fdp = (fpu.fdp & 0xFFFFFFFF) | ((v & 0xFFFF) << 32)
    elif name == "fooff":
        fpu.fdp = (fpu.fdp & ~0xFFFFFFFF) | v
    elif name == "fop":
        fpu.fop = v & 0x7FF
    elif name == "mxcsr":
        fpu.mxcsr = v
    else:
        setattr(regs, name, v)


def gdb_encode(regs: Regs, fpu: Fpu) -> bytes:
    """The `g` reply payload (raw bytes; hex-encode for the wire)."""
    return b"".join(gdb_reg_bytes(regs, fpu, n) for n in range(len(GDB_REGS)))


GDB_REG_SIZES = [bits // 8 for (_n, bits, _t, _g) in GDB_REGS]
GDB_G_SIZE = sum(GDB_REG_SIZES)


def gdb_decode(data: bytes, regs: Regs, fpu: Fpu) -> None:
    """Apply a `G` payload (raw bytes, possibly shorter than the full set)."""
    pos = 0
    for n, size in enumerate(GDB_REG_SIZES):
        if pos + size > len(data):
            break
        gdb_set_reg(regs, fpu, n, data[pos:pos + size])
        pos += size


def _target_xml() -> str:
    feats = (
        ("org.gnu.gdb.i386.core", lambda n: n < GDB_REG_INDEX["xmm0"]),
        ("org.gnu.gdb.i386.sse", lambda n: GDB_REG_INDEX["xmm0"] <= n <= GDB_REG_INDEX["mxcsr"]),
        ("org.gnu.gdb.i386.linux", lambda n: False),
        ("org.gnu.gdb.i386.segments", lambda n: n in (GDB_REG_INDEX["fs_base"],
                                                      GDB_REG_INDEX["gs_base"])),
        ("org.ukdbg.x86-64.system", lambda n: GDB_REG_INDEX["cr0"] <= n),
    )
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
           "<target>", "<architecture>i386:x86-64</architecture>"]
    for feat, pick in feats:
        if feat == "org.gnu.gdb.i386.linux":
            continue
        out.append(f'<feature name="{feat}">')
        if feat == "org.gnu.gdb.i386.core":
            out.append(_EFLAGS_TYPE)
        if feat == "org.gnu.gdb.i386.sse":
            out.append(_SSE_TYPES)
        for n, (name, bits, typ, group) in enumerate(GDB_REGS):
            if pick(n):
                out.append(f'<reg name="{name}" bitsize="{bits}" type="{typ}" '
                           f'regnum="{n}" group="{group}"/>')
        out.append("</feature>")
    out.append("</target>")
    return "\n".join(out)


_EFLAGS_TYPE = """<flags id="i386_eflags" size="4">
<field name="" start="22" end="31"/><field name="CF" start="0" end="0"/>
<field name="" start="1" end="1"/><field name="PF" start="2" end="2"/>
<field name="AF" start="4" end="4"/><field name="ZF" start="6" end="6"/>
<field name="SF" start="7" end="7"/><field name="TF" start="8" end="8"/>
<field name="IF" start="9" end="9"/><field name="DF" start="10" end="10"/>
<field name="OF" start="11" end="11"/><field name="NT" start="14" end="14"/>
<field name="RF" start="16" end="16"/><field name="VM" start="17" end="17"/>
<field name="AC" start="18" end="18"/><field name="VIF" start="19" end="19"/>
<field name="VIP" start="20" end="20"/><field name="ID" start="21" end="21"/>
</flags>"""
_SSE_TYPES = """<vector id="v8bf16" type="bfloat16" count="8"/>
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v16i8" type="int8" count="16"/>
<vector id="v8i16" type="int16" count="8"/>
<vector id="v4i32" type="int32" count="4"/>
<vector id="v2i64" type="int64" count="2"/>
<union id="vec128"><field name="v8_bfloat16" type="v8bf16"/>
<field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
<field name="uint128" type="uint128"/></union>
<flags id="i386_mxcsr" size="4">
<field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
<field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
<field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
<field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
<field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
<field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
<field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
</flags>"""

TARGET_XML = _target_xml()
SW_BP = b"\xcc"

# --- DR7 (debug registers) ------------------------------------------------------------------
DR6_BS = 1 << 14                  # single step
DR7_LOCAL_ENABLE = lambda slot: 1 << (2 * slot)   # noqa: E731 (execute, length 1)
DR7_RESERVED_1 = 1 << 10

# --- decoding for people (inspector, monitor regs) ----------------------------------------
RFLAGS_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
               (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"),
               (19, "VIF"), (20, "VIP"), (21, "ID"))
CR0_BITS = ((0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"),
            (18, "AM"), (29, "NW"), (30, "CD"), (31, "PG"))
CR4_BITS = ((0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"),
            (7, "PGE"), (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (11, "UMIP"),
            (12, "LA57"), (13, "VMXE"), (14, "SMXE"), (16, "FSGSBASE"), (17, "PCIDE"),
            (18, "OSXSAVE"), (20, "SMEP"), (21, "SMAP"), (22, "PKE"))
EFER_BITS = ((0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE"), (12, "SVME"), (14, "FFXSR"))


def decode_bits(value: int, table) -> list:
    return [name for bit, name in table if value >> bit & 1]
