"""isa-debug-exit (0xF4): what gdb and the process get. (ACPI S5: test_acpi_pm.py.)"""

from __future__ import annotations

from stub.vmm.bus import Bus, PowerOff
from stub.vmm.devices import exits as E
from stub.vmm.devices.exits import IsaDebugExit

from .helpers import CPU


def test_isa_debug_exit_gives_qemus_status():
    bus = Bus()
    bus.add_ports(IsaDebugExit(), E.DEBUG_EXIT, E.DEBUG_EXIT_PORTS)
    effect = bus.io_out(0xF4, 1, 0x10, CPU)
    assert effect == PowerOff(0x10, status=0x21)  # W10, exit (0x10 << 1) | 1
    assert bus.io_out(0xF4, 4, 0, CPU) == PowerOff(0, status=1)
    assert bus.io_out(0xF7, 2, 0x1FF, CPU).status == 0xFF  # (0x1FF << 1 | 1) & 0xFF
    assert bus.io_in(0xF4, 1, CPU) == 0xFF
