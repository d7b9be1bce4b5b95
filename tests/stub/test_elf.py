"""stub/elf.py, the one ELF reader: the committed demo kernel (ELF64) and mbkernel (ELF32)
read as their contracts say, notes and object files read, and a broken file is an
ElfError with a clear message, never an IndexError or struct.error (hand-made broken
files and a hypothesis property over mutated ones)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stub.elf import (
    EM_386,
    ET_EXEC,
    ET_REL,
    PF_R,
    PF_W,
    PF_X,
    PT_LOAD,
    PT_NOTE,
    Elf,
    ElfError,
    Note,
    read_elf,
    read_elf_file,
)
from tests.guests.test_demo_kernel import ELF_PATH, KERNEL_VMA

DEMO = ELF_PATH.read_bytes()
MBKERNEL = ELF_PATH.parents[3] / "tests" / "guests" / "mbkernel" / "mbkernel.elf"

# Field offsets in the ELF64 header and a program header (the ELF spec's layout).
E_PHOFF, E_SHOFF, E_PHNUM, E_SHNUM = 32, 40, 56, 60
P_FILESZ = 32
DEMO_PHOFF = int.from_bytes(DEMO[E_PHOFF:E_PHOFF + 8], "little")

STB_GLOBAL, STT_FUNC = 1, 2
CODE = b"\x90\xf4"  # nop; hlt
BASE = 0x10_0000


def put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def tiny_elf(strtab_link: int = 1, symtab_extra: int = 0, name_off: int = 1) -> bytes:
    """A small ELF64 executable built by hand: one PT_LOAD holding CODE, a string table,
    a symbol table (a null symbol and a global function ``f``) linked to section
    ``strtab_link``, and the section headers [null, .strtab, .symtab] at the end.
    ``symtab_extra`` bytes are claimed for the symbol table beyond what it has;
    ``name_off`` is where ``f``'s name starts in the string table."""
    ehdr_size, phdr_size, shdr_size, sym_size = 64, 56, 64, 24
    code_off = ehdr_size + phdr_size
    strtab = b"\0f\0"
    strtab_off = code_off + len(CODE)
    symtab = (bytes(sym_size)
              + struct.pack("<IBBHQQ", name_off, STB_GLOBAL << 4 | STT_FUNC, 0, 1, BASE, len(CODE)))
    symtab_off = strtab_off + len(strtab)
    shoff = symtab_off + len(symtab)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, BASE, ehdr_size, shoff, 0,
                       ehdr_size, phdr_size, 1, shdr_size, 3, 0)
    phdr = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, code_off, BASE, BASE, len(CODE),
                       len(CODE), 0x1000)
    shdrs = (bytes(shdr_size)
             + struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0)
             + struct.pack("<IIQQQQIIQQ", 0, 2, 0, 0, symtab_off, len(symtab) + symtab_extra,
                           strtab_link,
                           1, 8, sym_size))
    return ehdr + phdr + CODE + strtab + symtab + shdrs


# ---- The demo kernel ---------------------------------------------------------------------

def test_demo_kernel_headers_and_segments() -> None:
    elf = read_elf(DEMO)
    assert (elf.machine, elf.etype) == (62, 2)  # EM_X86_64, ET_EXEC
    assert elf.entry == elf.symbols["_start"].value
    loads = [s for s in elf.segments if s.type == PT_LOAD]
    assert loads and all(s.filesz <= s.memsz for s in loads)
    assert all(len(elf.file_bytes(s)) == s.filesz for s in loads)
    boot = elf.segment_holding(elf.entry)
    assert boot is not None and boot.vaddr == boot.paddr and boot.flags & PF_X
    data = elf.segment_holding(elf.symbols["tf_leaks"].value, memory=True)
    assert data is not None and data.flags & PF_W and data.vaddr - data.paddr == KERNEL_VMA
    # tf_leaks is .bss: in the segment's memory image, not in its file bytes
    assert elf.segment_holding(elf.symbols["tf_leaks"].value) is None


def test_demo_kernel_symbols() -> None:
    elf = read_elf(DEMO)
    cpu_loop = elf.symbols["cpu_loop"]
    assert (cpu_loop.bind, cpu_loop.type) == (STB_GLOBAL, STT_FUNC)
    assert cpu_loop.value >= KERNEL_VMA and cpu_loop.size > 0
    code = elf.symbol_bytes("cpu_loop")
    assert len(code) == cpu_loop.size and b"\xcc\xeb" in code  # its own int3; jmp cpu_loop
    assert elf.symbols["ticks"].size == 8 * 16
    with pytest.raises(ElfError, match="loaded bytes"):
        elf.symbol_bytes("tf_leaks")  # .bss has no file bytes
    with pytest.raises(KeyError):
        elf.symbol_bytes("no_such_symbol")


def test_read_elf_file_is_cached() -> None:
    assert read_elf_file(ELF_PATH) is read_elf_file(ELF_PATH)
    assert read_elf_file(ELF_PATH).data == DEMO


def test_tiny_elf_reads() -> None:
    elf = read_elf(tiny_elf())
    assert elf.entry == BASE and len(elf.segments) == 1
    assert list(elf.symbols) == ["f"]
    assert elf.symbol_bytes("f") == CODE
    assert elf.bits == 64 and elf.notes() == []


# ---- ELF32, notes, object files -------------------------------------------------------

def test_mbkernel_reads_as_elf32() -> None:
    elf = read_elf(MBKERNEL.read_bytes())
    assert (elf.bits, elf.machine, elf.etype) == (32, EM_386, ET_EXEC)
    assert elf.entry == elf.symbols["_start"].value
    text = elf.segment_holding(elf.entry)
    assert text is not None and text.paddr == 0x10_0000 and text.flags & PF_X
    assert elf.symbols["kmain"].type == STT_FUNC and elf.symbols["ticks"].size == 4
    assert elf.symbol_bytes("kmain")  # ELF32 symbols map to their file bytes
    bss = elf.segment_holding(elf.symbols["ticks"].value, memory=True)
    assert bss is not None and bss.filesz == 0 and bss.memsz > 0


def elf32_with_note(name: bytes, kind: int, desc: bytes) -> bytes:
    """An ELF32 executable: one PT_LOAD (CODE) and one PT_NOTE with a single note."""
    ehdr_size, phdr_size = 52, 32
    note = (struct.pack("<III", len(name) + 1, len(desc), kind) + name + b"\0"
            + bytes(-(len(name) + 1) % 4) + desc + bytes(-len(desc) % 4))
    code_off = ehdr_size + 2 * phdr_size
    note_off = code_off + len(CODE)
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIIIIIHHHHHH", ident, ET_EXEC, EM_386, 1, BASE, ehdr_size, 0, 0,
                       ehdr_size, phdr_size, 2, 40, 0, 0)
    phdrs = (struct.pack("<IIIIIIII", PT_LOAD, code_off, BASE, BASE, len(CODE), len(CODE),
                         PF_R | PF_X, 0x1000)
             + struct.pack("<IIIIIIII", PT_NOTE, note_off, 0, 0, len(note), len(note),
                           PF_R, 4))
    return ehdr + phdrs + CODE + note


def test_elf32_segments_and_notes() -> None:
    elf = read_elf(elf32_with_note(b"Xen", 18, struct.pack("<I", BASE)))
    assert elf.bits == 32 and elf.entry == BASE
    load = elf.segments[0]
    assert (load.type, load.vaddr, load.paddr, load.filesz, load.flags) == (
        PT_LOAD, BASE, BASE, len(CODE), PF_R | PF_X)
    assert elf.file_bytes(load) == CODE
    assert elf.notes() == [Note(b"Xen", 18, struct.pack("<I", BASE))]


def test_note_running_past_its_area_is_an_elf_error() -> None:
    data = bytearray(elf32_with_note(b"Xen", 18, bytes(4)))
    struct.pack_into("<I", data, len(data) - 16, 0x100)  # its descsz
    with pytest.raises(ElfError, match="note .* runs past"):
        read_elf(bytes(data)).notes()


def test_object_file_without_program_headers() -> None:
    """An ET_REL file has no program headers and may say e_phentsize 0 (gas does): the
    reader returns no segments instead of failing on a zero stride."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, ET_REL, 62, 1, 0, 0, 0, 0, 64, 0, 0, 64,
                       0, 0)
    elf = read_elf(ehdr)
    assert (elf.etype, elf.segments, elf.symbols) == (ET_REL, (), {})


# ---- Broken files ------------------------------------------------------------------------

BROKEN = {
    "empty": (b"", "not an ELF file"),
    "wrong magic": (b"MZ" + DEMO[2:], "not an ELF file"),
    "short header": (DEMO[:63], "not an ELF file"),
    "unknown class": (DEMO[:4] + b"\x03" + DEMO[5:], "not an ELF32 or ELF64 file"),
    "ELF32 header cut short": (MBKERNEL.read_bytes()[:51], "not an ELF file"),
    "big-endian ident": (DEMO[:5] + b"\x02" + DEMO[6:], "not a little-endian"),
    "program headers past the end": (
        put(DEMO, E_PHOFF, "<Q", len(DEMO) - 8), "program header table is truncated"),
    "too many program headers": (
        put(DEMO, E_PHNUM, "<H", 0xFFFF), "program header table is truncated"),
    "segment bytes past the end": (
        put(DEMO, DEMO_PHOFF + P_FILESZ, "<Q", len(DEMO) + 1),
        "segment 0 is truncated"),
    "section headers past the end": (
        put(DEMO, E_SHOFF, "<Q", len(DEMO) - 100), "section header table is truncated"),
    "too many section headers": (
        put(DEMO, E_SHNUM, "<H", 0xFFFF), "section header table is truncated"),
    "symbol table links to no string table": (
        tiny_elf(strtab_link=7), "names string table section 7, but there are only 3"),
    "symbol table past the end": (
        tiny_elf(symtab_extra=24 * 1000), r"symbol table \(section 2\) is truncated"),
    "symbol name outside its string table": (
        tiny_elf(name_off=1000), "runs past the end of string table"),
    "file cut before its section headers": (
        tiny_elf()[:-1], "section header table is truncated"),
}


@pytest.mark.parametrize("data, message", BROKEN.values(), ids=BROKEN.keys())
def test_broken_files_are_elf_errors(data: bytes, message: str) -> None:
    with pytest.raises(ElfError, match=message):
        read_elf(data)


def test_elf_error_is_a_value_error() -> None:
    assert issubclass(ElfError, ValueError)
    assert not issubclass(ElfError, (IndexError, struct.error))


# ---- Property: anything is an Elf or an ElfError -----------------------------------------

def overwritten(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a few runs of bytes replaced: mostly in the ELF header and the
    program headers (the start) and the section headers (the end), anywhere too."""
    where = st.one_of(st.integers(0, 127), st.integers(len(data) - 1024, len(data) - 1),
                      st.integers(0, len(data) - 1))
    patches = st.lists(st.tuples(where, st.binary(min_size=1, max_size=8)),
                       min_size=1, max_size=4)

    def apply(edits: list[tuple[int, bytes]]) -> bytes:
        out = bytearray(data)
        for at, chunk in edits:
            out[at:at + len(chunk)] = chunk[:len(data) - at]
        return bytes(out)

    return patches.map(apply)


ANY_INPUT = st.one_of(
    st.binary(max_size=256),
    st.binary(max_size=256).map(lambda tail: b"\x7fELF\x02\x01\x01" + tail),
    st.integers(0, len(DEMO)).map(lambda n: DEMO[:n]),
    overwritten(DEMO),
    overwritten(tiny_elf()),
    overwritten(elf32_with_note(b"Xen", 18, bytes(4))),
)


@settings(max_examples=200, deadline=None)
@given(ANY_INPUT)
def test_read_elf_returns_or_raises_elf_error(data: bytes) -> None:
    try:
        elf = read_elf(data)
    except ElfError as err:
        assert str(err)
        return
    assert isinstance(elf, Elf)
    for seg in elf.segments:
        assert len(elf.file_bytes(seg)) == seg.filesz
        elf.segment_holding(seg.vaddr)
    try:
        elf.notes()
    except ElfError:
        pass
    for name in elf.symbols:
        try:
            elf.symbol_bytes(name)
        except ElfError:
            pass
