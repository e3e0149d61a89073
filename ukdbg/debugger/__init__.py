"""ukdbg/debugger/: live debugging, the driver of a running guest.

The tender (ukdbg/tender/) runs the guest; this package drives it: LiveTarget and its
debugger powers (debugger.py, watch.py) and the gdb stub's run-time side (gdb.py).
Imports go one way: debugger -> tender, never back (tests/unit/test_layering.py).
"""
