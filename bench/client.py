"""A lean raw RSP client for measuring stubs, not for testing them.

tests/e2e/stubproc.RawClient decodes replies with the stub's own ``Framer``, which
computes a checksum over every reply with ``sum()`` in Python: ~1.4 ms of *client* CPU
per 64 KiB ``m`` reply, more than the stub spends producing it. Here a reply is found by
its ``#`` (never raw inside a payload: it is always escaped) and handed back undecoded,
so the client costs the same few microseconds for every peer. ``TCP_NODELAY`` is set,
as QEMU sets it on its side: without it the '+' of ack mode followed by the next
packet would wait for a delayed ACK.
"""

from __future__ import annotations

import re
import socket
import time

_ESCAPE = re.compile(rb"[$#}*]")


def escape(data: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes((0x7D, m.group()[0] ^ 0x20)), data)


def unescape(data: bytes) -> bytes:
    if b"}" not in data:
        return bytes(data)
    out = bytearray()
    i = 0
    while (j := data.find(b"}", i)) >= 0:
        out += data[i:j]
        out.append(data[j + 1] ^ 0x20)
        i = j + 2
    out += data[i:]
    return bytes(out)


def expand_rle(data: bytes) -> bytes:
    """Undo run-length encoding (the gdbstub crate uses it for runs in replies)."""
    if b"*" not in data:
        return data
    out = bytearray()
    i = 0
    while (j := data.find(b"*", i)) >= 0:
        out += data[i:j]
        out += out[-1:] * (data[j + 1] - 29)
        i = j + 2
    out += data[i:]
    return bytes(out)


class Rsp:
    def __init__(self, port: int, timeout: float = 30.0, connect_within: float = 15.0):
        deadline = time.monotonic() + connect_within
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.acks = True
        self.wire_bytes = 0  # reply bytes as framed on the wire

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, payload: bytes) -> None:
        self.sock.sendall(b"$%s#%02x" % (payload, sum(payload) & 0xFF))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        """The next reply payload, still escaped (and run-length encoded if the peer
        chose to)."""
        buf = self.buf
        scanned = 0
        while True:
            start = buf.find(b"$")
            if start >= 0:
                end = buf.find(b"#", max(start + 1, scanned))
                if end >= 0 and len(buf) >= end + 3:
                    payload = bytes(buf[start + 1:end])
                    self.wire_bytes += end + 3 - start
                    del buf[:end + 3]
                    if self.acks:
                        self.sock.sendall(b"+")
                    return payload
                scanned = len(buf) - 1 if end < 0 else end
            else:
                buf.clear()
                scanned = 0
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the stub closed the connection")
            buf += data

    def ask(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv()

    def no_ack(self) -> bool:
        """Switch to no-ack mode if the peer has it (QEMU 7.2 has not)."""
        if self.ask(b"QStartNoAckMode") == b"OK":
            self.acks = False
            return True
        return False

    def interrupt(self) -> None:
        self.sock.sendall(b"\x03")
