"""ukdbg/replay/recorder.py: `ukdbg run --record FILE`, the hooks that write a recording.

Loaded by ukdbg/run.py only when --record is given; a plain run pays nothing. It
hooks the machine at its existing points:
  hypercall table   each entry is wrapped: the argument struct before, the struct
                    after, what the monitor wrote into the guest (NET_READ/BLOCK_READ
                    data) and an Adler-32 of what the guest handed out (PUTS, *_WRITE)
  DebugControl      an int3 on every RDTSC/RDTSCP/RDRAND/RDSEED (traps.py), emulated
                    here with the live value, which is recorded
  write_observers   a debugger's writes to memory, registers, FPU, at their position
  boot_hooks        the boot state once it is final: image, CPUID table, boot info
  ending_hooks      how the run ended (and, for an asynchronous end, where)
  events.idle_hooks the stream is flushed whenever the guest goes to sleep
The file is opened here, before the guest runs; nothing else is opened later.
"""

import _signal
import hashlib
import json
import os
import sys
import zlib

from ..errors import GuestMemoryError, UkdbgError
from ..tender import abi, endings
from ..target import Killed as _Killed
from ..tender.machine import HANDLED
from . import format as F
from . import traps

OWNER = "record"
SIGPROF = 27
DEFER_CPU = 0.1         # seconds of CPU an asynchronous end may wait for an exit
# argument struct size per hypercall (hvt-abi.md §9)
HC_SIZES = {abi.HC_WALLTIME: 8, abi.HC_PUTS: 16, abi.HC_POLL: 24, abi.HC_BLOCK_WRITE: 40,
            abi.HC_BLOCK_READ: 40, abi.HC_NET_WRITE: 32, abi.HC_NET_READ: 32}
_U64 = abi.HC_WALLTIME_ST
_REC_HC = __import__("struct").Struct("<BI" + F.HC_HEAD.format[1:])   # REC + HC_HEAD


def _warn(msg):
    sys.stderr.write(f"ukdbg: {msg}\n")
    sys.stderr.flush()


def regs_words(k) -> tuple:
    return tuple(getattr(k, f) for f in k.FIELDS)


class Recorder:
    def __init__(self, m, opts):
        self.m = m
        self.path = opts.record
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o644)
        except OSError as e:
            raise UkdbgError(f"--record {self.path}: {e.strerror}") from None
        self.w = F.Writer(fd, opts.record_limit, _warn)
        self.hc_stop = None           # a Stop a hypercall handler returned (recorded)
        self.sites = {s.gva: s for s in traps.scan_image(m.image)}
        self.ended = False
        self.deferred = None          # an asynchronous end held for the next exit
        self._deferring = True

    # --- boot state ---------------------------------------------------------------------
    def boot(self, m) -> None:
        """After write_boot_info: META, IMAGE, CPUID, in that order."""
        from .. import __version__
        image = bytes(m.image.elf.data)
        bi = m.mem.read(abi.BOOT_INFO, abi.BOOT_INFO_SIZE)
        _ms, _ke, _hz, cmd_gpa, _mft, *_ = abi.BOOT_INFO_ST.unpack(bi)
        boot_end = cmd_gpa + len(m.cmdline) + 1
        meta = {
            "format": F.VERSION, "ukdbg": __version__,
            "image_name": os.path.basename(m.image.path),
            "image_path": os.path.abspath(m.image.path),
            "image_sha256": hashlib.sha256(image).hexdigest(), "image_size": len(image),
            "mem_size": m.mem_size, "tsc_hz": m.tsc_hz,
            "cmdline": m.cmdline.decode("latin-1"),
            "manifest": [{"name": d.name, "type": d.type_name} for d in m.devices],
            "boot_gpa": abi.BOOT_INFO,
            "boot": m.mem.read(abi.BOOT_INFO, boot_end - abi.BOOT_INFO).hex(),
            "argv": list(m.argv),
            "hypercalls": [nr for nr in HC_SIZES if m.hypercalls[nr] is not None],
            "traps": [[s.gva, s.kind, s.length, s.reg or "", s.bits]
                      for s in self.sites.values()],
            "host": {"uname": list(os.uname())[2:5],
                     "caps": {k: v for k, v in m.caps.items() if isinstance(v, bool)}},
        }
        w = self.w
        w.add(F.R_META, json.dumps(meta, sort_keys=True).encode())
        w.add(F.R_IMAGE, image)
        w.add(F.R_CPUID, bytes(m.cpuid))      # the table the vCPU was given
        limit, w.limit = w.limit, None
        w.flush()                   # the boot state is never cut
        w.limit = limit
        if limit is not None and w.written + 64 > limit:
            raise UkdbgError(f"--record-limit {limit}: the recording's boot state alone "
                             f"takes {w.written} bytes", "give a larger limit")

    # --- hypercalls ---------------------------------------------------------------------
    def wrap(self, nr, fn):
        """The recording handler around table entry fn. Hot path: one bounds check,
        slices of the mapping, one struct pack, appends to the writer's buffer."""
        size = HC_SIZES[nr]
        mem = self.m.mem
        mm = mem._map
        memsize = mem.size
        w = self.w
        buf = w.buf
        pack = _REC_HC.pack
        rec = self
        crc = zlib.adler32           # fast; a check, not a cryptographic hash
        body = F.HC_HEAD.size + 2 * size        # a record's length without data
        r_hc = F.R_HC
        flush_bytes = F.FLUSH_BYTES
        count = [0]

        def tick():                             # old events reach the file, too
            count[0] += 1
            if not count[0] & 63:
                w.maybe_flush()

        if nr == abi.HC_WALLTIME or nr == abi.HC_POLL:
            def simple(m, gpa):
                if rec.deferred is not None:
                    return rec.deliver()
                if gpa + size > memsize:
                    return rec.raised(nr, gpa, b"", fn, m)
                before = mm[gpa:gpa + size]
                try:
                    stop = fn(m, gpa)
                except GuestMemoryError as e:
                    rec.record_raised(nr, gpa, before, e)
                    raise
                if stop is None:
                    buf.extend(pack(r_hc, body, nr, 0, gpa, size, size, 0, 0))
                    buf.extend(before)
                    buf.extend(mm[gpa:gpa + size])
                    if len(buf) >= flush_bytes:
                        w.flush()
                    else:
                        tick()
                else:
                    rec.record_stop(nr, gpa, before, mm[gpa:gpa + size], stop)
                return stop
            return simple

        def hypercall(m, gpa):
            if rec.deferred is not None:
                return rec.deliver()
            if gpa + size > memsize:
                return rec.raised(nr, gpa, b"", fn, m)
            before = mm[gpa:gpa + size]
            try:
                stop = fn(m, gpa)
            except GuestMemoryError as e:
                rec.record_raised(nr, gpa, before, e)
                raise
            after = mm[gpa:gpa + size]
            data = b""
            check = 0
            try:
                if nr == abi.HC_PUTS:
                    ptr, n = _PUTS.unpack(before)
                    check = crc(mem.slice(ptr, n))
                elif nr == abi.HC_NET_WRITE or nr == abi.HC_BLOCK_WRITE:
                    ptr, n, ret = _io_fields(nr, after)
                    if ret == abi.SOLO5_R_OK:
                        check = crc(mem.slice(ptr, n))
                else:                           # NET_READ, BLOCK_READ
                    ptr, n, ret = _io_fields(nr, after)
                    if ret == abi.SOLO5_R_OK:
                        data = mem.read(ptr, n)
            except GuestMemoryError:
                pass
            if stop is None:
                buf.extend(pack(r_hc, body + len(data), nr, 0, gpa, size, size,
                                len(data), check))
                buf.extend(before)
                buf.extend(after)
                if data:
                    buf.extend(data)
                if len(buf) >= flush_bytes:
                    w.flush()
                else:
                    tick()
            else:
                rec.record_stop(nr, gpa, before, after, stop, data, check)
            return stop
        return hypercall

    def raised(self, nr, gpa, before, fn, m):
        """The struct itself is out of bounds: let the handler refuse it as it would."""
        try:
            stop = fn(m, gpa)
        except GuestMemoryError as e:
            self.record_raised(nr, gpa, before, e)
            raise
        self.record_stop(nr, gpa, before, b"", stop)
        return stop

    def record_raised(self, nr, gpa, before, e):
        tail = json.dumps({"gpa": e.gpa, "size": e.size, "reason": e.reason}).encode()
        self.w.add(F.R_HC, F.encode_hc(nr, F.HC_RAISED, gpa, before, b"", b"", 0, tail))

    def record_stop(self, nr, gpa, before, after, stop, data=b"", check=0):
        flags = 0
        tail = b""
        if stop is not None:
            self.hc_stop = stop
            flags = F.HC_STOP
            tail = json.dumps(F.stop_to_json(stop)).encode()
        self.w.add(F.R_HC, F.encode_hc(nr, flags, gpa, before, after, data, check, tail))

    # --- trapped instructions -------------------------------------------------------------
    def on_trap(self, m, kind, gva):
        if kind != "sw":
            return None
        site = self.sites.get(gva)
        if site is None:
            return None
        stop = self.emulate(m, gva)
        return HANDLED if stop is None else stop

    def emulate(self, m, gva, k=None):
        if self.deferred is not None:
            return self.deliver()
        site = self.sites[gva]
        if k is None:
            k = m.vcpu.get_regs()
        value, aux = traps.live_values(m, site)
        traps.apply(k, site, value, aux)
        m.vcpu.set_regs(k)
        self.w.add(F.R_TRAP, F.TRAP_ST.pack(site.kind, gva, value, aux))
        return None

    # --- asynchronous ends at an exit -------------------------------------------------------
    # A signal (SIGTERM, SIGQUIT, --timeout, `ukdbg stop`) that interrupts the running
    # guest would end it between two arbitrary instructions, a position a replay can
    # only reach by breakpoint and register comparison. Recording, the end is held
    # until the guest's next hypercall or trapped instruction (a position the replay
    # reaches exactly), at most DEFER_CPU seconds of CPU: then ITIMER_PROF's SIGPROF
    # ends it where it is.
    def service(self, signals=None):
        stop = self._service(signals)
        # signals None: the loop's KVM_RUN was interrupted (not a wait inside POLL,
        # whose stop is recorded with that POLL)
        if signals is None and self._deferring and self.deferred is None \
                and isinstance(stop, _Killed) and not self.ended:
            self.deferred = stop
            _signal.setitimer(_signal.ITIMER_PROF, DEFER_CPU)
            return None
        return stop

    def on_prof(self, m, signo):
        self._deferring = False       # the end comes now, where the guest is
        return self.deliver()

    def deliver(self):
        stop, self.deferred = self.deferred, None
        _signal.setitimer(_signal.ITIMER_PROF, 0)
        return stop

    # --- the outside world ------------------------------------------------------------------
    def ext(self, kind, pos_regs, data=b""):
        self.w.add(F.R_EXT, F.EXT_HEAD.pack(kind, *regs_words(pos_regs)) + data)
        self.w.flush()              # rare, and what a debugging session did matters

    def on_write(self, m, kind, data):
        if kind == "mem":
            gpa, chunk = data
            self.ext(F.X_MEMWRITE, m.vcpu.get_regs(), _U64.pack(gpa) + bytes(chunk))
        elif kind == "regs":
            k, s = m.vcpu.get_regs(), m.vcpu.get_sregs()
            self.ext(F.X_REGS, data, k.pack() + s.pack())
        elif kind == "fpu":
            self.ext(F.X_FPU, m.vcpu.get_regs(), fpu_image(m))
        elif kind in ("pause", "resume"):
            self.ext(F.X_PAUSE if kind == "pause" else F.X_RESUME, m.vcpu.get_regs())

    def on_end(self, m, stop):
        if self.ended:
            return
        self.ended = True
        if self.deferred is not None:   # the guest ended first (HALT): no SIGPROF later
            self.deliver()
        from ..target import Killed
        if isinstance(stop, Killed) and stop is not self.hc_stop:
            try:
                pos = m.vcpu.get_regs()
            except UkdbgError:
                pos = None
            if pos is not None:
                self.ext(F.X_STOP, pos, json.dumps(F.stop_to_json(stop)).encode())
        end = {"stop": F.stop_to_json(stop), "exit": endings.exit_code(stop),
               "console_bytes": m.console.total}
        self.w.add(F.R_END, json.dumps(end).encode())
        try:
            self.w.close()
        except OSError as e:
            _warn(f"--record {self.path}: {e.strerror}")


_PUTS = abi.HC_PUTS_ST


def _io_fields(nr, st):
    """(data pointer, length, ret) of a NET/BLOCK struct (after the call)."""
    if nr in (abi.HC_BLOCK_WRITE, abi.HC_BLOCK_READ):
        _h, _off, ptr, n, ret = abi.HC_BLOCK_ST.unpack(st)
        return ptr, n, ret
    _h, ptr, n, ret = abi.HC_NET_ST.unpack(st)
    if nr == abi.HC_NET_READ:
        n = _U64.unpack_from(st, abi.NET_LEN_RET_OFF)[0]     # bytes actually read
    return ptr, n, ret


def fpu_image(m) -> bytes:
    """The 512-byte FXSAVE image of the vCPU's x87/SSE state."""
    if m.caps.get("xsave"):
        return bytes(m.vcpu.get_xsave()[:512])
    from ..arch.x86_64 import Fpu
    return Fpu.from_kvm(m.vcpu.get_fpu()).to_fxsave()


def setup(m, opts) -> None:
    r = Recorder(m, opts)
    m.recorder = r
    for nr in HC_SIZES:
        fn = m.hypercalls[nr]
        if fn is not None:
            m.hypercalls[nr] = r.wrap(nr, fn)
    if r.sites:
        if not m.caps.get("guest_debug"):
            raise UkdbgError("--record: this KVM cannot plant breakpoints "
                             "(KVM_CAP_SET_GUEST_DEBUG), so RDTSC/RDRAND cannot be trapped")
        dc = m.debug_control()
        dc.handlers[OWNER] = r.on_trap
        dc.emulators[OWNER] = r.emulate
        planted = dc.add_sw_many(list(r.sites), OWNER)
        if len(planted) != len(r.sites):
            raise UkdbgError("--record: could not plant a trap on every RDTSC/RDRAND")
        m.vmexit_hooks.insert(0, traps.fast_hook(m, r.sites, OWNER, r.emulate))
    m.events.watch_signal(SIGPROF, r.on_prof)
    r._service = m.events.service
    m.events.service = r.service
    m.write_observers.append(r.on_write)
    m.ending_hooks.insert(0, r.on_end)
    m.events.idle_hooks.append(r.w.flush)
    hooks = getattr(m, "boot_hooks", None)
    if hooks is None:
        hooks = m.boot_hooks = []
    hooks.append(r.boot)
