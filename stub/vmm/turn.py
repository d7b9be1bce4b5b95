"""The guest turn: one vCPU of a VM executes guest code at a time.

Unicorn 2.1.4 translates every x86 ``lock``-prefixed read-modify-write (``lock cmpxchg``,
``lock xadd``, ``xchg`` with memory) as a plain load and store: QEMU emits host atomics
only for translation blocks flagged ``CF_PARALLEL``, and Unicorn's ``curr_cflags()``
is always 0 (qemu/include/exec/exec-all.h). Each vCPU is its own ``Uc`` on its own
thread over the same RAM, so two vCPUs running at once lose updates: two threads doing
2,000,000 ``lock inc qword [mem]`` each end at ~2.3 M, and Linux on 2 vCPUs hung in
``native_queued_spin_lock_slowpath`` in half of its boots (docs/linux.md, "SMP").

So slices of one VM take turns, as QEMU's round-robin TCG runs every vCPU of a machine
on one thread: ``enter(index)`` before ``emu_start``, ``leave(index)`` after. A vCPU
that finds the turn taken queues (first come, first served; the turn is handed to the
head of the queue, so a vCPU that leaves and enters again at once cannot starve the
others) and asks the holder to yield: at once for a debugger's step (a step is one
instruction and the user waits for it), after ``QUANTUM`` for a free slice (a free
slice is kickable and ends at its next translation block, ``kick.py``). A holder that
does not leave within a quantum is asked again (a kick that found it between slices
is lost). Everything outside ``emu_start``, and a vCPU halted or parked, holds no turn.

A VM with one vCPU has no turn to take: ``GuestTurn.for_vcpus(1)`` is ``None``.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

QUANTUM = 0.002  # seconds a free slice may keep the turn while another vCPU waits


class GuestTurn:
    """``yield_turn(index)``: ask vCPU ``index`` to end its slice (thread-safe; a kick
    that finds no slice is harmless)."""

    def __init__(self, yield_turn: Callable[[int], None], quantum: float = QUANTUM):
        self._yield = yield_turn
        self._quantum = quantum
        self._lock = threading.Lock()
        self._holder: int | None = None
        self._queue: collections.deque[tuple[int, threading.Lock]] = collections.deque()

    @staticmethod
    def for_vcpus(count: int, yield_turn: Callable[[int], None]) -> GuestTurn | None:
        return GuestTurn(yield_turn) if count > 1 else None

    @property
    def holder(self) -> int | None:
        return self._holder

    def enter(self, index: int, urgent: bool = False) -> None:
        """Block until vCPU ``index`` has the turn. ``urgent``: a step; the holder is
        asked to yield at once rather than after a quantum."""
        with self._lock:
            if self._holder is None:
                self._holder = index
                return
            gate = threading.Lock()
            gate.acquire()
            self._queue.append((index, gate))
            holder = self._holder
        if urgent:
            self._yield(holder)
        while not gate.acquire(timeout=self._quantum):
            with self._lock:
                holder = self._holder
            if holder is not None and holder != index:
                self._yield(holder)

    def leave(self, index: int) -> None:
        """vCPU ``index`` is out of ``emu_start``: the turn goes to the longest waiter."""
        with self._lock:
            if self._holder != index:
                return  # never entered (a refused slice entry), or handed on already
            if self._queue:
                self._holder, gate = self._queue.popleft()
                gate.release()
            else:
                self._holder = None
