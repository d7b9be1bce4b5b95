"""The server: the only place with sockets. One thread, one select loop.

It accepts one gdb at a time, hands the client's bytes to its :class:`~stub.connection.GdbConnection` (which does everything
else, without I/O) and writes back what that returns. Stop replies produced by vCPU
threads arrive through the runtime's outbox; the runtime wakes this loop through a
self-pipe, so no other thread ever writes to the socket. Output
made by the loop's own work (a lone step runs here) needs no wake-up: the loop flushes
the outbox before it waits again. (A signal handler runs on this thread too, but may
interrupt the wait itself: it still writes the pipe.)

A second gdb while one is connected is told why it is refused, then closed: it gets an
ack and an ``E.`` error packet naming the connected debugger (gdb 13 prints "Remote
failure reply: E.another debugger is connected ..."), and the socket is half-closed
and kept for at most :data:`REFUSAL_LINGER` seconds, reading and dropping whatever the
refused gdb sends until it closes its end. Closing at once, with gdb's first packet
unread, makes the kernel answer with a reset, and gdb then says only "Connection reset
by peer", whatever it was sent.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import socket
import struct
import threading
import time

from stub.connection import GdbConnection
from stub.rsp.framing import encode_packet
from stub.runtime import Runtime

log = logging.getLogger("stub.server")

RECV_SIZE = 65536
SEND_TIMEOUT = 30.0
REFUSAL_LINGER = 5.0  # seconds a refused connection is kept to deliver why


class ListenError(Exception):
    """The listening socket could not be set up (port in use, bad address)."""


def open_listener(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ListenError(f"cannot resolve {host!r}: {err.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ListenError(f"{host}:{port} is already in use") from None
        raise ListenError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(4)
    return sock


class Client:
    """One connected gdb: its socket and its connection."""

    def __init__(self, sock: socket.socket, peer, runtime: Runtime):
        self.sock = sock
        self.peer = peer
        self.conn = GdbConnection(runtime)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A gdb that stops reading must not hold the stub forever: a write that cannot
        # finish in this time drops the client (like a disconnect: the guest runs on).
        # The kernel's SO_SNDTIMEO, not settimeout(): a Python-level timeout costs a
        # poll() before every send and every recv, two syscalls per packet. Reads
        # happen only when select() says so, so they never block.
        seconds = int(SEND_TIMEOUT)
        micros = int((SEND_TIMEOUT - seconds) * 1e6)
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", seconds, micros))

    def write(self, data: bytes) -> None:
        if data:
            self.sock.sendall(data)


class Server:
    def __init__(self, runtime: Runtime, listener: socket.socket):
        self.rt = runtime
        self.listener = listener
        self.client: Client | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        runtime.on_output = self.wake
        self._closed = False
        self._loop_thread: int | None = None  # the thread running serve()
        self._working = False  # the loop is between two waits: it flushes before the next
        # Refused connections still being told why: socket -> when to close it anyway.
        self._refused: dict[socket.socket, float] = {}

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def wake(self) -> None:
        if self._working and threading.get_ident() == self._loop_thread:
            return  # the loop's own work: it flushes the outbox before it waits again
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # already awake (pipe full) or shutting down

    def serve(self) -> None:
        """Run until the guest ends or gdb kills the VM."""
        self._loop_thread = threading.get_ident()
        try:
            while not self.rt.finished.is_set() or not self.rt.outbox.empty():
                self._poll()
        finally:
            self._flush_outbox()
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.client is not None:
            self.client.sock.close()
            self.client = None
        for sock in list(self._refused):
            self._forget_refused(sock)
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ----------------------------------------------------------------- the loop
    def _poll(self) -> None:
        watched = [self.listener, self._wake_r, *self._refused]
        if self.client is not None:
            watched.append(self.client.sock)
        readable, _, _ = select.select(watched, [], [], self._linger_timeout())
        self._working = True
        try:
            self._tend_refused(readable)
            if self._wake_r in readable:
                self._drain_wake()
                self._flush_outbox()
            # The current client first: a gdb that closed just before a new one
            # connected must be gone before the newcomer is judged a second client.
            if self.client is not None and self.client.sock in readable:
                self._receive()
            if self.listener in readable:
                self._accept()
            self._flush_outbox()
        finally:
            self._working = False

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        sock, peer = self.listener.accept()
        if self.client is not None and self._client_closed():
            self._drop_client()
        if self.client is not None:
            self._refuse(sock, peer)
            return
        log.info("debugger connected from %s:%s", peer[0], peer[1])
        self.client = Client(sock, peer, self.rt)
        self.client.conn.connected()

    # ------------------------------------------------------- refused debuggers
    def _refuse(self, sock: socket.socket, peer) -> None:
        """Tell a second debugger why it is refused, then let it go (module docstring)."""
        current = _address(self.client.peer)
        log.warning("refused a second debugger from %s: %s is connected (one at a time)",
                    _address(peer), current)
        why = f"another debugger is connected ({current}); only one at a time"
        # The '+' acks the packet gdb sends first (qSupported): without it gdb would take
        # the error for a stale reply and skip it. A fresh socket's buffer holds this.
        try:
            sock.setblocking(False)
            sock.send(b"+" + encode_packet(b"E." + why.encode()))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self._refused[sock] = time.monotonic() + REFUSAL_LINGER

    def _linger_timeout(self) -> float | None:
        """How long select may wait: until the first refused connection is due."""
        if not self._refused:
            return None
        return max(0.0, min(self._refused.values()) - time.monotonic())

    def _tend_refused(self, readable) -> None:
        """Drop what refused debuggers send; close them at their end or when due."""
        now = time.monotonic()
        for sock, due in list(self._refused.items()):
            if due <= now:
                self._forget_refused(sock)
                continue
            if sock not in readable:
                continue
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # it closed its end: it has read all we sent
                self._forget_refused(sock)

    def _forget_refused(self, sock: socket.socket) -> None:
        del self._refused[sock]
        sock.close()

    # --------------------------------------------------------------- the client
    def _client_closed(self) -> bool:
        # Poll first: the socket has a send timeout, so a recv would wait for data.
        sock = self.client.sock
        try:
            if not select.select([sock], [], [], 0)[0]:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _receive(self) -> None:
        client = self.client
        try:
            data = client.sock.recv(RECV_SIZE)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            log.info("debugger disconnected; the guest runs on")
            self._drop_client()
            return
        try:
            client.write(client.conn.receive(data))
        except (ConnectionError, OSError):
            self._drop_client()
        if client.conn.closed:
            self._drop_client()
        self._flush_outbox()

    def _drop_client(self) -> None:
        """A detach, a kill or a dropped connection: the connection has told the
        runtime (or is told now); we close the socket and listen again."""
        client, self.client = self.client, None
        if client is None:
            return
        client.conn.lost()  # nothing if it detached or was killed already
        client.sock.close()
        self._discard_outbox()

    def _flush_outbox(self) -> None:
        while True:
            try:
                event = self.rt.outbox.get_nowait()
            except queue.Empty:
                return
            if self.client is None:
                continue  # nobody to tell: the stop belonged to a gone session
            try:
                self.client.write(self.client.conn.stop_event(event))
            except (ConnectionError, OSError):
                self._drop_client()

    def _discard_outbox(self) -> None:
        while True:
            try:
                self.rt.outbox.get_nowait()
            except queue.Empty:
                return


def _address(peer) -> str:
    return f"{peer[0]}:{peer[1]}"
