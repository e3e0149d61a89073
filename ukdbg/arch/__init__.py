"""ukdbg/arch: CPU architecture knowledge (x86-64), pure: no KVM, no I/O."""
