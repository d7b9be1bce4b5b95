"""Range steps (``Feature.RANGE_STEP``, gdb's ``vCont;r``): a step that goes on while RIP
stays in ``[start, end)`` and ends with the step's usual trap once it leaves.

Natively: one kickable slice with two ranged code hooks, on the addresses below and
above the range, so only the first instruction outside it pays (the hook stops before
it); the step mechanism is off meanwhile (no MTF code hook; on the TF mechanism the
debugger's TF is taken off and put back through the shadow machine, so a ``pushf`` in
the range sees the guest's own TF and a ``popf`` that sets it is the guest's). Where
running natively would change what the guest sees or what the step reports, the
caller steps instruction by instruction instead (``native`` says when).

Interrupts follow the step: with MASK_HWINTR none is taken in the range; without it,
a pending one is delivered as a step delivers it (the step ends at the handler).
"""

from __future__ import annotations

from unicorn import UC_HOOK_CODE

from stub.vmm import insn
from stub.vmm.api import ExitKind, VmExit
from stub.vmm.cpu import TF, Cpu
from stub.vmm.events import Events, IrqWindow
from stub.vmm.hidden_tf import HiddenTf
from stub.vmm.slices import STOP, SliceMode, SliceRunner

_TOP = (1 << 64) - 1


class RangeRun:
    def __init__(self, cpu: Cpu, slices: SliceRunner, events: Events, tf: HiddenTf):
        self._cpu = cpu
        self._slices = slices
        self._events = events
        self._tf = tf
        self._hooks: list[int] = []
        self._range: tuple[int, int] | None = None

    def native(self, mtrap: bool) -> bool:
        """Can this step run natively? Not under a bounded run (its budget counts
        instructions), not while the guest single-steps itself (its own #DB after each
        instruction), not with a TF shadow fix-up pending, not with an interrupt that a
        step would take now."""
        if self._slices.budget is not None:
            return False
        if mtrap:
            if self._cpu.rflags & TF:
                return False
        elif self._tf.shadow.state != "on" or self._tf.shadow.shadow:
            return False
        window = self._events.interrupt_window()
        return window is None or window is IrqWindow.MASKED or window is IrqWindow.IF0

    def run(self, start: int, end: int, trap) -> VmExit | None:
        """One native slice from RIP, inside the range. ``trap()`` makes the step's
        trap exit. None: go round the run loop (a request came, or the vCPU halted
        inside the range)."""
        cpu, slices = self._cpu, self._slices
        self._install(start, end)
        slices.watch.off()
        tf = not self._mtrap_mode()
        if tf:
            self._tf.disable()  # the real TF is now the guest's own (0)
        try:
            rip = cpu.rip
            ran = slices.run(SliceMode.FREE)
        finally:
            if tf:
                self._tf.enable()  # the guest's TF (a popf in the range) to the shadow
        if not ran:
            return None
        exit_ = slices.outcome()
        if exit_ is not None:
            return exit_
        if slices.event is STOP:
            return trap()  # the first instruction outside the range
        if slices.event is None and slices.error is None and not slices.kicked \
                and cpu.rip != rip and cpu.byte_at(cpu.rip - 1) == insn.HLT:
            self._events.halted = True  # the run loop waits, as for a step over hlt
        # Kicked (a request: the run loop honours it), halted, or an exception delivered
        # (as a step, the step ends at its handler unless that is in the range too).
        return None if start <= cpu.rip < end else trap()

    def _mtrap_mode(self) -> bool:
        return not self._tf.on

    def _install(self, start: int, end: int) -> None:
        if self._range == (start, end):
            return
        self.finish()
        uc = self._cpu.uc
        if start > 0:
            self._hooks.append(uc.hook_add(UC_HOOK_CODE, self._outside, None, 0, start - 1))
        if end <= _TOP:
            self._hooks.append(uc.hook_add(UC_HOOK_CODE, self._outside, None, end, _TOP))
        uc.ctl_flush_tb()  # translated blocks carry the hook calls they had
        self._range = (start, end)

    def finish(self) -> None:
        """The range step is over: its hooks go."""
        if not self._hooks:
            self._range = None
            return
        uc = self._cpu.uc
        for handle in self._hooks:
            uc.hook_del(handle)
        self._hooks = []
        self._range = None
        uc.ctl_flush_tb()
        self._cpu.exc.forget()

    def _outside(self, uc, _address: int, _size: int, _data) -> None:
        self._slices.note_stop()
        uc.emu_stop()


def trap_exit(kind: ExitKind, rip: int, tf_shadow: bool = False) -> VmExit:
    if kind is ExitKind.MTRAP:
        return VmExit(ExitKind.MTRAP, rip=rip)
    return VmExit(ExitKind.DB, rip=rip, trace_trap=True, tf_shadow_val=tf_shadow)
