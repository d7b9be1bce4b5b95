"""The machine's device bus: I/O ports and memory-mapped ranges.

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

MMIO (the local APIC at 0xFEE00000, the IOAPIC at 0xFEC00000) goes here too:
``add_mmio`` claims a page-aligned range for an ``MmioDevice``, whose
``mmio_read``/``mmio_write`` get the offset from the range's base and the requester (a
local APIC answers each vCPU with its own registers). ``stub.vmm.mmio`` maps every range
into each vCPU's Unicorn (``mmio_map``), so the callbacks reach the device directly;
``mmio_read``/``mmio_write`` here dispatch by address for everything else (tests, a
debugger's physical access). Guest-physical addresses nobody claims (and RAM does not
back) are not on the bus: Unicorn reports them as unmapped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

PORTS = 0x10000
PAGE = 0x1000
PHYS_LIMIT = 1 << 52  # the architectural maximum physical address width


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
    """One interrupt request line from a device to interrupt controller inputs (on a PC
    an ISA IRQ goes to the 8259A and to an IOAPIC pin, so a line fans out). The device
    drives its level; an edge-triggered input sees the rising edge. The machine wires
    lines when it is built; an unwired line goes nowhere."""

    def __init__(self, sink: Callable[[bool], None] | None = None):
        self._sinks: tuple[Callable[[bool], None], ...] = (sink,) if sink else ()
        self.level = False

    def connect(self, sink: Callable[[bool], None]) -> IrqLine:
        """One more input driven by this line (the earlier ones stay); returns the line."""
        self._sinks += (sink,)
        return self

    def set(self, level: bool) -> None:
        self.level = bool(level)
        for sink in self._sinks:
            sink(self.level)

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


class MmioDevice:
    """A device on memory-mapped ranges: ``offset`` from the base of the range it was
    added at. The defaults behave like nothing decoding the address (reads all ones,
    writes dropped), so a device implements only the direction it has."""

    def mmio_read(self, offset: int, size: int, cpu: Requester) -> int:
        return all_ones(size)

    def mmio_write(self, offset: int, size: int, value: int, cpu: Requester) -> None:
        return None


@dataclass(frozen=True)
class MmioRange:
    base: int
    size: int
    device: MmioDevice

    def __contains__(self, addr: int) -> bool:
        return self.base <= addr < self.base + self.size


def all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class Bus:
    """Port and MMIO dispatch. Devices are added while the machine is built; accesses
    may then come from any vCPU thread (devices with state lock it themselves)."""

    def __init__(self) -> None:
        self._ports: dict[int, PortDevice] = {}
        self._mmio: list[MmioRange] = []

    # -- memory-mapped ranges --------------------------------------------------------
    def add_mmio(self, device: MmioDevice, base: int, size: int) -> None:
        """Claim [base, base + size) for ``device``: whole pages (Unicorn maps pages)."""
        if base % PAGE or size <= 0 or size % PAGE or base + size > PHYS_LIMIT or base < 0:
            raise ValueError(f"MMIO {base:#x}+{size:#x} is not whole pages of the "
                             "physical address space")
        for taken in self._mmio:
            if base < taken.base + taken.size and taken.base < base + size:
                raise ValueError(f"MMIO {base:#x}+{size:#x} overlaps "
                                 f"{type(taken.device).__name__} at {taken.base:#x}")
        self._mmio.append(MmioRange(base, size, device))

    @property
    def mmio_ranges(self) -> tuple[MmioRange, ...]:
        return tuple(self._mmio)

    def _range(self, addr: int) -> MmioRange | None:
        return next((r for r in self._mmio if addr in r), None)

    def mmio_read(self, addr: int, size: int, cpu: Requester) -> int:
        """A read of guest-physical ``addr``; all ones where no device decodes it."""
        found = self._range(addr)
        if found is None:
            return all_ones(size)
        return found.device.mmio_read(addr - found.base, size, cpu) & all_ones(size)

    def mmio_write(self, addr: int, size: int, value: int, cpu: Requester) -> None:
        found = self._range(addr)
        if found is None:
            log.debug("vCPU %d: write %#x to unclaimed MMIO %#x ignored", cpu.index, value, addr)
            return
        found.device.mmio_write(addr - found.base, size, value & all_ones(size), cpu)

    # -- I/O ports -------------------------------------------------------------------

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
