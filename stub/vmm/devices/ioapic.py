"""The I/O APIC (Intel 82093AA datasheet; as QEMU's ``ioapic`` with 24 pins): the
redirection table, edge and level triggering with the remote IRR and EOI, polarity,
masking, and delivery of each pin's message to the local APICs (``lapic.ApicBus.send``).

Registers, memory-mapped at 0xFEC00000: IOREGSEL (offset 0x00: the index) and IOWIN
(0x10: the 32-bit window on the indexed register), and the EOI register (0x40, version
0x20 and later: a vector, which clears the remote IRR of the level-triggered pins that
use it). Indexed registers: 0x00 ID (bits 27:24), 0x01 version (0x20, 23 = the last
pin in bits 23:16), 0x02 arbitration, 0x10 + 2n / 0x11 + 2n the low and high halves of
pin n's redirection entry.

An edge is latched (QEMU's behaviour, not the datasheet's, which loses it) while its
pin is masked or still being delivered, and goes out when the pin is unmasked. A level
pin sends once per assertion: the remote IRR holds it until the local APIC's EOI
(``eoi(vector)``, wired from ``LocalApic``'s ``eoi`` callback), then it is sent again if
the line is still asserted.

Wired by ``stub.vmm.platform``: on the bus at 0xFEC00000, the ISA devices' IRQ lines
to pins as well as to the PIC (``irq_line``; IRQ 0, the PIT, is pin 2 on a PC, as the
MADT ``stub.vmm.boot.acpi`` writes says), its messages to ``ApicBus.send``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stub.vmm.devices.lapic import Ipi

BASE = 0xFEC0_0000
SIZE = 0x1000
PINS = 24
VERSION = 0x20
REGSEL, IOWIN, EOI = 0x00, 0x10, 0x40
REG_ID, REG_VER, REG_ARB, REG_TABLE = 0x00, 0x01, 0x02, 0x10

MASKED = 1 << 16
LEVEL = 1 << 15
REMOTE_IRR = 1 << 14
ACTIVE_LOW = 1 << 13
DELIVERY_STATUS = 1 << 12
LOGICAL = 1 << 11
_WRITABLE = 0xFF00_0000_0001_AFFF  # dest, mask, trigger, polarity, dest mode, mode, vector


class IoApic:
    """``send(ipi)``: a pin's message to the local APICs (``ApicBus.send``)."""

    def __init__(self, send: Callable[[Ipi], None] = lambda ipi: None, apic_id: int = 0):
        self._send = send
        self._lock = threading.Lock()
        self._power_on_id = apic_id
        self.levels = [False] * PINS  # the input lines (as driven, before polarity)
        self.reset()

    def reset(self) -> None:
        """Power-on state: every pin masked, the ID as built; the input lines are the
        devices' and are kept (a line still high is seen once its pin is unmasked)."""
        with self._lock:
            self.apic_id = self._power_on_id
            self.regsel = 0
            self.table = [MASKED] * PINS  # 64-bit entries, masked at reset
            self.latched = 0  # edges waiting for an unmask (bit per pin)

    # -- inputs ----------------------------------------------------------------------
    def irq_line(self, pin: int) -> Callable[[bool], None]:
        """The sink for an ``IrqLine`` wired to ``pin``."""
        return lambda level: self.set_irq(pin, level)

    def set_irq(self, pin: int, level: bool) -> None:
        with self._lock:
            if not 0 <= pin < PINS:
                return
            entry = self.table[pin]
            before = self._asserted_locked(pin)
            self.levels[pin] = bool(level)
            now = self._asserted_locked(pin)
            if now and not before and not entry & LEVEL:
                self.latched |= 1 << pin
            messages = self._service_locked()
        self._deliver(messages)

    def _asserted_locked(self, pin: int) -> bool:
        return self.levels[pin] != bool(self.table[pin] & ACTIVE_LOW)

    def _service_locked(self) -> list[Ipi]:
        """The messages due now: latched edges and asserted level pins without a
        remote IRR, on unmasked pins."""
        messages = []
        for pin in range(PINS):
            entry = self.table[pin]
            if entry & MASKED:
                continue
            if entry & LEVEL:
                if self._asserted_locked(pin) and not entry & REMOTE_IRR:
                    self.table[pin] = entry | REMOTE_IRR
                    messages.append(self._message(entry, level=True))
            elif self.latched >> pin & 1:
                self.latched &= ~(1 << pin)
                messages.append(self._message(entry, level=False))
        return messages

    def _message(self, entry: int, level: bool) -> Ipi:
        return Ipi(source=-1, mode=(entry >> 8) & 7, vector=entry & 0xFF, dest=entry >> 56,
                   logical=bool(entry & LOGICAL), shorthand=0, level_trigger=level)

    def _deliver(self, messages: list[Ipi]) -> None:
        for ipi in messages:
            self._send(ipi)

    def eoi(self, vector: int) -> None:
        """A local APIC ended a level-triggered interrupt with ``vector``: clear the
        remote IRR of the pins that send it, and send again where still asserted."""
        with self._lock:
            for pin in range(PINS):
                if self.table[pin] & 0xFF == vector:
                    self.table[pin] &= ~REMOTE_IRR
            messages = self._service_locked()
        self._deliver(messages)

    # -- registers -------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int = 4) -> int:
        with self._lock:
            if offset == REGSEL:
                return self.regsel
            if offset == IOWIN:
                return self._read_locked(self.regsel)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == EOI:
            self.eoi(value & 0xFF)
            return
        with self._lock:
            if offset == REGSEL:
                self.regsel = value & 0xFF
                return
            if offset != IOWIN:
                return
            self._write_locked(self.regsel, value & 0xFFFF_FFFF)
            messages = self._service_locked()
        self._deliver(messages)

    def _read_locked(self, index: int) -> int:
        if index == REG_ID:
            return (self.apic_id & 0xF) << 24
        if index == REG_VER:
            return VERSION | (PINS - 1) << 16
        if index == REG_ARB:
            return (self.apic_id & 0xF) << 24
        pin, high = divmod(index - REG_TABLE, 2)
        if 0 <= pin < PINS:
            entry = self.table[pin]
            return entry >> 32 if high else entry & 0xFFFF_FFFF
        return 0

    def _write_locked(self, index: int, value: int) -> None:
        if index == REG_ID:
            self.apic_id = (value >> 24) & 0xF
            return
        pin, high = divmod(index - REG_TABLE, 2)
        if not 0 <= pin < PINS:
            return
        entry = self.table[pin]
        new = (value << 32) | (entry & 0xFFFF_FFFF) if high \
            else (entry & ~0xFFFF_FFFF) | value
        # Remote IRR and delivery status are read-only; an edge pin has no remote IRR.
        kept = entry & REMOTE_IRR if new & LEVEL else 0
        self.table[pin] = (new & _WRITABLE) | kept
