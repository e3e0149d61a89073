"""ukdbg/gdbstub: the GDB remote serial protocol, for any target.Target (live VM or core)."""
