"""Interrupt-window watching: deliver a pending interrupt soon after the guest sets IF.

Hardware delivers a pending interrupt at the first instruction boundary with IF=1.
Unicorn cannot be asked for that, but IF only becomes 1 through ``sti``, ``popf`` or
``iret``, and QEMU ends a translation block after each of them: a block hook that
checks IF sees every opportunity. A Python call per block is slow, so the hook exists
only while an interrupt waits, for at most a short budget per request (a paravirtual
tick posted, an interrupt source risen: ``Mailbox.irq_seq``), and a guest that keeps
interrupts off through whole budgets is watched exponentially less often (the interrupt
then waits for the ticker's next kick of a slice with a request waiting, every
millisecond: Mailbox.rekick). The budget is host
time: it bounds the hook's cost, not anything the guest sees.
"""

from __future__ import annotations

import time

from unicorn import UC_HOOK_BLOCK
from unicorn import x86_const as X

from stub.vmm.cpu import Cpu, OptionalHook

IF = 1 << 9
MAX_BUDGET = 0.001  # seconds of hooked running per request
MAX_BACKOFF = 6  # after n missed windows in a row, skip the next 2**n - 1 requests


class WindowWatch:
    def __init__(self, cpu: Cpu, period: float | None):
        self._cpu = cpu
        self._hook = OptionalHook(cpu, UC_HOOK_BLOCK, self._on_block)
        self._budget = MAX_BUDGET if not period else min(MAX_BUDGET, period / 4)
        self._seq = 0
        self._deadline = 0.0
        self._misses = 0
        self._skip = 0
        self.stopped = False  # the hook stopped emulation (IF=1 or budget spent)

    def update(self, waiting: bool, irq_seq: int) -> None:
        """Between slices: is an interrupt waiting for IF=1 (not masked by the
        debugger)? ``irq_seq``: the mailbox's count of requests."""
        if not waiting:
            if self._hook.active:  # delivered while watching: the guest opens windows
                self._misses = 0
            self.off()
            return
        if irq_seq != self._seq:
            self._seq = irq_seq
            if self._skip:
                self._skip -= 1
            else:
                self._deadline = time.monotonic() + self._budget
                self._hook.on()
        elif self._hook.active and time.monotonic() > self._deadline:
            self._misses = min(self._misses + 1, MAX_BACKOFF)
            self._skip = (1 << self._misses) - 1
            self.off()

    def off(self) -> None:
        self._hook.off()

    def _on_block(self, uc, _address: int, _size: int, _data) -> None:
        if self._cpu.reg(X.UC_X86_REG_RFLAGS) & IF or time.monotonic() > self._deadline:
            self.stopped = True
            uc.emu_stop()
