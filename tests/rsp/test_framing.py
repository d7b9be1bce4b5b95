"""Framing: deframing, escapes, RLE, bounds, and the ack / no-ack protocol."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stub.rsp.framing import (
    BAD_CHECKSUM,
    BAD_ESCAPE,
    BAD_RUN_LENGTH,
    OVERSIZE,
    Ack,
    BadPacket,
    Framer,
    Interrupt,
    Nak,
    Packet,
    RspConnection,
    ack_bytes,
    encode_packet,
)
from stub.rsp.hexutil import checksum


def frame_raw(body: bytes) -> bytes:
    """A frame around an already-escaped body, with a correct checksum."""
    return b"$%s#%02x" % (body, checksum(body))


def feed_all(data: bytes, max_packet: int = 0x20000) -> list:
    return Framer(max_packet).feed(data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given positions (taken modulo its length + 1)."""
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def feed_chunked(data: bytes, cuts: list[int], max_packet: int = 0x20000) -> list:
    f = Framer(max_packet)
    return [e for chunk in chunks(data, cuts) for e in f.feed(chunk)]


# ------------------------------------------------------------------ encode_packet


def test_encode_packet_plain():
    assert encode_packet(b"OK") == b"$OK#9a"
    assert encode_packet(b"") == b"$#00"


def test_encode_packet_escapes_specials_and_checksums_escaped_body():
    frame = encode_packet(b"a$b#c}d*e")
    assert frame.startswith(b"$a}\x04b}\x03c}]d}\x0ae#")
    body = frame[1:-3]
    assert frame[-2:] == b"%02x" % checksum(body)
    assert frame[-2:] == frame[-2:].lower()


def test_encode_packet_does_not_escape_ctrl_c_or_high_bytes():
    assert encode_packet(b"\x03\xff") == b"$\x03\xff#%02x" % ((3 + 0xFF) & 0xFF)


def test_ack_bytes():
    assert ack_bytes(True) == b"+"
    assert ack_bytes(False) == b"-"


# ------------------------------------------------------------------ Framer basics


def test_single_packet():
    assert feed_all(b"$g#67") == [Packet(b"g")]


def test_uppercase_checksum_digits_accepted():
    assert feed_all(b"$OK#9A") == [Packet(b"OK")]


def test_acks_naks_interrupts_and_garbage():
    events = feed_all(b"junk+\r\n-\x03zz$g#67 +")
    assert events == [Ack(), Nak(), Interrupt(), Packet(b"g"), Ack()]


def test_ctrl_c_inside_packet_is_data():
    body = b"X0,1:\x03"
    assert feed_all(frame_raw(body)) == [Packet(body)]


def test_bad_checksum():
    assert feed_all(b"$g#00") == [BadPacket(BAD_CHECKSUM)]
    assert not BadPacket(BAD_CHECKSUM).needs_reply


def test_non_hex_checksum():
    assert feed_all(b"$g#zz$g#67") == [BadPacket(BAD_CHECKSUM), Packet(b"g")]


def test_checksum_split_across_feeds():
    f = Framer()
    assert f.feed(b"$g#6") == []
    assert f.in_packet
    assert f.feed(b"7") == [Packet(b"g")]
    assert not f.in_packet


def test_escapes_undone():
    assert feed_all(frame_raw(b"a}\x03b}\x04c}]d}\x0a")) == [Packet(b"a#b$c}d*")]


def test_escape_split_across_feeds():
    data = frame_raw(b"x}]y")
    for cut in range(len(data) + 1):
        assert feed_chunked(data, [cut]) == [Packet(b"x}y")]


def test_run_length_expanded():
    # '0* ' = '0' then 3 more: ' ' is 32, 32 - 29 = 3.
    assert feed_all(frame_raw(b"0* ")) == [Packet(b"0000")]
    assert feed_all(frame_raw(b'ab*"c')) == [Packet(b"abbbbbbc")]


def test_run_length_repeats_escaped_byte():
    assert feed_all(frame_raw(b"}]* ")) == [Packet(b"}}}}")]


def test_run_length_errors():
    assert feed_all(frame_raw(b"* ")) == [BadPacket(BAD_RUN_LENGTH)]  # nothing to repeat
    assert feed_all(frame_raw(b"a*\x10")) == [BadPacket(BAD_RUN_LENGTH)]  # count < 1
    assert feed_all(frame_raw(b"a*")) == [BadPacket(BAD_RUN_LENGTH)]  # dangling
    assert BadPacket(BAD_RUN_LENGTH).needs_reply


def test_dangling_escape():
    assert feed_all(frame_raw(b"abc}")) == [BadPacket(BAD_ESCAPE)]


def test_dollar_mid_packet_restarts():
    assert feed_all(b"$m0,4$g#67") == [Packet(b"g")]


def test_empty_packet():
    assert feed_all(b"$#00") == [Packet(b"")]


# ------------------------------------------------------------------ bounds


def test_packet_exactly_max_is_accepted():
    body = b"a" * 64
    assert feed_all(frame_raw(body), max_packet=64) == [Packet(body)]


def test_oversize_discarded_then_next_packet_fine():
    f = Framer(max_packet=64)
    events = f.feed(frame_raw(b"a" * 65) + b"$g#67")
    assert events == [BadPacket(OVERSIZE), Packet(b"g")]
    assert BadPacket(OVERSIZE).needs_reply


def test_oversize_never_buffers_beyond_limit():
    f = Framer(max_packet=1000)
    f.feed(b"$")
    for _ in range(200):
        assert f.feed(b"x" * 997) == []
        assert f.buffered <= 1000
    assert f.feed(b"#00") == [BadPacket(OVERSIZE)]
    assert f.buffered == 0


def test_oversize_by_run_length_expansion():
    f = Framer(max_packet=100)
    body = b"a" + b"*~" * 10  # each '*~' adds 97 bytes
    assert f.feed(frame_raw(body)) == [BadPacket(OVERSIZE)]


def test_oversize_by_escapes():
    assert feed_all(frame_raw(b"}]" * 11), max_packet=10) == [BadPacket(OVERSIZE)]
    assert feed_all(frame_raw(b"}]" * 10), max_packet=10) == [Packet(b"}" * 10)]


def test_max_packet_must_be_positive():
    with pytest.raises(ValueError):
        Framer(0)


# ------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    max_packet=st.integers(1, 64),
)
def test_arbitrary_bytes_any_chunking_never_raise_and_stay_bounded(data, cuts, max_packet):
    f = Framer(max_packet)
    chunked = []
    for chunk in chunks(data, cuts):
        chunked += f.feed(chunk)
        assert f.buffered <= max_packet + 2  # payload + the two checksum digits
    # Chunking never changes what comes out.
    assert chunked == feed_all(data, max_packet)


# Streams built from protocol-ish pieces reach the deeper framer states more often.
_pieces = st.sampled_from(
    [b"$", b"#", b"}", b"*", b"+", b"-", b"\x03", b"00", b"67", b"g", b"a", b"* ", b"~"]
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.one_of(_pieces, st.binary(max_size=4)), max_size=60),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_protocolish_streams_chunking_invariant(parts, cuts):
    data = b"".join(parts)
    f = Framer(16)
    chunked = []
    for chunk in chunks(data, cuts):
        chunked += f.feed(chunk)
        assert f.buffered <= 18
    assert chunked == feed_all(data, 16)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 700), max_size=6),
    noise=st.sampled_from([b"", b"+", b"\r\n", b"garbage"]),
)
def test_encode_then_feed_round_trips(payload, cuts, noise):
    data = noise + encode_packet(payload) + noise
    events = [e for e in feed_chunked(data, cuts) if isinstance(e, Packet)]
    assert events == [Packet(payload)]


@given(payloads=st.lists(st.binary(max_size=40), max_size=8))
def test_back_to_back_packets(payloads):
    data = b"".join(encode_packet(p) for p in payloads)
    assert feed_all(data) == [Packet(p) for p in payloads]


# ------------------------------------------------------------------ RspConnection


def test_ack_mode_acks_good_packets():
    conn = RspConnection()
    events, out = conn.receive(b"$g#67")
    assert events == [Packet(b"g")]
    assert out == b"+"


def test_ack_mode_naks_bad_checksum_and_reports_it():
    conn = RspConnection()
    events, out = conn.receive(b"$g#00")
    assert out == b"-"
    assert events == [BadPacket(BAD_CHECKSUM)]


def test_ack_mode_acks_oversize_so_gdb_does_not_resend_it():
    conn = RspConnection(max_packet=8)
    events, out = conn.receive(frame_raw(b"m" * 9))
    assert out == b"+"
    assert events == [BadPacket(OVERSIZE)]
    assert events[0].needs_reply


def test_nak_resends_exact_last_reply_until_acked():
    conn = RspConnection()
    frame = conn.send(b"T05thread:01;")
    assert frame == encode_packet(b"T05thread:01;")
    assert conn.receive(b"-") == ([], frame)
    assert conn.receive(b"--") == ([], frame + frame)
    assert conn.receive(b"+") == ([], b"")
    assert conn.last_reply is None
    assert conn.receive(b"-") == ([], b"")  # nothing outstanding


def test_nak_resend_and_ack_in_stream_order():
    conn = RspConnection()
    frame = conn.send(b"OK")
    events, out = conn.receive(b"-$g#67")
    assert events == [Packet(b"g")]
    assert out == frame + b"+"


def test_new_reply_replaces_last_reply():
    conn = RspConnection()
    conn.send(b"OK")
    second = conn.send(b"E01")
    assert conn.receive(b"-")[1] == second


def test_interrupt_is_reported_not_acked():
    conn = RspConnection()
    assert conn.receive(b"\x03") == ([Interrupt()], b"")


def test_ack_and_nak_events_are_consumed():
    conn = RspConnection()
    events, _ = conn.receive(b"+-")
    assert events == []


def test_no_ack_switch_after_ok():
    conn = RspConnection()
    events, out = conn.receive(b"$QStartNoAckMode#b0")
    assert events == [Packet(b"QStartNoAckMode")]
    assert out == b"+"  # still in ack mode when this packet arrives
    assert not conn.no_ack
    assert conn.send(b"OK", then_no_ack=True) == b"$OK#9a"
    assert conn.no_ack
    # gdb acks that OK while still in ack mode; the stray '+' is ignored.
    events, out = conn.receive(b"+$g#67")
    assert events == [Packet(b"g")]
    assert out == b""


def test_no_ack_mode_never_resends_and_keeps_nothing():
    conn = RspConnection()
    conn.send(b"OK", then_no_ack=True)
    conn.send(b"T05thread:01;")
    assert conn.last_reply is None
    assert conn.receive(b"-") == ([], b"")


def test_no_ack_mode_accepts_bad_checksums_like_gdbserver():
    conn = RspConnection()
    conn.send(b"OK", then_no_ack=True)
    assert conn.receive(b"$g#00") == ([Packet(b"g")], b"")


def test_no_ack_mode_still_reports_oversize():
    conn = RspConnection(max_packet=4)
    conn.send(b"OK", then_no_ack=True)
    assert conn.receive(frame_raw(b"m0,12345")) == ([BadPacket(OVERSIZE)], b"")


@given(payload=st.binary(max_size=200), naks=st.integers(1, 5))
def test_property_nak_resends_exact_last_reply(payload, naks):
    conn = RspConnection()
    frame = conn.send(payload)
    events, out = conn.receive(b"-" * naks)
    assert events == []
    assert out == frame * naks
    # The resent frame decodes to the same payload.
    assert Framer().feed(frame) == [Packet(payload)]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), replies=st.lists(st.binary(max_size=20), max_size=4))
def test_property_no_ack_mode_sends_nothing_on_receive(data, replies):
    conn = RspConnection()
    conn.send(b"OK", then_no_ack=True)
    for r in replies:
        conn.send(r)
    _, out = conn.receive(data + b"+-$g#67")
    assert out == b""


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=50), min_size=1, max_size=6))
def test_property_ack_mode_acks_every_good_packet(payloads):
    conn = RspConnection()
    events, out = conn.receive(b"".join(encode_packet(p) for p in payloads))
    assert events == [Packet(p) for p in payloads]
    assert out == b"+" * len(payloads)


@pytest.mark.parametrize("fill", [0x00, 0x66, 0x7F, 0x80, 0xFF])
@pytest.mark.parametrize("size", [255, 256, 257, 514, 515, 516, 65521, 131072 + 7])
def test_checksum_is_the_byte_sum_at_every_span_edge(size, fill):
    # checksum() sums spans with adler32, whose sum is exact only while it stays below
    # 65521: the largest values at the span boundaries are where it would go wrong.
    data = bytes([fill]) * size
    assert checksum(data) == sum(data) & 0xFF


@given(st.binary(min_size=0, max_size=3000), st.booleans())
def test_checksum_is_the_byte_sum(data, ascii_only):
    if ascii_only:
        data = bytes(b & 0x7F for b in data)
    assert checksum(data) == sum(data) & 0xFF


@pytest.mark.parametrize("digit", [b"0", b"9", b"a", b"f"])
@pytest.mark.parametrize("size", [257, 1212, 1213, 1214, 2426, 2427, 65521, 131056, 131072 + 7])
def test_hex_digit_checksum_at_every_span_edge(size, digit):
    # The hex spans are exact only inside the window that '0'..'f' allow: the lowest
    # and highest digits at the span boundaries are where it would go wrong.
    data = digit * size
    assert checksum(data, hex_digits=True) == sum(data) & 0xFF


@given(st.binary(min_size=0, max_size=5000))
def test_hex_digit_checksum_is_the_byte_sum(raw):
    text = raw.hex().encode()
    assert checksum(text, hex_digits=True) == sum(text) & 0xFF
    assert encode_packet(text, hex_digits=True) == encode_packet(text)


# Whole one-packet reads take Framer.feed's fast path; byte by byte never does.
@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=40) | st.sampled_from([b"g", b"vCont;s:1", b"m1000,4", b"}]"]),
    chars=st.sampled_from([None, b"00", b"zz", b"0", b"FF", b"#1"]),
    max_packet=st.integers(1, 48),
    check=st.booleans(),
)
def test_a_whole_packet_in_one_read_gives_what_byte_by_byte_gives(body, chars, max_packet,
                                                                  check):
    data = b"$" + body + b"#" + (b"%02x" % checksum(body) if chars is None else chars)
    whole, single = Framer(max_packet), Framer(max_packet)
    whole.check_checksums = single.check_checksums = check
    one_by_one = [e for i in range(len(data)) for e in single.feed(data[i:i + 1])]
    assert whole.feed(data) == one_by_one
    assert whole.in_packet == single.in_packet and whole.buffered == single.buffered
    assert whole.feed(b"$g#67") == single.feed(b"$g#67")  # both left in the same state
