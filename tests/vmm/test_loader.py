"""ELF loading and the vCPU state at entry (docs/boot-protocol.md)."""

from __future__ import annotations

import pytest

from stub.vmm import loader
from stub.vmm.api import ExitKind, MemoryFault
from stub.vmm.emulated import create_vm
from tests.vmm.conftest import BASE, make_elf

# hlt; mov edi, 7; mov eax, edi; out 0xf4, eax
POWEROFF_7 = bytes.fromhex("f4" "bf07000000" "89f8" "e7f4")


def boot(code: bytes, memsz: int | None = None):
    return create_vm(make_elf(code, memsz=memsz), vcpus=2, memory=8 << 20,
                     cpu="amd", timer_hz=0)


def test_entry_state():
    vm = boot(POWEROFF_7)
    try:
        v = vm.vcpus[0]
        assert v.wait_started(0) and not vm.vcpus[1].wait_started(0)
        regs = {n: v.get_register(n) for n in (
            "rip", "rdi", "rsi", "rdx", "rsp", "rax", "r15", "rflags", "cs", "ss", "ds",
            "es", "fs", "gs", "cr0", "cr3", "cr4", "efer", "fs_base", "gs_base")}
        assert regs == {
            "rip": BASE, "rdi": 0, "rsi": 2, "rdx": 8 << 20, "rsp": 0, "rax": 0, "r15": 0,
            "rflags": 0x2, "cs": 0x08, "ss": 0x10, "ds": 0x10, "es": 0x10, "fs": 0x10,
            "gs": 0x10, "cr0": 0x8001_0033, "cr3": 0x1000, "cr4": 0x620, "efer": 0xD01,
            "fs_base": 0, "gs_base": 0}
        assert v.get_register("fctrl") == 0x37F and v.get_register("mxcsr") == 0x1F80
        assert v.translate(0xFFFF_F000) == 0xFFFF_F000  # the boot identity map
        assert vm.read_phys(BASE, len(POWEROFF_7)) == POWEROFF_7
    finally:
        vm.shutdown()


def test_bss_is_zeroed_and_gdt_written():
    vm = boot(b"\xf4", memsz=0x3000)
    try:
        assert vm.read_phys(BASE + 1, 0x2FFF) == bytes(0x2FFF)
        assert vm.read_phys(loader.GDT + 8, 8) == bytes.fromhex("ffff0000009aaf00")
    finally:
        vm.shutdown()


@pytest.mark.parametrize("elf, message", [
    (b"MZ" + bytes(100), "not an ELF"),
    (make_elf(b"\xf4", machine=3), "EM_X86_64"),
    (make_elf(b"\xf4", paddr=0x8000), "outside"),
    (make_elf(b"\xf4", paddr=(8 << 20) - 0x800, memsz=0x1000), "outside"),
    (make_elf(b"\xf4")[:100], "truncated"),
])
def test_bad_images_are_refused(elf, message):
    with pytest.raises(loader.LoaderError, match=message):
        create_vm(elf, vcpus=1, memory=8 << 20, cpu="amd", timer_hz=0)


def test_bad_parameters():
    with pytest.raises(ValueError, match="personality"):
        create_vm(make_elf(b"\xf4"), vcpus=1, memory=8 << 20, cpu="arm", timer_hz=0)
    with pytest.raises(ValueError, match="cannot be given to a VM"):
        create_vm(make_elf(b"\xf4"), vcpus=1, memory=8 << 20, cpu="both", timer_hz=0)
    with pytest.raises(ValueError, match="2 MiB"):
        create_vm(make_elf(b"\xf4"), vcpus=1, memory=1 << 20, cpu="amd", timer_hz=0)


def test_physical_memory_bounds():
    vm = boot(b"\xf4")
    try:
        vm.write_phys((8 << 20) - 4, b"abcd")
        assert vm.read_phys((8 << 20) - 4, 4) == b"abcd"
        with pytest.raises(MemoryFault):
            vm.read_phys((8 << 20) - 4, 5)
        with pytest.raises(MemoryFault):
            vm.write_phys(8 << 20, b"x")
    finally:
        vm.shutdown()


def test_poweroff_port():
    vm = boot(POWEROFF_7[1:])  # without the hlt
    try:
        exit_ = vm.vcpus[0].run()
        assert (exit_.kind, exit_.code) == (ExitKind.POWEROFF, 7)
        assert vm.vcpus[0].run().kind is ExitKind.POWEROFF  # and the VM stays over
    finally:
        vm.shutdown()


def test_loads_from_a_path(tmp_path):
    path = tmp_path / "k.elf"
    path.write_bytes(make_elf(POWEROFF_7[1:]))
    vm = create_vm(str(path), vcpus=1, memory=4 << 20, cpu="none", timer_hz=0)
    try:
        exit_ = vm.vcpus[0].run()
        assert (exit_.kind, exit_.code) == (ExitKind.POWEROFF, 7)
    finally:
        vm.shutdown()
