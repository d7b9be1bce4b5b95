"""The ACPI power-management registers, where QEMU's PIIX4 puts them (PM base 0x600),
as the FADT (``stub.vmm.boot.acpi``) announces them.

| port | register | what it does here |
|---|---|---|
| 0x600 | PM1_STS (16 bits) | write 1 to clear; TMR_STS is the only bit ever set |
| 0x602 | PM1_EN (16 bits) | read/write: TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN |
| 0x604 | PM1_CNT (16 bits) | SCI_EN reads 1; SLP_EN with SLP_TYP 0 (S5) powers off |
| 0x606 | (reserved, 2 bytes) | reads 0, writes ignored |
| 0x608 | PM_TMR (32 bits) | a 24-bit counter at 3.579545 MHz of guest time |

**SCI_EN** always reads 1: the FADT names no SMI command port, so the machine is in
ACPI mode from power-on and for good (a write cannot clear it). **S5**: a write with
SLP_EN (bit 13) and SLP_TYP (bits 10-12) 0, the sleep type the DSDT's ``_S5`` names
(the well-known ``outw(0x604, 0x2000)``), powers off: gdb gets ``W00`` and the stub
exits 0. Other sleep types (S3 is 1 on QEMU) are not supported: the write is stored
and the guest runs on. SLP_EN reads 0 (the ACPI spec calls it write-only).

**The PM timer** counts guest time (``GuestClock.now()``, ns) at 3,579,545 Hz and
wraps at 24 bits (the FADT leaves TMR_VAL_EXT clear): like the PIT, it stands still
while gdb holds the VM, and the kernel calibrates the TSC against it. **TMR_STS** (the
counter's bit 23 changed since the status was last cleared) is computed when PM1_STS
is read; **no SCI is ever raised** (IRQ 9 is not driven: TMR_EN, the power button and
the RTC alarm enable bits are stored and read back, and no event behind them occurs),
which the ACPI spec allows for a machine without those events and Linux does not
need (it reads the timer, it does not enable its overflow interrupt).

Every register takes byte, word and dword accesses: an access is split into its bytes
(a dword at 0x600 is PM1_STS and PM1_EN together), the clock read once per access so a
dword timer read is one sample.
"""

from __future__ import annotations

import threading

from stub.vmm.bus import PortDevice, PowerOff, Requester
from stub.vmm.clock import SECOND, GuestClock

BASE, PORTS = 0x600, 12  # 0x600-0x60B
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0x600, 0x602, 0x604, 0x608
_STS, _EN, _CNT = PM1_STS - BASE, PM1_EN - BASE, PM1_CNT - BASE  # offsets in the block
PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN = 4, 2, 4  # the FADT's block lengths
TIMER_HZ = 3_579_545
TIMER_BITS = 24
TIMER_MASK = (1 << TIMER_BITS) - 1

# PM1_STS bits (ACPI 6.5, 4.8.3.1.1) and the enable bit beside each in PM1_EN.
TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
SLPBTN_STS = 1 << 9
RTC_STS = 1 << 10
WAK_STS = 1 << 15
TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN = (TMR_STS, GBL_STS, PWRBTN_STS,
                                               SLPBTN_STS, RTC_STS)
PM1_EN_BITS = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN | 1 << 14  # + PCIEXP_WAKE_DIS

# PM1_CNT bits.
SCI_EN = 1 << 0
SLP_EN = 1 << 13
SLP_TYP_SHIFT, SLP_TYP_S5 = 10, 0
PM1_CNT_BITS = 0x1FFF  # SCI_EN, BM_RLD, GBL_RLS, SLP_TYP; SLP_EN (13) acts, 14-15 reserved


def timer_ticks(ns: int) -> int:
    """PM timer ticks in ``ns`` of guest time (not wrapped)."""
    return ns * TIMER_HZ // SECOND


class AcpiPm(PortDevice):
    """The PM1a event and control blocks and the PM timer (the module docstring)."""

    def __init__(self, clock: GuestClock, base: int = BASE):
        self._clock = clock
        self._base = base
        self._lock = threading.Lock()  # vCPU threads
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._status = 0  # PM1_STS bits other than TMR_STS (none is ever raised)
            self._enable = 0
            self._control = SCI_EN
            self._tmr_epoch = self._epoch(self._clock.now())  # TMR_STS clear now

    @staticmethod
    def _epoch(ns: int) -> int:
        """How many times bit 23 of the counter has changed by guest time ``ns``."""
        return timer_ticks(ns) >> (TIMER_BITS - 1)

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        now = self._clock.now()
        with self._lock:
            regs = self._registers(now)
        offset = port - self._base
        return sum(regs[offset + i] << 8 * i if offset + i < len(regs) else 0xFF << 8 * i
                   for i in range(size))

    def _registers(self, now: int) -> bytes:
        status = self._status | (TMR_STS if self._epoch(now) != self._tmr_epoch else 0)
        timer = timer_ticks(now) & TIMER_MASK
        return (status.to_bytes(2, "little") + self._enable.to_bytes(2, "little")
                + (self._control | SCI_EN).to_bytes(2, "little") + bytes(2)
                + timer.to_bytes(4, "little"))

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> PowerOff | None:
        offset = port - self._base
        now = self._clock.now()
        sleeps = []
        with self._lock:
            for i in range(size):
                sleep = self._write_byte(offset + i, value >> 8 * i & 0xFF, now)
                if sleep is not None:
                    sleeps.append(sleep)
        if SLP_TYP_S5 in sleeps:
            return PowerOff(0, status=0)
        return None

    def _write_byte(self, offset: int, byte: int, now: int) -> int | None:
        """Store one byte; the sleep type when it sets SLP_EN, else None."""
        reg, shift = offset & ~1, 8 * (offset & 1)
        mask = 0xFF << shift
        if reg == _STS:
            cleared = byte << shift
            self._status &= ~cleared
            if cleared & TMR_STS:
                self._tmr_epoch = self._epoch(now)
        elif reg == _EN:
            self._enable = (self._enable & ~mask | byte << shift) & PM1_EN_BITS
        elif reg == _CNT:
            written = (self._control & ~mask | byte << shift)
            self._control = written & PM1_CNT_BITS | SCI_EN
            if written & SLP_EN:
                return (written >> SLP_TYP_SHIFT) & 7
        return None  # the reserved bytes and the timer (read-only)
