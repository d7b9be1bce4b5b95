"""The 8254 PIT and port 0x61 against the datasheet, on a guest clock the test moves
(``ManualClock``): every count below is exact."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus
from stub.vmm.clock import SECOND, ManualClock
from stub.vmm.devices import pit as T
from stub.vmm.devices.pit import FREQ, MIN_IRQ_PERIOD, Pit

from .helpers import CPU, FUZZ, RecordingLine

CH0, CH2, CONTROL, PORT_B = 0x40, 0x42, 0x43, 0x61


def ns(ticks: int) -> int:
    """Guest ns by which ``ticks`` PIT ticks have surely been counted."""
    return -(-ticks * SECOND // FREQ)


class Board:
    def __init__(self):
        self.clock = ManualClock()
        self.line = RecordingLine()
        self.pit = Pit(self.clock, self.line)
        self.bus = Bus()
        self.bus.add_ports(self.pit, T.PORT, 4)
        self.bus.add_ports(self.pit, T.PORT_B)
        self.t = 0

    def out(self, port, value):
        self.bus.io_out(port, 1, value, CPU)

    def inp(self, port):
        return self.bus.io_in(port, 1, CPU)

    def program(self, channel, mode, count, access=3, bcd=False):
        self.out(CONTROL, channel << 6 | access << 4 | mode << 1 | bcd)
        if access & 1:
            self.out(CH0 + channel, count & 0xFF)
        if access & 2:
            self.out(CH0 + channel, count >> 8)

    def to(self, ticks):
        """Move guest time to ``ticks`` PIT ticks after the test began."""
        target = ns(ticks)
        self.clock.advance(target - self.clock.now())

    def irqs(self):
        return self.line.history.count(True)

    def read16(self, channel):
        lo = self.inp(CH0 + channel)
        return lo | self.inp(CH0 + channel) << 8

    def latched(self, channel):
        self.out(CONTROL, channel << 6)  # counter latch command
        return self.read16(channel)


def test_mode2_rate_generator_interrupts_every_count():
    b = Board()
    b.program(0, 2, 1000)
    b.to(999)
    assert b.irqs() == 0
    for k in range(1, 6):
        b.to(1000 * k)
        assert b.irqs() == k
    assert b.line.history[-2:] == [True, False]  # an edge: the PIC latches it


def test_mode2_counter_values():
    b = Board()
    b.program(0, 2, 1000)
    assert b.latched(0) == 1000
    b.to(1)
    assert b.latched(0) == 999
    b.to(999)
    assert b.latched(0) == 1
    b.to(1000)
    assert b.latched(0) == 1000  # reloaded


def test_count_zero_is_65536():
    b = Board()
    b.program(0, 2, 0)
    assert b.latched(0) == 0
    b.to(1)
    assert b.latched(0) == 0xFFFF
    b.to(65535)
    assert b.irqs() == 0
    b.to(65536)
    assert b.irqs() == 1


def test_mode0_interrupt_on_terminal_count_once():
    b = Board()
    b.program(0, 0, 500)
    b.out(CONTROL, 0xE2)  # read-back: status of channel 0
    assert b.inp(CH0) & 0x80 == 0  # OUT low while counting
    b.to(500)
    assert b.irqs() == 1
    b.to(5000)
    assert b.irqs() == 1  # once
    b.out(CONTROL, 0xE2)
    assert b.inp(CH0) == 0x80 | 0x30 | 0 << 1  # OUT high, count loaded, lo/hi, mode 0
    b.to(5000 + 1)
    assert b.latched(0) == (500 - 5001) % 0x10000  # counts on, wrapping


def test_mode3_square_wave_counts_by_two():
    b = Board()
    b.program(0, 3, 1000)
    b.to(100)
    assert b.latched(0) == 800
    for k in (1, 2, 3):
        b.to(1000 * k)
        assert b.irqs() == k
    b.to(10_000)  # the timer thread was late: one edge, the missed ones skipped
    assert b.irqs() == 4


def test_control_word_stops_a_channel_and_cancels_its_interrupt():
    b = Board()
    b.program(0, 2, 1000)
    b.to(500)
    b.out(CONTROL, 0x34)  # reprogrammed, count not yet written
    b.to(5000)
    assert b.irqs() == 0
    b.out(CH0, 0xE8)
    b.out(CH0, 0x03)  # 1000 again, from now
    b.clock.advance(ns(999))
    assert b.irqs() == 0
    b.clock.advance(ns(1))
    assert b.irqs() == 1


def test_latch_holds_until_read_and_a_second_latch_is_ignored():
    b = Board()
    b.program(0, 2, 1000)
    b.to(10)
    b.out(CONTROL, 0x00)
    b.to(20)
    b.out(CONTROL, 0x00)  # ignored: the first is unread
    assert b.read16(0) == 990
    assert b.latched(0) == 980


def test_lobyte_then_hibyte_reads_of_the_live_counter_alternate():
    b = Board()
    b.program(0, 2, 0x1234)
    assert (b.inp(CH0), b.inp(CH0)) == (0x34, 0x12)
    assert b.inp(CH0) == 0x34  # and again from the low byte


def test_lobyte_only_and_hibyte_only_access():
    b = Board()
    b.program(0, 2, 0x40, access=1)
    assert b.inp(CH0) == 0x40 and b.inp(CH0) == 0x40
    b.program(0, 2, 0x1200, access=2)
    assert b.inp(CH0) == 0x12
    b.to(0x100)
    assert b.inp(CH0) == 0x11


def test_bcd_counting():
    b = Board()
    b.program(0, 2, 0x1000, bcd=True)  # 1000 decimal
    b.to(1)
    assert b.latched(0) == 0x0999
    b.to(1000)
    assert b.irqs() == 1
    b.program(0, 0, 0, bcd=True)  # 0 is 10000 in BCD
    assert b.latched(0) == 0x0000


def test_channel2_is_gated_by_port_61_and_its_out_is_bit_5():
    b = Board()
    b.program(2, 0, 1000)
    b.to(2000)
    assert b.latched(2) == 1000  # gate low: not counting
    assert not b.inp(PORT_B) & 0x20
    b.out(PORT_B, 0x01)  # gate on, speaker off
    start = b.clock.now()
    b.clock.advance(ns(999))
    assert not b.inp(PORT_B) & 0x20
    b.clock.advance(start + ns(1000) - b.clock.now())
    assert b.inp(PORT_B) & 0x21 == 0x21  # terminal count: OUT high; gate reads back
    assert b.irqs() == 0  # channel 2 drives no IRQ


def test_gate_low_pauses_mode0_and_reloads_mode2():
    b = Board()
    b.out(PORT_B, 0x01)
    b.program(2, 0, 1000)
    b.to(100)
    b.out(PORT_B, 0x00)
    b.to(5000)
    assert b.latched(2) == 900  # paused
    b.out(PORT_B, 0x01)
    b.clock.advance(ns(10))
    assert b.latched(2) == 890  # resumed
    b.program(2, 2, 1000)
    b.clock.advance(ns(300))
    b.out(PORT_B, 0x00)
    b.out(PORT_B, 0x01)  # a rising gate reloads mode 2
    assert b.latched(2) == 1000


def test_mode1_starts_on_the_gates_rising_edge():
    b = Board()
    b.program(2, 1, 100)
    b.to(1000)
    assert b.inp(PORT_B) & 0x20  # OUT high until triggered
    b.out(PORT_B, 0x01)
    assert not b.inp(PORT_B) & 0x20  # one-shot running: OUT low
    b.clock.advance(ns(100))
    assert b.inp(PORT_B) & 0x20


def test_refresh_toggle_flips_on_every_read():
    b = Board()
    bits = [b.inp(PORT_B) & 0x10 for _ in range(4)]
    assert bits[0] != bits[1] and bits[0] == bits[2] and bits[1] == bits[3]
    b.out(PORT_B, 0x0F)
    assert b.inp(PORT_B) & 0x0F == 0x0F and not b.inp(PORT_B) & 0xC0


def test_read_back_latches_several_channels():
    b = Board()
    b.program(0, 2, 1000)
    b.out(PORT_B, 0x01)
    b.program(2, 2, 2000)
    b.to(10)
    b.out(CONTROL, 0xC0 | 0x10 | 0x02 | 0x08)  # count only, channels 0 and 2
    b.to(20)
    assert b.read16(0) == 990 and b.read16(2) == 1990


def test_a_tiny_count_is_rate_limited():
    b = Board()
    b.program(0, 2, 2)
    for _ in range(200):
        b.clock.advance(ns(2))
    elapsed = b.clock.now()
    assert b.irqs() <= elapsed // MIN_IRQ_PERIOD + 1
    assert b.irqs() >= elapsed // MIN_IRQ_PERIOD - 1


def test_unprogrammed_channels_read_zero_and_the_control_port_all_ones():
    b = Board()
    assert b.inp(CH0) == 0 and b.inp(CONTROL) == 0xFF


@given(st.lists(st.one_of(
    st.tuples(st.just("out"), st.sampled_from([0x40, 0x41, 0x42, 0x43, 0x61]),
              st.integers(0, 0xFF)),
    st.tuples(st.just("in"), st.sampled_from([0x40, 0x41, 0x42, 0x43, 0x61]), st.just(0)),
    st.tuples(st.just("time"), st.just(0), st.integers(0, 10 * SECOND // 1000))),
    max_size=60))
@FUZZ
def test_any_programming_is_harmless(ops):
    b = Board()
    for op, port, value in ops:
        if op == "out":
            b.out(port, value)
        elif op == "in":
            assert 0 <= b.inp(port) <= 0xFF
        else:
            b.clock.advance(value)
