"""The 8259A pair against the datasheet (and the PIIX's ELCR), driven through its
ports as a guest would, with its INTR output watched as vCPU 0 sees it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus
from stub.vmm.devices import pic as P
from stub.vmm.devices.pic import PicPair

from .helpers import CPU, FUZZ

M_CMD, M_DATA, S_CMD, S_DATA = 0x20, 0x21, 0xA0, 0xA1
EOI, READ_IRR, READ_ISR = 0x20, 0x0A, 0x0B


class Pc:
    def __init__(self, init: bool = True, icw4: int = 0x01):
        self.pic = PicPair()
        self.raised = 0
        self.pic.connect(self._notify)
        self.bus = Bus()
        for port in (P.MASTER_PORT, P.SLAVE_PORT, P.ELCR_PORT):
            self.bus.add_ports(self.pic, port, 2)
        self.lines = [self.pic.irq_line(i) for i in range(16)]
        if init:
            self.remap(0x20, 0x28, icw4)

    def _notify(self):
        # Called with no lock held: the consumer may look at the PIC at once.
        assert self.pic.pending()
        self.raised += 1

    def out(self, port, value, size=1):
        self.bus.io_out(port, size, value, CPU)

    def inp(self, port, size=1):
        return self.bus.io_in(port, size, CPU)

    def remap(self, master, slave, icw4=0x01):
        for cmd, data, base, icw3 in ((M_CMD, M_DATA, master, 0x04),
                                      (S_CMD, S_DATA, slave, 0x02)):
            self.out(cmd, 0x11)  # ICW1: edge, cascade, ICW4 follows
            self.out(data, base)
            self.out(data, icw3)
            self.out(data, icw4)
        self.out(M_DATA, 0x00)  # OCW1: everything unmasked
        self.out(S_DATA, 0x00)

    def pulse(self, irq):
        self.lines[irq].pulse()

    def reg(self, cmd, which):
        self.out(cmd, which)
        return self.inp(cmd)

    def take(self):
        assert self.pic.pending()
        return self.pic.acknowledge()


def test_power_on_state_is_what_a_bios_leaves():
    pc = Pc(init=False)
    assert pc.inp(M_DATA) == 0xFB and pc.inp(S_DATA) == 0xFF  # all masked but cascade
    pc.pulse(0)
    assert not pc.pic.pending()  # masked
    pc.out(M_DATA, 0xFA)
    assert pc.take() == 0x08  # IRQ 0 at the real-mode vector: a kernel must remap


def test_an_edge_is_requested_acknowledged_and_in_service_until_eoi():
    pc = Pc()
    assert not pc.pic.pending()
    pc.pulse(0)
    assert pc.pic.pending() and pc.raised == 1
    assert pc.reg(M_CMD, READ_IRR) == 0x01
    assert pc.take() == 0x20
    assert pc.reg(M_CMD, READ_IRR) == 0 and pc.reg(M_CMD, READ_ISR) == 0x01
    pc.pulse(0)  # the next edge waits for the EOI
    assert not pc.pic.pending()
    pc.out(M_CMD, EOI)
    assert pc.pic.pending() and pc.raised == 2
    assert pc.take() == 0x20


def test_a_line_held_high_requests_once():
    pc = Pc()
    pc.lines[1].set(True)
    assert pc.take() == 0x21
    pc.out(M_CMD, EOI)
    pc.lines[1].set(True)  # no new edge
    assert not pc.pic.pending()


def test_imr_masks_and_unmasking_raises_intr():
    pc = Pc()
    pc.out(M_DATA, 0x01)
    pc.pulse(0)
    assert not pc.pic.pending() and pc.reg(M_CMD, READ_IRR) == 0x01
    assert pc.inp(M_DATA) == 0x01
    pc.out(M_DATA, 0x00)
    assert pc.pic.pending() and pc.raised == 1


def test_priorities_and_nesting():
    pc = Pc()
    pc.pulse(3)
    pc.pulse(1)
    assert pc.take() == 0x21  # IRQ 1 before IRQ 3
    assert not pc.pic.pending()  # 3 is below the in-service 1
    pc.pulse(0)
    assert pc.take() == 0x20  # 0 nests above 1
    pc.out(M_CMD, EOI)  # non-specific: the highest in service, IRQ 0
    assert pc.reg(M_CMD, READ_ISR) == 0x02
    assert not pc.pic.pending()
    pc.out(M_CMD, 0x61)  # specific EOI for IRQ 1
    assert pc.take() == 0x23


def test_cascade_through_irq2():
    pc = Pc()
    pc.pulse(12)
    assert pc.reg(M_CMD, READ_IRR) == 0x04 and pc.reg(S_CMD, READ_IRR) == 0x10
    assert pc.take() == 0x2C
    assert pc.reg(M_CMD, READ_ISR) == 0x04 and pc.reg(S_CMD, READ_ISR) == 0x10
    pc.out(S_CMD, EOI)
    pc.out(M_CMD, EOI)
    assert pc.reg(M_CMD, READ_ISR) == 0 and pc.reg(S_CMD, READ_ISR) == 0


def test_isa_irq2_is_irq9():
    pc = Pc()
    pc.pulse(2)
    assert pc.take() == 0x29


def test_spurious_irq7_when_the_request_is_gone_at_inta():
    pc = Pc()
    pc.pulse(3)
    assert pc.pic.pending()
    pc.out(M_DATA, 0x08)  # masked between INTR and INTA
    assert pc.pic.acknowledge() == 0x27
    assert pc.reg(M_CMD, READ_ISR) == 0  # a spurious IRQ 7 is not in service


def test_spurious_irq7_when_a_level_request_drops():
    pc = Pc()
    pc.out(P.ELCR_PORT, 0x20)  # IRQ 5 level-triggered
    pc.lines[5].set(True)
    assert pc.pic.pending()
    pc.lines[5].set(False)
    assert not pc.pic.pending()
    assert pc.pic.acknowledge() == 0x27


def test_spurious_irq15_when_the_slave_request_is_gone():
    pc = Pc()
    pc.pulse(10)
    pc.out(S_DATA, 0x04)  # the slave's IR2 masked after it raised INT
    assert pc.pic.pending()  # the master latched the cascade's edge
    assert pc.pic.acknowledge() == 0x2F
    assert pc.reg(M_CMD, READ_ISR) == 0x04 and pc.reg(S_CMD, READ_ISR) == 0
    pc.out(M_CMD, EOI)  # the handler of a spurious IRQ 15 EOIs the master only


def test_level_triggered_requests_again_after_eoi_while_high():
    pc = Pc()
    pc.out(P.ELCR_PORT + 1, 0x08)  # IRQ 11
    pc.lines[11].set(True)
    assert pc.take() == 0x2B
    pc.out(S_CMD, EOI)
    pc.out(M_CMD, EOI)
    assert pc.take() == 0x2B  # still high: requested again
    pc.lines[11].set(False)  # the handler makes the device drop its request, then EOIs
    pc.out(S_CMD, EOI)
    pc.out(M_CMD, EOI)
    assert not pc.pic.pending()


def test_elcr_fixed_edge_bits():
    pc = Pc()
    pc.out(P.ELCR_PORT, 0xFFFF, size=2)  # one 16-bit write reaches both
    assert pc.inp(P.ELCR_PORT) == 0xF8 and pc.inp(P.ELCR_PORT + 1) == 0xDE
    assert pc.inp(P.ELCR_PORT, size=2) == 0xDEF8


def test_auto_eoi():
    pc = Pc(icw4=0x03)
    pc.pulse(4)
    assert pc.take() == 0x24
    assert pc.reg(M_CMD, READ_ISR) == 0
    pc.pulse(4)
    assert pc.take() == 0x24  # no EOI needed


def test_rotate_on_non_specific_eoi():
    pc = Pc()
    pc.pulse(0)
    assert pc.take() == 0x20
    pc.out(M_CMD, 0xA0)  # rotate on non-specific EOI: IRQ 0 becomes the lowest
    pc.pulse(0)
    pc.pulse(5)
    assert pc.take() == 0x25


def test_set_priority():
    pc = Pc()
    pc.out(M_CMD, 0xC0 | 4)  # IRQ 4 lowest, so IRQ 5 highest
    pc.pulse(3)
    pc.pulse(6)
    assert pc.take() == 0x26


def test_special_mask_mode_lets_lower_levels_in():
    pc = Pc()
    pc.pulse(1)
    assert pc.take() == 0x21
    pc.pulse(4)
    assert not pc.pic.pending()
    pc.out(M_DATA, 0x02)  # mask the in-service level
    pc.out(M_CMD, 0x68)  # OCW3: special mask mode on
    assert pc.pic.pending() and pc.take() == 0x24
    pc.out(M_CMD, 0x48)  # off again


def test_poll_mode():
    pc = Pc()
    pc.out(M_DATA, 0xFF)  # polling works with interrupts masked at the CPU... and IMR
    pc.out(M_DATA, 0x00)
    pc.out(M_CMD, 0x0C)  # OCW3: poll
    assert pc.inp(M_CMD) == 0x00  # nothing requesting
    pc.pulse(6)
    pc.out(M_CMD, 0x0C)
    assert pc.inp(M_CMD) == 0x86  # the poll acknowledged IRQ 6
    assert pc.reg(M_CMD, READ_ISR) == 0x40


def test_icw1_resets_masks_and_service():
    pc = Pc()
    pc.pulse(1)
    pc.take()
    pc.out(M_DATA, 0x55)
    pc.pulse(3)
    pc.out(M_CMD, 0x11)
    assert pc.inp(M_DATA) == 0x00  # IMR cleared at once
    assert pc.pic.master.isr == 0 and pc.pic.master.irr == 0
    pc.out(M_DATA, 0x40)
    pc.out(M_DATA, 0x04)
    pc.out(M_DATA, 0x01)
    assert pc.inp(M_DATA) == 0x00  # IMR cleared
    pc.pulse(3)
    assert pc.take() == 0x43


def test_single_mode_skips_icw3():
    pc = Pc()
    pc.out(M_CMD, 0x13)  # single, ICW4 follows
    pc.out(M_DATA, 0x50)
    pc.out(M_DATA, 0x02)  # ICW4 (auto-EOI), not ICW3
    assert pc.pic.master.auto_eoi and pc.pic.master.init_step == 0
    pc.pulse(1)
    assert pc.take() == 0x51


def test_odd_sequences_restart_and_mcs80_mode_delivers_as_8086():
    pc = Pc()
    pc.out(M_CMD, 0x11)
    pc.out(M_DATA, 0x30)
    pc.out(M_CMD, 0x10)  # ICW1 again, mid-sequence, no ICW4 (MCS-80 mode)
    pc.out(M_DATA, 0x60)
    pc.out(M_DATA, 0x04)
    pc.out(M_DATA, 0xFE)  # that is OCW1 now
    pc.pulse(0)
    assert pc.take() == 0x60


def test_notify_only_on_a_rising_intr():
    pc = Pc()
    pc.pulse(5)
    pc.pulse(3)  # INTR was already high
    assert pc.raised == 1


@given(st.lists(st.one_of(
    st.tuples(st.just("out"), st.sampled_from([M_CMD, M_DATA, S_CMD, S_DATA, 0x4D0, 0x4D1]),
              st.integers(0, 0xFF)),
    st.tuples(st.just("in"), st.sampled_from([M_CMD, M_DATA, S_CMD, S_DATA, 0x4D0, 0x4D1]),
              st.just(0)),
    st.tuples(st.just("irq"), st.integers(0, 15), st.booleans()),
    st.tuples(st.just("inta"), st.just(0), st.just(0))), max_size=60))
@FUZZ
def test_any_programming_is_harmless(ops):
    pc = Pc(init=False)
    for op, a, b in ops:
        if op == "out":
            pc.out(a, b)
        elif op == "in":
            assert 0 <= pc.inp(a) <= 0xFF
        elif op == "irq":
            pc.lines[a].set(b)
        else:
            pending = pc.pic.pending()
            vector = pc.pic.acknowledge()
            assert 0 <= vector <= 0xFF
            if not pending:  # nothing requested: the spurious vector of the master
                assert vector & 7 == 7
    for chip in (pc.pic.master, pc.pic.slave):
        assert all(0 <= r <= 0xFF for r in (chip.irr, chip.isr, chip.imr, chip.elcr))


def test_irq_lines_exist_for_isa_irqs_only():
    with pytest.raises(ValueError):
        PicPair().irq_line(16)
