"""Range steps (Feature.RANGE_STEP): a step that goes on while RIP stays in
[start, end), on both step mechanisms, ending with the step's trap or earlier with any
other exit; the guest never sees the debugger's TF inside the range."""

from __future__ import annotations

import pytest

from model.points import HW, WRITE, Point
from stub.vmm.api import Cap, ExitKind
from tests.vmm.conftest import Runner, u64

LOOP = """
main:
    int3
s:  xor ecx, ecx
r0: inc ecx
    pushfq
    pop rax
    or [rip + leaks], rax
    cmp ecx, 100
    jne r0
out: nop
    int3
.data
.balign 4096
leaks: .quad 0
var:   .quad 0
.text
"""

PERSONALITIES = ["intel", "amd", "amd-nomask"]


def _cap(vcpu):
    return Cap.MTRAP_EXIT if Cap.MTRAP_EXIT in vcpu.vm.cpu_model.settable else Cap.RFLAGS_TF


def start(make_vm, body, personality):
    vm, sym = make_vm(body, personality=personality)
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = v.run()
    assert exit_.kind is ExitKind.BPT
    v.set_register("rip", exit_.rip + 1)
    return vm, v, sym


def range_step(v, start, end, mask=True):
    cap = _cap(v)
    if mask and Cap.MASK_HWINTR in v.vm.cpu_model.settable:
        v.set_capability(Cap.MASK_HWINTR, True)
    v.set_capability(cap, True)
    v.set_step_range(start, end)
    try:
        return v.run()
    finally:
        v.set_capability(cap, False)
        if mask and Cap.MASK_HWINTR in v.vm.cpu_model.settable:
            v.set_capability(Cap.MASK_HWINTR, False)


def is_trap(exit_):
    return exit_.kind is ExitKind.MTRAP or (exit_.kind is ExitKind.DB and exit_.trace_trap)


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_range_step_runs_the_loop_and_stops_outside(make_vm, personality):
    vm, v, sym = start(make_vm, LOOP, personality)
    slices = []
    real = v._slices.run
    v._slices.run = lambda *a, **k: slices.append(a) or real(*a, **k)  # count slices
    exit_ = range_step(v, sym["s"], sym["out"])
    del v._slices.run
    assert is_trap(exit_) and exit_.rip == sym["out"]
    assert v.get_register("rcx") == 100
    assert len(slices) < 10  # natively, not one slice per instruction (~700 of them)
    assert u64(vm, sym["leaks"]) & 0x100 == 0  # no pushf image ever had TF
    assert v.get_register("rflags") & 0x100 == 0 and v.inspect().raw_rflags & 0x100 == 0
    # The range was for that step only: the next step is one instruction.
    cap = _cap(v)
    v.set_capability(cap, True)
    exit_ = v.run()
    v.set_capability(cap, False)
    assert is_trap(exit_) and exit_.rip == sym["out"] + 1
    assert not v._ranger._hooks  # the range's hooks went with it


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_bounded_range_steps_instruction_by_instruction(make_vm, personality):
    _vm, v, sym = start(make_vm, LOOP, personality)
    cap = _cap(v)
    v.set_capability(cap, True)
    v.set_step_range(sym["s"], sym["out"])
    budgets = 0
    while (exit_ := v.run(max_instructions=7)).kind is ExitKind.BUDGET:
        budgets += 1  # the range survives the bounded run's BUDGET exits
    v.set_capability(cap, False)
    assert is_trap(exit_) and exit_.rip == sym["out"] and v.get_register("rcx") == 100
    assert budgets >= 600 // 7  # 100 passes of 6 instructions, seven at a time


@pytest.mark.parametrize("personality", ["intel", "amd"])
def test_a_watchpoint_in_the_range_ends_it_early(make_vm, personality):
    body = LOOP.replace("    cmp ecx, 100\n", "    cmp ecx, 50\n    jne 1f\n"
                        "w:  mov [rip + var], rcx\n1:  cmp ecx, 100\n")
    vm, v, sym = start(make_vm, body, personality)
    point = Point(WRITE, sym["var"], 8)
    vm.arm_point(point, v)
    exit_ = range_step(v, sym["s"], sym["out"])
    assert exit_.kind is ExitKind.WATCH and exit_.rip == sym["w"] and exit_.point == point
    assert v.get_register("rcx") == 50


@pytest.mark.parametrize("personality", ["intel", "amd"])
def test_a_va_breakpoint_in_the_range_ends_it_early(make_vm, personality):
    vm, v, sym = start(make_vm, LOOP, personality)
    point = Point(HW, sym["r0"])
    vm.arm_point(point, v)
    exit_ = range_step(v, sym["s"], sym["out"])
    assert exit_.kind is ExitKind.HWBREAK and exit_.rip == sym["r0"]
    assert v.get_register("rcx") == 0
    vm.disarm_point(point)


@pytest.mark.parametrize("personality", ["intel", "amd"])
def test_an_int3_in_the_range_ends_it_early(make_vm, personality):
    body = LOOP.replace("out: nop\n", "b:  int3\nout: nop\n")
    _vm, v, sym = start(make_vm, body, personality)
    exit_ = range_step(v, sym["s"], sym["out"])
    assert exit_.kind is ExitKind.BPT and exit_.rip == sym["b"]


@pytest.mark.parametrize("personality", ["intel", "amd"])
def test_a_suspend_request_ends_an_endless_range(make_vm, personality):
    _vm, v, sym = start(make_vm, "main:\n int3\ns: jmp s\nout: int3\n", personality)
    cap = _cap(v)
    v.set_capability(cap, True)
    v.set_step_range(sym["s"], sym["out"])
    runner = Runner(v).go()
    v.request_suspend()
    exit_ = runner.result()
    v.set_capability(cap, False)
    assert exit_.kind is ExitKind.DEBUG and exit_.rip == sym["s"]


def test_a_bad_range_is_refused(make_vm):
    from stub.vmm.api import VmmError
    _vm, v, _sym = start(make_vm, LOOP, "intel")
    with pytest.raises(VmmError):
        v.set_step_range(10, 10)


def test_an_interrupt_without_masking_ends_the_range_at_its_handler(make_vm):
    _vm, v, sym = start(make_vm, "main:\n int3\n sti\n nop\ns: jmp s\nout: int3\n", "amd-nomask")
    v.set_register("rip", sym["s"])
    v.set_register("rflags", v.get_register("rflags") | 0x200)
    v.post_tick()
    exit_ = range_step(v, sym["s"], sym["out"], mask=False)
    assert is_trap(exit_) and exit_.rip == sym["h_timer"]
