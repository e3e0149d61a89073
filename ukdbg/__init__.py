"""ukdbg: a KVM monitor that runs Solo5 hvt unikernels like processes and debugs them
like processes (gdb stub, ELF cores, a core inspector)."""

__version__ = "0.1.0"
