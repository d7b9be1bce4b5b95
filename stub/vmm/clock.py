"""Guest time: one clock per VM that runs only while the VM does.

Guest time (integer nanoseconds from the VM's creation) advances at host speed while
at least one vCPU is *in the guest*: executing inside a slice (``emu_start``), running
free between two slices (the run loop delivering an interrupt or an exception is the
machine's own time: the guest's TSC, the host's, counts it too, and Linux marks its TSC
unstable when guest time falls behind it), or halted inside ``run()`` waiting for an
interrupt (idle: the guest asked to wait for time to pass). It stands still otherwise:
while gdb holds every vCPU stopped, between single steps (only the step's own slice
counts), before the guest starts. The mailbox keeps one flag per vCPU for it. So a
``stepi`` after a long pause does not land in a timer handler: no guest time passed.

Why idle counts: a guest that does ``sti; hlt`` waits for a timer that only guest time
can bring; if time stood still while every vCPU is halted, nothing could ever wake it.
(The alternative, warping guest time to the next deadline when the VM is idle, makes an
idle guest spin through its timer ticks and its clocks race ahead of the wall clock.)

The hot path is ``enter_locked``/``leave_locked``, called by every vCPU's mailbox as it
enters and leaves the guest, under the lock it already holds: ``lock`` is the one lock
of the VM's mailboxes (``Mailbox`` builds its condition on it), so the accounting adds
a counter update, plus a host clock read when the count goes 0 -> 1 or 1 -> 0.

Timers are guest-time deadlines (``Timer``). The VM's timer thread (``emulated.Ticker``)
calls ``wait_due``: it sleeps until the earliest deadline converted at the rate of 1
(guest time never runs faster than the host's, so that is never too late, whether the
clock runs or not), and once guest time has stood still through a whole such wait, it
sleeps without a timeout (*parked*) until a vCPU enters the guest. It is also woken when
an earlier deadline is armed, or when poked. Waking it only from the park, not at every
entry, keeps single steps (one entry each, the clock stopped between them) from waking
it once per step. Callbacks run on that thread with no clock lock held (they raise
interrupts, which take other locks).

``ManualClock`` is the clock of a VM without a timer thread (``ticker=False``, the
deterministic drivers): its time moves only when the driver calls ``advance``, which
also runs the timers that come due, on the driver's thread.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

SECOND = 1_000_000_000  # guest time is in nanoseconds

TimerCallback = Callable[[int], None]  # gets the deadline it was armed for


class Timer:
    """A one-shot guest-time deadline; ``arm`` again (from its callback, say) for the
    next one. Thread-safe."""

    __slots__ = ("_callback", "_clock", "_ticket", "deadline")

    def __init__(self, clock: GuestClock, callback: TimerCallback):
        self._clock = clock
        self._callback = callback
        self.deadline: int | None = None  # armed for, or None
        self._ticket = 0  # the heap entry that is current (older ones are stale)

    def arm(self, deadline: int) -> None:
        self._clock._arm(self, deadline)

    def cancel(self) -> None:
        self._clock._cancel(self)

    def fire(self, deadline: int) -> None:
        self._callback(deadline)


class GuestClock:
    """``lock`` is shared with the vCPUs' mailboxes (see the module docstring)."""

    def __init__(self, host_ns: Callable[[], int] = time.monotonic_ns):
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)  # the timer thread waits on it
        self._host = host_ns
        self._base = 0  # guest time when the clock last stopped
        self._since = 0  # host time when it last started
        self.running = 0  # vCPUs in the guest (executing or idle in hlt)
        self._heap: list[tuple[int, int, Timer]] = []
        self._tickets = 0
        self._parked = False  # the timer thread waits for the clock to start
        self._looked = -1  # guest time when the timer thread last went to wait
        self._poked = False

    # -- the hot path (the caller holds ``lock``) -----------------------------------
    def enter_locked(self) -> None:
        if not self.running:
            self._since = self._host()
            if self._parked:  # a deadline waits for guest time to move again
                self._parked = False
                self._cond.notify()
        self.running += 1

    def leave_locked(self) -> None:
        self.running -= 1
        if not self.running:
            self._base += self._host() - self._since

    # -- reading --------------------------------------------------------------------
    def now(self) -> int:
        """Guest time in ns. Thread-safe."""
        with self.lock:
            return self._now_locked()

    def _now_locked(self) -> int:
        if self.running:
            return self._base + self._host() - self._since
        return self._base

    @property
    def stands_still(self) -> bool:
        return not self.running

    # -- timers ---------------------------------------------------------------------
    def timer(self, callback: TimerCallback) -> Timer:
        return Timer(self, callback)

    def _arm(self, timer: Timer, deadline: int) -> None:
        with self.lock:
            self._tickets += 1
            timer._ticket, timer.deadline = self._tickets, deadline
            entry = (deadline, self._tickets, timer)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # earlier than what the timer thread waits for
                self._cond.notify()

    def _cancel(self, timer: Timer) -> None:
        with self.lock:  # its heap entry goes stale and is dropped when it surfaces
            timer._ticket, timer.deadline = 0, None

    def _pop_due_locked(self) -> list[tuple[Timer, int]]:
        heap, due = self._heap, []
        now = None
        while heap:
            deadline, ticket, timer = heap[0]
            if ticket != timer._ticket:
                heapq.heappop(heap)
                continue
            if now is None:
                now = self._now_locked()
            if deadline > now:
                break
            heapq.heappop(heap)
            timer._ticket, timer.deadline = 0, None
            due.append((timer, deadline))
        return due

    def _next_deadline_locked(self) -> int | None:
        heap = self._heap
        while heap and heap[0][1] != heap[0][2]._ticket:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- the timer thread -----------------------------------------------------------
    def wait_due(self, limit: float | None = None) -> list[tuple[Timer, int]]:
        """Block until a timer is due (returned with its deadline, removed), ``limit``
        host seconds pass, or ``poke``; the caller fires what comes back."""
        with self.lock:
            due = self._pop_due_locked()
            if due or self._poked:
                self._poked = False
                return due
            timeout = self._timeout_locked()
            if limit is not None:
                timeout = limit if timeout is None else min(timeout, limit)
            self._parked = timeout is None and self.stands_still and bool(self._heap)
            self._cond.wait(timeout)
            self._parked = self._poked = False
            return self._pop_due_locked()

    def _timeout_locked(self) -> float | None:
        """Host seconds until the earliest deadline at rate 1; None (park) when nothing
        is armed, or when guest time stands still and has not moved since the last
        look (the timer thread slept through a whole wait without it moving)."""
        deadline = self._next_deadline_locked()
        if deadline is None:
            return None
        now = self._now_locked()
        if self.stands_still and now == self._looked:
            return None
        self._looked = now
        return max(0, deadline - now) / SECOND

    def poke(self) -> None:
        """Wake the timer thread (it returns from ``wait_due`` at once). Thread-safe."""
        with self.lock:
            self._poked = True
            self._cond.notify()


class ManualClock(GuestClock):
    """Guest time that moves only by ``advance`` (a deterministic driver's clock)."""

    def __init__(self) -> None:
        super().__init__(host_ns=lambda: 0)

    def enter_locked(self) -> None:
        self.running += 1

    def leave_locked(self) -> None:
        self.running -= 1

    def _now_locked(self) -> int:
        return self._base

    def advance(self, ns: int) -> None:
        """Move guest time on by ``ns`` and run the timers that come due (in deadline
        order, on the caller's thread; a periodic one may come due again)."""
        with self.lock:
            self._base += max(0, ns)
        while True:
            with self.lock:
                due = self._pop_due_locked()
            if not due:
                return
            for timer, deadline in due:
                timer.fire(deadline)
