"""Free running: the guest at full speed, one kickable slice at a time, with external
interrupts delivered between slices.

A free slice has no per-instruction hook; an interrupt that finds IF=0 stays pending and
watch.py catches the moment the guest sets IF, for a short budget per request. Past it,
the ticker kicks the slice every millisecond while the request waits (Mailbox.rekick),
so a guest that sets IF long after the request rose still gets it: a source whose
request stays up (the PIC's INTR) does not rise again, and nothing else would end the
slice. A bounded run (``run(max_instructions=k)``,
for deterministic single-threaded drivers) uses a bounded slice instead, which counts
instructions against the budget and stops at the first boundary with IF=1 itself.

The mailbox's ``irq_seq`` is read before the sources are asked and handed to the slice
entry: a request that rises in between (its kick finds no slice to stop) makes the entry
go round the run loop instead of running a whole free slice past it.
"""

from __future__ import annotations

from stub.vmm import insn
from stub.vmm.api import VmExit
from stub.vmm.cpu import Cpu
from stub.vmm.events import Events, IrqWindow
from stub.vmm.mailbox import Mailbox
from stub.vmm.slices import SliceMode, SliceRunner


class FreeRun:
    def __init__(self, cpu: Cpu, mail: Mailbox, slices: SliceRunner, events: Events):
        self._cpu = cpu
        self._mail = mail
        self._slices = slices
        self._events = events

    def run(self) -> VmExit | None:
        """One slice (after the pending interrupt, if it can be taken): an exit, or None
        to go round the run loop again."""
        events, slices = self._events, self._slices
        seq = self._mail.irq_seq  # before the sources are asked (see the docstring)
        window = events.interrupt_window()
        if window is IrqWindow.OPEN:
            # Then round the loop: another source may still be pending, and the window
            # for it (the handler's IF) decides whether the slice is watched.
            return events.deliver_interrupt()
        if window is IrqWindow.SHADOW:
            return slices.one(free=True)[0]  # then the loop delivers the interrupt
        if slices.budget is None:
            slices.watch.update(window is IrqWindow.IF0, seq)
            mode = SliceMode.FREE
        else:
            slices.watch_if = window is IrqWindow.IF0
            mode = SliceMode.BOUNDED
        waiting = mode is SliceMode.FREE and window is IrqWindow.IF0
        if not slices.run(mode, seq, irq_waiting=waiting):
            return None
        exit_ = slices.outcome()
        cpu = self._cpu
        if exit_ is None and slices.event is None and slices.error is None \
                and not slices.kicked and cpu.byte_at(cpu.rip - 1) == insn.HLT:
            # Nothing else ends a free slice silently. A kick racing with hlt is taken
            # as the kick: the guest may see an early wake-up, never a hang.
            events.halted = True
        return exit_
