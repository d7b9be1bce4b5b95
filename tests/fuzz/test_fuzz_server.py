"""Fuzzing the real server over sockets: hostile byte streams from a raw client.

The real ``Server`` (select loop thread) and ``Runtime`` over a 2-vCPU FakeVm, on port 0,
as in ``tests/stub/test_server_fake.py``. One server serves every example in turn (a new
one only after a fuzzed ``k`` ended the last), so each example also checks that a new
client can connect once the previous one closed.

Per example: connect, maybe switch to no-ack mode, maybe have a second client refused,
send a mutated stream (Ctrl-Cs at random points, '+'/'-', floods, partial and oversize
packets, any chunking), then ``$#00`` to resynchronise and a valid ``qC``. Then:
- ``qC`` is answered with ``QC..`` unless the stream itself detached or killed (then the
  connection is closed cleanly, and nothing else closes it);
- every frame the server sent is well formed;
- the server thread is alive (or ended cleanly after a kill), no stub error was logged;
- a new client connects and gets its ``qC`` answered.

A second, stricter test sends frames one at a time in ack mode and checks the answer to
each: NAK for a bad checksum, else '+' and exactly one reply of the right kind.
"""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from stub.rsp import packets as P
from stub.rsp.framing import BAD_CHECKSUM, Ack, BadPacket, Framer, Nak, Packet, encode_packet
from stub.runtime import Runtime
from stub.server import Server, open_listener
from tests.e2e.stubproc import RawClient

from .corpus import ENDING, SEEDS_KEEPING, cut, frames, fuzz_settings, streams
from .harness import ErrorLogs, FuzzVm, is_error

WAIT = 20.0
SOCKET = fuzz_settings(60)
ENDS_SESSION = (P.Detach, P.Kill, P.VKill)
SILENT = (P.Continue, P.Step, P.VCont, P.QueryHalt, P.Kill, P.VCtrlC, *ENDS_SESSION)


class Served:
    """The real server over FakeVm, in its own thread (as ``stub.cli.run`` runs it)."""

    def __init__(self):
        self.vm = FuzzVm(2, "amd", started=2)
        self.rt = Runtime(self.vm)
        self.srv = Server(self.rt, open_listener("127.0.0.1", 0))
        self.port = self.srv.address[1]
        self.crash: list[BaseException] = []
        self.rt.start()
        with self.rt.changed:  # both vCPUs up before any client: no start-up race
            assert self.rt.changed.wait_for(lambda: len(self.rt.coord.active) == 2, WAIT)
        self.thread = threading.Thread(target=self._serve, name="fuzz-server", daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.srv.serve()
        except BaseException as e:  # recorded, then the thread dies
            self.crash.append(e)
            raise

    @property
    def killed(self) -> bool:
        return self.rt.finished.is_set()

    def stop(self):
        self.rt.shutdown()
        self.thread.join(WAIT)
        self.rt.join()


class Pool:
    def __init__(self):
        self.current: Served | None = None
        self.all: list[Served] = []

    def get(self) -> Served:
        if self.current is None or self.current.killed:
            self.current = Served()
            self.all.append(self.current)
        return self.current


@pytest.fixture(scope="module")
def pool():
    p = Pool()
    yield p
    for s in p.all:
        s.stop()
        assert not s.thread.is_alive(), "server loop did not end"
        assert not s.crash, s.crash


class Reader(threading.Thread):
    """Drains the client socket (the server must never block on us) and deframes it."""

    def __init__(self, sock: socket.socket):
        super().__init__(name="fuzz-reader", daemon=True)
        self.sock = sock
        self.framer = Framer(1 << 20)
        self.payloads: list[bytes] = []
        self.broken: list[BadPacket] = []
        self.eof = False
        self.stopping = False
        self.cond = threading.Condition()

    def run(self):
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                if self.stopping:
                    data = b""
                else:
                    continue
            except OSError:
                data = b""
            with self.cond:
                if not data:
                    self.eof = True
                    self.cond.notify_all()
                    return
                for ev in self.framer.feed(data):
                    if isinstance(ev, Packet):
                        self.payloads.append(ev.payload)
                    elif isinstance(ev, BadPacket):
                        self.broken.append(ev)
                self.cond.notify_all()

    def wait_for(self, pred) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self), WAIT)

    def close(self):
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.join(WAIT)
        assert not self.is_alive()


def decoded_commands(stream: bytes) -> list[P.Command]:
    """Every command the server could see in ``stream``, checksums checked or not (the
    switch to no-ack mode may happen anywhere in it)."""
    cmds = []
    for check in (True, False):
        f = Framer()
        f.check_checksums = check
        cmds += [P.parse(e.payload) for e in f.feed(stream) if isinstance(e, Packet)]
    return cmds


def first_ending(stream: bytes, check: bool) -> type | None:
    """The first detach/kill the server would act on with checksums checked or not."""
    f = Framer()
    f.check_checksums = check
    for e in f.feed(stream):
        if isinstance(e, Packet) and isinstance(cmd := P.parse(e.payload), ENDS_SESSION):
            return type(cmd)
    return None


def insert_at(data: bytes, positions: list[int], byte: bytes) -> bytes:
    for p in sorted((p % (len(data) + 1) for p in positions), reverse=True):
        data = data[:p] + byte + data[p:]
    return data


def check_new_client(served: Served) -> None:
    c = RawClient(served.port, timeout=WAIT)
    try:
        assert c.ask(b"qC").startswith(b"QC")
    finally:
        c.close()


@SOCKET
@given(
    stream=st.one_of(
        streams(SEEDS_KEEPING, min_units=4, max_units=24),
        streams(SEEDS_KEEPING, min_units=4, max_units=24),
        # Now and then the session ends in the middle: detach or kill.
        st.tuples(streams(SEEDS_KEEPING, max_units=8), st.sampled_from(sorted(ENDING)),
                  streams(SEEDS_KEEPING, max_units=8)).map(
            lambda t: t[0] + encode_packet(t[1]) + t[2]),
        st.binary(max_size=300),
    ),
    ctrl_c=st.lists(st.integers(0, 1 << 20), max_size=3),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=6),
    no_ack=st.booleans(),
    second_client=st.integers(0, 4).map(lambda n: n == 0),
)
def test_server_survives_hostile_streams(pool, stream, ctrl_c, cuts, no_ack, second_client):
    stream = insert_at(stream, ctrl_c, b"\x03")
    cmds = decoded_commands(stream)
    # Our final qC must be the only one, so that its QC reply proves the stream was eaten.
    assume(not any(isinstance(c, P.QueryCurrentThread) for c in cmds))
    may_close = any(isinstance(c, ENDS_SESSION) for c in cmds)

    served = pool.get()
    with ErrorLogs() as logs:
        client = RawClient(served.port, timeout=WAIT)
        reader = Reader(client.sock)
        reader.start()
        try:
            if no_ack:
                client.send(b"QStartNoAckMode")
                assert reader.wait_for(lambda r: b"OK" in r.payloads)
            if second_client:
                extra = socket.create_connection(("127.0.0.1", served.port), timeout=WAIT)
                try:
                    told = b""
                    while chunk := extra.recv(4096):  # told why, then closed
                        told += chunk
                    assert b"E.another debugger is connected" in told, told
                finally:
                    extra.close()
            try:
                for chunk in cut(stream, cuts):
                    client.send_raw(chunk)
                # Resynchronise (ends a partial packet or checksum) and ask.
                client.send_raw(b"$#00" + encode_packet(b"qC"))
            except (BrokenPipeError, ConnectionResetError):
                assert may_close, "connection reset without D/k/vKill"
            answered = reader.wait_for(
                lambda r: r.eof or any(p.startswith(b"QC") for p in r.payloads))
            assert answered, "qC not answered and the connection is still open: wedged"
            if not any(p.startswith(b"QC") for p in reader.payloads):
                assert may_close, "connection closed without D/k/vKill"
                event("connection closed by the stream (D/k/vKill)")
            else:
                event(f"qC answered after {min(len(reader.payloads) // 4, 5) * 4}+ replies")
            assert not reader.broken, f"the server sent broken frames: {reader.broken}"
        finally:
            reader.close()
            client.close()

        # What ended the connection, if anything: qC answered means nothing did.
        endings = ({first_ending(stream, True), first_ending(stream, False)}
                   if reader.eof and not any(p.startswith(b"QC") for p in reader.payloads)
                   else {None})
        if endings <= {P.Kill, P.VKill}:  # killed for sure: the server ends by itself
            served.thread.join(WAIT)
            assert served.killed and not served.thread.is_alive()
        elif P.Kill in endings or P.VKill in endings:  # detach or kill (checksum-dependent)
            try:
                check_new_client(served)
            except (ConnectionError, OSError):
                served.thread.join(WAIT)
                assert served.killed, "a new client was refused"
        else:  # alive: qC answered, or only a detach closed the connection
            assert served.thread.is_alive(), f"server thread died: {served.crash}"
            assert not served.killed
            check_new_client(served)
        assert not served.crash, served.crash
    assert logs.messages() == []


# ---------------------------------------------------------------- one at a time


def _expected(frame: bytes):
    """What the server must answer to this frame in ack mode: ('-', None) for a bad
    checksum; else ('+', kind) with kind 'error', 'empty' or 'reply'; None to skip
    (a command whose reply is asynchronous or that ends the session)."""
    events = [e for e in Framer().feed(frame) if isinstance(e, Packet | BadPacket)]
    assert len(events) == 1
    ev = events[0]
    if isinstance(ev, BadPacket):
        return ("-", None) if ev.reason == BAD_CHECKSUM else ("+", "error")
    cmd = P.parse(ev.payload)
    if isinstance(cmd, (*SILENT, P.StartNoAck)):
        return None
    if isinstance(cmd, P.Malformed):
        return ("+", "error")
    if isinstance(cmd, P.Unknown):
        return ("+", "empty")
    return ("+", "reply")


_noise = st.sampled_from([b"", b"", b"+", b"\x03", b"++", b"garbage", b"\r\n"])


@fuzz_settings(30)
@given(units=st.lists(st.tuples(frames(SEEDS_KEEPING), _noise), min_size=1, max_size=12))
def test_server_answers_every_frame_in_ack_mode(pool, units):
    units = [(f, n) for f, n in units if _expected(f) is not None]
    served = pool.get()
    with ErrorLogs() as logs:
        c = RawClient(served.port, timeout=WAIT)
        c.acks = False  # we check the server's acks; we never ack its replies
        framer = Framer(1 << 20)
        pending: list = []

        def next_event():
            while not pending:
                data = c.sock.recv(1 << 16)
                assert data, "the server closed the connection"
                pending.extend(e for e in framer.feed(data) if not isinstance(e, BadPacket))
            return pending.pop(0)

        try:
            for frame, noise in units:
                ack, kind = _expected(frame)
                c.send_raw(frame + noise)  # noise: '+', ^C while stopped: no answer
                first = next_event()
                assert isinstance(first, Ack if ack == "+" else Nak), (frame[:80], first)
                if kind is None:
                    continue  # a NAK and nothing else (checked by the count below)
                reply = next_event()
                assert isinstance(reply, Packet), (frame[:80], reply)
                if kind == "error":
                    assert is_error(reply.payload), (frame[:80], reply)
                elif kind == "empty":
                    assert reply.payload == b"", (frame[:80], reply)
            # Nothing was left unread: the next reply is the one to this qC.
            c.send_raw(encode_packet(b"qC"))
            assert isinstance(next_event(), Ack)
            last = next_event()
            assert isinstance(last, Packet) and last.payload.startswith(b"QC"), last
            assert not pending
        finally:
            c.close()
        assert served.thread.is_alive(), served.crash
    assert logs.messages() == []


def test_oversize_packet_then_qc():
    """A packet far over PacketSize: E07 (after '+'), and the connection still works."""
    served = Served()
    try:
        c = RawClient(served.port, timeout=WAIT)
        c.acks = False
        try:
            c.send_raw(b"$X1000,30000:" + b"\x90" * 0x30000 + b"#00")
            assert c.recv_packet() == b"E07"
            assert c.ask(b"qC").startswith(b"QC")
        finally:
            c.close()
        check_new_client(served)
    finally:
        served.stop()
    assert not served.crash


def test_nak_flood_after_a_large_reply_stays_bounded():
    """The framing fix end to end: a 128 KiB reply, then 64 KiB of '-' in one write."""
    served = Served()
    try:
        c = RawClient(served.port, timeout=WAIT)
        reader = Reader(c.sock)
        reader.start()
        try:
            c.send(b"m0,ffff")
            assert reader.wait_for(lambda r: len(r.payloads) == 1)
            c.send_raw(b"-" * 65536)
            c.send(b"qC")
            assert reader.wait_for(lambda r: any(p.startswith(b"QC") for p in r.payloads))
            # Not one resend per '-' (65536 of 128 KiB each): a few per read at most.
            assert len(reader.payloads) < 1000
        finally:
            reader.close()
            c.close()
        assert served.thread.is_alive()
    finally:
        served.stop()
    assert not served.crash

