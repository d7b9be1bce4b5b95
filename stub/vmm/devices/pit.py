"""The PC's 8254 programmable interval timer (ports 0x40-0x43) and the timer bits of
system control port B (0x61), counting at 1.193182 MHz of *guest* time
(``stub.vmm.clock``): a VM held stopped by gdb sees no counts pass.

Channel 0's output drives ISA IRQ 0 (through the PIC); channel 1 (DRAM refresh on old
PCs) counts and drives nothing; channel 2's gate is port 0x61 bit 0 and its output is
bit 5 there (the speaker's input: BIOS and kernels calibrate delays and the TSC by
polling it).

What is modelled, after the 8254 datasheet:

- Control word (0x43): channel, access (lobyte, hibyte, lobyte then hibyte), mode and
  BCD; writing one stops the channel until its count is written (OUT goes low in mode 0,
  high otherwise). The counter latch command, and the read-back command (count and/or
  status of several channels; the status byte is OUT, null count, access, mode, BCD).
- Counts: 0 means 65536 (10000 in BCD). A new count takes effect at once in every mode
  (the datasheet's modes 2 and 3 wait for the current period to end).
- Modes 0 (interrupt on terminal count), 2 (rate generator), 3 (square wave) and
  4 (software strobe) count from the count's write while the gate is high (a low gate
  pauses 0 and 4; stops 2 and 3, whose OUT goes high, and a rising gate reloads them).
  Modes 1 and 5 start on the gate's rising edge: only channel 2 has a gate to raise.
  Mode 3 with an odd count counts by two like an even one (the datasheet's N+1/N-1
  half periods are not kept). Modes 6 and 7 are 2 and 3, as the datasheet says.
- IRQ 0 is an edge (``IrqLine.pulse``) at each rising edge of channel 0's OUT: once at
  terminal count in modes 0 and 4, every count in modes 2 and 3. At most one every
  ``MIN_IRQ_PERIOD`` of guest time: a tiny count (1 is illegal in modes 2 and 3) would
  otherwise have the host's timer thread do nothing else; the counter itself keeps the
  programmed rate.
- Port 0x61: bits 0-3 read back as written (bit 1: speaker data, nothing sounds), bit 4
  is the refresh toggle, flipped by every read (what delay loops wait for), bit 5 is
  channel 2's OUT, bits 6-7 (parity/channel check) read 0.

Nothing a guest writes raises: an unprogrammed channel reads 0 and its OUT is low; the
8254's data bus is 8 bits, so a wider access uses (and returns) the low byte.
"""

from __future__ import annotations

import threading

from stub.vmm.bus import IrqLine, PortDevice, Requester
from stub.vmm.clock import SECOND, GuestClock

PORT, PORT_B = 0x40, 0x61  # four ports at PORT: three counters, then the control word
FREQ = 1_193_182  # Hz
MIN_IRQ_PERIOD = 50_000  # ns of guest time between two IRQ 0 edges, at least
_CONTROL = 3


def _from_bcd(raw: int) -> int:
    return sum(((raw >> (4 * i)) & 0xF) * 10 ** i for i in range(4))


def _to_bcd(value: int) -> int:
    return sum((value // 10 ** i % 10) << (4 * i) for i in range(4))


class Channel:
    """One counter; the PIT's lock protects it. Times are guest ns."""

    def __init__(self, gate: bool):
        self.gate = gate
        self.mode, self.access, self.bcd = 0, 3, False
        self.programmed = False  # a control word was written (OUT's initial state)
        self.count: int | None = None  # the reload value (1..65536), None: not written
        self.running = False  # counting since ``start``
        self.start = 0
        self.held = 0  # ticks counted before ``start`` (a paused mode 0/4)
        self.triggered = False  # modes 1 and 5: a gate edge started the count
        self.low_byte: int | None = None  # lobyte/hibyte access: the first byte written
        self.read_high = False  # lobyte/hibyte access: the next read is the high byte
        self.latched: list[int] = []  # latched count bytes, read first
        self.status: int | None = None  # a latched status byte, read before anything

    # -- time -----------------------------------------------------------------------
    def ticks(self, now: int) -> int:
        if not self.running:
            return self.held
        return self.held + (now - self.start) * FREQ // SECOND

    def time_of(self, tick: int) -> int:
        """The guest time at which a running channel counts its ``tick``-th tick."""
        return self.start + -(-(tick - self.held) * SECOND // FREQ)

    # -- programming ----------------------------------------------------------------
    def control(self, value: int) -> None:
        mode = (value >> 1) & 7
        self.mode = mode - 4 if mode > 5 else mode
        self.access, self.bcd = (value >> 4) & 3, bool(value & 1)
        self.programmed = True
        self.count, self.running, self.held, self.triggered = None, False, 0, False
        self.low_byte, self.read_high, self.latched = None, False, []

    def write(self, value: int, now: int) -> None:
        if self.access == 1:
            self.load(value, now)
        elif self.access == 2:
            self.load(value << 8, now)
        elif self.low_byte is None:
            self.low_byte = value
        else:
            self.load(self.low_byte | value << 8, now)
            self.low_byte = None

    def load(self, raw: int, now: int) -> None:
        count = _from_bcd(raw) if self.bcd else raw
        self.count = count or (10000 if self.bcd else 0x10000)
        self.held, self.triggered = 0, False
        self.running = self.gate and self.mode not in (1, 5)
        self.start = now

    def set_gate(self, gate: bool, now: int) -> None:
        if gate == self.gate:
            return
        self.gate = gate
        if self.count is None:
            return
        if gate:
            if self.mode in (0, 4):  # resume
                self.running, self.start = True, now
            else:  # modes 2, 3 reload; 1, 5 trigger
                self.running, self.start, self.held = True, now, 0
                self.triggered = self.mode in (1, 5)
        elif self.mode in (0, 2, 3, 4):  # pause (0, 4) or stop (2, 3)
            self.held, self.running = self.ticks(now), False

    # -- reading --------------------------------------------------------------------
    def value(self, now: int) -> int:
        """The counting element as a read sees it."""
        if self.count is None:
            return 0
        n, d = self.count, self.ticks(now)
        if self.mode == 2:
            value = n - d % n
        elif self.mode == 3:
            value = (n - 2 * d % n) & ~1
        else:
            value = (n - d) % (10000 if self.bcd else 0x10000)
        return _to_bcd(value % 10000) if self.bcd else value & 0xFFFF

    def out(self, now: int) -> bool:
        n, mode = self.count, self.mode
        if n is None:  # a control word sets OUT low in mode 0, high in the others
            return self.programmed and mode != 0
        d = self.ticks(now)
        if mode == 0:
            return d >= n
        if mode == 1:
            return not self.triggered or d >= n
        if mode in (4, 5):
            return d != n or (mode == 5 and not self.triggered)
        if not self.running:  # modes 2 and 3 with the gate low
            return True
        if mode == 2:
            return d % n != n - 1
        return d % n < (n + 1) // 2

    def latch(self, now: int) -> None:
        if self.latched:  # a second latch before the first is read is ignored
            return
        value = self.value(now)
        lo, hi = value & 0xFF, value >> 8
        self.latched = [lo] if self.access == 1 else [hi] if self.access == 2 else [lo, hi]

    def latch_status(self, now: int) -> None:
        if self.status is None:
            self.status = (self.out(now) << 7 | (self.count is None) << 6
                           | self.access << 4 | self.mode << 1 | self.bcd)

    def read(self, now: int) -> int:
        if self.status is not None:
            value, self.status = self.status, None
            return value
        if self.latched:
            return self.latched.pop(0)
        value = self.value(now)
        if self.access == 1:
            return value & 0xFF
        if self.access == 2:
            return value >> 8
        high, self.read_high = self.read_high, not self.read_high
        return value >> 8 if high else value & 0xFF

    # -- IRQ edges ------------------------------------------------------------------
    def next_edge(self, now: int) -> int | None:
        """The guest time of OUT's next rising edge after ``now`` (None: no more)."""
        n = self.count
        if n is None or not self.running:
            return None
        d = self.ticks(now)
        if self.mode in (2, 3):
            edge = self.time_of((d // n + 1) * n)
            return max(edge, now + 1)
        tick = n if self.mode == 0 else n + 1 if self.mode == 4 else None
        if tick is None or d >= tick:
            return None
        return self.time_of(tick)


class Pit(PortDevice):
    """The three channels, port 0x61's timer bits, and channel 0's IRQ line."""

    def __init__(self, clock: GuestClock, irq0: IrqLine):
        self._clock = clock
        self._irq0 = irq0
        self._lock = threading.Lock()
        self.channels = (Channel(True), Channel(True), Channel(False))
        self._port_b = 0  # bits 0-3 as written
        self._refresh = False
        self._timer = clock.timer(self._on_timer)
        self._armed: int | None = None  # the deadline channel 0's timer is armed for
        self._last_irq = -MIN_IRQ_PERIOD

    def reset(self) -> None:
        """Every channel unprogrammed, port B cleared, no IRQ 0 coming."""
        with self._lock:
            self.channels = (Channel(True), Channel(True), Channel(False))
            self._port_b = 0
            self._refresh = False
            self._armed = None
            self._timer.cancel()
            self._last_irq = -MIN_IRQ_PERIOD

    # -- ports ----------------------------------------------------------------------
    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> None:
        now = self._clock.now()
        with self._lock:
            value &= 0xFF  # the 8254 and port B have an 8-bit data bus
            if port == PORT_B:
                self._port_b = value & 0x0F
                self.channels[2].set_gate(bool(value & 1), now)
            elif port - PORT == _CONTROL:
                self._control(value, now)
                if value >> 6 == 0:
                    self._rearm(now)
            else:
                self.channels[port - PORT].write(value, now)
                if port == PORT:
                    self._rearm(now)

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        now = self._clock.now()
        with self._lock:
            if port == PORT_B:
                self._refresh = not self._refresh
                return (self._port_b | self._refresh << 4
                        | self.channels[2].out(now) << 5)
            if port - PORT == _CONTROL:
                return 0xFF  # the control word cannot be read
            return self.channels[port - PORT].read(now)

    def _control(self, value: int, now: int) -> None:
        select = value >> 6
        if select == 3:  # read-back: bit 5 clear latches counts, bit 4 clear status
            for index, channel in enumerate(self.channels):
                if value & (2 << index):
                    if not value & 0x20:
                        channel.latch(now)
                    if not value & 0x10:
                        channel.latch_status(now)
        elif not value & 0x30:  # counter latch command
            self.channels[select].latch(now)
        else:
            self.channels[select].control(value)

    # -- IRQ 0 ----------------------------------------------------------------------
    @property
    def next_irq0(self) -> int | None:
        """The guest time of channel 0's next IRQ 0 edge (None: none coming); for tests
        and status displays."""
        with self._lock:
            return self._armed

    def _rearm(self, now: int) -> None:
        """Channel 0 was programmed: its timer for the next edge, or none."""
        edge = self.channels[0].next_edge(now)
        if edge is None:
            self._armed = None
            self._timer.cancel()
        else:
            self._armed = max(edge, self._last_irq + MIN_IRQ_PERIOD)
            self._timer.arm(self._armed)

    def _on_timer(self, deadline: int) -> None:
        now = self._clock.now()
        with self._lock:
            if deadline != self._armed:
                return  # armed before the guest reprogrammed channel 0
            self._last_irq = now
            self._rearm(now)
        self._irq0.pulse()
