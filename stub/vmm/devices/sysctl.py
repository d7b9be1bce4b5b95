"""System control port A (0x92, IBM PS/2 "fast A20 and reset") and the POST code port
(0x80).

Port 0x92: bit 1 is the fast A20 gate, bit 0 the fast reset: writing it 1 when it was
0 resets the machine, which ends the VM here (``Reset``; no reboot). The other bits
are stored and read back. It reads 0x02 at power-on: this machine's RAM is flat and A20
is always on, so the gate bit only records what the guest wrote.

Port 0x80: the POST code port, written by firmware and used by kernels as a short I/O
delay. Writes change nothing the guest can see (the last one is kept in ``post_code``
for whoever debugs the machine); reads give all ones (0xFF), as QEMU's and an unclaimed port's.
"""

from __future__ import annotations

import threading

from stub.vmm.bus import PortDevice, Requester, Reset, all_ones

PORT_A, POST = 0x92, 0x80
FAST_RESET, FAST_A20 = 0x01, 0x02


class SystemControl(PortDevice):
    """Claims both ports (``bus.add_ports(dev, PORT_A)``, ``bus.add_ports(dev, POST)``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # vCPU threads
        self._port_a = FAST_A20
        self.post_code: int | None = None

    def reset(self) -> None:
        """Back to the power-on state (system_reset)."""
        with self._lock:
            self._port_a = FAST_A20
            self.post_code = None

    @property
    def a20(self) -> bool:
        with self._lock:
            return bool(self._port_a & FAST_A20)

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> Reset | None:
        value &= 0xFF
        with self._lock:
            if port == POST:
                self.post_code = value
                return None
            rising = value & ~self._port_a & FAST_RESET
            self._port_a = value
        return Reset(reason=f"port 0x92 write {value:#04x} (fast reset)") if rising else None

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        with self._lock:
            return all_ones(size) if port == POST else self._port_a
