"""CMOS RAM and real-time clock (ports 0x70-0x71), after the Motorola MC146818A data
sheet and the PC's use of it.

Port 0x70 takes the register index (bits 0-6) and NMI disable (bit 7, stored: this
machine has no NMI sources); it reads 0xFF, as on PCs (and QEMU), where it is
write-only. Port 0x71 reads and writes the indexed register. Accesses wider than a
byte act on the addressed port with their low byte.

Registers:

- 0x00, 0x02, 0x04, 0x06-0x09 and the century at 0x32 (IBM's place, QEMU's too):
  seconds, minutes, hours, weekday (1 = Sunday), day, month, year, century, read from
  ``clock()`` (seconds since the epoch, UTC; the platform gives boot wall time + guest
  time) plus the offset the guest set. Each read encodes the time as status B says
  now: BCD or binary (bit 2), 24 or 12 hours (bit 1; 12-hour PM is bit 7 of the hour).
  A write sets the clock: the field is replaced and the new time kept as an offset from
  ``clock()``; a date that does not exist (month 13, BCD 0x3A, February 30) leaves the
  clock as it was. The weekday follows from the date (writes to it are not kept).
  With status B's SET bit the clock is frozen: reads and writes hit the stored bytes,
  and clearing SET makes them the time (how a BIOS or an OS sets the clock).
- Status A (0x0A): UIP (bit 7) always reads 0, so a guest never waits for an update
  cycle; the divider and rate bits are stored.
- Status B (0x0B): stored; setting SET clears UIE, as the data sheet says.
- Status C (0x0C): interrupt flags, cleared by reading. There is no IRQ 8 and no
  periodic or alarm interrupt: only UF (update ended) is set, when a second has
  passed since C was last read (with IRQF if UIE is on), for guests that poll for it.
- Status D (0x0D): VRT (bit 7, valid RAM and time) always 1.
- Memory sizes from ``ram_size`` (QEMU's layout; this machine's RAM is flat, so all of
  it below 4 GiB counts): 0x15/0x16 base memory in KiB (640), 0x17/0x18 and 0x30/0x31
  extended memory above 1 MiB in KiB (at most 0xFFFF: 1-65 MiB), 0x34/0x35 memory
  above 16 MiB in 64 KiB units, 0x5B-0x5D memory above 4 GiB in 64 KiB units. They are
  RAM: a guest may overwrite them.
- Every other byte of the 128 is RAM: it reads back what was written.
"""

from __future__ import annotations

import calendar
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from stub.vmm.bus import PortDevice, Requester

INDEX, DATA = 0x70, 0x71
NMI_DISABLE = 0x80

SEC, MIN, HOUR, WDAY, MDAY, MON, YEAR, CENTURY = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32
TIME_REGS = (SEC, MIN, HOUR, WDAY, MDAY, MON, YEAR, CENTURY)
A, B, C, D = 0x0A, 0x0B, 0x0C, 0x0D
UIP = 0x80
SET, UIE, BINARY, H24 = 0x80, 0x10, 0x04, 0x02  # status B
IRQF, UF = 0x80, 0x10  # status C
VRT = 0x80  # status D
PM = 0x80  # hour register, 12-hour mode

KIB, MIB = 1 << 10, 1 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST = calendar.timegm((1, 1, 1, 0, 0, 0))  # the RTC's years 0001-9999
_LAST = calendar.timegm((9999, 12, 31, 23, 59, 59))


class Cmos(PortDevice):
    def __init__(self, ram_size: int, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()  # vCPU threads
        self._ram = bytearray(128)
        self._index = 0
        self.nmi_disabled = False
        self._offset = 0  # seconds the guest moved the clock by
        self._ram[A] = 0x26  # 32.768 kHz time base, 1.024 kHz rate (the PC's setting)
        self._ram[B] = H24  # 24 hours, BCD
        self._last_c = self._now()
        self._set_memory_sizes(ram_size)

    def reset(self) -> None:
        """system_reset: the CMOS is battery-backed, so its RAM and its clock stay;
        only the index register (and its NMI mask bit) start again."""
        with self._lock:
            self._index = 0
            self.nmi_disabled = False

    def _set_memory_sizes(self, ram_size: int) -> None:
        below_4g = min(ram_size, 4 << 30)
        extended = min(max(below_4g - MIB, 0) // KIB, 0xFFFF)
        above_16m = min(max(below_4g - 16 * MIB, 0) // (64 * KIB), 0xFFFF)
        above_4g = max(ram_size - (4 << 30), 0) // (64 * KIB)
        for reg, value, width in ((0x15, 640, 2), (0x17, extended, 2), (0x30, extended, 2),
                                  (0x34, above_16m, 2), (0x5B, above_4g, 3)):
            self._ram[reg:reg + width] = min(value, (1 << 8 * width) - 1).to_bytes(width, "little")

    # -- the bus ------------------------------------------------------------------------
    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> None:
        value &= 0xFF
        with self._lock:
            if port == INDEX:
                self._index, self.nmi_disabled = value & 0x7F, bool(value & NMI_DISABLE)
            else:
                self._write(self._index, value)

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        with self._lock:
            return 0xFF if port == INDEX else self._read(self._index)

    # -- inside the lock ----------------------------------------------------------------
    def _read(self, reg: int) -> int:
        ram = self._ram
        if reg in TIME_REGS and not ram[B] & SET:
            return self._encode(self._time())[reg]
        if reg == A:
            return ram[A] & ~UIP
        if reg == C:
            now, flags = self._now(), 0
            if now != self._last_c and not ram[B] & SET:
                flags = UF | (IRQF if ram[B] & UIE else 0)
            self._last_c = now
            return flags
        if reg == D:
            return VRT
        return ram[reg]

    def _write(self, reg: int, value: int) -> None:
        ram = self._ram
        if reg in TIME_REGS:
            if not ram[B] & SET:  # set the clock now: the other fields as they are
                self._freeze()
                ram[reg] = value
                self._thaw()
            else:
                ram[reg] = value
        elif reg == A:
            ram[A] = value & ~UIP
        elif reg == B:
            was_set = ram[B] & SET
            if value & SET and not was_set:
                self._freeze()
            ram[B] = value & ~UIE if value & SET else value
            if was_set and not value & SET:
                self._thaw()
        elif reg not in (C, D):  # C and D are read-only
            ram[reg] = value

    def _now(self) -> int:
        return min(max(math.floor(self._clock()) + self._offset, _FIRST), _LAST)

    def _time(self) -> datetime:
        return _EPOCH + timedelta(seconds=self._now())

    def _freeze(self) -> None:
        """Store the current time in the time registers (SET, or one field written)."""
        for reg, byte in self._encode(self._time()).items():
            self._ram[reg] = byte

    def _thaw(self) -> None:
        """The time registers become the clock's time, if they make a date."""
        when = self._decode()
        if when is not None:
            self._offset = calendar.timegm(when.timetuple()) - math.floor(self._clock())

    def _encode(self, t: datetime) -> dict[int, int]:
        bcd = not self._ram[B] & BINARY
        enc = (lambda v: (v // 10) << 4 | v % 10) if bcd else (lambda v: v)
        hour = enc(t.hour)
        if not self._ram[B] & H24:
            hour = enc(t.hour % 12 or 12) | (PM if t.hour >= 12 else 0)
        return {SEC: enc(t.second), MIN: enc(t.minute), HOUR: hour,
                WDAY: enc(t.isoweekday() % 7 + 1), MDAY: enc(t.day), MON: enc(t.month),
                YEAR: enc(t.year % 100), CENTURY: enc(t.year // 100)}

    def _decode(self) -> datetime | None:
        ram, bcd = self._ram, not self._ram[B] & BINARY

        def dec(byte: int) -> int:
            if bcd:
                hi, lo = byte >> 4, byte & 0xF
                return hi * 10 + lo if hi < 10 and lo < 10 else -1
            return byte

        hour = dec(ram[HOUR])
        if not ram[B] & H24:
            hour = dec(ram[HOUR] & ~PM)
            hour = hour % 12 + (12 if ram[HOUR] & PM else 0) if 1 <= hour <= 12 else -1
        year, century = dec(ram[YEAR]), dec(ram[CENTURY])
        try:
            if not (0 <= year < 100 and 0 <= century < 100):
                return None
            return datetime(century * 100 + year, dec(ram[MON]), dec(ram[MDAY]), hour,
                            dec(ram[MIN]), dec(ram[SEC]), tzinfo=UTC)
        except ValueError:  # no such date or time: the write does not set the clock
            return None
