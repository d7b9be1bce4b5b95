"""The bus's memory-mapped ranges in a vCPU's Unicorn, and the adapters that put the
APIC models on the bus.

Each vCPU has a ``Uc`` of its own, so each maps every range (``attach``) with callbacks
that carry that vCPU's ``Requester``: the local APIC at 0xFEE00000 answers each vCPU
with its own registers, as on hardware, with no lookup of who is asking. The callbacks
run on the vCPU's thread inside ``emu_start``; they never raise (Unicorn's Python
binding would stop the run and raise later, ending the vCPU): a device's bug is
logged and the access reads as all ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from unicorn import Uc

from stub.vmm.bus import Bus, MmioDevice, Requester, all_ones

log = logging.getLogger(__name__)


def attach(uc: Uc, bus: Bus, cpu: Requester, ram_size: int) -> None:
    """Map each of the bus's MMIO ranges into ``uc`` for the vCPU ``cpu`` names.
    ValueError when a range overlaps the RAM mapped at 0 (a machine too big for its
    memory map)."""
    for found in bus.mmio_ranges:
        if found.base < ram_size:
            raise ValueError(
                f"{ram_size >> 20} MiB of RAM reach the device memory at "
                f"{min_base(bus):#x} (the APICs): give the VM at most "
                f"{min_base(bus) >> 20} MiB")
        device = found.device
        uc.mmio_map(found.base, found.size, _reader(device, cpu), None,
                    _writer(device, cpu), None)


def min_base(bus: Bus) -> int:
    """Where the lowest MMIO range starts: RAM must end below it."""
    return min(found.base for found in bus.mmio_ranges)


def _reader(device: MmioDevice, cpu: Requester):
    def read(_uc, offset: int, size: int, _data) -> int:
        try:
            return device.mmio_read(offset, size, cpu) & all_ones(size)
        except Exception:  # a device bug must not end the vCPU (module docstring)
            log.exception("vCPU %d: MMIO read at +%#x of %s failed", cpu.index, offset,
                          type(device).__name__)
            return all_ones(size)
    return read


def _writer(device: MmioDevice, cpu: Requester):
    def write(_uc, offset: int, size: int, value: int, _data) -> None:
        try:
            device.mmio_write(offset, size, value & all_ones(size), cpu)
        except Exception:  # a device bug must not end the vCPU (module docstring)
            log.exception("vCPU %d: MMIO write %#x at +%#x of %s failed", cpu.index,
                          value, offset, type(device).__name__)
    return write


class Registers(Protocol):
    """The APIC models' register interface (offsets from their base, no requester)."""

    def mmio_read(self, offset: int, size: int = 4) -> int: ...

    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


class Shared(MmioDevice):
    """One device every vCPU sees the same (the IOAPIC)."""

    def __init__(self, device: Registers):
        self.device = device

    def mmio_read(self, offset: int, size: int, cpu: Requester) -> int:
        return self.device.mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int, cpu: Requester) -> None:
        self.device.mmio_write(offset, size, value)


class PerVcpu(MmioDevice):
    """One device per vCPU at the same address (the local APICs): the requester's own."""

    def __init__(self, devices: Sequence[Registers]):
        self.devices = devices

    def mmio_read(self, offset: int, size: int, cpu: Requester) -> int:
        return self.devices[cpu.index].mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int, cpu: Requester) -> None:
        self.devices[cpu.index].mmio_write(offset, size, value)
