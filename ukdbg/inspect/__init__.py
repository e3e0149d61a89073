"""ukdbg/inspect: the post-mortem inspector (`ukdbg core`) and the crash report, over any
target.Target (a core file or a live machine); see docs/inspect.md.
"""
