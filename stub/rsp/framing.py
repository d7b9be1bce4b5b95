"""RSP framing: the byte stream <-> packet payloads, plus ack / no-ack bookkeeping.

Pure and sans-I/O (in the style of h11): ``Framer.feed`` turns whatever bytes the socket
produced into events, ``encode_packet`` turns a reply payload into bytes to write, and
``RspConnection`` adds the acknowledgement protocol on top and tells its caller exactly
which bytes to write. Nothing here blocks, sleeps, or owns a socket.

Escaping is done in exactly one place per direction: ``Framer`` undoes ``}`` escapes and
``*`` run-length encoding for every inbound packet, and ``encode_packet`` escapes
``$ # } *`` in every outbound payload. So packet parsers see raw binary (``X`` data) and
reply builders produce raw binary (``x`` replies, ``qXfer`` chunks); neither escapes
again. Text replies never contain those four bytes, so escaping them is a no-op.

Memory stays bounded: a packet whose decoded payload would exceed ``max_packet`` stops
being buffered at once; the framer keeps scanning for its end and then reports
``BadPacket("oversize")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .hexutil import binary_escape, checksum

DEFAULT_MAX_PACKET = 0x20000

# BadPacket reasons.
BAD_CHECKSUM = "checksum"
OVERSIZE = "oversize"
BAD_ESCAPE = "escape"
BAD_RUN_LENGTH = "run-length"

_HEX = frozenset(b"0123456789abcdefABCDEF")
_RLE_OFFSET = 29  # '*' + chr(n + 29) repeats the previous byte n more times

# At most this many retransmissions of the last reply per ``RspConnection.receive``
# call. gdb sends one '-' per corrupted frame it read and then waits for the resend
# (and gives up after 3 tries), so several '-' in one read only come from a broken or
# hostile peer. Without a cap each '-' queued a full copy of the reply: 64 KiB of '-'
# after a 128 KiB ``m`` reply asked for ~8 GiB in one call (found by tests/fuzz).
MAX_RESENDS_PER_RECEIVE = 8


@dataclass(frozen=True)
class Packet:
    """A complete packet; ``payload`` is unescaped and run-length expanded."""

    payload: bytes


@dataclass(frozen=True)
class Interrupt:
    """A 0x03 byte outside any packet: gdb's Ctrl-C."""


@dataclass(frozen=True)
class Ack:
    """'+' outside any packet."""


@dataclass(frozen=True)
class Nak:
    """'-' outside any packet: the peer wants our last packet again."""


@dataclass(frozen=True)
class BadPacket:
    """A framed packet that cannot be used.

    ``reason`` is one of ``BAD_CHECKSUM``, ``OVERSIZE``, ``BAD_ESCAPE``,
    ``BAD_RUN_LENGTH``. A checksum failure is a transport error: in ack mode it is
    answered with '-' and gdb resends, so the session must not reply. The others
    arrived intact but are unusable; resending would not help, so the packet is acked
    and the session answers with an error packet (``needs_reply``).
    """

    reason: str

    @property
    def needs_reply(self) -> bool:
        return self.reason != BAD_CHECKSUM


Event = Packet | Interrupt | Ack | Nak | BadPacket


def ack_bytes(ok: bool) -> bytes:
    return b"+" if ok else b"-"


def encode_packet(payload: bytes, *, hex_digits: bool = False) -> bytes:
    """``$`` + escaped payload + ``#`` + two lowercase hex checksum digits.

    No run-length encoding: it saves little on a local socket and gdb would need it
    decoded before every ``x``/``qXfer`` reply anyway. ``hex_digits``: the payload is
    ``hex_encode``'s output (an ``m`` reply), which needs no escaping and is
    checksummed in longer spans (``checksum``): ~35 us less for a 128 KiB reply.
    """
    if hex_digits:
        return b"$%s#%02x" % (payload, checksum(payload, hex_digits=True))
    body = binary_escape(payload)
    return b"$%s#%02x" % (body, checksum(body))


# Framer states.
_IDLE, _BODY, _CSUM = range(3)
# Pending decode states inside a body.
_NONE, _ESC, _RLE = range(3)

_IDLE_SPECIAL = re.compile(rb"[$+\-\x03]")
_BODY_END = re.compile(rb"[#$]")
_BODY_SPECIAL = re.compile(rb"[}*]")
_NOT_PLAIN = re.compile(rb"[#$}*]")  # a body without these needs no decoding


class Framer:
    """Incremental RSP deframer: ``feed(bytes) -> list[Event]``.

    Accepts any chunking of the stream. Outside a packet, bytes other than ``$ + -``
    and 0x03 are garbage and ignored. Inside a packet, ``#`` always ends the body (it
    is never valid unescaped) and ``$`` restarts a new packet, dropping the truncated
    one silently, as gdb itself does.

    ``check_checksums`` may be turned off (``RspConnection`` does so in no-ack mode,
    like gdbserver): then a mismatching checksum is accepted, since over a reliable
    transport the payload is intact and nobody would resend it anyway.
    """

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        if max_packet < 1:
            raise ValueError("max_packet must be positive")
        self.max_packet = max_packet
        self.check_checksums = True
        self._state = _IDLE
        self._reset_body()

    def _reset_body(self) -> None:
        self._buf = bytearray()
        self._sum = 0
        self._pending = _NONE
        self._error: str | None = None
        self._csum_chars = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for the packet in progress (never more than ``max_packet``)."""
        return len(self._buf) + len(self._csum_chars)

    @property
    def in_packet(self) -> bool:
        return self._state != _IDLE

    def feed(self, data: bytes) -> list[Event]:
        n = len(data)
        # The common read: exactly one whole packet, its body plain (no escape, run
        # length, '$' or '#'). The same event as the byte-wise path below, without it.
        if (self._state == _IDLE and n >= 4 and data[0] == 0x24 and data[n - 3] == 0x23
                and n - 4 <= self.max_packet and _NOT_PLAIN.search(data, 1, n - 3) is None):
            return [self._plain(bytes(data[1 : n - 3]), bytes(data[n - 2 :]))]
        events: list[Event] = []
        view = memoryview(data)  # slices below copy nothing
        pos, n = 0, len(data)
        while pos < n:
            if self._state == _IDLE:
                m = _IDLE_SPECIAL.search(data, pos)
                if m is None:
                    break
                c = data[m.start()]
                pos = m.start() + 1
                if c == 0x24:  # '$'
                    self._reset_body()
                    self._state = _BODY
                elif c == 0x2B:  # '+'
                    events.append(Ack())
                elif c == 0x2D:  # '-'
                    events.append(Nak())
                else:
                    events.append(Interrupt())
            elif self._state == _BODY:
                m = _BODY_END.search(data, pos)
                end = n if m is None else m.start()
                if end > pos:
                    self._absorb(view[pos:end])
                if m is None:
                    break
                pos = end + 1
                if data[end] == 0x24:  # '$' mid-packet: the previous one was truncated
                    self._reset_body()
                else:
                    self._state = _CSUM
            else:  # _CSUM
                take = min(2 - len(self._csum_chars), n - pos)
                self._csum_chars += view[pos : pos + take]
                pos += take
                if len(self._csum_chars) == 2:
                    events.append(self._finish())
                    self._state = _IDLE
                    self._reset_body()
        return events

    def _plain(self, body: bytes, chars: bytes) -> Event:
        """``_finish`` for a plain body read whole (the state stays idle and reset)."""
        if self._refused(chars, checksum(body)):
            return BadPacket(BAD_CHECKSUM)
        return Packet(body)

    def _refused(self, chars: bytes, total: int) -> bool:
        """The checksum digits ``chars`` do not match the body's byte sum ``total``
        (its low byte counts), and checksums are checked."""
        ok = _HEX.issuperset(chars) and int(chars, 16) == total & 0xFF
        return not ok and self.check_checksums

    def _absorb(self, seg: memoryview) -> None:
        """Add raw body bytes: update the checksum, decode escapes and RLE, bound size."""
        self._sum += sum(seg)
        if self._error is not None:
            return
        buf = self._buf
        limit = self.max_packet
        i, n = 0, len(seg)
        while i < n:
            if self._pending == _ESC:
                self._pending = _NONE
                if len(buf) >= limit:
                    self._fail(OVERSIZE)
                    return
                buf.append(seg[i] ^ 0x20)
                i += 1
            elif self._pending == _RLE:
                count = seg[i] - _RLE_OFFSET
                self._pending = _NONE
                i += 1
                if count < 1 or not buf:
                    self._fail(BAD_RUN_LENGTH)
                    return
                if len(buf) + count > limit:
                    self._fail(OVERSIZE)
                    return
                buf += bytes((buf[-1],)) * count
            else:
                m = _BODY_SPECIAL.search(seg, i)
                j = n if m is None else m.start()
                if len(buf) + (j - i) > limit:
                    self._fail(OVERSIZE)
                    return
                buf += seg[i:j]
                if m is None:
                    return
                self._pending = _ESC if seg[j] == 0x7D else _RLE
                i = j + 1

    def _fail(self, reason: str) -> None:
        self._error = reason
        self._buf = bytearray()  # release at once: bounded memory
        self._pending = _NONE

    def _finish(self) -> Event:
        if self._error is None and self._pending != _NONE:
            self._error = BAD_ESCAPE if self._pending == _ESC else BAD_RUN_LENGTH
        if self._error == OVERSIZE:
            return BadPacket(OVERSIZE)
        if self._refused(bytes(self._csum_chars), self._sum):
            return BadPacket(BAD_CHECKSUM)
        if self._error is not None:
            return BadPacket(self._error)
        return Packet(bytes(self._buf))


class RspConnection:
    """The acknowledgement protocol over a ``Framer``, for one client connection.

    ``receive(data) -> (events, outgoing)``: feed socket bytes; get the events the
    session must act on (``Packet``, ``Interrupt``, ``BadPacket``) and the bytes to write
    right now (acks, NAKs and retransmissions), in stream order. ``send(payload) ->
    bytes``: frame a reply; write the result after any ``outgoing`` already due.

    Ack mode: every good packet is answered '+', a bad checksum '-'; the last reply is
    kept until gdb's '+' and written again on each '-' (at most
    ``MAX_RESENDS_PER_RECEIVE`` times per ``receive`` call, so that a flood of '-' cannot
    make the output grow without bound). No-ack mode
    (``QStartNoAckMode``): nothing is acked, '+'/'-' from the peer are ignored, and no
    reply is kept. The switch happens right after the OK for ``QStartNoAckMode`` is
    framed, which the session asks for with ``send(b"OK", then_no_ack=True)``; gdb still
    acks that OK, and the stray '+' is ignored.
    """

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        self.framer = Framer(max_packet)
        self.no_ack = False
        self.last_reply: bytes | None = None  # framed, awaiting '+' (ack mode only)

    @property
    def max_packet(self) -> int:
        return self.framer.max_packet

    def receive(self, data: bytes) -> tuple[list[Event], bytes]:
        events: list[Event] = []
        out = bytearray()
        resends = 0  # bounded: see MAX_RESENDS_PER_RECEIVE
        for ev in self.framer.feed(data):
            if isinstance(ev, Ack):
                if not self.no_ack:
                    self.last_reply = None
            elif isinstance(ev, Nak):
                if (not self.no_ack and self.last_reply is not None
                        and resends < MAX_RESENDS_PER_RECEIVE):
                    resends += 1
                    out += self.last_reply
            elif isinstance(ev, Packet):
                if not self.no_ack:
                    out += b"+"
                events.append(ev)
            elif isinstance(ev, BadPacket):
                if not self.no_ack:
                    out += ack_bytes(ev.needs_reply)
                events.append(ev)
            else:
                events.append(ev)
        return events, bytes(out)

    def send(self, payload: bytes, *, then_no_ack: bool = False,
             hex_digits: bool = False) -> bytes:
        frame = encode_packet(payload, hex_digits=hex_digits)
        self.last_reply = None if self.no_ack else frame
        if then_no_ack:
            self.no_ack = True
            self.last_reply = None
            self.framer.check_checksums = False
        return frame
