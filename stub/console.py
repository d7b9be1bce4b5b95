"""The guest's console on the stub's terminal: output on stdout, input from stdin.

Stub messages go to stderr (logging), the guest's console bytes to stdout, so the two
never interleave mid-line on a redirected stream and ``python -m stub ... > log``
captures exactly what the guest printed. Input is forwarded only when stdin is a
terminal, in the terminal's own line mode: a line reaches the guest when Enter is
pressed, and Ctrl-C still ends the stub (gdb's Ctrl-C is the one that stops the guest).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("stub.console")

Feed = Callable[[bytes, Callable[[float], object]], None]


def write(data: bytes) -> None:
    """The backend's console sink: the guest's bytes as they come."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def forward_stdin(feed: Feed | None, finished: threading.Event) -> threading.Thread | None:
    """Start forwarding stdin to ``feed`` (the backend's ``console_input``) when stdin
    is a terminal and the backend takes input; returns the thread, if any."""
    if feed is None or not _is_terminal(sys.stdin):
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
