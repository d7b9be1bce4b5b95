"""Guest faults as the debugger sees them: triple faults stop the vCPU with the chain
named and the registers intact (the VM goes on); the guest's own hardware breakpoints
(DR0-DR3, DR7) raise its own #DB; system_reset; VA breakpoints in 32-bit guests."""

from __future__ import annotations

import pytest

from model.points import HW, WRITE, Point
from stub.vmm.api import Cap, ExitKind, VmmError
from stub.vmm.emulated import create_vm
from tests.vmm.boot.images import GUEST32, RESULT, mb1_elf
from tests.vmm.conftest import DEFAULT_GATES, Runner, u64

PF = """
main:
    mov rax, 0x7fff00000000
bad: mov qword ptr [rax], 1
    int3
"""


def test_a_triple_fault_names_its_chain_and_keeps_the_registers(make_vm):
    gates = {k: h for k, h in DEFAULT_GATES.items() if k not in (8, 14)}
    vm, sym = make_vm(PF, gates=gates)
    v = vm.vcpus[0]
    exit_ = v.run()
    assert exit_.kind is ExitKind.TRIPLE_FAULT and exit_.rip == sym["bad"]
    assert exit_.detail == (f"#PF at rip={sym['bad']:#x} cr2=0x7fff00000000 (IDT entry 0xe "
                            "is not present) -> #DF (IDT entry 0x8 is not present) -> triple fault")
    assert v.get_register("rip") == sym["bad"] and v.get_register("rax") == 0x7FFF_0000_0000
    assert not vm.over  # the stub ends the VM, or resets it
    assert v.run().kind is ExitKind.TRIPLE_FAULT  # running it again faults again


def test_a_fault_that_cannot_be_delivered_becomes_a_double_fault(make_vm):
    gates = {k: h for k, h in DEFAULT_GATES.items() if k != 14}
    vm, sym = make_vm(PF + "h_df: int3\n", gates={**gates, 8: "h_df"})
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = v.run()
    assert exit_.kind is ExitKind.BPT and exit_.rip == sym["h_df"]
    assert v.read_virtual(v.get_register("rsp"), 16) == bytes(8) + sym["bad"].to_bytes(8, "little")


# ------------------------------------------------------------------ the guest's DR0-DR7
GUEST_DR = """
main:
    lea rax, [rip + target]
    mov dr0, rax
    mov rax, 0x401           /* L0, instruction breakpoint (R/W0 = 00, LEN0 = 00) */
    mov dr7, rax
    nop
target:
    nop
    nop
    int3
h_dr:
    lock inc qword ptr [rip + db_count]
    mov rax, dr6
    mov [rip + seen_dr6], rax
    or qword ptr [rsp + 16], 0x10000   /* RF in the frame: resume past the breakpoint */
    iretq
.data
seen_dr6: .quad 0
.text
"""


@pytest.mark.parametrize("personality", ["intel", "amd"])
def test_the_guests_own_instruction_breakpoint_reaches_its_db_handler(make_vm, personality):
    vm, sym = make_vm(GUEST_DR, gates={**DEFAULT_GATES, 1: "h_dr"}, personality=personality)
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    exit_ = v.run()
    assert exit_.kind is ExitKind.BPT and exit_.rip == sym["target"] + 2
    assert u64(vm, sym["db_count"]) == 1
    assert u64(vm, sym["seen_dr6"]) & 0xF == 1  # B0: DR0 matched


def test_the_debuggers_point_and_the_guests_at_one_address_each_report_once(make_vm):
    vm, sym = make_vm(GUEST_DR, gates={**DEFAULT_GATES, 1: "h_dr"})
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    vm.arm_point(Point(HW, sym["target"]), v)
    # QEMU raises the guest's #DB before the instruction's code hooks run: the guest's
    # handler runs first and resumes with RF, then the debugger's point stops it there.
    exit_ = v.run()
    assert exit_.kind is ExitKind.HWBREAK and exit_.rip == sym["target"]
    assert u64(vm, sym["db_count"]) == 1
    exit_ = v.run()  # resumed past the debugger's point: no second #DB for the guest
    assert exit_.kind is ExitKind.BPT and u64(vm, sym["db_count"]) == 1


def test_unicorn_does_not_execute_guest_data_breakpoints(make_vm):
    """A fact (docs/platform.md): DR7 data breakpoints (R/W = 01 or 11) never fire."""
    vm, sym = make_vm("""
main:
    lea rax, [rip + watched]
    mov dr1, rax
    mov rax, 0xd00004        /* L1, write, 4 bytes */
    mov dr7, rax
    mov dword ptr [rip + watched], 5
    int3
.data
watched: .quad 0
.text
""")
    v = vm.vcpus[0]
    v.set_capability(Cap.BPT_EXIT, True)
    assert v.run().kind is ExitKind.BPT
    assert u64(vm, sym["watched"]) == 5 and u64(vm, sym["db_count"]) == 0


# ------------------------------------------------------------------ system_reset
RESET = """
main:
    inc qword ptr [rip + var]
    mov al, 0x5a
    out 0x21, al             /* the PIC's IMR */
    mov eax, 1
    lea rbx, [rip + ap]
    out 0xeb, eax
    int3
ap: int3
.data
var: .quad 0
.text
"""


def test_reset_reloads_the_kernel_and_restarts_vcpu0_only(make_vm):
    vm, sym = make_vm(RESET, vcpus=2)
    v0, v1 = vm.vcpus
    for v in vm.vcpus:
        v.set_capability(Cap.BPT_EXIT, True)
    assert v0.run().kind is ExitKind.BPT
    assert v1.run().kind is ExitKind.BPT
    assert u64(vm, sym["var"]) == 1 and vm.platform.pic.master.imr == 0x5A
    point = Point(WRITE, sym["var"], 8)
    vm.arm_point(point, v0)
    vm.reset()
    assert u64(vm, sym["var"]) == 0 and vm.platform.pic.master.imr != 0x5A
    assert v0.get_register("rip") == vm.boot.entry and v0.wait_started(0)
    assert not v1.wait_started(0)
    assert v1.get_register("rip") == 0
    # The debugger's settings stay: BPT_EXIT, and the armed watchpoint.
    exit_ = v0.run()
    assert exit_.kind is ExitKind.WATCH and exit_.point == point
    vm.disarm_point(point)
    assert v0.run().kind is ExitKind.BPT and v1.wait_started(0)
    assert u64(vm, sym["var"]) == 1


def test_reset_needs_every_vcpu_parked(make_vm):
    vm, _ = make_vm("main:\n pause\n jmp main\n")
    v = vm.vcpus[0]
    runner = Runner(v).go()
    with pytest.raises(VmmError):
        for _ in range(1000):  # until the runner is inside run()
            vm.reset()
    v.request_suspend()
    assert runner.result().kind is ExitKind.DEBUG
    vm.reset()
    v.clear_suspend()


# ------------------------------------------------------------------ 32-bit guests
def test_va_breakpoint_and_watchpoint_in_a_32bit_guest():
    vm = create_vm(mb1_elf(GUEST32), vcpus=1, memory=16 << 20, cpu="intel", timer_hz=0,
                   ticker=False)
    try:
        v = vm.vcpus[0]
        entry = vm.boot.entry
        vm.arm_point(Point(HW, entry + 10), v)  # the second instruction
        vm.arm_point(Point(WRITE, RESULT + 4, 4), v)
        exit_ = v.run(max_instructions=100)
        assert exit_.kind is ExitKind.HWBREAK and exit_.rip == entry + 10
        exit_ = v.run(max_instructions=100)
        assert exit_.kind is ExitKind.WATCH and exit_.rip == entry + 10
        v.complete_access()
        assert v.run(max_instructions=100).kind is ExitKind.POWEROFF
    finally:
        vm.shutdown()
