"""The guest turn (stub/vmm/turn.py): one vCPU of a VM in the guest at a time, because
Unicorn's lock-prefixed read-modify-writes are not atomic between two ``Uc``."""

from __future__ import annotations

import struct
import threading

from stub.vmm.api import Cap, ExitKind
from stub.vmm.turn import GuestTurn
from tests.vmm.conftest import Runner, needs_binutils

WAIT = 10.0  # seconds: bounded waits, never sleeps
INCREMENTS = 300_000

LOCKED_COUNT = f"""
main:
    mov eax, 1
    lea rbx, [rip + count]
    out 0xeb, eax            /* start vCPU 1 at count; vCPU 0 counts too */
count:
    mov rcx, {INCREMENTS}
1:
    lock inc qword ptr [rip + counter]
    dec rcx
    jnz 1b
    int3
.data
.balign 8
counter: .quad 0
.text
"""


@needs_binutils
def test_two_vcpus_lose_no_locked_increment(make_vm):
    vm, sym = make_vm(LOCKED_COUNT, vcpus=2)
    assert vm.turn is not None
    for vcpu in vm.vcpus:
        vcpu.set_capability(Cap.BPT_EXIT, True)
    runners = [Runner(vcpu).go() for vcpu in vm.vcpus]
    assert all(r.result().kind is ExitKind.BPT for r in runners)
    assert struct.unpack("<Q", vm.read_phys(sym["counter"], 8))[0] == 2 * INCREMENTS


def test_one_vcpu_has_no_turn_to_take():
    assert GuestTurn.for_vcpus(1, lambda i: None) is None


class Yields:
    """Records yield requests, with an event per request."""

    def __init__(self):
        self.asked: list[int] = []
        self.event = threading.Event()

    def __call__(self, index: int) -> None:
        self.asked.append(index)
        self.event.set()


def _enter_on_thread(turn: GuestTurn, index: int, urgent: bool = False) -> threading.Event:
    entered = threading.Event()
    threading.Thread(target=lambda: (turn.enter(index, urgent), entered.set()),
                     daemon=True).start()
    return entered


def test_a_step_asks_the_holder_to_yield_at_once_and_gets_the_turn_when_it_leaves():
    yields = Yields()
    turn = GuestTurn(yields, quantum=WAIT)  # only an urgent request asks before WAIT
    turn.enter(0)
    entered = _enter_on_thread(turn, 1, urgent=True)
    assert yields.event.wait(WAIT) and yields.asked == [0]
    assert not entered.is_set() and turn.holder == 0
    turn.leave(0)
    assert entered.wait(WAIT) and turn.holder == 1
    turn.leave(1)
    assert turn.holder is None


def test_a_free_slice_is_asked_again_every_quantum_until_it_leaves():
    yields = Yields()
    turn = GuestTurn(yields, quantum=0.001)
    turn.enter(0)
    entered = _enter_on_thread(turn, 1)
    for _ in range(3):  # a kick that finds the holder between slices is lost: ask again
        assert yields.event.wait(WAIT)
        yields.event.clear()
    assert set(yields.asked) == {0} and not entered.is_set()
    turn.leave(0)
    assert entered.wait(WAIT) and turn.holder == 1


def test_the_turn_goes_to_the_longest_waiter_not_to_the_one_that_left():
    yields = Yields()  # an urgent waiter asks right after it queued: that says it did
    turn = GuestTurn(yields, quantum=WAIT)
    turn.enter(0)
    first = _enter_on_thread(turn, 1, urgent=True)
    assert yields.event.wait(WAIT)
    yields.event.clear()
    second = _enter_on_thread(turn, 2, urgent=True)
    assert yields.event.wait(WAIT)
    turn.leave(0)
    assert first.wait(WAIT) and turn.holder == 1 and not second.is_set()
    turn.leave(1)
    assert second.wait(WAIT) and turn.holder == 2


def test_leaving_without_the_turn_changes_nothing():
    turn = GuestTurn(lambda i: None)
    turn.enter(0)
    turn.leave(1)
    assert turn.holder == 0
