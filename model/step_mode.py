"""StepMode: which single-step mechanism the VM has, probed once at start-up.

bhyve picks the mechanism on every step (try MTRAP_EXIT, fall back to RFLAGS_TF), which
costs AMD one failed ioctl per step. The review of the AMD change asked for the probe to
move to start-up, on the boot vCPU, with the result cached as an enum; capabilities are
per VM, not per vCPU. We do that here.

Order matters: MTRAP_EXIT first, RFLAGS_TF second. VMX rejects RFLAGS_TF and SVM rejects
MTRAP_EXIT, so on real hardware the order is what tells the vendors apart; a VMM that
offered both should use the monitor trap flag, which leaves the guest's RFLAGS alone.

MASK_HWINTR is optional ("nice to have" in the review): it is probed by *setting* it
(VMX can set it but cannot read it back), and a later failure to set it is ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from model.actions import Cap


class StepMode(enum.Enum):
    NONE = "none"
    MTRAP = "mtrap"
    RFLAGS_TF = "rflags_tf"

    @property
    def cap(self) -> Cap | None:
        return {StepMode.MTRAP: Cap.MTRAP_EXIT, StepMode.RFLAGS_TF: Cap.RFLAGS_TF}.get(self)


PROBE_ORDER = (StepMode.MTRAP, StepMode.RFLAGS_TF)


@dataclass(frozen=True)
class StepConfig:
    mode: StepMode
    mask_hwintr: bool

    @property
    def can_step(self) -> bool:
        return self.mode is not StepMode.NONE

    def caps_for_step(self) -> tuple[Cap, ...]:
        """The capabilities one step turns on, mechanism first."""
        if self.mode.cap is None:
            return ()
        return (self.mode.cap, Cap.MASK_HWINTR) if self.mask_hwintr else (self.mode.cap,)


def probe_step_config(has_cap: Callable[[Cap], bool], can_set: Callable[[Cap], bool]) -> StepConfig:
    """Decide the VM's StepConfig from two questions asked of the boot vCPU.

    ``has_cap(cap)``: does reading the capability succeed (libvmmapi ``vm_get_capability``)?
    ``can_set(cap)``: does setting it on (and back off) succeed?"""
    mode = next((m for m in PROBE_ORDER if m.cap is not None and has_cap(m.cap)),
                StepMode.NONE)
    mask = mode is not StepMode.NONE and can_set(Cap.MASK_HWINTR)
    return StepConfig(mode, mask)
