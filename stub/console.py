"""The guest's console and the stub's log, kept apart.

``--console stdio|FILE|none`` says where the guest's console bytes (COM1, port 0xE9)
go: ``stdio`` is the stub's stdout (and stdin, when it is a terminal, is COM1's input),
``FILE`` a file written afresh, ``none`` nowhere. ``--log FILE`` says where the stub's
own messages go: appended to FILE, or stderr by default.

Two streams can still end on one screen: stdout and stderr are both the terminal
(the defaults), or both one file (``> out 2>&1``). The guest writes as it likes, a byte
at a time and with no line end for a prompt, so a log message could land in the middle
of a guest line. :class:`Console` knows whether the guest left its line open, and the
log handler (:class:`FreshLineHandler`) starts each message on a fresh line when the two
streams are one: it writes the missing line end first, under the same lock as the
guest's output, so neither can cut into the other. The guest's next bytes then go on
below the message. Messages are never held back waiting for the guest's line end (a
prompt may never get one).

Input is forwarded only when the console is ``stdio`` and stdin is a terminal, in the
terminal's own line mode: a line reaches the guest when Enter is pressed, and Ctrl-C
still ends the stub (gdb's Ctrl-C is the one that stops the guest).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO, TextIO

log = logging.getLogger("stub.console")

Feed = Callable[[bytes, Callable[[float], object]], None]

STDIO, NONE = "stdio", "none"
LOG_FORMAT = "stub: %(message)s"


class ConsoleError(Exception):
    """A --console or --log destination that cannot be used; the message is one line."""


class Console:
    """The guest's console output: ``stream`` (None discards), and whether its last
    line is still open. :meth:`write` is the backend's console sink (vCPU threads)."""

    def __init__(self, stream: BinaryIO | None, *, name: str = STDIO):
        self.stream = stream
        self.name = name  # what --console said: stdio, none or the file
        self.is_stdio = name == STDIO
        # Reentrant: the SIGINT handler logs on the server thread, which may be in the
        # middle of a write here (a lone step runs the guest on that thread).
        self.lock = threading.RLock()
        self.mid_line = False  # the guest's last byte was not a line end

    def write(self, data: bytes) -> None:
        if self.stream is None or not data:
            return
        with self.lock:
            self.stream.write(data)
            self.stream.flush()
            self.mid_line = not data.endswith(b"\n")

    def fresh_line(self) -> None:
        """End the guest's open line (the caller holds :attr:`lock`)."""
        if self.mid_line and self.stream is not None:
            self.stream.write(b"\n")
            self.stream.flush()
            self.mid_line = False

    def close(self) -> None:
        if self.stream is not None and not self.is_stdio:
            self.stream.close()


def open_console(spec: str) -> Console:
    """The console ``--console`` names: ``stdio``, ``none`` or a file (written afresh,
    as QEMU's ``-serial file:``)."""
    if spec == STDIO:
        return Console(sys.stdout.buffer)
    if spec == NONE:
        return Console(None, name=NONE)
    try:
        return Console(open(spec, "wb"), name=spec)
    except OSError as err:
        raise ConsoleError(f"--console {spec}: cannot write it: {err.strerror}") from None


def open_log(path: str | None) -> TextIO:
    """The stream ``--log`` names: FILE opened for appending (line-buffered), or stderr."""
    if path is None:
        return sys.stderr
    try:
        return open(path, "a", encoding="utf-8", buffering=1)
    except OSError as err:
        raise ConsoleError(f"--log {path}: cannot append to it: {err.strerror}") from None


def same_file(a, b) -> bool:
    """Whether two open streams write to one file or terminal (so their lines mix)."""
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's buffer)
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class FreshLineHandler(logging.StreamHandler):
    """A log handler whose messages start on a fresh line when ``console`` writes to
    the same screen or file (module docstring)."""

    def __init__(self, stream: TextIO, console: Console | None = None):
        super().__init__(stream)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        shared = console is not None and console.stream is not None and \
            same_file(console.stream, stream)
        self.console = console if shared else None

    def emit(self, record: logging.LogRecord) -> None:
        if self.console is None:
            super().emit(record)
            return
        with self.console.lock:
            self.console.fresh_line()
            super().emit(record)  # StreamHandler flushes: done before the guest goes on


def setup_logging(stream: TextIO, console: Console | None) -> FreshLineHandler:
    """Send the stub's messages (logger ``stub``) to ``stream``, on fresh lines."""
    handler = FreshLineHandler(stream, console)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, FreshLineHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def forward_stdin(console: Console, feed: Feed | None,
                  finished: threading.Event) -> threading.Thread | None:
    """Start forwarding stdin to ``feed`` (the backend's ``console_input``) when the
    console is stdio, stdin is a terminal and the backend takes input; returns the
    thread, if any."""
    if feed is None or not console.is_stdio or not _is_terminal(sys.stdin):
        return None
    thread = threading.Thread(target=_pump, args=(sys.stdin.fileno(), feed, finished),
                              name="console-in", daemon=True)
    thread.start()
    return thread


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # closed
        return False


def _pump(fd: int, feed: Feed, finished: threading.Event) -> None:
    try:
        while not finished.is_set():
            data = os.read(fd, 1024)
            if not data:
                return  # end of input: the guest just gets no more
            feed(data, finished.wait)
    except OSError as err:
        log.info("console input ended: %s", err)
