"""The machine's device bus: I/O ports today, memory-mapped ranges next.

Devices claim port ranges; a vCPU's ``in``/``out`` hook calls ``io_in``/``io_out`` and
knows no port numbers. Like an ISA bus with nothing decoding an address: an ``in``
nobody claims reads all ones, an ``out`` nobody claims goes nowhere (logged at debug
level, so a guest programming hardware this machine lacks, such as the QEMU path's PIC,
runs on).

A device may need something of the vCPU that made the access beyond the data: its
registers (the AP start-up port takes the entry point in rbx) or to end its run
(power-off). The first is the ``Requester`` passed with every access; the second is
the ``IoEffect`` an ``io_out`` may return, which the vCPU turns into its exit (the
first event of a slice wins, see ``stub.vmm.slices``).

MMIO (the PC platform's local APIC at 0xFEE00000, ...) goes here too: ``add_mmio`` with
``mmio_read``/``mmio_write`` dispatching the same way, reached from Unicorn's
``mmio_map`` callbacks instead of the port hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

PORTS = 0x10000


@dataclass(frozen=True)
class Requester:
    """Who made an access (hardware's requester id; a local APIC needs it too), with
    its registers for paravirtual devices that pass arguments in them."""

    index: int
    register: Callable[[str], int]


@dataclass(frozen=True)
class PowerOff:
    """An ``out`` asked to power the machine off: the vCPU that made it ends the VM.
    ``code`` is what gdb's ``W`` reply carries (``code & 0xFF``); ``status`` is the
    stub's process exit status. Left out, ``status`` is QEMU's isa-debug-exit
    convention, ``(code << 1) | 1``, cut to the 8 bits a process status keeps."""

    code: int
    status: int | None = None  # None: derived from code (never None once built)

    def __post_init__(self) -> None:
        if self.status is None:
            object.__setattr__(self, "status", ((self.code << 1) | 1) & 0xFF)


@dataclass(frozen=True)
class Reset(PowerOff):
    """An ``out`` asked for a system reset (i8042 command 0xFE, port 0x92 bit 0). The
    machine does not reboot (QEMU's ``-no-reboot``): a reset ends the VM as a power-off
    with gdb's ``W00`` and exit status 0. It *is* a ``PowerOff``, so a vCPU that knows
    only power-offs ends the VM right; one that tells them apart tests ``Reset`` first.
    ``reason`` names the device and write, for the log."""

    code: int = 0
    status: int = 0
    reason: str = ""


IoEffect = PowerOff | Reset  # what an ``out`` may ask of the vCPU that made it


class IrqLine:
    """One interrupt request line from a device to an interrupt controller input.
    The device drives its level; an edge-triggered input sees the rising edge. The
    machine wires lines when it is built; an unwired line goes nowhere."""

    def __init__(self, sink: Callable[[bool], None] | None = None):
        self._sink = sink
        self.level = False

    def connect(self, sink: Callable[[bool], None]) -> None:
        self._sink = sink

    def set(self, level: bool) -> None:
        self.level = bool(level)
        if self._sink is not None:
            self._sink(self.level)

    def pulse(self) -> None:
        """An edge: raise and lower (the PIT's channel 0 output in mode 2)."""
        self.set(True)
        self.set(False)


class PortDevice:
    """A device on I/O ports. The defaults behave like an unclaimed port, so a device
    implements only the direction it has."""

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> IoEffect | None:
        return None

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        return all_ones(size)


def all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class Bus:
    """Port dispatch. Devices are added while the machine is built; accesses may then
    come from any vCPU thread (devices with state lock it themselves)."""

    def __init__(self) -> None:
        self._ports: dict[int, PortDevice] = {}

    def add_ports(self, device: PortDevice, start: int, count: int = 1) -> None:
        if not (0 <= start and count > 0 and start + count <= PORTS):
            raise ValueError(f"ports {start:#x}+{count} are outside the I/O space")
        taken = [p for p in range(start, start + count) if p in self._ports]
        if taken:
            raise ValueError(f"port {taken[0]:#x} is already claimed by "
                             f"{type(self._ports[taken[0]]).__name__}")
        for port in range(start, start + count):
            self._ports[port] = device

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> IoEffect | None:
        device = self._ports.get(port)
        if device is None:
            log.debug("vCPU %d: out %#x to unclaimed port %#x ignored", cpu.index, value, port)
            return None
        return device.io_out(port, size, value & all_ones(size), cpu)

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        device = self._ports.get(port)
        if device is None:
            return all_ones(size)
        return device.io_in(port, size, cpu) & all_ones(size)
