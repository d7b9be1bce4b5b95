"""What other threads ask of one vCPU, under one condition variable.

The ticker posts the paravirtual timer's ticks and repeats lost stops, interrupt
sources (the PIC) say their request may have risen, the stub asks for suspends and
BPT_EXIT, other vCPUs and the debugger patch code, the VM starts and stops it. Each
request is recorded here and, when the vCPU is inside a kickable ``emu_start``,
*kicks* it (``Kick.raise_``: stop at the next block boundary) so its run loop sees the
request between two slices.

The condition's lock is the VM's guest clock lock, shared by every vCPU's mailbox:
entering and leaving the guest already take it, so the clock's accounting
(``GuestClock.enter_locked``/``leave_locked``) costs no lock of its own.

The owner thread reads a few fields without the lock where a stale value only costs
one more round of the run loop (``tick``, ``dirty``, ``irq_seq``): the slice entry
re-checks under the lock before it enters the guest (an interrupt request that came
after the run loop looked at its sources makes the entry go round again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stub.vmm.clock import GuestClock


_WAITING_FRESH = 1  # irq_waiting: entered, the ticker has not looked yet
_WAITING_SEEN = 2  # the ticker has looked once: its next look kicks


class Mailbox:
    def __init__(self, stop_guest: Callable[[], None], vm_over: Callable[[], bool],
                 clock: GuestClock, clear_stop: Callable[[], None] = lambda: None):
        self.cond = threading.Condition(clock.lock)
        self._clock = clock
        # The vCPU's kick (kick.py): stops it at the next block boundary, from any
        # thread; ``clear_stop`` lowers it again as the owner enters the guest.
        self._stop_guest = stop_guest
        self._clear_stop = clear_stop
        self._vm_over = vm_over
        self.started = False
        self.suspend = False
        self.tick = False  # a paravirtual timer tick is pending (one at most)
        # Interrupt requests so far (ticks posted, sources risen): the interrupt-window
        # watch keys on it, and a free slice is not entered past a request it missed.
        self.irq_seq = 0
        self.dirty: list[tuple[int, int]] = []  # GPA ranges patched since the last slice
        self.in_run = False  # inside run()/run_lent(): cleared by the owner without the lock
        self.in_guest = False  # inside a kickable emu_start
        self.kicked = False  # a stop was asked since that emu_start began
        # That emu_start is a free slice entered with a request waiting for IF=1: the
        # ticker kicks it every REKICK until it leaves (see ``rekick``). 0: not waiting.
        self.irq_waiting = 0
        self.loan_over = False  # a lent run's time is up (Vcpu.run_lent with a limit)
        # The current loan's number; each start and finish moves it on, so an end_loan
        # that comes late, for a loan already finished, finds another number.
        self._loan = 0
        self.bpt_exit_asked = False  # the setting last asked for
        self.bpt_exit = False  # the setting in effect: taken from the asked one at each entry
        self.points_stale = False  # the VM's armed points changed since this vCPU applied them
        # This vCPU counts toward guest time (clock.py): from a slice's entry; kept
        # between free slices (the run loop's own work is the running machine's time,
        # as the TSC, the host's, sees it), dropped at a step's end and when run() returns.
        self._timing = False

    # -- requests (any thread) ----------------------------------------------------------
    def request_suspend(self) -> bool:
        """True when it kicked a slice (the ticker should then repeat a kick Unicorn may
        lose); a vCPU outside the guest sees the request before it enters again."""
        with self.cond:
            self.suspend = True
            self._kick_locked()
            self.cond.notify_all()
            return self.in_guest

    def clear_suspend(self) -> None:
        with self.cond:
            self.suspend = False

    def post_tick(self) -> None:
        with self.cond:
            if self.started:
                self.tick = True
                self.irq_seq += 1
                self._kick_locked()
                self.cond.notify_all()

    def interrupt(self) -> bool:
        """An interrupt source's request may have risen: leave the slice (or hlt) and
        look at the sources again. True when it kicked a slice (the ticker should then
        repeat a kick Unicorn may lose)."""
        with self.cond:
            self.irq_seq += 1
            self._kick_locked()
            self.cond.notify_all()
            return self.in_guest

    def start_loan(self) -> int:
        """A run lent to another thread for a while begins (the owner thread): the
        loan's number, for ``end_loan``."""
        with self.cond:
            self._loan += 1
            return self._loan

    def end_loan(self, loan: int) -> None:
        """Loan ``loan``'s time is up (any thread): leave the slice and enter no other
        until it is finished. A late call, for a loan already finished, does nothing."""
        with self.cond:
            if loan == self._loan:
                self.loan_over = True
                self._kick_locked()

    def finish_loan(self) -> None:
        with self.cond:
            self._loan += 1
            self.loan_over = False

    def mark_dirty(self, start: int, end: int) -> bool:
        """Guest code in [start, end) was written (kicking a running slice). True when
        it kicked (the ticker should then repeat a kick Unicorn may lose)."""
        with self.cond:
            self.dirty.append((start, end))
            self._kick_locked()
            return self.in_guest

    def mark_points(self) -> bool:
        """The debugger's armed points changed: the vCPU applies them to its own
        Unicorn before its next slice (kicking a running one). True when it kicked."""
        with self.cond:
            self.points_stale = True
            self._kick_locked()
            return self.in_guest

    def ask_bpt_exit(self, on: bool) -> bool:
        """At once outside run(); inside it, at the next entry, which the kick makes
        prompt (a free-running slice would otherwise decide its int3s by the old one).
        True when it kicked (the ticker should then repeat a kick Unicorn may lose)."""
        with self.cond:
            self.bpt_exit_asked = on
            if self.in_run:
                self._kick_locked()
                return True
            self.bpt_exit = on
            return False

    def stop(self) -> None:
        """The VM is over or shutting down: leave the guest and wake every waiter."""
        with self.cond:
            self._kick_locked()
            self.cond.notify_all()

    def rekick(self) -> bool:
        """Kick again if a stop was asked and the vCPU is still in the guest (the flag
        stays raised until the next entry, so this only matters for a vCPU running one
        long block). Also kick a free slice entered with an interrupt waiting for IF=1,
        at the ticker's second look (the first only notes it, so a slice always runs
        for about REKICK): the request's own kick came before the guest had IF=1, and
        a source whose request stays up (the PIC's INTR) does not rise again, so
        without this a guest spinning with IF=1 would never see it. True while the
        vCPU still has to leave or is still watched."""
        with self.cond:
            if not self.in_guest:
                return False
            if self.kicked:
                self._stop_guest()
                return True
            if self.irq_waiting == _WAITING_FRESH:
                self.irq_waiting = _WAITING_SEEN
                return True
            if self.irq_waiting:
                self._kick_locked()
                return True
            return False

    def yield_turn(self) -> None:
        """Another vCPU waits for the guest turn (turn.py): end the running slice. The
        kick counts as one (``kicked``), so the slice's end is not taken for a hlt."""
        with self.cond:
            self._kick_locked()

    def _kick_locked(self) -> None:
        if self.in_guest:
            self.kicked = True
            self._stop_guest()

    # -- the owner thread ---------------------------------------------------------------
    def take_tick(self) -> None:
        with self.cond:
            self.tick = False

    def take_points(self) -> bool:
        with self.cond:
            stale, self.points_stale = self.points_stale, False
            return stale

    def take_dirty(self) -> list[tuple[int, int]]:
        with self.cond:
            ranges, self.dirty = self.dirty, []
            return ranges

    def patched(self, gpa: int) -> bool:
        """Was ``gpa`` written since this vCPU last dropped its stale translations?"""
        with self.cond:
            return any(start <= gpa < end for start, end in self.dirty)

    def enter_guest(self, kickable: bool, irq_seen: int | None = None,
                    forced: bool = False, irq_waiting: bool = False) -> bool:
        """About to ``emu_start``: False if a request came first (the run loop goes
        round again to honour it), an interrupt request included when ``irq_seen``
        (the ``irq_seq`` read before the sources were asked) is out of date.
        Capabilities asked while running take effect here; guest time runs from here.
        ``forced``: a parked vCPU completes one instruction for the debugger (only the
        VM's end refuses it). ``irq_waiting``: a free slice with an interrupt request
        waiting for IF=1; the ticker is woken to watch it (``rekick``)."""
        with self.cond:
            if self._vm_over() or not forced and (
                    self.suspend or self.dirty or self.points_stale or self.loan_over or (
                        irq_seen is not None and irq_seen != self.irq_seq)):
                return False
            self.bpt_exit = self.bpt_exit_asked
            self.in_guest, self.kicked = kickable, False
            self.irq_waiting = _WAITING_FRESH if irq_waiting and kickable else 0
            self._clear_stop()  # a kick for an earlier slice must not stop this one
            self._time_on_locked()
        if irq_waiting:
            self._clock.poke()  # the ticker may be parked with no timer armed
        return True

    def leave_guest(self, free: bool = False) -> bool:
        """Out of ``emu_start``; True if it was kicked. ``free``: a free slice, after
        which guest time runs on until the run loop stops (``time_off``)."""
        with self.cond:
            self.in_guest = False
            self.irq_waiting = 0
            if not free:
                self._time_off_locked()
            return self.kicked

    def time_off(self) -> None:
        """run() returns: this vCPU no longer keeps guest time running. (``_timing`` is
        written only by the thread running the vCPU, this one: an unlocked look
        saves the lock when a step's slice already stopped its time.)"""
        if self._timing:
            with self.cond:
                self._time_off_locked()

    def time_off_locked(self) -> None:
        self._time_off_locked()

    def _time_on_locked(self) -> None:
        if not self._timing:
            self._timing = True
            self._clock.enter_locked()

    def _time_off_locked(self) -> None:
        if self._timing:
            self._timing = False
            self._clock.leave_locked()

    def wait_idle_locked(self) -> None:
        """Halted inside run(), waiting for an interrupt (the caller holds ``cond``):
        guest time runs meanwhile, so a timer can come to wake the vCPU (and on
        after it, while the vCPU runs free; ``time_off`` when run() returns)."""
        self._time_on_locked()
        self.cond.wait()
