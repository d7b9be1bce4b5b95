"""Kernels (and what they are booted with) the loader refuses: always a LoaderError whose
message is one line naming the problem, before any vCPU runs."""

from __future__ import annotations

import struct

import pytest

from stub.vmm.boot import LoaderError
from stub.vmm.emulated import create_vm
from tests.vmm.boot.conftest import MEMORY
from tests.vmm.boot.images import (
    BASE,
    ET_REL,
    GUEST32,
    elf,
    mb1_elf,
    mb1_header,
    mb2_elf,
    mb2_header,
    mb2_tag,
    pvh_elf,
)
from tests.vmm.conftest import make_elf


def object_file() -> bytes:
    """What ``as`` makes: ELF64 ET_REL, no program headers, e_phentsize 0."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return struct.pack("<16sHHIQQQIHHHHHH", ident, ET_REL, 62, 1, 0, 0, 0, 0, 64, 0, 0, 64,
                       0, 0)


CASES = {
    "not a kernel": (b"MZ" + bytes(200), {}, "no boot protocol matches"),
    "object file": (object_file(), {}, r"not an executable ELF file \(ET_REL"),
    "object file with a multiboot header": (
        elf(GUEST32, head=mb1_header(0x3), etype=ET_REL), {}, "ET_REL"),
    "bad multiboot checksum": (elf(GUEST32, head=mb1_header(0x3, checksum_delta=1)), {},
                               "Multiboot header at file offset 0x1000 has a bad checksum"),
    "bad multiboot2 checksum": (elf(GUEST32, head=mb2_header(checksum_delta=1)), {},
                                "Multiboot2 header .* bad checksum"),
    "multiboot2 for MIPS": (elf(GUEST32, head=mb2_header(arch=4)), {}, "architecture 4"),
    "multiboot2 EFI tag required": (mb2_elf(GUEST32, mb2_tag(7)), {}, "requires tag type 7"),
    "multiboot2 info we lack": (mb2_elf(GUEST32, mb2_tag(1, struct.pack("<II", 6, 15))), {},
                                r"information we do not provide \(tag types 15\)"),  # ACPI 2.0
    "multiboot2 tag size": (elf(GUEST32, head=mb2_header(struct.pack("<HHI", 5, 0, 4))), {},
                            "bad size"),
    "multiboot unknown required flag": (mb1_elf(flags=0x3 | 1 << 3), {}, "features"),
    "multiboot ELF32 for another machine": (mb1_elf(machine=40), {}, "not EM_386"),
    "kludge load_addr above header_addr": (
        mb1_header(0x10003, (BASE, BASE + 0x10, BASE + 0x40, 0, BASE)) + GUEST32, {},
        "above header_addr"),
    "kludge past the end of the file": (
        mb1_header(0x10003, (BASE, BASE, BASE + 0x10000, 0, BASE + 32)) + GUEST32, {},
        "outside the file"),
    "kernel over the loader's low memory": (mb1_elf(paddr=0x8000), {},
                                            "overlaps the loader's low memory"),
    "kernel in the hole": (mb1_elf(paddr=0xA0000), {}, "reserved area 0x9fc00-0x100000"),
    "kernel beyond RAM": (mb1_elf(paddr=MEMORY - 0x10), {}, "outside RAM"),
    "entry beyond RAM": (mb1_elf(entry=MEMORY + 0x1000), {}, "entry point .* outside RAM"),
    "module too large": (mb1_elf(), {"initrd": [bytes(MEMORY)]},
                         "module module0 .* does not fit in RAM"),
    "vmstub with a command line": (make_elf(b"\xf4"), {"cmdline": "x"},
                                   "passes no command line or modules"),
    "vmstub with an ELF32": (mb1_elf(), {"boot": "vmstub"}, "not EM_X86_64"),
    "pvh without its note": (mb1_elf(), {"boot": "pvh"}, "no PVH entry note"),
    "multiboot without a header": (pvh_elf(), {"boot": "multiboot"}, "no Multiboot header"),
    "multiboot2 without a header": (mb1_elf(), {"boot": "multiboot2"}, "no Multiboot2 header"),
    "pvh note of 2 bytes": (pvh_elf(desc_size=2), {}, "2-byte address"),
    "unknown protocol": (mb1_elf(), {"boot": "linux16"}, "unknown boot protocol 'linux16'"),
    "huge command line": (mb1_elf(), {"cmdline": "x" * 0x80000}, "does not fit below"),
}


@pytest.mark.parametrize("image, kw, message", CASES.values(), ids=CASES.keys())
def test_refused_with_one_line(image, kw, message):
    with pytest.raises(LoaderError, match=message) as info:
        create_vm(image, vcpus=1, memory=MEMORY, cpu="amd", timer_hz=0, ticker=False, **kw)
    assert "\n" not in str(info.value)


def test_a_loader_error_is_a_vmm_and_a_value_error():
    from stub.vmm.api import VmmError
    assert issubclass(LoaderError, VmmError) and issubclass(LoaderError, ValueError)
