"""`ukdbg run` option parsing: solo5-hvt's syntax and the usual one."""

import pytest

from ukdbg.errors import UsageError
from ukdbg.tender.options import parse_run, parse_signal


def test_solo5_syntax():
    o = parse_run(["--mem=64", "--block:storage=disk.img", "--net:service=tap0",
                   "--net-mac:service=02:00:00:00:00:01", "--block-sector-size:storage=4096",
                   "--", "app.hvt", "a", "--b"])
    assert o.mem_mb == 64 and o.blocks == {"storage": "disk.img"}
    assert o.nets == {"service": "tap0"} and o.net_macs["service"] == bytes([2, 0, 0, 0, 0, 1])
    assert o.block_sector == {"storage": 4096}
    assert o.app == "app.hvt" and o.args == ["a", "--b"]


@pytest.mark.parametrize("argv,attrs", [
    (["--dumpcore=/tmp/c"], {"core_dir": "/tmp/c"}),
    (["--dumpcore", "/tmp/c"], {"core_dir": "/tmp/c"}),
    (["--gdb"], {"gdb": "127.0.0.1:1234", "gdb_wait": True}),
    (["--gdb-port=4321"], {"gdb": "127.0.0.1:4321", "gdb_wait": False}),
    (["--gdb", "--gdb-port=4321"], {"gdb": "127.0.0.1:4321", "gdb_wait": True}),
    (["--gdb-port=4321", "--gdb"], {"gdb": "127.0.0.1:4321", "gdb_wait": True}),
    (["--wait-gdb"], {"gdb": "127.0.0.1:1234", "gdb_wait": True}),
    (["--mem=64"], {"mem_mb": 64}),
    (["--block:disk=d.img"], {"blocks": {"disk": "d.img"}}),
    (["--block-sector-size:disk=4096"], {"block_sector": {"disk": 4096}}),
    (["--net:service=tap0"], {"nets": {"service": "tap0"}}),
    (["--net-mac:service=02:00:00:00:00:01"],
     {"net_macs": {"service": bytes([2, 0, 0, 0, 0, 1])}}),
])
def test_solo5_spellings_map_as_the_help_says(argv, attrs, capsys):
    o = parse_run([*argv, "app.hvt"])
    assert {k: getattr(o, k) for k in attrs} == attrs
    with pytest.raises(SystemExit):
        parse_run(["--help"])
    usage = capsys.readouterr().out
    solo5 = usage.split("solo5-hvt spellings", 1)[1].split("exit status:", 1)[0]
    assert argv[0].split("=", 1)[0].split(":", 1)[0] in solo5


def test_separate_values_and_guest_args():
    o = parse_run(["--mem", "32", "--core-dir", "/tmp/c", "app.hvt", "--mem=1"])
    assert o.mem_mb == 32 and o.core_dir == "/tmp/c"
    assert o.args == ["--mem=1"]          # after APP everything is the guest's


@pytest.mark.parametrize("argv,addr,wait", [
    (["--gdb", ":1234", "a.hvt"], ":1234", False),
    (["--gdb", "0.0.0.0:99", "a.hvt"], "0.0.0.0:99", False),
    (["--gdb=unix:/tmp/s", "a.hvt"], "unix:/tmp/s", False),
    (["--gdb", "a.hvt"], "127.0.0.1:1234", True),             # solo5-hvt-debug
    (["--gdb-port=4321", "a.hvt"], "127.0.0.1:4321", False),
    (["--gdb-wait", "a.hvt"], "127.0.0.1:1234", True),
])
def test_gdb_forms(argv, addr, wait):
    o = parse_run(argv)
    assert o.gdb == addr and o.gdb_wait == wait and o.app == "a.hvt"


@pytest.mark.parametrize("argv,msg", [
    (["--mem=0", "a"], "malformed argument to --mem"),
    (["--mem=x", "a"], "malformed argument to --mem"),
    (["--mem"], "--mem needs a value"),
    (["--block:=x", "a"], "expected --block:NAME=VALUE"),
    (["--block:bad-name=x", "a"], "letters or digits"),
    (["--block-sector-size:s=100", "a"], "power of two"),
    (["--net-mac:n=zz:00:00:00:00:00", "a"], "malformed MAC"),
    (["--net:n=@3", "a"], "not supported"),
    (["--timeout", "-1", "a"], "positive number"),
    (["--report", "xml", "a"], "text or json"),
    (["--core-on", "SIGNOPE", "a"], "unknown signal"),
    (["--wat", "a"], "unknown option"),
    (["--gdb", "127.0.0.1:99999", "a"], "expected \\[HOST:\\]PORT"),
    ([], "missing APP"),
    (["--", ], "missing APP"),
])
def test_bad_options(argv, msg):
    with pytest.raises(UsageError, match=msg.replace("(", r"\(")):
        parse_run(argv)


def test_signals():
    assert parse_signal("USR2") == 12 and parse_signal("SIGQUIT") == 3
    assert parse_signal("10") == 10


def test_record_and_reverse_are_refused_together_with_the_way_to_do_it():
    # Reverse execution re-runs the guest: its recording would miss or repeat inputs.
    with pytest.raises(UsageError) as e:
        parse_run(["--record", "/tmp/r.rec", "--reverse", "--gdb", ":1234", "app.hvt"])
    assert "ukdbg replay FILE --gdb" in str(e.value)
    assert parse_run(["--reverse", "--gdb", ":1234", "app.hvt"]).reverse
