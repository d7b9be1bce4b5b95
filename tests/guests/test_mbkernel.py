"""The committed test kernels of tests/guests/mbkernel/, one C kernel built three ways:
mbkernel.elf (Multiboot v1), mb2kernel.elf (Multiboot2) and pvhkernel.elf (PVH). Their ELF32
contract and boot headers (or note), their serial output and exit status under QEMU (which
boots the Multiboot v1 and PVH builds with -kernel, not the Multiboot2 one), source-level
debugging with gdb against QEMU, and that build.sh reproduces all three byte for byte.

stub.elf reads ELF64 only, so the ELF32 file is parsed here with struct. QEMU, gdb and
toolchain tests skip when the tool is absent; the rebuild test also skips when the
toolchain is not the one that built the committed file.
"""

from __future__ import annotations

import itertools
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KDIR = REPO / "tests" / "guests" / "mbkernel"
ELF_PATH = KDIR / "mbkernel.elf"
SOURCES = ("boot.S", "kernel.c", "mbkernel.ld", "build.sh")
#: The three builds: file -> the protocol the banner names (build.sh's define picks it).
KERNELS = {
    "mbkernel.elf": "Multiboot v1",
    "mb2kernel.elf": "Multiboot2",
    "pvhkernel.elf": "PVH",
}
#: The ones QEMU 7.2 boots with -kernel (it has no Multiboot2 loader).
QEMU_BOOTS = ["mbkernel.elf", "pvhkernel.elf"]

LOAD_PHYS = 0x10_0000
MB_HEADER_MAGIC = 0x1BADB002
MB_FLAG_MEMORY_INFO = 1 << 1
MB_FLAG_AOUT_KLUDGE = 1 << 16
MB2_HEADER_MAGIC = 0xE85250D6
MB2_SEARCH = 32768
MB2_TAG_END, MB2_TAG_INFO_REQUEST = 0, 1
MB2_INFO_BASIC_MEMINFO = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4

#: mem_upper (KiB) of QEMU's PC with -m 128M: QEMU's firmware keeps the top 128 KiB.
QEMU_MEM_UPPER_128M = 129920


def expected_serial(protocol: str = "Multiboot v1",
                    mem_upper: int = QEMU_MEM_UPPER_128M) -> bytes:
    """The serial output of the build whose banner names ``protocol``, on a machine whose
    boot information says ``mem_upper`` KiB above 1 MiB (and 639 KiB below 640 KiB)."""
    return (
        f"mbkernel: {protocol} test kernel\n"
        f"memory: lower 639 KiB, upper {mem_upper} KiB\n"
        "timer: 100 Hz, waiting for 10 ticks\n"
        "ticks ok\n"
        "work: fib[23] = 28657, sum = 75024\n"
        "bye\n"
    ).encode()


# Serial output of mbkernel.elf on QEMU's default PC with -m 128M (mem_upper depends on
# the RAM size).
EXPECTED_SERIAL = expected_serial()
EXIT_VALUE = 0x10                      # written to the isa-debug-exit port 0xF4
EXIT_STATUS = (EXIT_VALUE << 1) | 1    # QEMU's exit status: 33
WORK_RESULT = 75024                    # work(24): sum of fib[0..23]

# First line of `gcc --version`, `as --version`, `ld --version` that built mbkernel.elf.
BUILT_WITH = (
    "gcc (Debian 12.2.0-14+deb12u1) 12.2.0",
    "GNU assembler (GNU Binutils for Debian) 2.40",
    "GNU ld (GNU Binutils for Debian) 2.40",
)

FUNCTIONS = ["_start", "kmain", "work", "timer_irq", "serial_putc", "irq0_entry"]
PT_LOAD = 1
PF_X, PF_W = 1, 2
STB_GLOBAL, STT_OBJECT, STT_FUNC = 1, 1, 2


# ---- a minimal ELF32 reader ---------------------------------------------------------------

@dataclass(frozen=True)
class Seg:
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int
    align: int


@dataclass(frozen=True)
class Sym:
    value: int
    size: int
    bind: int
    type: int


@dataclass(frozen=True)
class Elf32:
    ident: bytes
    etype: int
    machine: int
    entry: int
    segments: list[Seg]
    sections: dict[str, tuple[int, int, int]]  # name -> (type, offset, size)
    symbols: dict[str, Sym]

    def segment_holding(self, addr: int) -> Seg | None:
        return next((s for s in self.segments
                     if s.type == PT_LOAD and s.vaddr <= addr < s.vaddr + s.memsz), None)


def read_elf32(data: bytes) -> Elf32:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    (ident, etype, machine, _, entry, phoff, shoff, _, _, phentsize, phnum, shentsize,
     shnum, shstrndx) = struct.unpack_from("<16sHHIIIIIHHHHHH", data, 0)
    segments = [Seg(*f)
                for f in (struct.unpack_from("<IIIIIIII", data, phoff + i * phentsize)
                          for i in range(phnum))]
    shdrs = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize)
             for i in range(shnum)]
    shstr = shdrs[shstrndx]

    def name_at(table_off: int, off: int) -> str:
        end = data.index(b"\0", table_off + off)
        return data[table_off + off:end].decode()

    sections = {name_at(shstr[4], sh[0]): (sh[1], sh[4], sh[5]) for sh in shdrs}
    symbols: dict[str, Sym] = {}
    for sh in shdrs:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab_off = shdrs[sh[6]][4]
        for off in range(sh[4], sh[4] + sh[5], 16):
            st_name, value, size, info, _, _ = struct.unpack_from("<IIIBBH", data, off)
            if st_name:
                symbols[name_at(strtab_off, st_name)] = Sym(value, size, info >> 4, info & 15)
    return Elf32(ident, etype, machine, entry, segments, sections, symbols)


@pytest.fixture(scope="module", params=list(KERNELS))
def elf(request) -> Elf32:
    """Each build in turn (the ELF contract is the same for all three)."""
    return read_elf32((KDIR / request.param).read_bytes())


def multiboot_headers(data: bytes) -> list[int]:
    """Offsets of the Multiboot v1 magic where a loader looks (4-aligned, first 8 KiB)."""
    return [off for off in range(0, min(len(data), 8192) - 12 + 1, 4)
            if struct.unpack_from("<I", data, off)[0] == MB_HEADER_MAGIC]


def multiboot2_header(data: bytes) -> int | None:
    """Offset of the first Multiboot2 magic where a loader looks (8-aligned, first 32 KiB):
    the one a loader takes."""
    return next((off for off in range(0, min(len(data), MB2_SEARCH) - 16 + 1, 8)
                 if struct.unpack_from("<I", data, off)[0] == MB2_HEADER_MAGIC), None)


def notes(data: bytes, seg: Seg) -> list[tuple[bytes, int, bytes]]:
    """(name, type, desc) of each note in a PT_NOTE segment, 4-aligned (ELF32)."""
    out, off, end = [], seg.offset, seg.offset + seg.filesz
    while off + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        name_at = off + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        out.append((data[name_at:name_at + namesz], ntype, data[desc_at:desc_at + descsz]))
        off = desc_at + (descsz + 3) // 4 * 4
    return out


# ---- ELF and boot protocol contract --------------------------------------------------------

def test_is_elf32_i386_executable(elf: Elf32) -> None:
    assert elf.ident[4] == 1, "ELFCLASS32 expected (QEMU's multiboot loader refuses ELF64)"
    assert elf.ident[5] == 1, "little endian expected"
    assert elf.machine == 3  # EM_386
    assert elf.etype == 2  # ET_EXEC
    assert elf.entry == elf.symbols["_start"].value


def test_load_segments_identity_mapped_from_1mib(elf: Elf32) -> None:
    loads = sorted((s for s in elf.segments if s.type == PT_LOAD), key=lambda s: s.paddr)
    assert loads
    for s in loads:
        assert s.vaddr == s.paddr >= LOAD_PHYS, s
        assert s.memsz >= s.filesz
    for a, b in itertools.pairwise(loads):
        assert a.paddr + a.memsz <= b.paddr, "PT_LOAD segments overlap"
    seg = elf.segment_holding(elf.entry)
    assert seg is not None and seg.flags & PF_X


def test_multiboot_header_in_first_8k() -> None:
    data = ELF_PATH.read_bytes()
    found = multiboot_headers(data)
    assert len(found) == 1, f"expected one Multiboot header in the first 8 KiB, got {found}"
    magic, flags, checksum = struct.unpack_from("<III", data, found[0])
    assert (magic + flags + checksum) & 0xFFFF_FFFF == 0, "bad checksum"
    assert flags & MB_FLAG_MEMORY_INFO, "flags must ask for mem_lower/mem_upper"
    assert not flags & MB_FLAG_AOUT_KLUDGE, "an ELF32 kernel needs no a.out kludge"
    assert flags & 0xFFFC == 0, "unknown required flags would make loaders refuse it"


def test_multiboot2_header_in_first_32k() -> None:
    """mb2kernel.elf: magic, architecture 0 (i386), header_length, checksum, then 8-aligned
    tags to the end tag: one required information request for the basic meminfo (4)."""
    data = (KDIR / "mb2kernel.elf").read_bytes()
    off = multiboot2_header(data)
    assert off is not None, "no Multiboot2 header in the first 32 KiB"
    elf = read_elf32(data)
    text = elf.sections[".text"]
    assert off == text[1], "the header should open .text (file offset 0x1000)"
    magic, arch, length, checksum = struct.unpack_from("<IIII", data, off)
    assert arch == 0, "architecture 0: i386 protected mode"
    assert (magic + arch + length + checksum) & 0xFFFF_FFFF == 0, "bad checksum"
    tags, pos = [], off + 16
    while True:
        assert pos % 8 == 0 and pos + 8 <= off + length, "tags must be 8-aligned, inside"
        ttype, flags, size = struct.unpack_from("<HHI", data, pos)
        tags.append((ttype, flags, data[pos + 8:pos + size]))
        if ttype == MB2_TAG_END:
            assert size == 8
            break
        pos += (size + 7) // 8 * 8
    assert pos + 8 == off + length, "header_length must end with the end tag"
    assert tags == [
        (MB2_TAG_INFO_REQUEST, 0, struct.pack("<I", MB2_INFO_BASIC_MEMINFO)),
        (MB2_TAG_END, 0, b""),
    ], tags
    assert not multiboot_headers(data), "a Multiboot v1 header too would make QEMU take it"


def test_pvh_note() -> None:
    """pvhkernel.elf: a PT_NOTE segment (QEMU reads notes from program headers, aligning
    the name by p_align) with one note "Xen", XEN_ELFNOTE_PHYS32_ENTRY, whose 4-byte
    descriptor is the physical entry, _start, in an executable segment."""
    data = (KDIR / "pvhkernel.elf").read_bytes()
    elf = read_elf32(data)
    note_segs = [s for s in elf.segments if s.type == PT_NOTE]
    assert len(note_segs) == 1, elf.segments
    assert note_segs[0].align == 4
    found = notes(data, note_segs[0])
    assert found == [(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY,
                      struct.pack("<I", elf.symbols["_start"].value))], found
    seg = elf.segment_holding(elf.symbols["_start"].value)
    assert seg is not None and seg.flags & PF_X and seg.paddr == seg.vaddr
    # QEMU tries Multiboot before PVH, and our loader Multiboot2 before Multiboot: no header.
    assert not multiboot_headers(data) and multiboot2_header(data) is None


@pytest.mark.parametrize("name", ["mbkernel.elf", "mb2kernel.elf"])
def test_multiboot_builds_have_no_pvh_note(name: str) -> None:
    """Otherwise PVH, first in both QEMU's and our loader's order, would win."""
    elf = read_elf32((KDIR / name).read_bytes())
    assert not [s for s in elf.segments if s.type == PT_NOTE]
    assert ".note.Xen" not in elf.sections


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_symbols(elf: Elf32, name: str) -> None:
    sym = elf.symbols.get(name)
    assert sym is not None, f"{name} missing from the symbol table"
    assert sym.bind == STB_GLOBAL and sym.type == STT_FUNC and sym.size > 0
    seg = elf.segment_holding(sym.value)
    assert seg is not None and seg.flags & PF_X, f"{name} not in an executable segment"


def test_ticks_is_a_writable_u32(elf: Elf32) -> None:
    sym = elf.symbols.get("ticks")
    assert sym is not None
    assert sym.bind == STB_GLOBAL and sym.type == STT_OBJECT
    assert sym.size == 4 and sym.value % 4 == 0
    seg = elf.segment_holding(sym.value)
    assert seg is not None and seg.flags & PF_W


def test_has_debug_info_without_build_paths(elf: Elf32) -> None:
    for name in (".debug_info", ".debug_line", ".debug_frame"):
        assert name in elf.sections, f"{name} missing: gdb could not debug at source level"
    assert ".note.gnu.build-id" not in elf.sections
    for name in KERNELS:
        assert str(REPO).encode() not in (KDIR / name).read_bytes(), \
            f"absolute build path in {name}"


# ---- QEMU ----------------------------------------------------------------------------------

QEMUS = ["qemu-system-x86_64", "qemu-system-i386"]


def qemu_args(qemu: str, kernel: Path = ELF_PATH) -> list[str]:
    return [qemu, "-m", "128M", "-kernel", str(kernel), "-display", "none", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def qemu_serial(name: str, kernel: str = "mbkernel.elf") -> subprocess.CompletedProcess:
    """``kernel`` run to its end under QEMU ``name`` (skips when it is not installed);
    stdout is the serial output."""
    qemu = shutil.which(name)
    if qemu is None:
        pytest.skip(f"{name} not installed")
    return subprocess.run(qemu_args(qemu, KDIR / kernel) + ["-serial", "stdio"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("kernel", QEMU_BOOTS)
@pytest.mark.parametrize("name", QEMUS)
def test_boots_under_qemu(name: str, kernel: str) -> None:
    """QEMU's Multiboot loader for mbkernel.elf, its PVH loader (the pvh.bin option ROM)
    for pvhkernel.elf: the same output but for the banner, mem_upper included."""
    run = qemu_serial(name, kernel)
    want = expected_serial(KERNELS[kernel])
    assert run.stdout == want, f"serial: {run.stdout!r}; stderr: {run.stderr!r}"
    assert run.returncode == EXIT_STATUS, f"exit {run.returncode}; stderr: {run.stderr!r}"


GDB = shutil.which("gdb")
TIMEOUT = shutil.which("timeout")
QEMU_I386 = shutil.which("qemu-system-i386")


@pytest.mark.skipif(QEMU_I386 is None, reason="qemu-system-i386 not installed "
                    "(gdb 13 cannot debug a 32-bit ELF against x86_64's 64-bit registers)")
@pytest.mark.skipif(GDB is None, reason="gdb not installed")
@pytest.mark.skipif(TIMEOUT is None, reason="coreutils timeout not installed (bounds QEMU)")
@pytest.mark.parametrize("kernel", QEMU_BOOTS)
def test_gdb_source_level_against_qemu(tmp_path: Path, kernel: str) -> None:
    """gdb spawns QEMU over a pipe (no TCP port to race for); `timeout -s KILL` bounds QEMU
    even if gdb dies without killing it."""
    path = KDIR / kernel
    elf = read_elf32(path.read_bytes())
    console = tmp_path / "serial.txt"
    qemu = " ".join(qemu_args(f"exec {TIMEOUT} -s KILL 60 {QEMU_I386}", path)
                    + ["-S", "-gdb", "stdio", "-serial", f"file:{console}"])
    script = tmp_path / "cmds.gdb"
    script.write_text("\n".join([
        "set pagination off",
        "set confirm off",
        f"target remote | {qemu}",
        "break timer_irq",
        "continue",
        "echo BT-IRQ\\n",
        "bt",
        "delete",
        "break work",
        "continue",
        "echo BT-WORK\\n",
        "bt",
        "finish",
        'printf "EIP %#x\\n", $eip',
        "delete",
        "continue",
    ]) + "\n")
    run = subprocess.run([GDB, "-nx", "-batch", "-x", str(script), str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL, check=False)
    out = run.stdout
    log = f"gdb stdout:\n{out}\ngdb stderr:\n{run.stderr}"
    irq_bt = out.split("BT-IRQ\n")[1].split("BT-WORK\n")[0]
    # The interrupt frame's CFI (boot.S) lets the backtrace cross the interrupt.
    assert re.search(r"^#0 +timer_irq \(\) at tests/guests/mbkernel/kernel\.c:\d+$",
                     irq_bt, re.MULTILINE), log
    assert "<signal handler called>" in irq_bt and " kmain (" in irq_bt, log
    assert re.search(r" _start \(\) at tests/guests/mbkernel/boot\.S:\d+$",
                     irq_bt, re.MULTILINE), log
    work_bt = out.split("BT-WORK\n")[1].split("Run till exit")[0]
    frames = re.findall(r"^#(\d) +(?:0x[0-9a-f]+ in )?(\w+) \(", work_bt, re.MULTILINE)
    assert frames == [("0", "work"), ("1", "kmain"), ("2", "_start")], log
    assert f"Value returned is $1 = {WORK_RESULT}" in out, log
    m = re.search(r"^EIP (0x[0-9a-f]+)$", out, re.MULTILINE)
    assert m, log
    eip = int(m.group(1), 16)
    kmain = elf.symbols["kmain"]
    assert kmain.value < eip < kmain.value + kmain.size, f"finish did not return to kmain\n{log}"
    assert console.read_bytes() == expected_serial(KERNELS[kernel])


# ---- rebuild -------------------------------------------------------------------------------

def toolchain() -> tuple[str, ...]:
    missing = [t for t in ("gcc", "as", "ld", "sh") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"toolchain incomplete ({', '.join(missing)} missing): cannot rebuild")
    return tuple(subprocess.run([t, "--version"], capture_output=True, text=True,
                                check=True).stdout.splitlines()[0].strip()
                 for t in ("gcc", "as", "ld"))


def build(script: Path, outdir: Path, cwd: Path, versions: tuple[str, ...]) -> dict[str, bytes]:
    """Run build.sh into ``outdir``; every build's bytes by file name."""
    run = subprocess.run(["sh", str(script), str(outdir)], cwd=cwd, capture_output=True,
                         text=True, timeout=180, check=False)
    if run.returncode != 0:
        if versions != BUILT_WITH:
            pytest.skip(f"build.sh failed with {versions} (gcc without -m32 support?): "
                        f"{run.stderr.strip()[-500:]}")
        pytest.fail(f"build.sh failed:\n{run.stderr}")
    return {name: (outdir / name).read_bytes() for name in KERNELS}


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    versions = toolchain()
    rebuilt = build(KDIR / "build.sh", tmp_path / "out", tmp_path, versions)
    committed = {name: (KDIR / name).read_bytes() for name in KERNELS}
    if rebuilt != committed and versions != BUILT_WITH:
        pytest.skip(f"{versions} differ from {BUILT_WITH}, which built the committed ELFs; "
                    "byte identity is only promised for the same toolchain")
    stale = [name for name in KERNELS if rebuilt[name] != committed[name]]
    assert not stale, f"{', '.join(stale)} stale or the build is not deterministic: " \
        "run tests/guests/mbkernel/build.sh and commit the result"


def test_build_is_deterministic_and_path_independent(tmp_path: Path) -> None:
    """Independent of the toolchain version: a build from this directory and one from a
    copy of the sources elsewhere, run from different working directories, match."""
    versions = toolchain()
    copy = tmp_path / "some" / "other" / "checkout"
    copy.mkdir(parents=True)
    for name in SOURCES:
        shutil.copy2(KDIR / name, copy / name)
    a = build(KDIR / "build.sh", tmp_path / "a", KDIR, versions)
    b = build(copy / "build.sh", tmp_path / "b", tmp_path, versions)
    assert a == b
    assert len(set(a.values())) == len(KERNELS), "the three builds should differ"
