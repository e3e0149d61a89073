"""ukdbg/run.py: `ukdbg run`: options -> image -> machine -> modules -> loop -> ending.

The composition root: the one place where a run's pieces are wired together, from
the tender (which runs the guest) and the debugger (which drives it). It sits above
both, so neither imports the other's way back. Feature modules are imported only
when their option is given, so the plain run path loads nothing but the standard
library's C-level modules (measured in bench/boot.py).
"""

import os
import sys

from .errors import UkdbgError
from .tender import endings, loop, options
from .tender.loader import read_image
from .tender.machine import adjust_mem_size, build_machine, check_devices_attached, write_boot_info

# (module under ukdbg/, enabled?) in setup order. Hypercall modules first (devices
# must be attached before the boot info is written).
MODULES = (
    ("tender.modules.core", lambda o: True),
    ("tender.modules.block", lambda o: bool(o.blocks)),
    ("tender.modules.net", lambda o: bool(o.nets)),
    ("tender.traps", lambda o: True),
    # issue 10: --record FILE (after the hypercall modules: it wraps their entries;
    # before the gdb listener opens: its set-up scans the image)
    ("replay.recorder", lambda o: bool(o.record)),
    # issue 11: reverse execution (wraps the hypercalls; before the gdb stub)
    ("reverse", lambda o: o.reverse),
    # issue 4: cores (its ending hook must run first: it sets m.core_path)
    ("tender.modules.dumpcore", lambda o: not o.no_core or bool(o.core_on)),
    # issue 5: the crash report (after dumpcore: it prints m.core_path)
    ("tender.modules.report", lambda o: True),
    # issue 3: the gdb stub (after report: --gdb-on-crash holds the guest after it)
    ("debugger.gdb", lambda o: bool(o.gdb or o.gdb_on_crash)),
    # issue 6: management (after the hypercall modules: they wrap table entries)
    ("tender.modules.trace", lambda o: bool(o.trace or o.trace_summary)),
    ("tender.modules.timeout", lambda o: bool(o.timeout)),
    ("tender.modules.log", lambda o: bool(o.log or o.console)),
    ("tender.modules.control", lambda o: o.control),
)

# Features a running guest may load later (the control socket's `core` and `gdb`):
# the tender finds them here, through m.features, never by importing the debugger.
FEATURES = {"dumpcore": "ukdbg.tender.modules.dumpcore", "gdb": "ukdbg.debugger.gdb"}


def warn(msg: str) -> None:
    sys.stderr.write(f"ukdbg: {msg}\n")


def _import(name):
    __import__(f"{__package__}.{name}")
    return sys.modules[f"{__package__}.{name}"]


def prepare(argv: list, only=None, warn=warn):
    """Everything before the guest's first instruction except events.arm(): options,
    the checked image, the machine, its modules (`only`: names from MODULES to limit
    them to, for benches and tests), attached devices, the boot info."""
    opts = options.parse_run(argv)
    image = read_image(opts.app)
    options.check_against_manifest(opts, image.manifest)
    opts.mem_size = adjust_mem_size(opts.mem_mb, warn)
    m = build_machine(image, opts, warn)
    m.argv = ["ukdbg", "run"] + list(argv)
    m.features = dict(FEATURES)
    try:
        for name, enabled in MODULES:
            if enabled(opts) and (only is None or name in only):
                _import(name).setup(m, opts)
        check_devices_attached(m)
        write_boot_info(m, " ".join(opts.args).encode())
        for hook in getattr(m, "boot_hooks", ()):
            hook(m)             # the boot state is final (--record writes it)
    except BaseException:
        m.close()
        raise
    return m


def run_main(argv: list, mark=None, exiting=False) -> int:
    """Entry point of `ukdbg run`; returns the process exit status.

    mark(phase) is called between phases (bench/boot.py's breakdown). exiting: the
    process ends when this returns (cli.py, which also turned the garbage collector
    off for the start-up): the objects of the set-up are frozen out of the collector's
    scans, and the machine is not closed (the exit closes its fds and unmaps its
    memory, and ending hooks did what must outlive it, e.g. the control socket's
    unlink)."""
    m = prepare(argv)
    try:
        m.events.arm()
        if exiting:
            import gc
            gc.freeze()
            gc.enable()
        if mark:
            mark("setup")
        if m.opts.sandbox:
            confine(m)
            if mark:
                mark("sandbox")
        stop = drive(m)
        if mark:
            mark("run")
        code = finish(m, stop)
    except BaseException:
        m.close()
        raise
    if not exiting:
        m.close()
    return code


def confine(m) -> None:
    """The seccomp allowlist, once everything is set up (ukdbg/sandbox.py). A monitor
    that cannot confine itself says so and runs on (--no-sandbox silences it)."""
    from . import sandbox
    try:
        m.sandbox = sandbox.install(m)
    except (OSError, ImportError, ValueError) as e:
        warn(f"seccomp sandbox not installed: {e} (run with --no-sandbox to silence)")


def drive(m):
    """Run to the final stop. A debugger module may take over (m.driver)."""
    import time
    m.started = time.monotonic()
    driver = getattr(m, "driver", None)
    stop = driver(m) if driver is not None else loop.run(m)
    # A module that takes the machine over mid-run (a gdb attaching through the control
    # socket) returns a Stop carrying its driver: handoff(m) -> the final Stop.
    while getattr(stop, "handoff", None) is not None:
        stop = stop.handoff(m)
    return stop


def finish(m, stop) -> int:
    """Ending hooks (cores, reports), the one-line diagnosis, the exit status."""
    from .target import Crashed, Exited, Killed
    if isinstance(stop, Crashed) and stop.regs is None and m.fault is not None:
        stop.regs = m.fault.regs
    m.final_stop = stop
    m.reported = False
    for hook in m.ending_hooks:
        try:
            hook(m, stop)
        except UkdbgError as e:
            warn(str(e))
    if not m.reported:
        if isinstance(stop, Crashed):
            warn(f"{os.path.basename(m.image.path)}: {stop.message}")
        elif isinstance(stop, Killed):
            from .target import SIGNAL_NAMES
            what = "--timeout expired" if stop.reason == "timeout" else \
                f"received {SIGNAL_NAMES.get(stop.signal, stop.signal)}"
            warn(f"{os.path.basename(m.image.path)}: {what}, guest stopped")
        elif not isinstance(stop, Exited):
            warn(f"{os.path.basename(m.image.path)}: guest stopped: {stop!r}")
        # issue 4: the core's path (a crash report prints it itself)
        if getattr(m, "core_path", None):
            warn(f"core written to {m.core_path}")
    return endings.exit_code(stop)
