"""The I/O APIC model (stub/vmm/devices/ioapic.py) on its own, and with local APICs on an
ApicBus: the register window, edge and level pins, remote IRR and EOI, polarity,
masking."""

from __future__ import annotations

from stub.vmm.clock import ManualClock
from stub.vmm.devices import ioapic as I
from stub.vmm.devices import lapic as L
from stub.vmm.devices.ioapic import IoApic


class Board:
    def __init__(self):
        self.sent: list[L.Ipi] = []
        self.io = IoApic(self.sent.append, apic_id=2)

    def write_reg(self, index: int, value: int) -> None:
        self.io.mmio_write(I.REGSEL, 4, index)
        self.io.mmio_write(I.IOWIN, 4, value)

    def read_reg(self, index: int) -> int:
        self.io.mmio_write(I.REGSEL, 4, index)
        return self.io.mmio_read(I.IOWIN)

    def route(self, pin: int, low: int, dest: int = 0) -> None:
        self.write_reg(I.REG_TABLE + 2 * pin + 1, dest << 24)
        self.write_reg(I.REG_TABLE + 2 * pin, low)


def test_identification_registers_and_reset_masks():
    b = Board()
    assert b.read_reg(I.REG_ID) == 2 << 24
    assert b.read_reg(I.REG_VER) == 0x20 | 23 << 16
    assert all(b.read_reg(I.REG_TABLE + 2 * p) == I.MASKED for p in range(I.PINS))
    b.write_reg(I.REG_ID, 5 << 24)
    assert b.read_reg(I.REG_ID) == 5 << 24
    assert b.io.mmio_read(I.REGSEL) == I.REG_ID


def test_edge_pin_sends_on_the_rising_edge_only():
    b = Board()
    b.route(4, 0x24, dest=1)
    b.io.set_irq(4, True)
    b.io.set_irq(4, True)  # no new edge
    b.io.set_irq(4, False)
    assert [(m.vector, m.dest, m.mode, m.level_trigger) for m in b.sent] == [
        (0x24, 1, L.FIXED, False)]
    b.io.set_irq(4, True)
    assert len(b.sent) == 2


def test_masked_edge_is_latched_until_unmasked():
    b = Board()
    b.route(1, 0x21 | I.MASKED)
    b.io.set_irq(1, True)
    assert b.sent == []
    b.route(1, 0x21)
    assert [m.vector for m in b.sent] == [0x21]
    b.route(1, 0x21 | I.MASKED)
    b.route(1, 0x21)
    assert len(b.sent) == 1  # sent once


def test_level_pin_holds_remote_irr_until_eoi():
    b = Board()
    b.route(9, 0x39 | I.LEVEL)
    b.io.set_irq(9, True)
    assert len(b.sent) == 1 and b.sent[0].level_trigger
    assert b.read_reg(I.REG_TABLE + 18) & I.REMOTE_IRR
    b.io.set_irq(9, True)
    assert len(b.sent) == 1  # still in service
    b.io.eoi(0x39)  # line still asserted: sent again
    assert len(b.sent) == 2
    b.io.set_irq(9, False)
    b.io.mmio_write(I.EOI, 4, 0x39)  # the EOI register
    assert len(b.sent) == 2 and not b.read_reg(I.REG_TABLE + 18) & I.REMOTE_IRR


def test_active_low_polarity():
    b = Board()
    b.io.set_irq(5, True)  # idle high
    b.route(5, 0x25 | I.ACTIVE_LOW | I.LEVEL)
    assert b.sent == []
    b.io.set_irq(5, False)  # asserted
    assert [m.vector for m in b.sent] == [0x25]


def test_read_only_bits_are_not_written():
    b = Board()
    b.route(3, 0x23 | I.REMOTE_IRR | I.DELIVERY_STATUS)
    assert b.read_reg(I.REG_TABLE + 6) == 0x23


def test_with_local_apics_level_eoi_round_trip():
    """IOAPIC -> ApicBus -> LocalApic, and the LAPIC's EOI back to the IOAPIC."""
    clock = ManualClock()
    bus = L.ApicBus()
    io = IoApic(bus.send)
    apics = [L.LocalApic(i, clock, eoi=io.eoi) for i in range(2)]
    for apic in apics:
        bus.add(apic)
        apic.write(L.SVR, L.SVR_ENABLE | 0xFF)
    io.mmio_write(I.REGSEL, 4, I.REG_TABLE + 2 * 11 + 1)
    io.mmio_write(I.IOWIN, 4, 1 << 24)
    io.mmio_write(I.REGSEL, 4, I.REG_TABLE + 2 * 11)
    io.mmio_write(I.IOWIN, 4, 0x4B | I.LEVEL)
    io.set_irq(11, True)
    assert not apics[0].pending() and apics[1].acknowledge() == 0x4B
    io.set_irq(11, False)
    apics[1].write(L.EOI, 0)  # level: the EOI reaches the IOAPIC
    assert not io.table[11] & I.REMOTE_IRR
