"""The parts of the VMM contract beyond running and stepping: what a Vm offers
(features, and no personality or console), capabilities taken on the next entry, lending
a vCPU for a step, the inspection API and the backend lookup."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model.tf_shadow import TfShadow
from stub.vmm.api import Cap, ExitKind, Feature, VmmError
from stub.vmm.backends import BACKENDS, create_vm
from tests.vmm.conftest import MEMORY, WAIT, Console, Runner, guest, run_to_stop, step, u64


def test_the_vm_offers_lending_and_bounded_runs_and_hides_its_machine(make_vm):
    vm, _ = make_vm("main:\n int3\n")
    assert vm.features == {Feature.LEND, Feature.LEND_RUN, Feature.BOUNDED_RUN,
                           Feature.DEBUG_POINTS, Feature.RANGE_STEP, Feature.RESET}
    assert not hasattr(vm, "personality") and not hasattr(vm, "console_output")
    assert vm.cpu_model.name == "amd"


def test_get_capability_answers_what_was_asked(make_vm):
    vm, _ = make_vm("main:\n int3\n", personality="intel")
    v = vm.vcpus[0]
    v.set_capability(Cap.MTRAP_EXIT, True)
    v.set_capability(Cap.BPT_EXIT, True)
    v.set_capability(Cap.MASK_HWINTR, True)
    assert v.get_capability(Cap.MTRAP_EXIT) and v.get_capability(Cap.BPT_EXIT)
    assert v.inspect().caps == {Cap.MTRAP_EXIT, Cap.BPT_EXIT, Cap.MASK_HWINTR}


# The guest spins until the test writes `go` (straight to RAM: write_phys would kick
# the vCPU, and the kick under test must be the capability's own), then hits an int3.
SPIN_THEN_INT3 = """
main:
    mov al, 'x'
    out 0xe9, al
1:  cmp qword ptr [rip + go], 0
    je 1b
    int3
    jmp main
.data
go: .quad 0
"""


def test_bpt_exit_asked_while_running_takes_effect_at_once(make_vm):
    console = Console()
    vm, sym = make_vm(SPIN_THEN_INT3, console=console)
    v = vm.vcpus[0]
    runner = Runner(v).go()
    assert console.event(b"x").wait(WAIT)  # inside run(), free running
    v.set_capability(Cap.BPT_EXIT, True)
    assert v.get_capability(Cap.BPT_EXIT)
    vm.ram.write(sym["go"], (1).to_bytes(8, "little"))
    exit_ = runner.result()
    assert exit_.kind is ExitKind.BPT and u64(vm, sym["bp_count"]) == 0
    assert Cap.BPT_EXIT in v.inspect().caps


def test_step_capabilities_change_only_outside_run(make_vm):
    vm, _ = make_vm("main:\n cli\n hlt\n", personality="intel")
    v = vm.vcpus[0]
    runner = Runner(v).go()
    assert v.waiting.wait(WAIT)  # inside run(), blocked in hlt
    with pytest.raises(VmmError, match="outside run"):
        v.set_capability(Cap.MTRAP_EXIT, True)
    v.request_suspend()
    assert runner.result().kind is ExitKind.DEBUG
    v.set_capability(Cap.MTRAP_EXIT, True)  # parked: fine
    assert v.get_capability(Cap.MTRAP_EXIT)


@pytest.mark.parametrize("personality", ["amd", "intel"])
def test_a_lent_step_runs_on_the_callers_thread(make_vm, personality):
    vm, sym = make_vm("main:\n sti\n int3\nt: nop\n hlt\n nop\n", personality=personality)
    v = vm.vcpus[0]
    run_to_stop(v)
    cap = Cap.MTRAP_EXIT if personality == "intel" else Cap.RFLAGS_TF
    v.set_capability(cap, True)
    exit_ = v.run_lent()
    assert exit_.kind in (ExitKind.MTRAP, ExitKind.DB) and exit_.rip == sym["t"] + 1
    assert v.run_lent().rip == sym["t"] + 2  # the hlt ran: halted
    assert v.halted
    assert v.run_lent() is None  # nothing to wake it: give it back, without blocking
    v.post_tick()
    assert v.run_lent().rip == sym["h_timer"]  # the tick's delivery is the step
    v.set_capability(cap, False)


def test_a_lent_vcpu_must_be_armed(make_vm):
    vm, _ = make_vm("main:\n int3\n")
    with pytest.raises(VmmError, match="step capability"):
        vm.vcpus[0].run_lent()


def test_a_replacement_tf_shadow_takes_over(make_vm):
    class Counting(TfShadow):
        traps = 0

        def trace_trap(self, tf_after):
            Counting.traps += 1
            return super().trace_trap(tf_after)

    vm, _ = make_vm("main:\n int3\n nop\n nop\n")
    v = vm.vcpus[0]
    run_to_stop(v)
    v.replace_tf_shadow(Counting())
    step(v)
    assert Counting.traps == 1 and v.inspect().tf_shadow == "off"


def test_inspection_of_a_parked_vcpu(make_vm):
    vm, sym = make_vm("main:\n int3\nt: pushfq\n nop\n")
    v = vm.vcpus[0]
    run_to_stop(v)
    state = v.inspect()
    assert (state.caps, state.tf_shadow, state.guest_tf) == (frozenset(), "off", False)
    assert state.started and not state.halted and not state.suspend_requested
    v.request_suspend()
    v.post_tick()
    v.set_capability(Cap.RFLAGS_TF, True)
    state = v.inspect()
    assert state.suspend_requested and state.tick_pending and state.caps == {Cap.RFLAGS_TF}
    assert state.raw_rflags & 0x100 and not state.guest_tf and state.tf_shadow == "on"
    assert v.read_virtual(sym["t"], 2) == b"\x9c\x90"
    assert v.read_virtual(0x7FFF_FFFF_F000 - 1, 4, partial=True) == b""


def test_backends_by_name():
    assert BACKENDS == ("emulated",)
    with pytest.raises(ValueError, match="unknown VMM backend 'kvm'.*emulated"):
        create_vm("kvm", kernel=b"", vcpus=1, memory=MEMORY, cpu="amd", timer_hz=0)
    seen = []
    vm = create_vm("emulated", kernel=guest("main:\n mov al, 'k'\n out 0xe9, al\n int3\n").elf,
                   vcpus=1, memory=MEMORY, cpu="intel", timer_hz=0, console=seen.append)
    try:
        v = vm.vcpus[0]
        v.set_capability(Cap.BPT_EXIT, True)
        assert v.run().kind is ExitKind.BPT and seen == [b"k"]
    finally:
        vm.shutdown()


def test_naming_the_backends_imports_none():
    code = "import sys, stub.vmm.backends; assert 'unicorn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

