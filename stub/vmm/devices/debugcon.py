"""The debug console (port 0xE9, QEMU's ``-debugcon`` and Bochs' port): every byte the
guest writes is console output."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from stub.vmm.bus import PortDevice, Requester

log = logging.getLogger(__name__)

PORT = 0xE9

Sink = Callable[[bytes], None]


class DebugCon(PortDevice):
    """Collects the output (``output``) and hands each byte to ``sink`` as it comes."""

    def __init__(self, sink: Sink | None = None):
        self._sink = sink
        self._lock = threading.Lock()  # vCPUs write concurrently
        self._output = bytearray()

    def reset(self) -> None:
        """Nothing to reset: ``output`` is a log of everything the guest wrote."""

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._output)

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> None:
        byte = bytes([value & 0xFF])
        with self._lock:
            self._output += byte
        if self._sink is not None:
            try:
                self._sink(byte)
            except Exception:  # a broken console must not take the vCPU down
                log.exception("console sink failed")
