"""CMOS RAM and RTC against the MC146818A data sheet and the PC/QEMU layout."""

from __future__ import annotations

import calendar

from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus
from stub.vmm.devices import cmos as M
from stub.vmm.devices.cmos import Cmos

from .helpers import CPU, FUZZ

# Tuesday 2023-11-14 22:13:20 UTC
T0 = calendar.timegm((2023, 11, 14, 22, 13, 20))


class Rtc:
    def __init__(self, ram_size=128 << 20, now=T0):
        self.now = now
        self.dev = Cmos(ram_size, lambda: self.now)
        self.bus = Bus()
        self.bus.add_ports(self.dev, M.INDEX, 2)

    def read(self, reg):
        self.bus.io_out(M.INDEX, 1, reg, CPU)
        return self.bus.io_in(M.DATA, 1, CPU)

    def write(self, reg, value):
        self.bus.io_out(M.INDEX, 1, reg, CPU)
        self.bus.io_out(M.DATA, 1, value, CPU)

    def clock(self):
        return [self.read(r) for r in (M.SEC, M.MIN, M.HOUR, M.WDAY, M.MDAY, M.MON, M.YEAR,
                                       M.CENTURY)]


def test_time_in_bcd_24_hours_by_default():
    rtc = Rtc(now=T0 + 0.75)  # fractions of a second do not count
    assert rtc.clock() == [0x20, 0x13, 0x22, 0x03, 0x14, 0x11, 0x23, 0x20]
    assert rtc.read(M.B) == M.H24


def test_binary_and_12_hour_formats_follow_status_b():
    rtc = Rtc()
    rtc.write(M.B, M.BINARY | M.H24)
    assert rtc.clock() == [20, 13, 22, 3, 14, 11, 23, 20]
    rtc.write(M.B, M.BINARY)
    assert rtc.read(M.HOUR) == 10 | M.PM
    rtc.write(M.B, 0)
    assert rtc.read(M.HOUR) == 0x10 | M.PM
    rtc.now = calendar.timegm((2023, 11, 14, 0, 5, 0))  # midnight is 12 AM
    assert rtc.read(M.HOUR) == 0x12
    rtc.now = calendar.timegm((2023, 11, 14, 12, 5, 0))  # noon is 12 PM
    assert rtc.read(M.HOUR) == 0x12 | M.PM


def test_time_follows_the_clock():
    rtc = Rtc()
    rtc.now += 3600 * 24 * 5 + 40  # Sunday 2023-11-19 22:14:00
    assert rtc.clock() == [0x00, 0x14, 0x22, 0x01, 0x19, 0x11, 0x23, 0x20]


def test_writing_a_field_sets_the_clock_as_an_offset():
    rtc = Rtc()
    rtc.write(M.YEAR, 0x24)
    rtc.write(M.MON, 0x02)
    rtc.write(M.MDAY, 0x29)  # 2024 is a leap year
    assert rtc.clock()[3:] == [0x05, 0x29, 0x02, 0x24, 0x20]  # a Thursday
    rtc.now += 60
    assert rtc.read(M.MIN) == 0x14  # the set clock runs on


def test_an_impossible_date_leaves_the_clock_alone():
    rtc = Rtc()
    before = rtc.clock()
    for reg, value in ((M.MON, 0x13), (M.SEC, 0x3A), (M.MDAY, 0x31), (M.HOUR, 0x24)):
        rtc.write(reg, value)  # November 31st does not exist either
        assert rtc.clock() == before


def test_set_bit_freezes_the_registers_and_clearing_it_sets_the_clock():
    rtc = Rtc()
    rtc.write(M.B, M.SET | M.UIE | M.H24)
    assert rtc.read(M.B) == M.SET | M.H24  # SET clears UIE
    rtc.now += 10
    assert rtc.read(M.SEC) == 0x20  # frozen
    for reg, value in ((M.SEC, 0x00), (M.MIN, 0x00), (M.HOUR, 0x08), (M.MDAY, 0x01),
                       (M.MON, 0x01), (M.YEAR, 0x00), (M.CENTURY, 0x21)):
        rtc.write(reg, value)
    assert rtc.read(M.HOUR) == 0x08
    rtc.write(M.B, M.H24)
    rtc.now += 5
    assert rtc.clock() == [0x05, 0x00, 0x08, 0x06, 0x01, 0x01, 0x00, 0x21]  # Fri 2100-01-01


def test_status_registers():
    rtc = Rtc()
    assert rtc.read(M.A) == 0x26
    rtc.write(M.A, 0xFF)
    assert rtc.read(M.A) == 0x7F  # UIP reads 0, the rest is stored
    assert rtc.read(M.D) == M.VRT
    rtc.write(M.D, 0)
    rtc.write(M.C, 0xFF)
    assert rtc.read(M.D) == M.VRT and rtc.read(M.C) == 0


def test_status_c_reports_update_ended_once_per_second_and_read_clears_it():
    rtc = Rtc()
    rtc.write(M.B, M.H24 | M.UIE)
    assert rtc.read(M.C) == 0
    rtc.now += 1
    assert rtc.read(M.C) == M.UF | M.IRQF
    assert rtc.read(M.C) == 0


def test_index_port_is_write_only_and_bit_7_disables_nmi():
    rtc = Rtc()
    rtc.bus.io_out(M.INDEX, 1, 0x80 | 0x0D, CPU)
    assert rtc.dev.nmi_disabled and rtc.bus.io_in(M.DATA, 1, CPU) == M.VRT
    assert rtc.bus.io_in(M.INDEX, 1, CPU) == 0xFF
    rtc.bus.io_out(M.INDEX, 1, 0x0D, CPU)
    assert not rtc.dev.nmi_disabled


def test_memory_size_registers_as_qemu_sets_them():
    def sizes(ram):
        rtc = Rtc(ram)
        word = lambda lo: rtc.read(lo) | rtc.read(lo + 1) << 8
        return word(0x15), word(0x17), word(0x30), word(0x34), word(0x5B) | rtc.read(0x5D) << 16

    assert sizes(32 << 20) == (640, 31 * 1024, 31 * 1024, 16 * 16, 0)
    assert sizes(128 << 20) == (640, 0xFFFF, 0xFFFF, 112 * 16, 0)
    assert sizes(512 << 10) == (640, 0, 0, 0, 0)
    assert sizes(6 << 30) == (640, 0xFFFF, 0xFFFF, 0xFF00, (2 << 30) >> 16)  # 4 GiB - 16 MiB


def test_other_bytes_are_ram():
    rtc = Rtc()
    for reg in (0x01, 0x0E, 0x0F, 0x15, 0x40, 0x7F):
        rtc.write(reg, reg ^ 0xA5)
        assert rtc.read(reg) == reg ^ 0xA5


ops = st.lists(st.tuples(st.sampled_from(["index", "data", "read", "tick"]),
                         st.integers(0, 0xFFFF)), max_size=60)


@FUZZ
@given(st.integers(-(1 << 40), 1 << 40), ops)
def test_fuzz_never_raises(start, sequence):
    rtc = Rtc(now=start)
    for kind, value in sequence:
        if kind == "index":
            rtc.bus.io_out(M.INDEX, 2, value, CPU)
        elif kind == "data":
            rtc.bus.io_out(M.DATA, 1, value, CPU)
        elif kind == "read":
            rtc.bus.io_in(M.DATA, 4, CPU)
        else:
            rtc.now += value
        assert rtc.read(M.D) == M.VRT and not rtc.read(M.A) & M.UIP
