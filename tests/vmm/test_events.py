"""Interrupts and exceptions while free running: the VMM delivers them through the IDT."""

from __future__ import annotations

import pytest

from stub.vmm.api import Cap, ExitKind
from tests.vmm.conftest import DEFAULT_GATES, run_bounded, run_to_stop, step, u64


def run_bpt(v):
    v.set_capability(Cap.BPT_EXIT, True)
    return v.run()


@pytest.mark.parametrize("wait", ["pause", "hlt"])
def test_timer_ticks_are_delivered(make_vm, wait):
    vm, sym = make_vm(f"""
main:
    sti
1:  {wait}
    cmp qword ptr [rip + ticks], 3
    jb 1b
    int3
""", timer_hz=1000)
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = run_bounded(v)
    assert exit_.kind is ExitKind.BPT and u64(vm, sym["ticks"]) >= 3


def test_no_tick_while_interrupts_are_off_or_masked(make_vm):
    vm, sym = make_vm("main:\n int3\n sti\n int3\n nop\n int3\n")
    v = vm.vcpus[0]
    v.post_tick()
    run_to_stop(v)  # IF=0 so far
    assert u64(vm, sym["ticks"]) == 0
    v.set_capability(Cap.MASK_HWINTR, True)
    run_to_stop(v)  # after sti, but masked
    assert u64(vm, sym["ticks"]) == 0
    v.set_capability(Cap.MASK_HWINTR, False)
    run_to_stop(v)
    assert u64(vm, sym["ticks"]) == 1


def test_no_tick_in_the_sti_shadow(make_vm):
    vm, sym = make_vm("main:\n int3\n sti\nt: cli\n int3\n", personality="amd-nomask")
    v = vm.vcpus[0]
    run_to_stop(v)
    step(v)  # sti
    v.post_tick()
    exit_ = step(v)  # cli runs first: after it, interrupts are off again
    assert exit_.rip == sym["t"] + 1 and u64(vm, sym["ticks"]) == 0


def test_tick_after_the_sti_shadow_when_free_running(make_vm):
    vm, sym = make_vm("main:\n int3\n sti\nt: nop\nu: int3\n", personality="amd-nomask")
    v = vm.vcpus[0]
    run_to_stop(v)
    step(v)  # sti; now a tick is pending right after it
    v.post_tick()
    assert run_bpt(v).rip == sym["u"]
    assert u64(vm, sym["ticks"]) == 1 and u64(vm, sym["tick_rip"]) == sym["u"]


def test_page_fault_error_code_and_cr2(make_vm):
    vm, sym = make_vm("main:\n mov rax, 0x300000000\n mov [rax], ecx\n")
    v = vm.vcpus[0]
    exit_ = run_bpt(v)
    assert exit_.kind is ExitKind.BPT and exit_.rip == sym["fatal"]
    assert u64(vm, sym["pf_count"]) == 1
    assert u64(vm, sym["last_cr2"]) == 0x3_0000_0000
    assert u64(vm, sym["last_err"]) == 0x2  # write, not present


def test_general_protection_and_divide_error(make_vm):
    vm, sym = make_vm("main:\n mov ax, 0x1233\n mov ds, ax\n")
    v = vm.vcpus[0]
    assert run_bpt(v).rip == sym["fatal"]
    assert (u64(vm, sym["gp_count"]), u64(vm, sym["last_err"])) == (1, 0x1230)
    vm, sym = make_vm("main:\n xor ecx, ecx\n div ecx\n")
    v = vm.vcpus[0]
    assert run_bpt(v).rip == sym["fatal"] and u64(vm, sym["de_count"]) == 1


def test_faults_repeat_without_double_faulting(make_vm):
    """Unicorn would turn the second #DE into a #DF (see test_unicorn_facts)."""
    vm, sym = make_vm("""
main:
    xor ecx, ecx
    div ecx
    div ecx
    ud2
    div ecx
    int3
skip:
    COUNT de_count
    add qword ptr [rsp], 2
    iretq
""", gates={**DEFAULT_GATES, 0: "skip"})
    v = vm.vcpus[0]
    assert run_bpt(v).kind is ExitKind.BPT
    assert (u64(vm, sym["de_count"]), u64(vm, sym["ud_count"])) == (3, 1)


def test_software_interrupt(make_vm):
    vm, sym = make_vm("main:\n int 0x40\n int3\n", gates={**DEFAULT_GATES, 0x40: "h_bp"})
    v = vm.vcpus[0]
    assert run_bpt(v).kind is ExitKind.BPT and u64(vm, sym["bp_count"]) == 1


def test_missing_idt_entry_is_a_triple_fault(make_vm):
    gates = {k: h for k, h in DEFAULT_GATES.items() if k not in (6, 8)}
    vm, sym = make_vm("main:\n nop\nbad: ud2\n", gates=gates, vcpus=2)
    exit_ = vm.vcpus[0].run()
    assert exit_.kind is ExitKind.TRIPLE_FAULT and "0x6" in exit_.detail
    assert "not present" in exit_.detail
    assert exit_.detail.startswith(f"#UD at rip={sym['bad']:#x} cr2=")
    assert exit_.detail.endswith("-> #DF (IDT entry 0x8 is not present) -> triple fault")
    # The VM goes on (the stub decides): registers as at the fault, the fault again.
    assert not vm.over and vm.vcpus[0].get_register("rip") == sym["bad"] == exit_.rip
    assert vm.vcpus[0].run().kind is ExitKind.TRIPLE_FAULT


def test_no_idt_at_all(make_vm):
    vm, _ = make_vm("main:\n lidt [rip + zero]\n ud2\nzero: .quad 0, 0\n")
    exit_ = vm.vcpus[0].run()
    assert exit_.kind is ExitKind.TRIPLE_FAULT and "limit" in exit_.detail


def test_memory_outside_ram_ends_the_vm(make_vm):
    vm, _ = make_vm("main:\n mov rax, 0x40000000\n mov rcx, [rax]\n")
    exit_ = vm.vcpus[0].run()
    assert exit_.kind is ExitKind.TRIPLE_FAULT and "outside RAM" in exit_.detail


def test_unknown_ports(make_vm):
    # Ports no device of the PC claims (0x70 is the CMOS now, 0x80 the POST port).
    vm, _ = make_vm("main:\n mov eax, 0x12345678\n in eax, 0x50\n out 0x7e, al\n"
                      " mov rbx, rax\n int3\n")
    v = vm.vcpus[0]
    assert run_bpt(v).kind is ExitKind.BPT and v.get_register("rbx") == 0xFFFF_FFFF


def test_pending_tick_is_taken_in_the_next_short_interrupt_window(make_vm):
    """IF is 1 only between an sti and a cli two instructions later; the tick, raised
    while IF=0, must be delivered there (after the sti shadow), not after a later kick."""
    vm, sym = make_vm("""
main:
    cli
    mov ecx, 50
1:  dec ecx
    jnz 1b
    sti
    nop
w:  cli
    cmp qword ptr [rip + ticks], 0
    je main
    int3
""")
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    v.post_tick()  # no timer thread (timer_hz=0): nothing else would stop the loop
    assert run_bounded(v).kind is ExitKind.BPT
    assert u64(vm, sym["ticks"]) == 1 and u64(vm, sym["tick_rip"]) == sym["w"]


def test_console_and_poweroff(make_vm):
    seen = []
    vm, _ = make_vm("main:\n mov al, 'h'\n out 0xe9, al\n mov dx, 0xe9\n mov al, 'i'\n"
                    " out dx, al\n mov edi, 3\n jmp poweroff\n", vcpus=2, console=seen.append)
    v0, v1 = vm.vcpus
    exit_ = v0.run()
    assert (exit_.kind, exit_.code) == (ExitKind.POWEROFF, 3)
    assert vm.console.output == b"hi" and seen == [b"h", b"i"]
    assert v1.run().kind is ExitKind.SHUTDOWN and not v1.wait_started(0)


@pytest.mark.parametrize("personality", ["amd", "intel", "amd-nomask"])
def test_a_stepped_power_off_ends_the_vm(make_vm, personality):
    # The power-off 'out' is followed, inside the same emu_start, by the step's #DB
    # (AMD) or the code hook's stop (Intel): the power-off must win, not be lost.
    vm, _sym = make_vm("main:\n int3\n mov edi, 3\n jmp poweroff\n", personality=personality)
    v = vm.vcpus[0]
    run_to_stop(v)
    kinds = [step(v).kind for _ in range(4)]  # mov edi; jmp; mov eax, edi; out
    trap = ExitKind.MTRAP if personality == "intel" else ExitKind.DB
    assert kinds == [trap, trap, trap, ExitKind.POWEROFF]
    assert v.run().kind is ExitKind.POWEROFF  # and stays over
