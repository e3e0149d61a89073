"""ukdbg/cli.py: the `ukdbg` command: dispatch subcommands, map errors to exit codes.

No logic lives here. The console script enters through ukdbg.main, which loads `ukdbg
run`'s modules (this one included) from their cached file first: the run's start-up
time is a measured feature (bench/boot.py).
"""

import os
import sys

USAGE = """\
usage: ukdbg COMMAND [ARGS...]

commands:
  run [OPTIONS] APP.hvt [ARGS...]   boot a Solo5 hvt unikernel (ukdbg run --help)
  replay FILE [OPTIONS]             replay a run recorded with run --record FILE
  core CORE [OPTIONS]               inspect a core file written by ukdbg
  ps                                list running unikernels
  status|pause|resume|stop PID      query or steer a running unikernel
  dump PID [-o FILE]                write a live core of a running unikernel
  attach PID [--print]              attach gdb to a running unikernel
  version                           print the version

ukdbg --version, ukdbg COMMAND --help
"""

# subcommand -> module under ukdbg/ exposing main(argv) -> int
COMMANDS = {
    "run": "run:run_main",
    "replay": "replay.replayer:replay_main",
    "core": "inspect.cli:core_main",
    "ps": "control.client:ps_main",
    "status": "control.client:status_main",
    "pause": "control.client:pause_main",
    "resume": "control.client:resume_main",
    "stop": "control.client:stop_main",
    "dump": "control.client:dump_main",
    "attach": "control.client:attach_main",
}


def _err(msg: str, hint: str = "") -> None:
    line = f"ukdbg: {msg}"
    if hint:
        line += f" (hint: {hint})"
    sys.stderr.write(line + "\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    if argv[0] in ("--version", "version", "-V"):
        from . import __version__
        print(f"ukdbg {__version__}")
        return 0
    cmd = argv[0]
    target = COMMANDS.get(cmd)
    if target is None:
        _err(f"unknown command '{cmd}'", "ukdbg --help lists the commands")
        return 2
    if cmd == "run":
        # As ukdbg.main does it before importing this module (a no-op then): the
        # collector off for the start-up's ~40,000 long-lived objects (run_main freezes
        # them and turns it back on), the run path from its cached file.
        import gc
        gc.disable()
        from . import load_run_path
        load_run_path()
    from .errors import UkdbgError
    try:
        modname, func = target.split(":")
        __import__(f"{__package__}.{modname}")
        main_fn = getattr(sys.modules[f"{__package__}.{modname}"], func)
        code = main_fn(argv[1:], exiting=True) if cmd == "run" else main_fn(argv[1:])
        if cmd == "run":
            # The guest is gone and everything is flushed: skip the interpreter's
            # teardown (a millisecond or two that every `ukdbg run` would pay).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except UkdbgError as e:
        _err(str(e), e.hint)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    except SystemExit:
        raise
    except Exception as e:  # a bug in ukdbg: one line, traceback on request
        from .sandbox import describe
        why = describe(e, f"ukdbg {cmd}")
        if why:
            _err(why)
            return 70
        if os.environ.get("UKDBG_DEBUG"):
            raise
        _err(f"internal error: {type(e).__name__}: {e} (set UKDBG_DEBUG=1 for a "
             "traceback)")
        return 70
