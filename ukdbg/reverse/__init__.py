"""ukdbg/reverse/: reverse execution for gdb (issue 11) over a deterministic guest.

checkpoint.py keeps whole-machine checkpoints (vCPU state, memory deltas from KVM
dirty logging); engine.py defines positions and runs the guest forward from
checkpoints to go backwards. The gdb stub sees the engine as the target's resumable,
breakpoints and watchpoints capabilities plus reversible() (bs/bc packets).
Imports go one way: reverse -> debugger -> tender (tests/unit/test_layering.py).
"""


def setup(m, opts, replayer=None) -> None:
    """`ukdbg run --reverse` and `ukdbg replay --gdb` (replayer: its input cursor is
    saved with every checkpoint): the history starts when gdb first asks."""
    from .engine import Engine
    if m.devices and any(d.attached for d in m.devices) and replayer is None:
        from ..errors import UkdbgError
        raise UkdbgError("--reverse: a guest with block or network devices is not "
                         "deterministic; record it and use 'ukdbg replay'")
    m.reverse = Engine(m, getattr(opts, "checkpoint_mem", 256) << 20, replayer=replayer)
