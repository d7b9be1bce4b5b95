"""ELF32 and ELF64 little-endian files: the one reader for the boot loaders, the tests
and the benchmarks.

Headers, program headers (segments), section headers, notes and the symbol table, from
bytes, with every offset checked against the file: a broken kernel image is an
:class:`ElfError` (a ``ValueError``), never an ``IndexError`` or ``struct.error``. Both
classes read into the same records (addresses as ints), and ``bits`` says which one the
file was. What a loader needs on top (the machine, the file type, PT_LOAD rules) is the
boot protocols' business (``stub.vmm.boot``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PT_LOAD = 1
PT_NOTE = 4
SHT_SYMTAB = 2
SHT_NOTE = 7
PF_X, PF_W, PF_R = 1, 2, 4
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
EM_386, EM_X86_64 = 3, 62


@dataclass(frozen=True)
class _Layout:
    """One ELF class's structures, and where each field we use sits in them."""

    bits: int
    ehdr: struct.Struct
    phdr: struct.Struct
    phdr_fields: tuple[int, ...]  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz
    shdr: struct.Struct
    sym: struct.Struct
    sym_fields: tuple[int, ...]  # st_name, st_info, st_shndx, st_value, st_size


_ELF64 = _Layout(64, struct.Struct("<16sHHIQQQIHHHHHH"), struct.Struct("<IIQQQQQQ"),
                 (0, 1, 2, 3, 4, 5, 6), struct.Struct("<IIQQQQIIQQ"),
                 struct.Struct("<IBBHQQ"), (0, 1, 3, 4, 5))
_ELF32 = _Layout(32, struct.Struct("<16sHHIIIIIHHHHHH"), struct.Struct("<IIIIIIII"),
                 (0, 6, 1, 2, 3, 4, 5), struct.Struct("<IIIIIIIIII"),
                 struct.Struct("<IIIBBH"), (0, 3, 5, 1, 2))
_LAYOUTS = {1: _ELF32, 2: _ELF64}
_NOTE = struct.Struct("<III")


class ElfError(ValueError):
    """Not an ELF32/ELF64 little-endian file, or one whose tables run off its end."""


@dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Section:
    type: int
    addr: int
    offset: int
    size: int


@dataclass(frozen=True)
class Note:
    name: bytes  # without its terminating NUL
    type: int
    desc: bytes


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    bind: int
    type: int
    shndx: int


@dataclass(frozen=True)
class Elf:
    data: bytes
    machine: int
    etype: int
    entry: int
    segments: tuple[Segment, ...]
    symbols: dict[str, Symbol]
    bits: int = 64  # 32 for ELF32 (EI_CLASS 1), 64 for ELF64
    sections: tuple[Section, ...] = ()

    def notes(self) -> list[Note]:
        """The notes of the PT_NOTE segments, or of the SHT_NOTE sections when the file
        has no PT_NOTE (an object a linker script stripped of them still has sections)."""
        areas = [(s.offset, s.filesz) for s in self.segments if s.type == PT_NOTE]
        if not areas:
            areas = [(s.offset, s.size) for s in self.sections if s.type == SHT_NOTE]
        return [note for offset, size in areas for note in _notes(self.data, offset, size)]

    def file_bytes(self, segment: Segment) -> bytes:
        """The bytes a segment takes from the file (``filesz`` of them)."""
        return self.data[segment.offset:segment.offset + segment.filesz]

    def segment_holding(self, vaddr: int, *, memory: bool = False) -> Segment | None:
        """The PT_LOAD segment whose file bytes hold ``vaddr``; with ``memory``, whose
        memory image does (``memsz`` bytes: a ``.bss`` address too)."""
        return next((s for s in self.segments if s.type == PT_LOAD
                     and s.vaddr <= vaddr < s.vaddr + (s.memsz if memory else s.filesz)),
                    None)

    def symbol_bytes(self, name: str) -> bytes:
        """The bytes of a symbol (a function's code, an object's initial value)."""
        sym = self.symbols[name]
        seg = self.segment_holding(sym.value)
        if seg is None or sym.value + sym.size > seg.vaddr + seg.filesz:
            raise ElfError(f"{name} is not in the file's loaded bytes")
        start = seg.offset + sym.value - seg.vaddr
        return self.data[start:start + sym.size]


def read_elf(data: bytes) -> Elf:
    """Headers, segments, sections and symbols of an ELF32 or ELF64 little-endian file;
    :class:`ElfError` if it is not one or if any table runs past its end."""
    data = bytes(data)
    if len(data) < 6 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    layout = _LAYOUTS.get(data[4])
    if layout is None:
        raise ElfError(f"not an ELF32 or ELF64 file (EI_CLASS is {data[4]})")
    if data[5] != 1:
        raise ElfError(f"not a little-endian ELF file (EI_DATA is {data[5]}, not 1)")
    if len(data) < layout.ehdr.size:
        raise ElfError("not an ELF file (its header is truncated)")
    (_ident, etype, machine, _version, entry, phoff, shoff, _flags, _ehsize, phentsize,
     phnum, shentsize, shnum, _shstrndx) = layout.ehdr.unpack_from(data)
    segments = tuple(_segment(layout, data, off)
                     for off in _table(data, phoff, phentsize, phnum, layout.phdr,
                                       "the program header table"))
    for i, s in enumerate(segments):
        if s.offset + s.filesz > len(data):
            raise ElfError(f"segment {i} is truncated: its {s.filesz} file bytes at "
                           f"{s.offset:#x} run past the end of the file ({len(data):#x})")
    sections = [layout.shdr.unpack_from(data, off)
                for off in _table(data, shoff, shentsize, shnum, layout.shdr,
                                  "the section header table")]
    return Elf(data, machine, etype, entry, segments, _symbols(layout, data, sections),
               layout.bits,
               tuple(Section(kind, addr, off, size)
                     for (_n, kind, _f, addr, off, size, *_rest) in sections))


def _segment(layout: _Layout, data: bytes, offset: int) -> Segment:
    raw = layout.phdr.unpack_from(data, offset)
    return Segment(*(raw[i] for i in layout.phdr_fields))


def _table(data: bytes, offset: int, entsize: int, count: int, layout: struct.Struct,
           what: str) -> range:
    """Offsets of a table's entries, checked to lie inside the file."""
    if not count:  # an object file has no program headers (and may say entsize 0)
        return range(0)
    if entsize < layout.size:
        raise ElfError(f"{what} has {entsize}-byte entries, fewer than {layout.size}")
    if offset + count * entsize > len(data):
        raise ElfError(f"{what} is truncated: {count} entries at {offset:#x} run past "
                       f"the end of the file ({len(data):#x})")
    return range(offset, offset + count * entsize, entsize)


def _symbols(layout: _Layout, data: bytes, sections: list[tuple]) -> dict[str, Symbol]:
    out: dict[str, Symbol] = {}
    for index, (_name, kind, _flags, _addr, off, size, link, _info, _align,
                entsize) in enumerate(sections):
        if kind != SHT_SYMTAB:
            continue
        if link >= len(sections):
            raise ElfError(f"symbol table (section {index}) names string table section "
                           f"{link}, but there are only {len(sections)} sections")
        strings, strings_size = sections[link][4], sections[link][5]
        if strings + strings_size > len(data):
            raise ElfError(f"string table (section {link}) runs past the end of the file")
        strings_end = strings + strings_size
        count = size // entsize if entsize else 0
        for pos in _table(data, off, entsize, count, layout.sym,
                          f"symbol table (section {index})"):
            raw = layout.sym.unpack_from(data, pos)
            name_off, info, shndx, value, sym_size = (raw[i] for i in layout.sym_fields)
            end = data.find(b"\0", strings + name_off, strings_end)
            if end < 0:
                raise ElfError(f"a symbol name at {name_off:#x} runs past the end of "
                               f"string table (section {link})")
            name = data[strings + name_off:end].decode(errors="replace")
            if name:
                out[name] = Symbol(name, value, sym_size, info >> 4, info & 0xF, shndx)
    return out


def _notes(data: bytes, offset: int, size: int):
    """The notes in ``size`` bytes at ``offset``: namesz, descsz, type, then the name and
    the descriptor, each padded to 4 bytes (what GNU tools emit for both classes)."""
    pos, end = offset, min(offset + size, len(data))
    while pos + _NOTE.size <= end:
        namesz, descsz, kind = _NOTE.unpack_from(data, pos)
        name_at = pos + _NOTE.size
        desc_at = name_at + _align4(namesz)
        pos = desc_at + _align4(descsz)
        if pos > end:
            raise ElfError(f"a note at {name_at - _NOTE.size:#x} runs past the end of its "
                           f"note area")
        yield Note(data[name_at:name_at + namesz].rstrip(b"\0"), kind,
                   data[desc_at:desc_at + descsz])


def _align4(n: int) -> int:
    return (n + 3) & ~3


@cache
def read_elf_file(path: Path) -> Elf:
    """An ELF file read once per process (the demo kernel's symbols, in tests)."""
    return read_elf(Path(path).read_bytes())


__all__ = ["EM_386", "EM_X86_64", "ET_EXEC", "PT_LOAD", "PT_NOTE", "Elf", "ElfError", "Note",
           "Section", "Segment", "Symbol", "read_elf", "read_elf_file"]
