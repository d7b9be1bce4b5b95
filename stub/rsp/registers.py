"""The x86-64 register file as gdb sees it, mirroring ``target.xml``.

``REGISTERS`` lists every register of target.xml in document order; the index is the
gdb *remote* register number (what ``p``/``P`` and stop replies use) and the ``g``
block is their little-endian values concatenated at full width. gdb's internal register
numbers differ (it renumbers registers it does not know, like ``fs_base``), which is
why tests compare against ``maint print remote-registers``, not ``maint print
registers``.

Values are plain ints: 64-bit GPRs, 32-bit ``eflags``/selectors/x87 control words,
80-bit ``st0``..``st7``, 128-bit ``xmm0``..``xmm15``. Names are gdb's, except that the
VMM interface calls ``eflags`` ``rflags`` (``vmm_name``); everything keyed by register
name in this module's encode/decode functions uses the VMM names.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class RegisterDef:
    regnum: int  # gdb remote register number
    name: str  # gdb name (as in target.xml)
    size: int  # bytes on the wire
    type: str  # gdb type from target.xml
    offset: int  # byte offset in the g/G block

    @property
    def vmm(self) -> str:
        """Name of this register in the VMM interface."""
        return vmm_name(self.name)

    @property
    def mask(self) -> int:
        return (1 << (8 * self.size)) - 1


_VMM_NAMES = {"eflags": "rflags"}
_GDB_NAMES = {v: k for k, v in _VMM_NAMES.items()}


def vmm_name(gdb_name: str) -> str:
    """The VMM interface's name for a gdb register (only ``eflags`` differs)."""
    return _VMM_NAMES.get(gdb_name, gdb_name)


def gdb_name(name: str) -> str:
    """The gdb name for a VMM register name (inverse of ``vmm_name``)."""
    return _GDB_NAMES.get(name, name)


def _layout() -> tuple[RegisterDef, ...]:
    spec: list[tuple[str, int, str]] = []
    spec += [(n, 8, "int64") for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi")]
    spec += [("rbp", 8, "data_ptr"), ("rsp", 8, "data_ptr")]
    spec += [(f"r{i}", 8, "int64") for i in range(8, 16)]
    spec += [("rip", 8, "code_ptr"), ("eflags", 4, "i386_eflags")]
    spec += [(n, 4, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    spec += [(n, 8, "int64") for n in ("fs_base", "gs_base", "k_gs_base")]
    spec += [
        ("cr0", 8, "i386_cr0"),
        ("cr2", 8, "int64"),
        ("cr3", 8, "i386_cr3"),
        ("cr4", 8, "i386_cr4"),
        ("cr8", 8, "int64"),
        ("efer", 8, "i386_efer"),
    ]
    spec += [(f"st{i}", 10, "i387_ext") for i in range(8)]
    spec += [
        (n, 4, "int") for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
    ]
    spec += [(f"xmm{i}", 16, "vec128") for i in range(16)]
    spec += [("mxcsr", 4, "i386_mxcsr")]
    regs, offset = [], 0
    for regnum, (name, size, typ) in enumerate(spec):
        regs.append(RegisterDef(regnum, name, size, typ, offset))
        offset += size
    return tuple(regs)


REGISTERS: tuple[RegisterDef, ...] = _layout()
G_SIZE = sum(r.size for r in REGISTERS)  # 608 bytes: the full g/G block

_BY_NAME: dict[str, RegisterDef] = {r.name: r for r in REGISTERS}
_BY_NAME.update({r.vmm: r for r in REGISTERS})

#: Registers sent with every stop reply so gdb need not fetch them: rbp, rsp, rip.
EXPEDITED: tuple[RegisterDef, ...] = tuple(_BY_NAME[n] for n in ("rbp", "rsp", "rip"))
EXPEDITED_REGNUMS: tuple[int, ...] = tuple(r.regnum for r in EXPEDITED)


def by_name(name: str) -> RegisterDef:
    """Look up by gdb or VMM name (``eflags`` and ``rflags`` both work); KeyError."""
    return _BY_NAME[name]


def by_number(regnum: int) -> RegisterDef:
    """Look up by remote register number; KeyError when out of range."""
    if not 0 <= regnum < len(REGISTERS):
        raise KeyError(regnum)
    return REGISTERS[regnum]


def _to_bytes(reg: RegisterDef, value: int) -> bytes:
    if not 0 <= value <= reg.mask:
        raise ValueError(f"{reg.name}: value {value:#x} does not fit in {reg.size} bytes")
    return value.to_bytes(reg.size, "little")


def encode_register(name: str, value: int) -> bytes:
    """One register in target byte order (``p`` reply before hex encoding)."""
    return _to_bytes(by_name(name), value)


def decode_register(name: str, data: bytes) -> int:
    """Inverse of ``encode_register``; the size must match exactly (ValueError)."""
    reg = by_name(name)
    if len(data) != reg.size:
        raise ValueError(f"{reg.name} is {reg.size} bytes, got {len(data)}")
    return int.from_bytes(data, "little")


def encode_g(values: Mapping[str, int]) -> bytes:
    """The ``g`` block: every register in order, keyed by VMM name (KeyError names the
    first missing one; ValueError for a value that does not fit)."""
    return b"".join(_to_bytes(r, values[r.vmm]) for r in REGISTERS)


def decode_g(data: bytes) -> dict[str, int]:
    """The ``G`` block -> {VMM name: value}. A shorter block covering a prefix of the
    registers is accepted (only those are returned); a block that ends inside a
    register or is longer than ``G_SIZE`` raises ValueError."""
    if len(data) > G_SIZE:
        raise ValueError(f"G block of {len(data)} bytes exceeds {G_SIZE}")
    out: dict[str, int] = {}
    for r in REGISTERS:
        if r.offset >= len(data):
            break
        end = r.offset + r.size
        if end > len(data):
            raise ValueError(f"G block ends inside {r.name}")
        out[r.vmm] = int.from_bytes(data[r.offset : end], "little")
    return out


def expedited_registers(values: Mapping[str, int]) -> dict[int, bytes]:
    """{regnum: bytes} of rbp/rsp/rip for ``packets.stop_reply``, from VMM-named values."""
    return {r.regnum: _to_bytes(r, values[r.vmm]) for r in EXPEDITED}


def vmm_names(regs: Iterable[RegisterDef] = REGISTERS) -> tuple[str, ...]:
    """VMM names of ``regs`` in order: what to read from a vCPU to build a ``g``."""
    return tuple(r.vmm for r in regs)


@functools.cache
def target_xml() -> bytes:
    """The target description served for ``qXfer:features:read:target.xml``."""
    return resources.files(__package__).joinpath("target.xml").read_bytes()


#: Annexes served by qXfer:features:read.
FEATURE_DOCUMENTS = ("target.xml",)


def feature_document(annex: str) -> bytes | None:
    """The document for a qXfer:features annex, or None if there is no such annex."""
    return target_xml() if annex in FEATURE_DOCUMENTS else None
