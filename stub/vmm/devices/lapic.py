"""The local APIC of one vCPU (Intel SDM vol. 3, chapter 11 "Advanced Programmable
Interrupt Controller"): the xAPIC register file at 0xFEE00000 and the same registers as
x2APIC MSRs, IRR/ISR/TMR with TPR/PPR and EOI, the LVTs and the spurious vector, the
timer (one-shot, periodic, TSC-deadline) on guest time, and the ICR sending fixed,
lowest-priority, NMI, INIT and SIPI IPIs with the shorthands.

Wired by ``stub.vmm.platform`` (docs/linux.md, "The APIC models"): each vCPU's own
APIC on the bus at 0xFEE00000 (``mmio_read``/``mmio_write`` take the offset from the
base), first among the vCPU's interrupt sources (``pending``/``acknowledge``), its NMIs
a source the vCPU takes whatever IF says (``nmi_pending``/``take_nmi``), and, on the
BSP, the PIC's INTR through LINT0 when ``accepts_pic``. No MSR hook reaches
``msr_read``/``msr_write`` (Unicorn 2.1 cannot hook rdmsr/wrmsr), so x2APIC and the
TSC deadline are not advertised. ``ApicBus`` routes IPIs between the vCPUs' APICs and
the three signals a vCPU must act on itself (NMI, INIT, SIPI) through ``signal``.

Time: the timer counts the bus clock, ``BUS_HZ`` (1 GHz: one count per guest ns before
the divider, as QEMU's APIC), on the VM's ``GuestClock``, so it stands still while gdb
holds the VM. TSC-deadline mode compares with the TSC the guest reads, which is the
host's (Unicorn cannot intercept ``rdtsc``): the deadline is converted to guest time
at ``tsc_hz`` when it is written, exact while the clock runs and late by the length of
any debugger stop in between. Every register access is under one lock; callbacks
(``notify``, ``send``, ``eoi``) run with it released. ``pending`` takes no lock: the
vCPU asks it holding the guest clock's lock (mailbox.py), and the timer code arms and
reads the clock holding this one, so it reads a flag each locked section leaves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from stub.vmm.clock import SECOND, GuestClock

BASE = 0xFEE0_0000
SIZE = 0x1000
BUS_HZ = 1_000_000_000
VERSION = 0x14  # an integrated APIC, as QEMU's
MAX_LVT = 6  # LVT entries - 1: CMCI, timer, thermal, perf, LINT0, LINT1, error

# Register offsets (xAPIC; the x2APIC MSR is 0x800 + offset / 16).
ID, VER, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = (
    0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0)
ISR, TMR, IRR, ESR = 0x100, 0x180, 0x200, 0x280
LVT_CMCI, ICR_LO, ICR_HI = 0x2F0, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = (
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
TIMER_INITIAL, TIMER_CURRENT, TIMER_DIVIDE = 0x380, 0x390, 0x3E0
SELF_IPI = 0x3F0  # x2APIC only
LVTS = (LVT_CMCI, LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR)

MSR_APIC_BASE = 0x1B
MSR_TSC_DEADLINE = 0x6E0
MSR_X2APIC_FIRST, MSR_X2APIC_LAST = 0x800, 0x8FF
APIC_BASE_BSP, APIC_BASE_X2APIC, APIC_BASE_ENABLE = 1 << 8, 1 << 10, 1 << 11

SVR_ENABLE = 1 << 8
LVT_MASKED = 1 << 16
LVT_LEVEL = 1 << 15
TIMER_MODE_SHIFT = 17
ONE_SHOT, PERIODIC, TSC_DEADLINE = 0, 1, 2

# ICR fields.
FIXED, LOWEST, SMI, NMI, INIT, SIPI, EXTINT = 0, 1, 2, 4, 5, 6, 7
ICR_LOGICAL = 1 << 11
ICR_LEVEL_ASSERT = 1 << 14
ICR_LEVEL_TRIGGER = 1 << 15
NO_SHORTHAND, SELF, ALL_INCLUDING_SELF, ALL_EXCLUDING_SELF = 0, 1, 2, 3

_READ_ONLY = frozenset({ID, VER, APR, PPR, RRD, TIMER_CURRENT})
_RESET_LVT = LVT_MASKED


@dataclass(frozen=True)
class Ipi:
    """An interprocessor interrupt as the ICR describes it. ``dest`` is the 8-bit
    (xAPIC) or 32-bit (x2APIC) destination field; ``logical`` its mode."""

    source: int  # the sender's APIC ID
    mode: int
    vector: int
    dest: int
    logical: bool
    shorthand: int
    level_trigger: bool = False
    assert_: bool = True


def divisor(dcr: int) -> int:
    """The timer's divider from the divide configuration register (bits 0, 1, 3):
    2, 4, 8, 16, 32, 64, 128, then 1 for 0b111."""
    code = (dcr & 3) | ((dcr & 8) >> 1)
    return 1 if code == 7 else 2 << code


class LocalApic:
    """One vCPU's local APIC. ``notify()``: an interrupt may now be deliverable (kick
    the vCPU); ``send(ipi)``: an ICR write (``ApicBus.send``); ``eoi(vector)``: a
    level-triggered interrupt was ended (the IOAPIC's remote IRR); ``tsc`` reads the
    TSC the guest sees and ``tsc_hz`` is its rate."""

    def __init__(self, apic_id: int, clock: GuestClock, *, bsp: bool = False,
                 notify: Callable[[], None] = lambda: None,
                 send: Callable[[Ipi], None] = lambda ipi: None,
                 eoi: Callable[[int], None] = lambda vector: None,
                 tsc: Callable[[], int] | None = None, tsc_hz: int = 0):
        self.apic_id = apic_id
        self._clock = clock
        self._notify, self._send, self._eoi = notify, send, eoi
        self._tsc, self._tsc_hz = tsc, tsc_hz
        self._lock = threading.Lock()
        self._state = _Locked(self)  # the lock, and ``_ready`` refreshed on release
        self._ready = False  # a fixed interrupt is deliverable (``pending``)
        self._timer = clock.timer(self._on_timer)
        self.apic_base = BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if bsp else 0)
        self.reset()

    def connect(self, notify: Callable[[], None]) -> None:
        """The vCPU's kick (``interrupt_changed``), once the vCPU exists."""
        self._notify = notify

    # -- state ---------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on and INIT state (SDM 11.4.7.3): everything 0, LVTs masked, SVR 0xFF
        (software disabled), DFR all ones; the ID and APIC base stay."""
        with self._state:
            self.irr = self.isr = self.tmr = 0  # 256-bit sets, one bit per vector
            self.tpr = self.ldr = self.esr = self.icr = 0
            self.dfr = 0xFFFF_FFFF
            self.svr = 0xFF
            self.lvt = dict.fromkeys(LVTS, _RESET_LVT)
            self.dcr = 0
            self.initial = 0
            self._start = 0  # guest time the count was loaded
            self.tsc_deadline = 0
            self._nmi = False
            self._timer.cancel()

    def virtual_wire(self) -> None:
        """What a PC BIOS leaves on the BSP (SeaBIOS's ``localapic_setup``): the APIC
        software enabled, LINT0 ExtINT (the 8259A's INTR, level) and LINT1 NMI, both
        unmasked, so the PIC reaches the CPU until the kernel programs the APIC."""
        with self._state:
            self.svr |= SVR_ENABLE
            self.lvt[LVT_LINT0] = EXTINT << 8 | LVT_LEVEL
            self.lvt[LVT_LINT1] = NMI << 8 | LVT_LEVEL
        self._notify()

    def accepts_pic(self) -> bool:
        """Is the 8259A's INTR taken (virtual wire)? When LINT0 is unmasked ExtINT, or
        the APIC is hardware-disabled (IA32_APIC_BASE), which connects INTR directly.
        Read without the lock: a stale answer costs one more round of the run loop."""
        lint0 = self.lvt[LVT_LINT0]
        return not self.apic_base & APIC_BASE_ENABLE or \
            lint0 & (LVT_MASKED | 7 << 8) == EXTINT << 8

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def x2apic(self) -> bool:
        return bool(self.apic_base & APIC_BASE_X2APIC)

    def _ppr_locked(self) -> int:
        isrv = _highest(self.isr)
        isr_class = (isrv & 0xF0) if isrv is not None else 0
        return self.tpr & 0xFF if (self.tpr & 0xF0) >= isr_class else isr_class

    # -- NMI (the vCPU takes it whatever IF says) ------------------------------------
    def nmi(self) -> None:
        """An NMI arrives (an NMI IPI, LINT1): pending until the vCPU takes it; NMIs
        that come while one is pending are one (as the CPU latches one)."""
        with self._state:
            self._nmi = True
        self._notify()

    def nmi_pending(self) -> bool:
        return self._nmi  # read without the lock: a stale answer costs a round

    def take_nmi(self) -> bool:
        """The vCPU delivers the pending NMI (vector 2); False if there was none."""
        with self._state:
            taken, self._nmi = self._nmi, False
            return taken

    # -- the interrupt source (the vCPU asks) ----------------------------------------
    def pending(self) -> bool:
        """A fixed interrupt in the IRR above the processor priority. Never blocks (see
        the module docstring): the state the last locked section left."""
        return self._ready

    def _deliverable_locked(self) -> int | None:
        if not self.software_enabled or not self.apic_base & APIC_BASE_ENABLE:
            return None
        vector = _highest(self.irr)
        if vector is None or (vector & 0xF0) <= (self._ppr_locked() & 0xF0):
            return None
        return vector

    def acknowledge(self) -> int:
        """INTA: the highest deliverable IRR vector moves to the ISR; the spurious
        vector when none is left (the request went away in between)."""
        with self._state:
            vector = self._deliverable_locked()
            if vector is None:
                return self.svr & 0xFF
            self.irr &= ~(1 << vector)
            self.isr |= 1 << vector
            return vector

    def accept(self, vector: int, level: bool = False) -> None:
        """A fixed interrupt arrives (an IPI, the IOAPIC, an LVT): into the IRR, its
        trigger mode into the TMR. Vectors 0-15 are illegal: an error (ESR bit 6)."""
        with self._state:
            raised = self._accept_locked(vector, level)
        if raised:
            self._notify()

    def _accept_locked(self, vector: int, level: bool) -> bool:
        if vector < 16:
            self.esr |= 1 << 6  # received illegal vector
            return False
        bit = 1 << vector
        self.irr |= bit
        self.tmr = self.tmr | bit if level else self.tmr & ~bit
        return True

    # -- registers -------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int = 4) -> int:
        """A read at ``offset`` from the APIC base (aligned 32-bit registers on 16-byte
        boundaries; narrower reads see the register's bytes)."""
        reg, shift = offset & 0xFF0, (offset & 3) * 8
        return (self.read(reg) >> shift) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset & 0xF or size != 4:
            return  # the SDM leaves unaligned/narrow writes undefined: ignored
        self.write(offset & 0xFF0, value & 0xFFFF_FFFF)

    def read(self, reg: int) -> int:
        with self._state:
            return self._read_locked(reg)

    def _read_locked(self, reg: int) -> int:
        if reg == ID:
            return self.apic_id if self.x2apic else self.apic_id << 24
        if reg == VER:
            return VERSION | (MAX_LVT << 16)
        if reg == TPR:
            return self.tpr
        if reg == PPR:
            return self._ppr_locked()
        if reg in (LDR, DFR, SVR, ESR):
            return {LDR: self.ldr, DFR: self.dfr, SVR: self.svr, ESR: self.esr}[reg]
        for base, bits in ((ISR, self.isr), (TMR, self.tmr), (IRR, self.irr)):
            if base <= reg < base + 0x80:
                return (bits >> (32 * ((reg - base) >> 4))) & 0xFFFF_FFFF
        if reg == ICR_LO:
            return self.icr & 0xFFFF_FFFF & ~(1 << 12)  # delivery status: always idle
        if reg == ICR_HI:
            return self.icr >> 32
        if reg in self.lvt:
            return self.lvt[reg]
        if reg == TIMER_INITIAL:
            return self.initial
        if reg == TIMER_CURRENT:
            return self._current_count_locked()
        if reg == TIMER_DIVIDE:
            return self.dcr
        return 0  # APR, RRD and the reserved registers

    def write(self, reg: int, value: int) -> None:
        actions: list[Callable[[], None]] = []
        with self._state:
            self._write_locked(reg, value, actions)
        for action in actions:
            action()

    def _write_locked(self, reg: int, value: int, actions: list) -> None:
        if reg == TPR:
            self.tpr = value & 0xFF
            actions.append(self._notify)  # a lower priority may unblock the IRR
        elif reg == EOI:
            self._eoi_locked(actions)
        elif reg == LDR:
            self.ldr = value & 0xFF00_0000
        elif reg == DFR:
            self.dfr = value | 0x0FFF_FFFF
        elif reg == SVR:
            self._write_svr_locked(value, actions)
        elif reg == ESR:
            self.esr = 0  # a write clears the errors (SDM: latched on write)
        elif reg == ICR_HI:
            self.icr = (self.icr & 0xFFFF_FFFF) | ((value & 0xFF00_0000) << 32)
        elif reg == ICR_LO:
            self.icr = (self.icr & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF)
            ipi = self._ipi_locked(self.icr >> 56 if not self.x2apic else self.icr >> 32)
            actions.append(lambda: self._send(ipi))
        elif reg in self.lvt:
            self._write_lvt_locked(reg, value)
            actions.append(self._notify)  # an unmasked LINT0 may let the PIC's INTR in
        elif reg == TIMER_INITIAL:
            self._load_count_locked(value)
        elif reg == TIMER_DIVIDE:
            self._rescale_locked(value & 0xB)
        elif reg == SELF_IPI and self.x2apic and self._accept_locked(value & 0xFF, False):
            actions.append(self._notify)

    def _write_svr_locked(self, value: int, actions: list) -> None:
        self.svr = value & 0x1FFF
        if not self.software_enabled:  # disabling masks every LVT (SDM 11.4.7.2)
            self.lvt = {reg: v | LVT_MASKED for reg, v in self.lvt.items()}
        actions.append(self._notify)

    def _write_lvt_locked(self, reg: int, value: int) -> None:
        if not self.software_enabled:
            value |= LVT_MASKED  # cannot be unmasked while software disabled
        if reg == LVT_TIMER:
            old_mode = self._timer_mode_locked()
            self.lvt[reg] = value & 0x7_10FF
            if self._timer_mode_locked() != old_mode:  # a mode switch stops the timer
                self.initial, self.tsc_deadline = 0, 0
                self._timer.cancel()
        else:
            self.lvt[reg] = value & 0x1_F7FF

    def _eoi_locked(self, actions: list) -> None:
        vector = _highest(self.isr)
        if vector is None:
            return
        self.isr &= ~(1 << vector)
        if self.tmr >> vector & 1:
            actions.append(lambda: self._eoi(vector))
        actions.append(self._notify)

    def _ipi_locked(self, dest: int) -> Ipi:
        low = self.icr & 0xFFFF_FFFF
        return Ipi(source=self.apic_id, mode=(low >> 8) & 7, vector=low & 0xFF, dest=dest,
                   logical=bool(low & ICR_LOGICAL), shorthand=(low >> 18) & 3,
                   level_trigger=bool(low & ICR_LEVEL_TRIGGER),
                   assert_=bool(low & ICR_LEVEL_ASSERT))

    # -- x2APIC and the other MSRs ------------------------------------------------
    def msr_read(self, index: int) -> int | None:
        """An MSR this device owns (APIC base, TSC deadline, the x2APIC range in x2APIC
        mode), or None (not ours: the CPU's own). x2APIC's ICR is one 64-bit MSR."""
        if index == MSR_APIC_BASE:
            return self.apic_base
        if index == MSR_TSC_DEADLINE:
            return self.tsc_deadline
        if MSR_X2APIC_FIRST <= index <= MSR_X2APIC_LAST and self.x2apic:
            reg = (index - MSR_X2APIC_FIRST) << 4
            with self._state:
                return self.icr if reg == ICR_LO else self._read_locked(reg)
        return None

    def msr_write(self, index: int, value: int) -> bool:
        """True when this device took the write."""
        if index == MSR_APIC_BASE:
            with self._state:
                self.apic_base = value & (0xF_FFFF_F000 | APIC_BASE_BSP | APIC_BASE_X2APIC
                                          | APIC_BASE_ENABLE)
            return True
        if index == MSR_TSC_DEADLINE:
            with self._state:
                self._arm_deadline_locked(value)
            return True
        if MSR_X2APIC_FIRST <= index <= MSR_X2APIC_LAST and self.x2apic:
            reg = (index - MSR_X2APIC_FIRST) << 4
            if reg == ICR_LO:  # one 64-bit write sends
                with self._state:
                    self.icr = value
                    ipi = self._ipi_locked(value >> 32)
                self._send(ipi)
            else:
                self.write(reg, value & 0xFFFF_FFFF)
            return True
        return False

    # -- the timer ----------------------------------------------------------------------
    def _timer_mode_locked(self) -> int:
        return (self.lvt[LVT_TIMER] >> TIMER_MODE_SHIFT) & 3

    def _period_locked(self) -> int:
        """Guest ns of the whole initial count."""
        return self.initial * divisor(self.dcr) * SECOND // BUS_HZ

    def _load_count_locked(self, count: int) -> None:
        if self._timer_mode_locked() == TSC_DEADLINE:
            return  # the initial count is ignored in TSC-deadline mode
        self.initial = count
        self._start = self._clock.now()
        if count:
            self._timer.arm(self._start + self._period_locked())
        else:
            self._timer.cancel()

    def _rescale_locked(self, dcr: int) -> None:
        """A new divider: the count goes on from where it is, at the new rate."""
        remaining = self._current_count_locked()
        self.dcr = dcr
        if remaining and self._timer_mode_locked() != TSC_DEADLINE:
            now = self._clock.now()
            elapsed = self._period_locked() - remaining * divisor(dcr) * SECOND // BUS_HZ
            self._start = now - elapsed
            self._timer.arm(now + remaining * divisor(dcr) * SECOND // BUS_HZ)

    def _current_count_locked(self) -> int:
        if not self.initial or self._timer_mode_locked() == TSC_DEADLINE:
            return 0
        elapsed = self._clock.now() - self._start
        ticks = elapsed * BUS_HZ // SECOND // divisor(self.dcr)
        if self._timer_mode_locked() == PERIODIC:
            return self.initial - ticks % self.initial
        return max(0, self.initial - ticks)

    def _arm_deadline_locked(self, deadline: int) -> None:
        self.tsc_deadline = deadline
        if self._timer_mode_locked() != TSC_DEADLINE:
            return
        if not deadline:
            self._timer.cancel()
            return
        now_tsc = self._tsc() if self._tsc else 0
        wait = max(0, deadline - now_tsc) * SECOND // self._tsc_hz if self._tsc_hz else 0
        self._timer.arm(self._clock.now() + wait)

    def _on_timer(self, deadline: int) -> None:
        with self._state:
            mode = self._timer_mode_locked()
            if mode == PERIODIC and self.initial:
                period = self._period_locked()
                self._start = deadline
                self._timer.arm(deadline + period)
            elif mode == TSC_DEADLINE:
                self.tsc_deadline = 0
            lvt = self.lvt[LVT_TIMER]
            raised = not lvt & LVT_MASKED and self._accept_locked(lvt & 0xFF, False)
        if raised:
            self._notify()

    def local_interrupt(self, reg: int) -> None:
        """An LVT's source fired (LINT0/LINT1 pins, thermal, perf, error): a fixed
        interrupt or an NMI through that entry unless masked. ExtINT is the PIC's own
        path (``accepts_pic``); SMI and INIT through an LVT are not modelled."""
        with self._state:
            lvt = self.lvt[reg]
            mode = (lvt >> 8) & 7
            live = not lvt & LVT_MASKED
            raised = live and mode == FIXED and \
                self._accept_locked(lvt & 0xFF, bool(lvt & LVT_LEVEL))
        if live and mode == NMI:
            self.nmi()
        elif raised:
            self._notify()


class ApicBus:
    """Routes IPIs between the local APICs (``send``), and NMI, INIT and SIPI to the
    vCPUs themselves: ``signal(index, mode, vector)`` with mode NMI, INIT or SIPI (the
    vCPU goes to its NMI handler, resets into wait-for-SIPI, or starts in real mode at
    ``vector << 12``). A level-deassert INIT (the old INIT de-assert) does nothing, as
    on every CPU since the Pentium 4."""

    def __init__(self, signal: Callable[[int, int, int], None] = lambda i, m, v: None):
        self.apics: list[LocalApic] = []
        self._signal = signal

    def add(self, apic: LocalApic) -> int:
        self.apics.append(apic)
        return len(self.apics) - 1

    def targets(self, ipi: Ipi) -> list[int]:
        """The indexes of the APICs an IPI goes to."""
        everyone = range(len(self.apics))
        if ipi.shorthand == SELF:
            return [i for i in everyone if self.apics[i].apic_id == ipi.source]
        if ipi.shorthand == ALL_INCLUDING_SELF:
            return list(everyone)
        if ipi.shorthand == ALL_EXCLUDING_SELF:
            return [i for i in everyone if self.apics[i].apic_id != ipi.source]
        if ipi.logical:
            return [i for i in everyone if self._logical_match(self.apics[i], ipi.dest)]
        broadcast = 0xFFFF_FFFF if any(a.x2apic for a in self.apics) else 0xFF
        return [i for i in everyone if ipi.dest in (broadcast, self.apics[i].apic_id)]

    @staticmethod
    def _logical_match(apic: LocalApic, dest: int) -> bool:
        if apic.x2apic:  # cluster in bits 31:16, a bitmap of 16 in bits 15:0
            ldr = (apic.apic_id >> 4) << 16 | 1 << (apic.apic_id & 0xF)
            return dest >> 16 == ldr >> 16 and bool(dest & ldr & 0xFFFF)
        mda, ldr = dest & 0xFF, apic.ldr >> 24
        if apic.dfr >> 28 == 0xF:  # flat model: a bitmap
            return bool(mda & ldr)
        return mda >> 4 == ldr >> 4 and bool(mda & ldr & 0xF)  # cluster model

    def send(self, ipi: Ipi) -> None:
        targets = self.targets(ipi)
        if ipi.mode == LOWEST and targets:  # the lowest priority: the lowest TPR here
            targets = [min(targets, key=lambda i: (self.apics[i].tpr, i))]
        for i in targets:
            if ipi.mode in (FIXED, LOWEST):
                self.apics[i].accept(ipi.vector, ipi.level_trigger)
            elif ipi.mode == INIT and (ipi.assert_ or not ipi.level_trigger):
                self.apics[i].reset()
                self._signal(i, INIT, 0)
            elif ipi.mode in (NMI, SIPI):
                self._signal(i, ipi.mode, ipi.vector)


class _Locked:
    """``with apic._state``: the APIC's lock, and on release ``_ready`` recomputed from
    the state the section leaves, so ``pending`` reads a consistent answer unlocked."""

    __slots__ = ("_apic",)

    def __init__(self, apic: LocalApic):
        self._apic = apic

    def __enter__(self) -> None:
        self._apic._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        apic = self._apic
        try:
            apic._ready = apic._deliverable_locked() is not None
        finally:
            apic._lock.release()


def _highest(bits: int) -> int | None:
    return bits.bit_length() - 1 if bits else None
