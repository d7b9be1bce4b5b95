"""A run lent to another thread for a while (mailbox.py): its end kicks the slice and
keeps the vCPU out of the guest until the loan is finished, and an end that comes late,
for a loan already finished, leaves later runs alone."""

from __future__ import annotations

from stub.vmm.clock import GuestClock
from stub.vmm.mailbox import Mailbox


def _mailbox() -> tuple[Mailbox, list[str]]:
    kicks: list[str] = []
    mail = Mailbox(lambda: kicks.append("kick"), lambda: False, GuestClock())
    return mail, kicks


def test_the_end_of_a_loan_kicks_the_slice_and_refuses_the_next_entry():
    mail, kicks = _mailbox()
    loan = mail.start_loan()
    assert mail.enter_guest(kickable=True)
    mail.end_loan(loan)
    assert kicks == ["kick"] and mail.loan_over
    mail.leave_guest()
    assert not mail.enter_guest(kickable=True)  # the run loop goes round and gives it back
    mail.finish_loan()
    assert not mail.loan_over and mail.enter_guest(kickable=True)


def test_a_late_end_of_a_finished_loan_does_nothing():
    mail, kicks = _mailbox()
    first = mail.start_loan()
    mail.finish_loan()  # the breakpoint came first
    assert mail.enter_guest(kickable=True)  # the owner thread's own run
    mail.end_loan(first)  # the ticker fires the first loan's timer only now
    assert not mail.loan_over and kicks == []
    mail.leave_guest()
    second = mail.start_loan()
    mail.end_loan(first)  # still late for the second loan
    assert not mail.loan_over
    mail.end_loan(second)
    assert mail.loan_over
