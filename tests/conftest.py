"""Shared test set-up: fixture images, KVM/gdb markers, and the run report.

A KVM or gdb test that is skipped is not a pass: at the end of the session the number
of KVM, gdb and lldb tests that ran is printed, and the session fails when /dev/kvm is
usable but KVM tests were skipped (or gdb tests skipped while gdb is installed).
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")
BUILD = os.path.join(FIXTURES, "build")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from helpers import gdb_path, lldb_path  # noqa: E402


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)




_built = []


def build_fixtures() -> str:
    """`make -C fixtures` once per session (the same command the README uses)."""
    if not _built:
        r = subprocess.run(["make", "-s", "-C", FIXTURES], capture_output=True, text=True)
        if r.returncode:
            pytest.fail(f"make -C fixtures failed:\n{r.stdout}\n{r.stderr}")
        _built.append(True)
    return BUILD


@pytest.fixture
def rt():
    """A private runtime directory for monitors and the `ukdbg` commands that find them."""
    from running import RuntimeDir
    r = RuntimeDir()
    yield r
    r.cleanup()


@pytest.fixture
def monitors(rt):
    """start(*args) -> a running.Monitor sharing `rt`; all are closed at the end."""
    from running import Monitor
    started = []

    def start(*args, **kw):
        m = Monitor(rt, *args, **kw)
        started.append(m)
        return m
    yield start
    for m in started:
        m.close()


@pytest.fixture(scope="session")
def fixtures_dir():
    return build_fixtures()


@pytest.fixture(scope="session")
def app(fixtures_dir):
    """app('hello') -> path of fixtures/build/hello.hvt"""
    def path(name):
        p = os.path.join(fixtures_dir, f"{name}.hvt")
        assert os.path.exists(p), f"fixture {name} was not built"
        return p
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: boots real unikernels on /dev/kvm")
    config.addinivalue_line("markers", "gdb: drives the real gdb binary")
    config.addinivalue_line("markers", "lldb: drives the real lldb binary")
    config.addinivalue_line("markers", "root: acts as a second uid, which needs root; other "
                            "users skip it, and it is not a KVM skip (a non-root "
                            "equivalent covers it)")


def pytest_collection_modifyitems(config, items):
    no_kvm = pytest.mark.skip(reason="/dev/kvm is not usable here")
    no_gdb = pytest.mark.skip(reason="gdb is not installed")
    no_lldb = pytest.mark.skip(reason="lldb is not installed")
    not_root = pytest.mark.skip(reason="needs root to act as another uid")
    for item in items:
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(not_root)
        if "kvm" in item.keywords and not kvm_usable():
            item.add_marker(no_kvm)
        if "gdb" in item.keywords and not gdb_path():
            item.add_marker(no_gdb)
        if "lldb" in item.keywords and not lldb_path():
            item.add_marker(no_lldb)


_counts = {k: {"passed": 0, "failed": 0, "skipped": 0} for k in ("kvm", "gdb", "lldb")}


def pytest_runtest_logreport(report):
    if report.skipped and "root" in report.keywords and os.geteuid() != 0:
        return                  # not applicable to this user, not a skipped KVM test
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for k in _counts:
            if k in report.keywords:
                _counts[k][report.outcome] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    tr.section("ukdbg: real KVM / gdb / lldb tests")
    for k, c in _counts.items():
        tr.write_line(f"{k.upper():5s} tests: {c['passed']} passed, {c['failed']} failed, "
                      f"{c['skipped']} skipped")
    problems = _skip_problems()
    for p in problems:
        tr.write_line(f"ERROR: {p}", red=True)


def _skip_problems():
    out = []
    # CI sets UKDBG_REQUIRE_KVM=1 when /dev/kvm exists: then even an unusable device
    # (permissions) or a run in which no KVM test ran at all is a failure.
    required = os.environ.get("UKDBG_REQUIRE_KVM") == "1"
    if (kvm_usable() or required) and _counts["kvm"]["skipped"]:
        out.append(f"/dev/kvm is there but {_counts['kvm']['skipped']} KVM tests were "
                   "skipped")
    if required and not _counts["kvm"]["passed"] + _counts["kvm"]["failed"]:
        out.append("UKDBG_REQUIRE_KVM=1 but no KVM test ran")
    if gdb_path() and _counts["gdb"]["skipped"]:
        out.append(f"gdb is installed but {_counts['gdb']['skipped']} gdb tests were skipped")
    return out


def pytest_sessionfinish(session, exitstatus):
    if _skip_problems() and session.exitstatus == 0:
        session.exitstatus = 1
