"""The two real kernels through the 32-bit protocols: the demo kernel boots with
``boot="multiboot"`` as under QEMU (32-bit entry, its own trampoline into long mode, one
CPU, its banner on port 0xE9), and mbkernel (Multiboot v1, ELF32, C) enters ``kmain``
with the magic and a correct multiboot_info. mbkernel's later output needs the UART,
PIC and PIT, which are not checked here."""

from __future__ import annotations

import struct
from pathlib import Path

from stub.elf import read_elf_file
from stub.vmm.api import ExitKind
from stub.vmm.boot import layout, multiboot
from tests.e2e.stubproc import DEMO_ELF
from tests.vmm.conftest import Console

MBKERNEL = Path(__file__).resolve().parents[2] / "guests" / "mbkernel" / "mbkernel.elf"
KERNEL_VMA = 0xFFFF_FFFF_8000_0000
BANNER = b"vmstub demo kernel: 1 vCPUs\n"


def test_demo_boots_through_multiboot_on_one_cpu(boot_vm):
    console = Console()
    vm = boot_vm(DEMO_ELF.read_bytes(), vcpus=2, memory=64 << 20, boot="multiboot",
                 console=console)
    assert (vm.boot.protocol, vm.boot.arch) == ("multiboot", "i386:x86-64")
    assert vm.boot.entry == read_elf_file(DEMO_ELF).symbols["mb_entry32"].value
    v = vm.vcpus[0]
    for _ in range(50):
        exit_ = v.run(max_instructions=2000)
        assert exit_.kind is ExitKind.BUDGET, exit_
        if BANNER in console.data:
            break
    assert bytes(console.data) == BANNER
    assert v.get_register("efer") & 0x500 == 0x500  # the kernel switched to long mode
    assert v.get_register("rip") >= KERNEL_VMA  # and runs in its higher half
    assert not vm.vcpus[1].wait_started(0)  # ncpus = 1, as under QEMU
    ram_size = struct.unpack("<Q", v.read_virtual(
        read_elf_file(DEMO_ELF).symbols["ram_size"].value, 8))[0]
    assert ram_size == 64 << 20  # from mem_upper, as the demo computes it


def test_mbkernel_enters_kmain_with_the_multiboot_info(boot_vm):
    symbols = read_elf_file(MBKERNEL).symbols
    vm = boot_vm(MBKERNEL.read_bytes(), memory=128 << 20)
    assert (vm.boot.protocol, vm.boot.arch) == ("multiboot", "i386")
    assert vm.boot.entry == symbols["_start"].value
    v = vm.vcpus[0]
    for _ in range(100):  # _start: a handful of instructions to the call
        assert v.run(max_instructions=1).kind is ExitKind.BUDGET
        if v.get_register("rip") == symbols["kmain"].value:
            break
    assert v.get_register("rip") == symbols["kmain"].value
    assert v.get_register("rax") == multiboot.BOOT_MAGIC
    esp = v.get_register("rsp")
    _ret, magic, info = struct.unpack("<III", vm.read_phys(esp, 12))  # kmain(magic, info)
    assert (magic, info) == (multiboot.BOOT_MAGIC, layout.INFO_BASE)
    flags, mem_lower, mem_upper = struct.unpack("<III", vm.read_phys(info, 12))
    assert flags & 1 and (mem_lower, mem_upper) == (639, 128 * 1024 - 1024)
