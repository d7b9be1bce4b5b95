"""Registers by gdb name, and capabilities per personality."""

from __future__ import annotations

import pytest

from stub.vmm.api import Cap, CapabilityUnsupported
from stub.vmm.regs import NAMES, RegisterFile
from tests.vmm.conftest import run_to_stop

FLD = """
main:
    fld1
    fldpi
    mov rax, 0x1122334455667788
    movq xmm9, rax
    int3
    jmp main
"""


def test_every_register_reads_and_round_trips(make_vm):
    vm, _ = make_vm(FLD)
    v = vm.vcpus[0]
    run_to_stop(v)
    skip = {"cr0", "cr3", "cr4", "efer", "cs", "ss", "ds", "es", "fs", "gs", "rip"}
    for name in NAMES:
        value = v.get_register(name)
        assert 0 <= value < 1 << RegisterFile.width(name), name
        if name not in skip:
            v.set_register(name, value)
            assert v.get_register(name) == value, name


def test_values(make_vm):
    vm, _ = make_vm(FLD)
    v = vm.vcpus[0]
    run_to_stop(v)
    # st0 is the top of the x87 stack: pi (pushed last), then 1.0
    assert v.get_register("st0") == (0x4000 << 64) | 0xC90F_DAA2_2168_C235
    assert v.get_register("st1") == (0x3FFF << 64) | 0x8000_0000_0000_0000
    assert v.get_register("fstat") >> 11 & 7 == 6  # TOP after two pushes
    assert v.get_register("ftag") == 0x0FFF  # two valid, six empty
    assert v.get_register("xmm9") == 0x1122_3344_5566_7788
    v.set_register("xmm15", (1 << 127) | 5)
    assert v.get_register("xmm15") == (1 << 127) | 5
    v.set_register("st2", (0x3FFF << 64) | (1 << 63))
    assert v.get_register("st2") == (0x3FFF << 64) | (1 << 63)
    v.set_register("k_gs_base", 0xFFFF_8000_1234_0000)
    assert v.get_register("k_gs_base") == 0xFFFF_8000_1234_0000
    v.set_register("r13", 0xDEAD)
    assert v.get_register("r13") == 0xDEAD


def test_fs_selector_write_keeps_the_base(make_vm):
    vm, _ = make_vm(FLD)
    v = vm.vcpus[0]
    v.set_register("fs_base", 0xFFFF_8000_0000_1000)
    v.set_register("fs", 0)
    assert (v.get_register("fs"), v.get_register("fs_base")) == (0, 0xFFFF_8000_0000_1000)
    with pytest.raises(ValueError, match="fs selector"):
        v.set_register("fs", 0x33)


def test_bad_names_and_values(make_vm):
    vm, _ = make_vm(FLD)
    v = vm.vcpus[0]
    with pytest.raises(KeyError, match="unknown register"):
        v.get_register("zmm0")
    with pytest.raises(KeyError):
        v.set_register("bogus", 0)
    with pytest.raises(ValueError, match="does not fit"):
        v.set_register("cs", 1 << 16)
    with pytest.raises(ValueError):
        v.set_register("rax", -1)


def test_rflags_hides_the_debuggers_tf(make_vm):
    vm, _ = make_vm(FLD, personality="amd")
    v = vm.vcpus[0]
    v.set_capability(Cap.RFLAGS_TF, True)
    assert v.get_register("rflags") & 0x100 == 0
    assert v.cpu.rflags & 0x100  # the real one
    v.set_register("rflags", 0x302)  # the guest's own TF, set by the debugger
    v.set_capability(Cap.RFLAGS_TF, False)
    assert v.get_register("rflags") == 0x302


CAPS = {
    # personality: (readable, settable)
    "intel": ({Cap.MTRAP_EXIT, Cap.BPT_EXIT}, {Cap.MTRAP_EXIT, Cap.BPT_EXIT, Cap.MASK_HWINTR}),
    "amd": ({Cap.RFLAGS_TF, Cap.BPT_EXIT, Cap.MASK_HWINTR},
            {Cap.RFLAGS_TF, Cap.BPT_EXIT, Cap.MASK_HWINTR}),
    "amd-nomask": ({Cap.RFLAGS_TF, Cap.BPT_EXIT}, {Cap.RFLAGS_TF, Cap.BPT_EXIT}),
    "none": ({Cap.BPT_EXIT}, {Cap.BPT_EXIT}),
}


@pytest.mark.parametrize("personality", CAPS)
def test_capabilities(make_vm, personality):
    readable, settable = CAPS[personality]
    vm, _ = make_vm(FLD, personality=personality)
    v = vm.vcpus[0]
    for cap in Cap:
        if cap in readable:
            assert v.get_capability(cap) is False
        else:
            with pytest.raises(CapabilityUnsupported):
                v.get_capability(cap)
        if cap in settable:
            v.set_capability(cap, True)
            if cap in readable:
                assert v.get_capability(cap) is True
            v.set_capability(cap, False)
        else:
            with pytest.raises(CapabilityUnsupported):
                v.set_capability(cap, True)


def test_bulk_reads_agree_with_single_reads(make_vm):
    vm, _ = make_vm(FLD)
    v = vm.vcpus[0]
    run_to_stop(v)
    v.set_register("xmm3", (1 << 127) | 0xABCD)
    v.set_register("rflags", 0x246)
    every = v.get_registers(NAMES)
    assert list(every) == list(NAMES)
    assert every == {name: v.get_register(name) for name in reversed(NAMES)}
    assert every["eflags"] == 0x246 and every["xmm3"] == (1 << 127) | 0xABCD
    assert v.get_registers(["st1", "rip", "st0"]) == {
        "st1": every["st1"], "rip": every["rip"], "st0": every["st0"]}
    assert v.get_registers(iter(("rsp",))) == {"rsp": every["rsp"]}


def test_bulk_writes_check_every_value_first(make_vm):
    vm, _ = make_vm(FLD)
    v = vm.vcpus[0]
    v.set_registers({"rax": 1, "r9": 2, "xmm1": 1 << 100, "st3": 7 << 64 | 5})
    assert v.get_registers(("rax", "r9", "xmm1", "st3")) == {
        "rax": 1, "r9": 2, "xmm1": 1 << 100, "st3": 7 << 64 | 5}
    with pytest.raises(ValueError, match="does not fit"):
        v.set_registers({"rax": 3, "cs": 1 << 16})
    with pytest.raises(KeyError, match="unknown register"):
        v.set_registers({"rax": 3, "zmm0": 0})
    with pytest.raises(KeyError, match="unknown register"):
        v.get_registers(("rax", "zmm0"))
    assert v.get_register("rax") == 1  # nothing of a refused write was written


def test_bulk_rflags_writes_keep_the_debuggers_tf(make_vm):
    vm, _ = make_vm(FLD, personality="amd")
    v = vm.vcpus[0]
    v.set_capability(Cap.RFLAGS_TF, True)
    v.set_registers({"rax": 5, "eflags": 0x302})
    assert v.get_registers(("eflags", "rflags")) == {"eflags": 0x302, "rflags": 0x302}
    state = v.inspect()
    assert state.raw_rflags & 0x100 and state.guest_tf and state.tf_shadow == "on"
    v.set_registers({"rflags": 0x202})
    assert not v.inspect().guest_tf and v.inspect().raw_rflags & 0x100
    v.set_capability(Cap.RFLAGS_TF, False)
    assert v.get_register("rflags") == 0x202 and v.inspect().raw_rflags == 0x202
