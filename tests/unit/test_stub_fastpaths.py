"""The gdb stub's shortcuts give the answers of the long way (issue 12): mmu.gpa_of and
LiveTarget's one-page reads against mmu.walk and MachineView's reads, replies answered from the per-stop caches
against the parsed path, and the bounds on what a client can make the stub keep."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from ukdbg.arch import mmu
from ukdbg.debugger.live_target import LiveTarget
from ukdbg.errors import TargetError
from ukdbg.gdbstub import packets as P
from ukdbg.gdbstub.server import GdbServer
from ukdbg.kvm import uapi
from ukdbg.kvm.memory import GuestMemory
from ukdbg.target import Stepped
from ukdbg.tender import boot
from ukdbg.tender.view import MachineView

from .test_gdbstub_live import FakeVcpu, m  # noqa: F401 (fixture)
from .test_gdbstub_server import FakeChannel, FakeTarget

MEM = 4 << 20
PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
P_, RW, PS = 1, 2, 0x80


class _M:
    """The little of a Machine that MachineView and LiveTarget read."""

    def __init__(self, mem, vcpu):
        self.mem, self.vcpu, self.debug = mem, vcpu, None


def _tables(mem):
    """Every shape of walk: a 1 GiB page, a 2 MiB page, 4 KiB pages, entries not
    present, tables and pages outside RAM."""
    w = mem.write_u64
    w(PML4 + 0 * 8, PDPT | P_ | RW)
    w(PML4 + 1 * 8, 0x7FFF_F000 | P_)                 # a PDPT outside RAM
    w(PML4 + 511 * 8, PDPT | P_)                      # the top half, same tables
    w(PDPT + 0 * 8, PD | P_ | RW)
    w(PDPT + 1 * 8, (1 << 30) | P_ | PS)              # 1 GiB page (outside RAM)
    w(PDPT + 3 * 8, 0)                                # not present
    w(PD + 0 * 8, PT | P_ | RW)
    w(PD + 1 * 8, 0x200000 | P_ | RW | PS)            # 2 MiB page
    w(PD + 2 * 8, 0x7FE0_0000 | P_ | PS)              # 2 MiB page outside RAM
    for i in range(0, 512, 3):                        # every third 4 KiB page mapped,
        w(PT + i * 8, (((i * 7) % 1024) << 12) | P_)  # scattered (some past RAM)


@settings(max_examples=300, deadline=None)
@given(addr=st.one_of(st.integers(0, 1 << 31), st.integers(0, (1 << 64) - 1),
                      st.integers(0xFFFF_8000_0000_0000, 0xFFFF_8000_0040_0000)),
       size=st.sampled_from([1, 8, 0x40, 0x100, 0x1000, 0x1001, 0x3000]))
def test_one_page_reads_match_the_full_walk(addr, size):
    mem = GuestMemory(MEM)
    try:
        mem.write(0, os.urandom(MEM // 4))
        _tables(mem)
        vcpu = FakeVcpu()
        vcpu.sregs = boot.boot_sregs(uapi.kvm_sregs())
        vcpu.sregs.cr3 = PML4
        m = _M(mem, vcpu)
        fast, slow = LiveTarget(m), MachineView(m)
        fast.sregs(), slow.sregs()             # the walk path (no KVM_TRANSLATE)

        def read(t):
            try:
                return t.read_memory(addr, size)
            except TargetError as e:
                return ("error", e.errno)
        assert read(fast) == read(slow)
        if size <= 0x1000 - (addr & 0xFFF):
            w = slow.translate(addr)
            assert mmu.gpa_of(mem.view, mem.size, *slow.paging(), addr) == \
                (w.gpa if w else None)
    finally:
        mem.close()


def test_the_walk_is_taken_only_when_it_costs_no_ioctl():
    mem = GuestMemory(MEM)
    try:
        boot.setup_page_tables(mem, MEM)
        vcpu = FakeVcpu()
        calls = []
        vcpu.translate = lambda gva: calls.append(gva) or (gva, True)
        t = LiveTarget(_M(mem, vcpu))
        t.read_memory(0x100000, 0x40)           # no sregs yet: KVM_TRANSLATE, as before
        assert calls == [0x100000]
        t.sregs()
        t.read_memory(0x100000, 0x40)
        assert calls == [0x100000]
    finally:
        mem.close()


# --- the server's caches ------------------------------------------------------------------
def _serve(target, stream):
    ch = FakeChannel([P.frame(b"QStartNoAckMode")] + stream)
    srv = GdbServer(target, ch)
    srv.serve(Stepped())
    replies = [b for k, b in P.PacketReader().feed(bytes(ch.out)) if k == P.PACKET]
    return srv, replies[1:]


def test_cached_replies_are_those_of_the_long_way():
    step = [P.frame(b"vCont;s:p1.1;c"), P.frame(b"qXfer:threads:read::0,1000"),
            P.frame(b"m7fffc0,40")]
    t = FakeTarget()
    t.regs.rsp = 0x7fffc8
    t.mem = bytearray(0x800000)
    fast, r_fast = _serve(t, step * 3)
    assert len(r_fast) == 9 and fast.packets == 10
    # The same step served once by a fresh server: every reply computed.
    slow, r_slow = _serve(t, [P.frame(b"vCont;s:p1.1;c"),
                              P.frame(b"qXfer:threads:read::0,1000"),
                              P.frame(b"m7fffc0,40")])
    assert r_fast[:3] == r_slow
    assert r_fast[3:6] == r_slow and r_fast[6:9] == r_slow
    assert b"qXfer:threads:read::0,1000" in fast._static
    assert b"m7fffc0,40" in fast._cache            # prefetched after the last stop


def test_a_write_drops_the_prefetched_reply():
    t = FakeTarget()
    t.regs.rsp = 0x100048
    line = b"m100040,40"
    _, r = _serve(t, [P.frame(b"vCont;s:p1.1;c"), P.frame(b"M100040,4:deadbeef"),
                      P.frame(line)])
    assert r[1] == b"OK"
    assert r[2].startswith(b"deadbeef")


def test_a_packet_split_or_glued_is_still_answered():
    t = FakeTarget()
    q = P.frame(b"qXfer:threads:read::0,1000")
    srv, r = _serve(t, [q, q[:5], q[5:], q + q, b"\x00" + q])
    assert len(r) == 5 and len(set(r)) == 1


def test_what_a_client_makes_the_stub_keep_is_bounded():
    t = FakeTarget()
    many = [P.frame(b"Z0,%x,1" % (0x100000 + i)) for i in range(600)] + \
        [P.frame(b"m%x,1" % (0x100000 + i)) for i in range(600)]
    srv, r = _serve(t, many)
    assert len(r) == 1200
    assert len(srv._frames) <= 256 and len(srv._parsed) <= 256
    assert len(srv._cache) <= 2 and len(srv._wire) <= 2


def test_the_stack_line_is_prefetched_only_after_stops_gdb_reads_it_after():
    t = FakeTarget()
    t.regs.rsp = 0x100048
    line = P.frame(b"m100040,40")
    step = P.frame(b"vCont;s:p1.1;c")
    # A stop whose line gdb did not read: the next stop of that kind prefetches nothing.
    srv, _ = _serve(t, [step, step])
    assert srv._no_prefetch == {Stepped} and b"m100040,40" not in srv._cache
    # gdb reads it again: prefetching resumes from the next stop on.
    srv, r = _serve(t, [step, step, line, step])
    assert srv._no_prefetch == set() and b"m100040,40" in srv._cache
    assert r[2] == P.hex_rle(bytes(t.mem[0x40:0x80]))
    # Read at every stop (stepi): always prefetched, always answered from the cache.
    srv, _ = _serve(t, [step, line] * 3)
    assert srv._no_prefetch == set() and b"m100040,40" in srv._cache


class _NoCache(dict):
    """A cache that keeps nothing: the server then takes the long way every time."""

    def get(self, key, default=None):
        return default

    def __setitem__(self, key, value):
        pass

    def copy(self):
        return _NoCache()


_PACKETS = [b"vCont;s:p1.1;c", b"qXfer:threads:read::0,1000", b"m100040,40", b"m100000,8",
            b"Z0,100010,1", b"z0,100010,1", b"g", b"?", b"M100040,2:abcd", b"vCont;c:p1.-1",
            b"p10", b"qfThreadInfo", b"m100040,40", b"X100050,1:\x11"]


@settings(max_examples=150, deadline=None)
@given(seq=st.lists(st.sampled_from(_PACKETS), min_size=1, max_size=25),
       cuts=st.one_of(st.none(), st.lists(st.integers(1, 40), max_size=30)),
       noise=st.sampled_from([b"", b"+", b"$", b"\x03", b"#00"]))
def test_the_caches_never_change_a_reply(seq, cuts, noise):
    """Any sequence of a step's packets, read one whole packet at a time (as gdb sends
    them) or cut anywhere, with stray bytes: the replies of a server with its caches
    are those of one that caches nothing."""
    if cuts is None:
        chunks = [noise] + [P.frame(p) for p in seq] if noise else [P.frame(p) for p in seq]
    else:
        wire = b"".join(P.frame(p) for p in seq)
        wire = noise + wire if noise != b"#00" else wire + noise
        chunks, pos = [], 0
        for c in cuts:
            if pos >= len(wire):
                break
            chunks.append(wire[pos:pos + c])
            pos += c
        if pos < len(wire):
            chunks.append(wire[pos:])

    def run(cached):
        t = FakeTarget()
        t.regs.rsp = 0x100048
        t.mem = bytearray(range(256)) * 32
        ch = FakeChannel([P.frame(b"QStartNoAckMode")] + list(chunks))
        srv = GdbServer(t, ch)
        if not cached:
            srv._frames, srv._parsed = _NoCache(), _NoCache()
            srv._cache, srv._wire = _NoCache(), _NoCache()
            srv._static, srv._wire_static = _NoCache(), _NoCache()
        srv.serve(Stepped())
        return bytes(ch.out), t.steps, bytes(t.mem), sorted(t.sw)
    assert run(True) == run(False)


def test_a_breakpoint_is_removed_where_it_was_planted(m):
    """gdb removes its breakpoints at every stop: no page walk then, and a guest that
    remapped the page since keeps no int3 (the walk would find another frame)."""
    from ukdbg.tender import abi
    from ukdbg.tender.debug import INT3
    from .test_gdbstub_live import CODE, debugger
    t, d = debugger(m)
    assert d.add_sw_breakpoint(CODE + 4)
    assert m.mem.read(CODE + 4, 1) == bytes((INT3,))
    pte = abi.BOOT_PT0 + (CODE >> 12) * 8
    m.mem.write_u64(pte, 0x300000 | 3)        # the guest maps another frame there
    t.invalidate()
    assert d.remove_sw_breakpoint(CODE + 4)
    assert m.mem.read(CODE + 4, 1) == b"\x44" and not m.debug.sw
    assert not d.remove_sw_breakpoint(CODE + 4)
