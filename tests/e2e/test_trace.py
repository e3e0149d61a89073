"""--trace and --trace-summary: one strace-like line per hypercall, checked line by line on
the block and network fixtures (the latter on a tap in a network namespace the test makes
itself, with frames injected from the host side through a raw AF_PACKET socket)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from helpers import ukdbg
from running import Monitor, RuntimeDir

pytestmark = pytest.mark.kvm

LINE = re.compile(r"^ +(\d+\.\d{6}) (.*?)(?: <(\d+\.\d{6})>)?$")


def parse_trace(text):
    """[(timestamp, 'call = result', duration or None)] for each trace line."""
    out = []
    for ln in text.splitlines():
        m = LINE.match(ln)
        assert m, f"not a trace line: {ln!r}"
        out.append((float(m.group(1)), m.group(2),
                    float(m.group(3)) if m.group(3) else None))
    ts = [t for t, _, _ in out]
    assert ts == sorted(ts), "timestamps go backwards"
    return out


def expect(calls, patterns):
    """Each call matches its pattern, in order; a pattern ending in '*' matches a run
    of zero or more consecutive calls."""
    i = 0
    for p in patterns:
        if p.endswith("*"):
            rx = re.compile(p[:-1])
            while i < len(calls) and rx.fullmatch(calls[i]):
                i += 1
            continue
        assert i < len(calls), f"trace ended before {p!r}"
        assert re.fullmatch(p, calls[i]), f"line {i}: {calls[i]!r} !~ {p!r}"
        i += 1
    assert i == len(calls), f"unexpected trailing lines: {calls[i:]}"


def puts(text):
    """The pattern of the trace line of PUTS(text)."""
    return re.escape(f'puts("{text}", {len(text)}) = {len(text)}'.replace("\n", "\\n"))


def summary_rows(text):
    """{name: (calls, errors)} from a --trace-summary table."""
    lines = text.splitlines()
    head = lines.index("% time     seconds  usecs/call     calls    errors hypercall")
    rows = {}
    for ln in lines[head + 2:]:
        if ln.startswith("------"):
            break
        f = ln.split()
        rows[f[-1]] = (int(f[3]), int(f[4]) if len(f) == 6 else 0)
    total = lines[head + 3 + len(rows)].split()
    assert total[-1] == "total"
    assert int(total[3]) == sum(c for c, _ in rows.values())
    errors = sum(e for _, e in rows.values())
    assert (int(total[4]) if len(total) == 6 else 0) == errors, lines[head + 3 + len(rows)]
    return rows


@pytest.mark.parametrize("bs", [512, 4096])
def test_block_trace_line_by_line(app, tmp_path, bs):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (64 * 1024))
    r = ukdbg("run", "--mem=8", "--trace", "--trace-summary", f"--block:storage={disk}",
              f"--block-sector-size:storage={bs}", app("block"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"block: capacity=65536 block_size={bs}\nblock: ok\n"
                        "Solo5: solo5_exit(0) called\n")
    table = r.stderr[r.stderr.index("% time"):]
    trace = parse_trace(r.stderr[:r.stderr.index("% time")])
    calls = [c for _, c, _ in trace]
    cap_line = f"block: capacity=65536 block_size={bs}\\\\n"
    expect(calls, [
        r"walltime\(\) = \d{10}\.\d{9}",
        rf'puts\("{cap_line}", {34 + len(str(bs))}\) = {34 + len(str(bs))}',
        *[rf"block_write\(storage, off={s * bs}, len={bs}\) = OK" for s in range(4)],
        *[rf"block_read\(storage, off={s * bs}, len={bs}\) = OK" for s in range(4)],
        rf"block_read\(storage, off={65536 - bs}, len={bs}\) = OK",
        r'puts\("block: ok\\n", 10\) = 10',
        r'puts\("Solo5: solo5_exit\(0\) called\\n", 28\) = 28',
        r"halt\(status=0\) = \?",
    ])
    assert all(d is not None and d < 1.0 for _, c, d in trace if not c.startswith("halt"))
    assert summary_rows(table) == {"block_write": (4, 0), "block_read": (5, 0),
                                   "puts": (3, 0), "walltime": (1, 0), "halt": (1, 0)}


def test_trace_of_poll_and_walltime(app):
    r = ukdbg("run", "--mem=8", "--trace", app("time"), "3")
    assert r.returncode == 0, r.stderr
    trace = parse_trace(r.stderr)
    calls = [c for _, c, _ in trace]
    ts = re.findall(r"^t=(\d+)$", r.stdout, re.M)
    expect(calls, [
        r"walltime\(\) = \d+\.\d{9}",
        *sum([[rf"walltime\(\) = {t[:-9]}\.{t[-9:]}", rf'puts\("t={t}\\n", {len(t) + 3}\) = {len(t) + 3}',
               r"poll\(timeout=0\.100s\) = 0 ready"] for t in ts], [])[:-1],
        r'puts\("Solo5: solo5_exit\(0\) called\\n", 28\) = 28',
        r"halt\(status=0\) = \?",
    ])
    polls = [d for _, c, d in trace if c.startswith("poll")]
    assert len(polls) == 2 and all(0.09 <= d < 1.0 for d in polls)


def test_trace_to_a_file_and_the_summary_with_it(app, tmp_path):
    out = tmp_path / "trace.txt"
    r = ukdbg("run", "--mem=8", f"--trace={out}", "--trace-summary", app("hypercalls"), "50")
    assert r.returncode == 0
    assert r.stderr == ""
    text = out.read_text()
    head = text.index("% time")
    calls = [c for _, c, _ in parse_trace(text[:head])]
    assert calls.count('puts(".", 1) = 1') == 50
    assert sum(c.startswith("walltime() = ") for c in calls) == 51
    assert summary_rows(text[head:]) == {"puts": (51, 0), "walltime": (51, 0),
                                         "halt": (1, 0)}


def test_summary_alone_prints_no_lines(app):
    r = ukdbg("run", "--mem=8", "--trace-summary", app("hello"))
    assert r.returncode == 0
    assert r.stderr.startswith("% time ")
    assert summary_rows(r.stderr) == {"puts": (2, 0), "walltime": (1, 0), "halt": (1, 0)}


@pytest.mark.parametrize("variant,call", [
    ("", r"puts\(0xfffffffffff00000, 16\)"),
    ("struct", r"puts\(0xfffff000\)"),
])
def test_trace_shows_a_refused_hostile_pointer(app, variant, call):
    r = ukdbg("run", "--mem=8", "--no-core", "--trace", "--trace-summary",
              app("hostileptr"), *([variant] if variant else []))
    assert r.returncode == 159
    lines = [ln for ln in r.stderr.splitlines() if LINE.match(ln)]
    assert re.fullmatch(r" +\d+\.\d{6} " + call + r" = \? <bad guest pointer: guest access "
                        r"gpa=0x[0-9a-f]+ size=0x10 outside guest memory>", lines[-1]), lines
    # the refused call is counted as an error (the good puts before it is not)
    assert summary_rows(r.stderr) == {"puts": (2, 1), "walltime": (1, 0)}


def test_trace_shows_a_hypercall_that_does_not_exist(app):
    r = ukdbg("run", "--mem=8", "--no-core", "--trace", "--trace-summary", app("badhypercall"))
    assert r.returncode == 159
    lines = [ln for ln in r.stderr.splitlines() if LINE.match(ln)]
    assert re.fullmatch(r" +\d+\.\d{6} hypercall_0\(0x[0-9a-f]+\) = \? <no such hypercall>",
                        lines[-1]), lines
    assert summary_rows(r.stderr)["hypercall_0"] == (1, 1)


def test_trace_file_error_is_one_line(app, tmp_path):
    r = ukdbg("run", f"--trace={tmp_path}/no/such/file", app("hello"))
    assert r.returncode == 1
    assert r.stderr.startswith("ukdbg: --trace=") and r.stderr.count("\n") == 1


# --- the network fixture, in a network namespace ------------------------------------------------
INJECT = r"""
import json, socket, sys, time
tap, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((tap, 0))
s.settimeout(10)
dst, src = bytes.fromhex("020000000001"), bytes.fromhex("02000000aa02")
out = []
for k in range(n):
    payload = bytes([k + 1]) * 46
    frame = dst + src + b"\x88\xb5" + payload
    s.send(frame)
    while True:
        data, addr = s.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING:       # not our own frame going out
            break
    out.append({"sent": frame.hex(), "got": data.hex()})
    sys.stdout.write(json.dumps(out[-1]) + "\n")
    sys.stdout.flush()
    if k + 1 < n:
        sys.stdin.readline()                        # the test checks status between frames
"""


@pytest.fixture
def netns():
    if not shutil.which("ip"):
        pytest.fail("the `ip` command (iproute2) is needed for the network tests")
    name = f"ukdbg{os.getpid()}{int(time.time() * 1000) % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        def ns(*cmd):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True,
                           capture_output=True)
        ns("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")        # no IPv6 chatter on the tap
        ns("ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
        ns("ip", "link", "set", "tap0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_net_trace_line_by_line_with_injected_frames(app, netns):
    rt = RuntimeDir()
    m = Monitor(rt, "--mem=8", "--trace", "--trace-summary", "--net:service=tap0",
                "--net-mac:service=02:00:00:00:00:01", app("net"), "2",
                wrap=("ip", "netns", "exec", netns))
    inj = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", INJECT,
                            "tap0", "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    try:
        first = json.loads(inj.stdout.readline())
        # the device counters, through the control socket, between the two frames
        st = json.loads(rt.cli("status", "--json", m.pid).stdout)
        dev, = st["devices"]
        assert dev["name"] == "service" and dev["type"] == "net" and dev["backend"] == "tap0"
        assert dev["mac"] == "02:00:00:00:00:01" and dev["mtu"] == 1500
        assert dev["bytes_read"] == 60 and dev["bytes_written"] == 60
        assert st["hypercalls"]["net_read"] >= 1 and st["hypercalls"]["net_write"] == 1
        inj.stdin.write("\n")
        inj.stdin.flush()
        second = json.loads(inj.stdout.readline())
        assert inj.wait(30) == 0
        assert m.wait() == 0, m.stderr()
        out, err = m.stdout(), m.stderr()
    finally:
        inj.kill()
        m.close()
        rt.cleanup()
    for k, f in enumerate((first, second)):
        sent, got = bytes.fromhex(f["sent"]), bytes.fromhex(f["got"])
        assert len(got) == 60
        assert got[:6] == sent[6:12] and got[6:12] == sent[:6]     # MACs swapped
        assert got[12:] == sent[12:] == b"\x88\xb5" + bytes([k + 1]) * 46
    assert out == ("net: mac=02:00:00:00:00:01 mtu=1500\n"
                          "net: echoed frame 1 len=60\nnet: echoed frame 2 len=60\n"
                          "Solo5: solo5_exit(0) called\n")
    calls = [c for _, c, _ in parse_trace(err[:err.index("% time")])]
    expect(calls, [
        r"walltime\(\) = \d+\.\d{9}",
        puts("net: mac=02:00:00:00:00:01 mtu=1500\n"),
        r"poll\(timeout=1\.000s\) = 0 ready*",
        r"poll\(timeout=1\.000s\) = 1 ready \[service\]",
        r"net_read\(service, size=9234\) = OK len=60",
        r"net_write\(service, len=60\) = OK",
        puts("net: echoed frame 1 len=60\n"),
        r"net_read\(service, size=9234\) = AGAIN",
        r"poll\(timeout=1\.000s\) = 0 ready*",
        r"poll\(timeout=1\.000s\) = 1 ready \[service\]",
        r"net_read\(service, size=9234\) = OK len=60",
        r"net_write\(service, len=60\) = OK",
        puts("net: echoed frame 2 len=60\n"),
        puts("Solo5: solo5_exit(0) called\n"),
        r"halt\(status=0\) = \?",
    ])
    rows = summary_rows(err[err.index("% time"):])
    assert rows["net_read"] == (3, 1)            # AGAIN counts as an error, as EAGAIN
    assert rows["net_write"] == (2, 0) and rows["puts"] == (4, 0)
