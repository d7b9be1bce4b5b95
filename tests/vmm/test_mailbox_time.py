"""Which of a vCPU's moments count as guest time (mailbox.py over clock.py): a free
slice and the run loop's work after it, and idling in hlt, do; a step's time after
its one-instruction slice, and a parked vCPU, do not."""

from __future__ import annotations

from stub.vmm.clock import GuestClock
from stub.vmm.mailbox import Mailbox
from tests.vmm.conftest import needs_binutils


class HostTime:
    def __init__(self):
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def _mailbox() -> tuple[Mailbox, GuestClock, HostTime]:
    host = HostTime()
    clock = GuestClock(host)
    mail = Mailbox(lambda: None, lambda: False, clock)
    return mail, clock, host


def test_guest_time_runs_between_free_slices_until_run_returns():
    mail, clock, host = _mailbox()
    assert mail.enter_guest(kickable=True)
    host.ns += 100
    mail.leave_guest(free=True)
    host.ns += 50  # the run loop delivering an interrupt: the machine's time
    assert clock.now() == 150
    assert mail.enter_guest(kickable=True)  # the next free slice: still one vCPU
    host.ns += 10
    mail.leave_guest(free=True)
    mail.time_off()  # run() returns (a debugger's stop)
    host.ns += 1000
    assert clock.now() == 160 and clock.stands_still


def test_a_step_counts_only_its_own_slice():
    mail, clock, host = _mailbox()
    assert mail.enter_guest(kickable=False)
    host.ns += 7
    mail.leave_guest()
    host.ns += 500  # the debugger's turn
    assert clock.now() == 7


def test_idling_in_hlt_counts_and_time_off_is_idempotent():
    mail, clock, host = _mailbox()
    with mail.cond:
        mail.cond.wait = lambda *a: host.__setattr__("ns", host.ns + 40)  # "waited 40"
        mail.wait_idle_locked()
    assert clock.now() == 40 and not clock.stands_still
    mail.time_off()
    mail.time_off()
    assert clock.running == 0 and clock.now() == 40


@needs_binutils
def test_the_free_runs_instruction_in_an_interrupt_shadow_keeps_guest_time(make_vm):
    """FreeRun executes the instruction after ``sti`` alone (Linux's idle ``sti; hlt``
    at every tick): that slice is the free run's, not a step's, so guest time runs on
    after it. Linux kept its TSC as clocksource only after this (docs/linux.md)."""
    vm, _ = make_vm("main:\n    nop\n    nop\n    nop\n    int3\n")
    vcpu = vm.vcpus[0]
    slices, mail = vcpu._slices, vcpu._mail  # noqa: SLF001 - the VMM's own parts
    slices.one(free=True)
    assert vm.clock.running == 1
    mail.time_off()
    slices.one()  # a step's instruction: only its own slice counts
    assert vm.clock.running == 0
