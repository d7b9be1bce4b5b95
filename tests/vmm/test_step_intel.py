"""VT-x-style steps (MTRAP_EXIT): exactly one instruction, TF never touched."""

from __future__ import annotations

from stub.vmm.api import Cap, ExitKind
from tests.vmm.conftest import run_to_stop, step, u64

TF = 0x100

STRAIGHT = """
main:
    sti
    int3
t:  inc rax
    pushfq
    inc rax
    inc rax
1:  jmp 1b
"""


def test_one_instruction_per_step_and_no_tf(make_vm):
    vm, sym = make_vm(STRAIGHT, personality="intel")
    v = vm.vcpus[0]
    run_to_stop(v)
    v.set_capability(Cap.MTRAP_EXIT, True)
    rips = []
    for _ in range(4):
        exit_ = v.run()
        assert exit_.kind is ExitKind.MTRAP and exit_.rip == v.get_register("rip")
        assert v.cpu.rflags & TF == 0
        rips.append(exit_.rip - sym["t"])
    v.set_capability(Cap.MTRAP_EXIT, False)
    assert rips == [3, 4, 7, 10]  # inc rax is 3 bytes, pushfq 1
    assert v.get_register("rax") == 3
    assert int.from_bytes(vm.read_phys(v.translate(v.get_register("rsp")), 8),
                          "little") & TF == 0
    exit_ = step(v)  # jmp to itself: one instruction, same RIP
    assert exit_.kind is ExitKind.MTRAP and exit_.rip == sym["t"] + 10


def test_step_after_free_running_executes_one_instruction(make_vm):
    """The first count=1 step after free running needs fresh translations."""
    vm, sym = make_vm("main:\n mov ecx, 100000\n1: dec ecx\n jnz 1b\n int3\n"
                      "t: inc rax\n inc rax\n jmp t\n", personality="intel")
    v = vm.vcpus[0]
    run_to_stop(v)
    assert step(v).rip == sym["t"] + 3 and v.get_register("rax") == 1


def test_timer_during_a_step(make_vm):
    vm, sym = make_vm(STRAIGHT, personality="intel")
    v = vm.vcpus[0]
    run_to_stop(v)
    v.post_tick()
    exit_ = step(v, mask=True)  # held back: the instruction runs
    assert exit_.rip == sym["t"] + 3 and u64(vm, sym["ticks"]) == 0
    exit_ = step(v)  # delivered: MTF after event delivery, at the handler
    assert exit_.kind is ExitKind.MTRAP and exit_.rip == sym["h_timer"]
    assert v.get_register("rax") == 1  # the pushfq did not run


def test_exception_during_a_step(make_vm):
    vm, sym = make_vm("main:\n int3\nt: ud2\n", personality="intel")
    v = vm.vcpus[0]
    run_to_stop(v)
    exit_ = step(v)
    assert exit_.kind is ExitKind.MTRAP and exit_.rip == sym["h_ud"]
    assert u64(vm, sym["ud_count"]) == 0


def test_guest_own_tf_trap_during_a_step_lands_in_its_handler(make_vm):
    vm, sym = make_vm("main:\n int3\nt: nop\n nop\n", personality="intel")
    v = vm.vcpus[0]
    run_to_stop(v)
    v.set_register("rflags", v.get_register("rflags") | TF)
    exit_ = step(v)
    assert exit_.kind is ExitKind.MTRAP and exit_.rip == sym["h_db"]
    frame_rflags = v.translate(v.get_register("rsp") + 16)
    assert int.from_bytes(vm.read_phys(frame_rflags, 8), "little") & TF  # the guest's own


def test_step_over_hlt_halts(make_vm):
    vm, sym = make_vm("main:\n sti\n int3\nt: hlt\n nop\n", personality="intel")
    v = vm.vcpus[0]
    run_to_stop(v)
    assert step(v).rip == sym["t"] + 1
    v.post_tick()  # halted until the tick: the next step is its delivery
    assert step(v).rip == sym["h_timer"]


def test_no_per_instruction_hook_survives_into_free_running(make_vm):
    vm, sym = make_vm("main:\n int3\nt: nop\n nop\n int3\n", personality="intel")
    v = vm.vcpus[0]
    run_to_stop(v)
    step(v)
    assert v.inspect().code_hook  # kept between steps: gdb's stepi comes in runs
    v.set_capability(Cap.BPT_EXIT, True)
    assert v.run().rip == sym["t"] + 2
    assert not v.inspect().code_hook
