"""Each boot protocol end to end on tiny hand-made kernels: which protocol ``auto``
picks, the entry state its spec promises, the boot information in guest memory, and
that the kernel runs (it stores what it was entered with and powers off)."""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as X

from stub.vmm import boot
from stub.vmm.boot import acpi, layout, multiboot, multiboot2, pvh, tables
from tests.vmm.boot.conftest import MEMORY, run_to_poweroff
from tests.vmm.boot.images import (
    BASE,
    GUEST32,
    RESULT,
    SIGNATURE,
    elf,
    mb1_elf,
    mb1_header,
    mb1_kludge,
    mb2_elf,
    mb2_flat,
    mb2_header,
    mb2_tag,
    pvh_elf,
)
from tests.vmm.conftest import make_elf

HIGHER_HALF = 0xFFFF_FFFF_8000_0000
MAP = [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (0x100000, MEMORY - 0x100000, 1)]


def u32(vm, gpa: int) -> int:
    return struct.unpack("<I", vm.read_phys(gpa, 4))[0]


def cstring(vm, gpa: int) -> str:
    data = vm.read_phys(gpa, 256)
    return data[:data.index(b"\0")].decode()


def ran(vm) -> tuple[int, int]:
    """(eax, ebx) the kernel stored, after checking it ran."""
    run_to_poweroff(vm)
    assert u32(vm, RESULT) == SIGNATURE
    return u32(vm, RESULT + 4), u32(vm, RESULT + 8)


# ---- selection ----------------------------------------------------------------------------

@pytest.mark.parametrize("image, name", [
    (pvh_elf(), "pvh"),
    (pvh_elf(bits=64, desc_size=8), "pvh"),
    (mb2_elf(), "multiboot2"),
    (mb2_flat(), "multiboot2"),
    (mb1_elf(), "multiboot"),
    (mb1_elf(bits=64), "multiboot"),
    (mb1_kludge(), "multiboot"),
    (make_elf(b"\xf4"), "vmstub"),
    (elf(GUEST32, head=mb2_header() + mb1_header(0x3)), "multiboot2"),  # order: mb2 first
    (pvh_elf(head=mb1_header(0x3)), "pvh"),
])
def test_auto_takes_the_first_protocol_in_order(image, name):
    assert boot.select(image).NAME == name


def test_the_order_and_the_names():
    assert boot.PROTOCOLS == ("pvh", "linux", "multiboot2", "multiboot", "vmstub")
    assert boot.CHOICES == ("auto", *boot.PROTOCOLS)


# ---- entry state --------------------------------------------------------------------------

ENTRY_CASES = {
    "multiboot": (mb1_elf(), BASE + 12, multiboot.BOOT_MAGIC),
    "multiboot2": (mb2_elf(), BASE + len(mb2_header()), multiboot2.BOOT_MAGIC),
    "pvh": (pvh_elf(), BASE, 0),
}


@pytest.mark.parametrize("name", ENTRY_CASES)
def test_32_bit_entry_state(boot_vm, name):
    image, entry, eax = ENTRY_CASES[name]
    vm = boot_vm(image, boot=name)
    v = vm.vcpus[0]
    assert (vm.boot.protocol, vm.boot.entry, vm.boot.arch) == (name, entry, "i386")
    regs = v.get_registers(["rip", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                            "r8", "r15", "eflags", "cs", "ds", "es", "ss", "fs", "gs",
                            "cr0", "cr3", "cr4", "efer"])
    assert regs == {
        "rip": entry, "rax": eax, "rbx": layout.INFO_BASE, "rcx": 0, "rdx": 0, "rsi": 0,
        "rdi": 0, "rbp": 0, "rsp": 0, "r8": 0, "r15": 0, "eflags": 0x2,
        "cs": tables.CODE32_SEL, "ds": tables.DATA_SEL, "es": tables.DATA_SEL,
        "ss": tables.DATA_SEL, "fs": tables.DATA_SEL, "gs": tables.DATA_SEL,
        "cr0": 0x11, "cr3": 0, "cr4": 0, "efer": 0}
    assert v.cpu.uc.reg_read(X.UC_X86_REG_TR)[:3] == (tables.TSS_SEL, 0, tables.TSS_LIMIT)
    assert v.cpu.uc.reg_read(X.UC_X86_REG_GDTR)[1:3] == (tables.GDT, tables.GDT32_LIMIT)
    assert v.translate(0x12_3456) == 0x12_3456  # paging off: GVA == GPA
    assert vm.read_phys(tables.TRAMPOLINE, 32) == bytes(32)  # the entry left no trace
    assert ran(vm) == (eax, layout.INFO_BASE)


def test_other_vcpus_are_not_started(boot_vm):
    vm = boot_vm(mb1_elf(), vcpus=3)
    assert vm.vcpus[0].wait_started(0)
    assert not any(v.wait_started(0) for v in vm.vcpus[1:])


# ---- Multiboot v1 ----------------------------------------------------------------------------

def mb1_info(vm) -> dict[str, int]:
    info = vm.boot.info
    names = ("flags", "mem_lower", "mem_upper", "boot_device", "cmdline", "mods_count",
             "mods_addr")
    out = dict(zip(names, struct.unpack("<7I", vm.read_phys(info, 28)), strict=True))
    out["mmap_length"], out["mmap_addr"] = struct.unpack("<II", vm.read_phys(info + 44, 8))
    out["boot_loader_name"] = u32(vm, info + 64)
    return out


def test_multiboot_info(boot_vm):
    vm = boot_vm(mb1_elf(), initrd=[b"first module", b"second"], cmdline="quiet x=1")
    info = mb1_info(vm)
    assert info["flags"] == 1 | 4 | 8 | 64 | 512  # mem, cmdline, mods, mmap, loader name
    assert (info["mem_lower"], info["mem_upper"]) == (639, (MEMORY >> 10) - 1024)
    assert cstring(vm, info["cmdline"]) == "quiet x=1"
    assert cstring(vm, info["boot_loader_name"]) == "vmstub"
    mmap = vm.read_phys(info["mmap_addr"], info["mmap_length"])
    assert [struct.unpack_from("<IQQI", mmap, i)[1:] for i in range(0, len(mmap), 24)] == MAP
    assert all(struct.unpack_from("<I", mmap, i)[0] == 20 for i in range(0, len(mmap), 24))
    assert info["mods_count"] == 2
    mods = [struct.unpack("<IIII", vm.read_phys(info["mods_addr"] + 16 * i, 16))
            for i in range(2)]
    first, second = mods
    assert first[0] == layout.page_up(vm.boot.kernel_end) and second[0] % 0x1000 == 0
    assert vm.read_phys(first[0], first[1] - first[0]) == b"first module"
    assert second[0] >= first[1] and second[1] - second[0] == len(b"second")
    assert [cstring(vm, m[2]) for m in mods] == ["module0", "module1"]
    assert ran(vm) == (multiboot.BOOT_MAGIC, vm.boot.info)


def test_multiboot_module_strings_are_file_names(boot_vm, tmp_path):
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\x1f\x8b rest")
    vm = boot_vm(mb1_elf(), initrd=[initrd])
    (start, end, string, _) = struct.unpack("<IIII", vm.read_phys(mb1_info(vm)["mods_addr"], 16))
    assert cstring(vm, string) == "initrd.img"
    assert vm.read_phys(start, end - start) == b"\x1f\x8b rest"
    assert vm.boot.modules[0].name == "initrd.img"


def test_module_names_can_be_given(boot_vm):
    vm = boot_vm(mb1_elf(), initrd=[boot.Module("/boot/initrd root=/dev/ram0", b"x")])
    (_, _, string, _) = struct.unpack("<IIII", vm.read_phys(mb1_info(vm)["mods_addr"], 16))
    assert cstring(vm, string) == "/boot/initrd root=/dev/ram0"


def test_multiboot_a_out_kludge_loads_the_file_flat(boot_vm):
    image = mb1_kludge(bss=0x3000)
    vm = boot_vm(image)
    assert vm.boot.protocol == "multiboot" and vm.boot.arch == "i386:x86-64"  # not ELF32
    assert vm.read_phys(BASE, len(image)) == image
    assert vm.boot.entry == BASE + 32 and vm.boot.kernel_end == BASE + len(image) + 0x3000
    assert ran(vm) == (multiboot.BOOT_MAGIC, layout.INFO_BASE)


def test_multiboot_elf64_with_a_higher_half_entry_enters_at_its_physical_address(boot_vm):
    vm = boot_vm(mb1_elf(bits=64, vaddr=HIGHER_HALF + BASE))
    assert vm.boot.entry == BASE + 12 and vm.boot.arch == "i386:x86-64"
    assert ran(vm)[0] == multiboot.BOOT_MAGIC


def test_multiboot_video_flag_gets_the_ega_text_screen(boot_vm):
    vm = boot_vm(mb1_elf(flags=0x7))
    info = vm.boot.info
    assert u32(vm, info) & (1 << 12)
    assert struct.unpack("<QIIIBB", vm.read_phys(info + 88, 22)) == (0xB8000, 160, 80, 25, 16, 2)


# ---- Multiboot2 ------------------------------------------------------------------------------

def mb2_tags(vm) -> dict[int, list[bytes]]:
    total, _ = struct.unpack("<II", vm.read_phys(vm.boot.info, 8))
    data = vm.read_phys(vm.boot.info, total)
    tags: dict[int, list[bytes]] = {}
    pos = 8
    while True:
        kind, size = struct.unpack_from("<II", data, pos)
        if kind == 0:
            assert size == 8 and pos + 8 == total
            return tags
        tags.setdefault(kind, []).append(data[pos + 8:pos + size])
        pos += (size + 7) & ~7


def test_multiboot2_information(boot_vm):
    vm = boot_vm(mb2_elf(), initrd=[b"mod-a", b"mod-b!"], cmdline="root=/dev/x")
    assert vm.boot.info == layout.INFO_BASE
    tags = mb2_tags(vm)
    assert tags[1] == [b"root=/dev/x\0"] and tags[2] == [b"vmstub\0"]
    assert struct.unpack("<II", tags[4][0]) == (639, (MEMORY >> 10) - 1024)
    entry_size, version = struct.unpack_from("<II", tags[6][0])
    assert (entry_size, version) == (24, 0)
    mmap = tags[6][0][8:]
    assert [struct.unpack_from("<QQI", mmap, i) for i in range(0, len(mmap), 24)] == MAP
    mods = [(struct.unpack_from("<II", t), t[8:]) for t in tags[3]]
    assert [name for _, name in mods] == [b"module0\0", b"module1\0"]
    (start, end), _ = mods[0]
    assert start % 0x1000 == 0 and vm.read_phys(start, end - start) == b"mod-a"
    assert 8 not in tags  # no framebuffer unless asked
    assert ran(vm) == (multiboot2.BOOT_MAGIC, layout.INFO_BASE)


@pytest.mark.parametrize("ask", [mb2_tag(5, struct.pack("<III", 80, 25, 0)),
                                 mb2_tag(1, struct.pack("<I", 8), flags=1)])
def test_multiboot2_framebuffer_when_asked(boot_vm, ask):
    vm = boot_vm(mb2_elf(GUEST32, ask))
    (fb,) = mb2_tags(vm)[8]
    assert struct.unpack("<QIIIBBH", fb) == (0xB8000, 160, 80, 25, 16, 2, 0)


def test_multiboot2_address_and_entry_tags(boot_vm):
    image = mb2_flat(bss=0x2000)
    vm = boot_vm(image)
    assert vm.read_phys(BASE, len(image)) == image
    assert vm.boot.entry == BASE + len(image) - len(GUEST32)
    assert vm.boot.kernel_end == BASE + len(image) + 0x2000
    assert ran(vm) == (multiboot2.BOOT_MAGIC, layout.INFO_BASE)


def test_multiboot2_optional_and_satisfied_tags_are_accepted(boot_vm):
    vm = boot_vm(mb2_elf(GUEST32, mb2_tag(4, struct.pack("<I", 3)),  # console: EGA text
                         mb2_tag(6), mb2_tag(7, flags=1),  # module align; optional EFI
                         mb2_tag(1, struct.pack("<III", 1, 4, 6))))  # required: provided
    assert ran(vm)[0] == multiboot2.BOOT_MAGIC


# ---- PVH -------------------------------------------------------------------------------------

def test_pvh_start_info(boot_vm):
    vm = boot_vm(pvh_elf(), initrd=[b"initramfs"], cmdline="console=ttyS0")
    (magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries,
     _) = struct.unpack("<IIIIQQQQII", vm.read_phys(layout.INFO_BASE, 56))
    assert (magic, version, flags, nr_modules) == (pvh.START_MAGIC, 1, 0, 1)
    assert rsdp == acpi.BASE  # test_acpi_loaders.py: the tables behind it
    assert cstring(vm, cmdline) == "console=ttyS0"
    paddr, size, mod_cmdline, _ = struct.unpack("<QQQQ", vm.read_phys(modlist, 32))
    assert vm.read_phys(paddr, size) == b"initramfs" and paddr % 0x1000 == 0
    assert cstring(vm, mod_cmdline) == "module0"
    table = vm.read_phys(memmap, 24 * entries)
    assert [struct.unpack_from("<QQI", table, i) for i in range(0, len(table), 24)] == MAP
    assert ran(vm) == (0, layout.INFO_BASE)


def test_pvh_elf64_with_an_8_byte_note_and_a_higher_half_link(boot_vm):
    """Linux's vmlinux: ELF64, linked in the higher half, loaded by physical address,
    entered where the note says."""
    vm = boot_vm(pvh_elf(bits=64, desc_size=8, vaddr=HIGHER_HALF + BASE))
    assert (vm.boot.protocol, vm.boot.entry, vm.boot.arch) == ("pvh", BASE, "i386:x86-64")
    assert ran(vm) == (0, layout.INFO_BASE)


# ---- vmstub ----------------------------------------------------------------------------------

def test_vmstub_is_still_long_mode(boot_vm):
    vm = boot_vm(make_elf(b"\xf4"), vcpus=2)
    assert (vm.boot.protocol, vm.boot.arch, vm.boot.long_mode) == ("vmstub", "i386:x86-64", True)
    v = vm.vcpus[0]
    assert v.get_registers(["cs", "rsi", "efer"]) == {"cs": tables.CODE64_SEL, "rsi": 2,
                                                      "efer": 0xD01}
