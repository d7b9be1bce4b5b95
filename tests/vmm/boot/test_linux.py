"""The Linux boot protocol (stub/vmm/boot/linux.py) on synthetic bzImages: the zero page
a kernel gets, where the initrds go, the 64-bit entry's state, and every refusal.
Debian's real kernel is booted by tests/guests/linux/."""

from __future__ import annotations

import struct

import pytest

from stub.vmm import segments
from stub.vmm.boot import LoaderError, Module, linux, load, select
from stub.vmm.emulated import create_vm
from stub.vmm.ram import GuestRam
from tests.vmm.boot.conftest import MEMORY, run_to_poweroff
from tests.vmm.boot.images import POWEROFF_CODE, SIGNATURE

SETUP_SECTS = 3
LM_RESULT = 0x18_0000  # identity mapped, clear of the boot page tables and the kernel


def _store(offset: int) -> bytes:
    """mov [LM_RESULT + offset], eax (absolute: 64-bit disp32 without RIP)."""
    return b"\x89\x04\x25" + struct.pack("<I", LM_RESULT + offset)


# At the 64-bit entry (offset 0x200): record the signature, rsi, cs, ds, es, ss, rflags,
# EFER and the vmstub registers rdi/rdx, then power off. Offset 0 holds hlt only: a
# 32-bit entry there would stop at once without a record.
ENTRY64_CODE = (b"\xc7\x04\x25" + struct.pack("<II", LM_RESULT, SIGNATURE)
                + b"\x48\x89\x34\x25" + struct.pack("<I", LM_RESULT + 8)  # mov [..], rsi
                + b"\x8c\xc8" + _store(16) + b"\x8c\xd8" + _store(20)  # cs, ds
                + b"\x8c\xc0" + _store(24) + b"\x8c\xd0" + _store(28)  # es, ss
                + b"\xbc" + struct.pack("<I", LM_RESULT + 0x100)  # a stack: boot.rst gives none
                + b"\x9c\x58" + _store(32)  # pushfq; pop rax
                + b"\xb9\x80\x00\x00\xc0\x0f\x32" + _store(36)  # rdmsr EFER
                + b"\x89\xf8" + _store(40) + b"\x89\xd0" + _store(44)  # edi, edx
                + b"\xb8" + struct.pack("<I", POWEROFF_CODE) + b"\xe7\xf4" + b"\xf4")
ENTRY_CODE = b"\xf4" * linux.ENTRY64_OFFSET + ENTRY64_CODE

def bzimage(*, version: int = 0x020F, xloadflags: int = 0x7F, init_size: int = 0x10_0000,
            pref: int = 0x20_0000, relocatable: int = 1, initrd_max: int = 0x7FFF_FFFF,
            cmdline_size: int = 0x7FF, header_len: int = 0x6A, magic: bytes = b"HdrS",
            code: bytes = ENTRY_CODE, boot_flag: int = 0xAA55) -> bytes:
    """A bzImage's setup sectors (only the header filled) and a protected-mode part whose
    64-bit entry records its state and powers off."""
    setup = bytearray((SETUP_SECTS + 1) * linux.SECTOR)
    setup[0x1F1] = SETUP_SECTS
    struct.pack_into("<H", setup, 0x1FE, boot_flag)
    setup[0x201] = header_len
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01  # LOADED_HIGH, as a bzImage says
    struct.pack_into("<I", setup, 0x214, 0x10_0000)
    struct.pack_into("<I", setup, 0x22C, initrd_max)
    struct.pack_into("<I", setup, 0x230, 0x20_0000)
    setup[0x234] = relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + code


def loaded(image: bytes, modules=(), cmdline: str = "", memory: int = MEMORY):
    ram = GuestRam(memory)
    return ram, load(ram, image, list(modules), cmdline)


def u32(ram: GuestRam, addr: int) -> int:
    return struct.unpack("<I", ram.read(addr, 4))[0]


def test_auto_selects_a_bzimage_and_boot_linux_names_it():
    assert select(bzimage()) is linux
    assert select(bzimage(), "linux") is linux


def test_zero_page_has_the_header_loader_fields_and_e820():
    ram, state = loaded(bzimage(), cmdline="console=ttyS0 nokaslr")
    zp = state.info
    assert (state.protocol, state.entry, state.long_mode) == ("linux", 0x10_0200, True)
    assert state.registers["rsi"] == zp and zp == 0x8000
    assert ram.read(zp + 0x202, 4) == b"HdrS"
    assert ram.read(zp + 0x210, 1) == b"\xff"  # type_of_loader
    assert ram.read(zp + 0x211, 1)[0] & 0x81 == 0x81  # LOADED_HIGH | CAN_USE_HEAP
    cmdline = u32(ram, zp + 0x228)
    assert ram.read(cmdline, 22) == b"console=ttyS0 nokaslr\0"
    assert ram.read(zp + 0x1E8, 1) == b"\x03"
    e820 = [struct.unpack("<QQI", ram.read(zp + 0x2D0 + 20 * i, 20)) for i in range(3)]
    assert e820 == [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2),
                    (0x100000, MEMORY - 0x100000, 1)]
    assert ram.read(zp + 0x06, 2) == bytes([3, 80]) and ram.read(zp + 0x0E, 2) == bytes([25, 1])
    assert ram.read(0x10_0000, len(ENTRY_CODE)) == ENTRY_CODE
    assert u32(ram, zp + 0x218) == 0 and u32(ram, zp + 0x21C) == 0  # no initrd


def test_initrds_are_concatenated_page_aligned_at_the_top_of_ram():
    mods = [Module("a.cpio", b"A" * 5000), Module("b.cpio", b"B" * 100)]
    ram, state = loaded(bzimage(), mods)
    a, b = state.modules
    assert a.start % 0x1000 == 0 and b.start == a.start + 0x2000
    assert b.end == b.start + 100 and b.end <= MEMORY < b.end + 0x1000
    assert u32(ram, state.info + 0x218) == a.start
    assert u32(ram, state.info + 0x21C) == b.end - a.start
    assert ram.read(a.start, 5000) == b"A" * 5000 and ram.read(b.start, 100) == b"B" * 100
    assert ram.read(a.end, 0x2000 - 5000) == bytes(0x2000 - 5000)  # cpio skips the NULs


def test_initrd_stays_below_initrd_addr_max():
    _, state = loaded(bzimage(initrd_max=0x7F_FFFF), [Module("i", b"x" * 10)])
    assert state.modules[0].start == 0x7F_F000


def test_the_64bit_entry_gets_rsi_the_zero_page_and_the_boot_selectors(boot_vm):
    vm = boot_vm(bzimage(), cmdline="quiet")
    assert run_to_poweroff(vm).code == POWEROFF_CODE
    sig, rsi, cs, ds, es, ss, rflags, efer, edi, edx = struct.unpack(
        "<I4xQ8I", vm.read_phys(LM_RESULT, 48))
    assert sig == SIGNATURE and rsi == vm.boot.info == 0x8000
    assert (cs, ds, es, ss) == (linux.BOOT_CS, linux.BOOT_DS, linux.BOOT_DS, linux.BOOT_DS)
    assert rflags & 0x200 == 0  # interrupts off
    assert efer & 0x500 == 0x500  # LME and LMA: long mode
    assert (edi, edx) == (0, 0)  # vmstub's vCPU index and RAM size are not passed


def test_the_boot_gdt_has_code64_at_0x10_and_data_at_0x18(boot_vm):
    vm = boot_vm(bzimage(), cmdline="quiet")
    cpu = vm.vcpus[0].cpu
    assert cpu.rip == 0x10_0200 and cpu.long_mode()
    base, limit = vm.boot.gdt
    assert limit == 0x1F and base >= vm.boot.info + linux.ZERO_PAGE_SIZE
    code = cpu.descriptor(linux.BOOT_CS)
    segments.check_code(code, 0, True)  # a code segment the CPU takes at CPL 0
    assert code.flags & segments.DESC_L and code.dpl == 0  # 64-bit
    data = cpu.descriptor(linux.BOOT_DS).flags
    assert data & segments.DESC_S and not data & segments.DESC_CS
    assert data & segments.DESC_W and data & segments.DESC_P


def test_bzimage_through_create_vm_with_initrd_files(tmp_path, boot_vm):
    (tmp_path / "one").write_bytes(b"1" * 10)
    (tmp_path / "two").write_bytes(b"2" * 10)
    vm = boot_vm(bzimage(), initrd=[tmp_path / "one", tmp_path / "two"])
    assert [m.name for m in vm.boot.modules] == ["one", "two"]


REFUSALS = {
    "old protocol": ({"version": 0x020B}, {}, r"boot protocol 2\.11 is too old"),
    "32-bit kernel": ({"xloadflags": 0}, {}, "not a 64-bit kernel"),
    "short header": ({"header_len": 0x40}, {}, "malformed bzImage: the setup header ends"),
    "boot flag": ({"boot_flag": 0}, {}, "boot_flag"),
    "ram below init_size": ({"init_size": 0x100_0000}, {},
                            r"kernel needs RAM up to 0x1200000 \(18 MiB.*--memory-mb"),
    "initrd too big": ({}, {"modules": [Module("big", bytes(14 << 20))]},
                       "initrd .* does not fit in RAM"),
    "command line too long": ({"cmdline_size": 8}, {"cmdline": "x" * 9},
                              "command line has 9 bytes; this kernel takes at most 8"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_are_one_line(case):
    header, kw, pattern = REFUSALS[case]
    with pytest.raises(LoaderError, match=pattern) as err:
        loaded(bzimage(**header), kw.get("modules", ()), kw.get("cmdline", ""))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size, pattern", [
    (0x250, "truncated bzImage: the file ends at 0x250, inside the setup header"),
    (0x400, "malformed bzImage: 3 setup sectors but the file has 1024 bytes"),
])
def test_truncated_images_are_refused(size, pattern):
    with pytest.raises(LoaderError, match=pattern):
        loaded(bzimage()[:size])


def test_forcing_linux_on_something_else_is_refused():
    with pytest.raises(LoaderError, match='no "HdrS"'):
        create_vm(b"\x7fELF" + bytes(600), vcpus=1, memory=MEMORY, cpu="amd", timer_hz=0,
                  ticker=False, boot="linux")
