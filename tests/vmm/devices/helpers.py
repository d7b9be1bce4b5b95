"""Shared by the device tests: a requester with no registers, hypothesis settings for
the fuzz tests (hypothesis derandomizes itself when CI is set; FUZZ_SCALE=N multiplies
the examples, as in tests/fuzz), and an IRQ line that records every level it is driven
to."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from stub.vmm.bus import IrqLine, Requester

CPU = Requester(0, lambda name: 0)

SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
FUZZ = settings(max_examples=300 * SCALE, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


class RecordingLine(IrqLine):
    def __init__(self):
        super().__init__()
        self.history: list[bool] = []

    def set(self, level: bool) -> None:
        super().set(level)
        self.history.append(bool(level))
