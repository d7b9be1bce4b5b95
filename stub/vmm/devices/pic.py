"""The PC's 8259A interrupt controller pair: the master at ports 0x20/0x21, the slave
at 0xA0/0xA1 cascaded on the master's IR2, and the PIIX edge/level control registers
(ELCR) at 0x4D0/0x4D1. Its INTR output feeds vCPU 0's interrupt sources (the ExtINT
path): ``pending()`` is INTR, ``acknowledge()`` the INTA cycle that gives the vector.

Programming, after the 8259A datasheet (the PIIX's, where a PC differs):

- ICW1 (command port, bit 4 set) starts initialisation: it clears IMR, ISR and the
  edge-triggered requests (an input must rise again to request), the slave address,
  special mask mode, the rotation (IR7 lowest) and every ICW4 function; reads select
  IRR. ICW2 (the vector base, bits 7-3) follows on the data port, then ICW3 unless
  ICW1 said single (SNGL), then ICW4 if ICW1 asked for it (IC4): auto-EOI and special
  fully nested mode; bit 0 (8086 mode) is assumed, buffered mode is ignored.
- OCW1 (data port, once initialised): IMR. OCW2: non-specific and specific EOI, rotate
  on (non-)specific EOI, set priority, rotate in auto-EOI mode. OCW3: read IRR or ISR
  on the command port, poll (the next command-port read is an INTA: 0x80 | IR, or 0 if
  nothing requests; a master's poll does not reach into the slave), special mask mode.
- ELCR: bit n set makes input n level-triggered; IRQ 0-2, 8 and 13 are always edge
  (the PIIX's fixed bits). ICW1's LTIM is ignored, as on the PIIX (the ELCR replaces it).

Behaviour worth knowing:

- An edge-triggered input latches its rising edge in IRR until INTA, as QEMU's 8259
  does: an emulated device's edge (``IrqLine.pulse``) has no width, where hardware holds
  IR high past INTA. A level-triggered input's IRR follows the line.
- A request that is no longer there at INTA (masked after INTR rose, a level input
  lowered) gives the spurious vector, IR7 of that chip with no ISR bit set: IRQ 7 on
  the master, IRQ 15 on the slave (then the master's IR2 is in service).
- Nonsense never raises: an ICW sequence cut short by another ICW1 starts again; OCW2/3
  written during initialisation act at once; SNGL only skips ICW3 (the slave stays
  wired to IR2, as on the board); MCS-80 mode (ICW4 bit 0 clear, or no ICW4) delivers
  as 8086 mode does (an x86 CPU knows no other); accesses wider than a byte are split
  into byte accesses of consecutive ports, as the ISA bus does.
- Until the guest initialises them the chips are as a PC BIOS leaves them: vectors 0x08
  and 0x70, every input masked but the cascade (a kernel that unmasks IRQ 0 without
  remapping gets vector 8, as on a PC).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stub.vmm.bus import IrqLine, PortDevice, Requester

MASTER_PORT, SLAVE_PORT, ELCR_PORT = 0x20, 0xA0, 0x4D0  # two ports each
CASCADE = 2  # the master's input the slave's INT drives
ISA_IRQ2 = 9  # the ISA bus's IRQ 2 pin is wired to the slave's IR1 on an AT

Notify = Callable[[], None]


class Chip:
    """One 8259A's registers and logic; the pair's lock protects it."""

    def __init__(self, master: bool, vector_base: int, imr: int, elcr_mask: int):
        self.master = master
        self.elcr_mask = elcr_mask
        self.elcr = 0
        self.lines = 0  # input levels (edge detection needs them)
        self.irr = self.isr = 0
        self.imr = imr
        self.base = vector_base
        self.init_step = 0  # the ICW expected next on the data port (0: none)
        self.want_icw3 = self.want_icw4 = False
        self.priority_add = 0  # rotation: the IR with the highest priority
        self.auto_eoi = self.rotate_on_aeoi = self.fully_nested = False
        self.special_mask = self.read_isr = self.poll = False

    # -- inputs ---------------------------------------------------------------------
    def level_triggered(self, irq: int) -> bool:
        return bool(self.elcr & (1 << irq))

    def set_input(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        if self.level_triggered(irq):
            self.irr = self.irr | bit if level else self.irr & ~bit
        elif level and not self.lines & bit:
            self.irr |= bit  # the rising edge, latched until INTA
        self.lines = self.lines | bit if level else self.lines & ~bit

    def write_elcr(self, value: int) -> None:
        self.elcr = value & self.elcr_mask
        level = self.elcr
        self.irr = (self.irr & ~level) | (self.lines & level)  # level inputs follow now

    # -- priorities -----------------------------------------------------------------
    def _priority(self, mask: int) -> int:
        """The priority level (0 highest) of the best IR in ``mask``; 8 for none."""
        if not mask & 0xFF:
            return 8
        level = 0
        while not mask & (1 << ((level + self.priority_add) & 7)):
            level += 1
        return level

    def request(self) -> int | None:
        """The IR the chip's INT output asks to have served, or None (INT low): the
        best unmasked request, if it beats everything in service."""
        wanted = self._priority(self.irr & ~self.imr)
        if wanted == 8:
            return None
        in_service = self.isr
        if self.special_mask:  # masked levels do not block lower ones
            in_service &= ~self.imr
        if self.fully_nested and self.master:  # a slave's better request may nest
            in_service &= ~(1 << CASCADE)
        if wanted < self._priority(in_service):
            return (wanted + self.priority_add) & 7
        return None

    def intack(self, irq: int) -> None:
        """The INTA cycle took ``irq``: in service (unless auto-EOI), edge consumed."""
        bit = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= bit
        if not self.level_triggered(irq):
            self.irr &= ~bit

    # -- the command port -----------------------------------------------------------
    def write_command(self, value: int) -> None:
        if value & 0x10:
            self._icw1(value)
        elif value & 0x08:
            self._ocw3(value)
        else:
            self._ocw2(value)

    def _icw1(self, value: int) -> None:
        self.irr = self.lines & self.elcr  # edge requests cleared; level ones: the line
        self.isr = self.imr = 0
        self.priority_add = 0
        self.auto_eoi = self.rotate_on_aeoi = self.fully_nested = False
        self.special_mask = self.read_isr = self.poll = False
        self.want_icw3 = not value & 0x02
        self.want_icw4 = bool(value & 0x01)
        self.init_step = 2

    def _ocw2(self, value: int) -> None:
        command, irq = value >> 5, value & 7
        if command in (0b001, 0b101):  # non-specific EOI (and rotate)
            level = self._priority(self.isr)
            if level == 8:
                return
            irq = (level + self.priority_add) & 7
            self.isr &= ~(1 << irq)
            if command == 0b101:
                self.priority_add = (irq + 1) & 7
        elif command in (0b011, 0b111):  # specific EOI (and rotate)
            self.isr &= ~(1 << irq)
            if command == 0b111:
                self.priority_add = (irq + 1) & 7
        elif command == 0b110:  # set priority: irq becomes the lowest
            self.priority_add = (irq + 1) & 7
        elif command in (0b000, 0b100):  # rotate in auto-EOI mode off / on
            self.rotate_on_aeoi = command == 0b100
        # 0b010: no operation

    def _ocw3(self, value: int) -> None:
        if value & 0x04:
            self.poll = True
        if value & 0x02:
            self.read_isr = bool(value & 0x01)
        if value & 0x40:
            self.special_mask = bool(value & 0x20)

    def read_command(self) -> int:
        if self.poll:  # the poll command made this read an INTA
            self.poll = False
            irq = self.request()
            if irq is None:
                return 0
            self.intack(irq)
            return 0x80 | irq
        return self.isr if self.read_isr else self.irr

    # -- the data port --------------------------------------------------------------
    def write_data(self, value: int) -> None:
        step = self.init_step
        if step == 0:
            self.imr = value
        elif step == 2:
            self.base = value & 0xF8
            self._next_icw(3)
        elif step == 3:  # the cascade wiring is the board's: nothing to change
            self._next_icw(4)
        else:
            self.auto_eoi = bool(value & 0x02)
            self.fully_nested = bool(value & 0x10)
            self.init_step = 0

    def _next_icw(self, step: int) -> None:
        if step == 3 and not self.want_icw3:
            step = 4
        if step == 4 and not self.want_icw4:
            step = 0
        self.init_step = step

    def read_data(self) -> int:
        return self.imr


class PicPair(PortDevice):
    """Both chips, their cascade, and INTR. Thread-safe: inputs change from device
    and timer threads, ports from vCPU threads, INTA from vCPU 0's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.master = Chip(True, 0x08, 0xFF & ~(1 << CASCADE), 0xF8)
        self.slave = Chip(False, 0x70, 0xFF, 0xDE)
        self._intr = False
        self._notify: Notify | None = None

    def reset(self) -> None:
        """Both chips back to their power-on state (uninitialised, all masked but the
        cascade); input levels are the devices' and are kept, so a line still high
        is seen again once the guest unmasks it."""
        with self._lock:
            master, slave = self.master, self.slave
            self.master = Chip(True, 0x08, 0xFF & ~(1 << CASCADE), 0xF8)
            self.slave = Chip(False, 0x70, 0xFF, 0xDE)
            self.master.lines, self.slave.lines = master.lines, slave.lines
            self._intr = False

    def connect(self, notify: Notify) -> None:
        """INTR's consumer (vCPU 0): called, with no lock held, when INTR rises."""
        self._notify = notify

    def irq_line(self, irq: int) -> IrqLine:
        """The line a device drives for ISA IRQ ``irq`` (0-15; IRQ 2 is IRQ 9)."""
        if not 0 <= irq < 16:
            raise ValueError(f"no ISA IRQ {irq}")
        irq = ISA_IRQ2 if irq == CASCADE else irq
        return IrqLine(lambda level: self.set_irq(irq, level))

    def set_irq(self, irq: int, level: bool) -> None:
        with self._lock:
            chip = self.master if irq < 8 else self.slave
            chip.set_input(irq & 7, level)
            rose = self._update_locked()
        if rose:
            self._raise()

    # -- the interrupt source (vCPU 0) ----------------------------------------------
    def pending(self) -> bool:
        return self._intr  # read without the lock: a stale answer costs a round

    def acknowledge(self) -> int:
        with self._lock:
            vector = self._inta_locked()
            self._update_locked()
        return vector

    def _inta_locked(self) -> int:
        master, slave = self.master, self.slave
        irq = master.request()
        if irq is None:  # the request went away: the master's spurious IRQ 7
            return master.base + 7
        if irq == CASCADE:
            irq2 = slave.request()
            if irq2 is None:  # the slave's spurious IRQ 15 (master IR2 in service)
                vector = slave.base + 7
            else:
                slave.intack(irq2)
                vector = slave.base + irq2
        else:
            vector = master.base + irq
        master.intack(irq)
        return vector

    def _update_locked(self) -> bool:
        """Propagate the slave's INT to IR2 and recompute INTR; True if it rose."""
        self.master.set_input(CASCADE, self.slave.request() is not None)
        intr = self.master.request() is not None
        rose = intr and not self._intr
        self._intr = intr
        return rose

    def _raise(self) -> None:
        if self._notify is not None:
            self._notify()

    # -- ports ----------------------------------------------------------------------
    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> None:
        with self._lock:
            for i in range(size):
                self._out_byte(port + i, (value >> (8 * i)) & 0xFF)
            rose = self._update_locked()
        if rose:
            self._raise()

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        with self._lock:
            value = 0
            for i in range(size):
                value |= self._in_byte(port + i) << (8 * i)
            rose = self._update_locked()  # a poll is an INTA
        if rose:
            self._raise()
        return value

    def _chip(self, port: int) -> Chip | None:
        if port in (MASTER_PORT, MASTER_PORT + 1):
            return self.master
        if port in (SLAVE_PORT, SLAVE_PORT + 1):
            return self.slave
        return None

    def _out_byte(self, port: int, value: int) -> None:
        chip = self._chip(port)
        if chip is None:
            if port in (ELCR_PORT, ELCR_PORT + 1):
                (self.master if port == ELCR_PORT else self.slave).write_elcr(value)
        elif port & 1:
            chip.write_data(value)
        else:
            chip.write_command(value)

    def _in_byte(self, port: int) -> int:
        chip = self._chip(port)
        if chip is None:
            if port in (ELCR_PORT, ELCR_PORT + 1):
                return (self.master if port == ELCR_PORT else self.slave).elcr
            return 0xFF  # a wide access ran past our ports
        return chip.read_data() if port & 1 else chip.read_command()
