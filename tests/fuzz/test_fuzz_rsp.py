"""Fuzzing the pure RSP layer: Framer, RspConnection and parse(), with mutated gdb traffic.

Properties: nothing raises; memory stays bounded (the framer's buffer, and the bytes
``RspConnection.receive`` asks to write); every complete frame is answered (a packet or
a bad-packet event, each acked or NAKed in ack mode); ``parse`` classifies every payload.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stub.rsp import packets as P
from stub.rsp.framing import (
    BAD_CHECKSUM,
    DEFAULT_MAX_PACKET,
    MAX_RESENDS_PER_RECEIVE,
    Ack,
    BadPacket,
    Framer,
    Interrupt,
    Nak,
    Packet,
    RspConnection,
    encode_packet,
)

from .corpus import NOISE, SEEDS, cut, frames, fuzz_settings, mutated, payloads, streams

FAST = fuzz_settings(300)
EVENT_TYPES = (Packet, Interrupt, Ack, Nak, BadPacket)
SLACK = 2  # the two checksum characters held besides the payload


# ----------------------------------------------------------------------- Framer


@FAST
@given(data=st.data(), max_packet=st.sampled_from([1, 2, 7, 64, 300, DEFAULT_MAX_PACKET]),
       cuts=st.lists(st.integers(0, 1 << 20), max_size=10))
def test_framer_never_raises_and_stays_bounded(data, max_packet, cuts):
    stream = data.draw(streams(max_packet=max_packet))
    f = Framer(max_packet)
    events = []
    for chunk in cut(stream, cuts):
        events += f.feed(chunk)
        assert f.buffered <= max_packet + SLACK
        assert len(f._buf) <= max_packet  # white-box: the decoded payload itself
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    assert all(len(e.payload) <= max_packet for e in events if isinstance(e, Packet))
    # Chunking never changes the result.
    assert events == Framer(max_packet).feed(stream)


@FAST
@given(units=st.lists(st.tuples(frames(), NOISE), min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 1 << 20), max_size=10), check=st.booleans())
def test_every_complete_frame_yields_exactly_one_event(units, cuts, check):
    """Never silence at the framing level: each ``$...#xx`` gives one Packet or
    BadPacket, in order, whatever the noise between frames (noise without '$')."""
    f = Framer()
    f.check_checksums = check
    expected = []
    for frame, _noise in units:
        one = Framer()
        one.check_checksums = check
        got = [e for e in one.feed(frame) if isinstance(e, (Packet, BadPacket))]
        assert len(got) == 1, (frame[:80], got)
        expected += got
    stream = b"".join(frame + noise for frame, noise in units)
    events = []
    for chunk in cut(stream, cuts):
        events += f.feed(chunk)
    assert [e for e in events if isinstance(e, (Packet, BadPacket))] == expected
    assert not f.in_packet


@FAST
@given(payload=payloads())
def test_encoded_mutated_payloads_round_trip(payload):
    if len(payload) > DEFAULT_MAX_PACKET:
        return
    assert Framer().feed(encode_packet(payload)) == [Packet(payload)]


# ----------------------------------------------------------------- RspConnection


def _expected_acks(events) -> bytes:
    out = b""
    for ev in events:
        if isinstance(ev, Packet):
            out += b"+"
        elif isinstance(ev, BadPacket):
            out += b"-" if ev.reason == BAD_CHECKSUM else b"+"
    return out


@FAST
@given(stream=streams(), cuts=st.lists(st.integers(0, 1 << 20), max_size=10),
       last=st.sampled_from([None, b"OK", b"E16", b"x" * 0x1000]))
def test_ack_mode_answers_every_frame_and_output_is_bounded(stream, cuts, last):
    conn = RspConnection()
    if last is not None:
        conn.send(last)
    frame = conn.last_reply
    for chunk in cut(stream, cuts):
        events, out = conn.receive(chunk)
        # Every framed packet is acked ('+') or NAKed ('-', bad checksum), in order...
        acks = _expected_acks(events)
        if frame is None or b"-" not in chunk:
            assert out == acks
        # ...and the bytes to write are bounded, NAKs or not: one ack per event plus a
        # bounded number of retransmissions per read (the amplification bug).
        resend = len(frame) if frame else 0
        assert len(out) <= len(acks) + MAX_RESENDS_PER_RECEIVE * resend
        # Acks and NAKs are the connection's business; the session never sees them.
        assert not any(isinstance(e, Ack | Nak) for e in events)


def test_nak_flood_does_not_amplify_memory():
    """Found by the property above: each '-' queued a full copy of the last reply, so
    64 KiB of '-' after a 128 KiB ``m`` reply asked for ~8 GiB in one receive()."""
    conn = RspConnection()
    frame = conn.send(b"0" * (DEFAULT_MAX_PACKET - 16))
    events, out = conn.receive(b"-" * 65536)
    assert events == []
    assert len(out) <= MAX_RESENDS_PER_RECEIVE * len(frame)
    assert out == frame * MAX_RESENDS_PER_RECEIVE
    # gdb's own retry loop (one '-' per read) still gets every retransmission.
    for _ in range(20):
        assert conn.receive(b"-") == ([], frame)


@FAST
@given(stream=streams(), cuts=st.lists(st.integers(0, 1 << 20), max_size=10))
def test_no_ack_mode_writes_nothing_and_reports_every_frame(stream, cuts):
    conn = RspConnection()
    conn.send(b"OK", then_no_ack=True)
    for chunk in cut(stream, cuts):
        events, out = conn.receive(chunk)
        assert out == b""
        # No checksum failures in no-ack mode: over a reliable stream nobody resends.
        assert not any(isinstance(e, BadPacket) and not e.needs_reply for e in events)


# ------------------------------------------------------------------------ parse

_KNOWN_PREFIXES = (b"?", b"g", b"G", b"p", b"P", b"m", b"M", b"x", b"X", b"c", b"C", b"s",
                   b"S", b"T", b"Z", b"z", b"D", b"k")


@fuzz_settings(500)
@given(payload=payloads() | st.binary(max_size=300))
def test_parse_classifies_every_payload(payload):
    cmd = P.parse(payload)
    assert isinstance(cmd, P.Command)
    assert P.parse(payload) == cmd  # deterministic
    if isinstance(cmd, P.Unknown | P.Malformed):
        assert cmd.payload == payload
    # A one-letter command gdb knows is never "unsupported": it parses or is malformed.
    if payload[:1] in _KNOWN_PREFIXES:
        assert not isinstance(cmd, P.Unknown), payload
    _check_ranges(cmd)


@fuzz_settings(300)
@given(payload=mutated(SEEDS, max_mutations=8))
def test_parse_heavily_mutated_seeds(payload):
    cmd = P.parse(payload)
    assert isinstance(cmd, P.Command)
    _check_ranges(cmd)


def _check_ranges(cmd: P.Command) -> None:
    """What parse promises about numbers in the commands it accepts."""
    if isinstance(cmd, P.ReadMemory | P.ReadMemoryBinary):
        assert 0 <= cmd.length <= P.MAX_LENGTH
        assert 0 <= cmd.addr and cmd.addr + cmd.length <= P.ADDRESS_LIMIT
    if isinstance(cmd, P.WriteMemory | P.WriteMemoryBinary):
        assert 0 <= cmd.addr and cmd.addr + len(cmd.data) <= P.ADDRESS_LIMIT
    if isinstance(cmd, P.ReadRegister | P.WriteRegister):
        assert 0 <= cmd.regnum <= P.MAX_REGNUM
    if isinstance(cmd, P.Continue | P.Step):
        assert cmd.addr is None or 0 <= cmd.addr < P.ADDRESS_LIMIT
        assert cmd.signal is None or 0 <= cmd.signal <= P.MAX_SIGNAL
    threads = []
    if isinstance(cmd, P.SetThread | P.ThreadAlive | P.QueryThreadExtraInfo):
        threads.append(cmd.thread)
    if isinstance(cmd, P.VCont):
        assert cmd.actions
        threads += [a.thread for a in cmd.actions if a.thread is not None]
    for t in threads:
        assert t.tid == -1 or 0 <= t.tid <= P.MAX_THREAD_ID
        assert t.pid is None or t.pid == -1 or 0 <= t.pid <= P.MAX_THREAD_ID
    if isinstance(cmd, P.InsertBreakpoint | P.RemoveBreakpoint):
        assert 0 <= cmd.type <= 4 and 0 <= cmd.kind <= P.MAX_LENGTH
