"""The debugger's RFLAGS.TF, hidden from the guest (RFLAGS_TF, SVM's way to step).

The bookkeeping (the guest's own TF in the shadow, PUSHF/POPF intercepts, which flags
images to fix) is the model's ``model.tf_shadow`` machine, shared with the checker;
this part feeds it what the CPU did and carries out the actions it returns on the
vCPU. Registers, event delivery and the TF step all go through it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from model.tf_shadow import FixFlagsImage, ReflectDebugTrap, SetTrapFlag, TfAction, TfShadow
from stub.vmm.api import VmmError
from stub.vmm.cpu import TF, Cpu

log = logging.getLogger(__name__)


class HiddenTf:
    def __init__(self, cpu: Cpu, index: int):
        self._cpu = cpu
        self._index = index
        self.shadow = TfShadow()  # replaceable (tests inject mutants): always read it here

    @property
    def on(self) -> bool:
        return self.shadow.is_on

    # -- the capability -----------------------------------------------------------------
    def enable(self) -> None:
        if not self.shadow.is_on:
            flags = self._cpu.rflags
            self._apply(self.shadow.enable(bool(flags & TF)), flags=flags)

    def disable(self) -> None:
        if self.shadow.is_on:
            self._apply(self.shadow.disable())

    # -- registers: what the guest sees -------------------------------------------------
    def guest_view(self, rflags: int) -> int:
        """RFLAGS as the guest would read it (call only while on)."""
        return (rflags & ~TF) | (TF if self.shadow.shadow else 0)

    def guest_flags(self, rflags: int) -> int:
        """RFLAGS as the guest would read it, whether the debugger's TF is on or not."""
        return self.guest_view(rflags) if self.shadow.is_on else rflags

    def set_guest_tf(self, on: bool) -> None:
        """The debugger wrote RFLAGS while on: its TF is the guest's own (the real TF,
        the debugger's, stays set)."""
        self.shadow.shadow = on

    # -- what the stepped instruction did -----------------------------------------------
    def intercept_pushf(self) -> None:
        self._apply(self.shadow.intercept_pushf())

    def intercept_popf(self) -> None:
        self._apply(self.shadow.intercept_popf())

    def trace_trap(self, rflags: int | None = None) -> bool:
        """The step's #DB came. Fixes the pushf image if one is pending; True when the
        guest single-steps itself and must get its own #DB now. ``rflags``: RFLAGS as
        the caller just read it (None: read here)."""
        if rflags is None:
            rflags = self._cpu.rflags
        actions = self.shadow.trace_trap(bool(rflags & TF))
        self._apply(actions, flags=rflags)
        return any(isinstance(a, ReflectDebugTrap) for a in actions)

    def event_delivered(self, frame_slot: int) -> None:
        """An event was delivered with TF set: the frame at ``frame_slot`` holds the
        debugger's TF; give it the guest's."""
        self._apply(self.shadow.event_delivered(), frame_slot)

    def _apply(self, actions: Iterable[TfAction], frame_slot: int = 0,
               flags: int | None = None) -> None:
        """Carry out the shadow's actions in order. ``flags``: RFLAGS as just read (None:
        read when needed); only SetTrapFlag changes it, and a write that changes
        nothing is skipped."""
        for action in actions:
            if isinstance(action, SetTrapFlag):
                flags = self._cpu.set_tf(action.value, flags)
            elif isinstance(action, FixFlagsImage):
                where = self._cpu.rsp if action.where == "stack" else frame_slot
                try:
                    self._cpu.flip_tf_image(where, action.tf)
                except VmmError as err:  # the image was just written: cannot happen
                    log.error("vCPU %d: cannot fix the %s flags image: %s",
                              self._index, action.where, err)
            # ReflectDebugTrap: trace_trap reports it; the TF step delivers the #DB
