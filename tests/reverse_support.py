"""In-process reverse execution for tests and benches: a machine of `ukdbg run
--reverse` without the gdb socket, its LiveTarget and the engine, plus a whole-state
fingerprint (every vCPU register block and all of guest memory)."""

import hashlib

from ukdbg.debugger.live_target import LiveTarget
from ukdbg.run import prepare


def machine(app_path, *args, mem=8, extra=()):
    m = prepare([f"--mem={mem}", "--no-core", "--no-control", "--gdb", "127.0.0.1:0",
                 "--reverse", *extra, app_path, *map(str, args)],
                only=("tender.modules.core", "tender.traps", "reverse"))
    t = LiveTarget(m)
    t.debugger().attach()
    eng = t.resumable()
    return m, t, eng


def recorded_replay(tmp_path, app_path, *args, run_opts=(), status=0):
    """Record `ukdbg run APP ARGS` into tmp_path, then prepare its replay with reverse
    execution as `ukdbg replay --gdb` has it: (machine, engine, cleanup)."""
    import subprocess
    import sys
    from ukdbg.replay import replayer
    rec = str(tmp_path / "run.rec")
    r = subprocess.run([sys.executable, "-m", "ukdbg", "run", "--no-core", "--no-control",
                        "--record", rec, *run_opts, app_path, *map(str, args)],
                       capture_output=True, cwd=tmp_path)
    assert r.returncode == status, r.stderr
    m, _rp, tmp, _rec = replayer.prepare(["--no-core", "--gdb", "127.0.0.1:0", rec])
    t = LiveTarget(m)
    m.live_target = t
    t.debugger().attach()

    def cleanup():
        m.close()
        replayer._rmtree(tmp)
    return m, t.resumable(), cleanup


def symbol(m, name):
    return m.image.elf.lookup(name).value


def whole_state(m):
    """A fingerprint of the vCPU (GPRs, sregs, XSAVE, XCRs, debug registers, events)
    and of every byte of guest memory (as debuggers see it)."""
    v = m.vcpu
    h = hashlib.blake2b(digest_size=16)
    h.update(v.get_regs().pack())
    h.update(v.get_sregs().pack())
    if m.caps.get("xsave"):
        h.update(xsave_view(v.get_xsave()))
    if m.caps.get("xcrs"):
        h.update(v.get_xcrs_raw())
    h.update(v.get_vcpu_events().pack())
    # Every non-zero page with its number: holes (never touched) read as zeros
    # without being read (which would allocate them).
    # Memory as the debugger and cores see it: the monitor's planted int3s (gdb's
    # breakpoints, the crash capture's hooks on the IDT handlers, trapped RDTSCs) are
    # instrumentation, shown as the original bytes. The crash capture plants its hooks
    # at the first hypercall and keeps them when reverse execution goes back before it.
    view = m.mem.view
    shadow = m.debug.shadow if m.debug is not None else (lambda gpa, data: data)
    zero = bytes(4096)
    for lo, hi in m.mem.touched_extents():
        for a in range(lo, hi, 4096):
            page = shadow(a, bytes(view[a:a + 4096]))
            if page != zero:
                h.update(a.to_bytes(8, "little"))
                h.update(page)
    return h.hexdigest()


def xsave_view(area: bytes) -> bytes:
    """The XSAVE area as the architecture sees it: XSTATE_BV only says which
    components are in their initial configuration (an optimisation the CPU and KVM
    apply as they like), so components marked initial read as their initial values
    and the header is left out."""
    a = bytearray(area[:1024])
    bv = int.from_bytes(a[512:520], "little")
    if not bv & 1:                                   # x87: FCW 0x37F, the rest 0
        a[0:2] = (0x37F).to_bytes(2, "little")
        a[2:24] = bytes(22)
        a[32:160] = bytes(128)
    if not bv & 2:                                   # SSE: XMM0-15 zero
        a[160:416] = bytes(256)
    if not bv & 4:                                   # AVX: upper halves zero
        a[576:832] = bytes(256)
    del a[512:576]
    return bytes(a)
