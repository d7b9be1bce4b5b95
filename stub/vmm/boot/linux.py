"""The Linux x86 boot protocol for a bzImage (Documentation/arch/x86/boot.rst and
zero-page.rst; docs/linux.md).

A bzImage is the real-mode setup (``setup_sects`` + 1 sectors) followed by the
protected-mode kernel, which decompresses itself. We are the boot loader: the real-mode
part never runs. We copy the protected-mode kernel to ``code32_start`` (0x100000),
build the zero page (``struct boot_params``: a copy of the setup header with the
loader's fields filled, the e820 map, a VGA text ``screen_info``), put the command line
after it and the initrds (concatenated: Linux unpacks one cpio archive after another)
page aligned at the top of RAM below ``initrd_addr_max``.

Entry: the **64-bit boot protocol** (boot.rst, "64-bit Boot Protocol") at
``code32_start + 0x200``: long mode on the loader's page tables (tables.py: an
identity map of the first 4 GiB, which holds everything placed here: the kernel, the
zero page, the command line and the initrd all lie below 4 GiB), interrupts off,
RSI = the zero page, on a GDT of this protocol's own (``GDT``, after the command line
in the boot information area) with __BOOT_CS 0x10 (64-bit code) and __BOOT_DS 0x18
(flat data): CS = 0x10, DS/ES/SS = 0x18. The shared GDT (code64 0x08, data 0x10,
code32 0x18) names other selectors. A kernel without XLF_KERNEL_64 is refused: the
32-bit entry is not offered.

Refused with one line (``LoaderError``): no "HdrS" or a protocol older than 2.12 (the
first with ``xloadflags``, whose XLF_KERNEL_64 we require), a kernel that is not
64-bit, a command line longer than ``cmdline_size``, RAM too small for ``init_size``
(counted from ``pref_address`` for a relocatable kernel: that is where it decompresses
itself with ``nokaslr``), initrds that do not fit between the kernel and the end of
RAM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from stub.vmm.boot import acpi, layout
from stub.vmm.boot.common import ARCH_X86_64, BootState, LoaderError, Module, Placed
from stub.vmm.ram import PAGE, GuestRam

NAME = "linux"

HDR_MAGIC = b"HdrS"
MIN_VERSION = 0x020C  # 2.12: xloadflags, the 64-bit entry, initrds above 4 GiB
RSDP_VERSION = 0x020E  # 2.14: boot_params.acpi_rsdp_addr
SECTOR = 512
DEFAULT_SETUP_SECTS = 4  # setup_sects 0 means 4
BOOT_FLAG = 0xAA55
KERNEL_LOAD = 0x10_0000  # where a bzImage's protected-mode part goes (code32_start)
ENTRY64_OFFSET = 0x200  # the 64-bit entry, from the protected-mode kernel's start
ZERO_PAGE_SIZE = 0x1000
BOOT_CS = 0x10  # boot.rst: __BOOT_CS, 64-bit code at the 64-bit entry
BOOT_DS = 0x18  # __BOOT_DS, flat data
# null, null, 64-bit code (L=1), flat data; accessed bits preset (no descriptor writes).
GDT = struct.pack("<4Q", 0, 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF)
E820_MAX = 128
LOADER_UNDEFINED = 0xFF  # type_of_loader: a boot loader without an assigned id

# Loadflags and xloadflags bits (boot.rst).
LOADED_HIGH = 0x01
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02

# Offsets in the image's first sector and in the zero page (they coincide: the zero
# page starts with a copy of the setup sector's layout).
OFF_SETUP_SECTS = 0x1F1
OFF_BOOT_FLAG = 0x1FE
OFF_HEADER_END = 0x201  # one byte: the header's length past 0x202
OFF_MAGIC = 0x202
OFF_VERSION = 0x206
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_CODE32_START = 0x214
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_HEAP_END_PTR = 0x224
OFF_CMD_LINE_PTR = 0x228
OFF_INITRD_ADDR_MAX = 0x22C
OFF_KERNEL_ALIGNMENT = 0x230
OFF_RELOCATABLE = 0x234
OFF_XLOADFLAGS = 0x236
OFF_CMDLINE_SIZE = 0x238
OFF_PREF_ADDRESS = 0x258
OFF_INIT_SIZE = 0x260
# boot_params fields outside the setup header.
OFF_ACPI_RSDP_ADDR = 0x070
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8
OFF_E820_TABLE = 0x2D0
HEAP_END = 0xFE00 - 0x200  # what loaders give a kernel whose setup runs at 0x90000

_E820 = struct.Struct("<QQI")
# screen_info: orig_x, orig_y, ext_mem_k, orig_video_page, orig_video_mode,
# orig_video_cols, flags, unused2, orig_video_ega_bx, unused3, orig_video_lines,
# orig_video_isVGA, orig_video_points
_SCREEN_INFO = struct.Struct("<BBHHBBBBHHBBH")
VGA_TEXT = _SCREEN_INFO.pack(0, 0, 0, 0, 3, 80, 0, 0, 0, 0, 25, 1, 16)


@dataclass(frozen=True)
class SetupHeader:
    """What the loader needs of the setup header (boot.rst, "The Real-Mode Kernel
    Header"), already checked."""

    version: int
    setup_sects: int
    header: bytes  # 0x1F1 up to the header's end, copied into the zero page
    code32_start: int
    initrd_addr_max: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int

    @property
    def kernel_offset(self) -> int:
        """The protected-mode kernel's offset in the file."""
        return (self.setup_sects + 1) * SECTOR

    @property
    def runs_at(self) -> int:
        """Where the kernel decompresses itself: pref_address for a relocatable kernel
        loaded below it (KASLR off), else its load address."""
        return max(KERNEL_LOAD, self.pref_address) if self.relocatable else KERNEL_LOAD

    @property
    def needs_end(self) -> int:
        """One past the memory the kernel needs during boot (init_size from runs_at)."""
        return self.runs_at + self.init_size


def _u8(image: bytes, off: int) -> int:
    return image[off]


def _u16(image: bytes, off: int) -> int:
    return struct.unpack_from("<H", image, off)[0]


def _u32(image: bytes, off: int) -> int:
    return struct.unpack_from("<I", image, off)[0]


def _u64(image: bytes, off: int) -> int:
    return struct.unpack_from("<Q", image, off)[0]


def detect(image: bytes) -> bool:
    """A bzImage: "HdrS" at 0x202 (load() checks the rest). ELF files are never one."""
    return len(image) >= OFF_MAGIC + 4 and image[OFF_MAGIC:OFF_MAGIC + 4] == HDR_MAGIC


def parse(image: bytes) -> SetupHeader:
    """The checked setup header, or a LoaderError naming what is wrong."""
    if not detect(image):
        raise LoaderError('not a Linux bzImage: no "HdrS" setup header at 0x202')
    version = _u16(image, OFF_VERSION)
    if version < MIN_VERSION:
        raise LoaderError(f"Linux boot protocol {version >> 8}.{version & 0xFF:02d} is too "
                          f"old: 2.12 or later needed (kernels since 3.8)")
    header_end = OFF_MAGIC + _u8(image, OFF_HEADER_END)
    if header_end > len(image):
        raise LoaderError(f"truncated bzImage: the file ends at {len(image):#x}, inside "
                          f"the setup header (to {header_end:#x})")
    if header_end < OFF_INIT_SIZE + 4:
        raise LoaderError(f"malformed bzImage: the setup header ends at {header_end:#x}, "
                          f"before init_size")
    setup_sects = _u8(image, OFF_SETUP_SECTS) or DEFAULT_SETUP_SECTS
    hdr = SetupHeader(
        version=version, setup_sects=setup_sects,
        header=image[OFF_SETUP_SECTS:header_end],
        code32_start=_u32(image, OFF_CODE32_START),
        initrd_addr_max=_u32(image, OFF_INITRD_ADDR_MAX),
        relocatable=bool(_u8(image, OFF_RELOCATABLE)),
        xloadflags=_u16(image, OFF_XLOADFLAGS),
        cmdline_size=_u32(image, OFF_CMDLINE_SIZE),
        pref_address=_u64(image, OFF_PREF_ADDRESS),
        init_size=_u32(image, OFF_INIT_SIZE))
    if _u16(image, OFF_BOOT_FLAG) != BOOT_FLAG:
        raise LoaderError(f"malformed bzImage: boot_flag is {_u16(image, OFF_BOOT_FLAG):#x}, "
                          f"not {BOOT_FLAG:#x}")
    if not hdr.xloadflags & XLF_KERNEL_64:
        raise LoaderError("the bzImage is not a 64-bit kernel (xloadflags lacks "
                          "XLF_KERNEL_64)")
    if hdr.kernel_offset >= len(image):
        raise LoaderError(f"malformed bzImage: {setup_sects} setup sectors but the file "
                          f"has {len(image)} bytes")
    if hdr.code32_start != KERNEL_LOAD:
        raise LoaderError(f"the bzImage wants its kernel at {hdr.code32_start:#x}, not "
                          f"{KERNEL_LOAD:#x}")
    return hdr


def load(ram: GuestRam, image: bytes, modules: list[Module], cmdline: str,
         cpus: int = 1) -> BootState:
    """Load for a VM of ``cpus`` vCPUs (the ACPI tables list that many)."""
    hdr = parse(image)
    kernel = image[hdr.kernel_offset:]
    _check_memory(hdr, len(kernel), ram.size)
    if len(cmdline) > hdr.cmdline_size:
        raise LoaderError(f"the command line has {len(cmdline)} bytes; this kernel takes "
                          f"at most {hdr.cmdline_size}")
    initrd = place_initrd(ram, hdr, modules)
    area = layout.InfoArea(ram)
    zero_page = area.reserve(ZERO_PAGE_SIZE, align=PAGE)
    cmdline_addr = area.string(cmdline)
    gdt = area.put(GDT)
    rsdp = acpi.build(ram, cpus)
    ram.write(zero_page, boot_params(hdr, ram.size, cmdline_addr, initrd, rsdp))
    ram.write(KERNEL_LOAD, kernel)
    return BootState(NAME, ARCH_X86_64, hdr.code32_start + ENTRY64_OFFSET, long_mode=True,
                     registers=entry_registers(zero_page), gdt=(gdt, len(GDT) - 1),
                     info=zero_page, modules=initrd, cmdline=cmdline,
                     kernel_end=hdr.needs_end)


def entry_registers(zero_page: int) -> dict[str, int]:
    """The 64-bit entry's registers over the long-mode defaults: RSI = zero page, the
    boot selectors, and vmstub's RDI/RDX (vCPU index, RAM size) cleared."""
    return {"rsi": zero_page, "rdi": 0, "rdx": 0, "cs": BOOT_CS, "ds": BOOT_DS,
            "es": BOOT_DS, "ss": BOOT_DS, "fs": BOOT_DS, "gs": BOOT_DS}


def _check_memory(hdr: SetupHeader, kernel_size: int, ram_size: int) -> None:
    end = max(hdr.needs_end, KERNEL_LOAD + kernel_size)
    if end > ram_size:
        raise LoaderError(
            f"the kernel needs RAM up to {end:#x} ({-(-end // (1 << 20))} MiB: init_size "
            f"{hdr.init_size:#x} from {hdr.runs_at:#x}); the VM has {ram_size >> 20} MiB "
            f"(give more with --memory-mb)")


def place_initrd(ram: GuestRam, hdr: SetupHeader, modules: list[Module]
                 ) -> tuple[Placed, ...]:
    """The modules back to back (each page aligned: Linux's cpio reader skips the zero
    padding between archives) as one initrd at the top of RAM below initrd_addr_max,
    above everything the kernel needs; the placed modules, first to last."""
    if not modules:
        return ()
    offsets, size = [], 0
    for module in modules:
        offsets.append(size)
        size = layout.page_up(size + len(module.data))
    top = min(ram.size, hdr.initrd_addr_max + 1, layout.U32_LIMIT)
    start = (top - size) & ~(PAGE - 1)
    if start < hdr.needs_end:
        total = sum(len(m.data) for m in modules)
        raise LoaderError(
            f"the initrd ({total} bytes) does not fit in RAM: it would start at "
            f"{start:#x}, below the end of the kernel's memory {hdr.needs_end:#x} "
            f"(give more with --memory-mb)")
    placed = []
    for module, offset in zip(modules, offsets):
        ram.write(start + offset, module.data)
        placed.append(Placed(module.name, start + offset,
                             start + offset + len(module.data)))
    return tuple(placed)


def boot_params(hdr: SetupHeader, ram_size: int, cmdline_addr: int,
                initrd: tuple[Placed, ...], rsdp: int = 0) -> bytes:
    """The zero page (zero-page.rst): screen_info, the ACPI RSDP's address (protocol
    2.14 and later; older kernels find it by the BIOS-area scan), the e820 map, the
    setup header with the boot loader's fields."""
    page = bytearray(ZERO_PAGE_SIZE)
    page[0:len(VGA_TEXT)] = VGA_TEXT
    if hdr.version >= RSDP_VERSION:
        struct.pack_into("<Q", page, OFF_ACPI_RSDP_ADDR, rsdp)
    page[OFF_SETUP_SECTS:OFF_SETUP_SECTS + len(hdr.header)] = hdr.header
    entries = layout.memory_map(ram_size)
    page[OFF_E820_ENTRIES] = len(entries)
    for i, (base, length, kind) in enumerate(entries[:E820_MAX]):
        _E820.pack_into(page, OFF_E820_TABLE + i * _E820.size, base, length, kind)
    page[OFF_TYPE_OF_LOADER] = LOADER_UNDEFINED
    page[OFF_LOADFLAGS] = (page[OFF_LOADFLAGS] | LOADED_HIGH | CAN_USE_HEAP) & ~KEEP_SEGMENTS
    struct.pack_into("<H", page, OFF_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<I", page, OFF_CMD_LINE_PTR, cmdline_addr)
    struct.pack_into("<I", page, OFF_EXT_CMD_LINE_PTR, 0)
    start = initrd[0].start if initrd else 0
    size = initrd[-1].end - start if initrd else 0
    struct.pack_into("<II", page, OFF_RAMDISK_IMAGE, start, size)
    struct.pack_into("<I", page, OFF_EXT_RAMDISK_IMAGE, 0)
    struct.pack_into("<I", page, OFF_EXT_RAMDISK_SIZE, 0)
    return bytes(page)
