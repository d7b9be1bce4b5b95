"""The two ways a guest ends the VM on purpose, as under QEMU.

- ``IsaDebugExit`` (QEMU's ``isa-debug-exit``, iobase 0xF4, iosize 4: ports
  0xF4-0xF7): a write of V, of any width, ends the VM. gdb gets ``W`` with V & 0xFF;
  the stub exits with ``(V << 1) | 1`` (8 bits of it, what a process status keeps),
  as QEMU does. Reads give all ones (nothing to read).
- ACPI S5 (``outw(0x604, 0x2000)``: SLP_EN with the sleep type the DSDT's ``_S5``
  names): the PM1a control register of the ACPI PM block, ``devices/acpi_pm.py``. gdb
  gets ``W00`` and the stub exits 0.
"""

from __future__ import annotations

from stub.vmm.bus import PortDevice, PowerOff, Requester

DEBUG_EXIT, DEBUG_EXIT_PORTS = 0xF4, 4


class IsaDebugExit(PortDevice):
    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> PowerOff:
        return PowerOff(value)  # status (value << 1) | 1: PowerOff's default
