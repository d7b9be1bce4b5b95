"""The i8042 keyboard controller with nothing plugged in: status, commands, output
port and A20, and the reset that ends the VM."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stub.vmm.bus import Bus, PowerOff, Reset
from stub.vmm.devices import i8042 as K
from stub.vmm.devices.i8042 import I8042

from .helpers import CPU, FUZZ, RecordingLine


class Kbc:
    def __init__(self):
        self.line = RecordingLine()
        self.dev = I8042(self.line)
        self.bus = Bus()
        self.bus.add_ports(self.dev, K.DATA)
        self.bus.add_ports(self.dev, K.COMMAND)

    def command(self, cmd):
        return self.bus.io_out(K.COMMAND, 1, cmd, CPU)

    def data(self, value):
        return self.bus.io_out(K.DATA, 1, value, CPU)

    def status(self):
        return self.bus.io_in(K.COMMAND, 1, CPU)

    def read(self):
        return self.bus.io_in(K.DATA, 1, CPU)


def test_status_after_power_on():
    kbc = Kbc()
    assert kbc.status() == K.SYS | K.UNLOCKED  # no OBF, IBF never set
    assert kbc.read() == 0  # nothing was ever there


def test_self_test_answers_0x55_through_the_output_buffer_with_irq_1():
    kbc = Kbc()
    assert kbc.command(0xAA) is None
    assert kbc.status() & (K.OBF | 0x02 | K.CMD) == K.OBF | K.CMD
    assert kbc.line.level
    assert kbc.read() == 0x55
    assert not kbc.status() & K.OBF and not kbc.line.level
    assert kbc.read() == 0x55  # read again: the last byte


def test_command_byte_reads_and_writes_and_gates_irq_1_and_the_system_flag():
    kbc = Kbc()
    kbc.command(0x20)
    assert kbc.read() == K.COMMAND_BYTE
    kbc.command(0x60)
    kbc.data(0x00)  # no interrupt, no system flag
    assert not kbc.status() & K.SYS
    kbc.command(0x20)
    assert kbc.status() & K.OBF and not kbc.line.level
    assert kbc.read() == 0x00
    kbc.command(0xAD)
    kbc.command(0x20)
    assert kbc.read() == K.KBD_DISABLED
    kbc.command(0xAE)
    kbc.command(0x20)
    assert kbc.read() == 0x00


def test_output_port_and_a20_are_stored_and_read_back():
    kbc = Kbc()
    kbc.command(0xD0)
    assert kbc.read() == K.OUTPUT_PORT and kbc.dev.a20
    kbc.command(0xD1)
    assert kbc.data(0xDD) is None  # A20 off, reset line high
    assert not kbc.dev.a20
    kbc.command(0xD0)
    assert kbc.read() == 0xDD
    kbc.command(0xDF)
    assert kbc.dev.a20
    kbc.command(0xDD)
    assert not kbc.dev.a20


def test_pulsing_the_reset_line_ends_the_vm_as_a_reset():
    kbc = Kbc()
    effect = kbc.command(0xFE)
    assert isinstance(effect, Reset) and "0xfe" in effect.reason
    assert isinstance(effect, PowerOff) and (effect.code, effect.status) == (0, 0)
    assert isinstance(kbc.command(0xF0), Reset)  # pulses bits 0-3
    assert kbc.command(0xFF) is None  # pulses nothing


def test_writing_the_reset_line_low_through_the_output_port_resets():
    kbc = Kbc()
    kbc.command(0xD1)
    assert isinstance(kbc.data(0xDE), Reset)


def test_data_without_a_command_goes_to_the_absent_keyboard():
    kbc = Kbc()
    assert kbc.data(0xFF) is None  # keyboard reset: nobody answers
    assert not kbc.status() & K.OBF
    kbc.command(0x60)
    kbc.command(0x20)  # a new command cancels the one waiting for its data byte
    kbc.data(0x00)
    assert kbc.read() == K.COMMAND_BYTE


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([K.DATA, K.COMMAND]), st.booleans(),
                          st.integers(0, 0xFFFF_FFFF)), max_size=60))
def test_fuzz_never_raises(sequence):
    kbc = Kbc()
    for port, write, value in sequence:
        if write:
            effect = kbc.bus.io_out(port, 4, value, CPU)
            assert effect is None or isinstance(effect, Reset)
        else:
            kbc.bus.io_in(port, 1, CPU)
        status = kbc.status()
        assert not status & 0x02 and status & K.UNLOCKED
        assert status & K.OBF or not kbc.line.level  # IRQ 1 only for a full buffer
