"""gdbstub/packets.py: checksums, framing, escaping, run-length encoding and the
PacketReader state machine, with hypothesis fuzzing of the byte stream."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from ukdbg.gdbstub import packets as P


def test_checksum_small_and_large_agree_with_sum():
    for data in (b"", b"OK", b"\xff" * 1023, b"\xff" * 1024, os.urandom(100_000),
                 b"0" * 131072, bytes(range(256)) * 700):
        assert P.checksum(data) == sum(data) & 0xFF


def test_frame():
    assert P.frame(b"OK") == b"$OK#9a"
    assert P.frame(b"") == b"$#00"


def test_escape_round_trip_and_special_bytes():
    raw = b"a}b#c$d*e"
    esc = P.escape(raw)
    assert esc == b"a}]b}\x03c}\x04d}\x0ae"
    assert P.unescape(esc) == raw
    assert P.unescape(b"abc}") is None


@given(st.binary(max_size=2000))
def test_escape_round_trip_property(data):
    e = P.escape(data)
    assert not any(c in e for c in b"#$*")
    assert P.unescape(e) == data


def test_rle_examples():
    assert P.rle_decode(b"0* ") == b"0000"
    assert P.rle_encode(b"0000") == b"0* "
    # Counts that would be '#' (6 more) or '$' (7 more) are never produced.
    for n in range(1, 300):
        enc = P.rle_encode(b"0" * n)
        assert b"#" not in enc and b"$" not in enc
        assert P.rle_decode(enc) == b"0" * n
    assert P.rle_decode(b"*  ") is None            # nothing to repeat
    assert P.rle_decode(b"0*") is None


@given(st.binary(max_size=600).map(lambda b: b.hex().encode()))
def test_rle_round_trip_on_hex(text):
    enc = P.rle_encode(text)
    assert P.rle_decode(enc) == text
    assert len(enc) <= len(text)


@given(st.lists(st.one_of(st.binary(max_size=40), st.integers(0, 400).map(bytes)),
                max_size=12).map(b"".join))
def test_hex_rle_is_the_hex_of_the_data(data):
    enc = P.hex_rle(data)
    assert b"#" not in enc and b"$" not in enc and b"}" not in enc
    assert P.rle_decode(enc) == data.hex().encode()


def test_hex_rle_compresses_zero_pages():
    assert len(P.hex_rle(bytes(65536))) < 65536 * 2 // 30


def feed_all(reader, data, chunks):
    events = []
    pos = 0
    for n in chunks:
        events += reader.feed(data[pos:pos + n])
        pos += n
    events += reader.feed(data[pos:])
    return events


def test_reader_events():
    r = P.PacketReader()
    ev = r.feed(b"+-\x03$OK#9a$bad#00junk$g#67")
    assert ev == [(P.ACK, None), (P.NACK, None), (P.INTERRUPT, None), (P.PACKET, b"OK"),
                  (P.BAD_CHECKSUM, b"bad"), (P.PACKET, b"g")]
    assert r.idle


def test_reader_restarts_on_dollar_and_rejects_bad_checksum_digits():
    r = P.PacketReader()
    assert r.feed(b"$m10,4$g#67") == [(P.PACKET, b"g")]      # truncated packet dropped
    assert r.feed(b"$g#zz") == [(P.BAD_CHECKSUM, b"g")]
    assert r.feed(b"$g#6$?#3f") == [(P.BAD_CHECKSUM, b"g"), (P.PACKET, b"?")]


def test_reader_oversized_packet_is_dropped_whole():
    r = P.PacketReader(max_body=100)
    body = b"X" * 500
    ev = r.feed(P.frame(body) + P.frame(b"OK"))
    assert ev == [(P.OVERSIZED, None), (P.PACKET, b"OK")]
    assert len(r.body) == 0


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=60), max_size=8),
       st.lists(st.integers(1, 9), max_size=40))
def test_reader_same_events_however_the_stream_is_split(bodies, chunks):
    stream = b"".join(P.frame(P.escape(b)) + b"+" for b in bodies)
    whole = P.PacketReader().feed(stream)
    split = feed_all(P.PacketReader(), stream, chunks)
    one_by_one = feed_all(P.PacketReader(), stream, [1] * len(stream))
    assert whole == split == one_by_one
    packets = [P.unescape(b) for k, b in whole if k == P.PACKET]
    assert packets == bodies


@settings(max_examples=500)
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=20))
def test_reader_never_raises_on_garbage(data, chunks):
    r = P.PacketReader(max_body=64)
    events = feed_all(r, data, chunks)
    for kind, body in events:
        assert kind in (P.ACK, P.NACK, P.INTERRUPT, P.PACKET, P.BAD_CHECKSUM, P.OVERSIZED)
        if kind == P.PACKET:
            assert P.checksum(body) is not None and len(body) <= 64
    # The reader recovers: a good packet after any garbage is seen.
    assert r.feed(b"$?#3f")[-1] == (P.PACKET, b"?")
