"""SVM-style steps (RFLAGS_TF): the real trap flag, never visible to the guest.

Each guest stops at an ``int3`` (BPT exit, stepped over like a debugger would) right
before the instruction under test; ``step()`` is enable -> run -> disable.
"""

from __future__ import annotations

import pytest

from stub.vmm.api import Cap, ExitKind
from stub.vmm.cpu import DR6_BS
from tests.vmm.conftest import run_to_stop, step, u64

TF, IF = 0x100, 0x200


def stack(vm, v, offset=0, size=8):
    return int.from_bytes(vm.read_phys(v.translate(v.get_register("rsp") + offset), size),
                          "little")


def test_pushf_image_never_carries_the_debuggers_tf(make_vm):
    vm, sym = make_vm("main:\n int3\nt: pushfq\n pushfq\n nop\n jmp main\n")
    v = vm.vcpus[0]
    run_to_stop(v)
    exit_ = step(v)
    assert exit_.kind is ExitKind.DB and exit_.trace_trap and exit_.pushf_intercept
    assert not exit_.tf_shadow_val and exit_.rip == sym["t"] + 1
    assert stack(vm, v) & TF == 0
    assert v.cpu.dr6 & DR6_BS == 0  # claimed: no stale BS left for the guest
    exit_ = step(v)  # nested: the second image is clean too, the first untouched
    assert exit_.pushf_intercept and stack(vm, v) & TF == 0 and stack(vm, v, 8) & TF == 0
    assert v.get_register("rflags") & TF == 0 and v.cpu.rflags & TF == 0
    exit_ = step(v)
    assert exit_.trace_trap and not exit_.pushf_intercept and exit_.rip == sym["t"] + 3


def test_pushfw_fixes_the_two_byte_image_only(make_vm):
    vm, sym = make_vm("main:\n push -1\n int3\nt: pushfw\n nop\n")
    v = vm.vcpus[0]
    run_to_stop(v)
    exit_ = step(v)
    assert exit_.pushf_intercept and exit_.rip == sym["t"] + 2
    assert stack(vm, v, 0, 2) & TF == 0
    assert stack(vm, v, 2, 8) == 0xFFFF_FFFF_FFFF_FFFF  # the qword below, untouched


GUEST_TF = """
main:
    pushfq
    or qword ptr [rsp], 0x100
    popfq                 /* the guest single-steps itself from here */
    nop
    int3
t:  pushfq
    nop
    nop
    pushfq
    and qword ptr [rsp], -0x101
    popfq                 /* and stops */
    int3
    jmp main
"""


def test_guest_tf_goes_to_the_guest_and_survives_debugging(make_vm):
    vm, sym = make_vm(GUEST_TF)
    v = vm.vcpus[0]
    run_to_stop(v)
    # The guest's own TF: popfq's trap comes after the nop; delivered to the guest.
    assert u64(vm, sym["db_count"]) == 1
    assert v.get_register("rflags") & TF
    # pushf with the guest's own TF = 1: the image keeps it, and the guest's own #DB
    # for the pushf is delivered too (the one the CPU raised was the debugger's): the
    # step ends at its handler, as MTF does on Intel.
    exit_ = step(v)
    assert exit_.kind is ExitKind.DB and exit_.pushf_intercept
    assert exit_.rip == sym["h_db"] and not exit_.tf_shadow_val  # the handler: TF clear
    assert stack(vm, v) == sym["t"] + 1  # the #DB frame: RIP after the pushf ...
    assert stack(vm, v, 16) & TF  # ... RFLAGS with the guest's TF ...
    old_rsp = stack(vm, v, 24)  # ... and where the pushf image is (above the frame)
    assert u64(vm, v.translate(old_rsp)) & TF
    assert v.cpu.dr6 & DR6_BS  # the guest's handler sees a single-step trap
    assert v.get_register("rflags") & TF == 0 and v.cpu.rflags & TF == 0
    assert u64(vm, sym["db_count"]) == 1  # the handler has not run yet
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = v.run()  # free running: the handler, then the guest traces itself again
    assert exit_.kind is ExitKind.BPT
    # the reflected one, then traps after: nop, nop, pushfq, and, popfq (TF at its
    # start) = 1 + 5 more
    assert u64(vm, sym["db_count"]) == 1 + 1 + 5
    assert v.get_register("rflags") & TF == 0


POPF = """
main:
    push 0x302            /* TF | IF | 2 */
    push 0x202
    int3
t:  popfq
    popfq
    nop
    nop
"""


def test_popf_changes_the_shadow(make_vm):
    vm, sym = make_vm(POPF)
    v = vm.vcpus[0]
    run_to_stop(v)
    exit_ = step(v)  # pops 0x202: TF stays clear
    assert exit_.kind is ExitKind.DB and not exit_.tf_shadow_val and not exit_.pushf_intercept
    assert v.get_register("rflags") == 0x202
    v.set_capability(Cap.RFLAGS_TF, True)
    exit_ = v.run()  # pops 0x302: the guest sets TF; the shadow takes it
    assert exit_.tf_shadow_val and exit_.rip == sym["t"] + 2
    assert v.get_register("rflags") & TF
    v.set_capability(Cap.RFLAGS_TF, False)
    assert v.cpu.rflags & TF  # the guest's TF, now real
    v.set_register("rflags", 0x202)  # and the guest's popf that clears it while stepped:
    v.set_capability(Cap.RFLAGS_TF, True)
    assert not v.get_register("rflags") & TF


def test_popf_clearing_the_guests_own_tf(make_vm):
    vm, sym = make_vm("main:\n push 0x2\n int3\nt: popfq\n nop\n")
    v = vm.vcpus[0]
    run_to_stop(v)
    v.set_register("rflags", 0x102)  # the guest's own TF
    exit_ = step(v)
    # x86 traps on the TF the popf started with: the guest gets its #DB, with the
    # popped RFLAGS (TF clear) in the frame.
    assert exit_.trace_trap and not exit_.tf_shadow_val and exit_.rip == sym["h_db"]
    assert stack(vm, v) == sym["t"] + 1 and stack(vm, v, 16) & TF == 0
    assert v.cpu.rflags & TF == 0 and u64(vm, sym["db_count"]) == 0  # not run yet
    v.set_capability(Cap.BPT_EXIT, True)
    v.set_register("rip", sym["h_db"])
    assert step(v).rip == sym["h_db"] + 8  # lock inc qword ptr [rip+x]: 8 bytes
    assert u64(vm, sym["db_count"]) == 1


def test_guest_int3_is_delivered_or_exits(make_vm):
    vm, sym = make_vm("main:\n int3\n int3\nt: nop\n jmp t\n")
    v = vm.vcpus[0]
    run_to_stop(v)  # the first int3 as a debugger breakpoint
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = v.run()  # the second: a BPT exit at the int3, not delivered
    assert (exit_.kind, exit_.rip, exit_.inst_length) == (ExitKind.BPT, sym["t"] - 1, 1)
    assert u64(vm, sym["bp_count"]) == 0
    # The debugger does not own it: hand it back to the guest.
    v.inject_exception(3, exit_.inst_length)
    assert v.get_register("rip") == sym["h_bp"]
    assert stack(vm, v) == sym["t"]  # frame RIP after the int3
    v.set_capability(Cap.RFLAGS_TF, True)
    assert v.run().rip == sym["h_bp"] + 8  # the handler's lock inc ran
    v.set_capability(Cap.RFLAGS_TF, False)
    assert u64(vm, sym["bp_count"]) == 1


def test_guest_int3_without_bpt_exit_reaches_the_handler(make_vm):
    vm, sym = make_vm("main:\n int3\n int3\nt: int3\n jmp t\n")
    v = vm.vcpus[0]
    run_to_stop(v)
    exit_ = step(v)  # the stepped int3 is delivered: the step ends in the handler
    assert exit_.kind is ExitKind.DB and exit_.rip == sym["h_bp"]
    assert stack(vm, v) == sym["t"]  # frame RIP after the int3
    assert stack(vm, v, 16) & TF == 0  # the frame's RFLAGS image
    assert v.cpu.rflags & TF == 0


TIMER = """
main:
    sti
    int3
t:  nop
    nop
    jmp t
"""


@pytest.mark.parametrize("personality", ["amd", "amd-nomask"])
def test_timer_during_a_step(make_vm, personality):
    vm, sym = make_vm(TIMER, personality=personality)
    v = vm.vcpus[0]
    run_to_stop(v)
    v.post_tick()  # a tick is pending as the step starts
    exit_ = step(v, mask=personality == "amd")
    if personality == "amd":  # masked: the instruction runs, the tick waits
        assert exit_.rip == sym["t"] + 1 and u64(vm, sym["ticks"]) == 0
        v.set_capability(Cap.BPT_EXIT, True)
        vm.write_phys(sym["t"] + 1, b"\xcc")
        assert v.run().kind is ExitKind.BPT
        assert u64(vm, sym["ticks"]) == 1  # delivered once unmasked
        return
    assert exit_.kind is ExitKind.DB and exit_.trace_trap and exit_.rip == sym["h_timer"]
    assert stack(vm, v) == sym["t"]  # frame RIP: the instruction not yet stepped
    image = stack(vm, v, 16)
    assert image & TF == 0 and image & IF
    assert v.cpu.rflags & (TF | IF) == 0


def test_timer_frame_keeps_the_guests_own_tf(make_vm):
    vm, sym = make_vm(TIMER, personality="amd-nomask")
    v = vm.vcpus[0]
    run_to_stop(v)
    v.set_register("rflags", v.get_register("rflags") | TF)
    v.post_tick()
    exit_ = step(v)
    assert exit_.rip == sym["h_timer"] and stack(vm, v, 16) & TF


EXC = """
main:
    mov rax, 0x200000000
    int3
t:  ud2
    mov rcx, [rax]
"""


def test_exception_raised_by_the_stepped_instruction(make_vm):
    vm, sym = make_vm(EXC)
    v = vm.vcpus[0]
    run_to_stop(v)
    exit_ = step(v)  # ud2 -> #UD: the step ends at the handler, frame clean
    assert exit_.kind is ExitKind.DB and exit_.trace_trap and exit_.rip == sym["h_ud"]
    assert stack(vm, v) == sym["t"] and stack(vm, v, 16) & TF == 0
    v.set_register("rip", sym["t"] + 2)  # leave the handler; go to the load
    v.set_register("rsp", v.get_register("rsp") + 40)
    exit_ = step(v)  # #PF with an error code: RFLAGS at RSP+24
    assert exit_.rip == sym["h_pf"] and v.get_register("cr2") == 0x2_0000_0000
    assert stack(vm, v) == 0 and stack(vm, v, 8) == sym["t"] + 2
    assert stack(vm, v, 24) & TF == 0


IRET = """
main:
    mov rax, rsp
    push 0x10             /* ss */
    push rax              /* rsp */
    push 0x302            /* rflags: TF | IF | 2, the guest's own TF */
    push 0x08             /* cs */
    lea rax, [rip + back]
    push rax              /* rip */
    int3
t:  iretq
back:
    nop
    nop
"""


def test_iret_is_intercepted_like_popf(make_vm):
    # Found by proofs/ (finding-iret-not-intercepted): without the intercept the shadow
    # keeps the TF from before the iret and the disable clears the guest's own TF=1.
    vm, sym = make_vm(IRET)
    v = vm.vcpus[0]
    run_to_stop(v)
    exit_ = step(v)
    assert exit_.kind is ExitKind.DB and exit_.trace_trap and exit_.rip == sym["back"]
    assert exit_.tf_shadow_val
    assert v.get_register("rflags") & TF and v.cpu.rflags & TF  # the guest's, kept


@pytest.mark.parametrize("personality", ["amd", "intel"])
def test_a_step_over_pause_runs_pause_alone(make_vm, personality):
    # Unicorn's pause skips the trap-flag check and runs on into the next instruction;
    # a step must still end right after it (and after xchg r8, rax, which is no pause).
    vm, sym = make_vm("main:\n int3\np: pause\nn1: nop\nx: xchg r8, rax\nn2: nop\n"
                      " jmp main\n", personality=personality)
    v = vm.vcpus[0]
    run_to_stop(v)
    assert [step(v).rip for _ in range(3)] == [sym["n1"], sym["x"], sym["n2"]]
    assert v.get_register("rflags") & TF == 0 and v.cpu.dr6 & DR6_BS == 0


def test_insn_classify_tells_pause_from_other_nops():
    from stub.vmm.insn import classify
    assert classify(b"\xf3\x90")[0] == "pause"
    assert classify(b"\xf3\x48\x90")[0] == "pause"  # REX.W: still pause
    assert classify(b"\x90")[0] is None
    assert classify(b"\xf3\x41\x90")[0] is None  # xchg r8, rax with a stray rep
    assert classify(b"\x9c") == ("pushf", 8) and classify(b"\x66\x9d") == ("popf", 2)


def test_insn_decoding_in_32_bit_code():
    """Outside long mode 0x40-0x4F are inc/dec: ``dec eax`` before a pushf/popf/hlt is
    not that instruction (the TF step would fix a stack image nobody pushed, or take a
    flag image nobody popped)."""
    from stub.vmm.insn import classify, rep_count_width
    assert classify(b"\x48\x9c", long_mode=False)[0] is None  # dec eax (then pushf)
    assert classify(b"\x40\x9d", long_mode=False)[0] is None  # inc eax (then popf)
    assert classify(b"\x4a\xf4", long_mode=False)[0] is None  # dec edx (then hlt)
    assert classify(b"\x48\x9c")[0] == "pushf"  # REX.W pushf in 64-bit code
    assert classify(b"\x9c", long_mode=False) == ("pushf", 4)
    assert classify(b"\x66\x9d", long_mode=False) == ("popf", 2)
    assert rep_count_width(b"\xf3\xa4", long_mode=False) == 32
    assert rep_count_width(b"\x67\xf3\xa4", long_mode=False) == 16
    assert rep_count_width(b"\xf3\x48\xa5", long_mode=False) is None  # dec eax first
    assert rep_count_width(b"\xf3\x48\xa5") == 64
