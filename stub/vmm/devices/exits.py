"""The two ways a guest ends the VM on purpose, as under QEMU.

- ``IsaDebugExit`` (QEMU's ``isa-debug-exit``, iobase 0xF4, iosize 4: ports
  0xF4-0xF7): a write of V, of any width, ends the VM. gdb gets ``W`` with V & 0xFF;
  the stub exits with ``(V << 1) | 1`` (8 bits of it, what a process status keeps),
  as QEMU does. Reads give all ones (nothing to read).
- ``AcpiPm1Control`` (PM1a_CNT at 0x604-0x605, where QEMU's PC machines put it): a
  write with SLP_EN (bit 13) and SLP_TYP (bits 10-12) 0, the sleep type QEMU's \\_S5
  names (the well-known ``outw(0x604, 0x2000)``), powers off: gdb gets ``W00`` and the
  stub exits 0. Other sleep types (S3 is 1 on QEMU) are not supported: the write is
  stored and the guest runs on. Byte writes reach either half; SLP_EN reads 0 (the
  ACPI spec calls it write-only), the other bits read back.
"""

from __future__ import annotations

import threading

from stub.vmm.bus import PortDevice, PowerOff, Requester

DEBUG_EXIT, DEBUG_EXIT_PORTS = 0xF4, 4
PM1A_CNT, PM1A_CNT_PORTS = 0x604, 2
SLP_EN = 1 << 13
SLP_TYP_SHIFT, SLP_TYP_S5 = 10, 0


class IsaDebugExit(PortDevice):
    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> PowerOff:
        return PowerOff(value)  # status (value << 1) | 1: PowerOff's default


class AcpiPm1Control(PortDevice):
    def __init__(self, base: int = PM1A_CNT):
        self._base = base
        self._lock = threading.Lock()  # vCPU threads
        self._value = 0

    def reset(self) -> None:
        with self._lock:
            self._value = 0

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> PowerOff | None:
        shift = 8 * ((port - self._base) & 1)
        mask = ((1 << 8 * size) - 1) << shift & 0xFFFF
        with self._lock:
            self._value = (self._value & ~mask) | (value << shift & mask)
            written = self._value
            self._value &= ~SLP_EN  # write-only: it acts, it is not kept
        if written & SLP_EN and (written >> SLP_TYP_SHIFT) & 7 == SLP_TYP_S5:
            return PowerOff(0, status=0)
        return None

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        with self._lock:
            return self._value >> 8 * ((port - self._base) & 1)
