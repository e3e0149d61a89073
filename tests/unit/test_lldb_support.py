"""tests/lldb_support.py's reading of gdb's and lldb's backtraces (the e2e lldb test and
bench/lldb_frames.py both decide on them), on output the real debuggers printed."""

from lldb_support import gdb_frames, gdb_prefix_of_lldb, lldb_frames

GDB = """\
Program terminated with signal SIGFPE, Arithmetic exception.
#0  0x0000000000100f10 in divide (dividend=42) at apps/divzero.c:10
10	    return dividend / divisor; /* FAULT */
#0  0x0000000000100f10 in divide (dividend=42) at apps/divzero.c:10
#1  0x0000000000100f2a in main (cmdline=0x100a8 "") at apps/divzero.c:16
"""

LLDB = """\
(lldb) bt
* thread #1, stop reason = signal SIGFPE
  * frame #0: 0x0000000000100f10 divzero.hvt`divide(dividend=42) at divzero.c:10:21
    frame #1: 0x0000000000100f2a divzero.hvt`main(cmdline="") at divzero.c:16:12
    frame #2: 0x0000000000100c03 divzero.hvt`rt_start(bi=<unavailable>) at rt.c:139:5
    frame #3: 0x000000000010002b divzero.hvt`_start at start.S:47
"""


def test_frames_read():
    assert gdb_frames(GDB) == [("divide", 0x100f10), ("main", 0x100f2a)]
    assert lldb_frames(LLDB) == [("divide", 0x100f10), ("main", 0x100f2a),
                                 ("rt_start", 0x100c03), ("_start", 0x10002b)]
    # gdb's frame #0 at the start of a line has no pc; an inlined frame is its callee's
    assert gdb_frames("#0  divide (dividend=42) at d.c:10\n") == [("divide", None)]
    assert lldb_frames("(lldb) bt\n  * frame #0: 0x10 a.hvt`main [inlined] f at x.c:1\n"
                       ) == [("f", 0x10)]


def test_prefix():
    g, l = gdb_frames(GDB), lldb_frames(LLDB)
    assert gdb_prefix_of_lldb(g, l)
    assert gdb_prefix_of_lldb([("divide", None), ("main", None)], l)
    assert not gdb_prefix_of_lldb(g, l[:1])                           # a frame short
    assert not gdb_prefix_of_lldb(g, l[1:])                           # shifted
    assert not gdb_prefix_of_lldb([("divide", 0x100f11)], l)          # another pc
    assert not gdb_prefix_of_lldb(list(reversed(g)), l)               # another order
