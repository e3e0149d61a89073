"""The stub against hostile or broken clients, at the protocol level (raw sockets):
garbage, bad checksums, oversized and malformed packets get errors or are dropped; a
client that vanishes mid-packet or while the guest runs leaves no breakpoint byte in
the guest, which then runs to its normal end."""

import random
import socket
import time

import pytest

from gdbguest import Guest, RawClient, app_path

from ukdbg.elf import ElfFile

pytestmark = pytest.mark.kvm


def symbol(app, name):
    return ElfFile.open(app_path(app)).lookup(name).value


def test_garbage_and_malformed_packets(fixtures_dir):
    with Guest("tick", 3) as g:
        c = RawClient(g.address)
        c.send_raw(b"\x00\xffgarbage+-}}##$")           # noise outside packets
        assert c.packet(b"?").startswith(b"T05thread:")
        c.send_raw(b"$m100000,4#00")                   # bad checksum: NAK, dropped
        assert c.s.recv(1) in (b"+", b"-")
        assert c.packet(b"m100000,4") == b"2f6e6f6e"    # "/non" (the .interp string)
        assert c.packet(b"mzz,4") == b"E16"             # malformed: EINVAL
        assert c.packet(b"m100000") == b"E16"
        assert c.packet(b"M100000,2:41") == b"E16"      # length and data disagree
        assert c.packet(b"X100000,5:ab") == b"E16"
        assert c.packet(b"p999") == b"E16"
        assert c.packet(b"Z9,100000,1") == b"E16"
        assert c.packet(b"qNoSuchThing") == b""        # unknown: empty reply
        assert c.packet(b"vNoSuchThing;1") == b""
        assert c.packet(b"m0,4") == b"E0e"              # unmapped page: EFAULT
        big = b"X100000,1:" + b"A" * 0x30000           # beyond PacketSize
        assert c.packet(big) == b"E07"
        assert c.packet(b"qRcmd,6e6f7065").startswith(b"O")  # "nope": output, then E
        assert c.reply() == b"E16"
        assert c.packet(b"vFile:open:2f6574632f706173737764,0,0") == b"F-1,2"  # /etc/passwd
        assert c.packet(b"vFile:open:" + app_path("tick").encode().hex().encode()
                        + b",1,0") == b"F-1,d"          # write access refused
        rng = random.Random(3)
        for _ in range(200):                            # random bodies never kill it
            body = bytes(rng.choice(b"mMpPgGqQvXZzHT?0123456789abcdef,:;=")
                         for _ in range(rng.randrange(1, 24)))
            if body[:1] in (b"c", b"s", b"C", b"S", b"k", b"D", b"v", b"G", b"P", b"M",
                            b"X", b"Z", b"z", b"Q"):
                continue
            c.packet(body)
        assert c.packet(b"?").startswith(b"T05")
        assert c.packet(b"D") == b"OK"
        c.close()
        assert g.wait() == 0
        assert "tick_count=3" in g.stdout()


def test_disconnect_mid_packet_leaves_no_breakpoint_bytes(fixtures_dir):
    tick = symbol("tick", "tick")
    with Guest("tick", 5) as g:
        c = RawClient(g.address)
        assert c.packet(b"Z0,%x,1" % tick) == b"OK"
        assert c.packet(b"m%x,1" % tick) == b"55"       # reads show the original byte
        c.send_raw(b"$m%x,4" % tick)                      # ... and vanish mid-packet
        c.close()
        # The int3 is gone: the guest runs through tick() five times and exits.
        assert g.wait() == 0, g.stderr()
        assert "tick_count=5" in g.stdout()


def test_disconnect_while_the_guest_runs(fixtures_dir):
    tick = symbol("tick", "tick")
    with Guest("tick", 4) as g:
        c = RawClient(g.address)
        assert c.packet(b"QStartNoAckMode") == b"OK"
        c.send_raw(b"$Z0,%x,1#%02x" % (tick, sum(b"Z0,%x,1" % tick) & 0xFF))
        assert c.reply() == b"OK"
        c.send_raw(b"$c#63")
        assert c.reply().startswith(b"T05")             # the first hit
        c.send_raw(b"$c#63")                            # run again and go away
        c.close()
        assert g.wait() == 0, g.stderr()
        assert "tick_count=4" in g.stdout()


def test_disconnect_mid_step_sequence(fixtures_dir):
    with Guest("tick", 2) as g:
        c = RawClient(g.address)
        for _ in range(50):
            assert c.packet(b"vCont;s:1").startswith(b"T05")
        c.s.shutdown(socket.SHUT_RDWR)
        c.close()
        assert g.wait() == 0, g.stderr()
        assert "tick_count=2" in g.stdout()


def test_ctrl_c_byte_interrupts_and_acks_continue(fixtures_dir):
    with Guest("loop") as g:
        c = RawClient(g.address)
        c.send_raw(b"$vCont;c#a8")
        g.wait_for_text("looping", g.stdout)
        t0 = time.monotonic()
        c.send_raw(b"\x03")
        r = c.reply()
        assert r.startswith(b"T02thread:"), r
        assert time.monotonic() - t0 < 2
        assert b"10:" in r and b"07:" in r and b"06:" in r  # rip, rsp, rbp expedited
        assert c.packet(b"vKill;1") == b"OK"
        assert g.wait() == 137


def _expedited(reply):
    """{regnum: value} of a T stop reply's `NN:hex;` fields."""
    out = {}
    for field in reply[3:].split(b";"):
        k, _, v = field.partition(b":")
        if len(k) == 2 and all(c in b"0123456789abcdef" for c in k) and v:
            out[int(k, 16)] = int.from_bytes(bytes.fromhex(v.decode()), "little")
    return out


def _g_value(g_reply, regnum):
    """Register regnum (0-16: the 8-byte GPRs and rip) of a `g` reply."""
    return int.from_bytes(bytes.fromhex(g_reply[16 * regnum:16 * regnum + 16].decode()),
                          "little")


def test_expedited_registers_in_stop_replies_match_g(fixtures_dir):
    """The registers a T reply carries (read from kvm_run's mirror while a debugger
    is attached) are those `g` reads, at every kind of stop and after a write."""
    tick = symbol("tick", "tick")
    with Guest("tick", 3) as g:
        c = RawClient(g.address)
        assert c.packet(b"QStartNoAckMode") == b"OK"
        stops = []

        def stop(body):
            r = c.packet(body)
            stops.append((r, c.packet(b"g")))          # `g` right after the stop
            return r
        stop(b"?")
        assert c.packet(b"Z0,%x,1" % tick) == b"OK"
        assert b"swbreak" in stop(b"vCont;c")          # to the breakpoint
        assert c.packet(b"z0,%x,1" % tick) == b"OK"
        for _ in range(6):
            stop(b"vCont;s")
        # A register write, then a step: the mirror follows the write.
        sp = _g_value(stops[-1][1], 7)
        assert c.packet(b"P6=%s" % (sp + 0x40).to_bytes(8, "little").hex().encode()) == b"OK"
        stop(b"?")
        stop(b"vCont;s")
        rips = set()
        for r, full in stops:
            assert r.startswith(b"T05"), r
            exp = _expedited(r)
            assert {6, 7, 16} <= set(exp), r           # rbp, rsp, rip at least
            for regnum, value in exp.items():
                assert value == _g_value(full, regnum), (r, regnum)
            rips.add(exp[16])
        assert len(rips) >= 7                           # the steps moved rip
        assert _expedited(stops[-2][0])[6] == sp + 0x40      # rbp as written
        assert c.packet(b"D") == b"OK"
        c.close()
        assert g.wait() == 0
