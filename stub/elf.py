"""ELF64 little-endian files: the one reader for the loader, the tests and the benchmarks.

Headers, program headers (segments) and the symbol table, from bytes, with every offset
checked against the file: a broken kernel image is an :class:`ElfError` (a
``ValueError``), never an ``IndexError`` or ``struct.error``. What a loader needs on top
(the machine, PT_LOAD rules) is the loader's business (``stub.vmm.loader``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PT_LOAD = 1
SHT_SYMTAB = 2
PF_X, PF_W, PF_R = 1, 2, 4

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")


class ElfError(ValueError):
    """Not an ELF64 little-endian file, or one whose tables run off its end."""


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
    """Headers, segments and symbols of an ELF64 little-endian file; :class:`ElfError`
    if it is not one or if any table runs past its end."""
    data = bytes(data)
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2:
        raise ElfError(f"not an ELF64 file (EI_CLASS is {data[4]}, not 2)")
    if data[5] != 1:
        raise ElfError(f"not a little-endian ELF file (EI_DATA is {data[5]}, not 1)")
    (_ident, etype, machine, _version, entry, phoff, shoff, _flags, _ehsize, phentsize,
     phnum, shentsize, shnum, _shstrndx) = _EHDR.unpack_from(data)
    segments = tuple(Segment(*_PHDR.unpack_from(data, off)[:7])  # all but p_align
                     for off in _table(data, phoff, phentsize, phnum, _PHDR,
                                       "the program header table"))
    for i, s in enumerate(segments):
        if s.offset + s.filesz > len(data):
            raise ElfError(f"segment {i} is truncated: its {s.filesz} file bytes at "
                           f"{s.offset:#x} run past the end of the file ({len(data):#x})")
    return Elf(data, machine, etype, entry, segments,
               _symbols(data, shoff, shentsize, shnum))


def _table(data: bytes, offset: int, entsize: int, count: int, layout: struct.Struct,
           what: str) -> range:
    """Offsets of a table's entries, checked to lie inside the file."""
    if count and entsize < layout.size:
        raise ElfError(f"{what} has {entsize}-byte entries, fewer than {layout.size}")
    if count and offset + count * entsize > len(data):
        raise ElfError(f"{what} is truncated: {count} entries at {offset:#x} run past "
                       f"the end of the file ({len(data):#x})")
    return range(offset, offset + count * entsize, entsize)


def _symbols(data: bytes, shoff: int, shentsize: int, shnum: int) -> dict[str, Symbol]:
    sections = [_SHDR.unpack_from(data, off)
                for off in _table(data, shoff, shentsize, shnum, _SHDR,
                                  "the section header table")]
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
        for pos in _table(data, off, entsize, count, _SYM, f"symbol table (section {index})"):
            name_off, info, _other, shndx, value, sym_size = _SYM.unpack_from(data, pos)
            end = data.find(b"\0", strings + name_off, strings_end)
            if end < 0:
                raise ElfError(f"a symbol name at {name_off:#x} runs past the end of "
                               f"string table (section {link})")
            name = data[strings + name_off:end].decode(errors="replace")
            if name:
                out[name] = Symbol(name, value, sym_size, info >> 4, info & 0xF, shndx)
    return out


@cache
def read_elf_file(path: Path) -> Elf:
    """An ELF file read once per process (the demo kernel's symbols, in tests)."""
    return read_elf(Path(path).read_bytes())


__all__ = ["PT_LOAD", "Elf", "ElfError", "Segment", "Symbol", "read_elf", "read_elf_file"]
