"""NET_BASIC on a real tap device, inside a network namespace the test makes itself."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, need_tap_netns, tap_netns

pytestmark = pytest.mark.kvm


@pytest.fixture
def netns():
    need_tap_netns()
    with tap_netns("ukdbg-t", taps=("tap0", "down0")) as name:
        yield name


def in_ns(ns, *args, timeout=60):
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_frames_are_echoed(netns, app):
    mac = "02:12:34:56:78:9a"
    res = in_ns(netns, os.path.join(ROOT, "tests/kvm/netns_echo.py"), app("net"), "tap0",
                mac, "3")
    assert res["rc"] == 0, res
    assert res["first"].startswith(f"net: mac={mac} mtu=1500"), res["first"]
    assert len(res["echoed"]) == 3
    for sent, echoed in zip(res["sent"], res["echoed"]):
        s, e = bytes.fromhex(sent), bytes.fromhex(echoed)
        assert e[:6] == s[6:12] and e[6:12] == s[:6] and e[12:] == s[12:]
    assert "net: echoed frame 3" in res["stdout"]


def test_tap_errors_are_one_line(netns, app):
    def run(iface):
        r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "ukdbg",
                            "run", f"--net:service={iface}", app("net")],
                           capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert "Traceback" not in r.stderr
        return r
    r = run("nosuch0")
    assert r.returncode == 1 and "no interface 'nosuch0'" in r.stderr
    r = run("down0")
    assert r.returncode == 1 and "is down" in r.stderr
    r = run("x" * 20)
    assert r.returncode == 1 and "bad interface name" in r.stderr
