"""ukdbg/tender/modules/dumpcore.py: an ELF core at every fatal ending, SIGQUIT, on demand.

setup() only registers hooks (the plain run path pays for nothing else); the core is
built by dump(), the one API for crash cores, --core-on live dumps, gdb's
`monitor core FILE` and the control socket's `core`.
"""

import errno
import os
import sys

SIGQUIT = 3


def setup(m, opts) -> None:
    if not opts.no_core:
        m.ending_hooks.append(_on_end)
        m.events.watch_signal(SIGQUIT, _on_sigquit)
    for sig in opts.core_on:
        _check_core_on(sig, opts)
        m.events.watch_signal(sig, _on_core_signal)


# Signals the monitor cannot give to --core-on: uncatchable, the event model's own
# (SIGUSR1 kicks, SIGIO sockets) and glibc's thread signals.
_RESERVED = {9: "cannot be caught", 19: "cannot be caught", 10: "wakes the vCPU thread",
             29: "serves the control and gdb sockets", 32: "is glibc's", 33: "is glibc's"}


def _check_core_on(sig, opts):
    from ...errors import UsageError
    why = _RESERVED.get(sig)
    if why is None and sig == 14 and opts.timeout:
        why = "is the --timeout timer"
    if why:
        raise UsageError(f"--core-on: signal {sig} {why} in ukdbg", "use --core-on USR2")


def is_fatal(stop) -> bool:
    """Endings that leave a core, as for a process: crashes, SIGQUIT, --timeout."""
    from ...target import Crashed, Killed
    if isinstance(stop, Crashed):
        return True
    return isinstance(stop, Killed) and (stop.signal == SIGQUIT or stop.reason == "timeout")


def _on_end(m, stop) -> None:
    from ...errors import UkdbgError
    if not is_fatal(stop):
        return
    try:
        m.core_path = dump(m, stop)
    except UkdbgError:
        raise
    except Exception as e:      # a bug must not change the guest's exit status
        raise UkdbgError(f"could not write a core: internal error: "
                         f"{type(e).__name__}: {e}") from None


def _on_sigquit(m, signo):
    from ...target import Killed
    return Killed(signo, "signal")


def _on_core_signal(m, signo):
    """--core-on SIGNAL: a live core; the guest carries on."""
    from ...errors import UkdbgError
    from ...target import Killed
    try:
        path = dump(m, Killed(signo, "live"))
    except UkdbgError as e:
        _say(str(e))
    except Exception as e:
        _say(f"could not write a core: internal error: {type(e).__name__}: {e}")
    else:
        _say(f"core written to {path}")
        if getattr(m, "log", None) is not None:     # issue 6: --log's "core" event
            from .log import log_event
            log_event(m, "core", path=os.path.abspath(path), reason=f"signal {signo}",
                      live=True)
    return None


def _say(msg: str) -> None:
    sys.stderr.write(f"ukdbg: {msg}\n")
    sys.stderr.flush()


def default_path(m) -> str:
    app = os.path.basename(m.image.path)
    if app.endswith(".hvt"):
        app = app[:-4]
    name = f"{app}.{os.getpid()}.core"
    return os.path.normpath(os.path.join(m.opts.core_dir or ".", name))


def core_path_rule(core_dir: str, path: str, owner: bool) -> str:
    """Where gdb's `monitor core FILE` may write (docs/security.md, "gdb stub"); a
    separate check so that any way of creating the file keeps it.
      everyone: no NUL or control character; a relative FILE is in core_dir; the file
        must not exist (the writer links it in, never replacing a file or a symlink).
      a client that is not the monitor's owner (a remote one): FILE is one plain name
        (no '/', not '.' or '..', no leading '.'), in core_dir's real directory."""
    from ...errors import TargetError
    if not path or any(c < " " or c == "\x7f" for c in path):
        raise TargetError(errno.EINVAL, "monitor core: FILE must be a file name without "
                                        "control characters")
    base = core_dir or "."
    if owner:
        return path if os.path.isabs(path) else os.path.join(base, path)
    if "/" in path or path.startswith(".") or len(path) > 255:
        raise TargetError(errno.EPERM, "monitor core: this client may only name a file "
                                       "in the monitor's --core-dir (a plain name: no "
                                       "'/', no leading '.')")
    return os.path.join(os.path.realpath(base), path)


def dump(m, stop=None, path=None) -> str:
    """Write a core of the guest as it is now (it may go on running afterwards) and
    return its path. stop: the Stop being recorded (a Crashed supplies the faulting
    registers); path: exact file name (must not exist), else <core-dir>/<app>.<pid>.core
    (or .1, .2, ... if taken). Raises UkdbgError with a one-line message."""
    from ...coredump.writer import write_core_file
    from ...progress import Bar
    from ..core_source import build_source
    src = build_source(m, stop)
    # A bar on a terminal once the dump has taken 0.5 s (4 GiB, 512 MiB touched: ~2 s).
    with Bar("writing core", sum(hi - lo for lo, hi in src.phys_extents)) as bar:
        if path is None:
            return write_core_file(src, default_path(m), unique=True,
                                   progress=bar.advance)
        return write_core_file(src, path, unique=False, progress=bar.advance)
