"""ukdbg/kvm/memory.py: GuestMemory, guest-physical RAM; the only code that touches it.

RAM is a memfd mapped MAP_SHARED: pages the guest never touched stay holes in the
memfd, so SEEK_DATA/SEEK_HOLE (touched_extents) tells a core writer what to save
without reading 4 GiB. Every access is bounds-checked with Python's unbounded ints,
so `gpa + size` cannot wrap: a hostile guest pointer raises GuestMemoryError and never
reaches the mapping.
"""

import mmap
import os
import _struct as struct  # not struct.py: one import less at start-up

from ..errors import GuestMemoryError

PAGE_SIZE = 4096
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_MAX_ADDR = 1 << 64


def _codes(fmt: str) -> list:
    """The field codes of a struct format, one per field ("<2Qi4x" -> Q, Q, i)."""
    out, count = [], ""
    for c in fmt.lstrip("@=<>!"):
        if c.isdigit():
            count += c
            continue
        if c != "x":
            out += [c] * (1 if c in "sp" else int(count or 1))
        count = ""
    return out


class GuestMemory:
    _serial = 0

    def __init__(self, size: int):
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"guest memory size {size:#x} is not a positive page multiple")
        self.size = size
        GuestMemory._serial += 1
        # A unique name: the mapping is recognisable in /proc/PID/maps.
        self.name = f"ukdbg-guest-{os.getpid()}-{GuestMemory._serial}"
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self._map)
        # The mapping itself, for the flight recorder's one slice per hypercall: an
        # mmap slice clamps at its end, so no guest value reads outside guest RAM.
        self.raw = self._map
        # [start, end) ranges the guest may not have the monitor write into on its
        # behalf (its text and rodata); the debugger may still write there. protect()
        # adds one; _ro_hull is their [min, max) for the hypercalls' one-compare check.
        self.readonly = []
        self._ro_hull = (0, 0)
        self._bound = False           # hot-path accessors hold the ranges as they were

    @property
    def host_address(self) -> int:
        """Where RAM is mapped in this process (for KVM_SET_USER_MEMORY_REGION): asked
        of the mapping itself (native.py's _ctypes, loaded by every run for the sandbox)
        rather than found in /proc/self/maps (0.15 ms)."""
        from ..native import buffer_address
        return buffer_address(self._map)

    # --- checks -------------------------------------------------------------------------
    def check(self, gpa: int, size: int) -> None:
        """Raise GuestMemoryError unless [gpa, gpa+size) lies inside guest RAM."""
        if gpa < 0 or size < 0 or gpa >= _MAX_ADDR or gpa + size > self.size:
            raise GuestMemoryError(gpa, size)

    def contains(self, gpa: int, size: int) -> bool:
        return 0 <= gpa and 0 <= size and gpa + size <= self.size

    def check_guest_write(self, gpa: int, size: int) -> None:
        """check() plus: the range must not touch the guest's read-only segments."""
        self.check(gpa, size)
        end = gpa + size
        for lo, hi in self.readonly:
            if gpa < hi and lo < end:
                raise GuestMemoryError(gpa, size, "is read-only guest memory")

    def protect(self, lo: int, hi: int) -> None:
        """Refuse guest-requested writes to [lo, hi) (the loader: text and rodata)."""
        if self._bound:
            raise RuntimeError("GuestMemory.protect() after hot-path accessors were bound")
        self.readonly.append((lo, hi))
        self._ro_hull = (min(a for a, _ in self.readonly), max(b for _, b in self.readonly))

    # --- the hypercalls' hot path (bench/hypercalls.py) ------------------------------
    # Handlers bind these once at set-up: each is one call doing check() (or
    # check_guest_write()) and the access, with no method lookups. A struct or buffer
    # clear of the read-only hull needs one compare; inside it, check_guest_write()
    # decides. They read and write the mapping directly, so they are not seen by
    # wrappers of the methods above (reverse/checkpoint.py marks hypercall results from
    # the ABI instead, like the recorder).
    def _hot(self):
        self._bound = True
        return self.size, self._map, self.view, self._ro_hull

    def struct_window(self, st: struct.Struct):
        """(load, mapping): load(gpa) -> st's fields, after checking the whole struct as
        guest_write() does; its results may then be packed into mapping at gpa+offset."""
        size, mp, _, (ro_lo, ro_hi) = self._hot()
        n, unpack_from = st.size, st.unpack_from
        limit = size - n
        check = self.check_guest_write

        def load(gpa):
            if 0 <= gpa <= limit and (gpa >= ro_hi or gpa + n <= ro_lo):
                return unpack_from(mp, gpa)
            check(gpa, n)
            return unpack_from(mp, gpa)
        return load, mp

    def result_handler(self, st: struct.Struct, value):
        """handler(m, gpa): packs value() into st at gpa, checked as pack() is. A whole
        hypercall handler in one call (WALLTIME's, with value time.time_ns)."""
        size, mp, _, (ro_lo, ro_hi) = self._hot()
        n, pack_into = st.size, st.pack_into
        limit = size - n
        check = self.check_guest_write

        def handler(m, gpa):
            if not (0 <= gpa <= limit and (gpa >= ro_hi or gpa + n <= ro_lo)):
                check(gpa, n)
            pack_into(mp, gpa, value())
        return handler

    def request(self, st: struct.Struct, at: int, results=True, fills=False):
        """(load, mapping, refuse) for a struct naming a guest buffer by its fields at
        and at+1 (address, length): the whole request in one call (PUTS, NET, BLOCK).

        load(gpa) -> (st's fields, buffer). The struct is checked as struct_window's
        (results=False: as check() does, arguments only). buffer is a view of the
        bytes named, or None when the monitor may not read them (check()) or, fills=True,
        fill them on the guest's behalf (check_guest_write()): the handler answers a bad
        handle first (Solo5's order), then calls refuse(address, length) for a None
        buffer, which raises that check's GuestMemoryError."""
        size, mp, mv, (ro_lo, ro_hi) = self._hot()
        n, unpack_from = st.size, st.unpack_from
        limit = size - n
        check, check_w = self.check, self.check_guest_write
        check_st = check_w if results else check
        refuse = check_w if fills else check
        # [lo, hi) hulls the struct and the buffer must avoid ((size, 0): none)
        b_lo, b_hi = (ro_lo, ro_hi) if fills else (size, 0)
        if not results:
            ro_lo, ro_hi = size, 0
        if _codes(st.format)[at:at + 2] not in (["Q", "Q"], ["I", "I"]):
            raise ValueError(f"struct {st.format!r}: fields {at}, {at + 1} are not an "
                             f"unsigned (address, length) pair")
        at1 = at + 1

        def slow(a, k):
            try:
                refuse(a, k)
            except GuestMemoryError:
                return None
            return mv[a:a + k]

        def load(gpa):
            if not (0 <= gpa <= limit and (gpa >= ro_hi or gpa + n <= ro_lo)):
                check_st(gpa, n)
            f = unpack_from(mp, gpa)
            a = f[at]
            k = f[at1]
            end = a + k                              # unsigned fields: a, k >= 0
            if end <= size and (a >= b_hi or end <= b_lo):
                return f, mv[a:end]
            return f, slow(a, k)
        return load, mp, refuse

    # --- access (address first, always) --------------------------------------------------
    def read(self, gpa: int, size: int) -> bytes:
        self.check(gpa, size)
        return self._map[gpa:gpa + size]

    def read_clamped(self, gpa: int, size: int) -> bytes:
        """read() that returns zeros for bytes outside RAM instead of raising."""
        if gpa < 0 or gpa >= self.size:
            return bytes(max(size, 0))
        b = self._map[gpa:gpa + size]
        return b + bytes(size - len(b))

    def write(self, gpa: int, data) -> None:
        """Write as the host/debugger (ignores the guest's read-only segments)."""
        n = len(data)
        self.check(gpa, n)
        self._map[gpa:gpa + n] = data

    def guest_write(self, gpa: int, data) -> None:
        """Write on the guest's request (a hypercall result): refuses read-only memory."""
        n = len(data)
        self.check_guest_write(gpa, n)
        self._map[gpa:gpa + n] = data

    def slice(self, gpa: int, size: int) -> memoryview:
        """A zero-copy view of guest memory (valid while the memory lives)."""
        self.check(gpa, size)
        return self.view[gpa:gpa + size]

    def read_u64(self, gpa: int) -> int:
        self.check(gpa, 8)
        return _U64.unpack_from(self._map, gpa)[0]

    def write_u64(self, gpa: int, value: int) -> None:
        self.check(gpa, 8)
        _U64.pack_into(self._map, gpa, value)

    def read_u32(self, gpa: int) -> int:
        self.check(gpa, 4)
        return _U32.unpack_from(self._map, gpa)[0]

    def unpack(self, st: struct.Struct, gpa: int) -> tuple:
        """Decode a hypercall struct in place: st.unpack_from after a bounds check."""
        self.check(gpa, st.size)
        return st.unpack_from(self._map, gpa)

    def pack(self, st: struct.Struct, gpa: int, *values) -> None:
        """Encode into guest memory (guest-requested: read-only memory is refused)."""
        self.check_guest_write(gpa, st.size)
        st.pack_into(self._map, gpa, *values)

    def read_cstring(self, gpa: int, max_len: int) -> bytes:
        """Bytes up to (not including) a NUL, at most max_len; bounded by guest RAM."""
        self.check(gpa, 0)
        end = min(gpa + max_len, self.size)
        i = self._map.find(b"\0", gpa, end)
        return self._map[gpa:(end if i < 0 else i)]

    # --- sparse-aware helpers ---------------------------------------------------------------
    def touched_extents(self, start: int = 0, end: int | None = None):
        """[(lo, hi)] page ranges that hold data (SEEK_DATA/SEEK_HOLE on the memfd)."""
        end = self.size if end is None else min(end, self.size)
        out = []
        pos = start
        while pos < end:
            try:
                lo = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:            # ENXIO: no data after pos
                break
            if lo >= end:
                break
            hi = min(os.lseek(self.fd, lo, os.SEEK_HOLE), end)
            out.append((lo, hi))
            pos = hi
        return out

    def resident_bytes(self) -> int:
        return sum(hi - lo for lo, hi in self.touched_extents())

    def close(self):
        try:
            self.view.release()
            self._map.close()
        except BufferError:
            pass            # a live export (a ctypes view) still holds it; the OS will
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
