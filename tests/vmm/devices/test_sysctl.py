"""System control port A (0x92) and the POST code port (0x80)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus, Reset
from stub.vmm.devices import sysctl as S
from stub.vmm.devices.sysctl import SystemControl

from .helpers import CPU, FUZZ


def machine():
    dev, bus = SystemControl(), Bus()
    bus.add_ports(dev, S.PORT_A)
    bus.add_ports(dev, S.POST)
    return dev, bus


def test_port_a_stores_fast_a20_and_reads_back():
    dev, bus = machine()
    assert bus.io_in(S.PORT_A, 1, CPU) == S.FAST_A20 and dev.a20  # A20 is always on
    assert bus.io_out(S.PORT_A, 1, 0x00, CPU) is None
    assert bus.io_in(S.PORT_A, 1, CPU) == 0x00 and not dev.a20
    bus.io_out(S.PORT_A, 1, 0xC2, CPU)
    assert bus.io_in(S.PORT_A, 1, CPU) == 0xC2 and dev.a20


def test_a_rising_bit_0_resets_and_a_held_one_does_not():
    _, bus = machine()
    effect = bus.io_out(S.PORT_A, 1, 0x03, CPU)
    assert isinstance(effect, Reset) and (effect.code, effect.status) == (0, 0)
    assert "0x92" in effect.reason
    assert bus.io_out(S.PORT_A, 1, 0x03, CPU) is None  # already 1: no edge
    bus.io_out(S.PORT_A, 1, 0x02, CPU)
    assert isinstance(bus.io_out(S.PORT_A, 1, 0x01, CPU), Reset)


def test_post_codes_are_ignored_and_read_0xff():
    dev, bus = machine()
    assert bus.io_out(S.POST, 1, 0x42, CPU) is None
    assert bus.io_in(S.POST, 1, CPU) == 0xFF
    assert dev.post_code == 0x42 and bus.io_in(S.PORT_A, 1, CPU) == S.FAST_A20


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([S.PORT_A, S.POST]), st.sampled_from([1, 2, 4]),
                          st.integers(0, 0xFFFF_FFFF)), max_size=40))
def test_fuzz_never_raises(sequence):
    _, bus = machine()
    for port, size, value in sequence:
        before = bus.io_in(S.PORT_A, 1, CPU)
        effect = bus.io_out(port, size, value, CPU)
        rising = port == S.PORT_A and value & 1 and not before & 1
        assert isinstance(effect, Reset) if rising else effect is None
        assert bus.io_in(S.POST, size, CPU) == (1 << 8 * size) - 1
