"""ukdbg/inspect/cli.py: `ukdbg core CORE`: open a core, then a REPL, commands, a report,
JSON, or a read-only GDB remote server.
"""

import argparse
import json
import sys

from ..errors import UsageError

EPILOG = """\
examples:
  ukdbg core app.1234.core                      interactive (help lists the commands)
  ukdbg core app.1234.core -c 'info; bt; regs'  run commands and exit
  ukdbg core app.1234.core --report             the crash report ukdbg run printed
  ukdbg core app.1234.core --json               the report as JSON (CI systems)
  ukdbg core --gdb :1234 app.1234.core          serve it: gdb app.hvt -ex 'target remote :1234'

exit status: 0 ok, 1 unreadable core or a failed command, 2 bad command line
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"core: {message}", "see ukdbg core --help")


def parse(argv):
    p = _Parser(prog="ukdbg core", description="Inspect a core file written by ukdbg.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("core", metavar="CORE", help="the core file (APP.PID.core)")
    p.add_argument("--app", metavar="APP",
                   help="the unikernel image (default: the path the core records)")
    p.add_argument("-c", "--commands", metavar="CMDS", action="append",
                   help="run commands (separated by ';') and exit; may be repeated")
    p.add_argument("--report", action="store_true", help="print the crash report")
    p.add_argument("--json", action="store_true",
                   help="JSON output (with -c: one object per command)")
    p.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="serve the core read-only over the GDB remote protocol")
    p.add_argument("--gdb-allow-remote", action="store_true",
                   help="let --gdb listen on a non-loopback address (no authentication)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour output (default: only on a terminal)")
    return p.parse_args(argv)


def core_main(argv) -> int:
    a = parse(argv)
    from ..progress import Spinner
    from .session import open_core
    with Spinner(f"loading {a.core}"):      # shown on a terminal after 0.5 s
        session = open_core(a.core, app=a.app)
    for w in session.warnings:
        sys.stderr.write(f"ukdbg: warning: {w}\n")
    sys.stderr.flush()
    try:
        return _main(a, session)
    finally:
        session.close()


def _main(a, session) -> int:
    from . import render
    color = {"always": True, "never": False}.get(a.color)
    out = render.Output(sys.stdout, color)
    if a.gdb:
        return serve(session, a.gdb, allow_remote=a.gdb_allow_remote)
    if a.commands:
        lines = [c for text in a.commands for c in _split(text)]
        return batch(session, lines, out, as_json=a.json)
    if a.report or a.json:
        from . import report
        r = report.build(session, core=session.facts.core_path)
        if a.json:
            sys.stdout.write(json.dumps(r.to_json(), sort_keys=True, indent=1) + "\n")
        else:
            out.show(r)
        return 0
    if not sys.stdin.isatty():
        return batch(session, [ln for ln in sys.stdin.read().splitlines() if ln.strip()],
                     out, echo=True)
    from .repl import run_repl
    return run_repl(session, out)


def _split(text):
    from .commands import split_commands
    return split_commands(text)


def batch(session, lines, out, as_json=False, echo=False) -> int:
    """Run command lines; returns 1 if one failed (the others still run)."""
    from .commands import QUIT
    results = []
    failed = False
    for line in lines:
        if line.strip() in QUIT:
            break
        if echo and not as_json:
            out.write_lines([_echo(line)])
        view, err = run_one(session, line)
        failed |= err is not None
        if as_json:
            results.append({"command": line, "result": view.to_json()} if err is None
                           else {"command": line, "error": err})
        elif err is not None:
            out.error(err)
        else:
            out.show(view)
    if as_json:
        sys.stdout.write(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 1 if failed else 0


def _echo(line):
    from rich.text import Text
    return Text(f"(ukdbg) {line}", style="bold")


def run_one(session, line):
    """(view, None) or (None, one-line error). Never raises for a command's failure."""
    from .commands import CommandError, execute
    try:
        return execute(session, line), None
    except CommandError as e:
        return None, f"error: {e}"
    except Exception as e:        # a bug or a corrupt core: one line, the session goes on
        import os
        if os.environ.get("UKDBG_DEBUG"):
            raise
        return None, f"error: internal: {type(e).__name__}: {e}"


def serve(session, address: str, allow_remote: bool = False) -> int:
    """--gdb: the same stub as live debugging, on the core (read-only)."""
    try:
        from ..gdbstub.server import serve_target
    except ImportError:
        from ..errors import UkdbgError
        raise UkdbgError("the GDB remote stub is not available in this build") from None
    addr = address
    if not addr.startswith("unix:"):
        host, _, port = addr.rpartition(":")
        if not port.isdigit():
            raise UsageError(f"--gdb {address}: expected [HOST:]PORT or unix:PATH")
        addr = f"{host or '127.0.0.1'}:{port}"
    image = session.symbols.path if session.symbols is not None else "APP.hvt"

    def announce(listening):
        shown = listening[5:] if listening.startswith("unix:") else listening
        sys.stderr.write(f"ukdbg: serving {session.facts.core_path} read-only on "
                         f"{listening}; connect with: gdb {image} -ex 'target remote "
                         f"{shown}'\n")
        sys.stderr.flush()
    return serve_target(session.target, addr, announce=announce,
                        allow_remote=allow_remote) or 0
