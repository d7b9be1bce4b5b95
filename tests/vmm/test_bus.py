"""The device bus and the boot protocol's devices, without a CPU."""

from __future__ import annotations

import logging

import pytest

from stub.vmm.bus import Bus, PortDevice, PowerOff, Requester
from stub.vmm.devices.apstart import ApStart
from stub.vmm.devices.debugcon import DebugCon
from stub.vmm.devices.exits import IsaDebugExit

CPU = Requester(1, {"rbx": 0x20_0000}.__getitem__)


class Latch(PortDevice):
    def __init__(self):
        self.value = 0

    def io_out(self, port, size, value, cpu):
        self.value = value

    def io_in(self, port, size, cpu):
        return self.value


def test_unclaimed_ports_read_all_ones_and_ignore_writes(caplog):
    bus = Bus()
    assert [bus.io_in(0x70, size, CPU) for size in (1, 2, 4)] == [0xFF, 0xFFFF, 0xFFFF_FFFF]
    with caplog.at_level(logging.DEBUG, logger="stub.vmm.bus"):
        assert bus.io_out(0x80, 1, 0x12, CPU) is None
    assert "unclaimed port 0x80" in caplog.text


def test_a_device_gets_its_range_with_values_cut_to_the_access_size():
    bus, latch = Bus(), Latch()
    bus.add_ports(latch, 0x40, 4)
    bus.io_out(0x43, 1, 0x1234, CPU)
    assert latch.value == 0x34
    assert bus.io_in(0x40, 1, CPU) == bus.io_in(0x43, 1, CPU) == 0x34
    assert bus.io_in(0x44, 1, CPU) == 0xFF  # past the range: unclaimed
    latch.value = 0x1FF
    assert bus.io_in(0x40, 1, CPU) == 0xFF  # a device cannot return more than asked


def test_claims_may_not_overlap_or_leave_the_port_space():
    bus = Bus()
    bus.add_ports(Latch(), 0x60)
    with pytest.raises(ValueError, match="0x60 is already claimed by Latch"):
        bus.add_ports(Latch(), 0x5F, 2)
    with pytest.raises(ValueError, match="outside"):
        bus.add_ports(Latch(), 0xFFFF, 2)


def test_debug_console_collects_and_forwards_bytes():
    seen = []
    con = DebugCon(seen.append)
    bus = Bus()
    bus.add_ports(con, 0xE9)
    for byte in b"ok":
        bus.io_out(0xE9, 1, byte, CPU)
    assert con.output == b"ok" and seen == [b"o", b"k"]
    assert bus.io_in(0xE9, 1, CPU) == 0xFF  # write-only


def test_a_broken_console_sink_does_not_fail_the_write(caplog):
    con = DebugCon(lambda data: 1 / 0)
    con.io_out(0xE9, 1, ord("x"), CPU)
    assert con.output == b"x" and "console sink failed" in caplog.text


def test_ap_start_takes_the_entry_from_the_writers_rbx():
    started = []
    bus = Bus()
    bus.add_ports(ApStart(lambda index, entry: started.append((index, entry))), 0xEB)
    assert bus.io_out(0xEB, 4, 3, CPU) is None
    assert started == [(3, 0x20_0000)]


def test_power_off_asks_the_writing_vcpu_to_end_the_vm():
    bus = Bus()
    bus.add_ports(IsaDebugExit(), 0xF4, 4)
    assert bus.io_out(0xF4, 4, 7, CPU) == PowerOff(7)
