"""isa-debug-exit (0xF4) and ACPI PM1a control (0x604): what gdb and the process get."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus, PowerOff, Reset
from stub.vmm.devices import exits as E
from stub.vmm.devices.exits import AcpiPm1Control, IsaDebugExit

from .helpers import CPU, FUZZ


def machine():
    bus, pm = Bus(), AcpiPm1Control()
    bus.add_ports(IsaDebugExit(), E.DEBUG_EXIT, E.DEBUG_EXIT_PORTS)
    bus.add_ports(pm, E.PM1A_CNT, E.PM1A_CNT_PORTS)
    return bus


def test_isa_debug_exit_gives_qemus_status():
    bus = machine()
    effect = bus.io_out(0xF4, 1, 0x10, CPU)
    assert effect == PowerOff(0x10, status=0x21)  # W10, exit (0x10 << 1) | 1
    assert bus.io_out(0xF4, 4, 0, CPU) == PowerOff(0, status=1)
    assert bus.io_out(0xF7, 2, 0x1FF, CPU).status == 0xFF  # (0x1FF << 1 | 1) & 0xFF
    assert bus.io_in(0xF4, 1, CPU) == 0xFF


def test_acpi_s5_powers_off_with_status_0():
    bus = machine()
    effect = bus.io_out(0x604, 2, 0x2000, CPU)
    assert effect == PowerOff(0, status=0) and not isinstance(effect, Reset)


def test_acpi_other_writes_are_stored_and_slp_en_reads_0():
    bus = machine()
    assert bus.io_out(0x604, 2, 0x0401, CPU) is None  # SLP_TYP 1, SCI_EN, no SLP_EN
    assert bus.io_out(0x604, 2, 0x2401, CPU) is None  # S3 (type 1): not supported
    assert bus.io_in(0x604, 2, CPU) == 0x0401
    bus.io_out(0x605, 1, 0x00, CPU)  # the high byte alone: type 0 now
    assert bus.io_in(0x604, 2, CPU) == 0x0001 and bus.io_in(0x605, 1, CPU) == 0x00
    assert bus.io_out(0x605, 1, 0x20, CPU) == PowerOff(0, status=0)  # SLP_EN alone


@FUZZ
@given(st.lists(st.tuples(st.integers(0x604, 0x605), st.sampled_from([1, 2, 4]),
                          st.integers(0, 0xFFFF_FFFF)), max_size=40))
def test_fuzz_acpi_never_raises(sequence):
    bus = machine()
    for port, size, value in sequence:
        effect = bus.io_out(port, size, value, CPU)
        assert effect is None or effect == PowerOff(0, status=0)
        assert not bus.io_in(0x604, 2, CPU) & E.SLP_EN
