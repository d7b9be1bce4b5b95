"""Power-off (port 0xF4, QEMU's ``isa-debug-exit``): ``out`` of an exit code ends the
VM. The device cannot stop a vCPU itself; it asks the one that wrote (``PowerOff``)."""

from __future__ import annotations

from stub.vmm.bus import PortDevice, PowerOff, Requester

PORT = 0xF4


class PowerOffPort(PortDevice):
    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> PowerOff:
        return PowerOff(value)
