"""ukdbg/tender/modules/log.py: --log FILE (JSON lines of lifecycle events), --console FILE.

Any module may call log_event(m, kind, **fields); it does nothing without --log. Each
event is one O_APPEND write, so several monitors can share a log file line by line.
"""

import json
import os
import time

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class EventLog:
    def __init__(self, path):
        self.path = path
        self.fd = _open(path, "--log")

    def write(self, record: dict) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, (json.dumps(record, default=str) + "\n").encode())
        except OSError:
            pass        # a full disk must not end the guest

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open(path, opt):
    from ...errors import UkdbgError
    try:
        return os.open(path, FLAGS, 0o644)
    except OSError as e:
        raise UkdbgError(f"{opt} {path}: {e.strerror}") from None


def log_event(m, kind: str, **fields) -> None:
    """Append {"time", "event": kind, "pid", **fields} to the --log file, if any."""
    log = getattr(m, "log", None)
    if log is None:
        return
    rec = {"time": round(time.time(), 6), "event": kind, "pid": os.getpid()}
    rec.update(fields)
    log.write(rec)


def _devices(m):
    out = []
    for d in m.devices:
        h = d.host
        out.append({"name": d.name, "type": d.type_name,
                    "backend": getattr(h, "path", None) or getattr(h, "iface", None)})
    return out


def setup(m, opts) -> None:
    if opts.console:
        fd = _open(opts.console, "--console")
        m.console.fds.append(fd)
        m.console_file = fd
    if opts.log:
        m.log = EventLog(opts.log)
        log_event(m, "start", argv=list(m.argv), app=os.path.abspath(m.image.path),
                  cwd=os.getcwd(), mem=m.mem_size, devices=_devices(m),
                  cmdline=" ".join(opts.args))
    m.ending_hooks.append(end)


def exit_record(m, stop) -> dict:
    """What the `exit` event says about a final Stop."""
    from ...target import SIGNAL_NAMES, Crashed, Exited, Killed
    from ..endings import exit_code
    rec = {"status": exit_code(stop)}
    if isinstance(stop, Exited):
        rec["reason"] = "exited"
        rec["guest_status"] = stop.status
    elif isinstance(stop, Crashed):
        rec["reason"] = "crashed"
        rec["cause"] = stop.cause
        rec["message"] = stop.message
        if stop.signal:
            rec["signal"] = SIGNAL_NAMES.get(stop.signal, stop.signal)
    elif isinstance(stop, Killed):
        rec["reason"] = {"timeout": "timeout", "control": "stopped"}.get(stop.reason,
                                                                          "signal")
        rec["signal"] = SIGNAL_NAMES.get(stop.signal, stop.signal)
    else:
        rec["reason"] = type(stop).__name__.lower()
    if m.started:
        rec["uptime"] = round(time.monotonic() - m.started, 6)
    return rec


def end(m, stop) -> None:
    if getattr(m, "log", None) is not None:
        core = getattr(m, "core_path", None)
        if core:
            log_event(m, "core", path=core, reason="exit")
        log_event(m, "exit", **exit_record(m, stop))
        m.log.close()
    fd = getattr(m, "console_file", None)
    if fd is not None:
        m.console.fds.remove(fd)
        os.close(fd)
        m.console_file = None
