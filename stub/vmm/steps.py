"""The two step mechanisms of the emulated vCPU, one part each.

- ``MtrapStep`` (``MTRAP_EXIT``, VT-x monitor trap flag): one instruction under the code
  hook, then MTRAP. TF is never touched.
- ``TfStep`` (``RFLAGS_TF``, SVM): the real trap flag. Unicorn raises #DB (vector 1,
  DR6.BS) after the instruction; stopping in the interrupt hook keeps it from the
  guest. Hiding that TF is ``HiddenTf``'s business; this part feeds it what the
  stepped instruction was and did.

Either way, an event delivered instead of the instruction (the pending timer tick, or
an exception the instruction raised) is the step: it ends at the handler's first
instruction, as MTF does after event delivery. So does the guest's own #DB when the
guest single-steps itself (its own TF): Unicorn raises it on Intel-style steps, and on
AMD-style ones the shadow machine asks for it (``ReflectDebugTrap``) because the one #DB
the instruction raised was the debugger's.
"""

from __future__ import annotations

from unicorn import x86_const as X

from stub.vmm import insn
from stub.vmm.api import ExitKind, VmExit
from stub.vmm.cpu import DR6_BS, SHORT_SINGLE, SHORT_TF, TF, Cpu
from stub.vmm.events import Events, IrqWindow
from stub.vmm.hidden_tf import HiddenTf
from stub.vmm.slices import STOP, SliceMode, SliceRunner, exception

_DB = exception(1)


class MtrapStep:
    """``on``: the capability in effect."""

    def __init__(self, cpu: Cpu, slices: SliceRunner, events: Events):
        self._cpu = cpu
        self._slices = slices
        self._events = events
        self.on = False

    def step(self) -> VmExit | None:
        """One step, or None when a request came first (the run loop honours it)."""
        cpu, events = self._cpu, self._events
        if events.interrupt_window() is IrqWindow.OPEN:
            return events.deliver_interrupt() or self._mtrap()
        rip = cpu.state()[0]  # one C call with the paging registers the fetch reads
        cpu.short = SHORT_SINGLE  # its slices run one instruction each
        try:
            return self._one(rip)
        finally:
            cpu.short = 0

    def _one(self, rip: int) -> VmExit | None:
        cpu, events = self._cpu, self._events
        exit_, ran, kind = self._slices.one(rip)
        if not ran:
            return None
        if exit_ is None and kind == "pause" and self._slices.event is STOP \
                and cpu.rflags & TF:  # pause leaves TF as it was
            # The guest's own TF makes Unicorn raise its #DB after the instruction,
            # except after pause (see TfStep): then the trap is ours to make.
            exit_ = events.deliver_own_db()
        if exit_ is not None:
            return exit_
        after = cpu.rip
        if after == rip and self._rep_finished(rip):
            # Under the code hook Unicorn goes back to a rep string instruction after
            # its last iteration to test the count: hardware's step (and the TF one)
            # ends after the instruction, so let it move on now.
            exit_, _, _ = self._slices.one(rip)
            return exit_ or self._mtrap()
        return VmExit(ExitKind.MTRAP, rip=after)

    def _rep_finished(self, rip: int) -> bool:
        cpu = self._cpu
        width = insn.rep_count_width(*cpu.fetch_insn(rip))
        return width is not None and cpu.reg(X.UC_X86_REG_RCX) & ((1 << width) - 1) == 0

    def _mtrap(self) -> VmExit:
        return VmExit(ExitKind.MTRAP, rip=self._cpu.rip)


class TfStep:
    """On while ``HiddenTf`` is (the capability lives in the shadow machine)."""

    def __init__(self, cpu: Cpu, slices: SliceRunner, events: Events, tf: HiddenTf):
        self._cpu = cpu
        self._slices = slices
        self._events = events
        self._tf = tf

    def step(self) -> VmExit | None:
        """One step, or None when a request came first (the run loop honours it)."""
        cpu, events, slices = self._cpu, self._events, self._slices
        if events.interrupt_window() is IrqWindow.OPEN:
            return events.deliver_interrupt() or self._db_exit(False)
        rip, rflags, _ = cpu.state()  # one C call: the fetch below reads no register
        code, long_mode = cpu.fetch_insn(rip)
        kind, _size = insn.classify(code, long_mode)
        if self._intercept(kind):
            rflags = cpu.rflags  # the shadow's actions may have changed it
        if not rflags & TF:
            cpu.set_tf(True, rflags)  # a popf cleared it last step and no disable came
        # Unicorn's pause leaves the CPU loop without the trap-flag check (QEMU's
        # helper_pause) and carries on into the next instruction, so a TF slice would
        # step two: run it alone under the code hook and make its trap ourselves.
        cpu.short = SHORT_SINGLE if kind == "pause" else SHORT_TF
        try:
            ran = slices.run(SliceMode.SINGLE if kind == "pause" else SliceMode.TF, rip=rip)
        finally:
            cpu.short = 0
        if not ran:
            return None
        if kind == "pause" and slices.event is STOP:
            slices.event = None  # the code hook's stop after it: as if no trap came
        if slices.event is _DB:
            after, rflags, dr6 = cpu.state()
            if dr6 & DR6_BS:
                return self._claim_trace_trap(kind == "pushf", after, rflags, dr6)
        exit_ = slices.outcome()
        if exit_ is not None:
            return exit_
        if slices.event is None and slices.error is None:
            # The instruction ran but no trap came: hlt (Unicorn stops before the
            # trap), or pause (see above).
            if kind == "hlt" and cpu.rip != rip:
                events.halted = True
            return self._trace_trap_done(False)
        return self._db_exit(False)

    def _intercept(self, kind: str | None) -> bool:
        """SVM's PUSHF/POPF intercepts: tell the shadow what comes. True when it was
        told (its actions may have written RFLAGS)."""
        if self._tf.shadow.state != "on":  # not again after an entry abandoned for a request
            return False
        if kind == "pushf":
            self._tf.intercept_pushf()
        elif kind in ("popf", "iret"):
            # iret pops RFLAGS too: like popf, the shadow must take what it pops, or
            # the guest's own TF restored from a frame is lost (proofs/ found it).
            self._tf.intercept_popf()
        else:
            return False
        return True

    def _claim_trace_trap(self, pushf: bool, rip: int, rflags: int, dr6: int) -> VmExit:
        """The #DB is the debugger's (BS set, capability on): svm_vmexit's IDT_DB.
        ``rip``, ``rflags``, ``dr6``: as the slice left them (``Cpu.state``)."""
        self._cpu.dr6 = dr6 & ~DR6_BS  # the guest must not see a stale BS
        return self._trace_trap_done(pushf, rip, rflags)

    def _trace_trap_done(self, pushf: bool, rip: int | None = None,
                         rflags: int | None = None) -> VmExit:
        """Tell the shadow machine the step's trap came (its image fix-ups first: the
        #DB frame goes below them); deliver the guest's own #DB if it asks (the guest
        single-steps itself), so the step ends at its handler. ``rip``/``rflags``: the
        registers now, if the caller read them (the shadow's actions change neither
        RIP nor anything the exit reports but TF)."""
        if self._tf.trace_trap(rflags):
            exit_ = self._events.deliver_own_db()
            if exit_ is not None:
                return exit_
            rip = None  # the delivery moved it
        return self._db_exit(pushf, rip)

    def _db_exit(self, pushf: bool, rip: int | None = None) -> VmExit:
        return VmExit(ExitKind.DB, rip=self._cpu.rip if rip is None else rip,
                      trace_trap=True, pushf_intercept=pushf,
                      tf_shadow_val=self._tf.shadow.shadow)
