"""ukdbg/inspect/commands/gdb.py: `gdb CMD`: stock gdb on the same core, through MI
(pygdbmi), for variables and types; started on first use, kept for the session, with
the frame selected here selected there too.
"""

import shutil
from dataclasses import dataclass, field

from . import CommandError

TIMEOUT = 20.0


@dataclass
class GdbView:
    command: str
    output: list = field(default_factory=list)    # console lines
    error: str = ""

    def to_json(self):
        return {"command": self.command, "output": self.output, "error": self.error}


def run(session, args):
    cmd = args.strip()
    if not cmd:
        raise CommandError("gdb: expected a gdb command, e.g. gdb print counter")
    core = session.facts.core_path
    if not core:
        raise CommandError("gdb: only for a core file (ukdbg core CORE)")
    if session.symbols is None:
        raise CommandError("gdb: the unikernel binary is not loaded (use --app APP)")
    ctl = _controller(session, core)
    if session.selected:
        _ask(ctl, f"-stack-select-frame {session.selected}")
    return GdbView(cmd, *_console(ctl, cmd))


def _controller(session, core):
    if session.gdb is not None:
        return session.gdb
    gdb = shutil.which("gdb")
    if gdb is None:
        raise CommandError("gdb: stock gdb is not installed")
    from pygdbmi.gdbcontroller import GdbController
    try:
        ctl = GdbController([gdb, "--nx", "--quiet", "--interpreter=mi3"])
    except Exception as e:
        raise CommandError(f"gdb: cannot start gdb: {e}") from None
    session.gdb = ctl
    for c in ("-gdb-set confirm off", "-gdb-set pagination off",
              "-gdb-set backtrace past-main on", "-gdb-set width 0",
              f"-file-exec-and-symbols {_mi_quote(session.symbols.path)}",
              f"-interpreter-exec console {_mi_quote('core-file ' + core)}"):
        _ask(ctl, c)
    return ctl


_token = [100]


def _ask(ctl, cmd):
    """Send an MI command and collect records up to its result record."""
    import time
    _token[0] += 1
    tok = _token[0]
    out = []
    try:
        ctl.write(f"{tok}{cmd}", read_response=False)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for r in ctl.get_gdb_response(timeout_sec=0.05, raise_error_on_timeout=False):
                out.append(r)
                if r.get("type") == "result" and r.get("token") == tok:
                    return out
    except Exception as e:
        raise CommandError(f"gdb: {e}") from None
    raise CommandError(f"gdb: no answer to '{cmd}' within {TIMEOUT:.0f} s")


def _console(ctl, cmd):
    """(console lines, error) of a CLI command run through MI."""
    out = _ask(ctl, f"-interpreter-exec console {_mi_quote(cmd)}")
    text, err = [], ""
    for r in out or []:
        if r.get("type") == "console" and r.get("payload"):
            text.append(r["payload"])
        elif r.get("type") == "result" and r.get("message") == "error":
            err = (r.get("payload") or {}).get("msg", "error")
    lines = "".join(text).rstrip("\n").split("\n") if text else []
    return lines, err


def close(ctl) -> None:
    """Ask gdb to leave, then make sure it is gone (a blocked SIGTERM, inherited from
    a monitor that blocks signals, must not hang us)."""
    p = getattr(ctl, "gdb_process", None)
    if p is None:
        return
    try:
        p.stdin.write(b"-gdb-exit\n")
        p.stdin.flush()
        p.wait(timeout=2)
    except Exception:
        p.kill()
        try:
            p.wait(timeout=5)
        except Exception:
            pass
    for f in (p.stdin, p.stdout, p.stderr):
        try:
            f.close()
        except Exception:
            pass
    ctl.gdb_process = None


def _mi_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
