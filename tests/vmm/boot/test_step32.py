"""Stepping 32-bit code with the hidden trap flag (amd): the VMM must decode it as
32-bit code, where 0x40-0x4F are inc/dec, not REX prefixes."""

from __future__ import annotations

from stub.vmm.api import Cap, ExitKind
from tests.vmm.boot.images import mb1_elf

TF = 0x100
# mov esp, 0x9000; push 2 (a flags image with TF clear); inc eax; popf; hlt
CODE = bytes.fromhex("bc00900000" "6a02" "40" "9d" "f4")


def test_step_of_inc_before_popf_is_not_a_popf(boot_vm):
    vm = boot_vm(mb1_elf(CODE))
    vcpu = vm.vcpus[0]
    assert vcpu.run(max_instructions=2).kind is ExitKind.BUDGET  # mov esp; push
    before = vcpu.get_registers(["rax", "rsp", "eflags"])
    vcpu.set_capability(Cap.RFLAGS_TF, True)
    exit_ = vcpu.run()
    vcpu.set_capability(Cap.RFLAGS_TF, False)
    assert exit_.kind is ExitKind.DB and exit_.trace_trap
    after = vcpu.get_registers(["rax", "rsp", "eflags"])
    assert after["rax"] == before["rax"] + 1 and after["rsp"] == before["rsp"]
    # Read as "popf" (REX + 9D), the step would have let the shadow take the
    # debugger's TF as the guest's own: the guest would run on single-stepping itself.
    assert after["eflags"] & TF == 0 and vcpu.inspect().raw_rflags & TF == 0
    assert vcpu.read_virtual(after["rsp"], 4) == (2).to_bytes(4, "little")
