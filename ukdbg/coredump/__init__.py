"""ukdbg/coredump: ELF core files: their format, the writer and the read-only reader."""
