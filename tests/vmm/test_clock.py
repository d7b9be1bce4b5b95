"""The guest clock (stub/vmm/clock.py), driven with a fake host clock: guest time moves
only while a vCPU is in the guest, and the timer thread's waits follow it.

Nothing sleeps to let a thread get somewhere: threads are checked with events and
bounded waits, and "a long pause" is a jump of the fake host clock.
"""

from __future__ import annotations

import threading

from stub.vmm.clock import SECOND, GuestClock, ManualClock

WAIT = 5.0
QUIET = 0.2  # how long a thread is given to (wrongly) do something


class Host:
    """A host clock that moves only when the test says."""

    def __init__(self) -> None:
        self.ns = 1_000_000

    def __call__(self) -> int:
        return self.ns


def make() -> tuple[GuestClock, Host]:
    host = Host()
    return GuestClock(host), host


def enter(clock: GuestClock) -> None:
    with clock.lock:
        clock.enter_locked()


def leave(clock: GuestClock) -> None:
    with clock.lock:
        clock.leave_locked()


def test_no_guest_time_passes_while_no_vcpu_is_in_the_guest():
    clock, host = make()
    host.ns += 3600 * SECOND  # an hour held stopped
    assert clock.now() == 0 and clock.stands_still


def test_guest_time_runs_at_host_speed_inside_the_guest_only():
    clock, host = make()
    enter(clock)
    host.ns += 5
    assert clock.now() == 5
    leave(clock)
    host.ns += 1000
    assert clock.now() == 5
    enter(clock)
    host.ns += 2
    leave(clock)
    assert clock.now() == 7


def test_overlapping_vcpus_count_once():
    clock, host = make()
    enter(clock)  # vCPU 0
    host.ns += 3
    enter(clock)  # vCPU 1
    host.ns += 2
    leave(clock)  # vCPU 0
    host.ns += 4
    assert clock.now() == 9 and not clock.stands_still
    leave(clock)  # vCPU 1
    host.ns += 50
    assert clock.now() == 9 and clock.stands_still


def test_timers_come_due_in_deadline_order_and_cancel():
    clock, host = make()
    fired: list[tuple[str, int]] = []
    a = clock.timer(lambda d: fired.append(("a", d)))
    b = clock.timer(lambda d: fired.append(("b", d)))
    c = clock.timer(lambda d: fired.append(("c", d)))
    a.arm(30)
    b.arm(10)
    c.arm(20)
    c.cancel()
    a.arm(25)  # re-arming replaces the old deadline
    enter(clock)
    host.ns += 100
    for timer, deadline in clock.wait_due():
        timer.fire(deadline)
    assert fired == [("b", 10), ("a", 25)]
    assert a.deadline is None and c.deadline is None


def test_wait_due_parks_once_guest_time_stood_still_through_a_wait():
    clock, host = make()
    clock.timer(lambda d: None).arm(1000)
    assert clock._timeout_locked() == 1000 / SECOND  # never too late: rate <= 1
    host.ns += 5000
    assert clock._timeout_locked() is None  # stood still through it: park
    enter(clock)
    host.ns += 400
    assert clock._timeout_locked() == 600 / SECOND  # running: converted at rate 1
    host.ns += 100
    leave(clock)  # stopped at 500, after moving since the last look: one more wait
    assert clock._timeout_locked() == 500 / SECOND
    assert clock._timeout_locked() is None


def test_the_timer_thread_sleeps_through_a_pause_and_wakes_when_a_vcpu_enters():
    clock, host = make()
    fired = threading.Event()
    clock.timer(lambda d: fired.set()).arm(1_000_000)  # 1 ms of guest time
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            for timer, deadline in clock.wait_due():
                timer.fire(deadline)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    host.ns += 10 * SECOND  # held stopped: far past the deadline in host time
    clock.poke()  # even woken, it finds no guest time passed
    assert not fired.wait(QUIET)
    enter(clock)  # wakes the parked thread; it now waits for the deadline
    host.ns += 2_000_000
    clock.poke()
    assert fired.wait(WAIT)
    stop.set()
    clock.poke()
    thread.join(WAIT)
    assert not thread.is_alive()


def test_an_earlier_deadline_wakes_the_timer_thread():
    clock, _host = make()
    enter(clock)
    clock.timer(lambda d: None).arm(3600 * SECOND)
    got: list = []
    done = threading.Event()
    thread = threading.Thread(target=lambda: (got.extend(clock.wait_due()), done.set()),
                              daemon=True)
    thread.start()
    clock.timer(lambda d: None).arm(0)  # due now: the thread must not sleep an hour
    assert done.wait(WAIT)
    thread.join(WAIT)


def test_poke_returns_wait_due_at_once():
    clock, _host = make()
    clock.poke()
    assert clock.wait_due() == []  # no timer and the clock stopped: yet no blocking


def test_manual_clock_moves_only_by_advance_and_fires_on_the_caller():
    clock = ManualClock()
    seen: list[tuple[int, int]] = []
    period = 100

    def periodic(deadline: int) -> None:
        seen.append((deadline, clock.now()))
        timer.arm(deadline + period)

    timer = clock.timer(periodic)
    timer.arm(period)
    enter(clock)  # vCPUs entering the guest do not move a manual clock
    leave(clock)
    assert clock.now() == 0 and seen == []
    clock.advance(250)
    assert seen == [(100, 250), (200, 250)] and clock.now() == 250
    clock.advance(50)
    assert seen[-1] == (300, 300)
