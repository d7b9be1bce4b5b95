"""Paravirtual AP start-up (port 0xEB, docs/boot-protocol.md): ``out`` of a vCPU index
starts that vCPU at the address in the writer's rbx. Starting a vCPU that does not
exist or already runs is ignored (the machine's ``start`` decides)."""

from __future__ import annotations

from collections.abc import Callable

from stub.vmm.bus import PortDevice, Requester

PORT = 0xEB


class ApStart(PortDevice):
    def __init__(self, start: Callable[[int, int], None]):
        self._start = start  # (vCPU index, entry)

    def reset(self) -> None:
        """Stateless (which APs run is the vCPUs' business)."""

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> None:
        self._start(value, cpu.register("rbx"))
