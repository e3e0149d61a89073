"""arch/x86_64.py: every register layout round-trips; arch/mmu.py walks hvt's tables."""

import struct

from hypothesis import given, strategies as st

from ukdbg.arch import mmu
from ukdbg.arch import x86_64 as a
from ukdbg.kvm import uapi

u64 = st.integers(0, 2**64 - 1)


@given(st.lists(u64, min_size=len(a.REG_FIELDS), max_size=len(a.REG_FIELDS)))
def test_gdb_and_core_round_trip(values):
    r = a.Regs(**dict(zip(a.REG_FIELDS, values)))
    # The wire carries eflags and selectors as 32 bits: mask what gdb cannot see.
    r.rflags &= 0xFFFFFFFF
    for s in a.SEGS:
        setattr(r, s, getattr(r, s) & 0xFFFFFFFF)
    f = a.Fpu()
    r2, f2 = a.Regs(), a.Fpu()
    a.gdb_decode(a.gdb_encode(r, f), r2, f2)
    assert r2 == r and f2 == f
    u = a.Regs.from_user_regs(r.to_user_regs())
    for name in a.GPRS + ("rip", "fs_base", "gs_base"):
        assert getattr(u, name) == getattr(r, name)


@given(st.lists(st.binary(min_size=16, max_size=16), min_size=16, max_size=16),
       st.integers(0, 0xFFFFFFFF))
def test_fpu_layouts(xmms, mxcsr):
    f = a.Fpu()
    f.xmm, f.mxcsr = xmms, mxcsr
    f.st[0] = bytes(range(10))
    assert a.Fpu.from_fxsave(f.to_fxsave()) == f
    k = uapi.kvm_fpu()
    f.to_kvm(k)
    assert a.Fpu.from_kvm(uapi.kvm_fpu.unpack(k.pack())) == f
    assert len(f.to_fxsave()) == 512


def test_gdb_layout_matches_target_xml():
    assert a.GDB_REGS[a.GDB_PC][0] == "rip" and a.GDB_REGS[a.GDB_SP][0] == "rsp"
    assert [n for n, *_ in a.GDB_REGS[12:16]] == ["r12", "r13", "r14", "r15"]
    for i, (name, bits, _t, _g) in enumerate(a.GDB_REGS):
        assert f'name="{name}" bitsize="{bits}"' in a.TARGET_XML
        assert f'regnum="{i}"' in a.TARGET_XML
    assert a.GDB_G_SIZE == sum(b // 8 for _n, b, _t, _g in a.GDB_REGS)


def test_set_single_registers():
    r, f = a.Regs(), a.Fpu()
    a.gdb_set_reg(r, f, a.GDB_REG_INDEX["r13"], (0xDEAD).to_bytes(8, "little"))
    a.gdb_set_reg(r, f, a.GDB_REG_INDEX["xmm5"], bytes(range(16)))
    a.gdb_set_reg(r, f, a.GDB_REG_INDEX["cr3"], (0x5000).to_bytes(8, "little"))
    assert r.r13 == 0xDEAD and f.xmm[5] == bytes(range(16)) and r.cr3 == 0x5000
    assert a.gdb_reg_bytes(r, f, a.GDB_REG_INDEX["r13"]) == (0xDEAD).to_bytes(8, "little")


def test_full_tag_word():
    f = a.Fpu()
    assert f.full_tag_word() == 0xFFFF        # all empty
    f.ftw = 0x01                               # st0 valid, holds 1.0
    f.st[0] = (1 << 63).to_bytes(8, "little") + (0x3FFF).to_bytes(2, "little")
    assert f.full_tag_word() & 3 == 0
    assert a.Fpu.abridge_tag(f.full_tag_word()) == 0x01


def _hvt_tables(mem_size):
    """hvt-abi.md §3 tables built by ukdbg's own boot code in a bytearray."""
    from ukdbg.tender import boot

    class Mem:
        def __init__(self):
            self.b = bytearray(0x10000)

        def write(self, gpa, data):
            self.b[gpa:gpa + len(data)] = data
    m = Mem()
    boot.setup_page_tables(m, mem_size)
    return m.b


def test_walk_hvt_tables():
    b = _hvt_tables(64 << 20)

    def rd(gpa):
        return struct.unpack_from("<Q", b, gpa)[0] if gpa + 8 <= len(b) else None
    t = mmu.walk(rd, 0x80010021, 0x2000, 0x620, 0x500, 0x1234567)
    assert t and t.gpa == 0x1234567 and t.page_size == 2 << 20 and t.writable
    t = mmu.walk(rd, 0x80010021, 0x2000, 0x620, 0x500, 0x10008)
    assert t and t.gpa == 0x10008 and t.page_size == 4096 and not t.writable
    t = mmu.walk(rd, 0x80010021, 0x2000, 0x620, 0x500, 0x0)
    assert not t and t.level == "PT" and "not present" in t.reason
    t = mmu.walk(rd, 0x80010021, 0x2000, 0x620, 0x500, 64 << 20)
    assert not t and t.level == "PD"
    t = mmu.walk(rd, 0x80010021, 0x2000, 0x620, 0x500, 0x0000800000000000)
    assert not t and "non-canonical" in t.reason
    runs = list(mmu.mapped_ranges(rd, 0x80010021, 0x2000, 0x620, 0x500))
    assert runs[0][:3] == (0x10000, 0x10000, 0xF0000) and not runs[0][3]
    assert runs[1][:3] == (0x100000, 0x100000, (64 << 20) - 0x100000) and runs[1][3]
