"""``python -m bench.floor PORT``: the floor for a Python stub on this machine.

A null RSP responder with no VM behind it: one thread, one ``select`` loop, ``recv``,
find each whole packet, answer it with a canned reply, ``sendall``: the least any stub
written in Python with one server thread does per packet. Every resume (``s``,
``vCont``, ``c``, ``?``) gets the same stop reply our stub sends from the demo (thread,
RBP, RSP, RIP expedited), so the raw client does the same work on its side. Its raw
``s`` rate is the ceiling for our stub's raw ``s`` row here: what is left between the two is
the stub's own work; what is left between the floor and a target is this machine's
loopback round trip and thread wake-ups, which no amount of work on the stub removes.

It serves one connection, then exits. Enough of the protocol for the bench's set-up
(``qSupported``, ``QStartNoAckMode``, ``Z0``/``z0``, ``M``) is answered ``OK`` or empty.
"""

from __future__ import annotations

import select
import socket
import sys

STOP = (b"T05thread:01;06:0000000000000000;07:00001180ffffffff;"
        b"10:ec101080ffffffff;")


def reply_to(packet: bytes) -> bytes:
    if packet[:1] in (b"s", b"c", b"?") or packet.startswith(b"vCont;"):
        return STOP
    if packet.startswith(b"qSupported"):
        return b"PacketSize=20000;QStartNoAckMode+;vContSupported+"
    if packet[:1] in (b"Z", b"z", b"M") or packet == b"QStartNoAckMode":
        return b"OK"
    if packet == b"vCont?":
        return b"vCont;c;C;s;S"
    return b""


def frame(payload: bytes) -> bytes:
    return b"$%s#%02x" % (payload, sum(payload) & 0xFF)


def serve(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf, acks = b"", True
    while True:
        select.select([conn], [], [])
        data = conn.recv(65536)
        if not data:
            return
        buf += data
        out = b""
        while (start := buf.find(b"$")) >= 0 and (end := buf.find(b"#", start)) >= 0 \
                and len(buf) >= end + 3:
            packet, buf = buf[start + 1:end], buf[end + 3:]
            out += (b"+" if acks else b"") + frame(reply_to(packet))
            if packet == b"QStartNoAckMode":
                acks = False
        if out:
            conn.sendall(out)


def main(argv: list[str]) -> int:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(argv[0])))
    listener.listen(1)
    conn, _ = listener.accept()
    listener.close()
    with conn:
        serve(conn)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
