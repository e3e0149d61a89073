"""ukdbg/tender/modules/report.py: the crash report of `ukdbg run`, an ending hook after
dumpcore and before gdb-on-crash. Only a crash loads the inspector; whatever fails
here, the monitor prints its one-line diagnosis, never a traceback.
"""

import sys


def setup(m, opts) -> None:
    m.ending_hooks.append(on_end)


def on_end(m, stop) -> None:
    from ...target import Crashed
    if not isinstance(stop, Crashed):
        return
    try:
        text = render(m, stop, getattr(m.opts, "report", "text"), _stderr_is_tty())
    except Exception as e:     # never a traceback; finish() prints the one-liner
        sys.stderr.write(f"ukdbg: (no crash report: {type(e).__name__}: {e})\n")
        return
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):       # stderr closed: nobody to tell
        return
    m.reported = True


def _stderr_is_tty() -> bool:
    """Whether to style the report (inspect.render.color_wanted, without importing rich
    for a guest that ends well)."""
    import os
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def session_of(m, stop):
    """An inspect Session over the machine as it ended."""
    from ...inspect.session import Facts, Session
    from ...inspect.symbols import Symbols
    from ..abi import HC_NAMES
    from ..view import MachineView
    t = MachineView(m)
    t.set_stop(stop)
    target = t if stop.regs is None else _AtFault(t, stop.regs)
    facts = Facts.from_stop(
        stop, argv=tuple(m.argv), app_path=m.image.path, console=m.console.last(),
        console_total=m.console.total, mem_size=m.mem_size,
        guest_cmdline=m.cmdline.decode("utf-8", "replace"),
        hypercalls={HC_NAMES[i]: n for i, n in enumerate(m.stats.hypercalls)
                    if i in HC_NAMES and n},
        core_path=getattr(m, "core_path", None),
        flight=m.flight.note() if m.flight is not None else None)
    return Session(target, Symbols(m.image.elf), facts=facts)


def render(m, stop, fmt="text", color=False) -> str:
    from ...inspect import report
    s = session_of(m, stop)
    core = getattr(m, "core_path", None)
    no_core = "" if core else ("not written (--no-core)" if m.opts.no_core
                               else "not written")
    r = report.build(s, core=core, no_core=no_core)
    if fmt == "json":
        import json
        return json.dumps(r.to_json(), sort_keys=True) + "\n"
    from ...inspect import render as R
    if not color:
        return R.plain(r)
    import io
    buf = io.StringIO()
    R.Output(buf, color=True).show(r)
    return buf.getvalue()


class _AtFault:
    """The live target, but with the registers of the faulting instruction."""

    def __init__(self, target, regs):
        self._t = target
        self._regs = regs

    def read_registers(self):
        return self._regs.copy()

    def __getattr__(self, name):
        return getattr(self._t, name)
