"""The bus's MMIO ranges (``Bus.add_mmio``), their mapping into a vCPU's Unicorn
(``stub.vmm.mmio``), and an IRQ line driving more than one input."""

from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from stub.vmm import mmio
from stub.vmm.bus import Bus, IrqLine, MmioDevice, Requester

CPU0 = Requester(0, lambda name: 0)
CPU1 = Requester(1, lambda name: 0)


class Recorder(MmioDevice):
    def __init__(self, tag: int = 0):
        self.tag = tag
        self.writes: list[tuple[int, int, int, int]] = []

    def mmio_read(self, offset: int, size: int, cpu: Requester) -> int:
        return self.tag << 16 | cpu.index << 12 | offset

    def mmio_write(self, offset: int, size: int, value: int, cpu: Requester) -> None:
        self.writes.append((cpu.index, offset, size, value))


class Registers:
    """The APIC models' interface: offsets, no requester."""

    def __init__(self, tag: int):
        self.tag = tag
        self.written: list[tuple[int, int]] = []

    def mmio_read(self, offset: int, size: int = 4) -> int:
        return self.tag + offset

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.written.append((offset, value))


def test_the_bus_dispatches_mmio_by_address_with_the_offset_and_requester():
    bus = Bus()
    device = Recorder(tag=7)
    bus.add_mmio(device, 0xFEC0_0000, 0x1000)
    assert bus.mmio_read(0xFEC0_0010, 4, CPU1) == 7 << 16 | 1 << 12 | 0x10
    bus.mmio_write(0xFEC0_0040, 4, 0x1_0000_0030, CPU0)  # cut to the access size
    assert device.writes == [(0, 0x40, 4, 0x30)]
    assert bus.mmio_read(0xFED0_0000, 2, CPU0) == 0xFFFF  # nothing decodes it
    bus.mmio_write(0xFED0_0000, 4, 1, CPU0)  # goes nowhere


@pytest.mark.parametrize("base, size", [(0xFEE0_0010, 0x1000), (0xFEE0_0000, 0x800),
                                        (0xFEE0_0000, 0), (-0x1000, 0x1000)])
def test_mmio_ranges_are_whole_pages(base, size):
    with pytest.raises(ValueError, match="whole pages"):
        Bus().add_mmio(Recorder(), base, size)


def test_mmio_ranges_do_not_overlap():
    bus = Bus()
    bus.add_mmio(Recorder(), 0xFEE0_0000, 0x1000)
    with pytest.raises(ValueError, match="overlaps Recorder"):
        bus.add_mmio(Recorder(), 0xFEDF_F000, 0x2000)


def test_per_vcpu_devices_answer_their_own_vcpu_and_shared_ones_everyone():
    own = [Registers(0x100), Registers(0x200)]
    per, shared = mmio.PerVcpu(own), mmio.Shared(Registers(0x300))
    assert per.mmio_read(0x20, 4, CPU0) == 0x120
    assert per.mmio_read(0x20, 4, CPU1) == 0x220
    per.mmio_write(0x80, 4, 5, CPU1)
    assert own[1].written == [(0x80, 5)] and own[0].written == []
    assert shared.mmio_read(0x10, 4, CPU0) == shared.mmio_read(0x10, 4, CPU1) == 0x310


def _uc(ram_size: int) -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, ram_size, UC_PROT_ALL)
    return uc


def test_attach_maps_every_range_into_a_unicorn_with_its_requester():
    """A guest load and store at the device's address reach it as that vCPU's."""
    bus = Bus()
    device = Recorder(tag=3)
    bus.add_mmio(device, 0xFEE0_0000, 0x1000)
    uc = _uc(0x10000)
    mmio.attach(uc, bus, CPU1, 0x10000)
    code = bytes.fromhex(
        "48 b9 00 00 e0 fe 00 00 00 00"  # mov rcx, 0xfee00000
        "8b 41 20"  # mov eax, [rcx + 0x20]
        "c7 81 80 00 00 00 2a 00 00 00")  # mov dword [rcx + 0x80], 42
    uc.mem_write(0x1000, code)
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert uc.reg_read(X.UC_X86_REG_RAX) == 3 << 16 | 1 << 12 | 0x20
    assert device.writes == [(1, 0x80, 4, 42)]


def test_a_device_that_raises_reads_all_ones_and_the_guest_runs_on(caplog):
    class Broken(MmioDevice):
        def mmio_read(self, offset, size, cpu):
            raise RuntimeError("device bug")

        def mmio_write(self, offset, size, value, cpu):
            raise RuntimeError("device bug")

    bus = Bus()
    bus.add_mmio(Broken(), 0xFEC0_0000, 0x1000)
    uc = _uc(0x10000)
    mmio.attach(uc, bus, CPU0, 0x10000)
    code = bytes.fromhex("48 b9 00 00 c0 fe 00 00 00 00 8b 01 89 01")  # load, store
    uc.mem_write(0x1000, code)
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert uc.reg_read(X.UC_X86_REG_RAX) == 0xFFFF_FFFF
    assert "MMIO read" in caplog.text and "MMIO write" in caplog.text


def test_attach_refuses_ram_that_reaches_a_range():
    bus = Bus()
    bus.add_mmio(Recorder(), 0xFEC0_0000, 0x1000)
    with pytest.raises(ValueError, match="at most 4076 MiB"):
        mmio.attach(Uc(UC_ARCH_X86, UC_MODE_64), bus, CPU0, 0xFF00_0000)


def test_an_irq_line_drives_every_input_it_is_connected_to():
    seen_a: list[bool] = []
    seen_b: list[bool] = []
    line = IrqLine(seen_a.append).connect(seen_b.append)
    line.pulse()
    line.set(True)
    assert seen_a == seen_b == [True, False, True]
    assert line.level
