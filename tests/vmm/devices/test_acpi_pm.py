"""The ACPI PM block at 0x600 (stub/vmm/devices/acpi_pm.py): PM1_STS write-1-to-clear,
PM1_EN read back (RTC_EN: Linux's "Could not disable RealTimeClock events"), SCI_EN
always set, S5 power-off, the PM timer on guest time (a ManualClock) wrapping at 24
bits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus, PowerOff, Reset
from stub.vmm.clock import SECOND, ManualClock
from stub.vmm.devices import acpi_pm as A

from .helpers import CPU, FUZZ


def machine():
    clock, bus = ManualClock(), Bus()
    pm = A.AcpiPm(clock)
    bus.add_ports(pm, A.BASE, A.PORTS)
    return clock, bus, pm


def test_sci_en_reads_1_and_stays():
    _, bus, _ = machine()
    assert bus.io_in(0x604, 2, CPU) == A.SCI_EN
    bus.io_out(0x604, 2, 0, CPU)  # no SMI command port: ACPI mode cannot be left
    assert bus.io_in(0x604, 2, CPU) == A.SCI_EN


def test_s5_powers_off_with_status_0():
    _, bus, _ = machine()
    effect = bus.io_out(0x604, 2, 0x2000, CPU)
    assert effect == PowerOff(0, status=0) and not isinstance(effect, Reset)
    assert bus.io_out(0x604, 2, 0x2001, CPU) == PowerOff(0, status=0)  # SCI_EN kept


def test_other_control_writes_are_stored_and_slp_en_reads_0():
    _, bus, _ = machine()
    assert bus.io_out(0x604, 2, 0x0401, CPU) is None  # SLP_TYP 1, SCI_EN, no SLP_EN
    assert bus.io_out(0x604, 2, 0x2401, CPU) is None  # S3 (type 1): not supported
    assert bus.io_in(0x604, 2, CPU) == 0x0401
    bus.io_out(0x605, 1, 0x00, CPU)  # the high byte alone: type 0 now
    assert bus.io_in(0x604, 2, CPU) == 0x0001 and bus.io_in(0x605, 1, CPU) == 0x00
    assert bus.io_out(0x605, 1, 0x20, CPU) == PowerOff(0, status=0)  # SLP_EN alone


def test_pm1_en_reads_back():
    _, bus, _ = machine()
    assert bus.io_in(0x602, 2, CPU) == 0
    bits = A.TMR_EN | A.GBL_EN | A.PWRBTN_EN | A.RTC_EN
    bus.io_out(0x602, 2, bits, CPU)
    assert bus.io_in(0x602, 2, CPU) == bits
    bus.io_out(0x602, 2, bits & ~A.RTC_EN, CPU)  # what acpi_disable_event(RTC) does
    assert bus.io_in(0x602, 2, CPU) == bits & ~A.RTC_EN
    bus.io_out(0x602, 2, 0xFFFF, CPU)  # reserved bits stay 0
    assert bus.io_in(0x602, 2, CPU) == A.PM1_EN_BITS
    assert bus.io_in(0x600, 4, CPU) >> 16 == A.PM1_EN_BITS  # a dword: STS and EN


def test_pm_timer_counts_guest_time_at_3_579545_mhz():
    clock, bus, _ = machine()
    assert bus.io_in(0x608, 4, CPU) == 0
    clock.advance(SECOND)
    assert bus.io_in(0x608, 4, CPU) == 3_579_545
    clock.advance(1000)  # 1 us: 3.58 ticks
    assert bus.io_in(0x608, 4, CPU) == 3_579_548
    assert bus.io_in(0x608, 2, CPU) == 3_579_548 & 0xFFFF
    assert bus.io_in(0x60A, 1, CPU) == 3_579_548 >> 16
    assert bus.io_in(0x60B, 1, CPU) == 0  # 24 bits: the top byte is 0
    bus.io_out(0x608, 4, 0, CPU)  # read-only
    assert bus.io_in(0x608, 4, CPU) == 3_579_548


def test_pm_timer_wraps_at_24_bits():
    clock, bus, _ = machine()
    to_wrap = -(-(1 << 24) * SECOND // A.TIMER_HZ)  # the first ns at which it wraps
    clock.advance(to_wrap - 1)
    assert bus.io_in(0x608, 4, CPU) == 0xFF_FFFF
    clock.advance(1)
    assert bus.io_in(0x608, 4, CPU) == 0
    clock.advance(SECOND)
    assert bus.io_in(0x608, 4, CPU) == A.TIMER_HZ


def test_tmr_sts_sets_at_bit_23_and_clears_on_write_1():
    clock, bus, _ = machine()
    half = -(-(1 << 23) * SECOND // A.TIMER_HZ)  # bit 23 first changes here
    clock.advance(half - 1)
    assert bus.io_in(0x600, 2, CPU) == 0
    clock.advance(1)
    assert bus.io_in(0x600, 2, CPU) == A.TMR_STS
    bus.io_out(0x600, 2, ~A.TMR_STS & 0xFFFF, CPU)  # writing 0 leaves it
    assert bus.io_in(0x600, 2, CPU) == A.TMR_STS
    bus.io_out(0x600, 2, A.TMR_STS, CPU)  # write 1 to clear
    assert bus.io_in(0x600, 2, CPU) == 0
    clock.advance(half)  # bit 23 changes again (wraps to 0)
    assert bus.io_in(0x600, 2, CPU) == A.TMR_STS
    bus.io_out(0x600, 1, 0xFF, CPU)  # a byte write clears too
    assert bus.io_in(0x600, 2, CPU) == 0


def test_reset_clears_enables_and_control():
    _, bus, pm = machine()
    bus.io_out(0x602, 2, A.RTC_EN, CPU)
    bus.io_out(0x604, 2, 0x0401, CPU)
    pm.reset()
    assert bus.io_in(0x600, 4, CPU) == 0 and bus.io_in(0x604, 2, CPU) == A.SCI_EN
    assert bus.io_in(0x606, 2, CPU) == 0  # reserved


@FUZZ
@given(st.lists(st.tuples(st.integers(0x600, 0x60B), st.sampled_from([1, 2, 4]),
                          st.integers(0, 0xFFFF_FFFF), st.integers(0, SECOND)),
                max_size=40))
def test_fuzz_never_raises(sequence):
    clock, bus, _ = machine()
    for port, size, value, ns in sequence:
        clock.advance(ns)
        effect = bus.io_out(port, size, value, CPU)
        assert effect is None or effect == PowerOff(0, status=0)
        control = bus.io_in(0x604, 2, CPU)
        assert control & A.SCI_EN and not control & A.SLP_EN
        assert bus.io_in(0x608, 4, CPU) <= A.TIMER_MASK
        assert not bus.io_in(0x602, 2, CPU) & ~A.PM1_EN_BITS
