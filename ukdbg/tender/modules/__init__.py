"""ukdbg/tender/modules: one file per feature; each has setup(m, opts) that returns at
once when its feature is off (Solo5's DECLARE_MODULE pattern)."""
