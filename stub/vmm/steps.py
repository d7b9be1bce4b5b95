"""The two step mechanisms of the emulated vCPU (part of EmulatedVcpu).

- ``MTRAP_EXIT`` (VT-x monitor trap flag): one instruction under a one-shot code hook,
  then MTRAP. TF is never touched.
- ``RFLAGS_TF`` (SVM): the real trap flag. Unicorn raises #DB (vector 1, DR6.BS) after
  the instruction; stopping in the interrupt hook keeps it from the guest. The TF
  bookkeeping (shadow, PUSHF/POPF intercepts, flags-image fix-ups) is the lead's
  ``model.tf_shadow`` machine; this code feeds it what the CPU did and carries out
  the actions it returns.

Either way, an event delivered instead of the instruction (the pending timer tick, or
an exception the instruction raised) is the step: it ends at the handler's first
instruction, as MTF does after event delivery. So does the guest's own #DB when the
guest single-steps itself (its own TF): Unicorn raises it on Intel-style steps, and on
AMD-style ones the shadow machine asks for it (``ReflectDebugTrap``) because the one #DB
the instruction raised was the debugger's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from model.tf_shadow import FixFlagsImage, ReflectDebugTrap, SetTrapFlag, TfAction
from stub.vmm import insn
from stub.vmm.api import ExitKind, VmExit, VmmError
from stub.vmm.cpu import DR6_BS, TF

if TYPE_CHECKING:
    from stub.vmm.vcpu import EmulatedVcpu

log = logging.getLogger(__name__)


class StepMixin:
    # ------------------------------------------------------------------ VT-x
    def _step_mtf(self: EmulatedVcpu) -> VmExit | None:
        if self._tick_window() == "open":
            return self._deliver_tick() or self._mtrap()
        rip = self.cpu.rip
        exit_, ran, kind = self._run_one(rip)
        if not ran:
            return None
        if exit_ is None and kind == "pause" and self._event == ("stop", 0) \
                and self.cpu.rflags & TF:  # pause leaves TF as it was
            # The guest's own TF makes Unicorn raise its #DB after the instruction,
            # except after pause (see _step_tf): then the trap is ours to make.
            exit_ = self._deliver_own_db()
        if exit_ is None and self.cpu.rip == rip and self._rep_finished(rip):
            # Under the code hook Unicorn goes back to a rep string instruction after
            # its last iteration to test the count: hardware's step (and the TF one)
            # ends after the instruction, so let it move on now.
            exit_, _, _ = self._run_one(rip)
        return exit_ or self._mtrap()

    def _rep_finished(self: EmulatedVcpu, rip: int) -> bool:
        width = insn.rep_count_width(self._fetch(rip))
        return width is not None and self.cpu.regs.get("rcx") & ((1 << width) - 1) == 0

    def _mtrap(self: EmulatedVcpu) -> VmExit:
        return VmExit(ExitKind.MTRAP, rip=self.cpu.rip)

    # ------------------------------------------------------------------ SVM
    def _step_tf(self: EmulatedVcpu) -> VmExit | None:
        if self._tick_window() == "open":
            return self._deliver_tick() or self._db_exit(False)
        rip = self.cpu.rip
        kind, _size = insn.classify(self._fetch(rip))
        if self._tf.state == "on":  # not again after an entry abandoned for a request
            if kind == "pushf":
                self._apply(self._tf.intercept_pushf())
            elif kind in ("popf", "iret"):
                # iret pops RFLAGS too: like popf, the shadow must take what it pops,
                # or the guest's own TF restored from a frame is lost (proofs/ found it).
                self._apply(self._tf.intercept_popf())
        if not self.cpu.rflags & TF:
            self.cpu.set_tf(True)  # a popf cleared it last step and no disable came
        # Unicorn's pause leaves the CPU loop without the trap-flag check (QEMU's
        # helper_pause) and carries on into the next instruction, so a TF slice would
        # step two: run it alone under the code hook and make its trap ourselves.
        ran, error, _ = self._slice("single" if kind == "pause" else "tf")
        if not ran:
            return None
        if kind == "pause" and self._event == ("stop", 0):
            self._event = None  # the code hook's stop after it: as if no trap came
        if self._event == ("exception", 1) and self.cpu.dr6 & DR6_BS:
            return self._claim_trace_trap(kind == "pushf")
        exit_ = self._after_guest(error)
        if exit_ is not None:
            return exit_
        if self._event is None and error is None:
            # The instruction ran but no trap came: hlt (Unicorn stops before the
            # trap), or pause (see above).
            if kind == "hlt" and self.cpu.rip != rip:
                self._halted = True
            return self._trace_trap_done(False)
        return self._db_exit(False)

    def _claim_trace_trap(self: EmulatedVcpu, pushf: bool) -> VmExit:
        """The #DB is the debugger's (BS set, capability on): svm_vmexit's IDT_DB."""
        self.cpu.dr6 = self.cpu.dr6 & ~DR6_BS  # the guest must not see a stale BS
        return self._trace_trap_done(pushf)

    def _trace_trap_done(self: EmulatedVcpu, pushf: bool) -> VmExit:
        """Tell the shadow machine the step's trap came; deliver the guest's own #DB
        if it asks (the guest single-steps itself), so the step ends at its handler."""
        actions = self._tf.trace_trap(bool(self.cpu.rflags & TF))
        self._apply(actions)  # image fix-ups first: the #DB frame goes below them
        if any(isinstance(a, ReflectDebugTrap) for a in actions):
            exit_ = self._deliver_own_db()
            if exit_ is not None:
                return exit_
        return self._db_exit(pushf)

    def _deliver_own_db(self: EmulatedVcpu) -> VmExit | None:
        """The guest's own single-step trap (#DB, DR6.BS), delivered now; None once its
        handler is entered, or the triple fault if it cannot be."""
        self.cpu.dr6 = self.cpu.dr6 | DR6_BS
        return self._deliver(1, None)

    def _db_exit(self: EmulatedVcpu, pushf: bool) -> VmExit:
        return VmExit(ExitKind.DB, rip=self.cpu.rip, trace_trap=True, pushf_intercept=pushf,
                      tf_shadow_val=self._tf.shadow)

    def _apply(self: EmulatedVcpu, actions: Iterable[TfAction]) -> None:
        """Carry out what the TF shadow machine asks for."""
        for action in actions:
            if isinstance(action, SetTrapFlag):
                self.cpu.set_tf(action.value)
            elif isinstance(action, ReflectDebugTrap):
                pass  # delivered by _trace_trap_done, once the trap's fix-ups are done
            elif isinstance(action, FixFlagsImage):
                where = self.cpu.rsp if action.where == "stack" else self._frame_slot
                try:
                    self.cpu.flip_tf_image(where, action.tf)
                except VmmError as err:  # the image was just written: cannot happen
                    log.error("vCPU %d: cannot fix the %s flags image: %s",
                              self.index, action.where, err)
