"""The local APIC model (stub/vmm/devices/lapic.py) on its own, against the SDM, on a
guest clock the test moves (``ManualClock``): priorities, EOI, the timer's three modes,
the ICR and its routing, x2APIC MSRs."""

from __future__ import annotations

import pytest

from stub.vmm.clock import ManualClock
from stub.vmm.devices import lapic as L
from stub.vmm.devices.lapic import ApicBus, LocalApic


class Board:
    """APICs 0..n-1 on one ApicBus, recording kicks, EOIs and signals."""

    def __init__(self, n: int = 1, tsc_hz: int = 1_000_000_000):
        self.clock = ManualClock()
        self.kicks = [0] * n
        self.eois: list[int] = []
        self.signals: list[tuple[int, int, int]] = []
        self.tsc_base = 10_000
        self.bus = ApicBus(lambda i, m, v: self.signals.append((i, m, v)))
        for i in range(n):
            self.bus.add(LocalApic(i, self.clock, bsp=i == 0,
                                   notify=lambda i=i: self._kick(i), send=self.bus.send,
                                   eoi=self.eois.append, tsc=self.tsc, tsc_hz=tsc_hz))

    def _kick(self, i: int) -> None:
        self.kicks[i] += 1

    def tsc(self) -> int:  # the TSC runs with guest time here: 1 tick per ns
        return self.tsc_base + self.clock.now()

    def apic(self, i: int = 0) -> LocalApic:
        apic = self.bus.apics[i]
        if not apic.software_enabled:
            apic.write(L.SVR, L.SVR_ENABLE | 0xFF)
        return apic


def test_reset_state():
    apic = LocalApic(3, ManualClock(), bsp=True)
    assert apic.mmio_read(L.ID) == 3 << 24
    assert apic.mmio_read(L.VER) == 0x14 | 6 << 16
    assert apic.mmio_read(L.SVR) == 0xFF and not apic.software_enabled
    assert all(apic.mmio_read(r) == L.LVT_MASKED for r in L.LVTS)
    assert apic.mmio_read(L.DFR) == 0xFFFF_FFFF
    assert apic.msr_read(L.MSR_APIC_BASE) == 0xFEE0_0000 | 1 << 11 | 1 << 8


def test_software_disabled_apic_delivers_nothing_and_keeps_lvts_masked():
    apic = LocalApic(0, ManualClock())
    apic.accept(0x40)
    assert not apic.pending()
    apic.write(L.LVT_TIMER, 0x30)
    assert apic.read(L.LVT_TIMER) & L.LVT_MASKED
    apic.write(L.SVR, L.SVR_ENABLE | 0xFF)
    assert apic.pending() and apic.acknowledge() == 0x40


def test_priority_ack_and_eoi():
    board = Board()
    apic = board.apic()
    apic.accept(0x31)
    apic.accept(0x51)
    assert apic.acknowledge() == 0x51
    assert apic.read(L.ISR + 0x20) == 1 << (0x51 - 0x40)  # ISR bits 64-95
    assert apic.read(L.PPR) == 0x50
    assert not apic.pending()  # 0x31's class 3 is below the in-service class 5
    apic.write(L.EOI, 0)
    assert apic.read(L.PPR) == 0 and apic.pending()
    assert apic.acknowledge() == 0x31
    assert board.eois == []  # edge-triggered: no EOI message


def test_tpr_blocks_classes_at_or_below_it():
    apic = Board().apic()
    apic.write(L.TPR, 0x40)
    apic.accept(0x41)
    assert not apic.pending() and apic.acknowledge() == 0xFF  # the spurious vector
    apic.accept(0x51)
    assert apic.acknowledge() == 0x51
    apic.write(L.EOI, 0)
    assert not apic.pending()  # the TPR still holds 0x41 back
    apic.write(L.TPR, 0)
    assert apic.acknowledge() == 0x41


def test_level_triggered_eoi_is_broadcast():
    board = Board()
    apic = board.apic()
    apic.accept(0x60, level=True)
    assert apic.read(L.TMR + 0x30) == 1  # vector 96
    apic.acknowledge()
    apic.write(L.EOI, 0)
    assert board.eois == [0x60]


def test_illegal_vector_sets_esr():
    apic = Board().apic()
    apic.accept(7)
    assert apic.read(L.ESR) == 1 << 6 and not apic.pending()
    apic.write(L.ESR, 0)
    assert apic.read(L.ESR) == 0


@pytest.mark.parametrize("dcr, div", [(0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32),
                                      (0x9, 64), (0xA, 128), (0xB, 1)])
def test_divider(dcr, div):
    assert L.divisor(dcr) == div


def test_one_shot_timer_counts_down_and_fires_once():
    board = Board()
    apic = board.apic()
    apic.write(L.TIMER_DIVIDE, 0x0)  # divide by 2: one count per 2 ns
    apic.write(L.LVT_TIMER, 0x30)
    apic.write(L.TIMER_INITIAL, 500)
    board.clock.advance(400)
    assert apic.read(L.TIMER_CURRENT) == 300 and not apic.pending()
    board.clock.advance(600)
    assert apic.read(L.TIMER_CURRENT) == 0 and apic.acknowledge() == 0x30
    apic.write(L.EOI, 0)
    board.clock.advance(10_000)
    assert not apic.pending()


def test_periodic_timer_fires_every_period():
    board = Board()
    apic = board.apic()
    apic.write(L.TIMER_DIVIDE, 0xB)
    apic.write(L.LVT_TIMER, 0x31 | L.PERIODIC << L.TIMER_MODE_SHIFT)
    apic.write(L.TIMER_INITIAL, 1000)
    fired = 0
    for _ in range(5):
        board.clock.advance(1000)
        if apic.pending():
            fired += 1
            apic.acknowledge()
            apic.write(L.EOI, 0)
    assert fired == 5
    board.clock.advance(250)
    assert apic.read(L.TIMER_CURRENT) == 750


def test_masked_timer_counts_but_raises_nothing():
    board = Board()
    apic = board.apic()
    apic.write(L.TIMER_DIVIDE, 0xB)
    apic.write(L.LVT_TIMER, 0x32 | L.LVT_MASKED)
    apic.write(L.TIMER_INITIAL, 100)
    board.clock.advance(50)
    assert apic.read(L.TIMER_CURRENT) == 50
    board.clock.advance(100)
    assert not apic.pending()


def test_tsc_deadline_timer():
    board = Board()
    apic = board.apic()
    apic.write(L.LVT_TIMER, 0x33 | L.TSC_DEADLINE << L.TIMER_MODE_SHIFT)
    apic.write(L.TIMER_INITIAL, 5)  # ignored in this mode
    assert apic.read(L.TIMER_CURRENT) == 0
    apic.msr_write(L.MSR_TSC_DEADLINE, board.tsc() + 500)
    board.clock.advance(499)
    assert not apic.pending()
    board.clock.advance(1)
    assert apic.acknowledge() == 0x33 and apic.msr_read(L.MSR_TSC_DEADLINE) == 0
    apic.msr_write(L.MSR_TSC_DEADLINE, board.tsc() + 100)
    apic.msr_write(L.MSR_TSC_DEADLINE, 0)  # disarms
    board.clock.advance(1000)
    assert apic.read(L.IRR + 0x10) == 0


def test_timer_mode_switch_stops_the_timer():
    board = Board()
    apic = board.apic()
    apic.write(L.TIMER_DIVIDE, 0xB)
    apic.write(L.LVT_TIMER, 0x34)
    apic.write(L.TIMER_INITIAL, 100)
    apic.write(L.LVT_TIMER, 0x34 | L.TSC_DEADLINE << L.TIMER_MODE_SHIFT)
    board.clock.advance(1000)
    assert not apic.pending()


def test_fixed_ipi_by_physical_destination():
    board = Board(3)
    for i in range(3):
        board.apic(i)
    sender = board.apic(0)
    kicks = list(board.kicks)
    sender.write(L.ICR_HI, 2 << 24)
    sender.write(L.ICR_LO, 0x45)
    assert board.kicks == [kicks[0], kicks[1], kicks[2] + 1]
    assert board.apic(2).acknowledge() == 0x45 and not board.apic(1).pending()
    assert sender.read(L.ICR_LO) == 0x45 and sender.read(L.ICR_HI) == 2 << 24


@pytest.mark.parametrize("shorthand, targets", [(L.SELF, [0]), (L.ALL_INCLUDING_SELF, [0, 1, 2]),
                                                (L.ALL_EXCLUDING_SELF, [1, 2])])
def test_shorthands(shorthand, targets):
    board = Board(3)
    apics = [board.apic(i) for i in range(3)]
    apics[0].write(L.ICR_LO, 0x46 | shorthand << 18)
    assert [i for i in range(3) if apics[i].pending()] == targets


def test_broadcast_and_logical_flat_destinations():
    board = Board(3)
    apics = [board.apic(i) for i in range(3)]
    apics[0].write(L.ICR_HI, 0xFF << 24)
    apics[0].write(L.ICR_LO, 0x47)
    assert all(a.pending() for a in apics)
    board2 = Board(3)
    apics = [board2.apic(i) for i in range(3)]
    for i, apic in enumerate(apics):
        apic.write(L.LDR, (1 << i) << 24)
    apics[0].write(L.ICR_HI, 0b110 << 24)
    apics[0].write(L.ICR_LO, 0x48 | L.ICR_LOGICAL)
    assert [a.pending() for a in apics] == [False, True, True]


def test_lowest_priority_picks_the_lowest_tpr():
    board = Board(3)
    apics = [board.apic(i) for i in range(3)]
    apics[0].write(L.TPR, 0x20)
    apics[2].write(L.TPR, 0x10)
    apics[1].write(L.TPR, 0x30)
    apics[0].write(L.ICR_LO, 0x49 | L.LOWEST << 8 | L.ALL_INCLUDING_SELF << 18)
    assert [a.pending() for a in apics] == [False, False, True]


def test_init_and_sipi_reach_the_vcpu():
    board = Board(2)
    bsp = board.apic(0)
    ap = board.apic(1)
    ap.write(L.TPR, 0x20)
    bsp.write(L.ICR_HI, 1 << 24)
    bsp.write(L.ICR_LO, L.INIT << 8 | L.ICR_LEVEL_ASSERT)
    assert board.signals == [(1, L.INIT, 0)]
    assert ap.read(L.TPR) == 0 and not ap.software_enabled  # INIT resets the APIC
    assert ap.read(L.ID) == 1 << 24  # but keeps its ID
    bsp.write(L.ICR_LO, L.INIT << 8 | L.ICR_LEVEL_TRIGGER)  # de-assert: ignored
    bsp.write(L.ICR_LO, L.SIPI << 8 | 0x9A)
    bsp.write(L.ICR_LO, L.NMI << 8)
    assert board.signals == [(1, L.INIT, 0), (1, L.SIPI, 0x9A), (1, L.NMI, 0)]


def test_x2apic_msrs():
    board = Board(2)
    apics = [board.apic(i) for i in range(2)]
    assert apics[0].msr_read(0x802) is None  # xAPIC mode: the x2APIC range is not there
    for apic in apics:
        apic.msr_write(L.MSR_APIC_BASE, apic.apic_base | L.APIC_BASE_X2APIC)
    assert apics[1].msr_read(0x802) == 1  # the ID, unshifted
    assert apics[0].msr_write(0x830, 1 << 32 | 0x50)  # ICR: one 64-bit write sends
    assert apics[1].acknowledge() == 0x50
    apics[1].msr_write(0x83F, 0x61)  # SELF IPI (a class above the one in service)
    assert apics[1].acknowledge() == 0x61
    apics[1].msr_write(0x80B, 0)  # EOI
    assert apics[1].msr_read(0x80A) == 0x50  # PPR: 0x50 still in service
    assert apics[0].msr_read(0x1234) is None and not apics[0].msr_write(0x1234, 0)


def test_mmio_narrow_reads_and_ignored_odd_writes():
    apic = Board().apic()
    assert apic.mmio_read(L.VER + 2, 1) == 6  # the max-LVT byte
    apic.mmio_write(L.TPR + 1, 4, 0x40)
    apic.mmio_write(L.TPR, 2, 0x40)
    assert apic.mmio_read(L.TPR) == 0
    apic.mmio_write(L.TPR, 4, 0x40)
    assert apic.mmio_read(L.TPR) == 0x40


def test_lint_pin_through_its_lvt():
    apic = Board().apic()
    apic.local_interrupt(L.LVT_LINT1)  # masked at reset
    assert not apic.pending()
    apic.write(L.LVT_LINT1, 0x3A | L.LVT_LEVEL)
    apic.local_interrupt(L.LVT_LINT1)
    assert apic.acknowledge() == 0x3A and apic.read(L.TMR + 0x10) == 1 << (0x3A - 0x20)


def test_pending_never_waits_for_the_apics_lock():
    """The vCPU asks ``pending`` holding the guest clock's lock, and the timer code
    takes the clock's lock holding the APIC's: ``pending`` must not take the APIC's
    lock (the two would deadlock), yet answer what the last change left."""
    import threading

    apic = Board().apic()
    apic.accept(0x40)
    answers: list[bool] = []
    with apic._lock:  # another thread in the middle of a register access
        asker = threading.Thread(target=lambda: answers.append(apic.pending()))
        asker.start()
        asker.join(timeout=10)
        assert not asker.is_alive() and answers == [True]
    apic.write(L.TPR, 0x40)  # the priority now blocks it
    assert not apic.pending()
    apic.write(L.TPR, 0)
    assert apic.acknowledge() == 0x40 and not apic.pending()
