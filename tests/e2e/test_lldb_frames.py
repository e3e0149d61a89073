"""lldb against gdb on real crashes, live and on cores: `lldb APP -o 'gdb-remote ADDR'`
and `lldb APP -c CORE` with no other set-up command must show every frame gdb shows
(same function, same pc where gdb prints one, in the same order).

lldb also shows the runtime frames below main (rt_start, _start), which gdb hides by
default ("backtrace past-main"): gdb's list must be a prefix of lldb's.
bench/lldb_frames.py prints the same comparison as a table (tests/lldb_support.py).
"""

import re

import pytest

from lldb_support import (CRASHES, breakpoint_pair, core_pair, crash_core, crash_pair,
                          gdb_core, gdb_frames, gdb_prefix_of_lldb, lldb_frames)

pytestmark = [pytest.mark.kvm, pytest.mark.gdb, pytest.mark.lldb]


def assert_same(gdb_out, lldb_out):
    g, l = gdb_frames(gdb_out), lldb_frames(lldb_out)
    assert len(g) >= 2, gdb_out
    assert gdb_prefix_of_lldb(g, l), (g, l, lldb_out)


@pytest.mark.parametrize("app", sorted(CRASHES))
def test_live_breakpoint(app):
    gdb_out, lldb_out = breakpoint_pair(app)
    assert "stop reason = breakpoint 1.1" in lldb_out, lldb_out
    assert_same(gdb_out, lldb_out)


@pytest.mark.parametrize("app", sorted(CRASHES))
def test_live_crash(app):
    gdb_out, lldb_out = crash_pair(app)
    assert re.search(r"stop reason = signal SIG(SEGV|FPE|ABRT|ILL)", lldb_out), lldb_out
    assert_same(gdb_out, lldb_out)


@pytest.mark.parametrize("app", sorted(CRASHES))
def test_core(app, tmp_path):
    status, cores = crash_core(app, tmp_path)
    assert status != 0
    (core,) = cores
    gdb_out, lldb_out = core_pair(app, core)
    assert re.search(r"stop reason = signal SIG(SEGV|FPE|ABRT|ILL)", lldb_out), lldb_out
    assert_same(gdb_out, lldb_out)
    # gdb still sees one thread: the OpenBSD notes lldb reads stay invisible to it.
    threads = gdb_core(app, core, "info threads")
    assert len(re.findall(r"^\*?\s+\d+\s+LWP", threads, re.M)) == 1, threads
    assert "has terminated" not in threads, threads
