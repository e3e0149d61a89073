"""A hostile guest against the hypercall dispatcher (hypothesis).

Random hypercall numbers, struct addresses and field values go through the real loop
and the real hypercall modules, with a scripted vCPU. Guest RAM is a memfd mapped one
page *longer* than the file: any access past the end of guest memory would raise
SIGBUS and kill the test run, so passing means the monitor never touched it. Each case
must either answer correctly or end the guest cleanly with a Crashed stop.
"""

import mmap
import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ukdbg.errors import GuestMemoryError
from ukdbg.kvm import uapi
from ukdbg.kvm.exits import IoOut
from ukdbg.kvm.memory import GuestMemory
from ukdbg.target import Crashed, Exited
from ukdbg.tender import abi, loop
from ukdbg.tender.machine import Machine
from ukdbg.tender.manifest import Manifest
from ukdbg.tender.modules import block, core, net
from ukdbg.tender.flight import FlightRecorder
from ukdbg.tender.options import RunOptions

MEM = 4 << 20
RO = (0x100000, 0x102000)            # pretend text+rodata
HALT_GPA = 0x200000                  # a valid HALT struct the script ends with
DISK = 16 * 512


class ScriptedVcpu:
    def __init__(self):
        self.script = []

    def run(self):
        return self.script.pop(0)

    def get_regs(self):
        return uapi.kvm_regs(rip=0x100123)

    def get_sregs(self):
        return uapi.kvm_sregs()

    def close(self):
        pass


class Image:
    path = "hostile.hvt"
    elf = None
    segments = []


def manifest():
    e0 = bytearray(104)
    struct.pack_into("<I", e0, 68, abi.MFT_RESERVED_FIRST)
    blk = bytearray(104)
    blk[:7] = b"storage"
    struct.pack_into("<I", blk, 68, abi.MFT_DEV_BLOCK_BASIC)
    nic = bytearray(104)
    nic[:7] = b"service"
    struct.pack_into("<I", nic, 68, abi.MFT_DEV_NET_BASIC)
    return Manifest(struct.pack("<II", 1, 3) + e0 + blk + nic)


class FakeTap:
    """A datagram socketpair standing in for a tap: frames keep their boundaries."""

    def __init__(self):
        self.guest_side, self.host_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.guest_side.setblocking(False)
        self.host_side.setblocking(False)
        self.fd = self.guest_side.fileno()
        self.iface = "fake0"
        self.bytes_read = self.bytes_written = 0


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    mem = GuestMemory(MEM)
    # Re-map one page longer than the memfd: the extra page is a SIGBUS guard.
    mem.view.release()
    mem._map.close()
    os.ftruncate(mem.fd, MEM + 4096)          # Python's mmap insists on the file size
    mem._map = mmap.mmap(mem.fd, MEM + 4096, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)
    os.ftruncate(mem.fd, MEM)                 # ... then the last page is past EOF
    mem.view = memoryview(mem._map)
    # The flight recorder's slices clamp at the end of the mapping they cut: as in a
    # real run, give it one of exactly RAM's size (the guard page stays untouched).
    mem.raw = mmap.mmap(mem.fd, MEM, mmap.MAP_SHARED, mmap.PROT_READ)
    mem.protect(*RO)
    image = Image()
    image.manifest = manifest()
    opts = RunOptions()
    disk = tmp_path_factory.mktemp("hostile") / "disk.img"
    disk.write_bytes(bytes(DISK))
    opts.blocks = {"storage": str(disk)}
    m = Machine(None, None, ScriptedVcpu(), mem, image, opts, {})
    core.setup(m, opts)
    block.setup(m, opts)
    tap = FakeTap()
    dev = image.manifest.find("service")
    dev.host, dev.attached, dev.mtu = tap, True, 1500
    m.net_fds[tap.fd] = dev.index
    m.hypercalls[abi.HC_NET_WRITE], m.hypercalls[abi.HC_NET_READ] = net.handlers(m)
    m.console.fds = []
    m.tap = tap
    m.flight = FlightRecorder(m, 4)
    return m


INTERESTING = [0, 1, 8, 0xFFF, 0x1000, 0x10000, RO[0], RO[1] - 8, MEM - 64, MEM - 16, MEM - 8,
               MEM - 1, MEM, MEM + 8, 2**31, 2**32 - 8, 2**32 - 1, 2**63, 2**64 - 1,
               2**64 - 16, 2**64 - MEM]
addr64 = st.one_of(st.sampled_from(INTERESTING), st.integers(0, MEM + 4096),
                   st.integers(0, 2**64 - 1))
addr32 = st.one_of(st.sampled_from([a for a in INTERESTING if a < 2**32]),
                   st.integers(0, 2**32 - 1))
length = st.one_of(st.sampled_from([0, 1, 16, 512, 4096, MEM, 2**63, 2**64 - 1]),
                   st.integers(0, 8192))


def refused(fn, *a):
    """True if fn(*a) refuses with GuestMemoryError."""
    try:
        fn(*a)
    except GuestMemoryError:
        return True
    return False


def in_ram(gpa, size):
    return 0 <= gpa and gpa + size <= MEM


def writable(gpa, size):
    return in_ram(gpa, size) and not (gpa < RO[1] and RO[0] < gpa + size)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(nr=st.integers(0, 15), gpa=addr32,
       fields=st.tuples(addr64, addr64, addr64, length, st.integers(0, 2**64 - 1)),
       frame=st.binary(min_size=0, max_size=64))
def test_dispatcher_answers_or_ends_cleanly(machine, nr, gpa, fields, frame):
    m = machine
    mem = m.mem
    # The HALT struct that ends the script lives at HALT_GPA: a hypercall struct over it
    # would be both (its fields and results are then not the ones this test expects).
    assume(not gpa - 40 < HALT_GPA < gpa + 40)
    # Write the random struct (if it lies in RAM at all), then run one hypercall.
    raw = struct.pack("<5Q", *(f & (2**64 - 1) for f in fields))
    # The part that fits in RAM: a struct near the end must still hold these fields,
    # not a previous example's bytes (the machine is shared by all examples).
    if gpa < MEM:
        mem.write(gpa, raw[:MEM - gpa])
    if frame or nr == abi.HC_POLL:
        # A queued frame makes POLL return at once whatever timeout the guest asked
        # for (a hostile one is up to 2**64 ns: the monitor must not choke on it).
        m.tap.host_side.send(frame or b"\0" * 14)
    m.console.tail.clear()
    mem.write(HALT_GPA, abi.HC_HALT_ST.pack(0, 7))
    before = bytes(mem.view[:MEM])
    port = abi.PIO_BASE + nr
    m.vcpu.script = [IoOut(port, 4, 1, gpa.to_bytes(4, "little")),
                     IoOut(abi.PIO_BASE + abi.HC_HALT, 4, 1, HALT_GPA.to_bytes(4, "little"))]
    t0 = time.time_ns()
    stop = loop.run(m)
    t1 = time.time_ns()
    for sock in (m.tap.host_side, m.tap.guest_side):     # leave no frame queued
        try:
            while True:
                sock.recv(65536)
        except BlockingIOError:
            pass
    m.vcpu.script = []
    after = bytes(mem.view[:MEM])
    # The flight recorder kept this hypercall (and HALT, when it got that far), each
    # with at most the 40 bytes of RAM at its pointer, and decodes them.
    last = m.flight.ring[-1]
    if isinstance(stop, Exited) and nr != abi.HC_HALT:
        assert last[2:4] == (abi.HC_HALT, HALT_GPA)
        last = m.flight.ring[-2]
    if 0x500 <= port < 0x500 + abi.HC_MAX:
        assert last[2:4] == (nr, gpa) and last[4] == after[gpa:gpa + 40]
    m.flight.events()

    if not 0x500 <= port < 0x500 + abi.HC_MAX:
        assert isinstance(stop, Crashed) and stop.cause == "bad-port"
        assert after == before
        return
    if nr == 0 or nr >= abi.HC_MAX:
        assert isinstance(stop, Crashed) and stop.cause == "bad-hypercall"
        return
    if nr == abi.HC_HALT:
        if not in_ram(gpa, 16):
            assert isinstance(stop, Crashed) and stop.cause == "hostile-pointer"
        else:
            cookie = fields[0]
            if cookie and not in_ram(cookie, abi.HALT_COOKIE_MAX):
                assert isinstance(stop, Crashed) and stop.cause == "hostile-pointer"
            else:
                assert isinstance(stop, (Exited, Crashed))
        return
    sizes = {abi.HC_WALLTIME: 8, abi.HC_PUTS: 16, abi.HC_POLL: 24, abi.HC_BLOCK_WRITE: 40,
             abi.HC_BLOCK_READ: 40, abi.HC_NET_WRITE: 32, abi.HC_NET_READ: 32}
    size = sizes[nr]
    if isinstance(stop, Crashed):
        # Only a bad pointer may end the guest, and only one that is really bad.
        assert stop.cause in ("hostile-pointer", "host-io"), stop
        if stop.cause == "hostile-pointer":
            bad = stop.fault_addr
            assert bad is not None
        return
    assert isinstance(stop, Exited) and stop.status == 7
    assert writable(gpa, size) or nr == abi.HC_PUTS and in_ram(gpa, size)
    f = fields
    changed = [i for i in range(MEM) if before[i] != after[i]] if before != after else []
    if nr == abi.HC_WALLTIME:
        assert t0 <= struct.unpack_from("<Q", after, gpa)[0] <= t1
        assert all(gpa <= i < gpa + 8 for i in changed)
    elif nr == abi.HC_PUTS:
        assert in_ram(f[0], f[1])
        expect = before[f[0]:f[0] + f[1]]
        kept = f[1] if f[1] <= 2 * 65536 else 65536        # the console keeps a tail
        assert len(m.console.tail) == kept and bytes(m.console.tail) == expect[-kept:]
        assert not changed
    elif nr == abi.HC_POLL:
        assert all(gpa + 8 <= i < gpa + 24 for i in changed)
    elif nr in (abi.HC_BLOCK_WRITE, abi.HC_BLOCK_READ):
        handle, off, data, n = f[0], f[1], f[2], f[3]
        ret = struct.unpack_from("<i", after, gpa + 32)[0]
        valid = handle == 1 and off < DISK and off + n <= DISK
        if not valid:
            assert ret == abi.SOLO5_R_EINVAL
            assert all(gpa + 32 <= i < gpa + 36 for i in changed)
        else:
            assert ret == abi.SOLO5_R_OK
            if nr == abi.HC_BLOCK_READ:
                assert writable(data, n)
                assert all(gpa + 32 <= i < gpa + 36 or data <= i < data + n for i in changed)
            else:
                assert in_ram(data, n)
    elif nr in (abi.HC_NET_WRITE, abi.HC_NET_READ):
        handle, data, n = f[0], f[1], f[2]
        ret = struct.unpack_from("<i", after, gpa + 24)[0]
        if handle != 2:
            assert ret == abi.SOLO5_R_EINVAL
        elif nr == abi.HC_NET_READ:
            assert ret in (abi.SOLO5_R_OK, abi.SOLO5_R_AGAIN)
            assert writable(data, n)
            if ret == abi.SOLO5_R_OK:
                got = struct.unpack_from("<Q", after, gpa + 16)[0]
                assert after[data:data + got] == frame[:got]
        else:
            assert ret == abi.SOLO5_R_OK and in_ram(data, n)


def test_guard_page_is_real(machine):
    """The guard works: reading past the memfd really faults (in a child process)."""
    pid = os.fork()
    if pid == 0:
        import faulthandler
        faulthandler.disable()                  # the crash is the point: no dump
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        machine.mem._map[MEM:MEM + 1]          # SIGBUS here
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 7


@settings(max_examples=400, deadline=None)
@given(gpa=addr64, n=length, ranges=st.lists(st.tuples(st.integers(0, MEM // 4096),
                                                      st.integers(1, 8)), max_size=3))
def test_hot_accessors_check_as_the_methods_do(gpa, n, ranges):
    """kvm/memory.py's bound accessors (the hypercalls' hot path) refuse exactly what
    check()/check_guest_write() refuse, read-only ranges with gaps between them
    included (their one-compare hull is only a fast path)."""
    mem = GuestMemory(MEM)
    try:
        for page, pages in ranges:
            mem.protect(page * 4096, min(MEM, (page + pages) * 4096))
        st_n = struct.Struct(f"<{min(n, 64)}s")
        load, _ = mem.struct_window(st_n)
        handler = mem.result_handler(st_n, lambda: b"\1" * st_n.size)

        m = st_n.size
        assert refused(load, gpa) == refused(mem.check_guest_write, gpa, m)
        assert refused(handler, None, gpa) == refused(mem.check_guest_write, gpa, m)
        with pytest.raises(RuntimeError):
            mem.protect(0, 4096)             # the accessors hold the ranges as they were
    finally:
        mem.close()


@settings(max_examples=400, deadline=None)
@given(gpa=addr64, addr=addr64, n=length, results=st.booleans(), fills=st.booleans(),
       ranges=st.lists(st.tuples(st.integers(0, MEM // 4096), st.integers(1, 8)),
                       max_size=3))
def test_request_accessor_checks_struct_then_buffer(gpa, addr, n, results, fills, ranges):
    """mem.request() (PUTS, NET, BLOCK): the struct is refused exactly as check() or
    check_guest_write() refuse it; the buffer it names is None exactly when the
    matching check refuses it, refuse() then raises, and otherwise the view holds
    those bytes of guest memory."""
    mem = GuestMemory(MEM)
    try:
        for page, pages in ranges:
            mem.protect(page * 4096, min(MEM, (page + pages) * 4096))
        req = abi.HC_NET_ST                              # handle, data, len, ret
        load, _, refuse = mem.request(req, 1, results=results, fills=fills)
        st_check = mem.check_guest_write if results else mem.check
        buf_check = mem.check_guest_write if fills else mem.check

        if in_ram(gpa, req.size):
            mem.write(gpa, req.pack(7, addr, n, 0))
        if refused(st_check, gpa, req.size):
            assert refused(load, gpa)
            return
        (handle, data, k, _), buf = load(gpa)
        assert (handle, data, k) == (7, addr, n)
        if refused(buf_check, addr, n):
            assert buf is None and refused(refuse, addr, n)
        else:
            assert buf is not None and not refused(refuse, addr, n)
            assert len(buf) == n and bytes(buf[:64]) == mem.read(addr, min(n, 64))
            buf.release()
    finally:
        mem.close()


def test_request_accessor_wants_an_unsigned_address_length_pair():
    mem = GuestMemory(4096)
    try:
        for st_, at in ((struct.Struct("<Qqi"), 0), (struct.Struct("<xQQq"), 1),
                        (abi.HC_NET_ST, 2)):
            with pytest.raises(ValueError):
                mem.request(st_, at)
        mem.request(struct.Struct("<2QQ"), 1)             # counts are fields too
    finally:
        mem.close()
