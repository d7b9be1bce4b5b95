"""The register files gdb sees, one :class:`RegisterLayout` per target description.

Two layouts, each mirroring its XML document under ``stub/rsp/``:

- ``X86_64`` (``target.xml``, ``<architecture>i386:x86-64</architecture>``, 66
  registers, a 608-byte ``g`` block): the default, for every kernel but the one below.
- ``I386`` (``target-i386.xml``, ``<architecture>i386</architecture>``, 50 registers,
  a 344-byte ``g`` block): for a kernel booted from an **ELF32** image (Multiboot and
  the like), in the register order and numbering ``qemu-system-i386`` (QEMU 7.2) sends:
  ``eax ecx edx ebx esp ebp esi edi eip eflags cs ss ds es fs gs``, ``fs_base
  gs_base k_gs_base``, ``cr0 cr2 cr3 cr4 cr8 efer`` (32 bits each), ``st0``..``st7``,
  the x87 control words, ``xmm0``..``xmm7``, ``mxcsr``. gdb 13 refuses the x86-64
  block for an i386 program ("Remote 'g' packet reply is too long"), and with
  ``set architecture i386:x86-64`` it unwinds 32-bit frames as 64-bit ones.

The rule: the layout is chosen once per gdb connection from the VM's boot information
(``vm.boot.arch``: ``"i386"`` for an ELF32 image, else ``"i386:x86-64"``; see
``stub.connection.target_layout``) and never changes during the session, whatever mode
the guest switches to, as QEMU does. A 32-bit-booted kernel that enters long mode is
still shown the i386 layout: each i386 register is the low 32 bits of the 64-bit
register (``eax`` of ``rax``, ``eip`` of ``rip``, ``cr3`` of ``cr3``...), ``r8``..
``r15`` and ``xmm8``..``xmm15`` are not visible, and code or data above 4 GiB is out
of gdb's (32-bit) reach. A write through the i386 layout replaces the low 32 bits and
keeps the upper half (``merge``), rather than zero-extending as a 32-bit ``mov`` in
64-bit mode would: in 32-bit protected mode the upper half is not architecturally
visible, so either is what hardware allows; in long mode it keeps what gdb cannot see
(``set $eip`` in a higher-half kernel stays in the higher half), and a ``G`` that
writes back every register gdb read changes nothing gdb did not mean to change.

In each layout ``registers`` lists every register of the XML in document order; the
index is the gdb *remote* register number (what ``p``/``P`` and stop replies use) and
the ``g`` block is their little-endian values concatenated. gdb's internal numbers
differ (it renumbers registers it does not know, like ``fs_base``), which is why tests
compare against ``maint print remote-registers``, not ``maint print registers``.

Values are plain ints keyed by the VMM's register names (``stub.vmm.api``: 64-bit
``rax``..., ``rflags`` for gdb's ``eflags``); ``RegisterDef.vmm`` is that name and
``RegisterDef.partial`` says the wire carries only the low ``size`` bytes of a wider
VMM register. The module-level names (``REGISTERS``, ``G_SIZE``, ``encode_g``...) are
the x86-64 layout's, as before layouts existed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class RegisterDef:
    regnum: int  # gdb remote register number
    name: str  # gdb name (as in the XML)
    size: int  # bytes on the wire
    type: str  # gdb type from the XML
    offset: int  # byte offset in the g/G block
    vmm: str  # the VMM interface's name for the register this one shows
    partial: bool = False  # the low ``size`` bytes of a wider VMM register

    @property
    def mask(self) -> int:
        return (1 << (8 * self.size)) - 1


_VMM_NAMES = {"eflags": "rflags"}
_GDB_NAMES = {v: k for k, v in _VMM_NAMES.items()}


def vmm_name(gdb_name: str) -> str:
    """The VMM interface's name for an x86-64 gdb register (only ``eflags`` differs)."""
    return _VMM_NAMES.get(gdb_name, gdb_name)


def gdb_name(name: str) -> str:
    """The x86-64 gdb name for a VMM register name (inverse of ``vmm_name``)."""
    return _GDB_NAMES.get(name, name)


# (gdb name, bytes, gdb type, VMM name or None for the same name, partial)
_Spec = tuple[str, int, str, str | None, bool]


class RegisterLayout:
    """One target description and its register table: lookups, the ``g``/``G``/``p``/
    ``P`` encodings, the expedited registers of stop replies and the XML annex."""

    def __init__(self, arch: str, document: str, spec: Iterable[_Spec],
                 expedited: tuple[str, ...]):
        self.arch = arch  # the <architecture> of the document
        self.document = document  # resource file under stub/rsp/
        regs, offset = [], 0
        for regnum, (name, size, typ, vmm, partial) in enumerate(spec):
            regs.append(RegisterDef(regnum, name, size, typ, offset,
                                    vmm or vmm_name(name), partial))
            offset += size
        self.registers: tuple[RegisterDef, ...] = tuple(regs)
        self.g_size = offset  # the full g/G block
        self._by_name = {r.name: r for r in regs}
        self._by_name.update({r.vmm: r for r in regs})
        #: Sent with every stop reply so gdb need not fetch them: frame pointer, stack
        #: pointer, program counter.
        self.expedited: tuple[RegisterDef, ...] = tuple(self._by_name[n] for n in expedited)
        self.expedited_regnums = tuple(r.regnum for r in self.expedited)
        self.vmm_names = vmm_names(self.registers)  # what to read for a ``g``
        self.expedited_vmm_names = vmm_names(self.expedited)  # what the runtime reads
        #: Addresses gdb can name in this layout: below 2**(bits of the program
        #: counter), so an i386 session's ranges may not wrap past 2**32.
        self.address_limit = 1 << (8 * self._by_name["rip"].size)

    def __repr__(self) -> str:
        return f"<RegisterLayout {self.arch}: {len(self.registers)} registers>"

    # ---------------------------------------------------------------- lookups
    def by_name(self, name: str) -> RegisterDef:
        """Look up by gdb or VMM name (``eflags``/``rflags``, ``eax``/``rax``); KeyError."""
        return self._by_name[name]

    def by_number(self, regnum: int) -> RegisterDef:
        """Look up by remote register number; KeyError when out of range."""
        if not 0 <= regnum < len(self.registers):
            raise KeyError(regnum)
        return self.registers[regnum]

    # --------------------------------------------------------------- encoding
    @staticmethod
    def _to_bytes(reg: RegisterDef, value: int) -> bytes:
        if reg.partial and value >= 0:
            value &= reg.mask
        if not 0 <= value <= reg.mask:
            raise ValueError(f"{reg.name}: value {value:#x} does not fit in {reg.size} bytes")
        return value.to_bytes(reg.size, "little")

    def encode_register(self, name: str, value: int) -> bytes:
        """One register in target byte order (``p`` reply before hex encoding); a
        partial register takes the low bytes of the VMM's value."""
        return self._to_bytes(self.by_name(name), value)

    def decode_register(self, name: str, data: bytes) -> int:
        """Inverse of ``encode_register``; the size must match exactly (ValueError).
        For a partial register this is the low bytes only: see ``merge``."""
        reg = self.by_name(name)
        if len(data) != reg.size:
            raise ValueError(f"{reg.name} is {reg.size} bytes, got {len(data)}")
        return int.from_bytes(data, "little")

    def encode_g(self, values: Mapping[str, int]) -> bytes:
        """The ``g`` block: every register in order, keyed by VMM name (KeyError names
        the first missing one; ValueError for a value that does not fit)."""
        return b"".join(self._to_bytes(r, values[r.vmm]) for r in self.registers)

    def decode_g(self, data: bytes) -> dict[str, int]:
        """The ``G`` block -> {VMM name: value on the wire}. A shorter block covering a
        prefix of the registers is accepted (only those are returned); a block that
        ends inside a register or is longer than ``g_size`` raises ValueError."""
        if len(data) > self.g_size:
            raise ValueError(f"G block of {len(data)} bytes exceeds {self.g_size}")
        out: dict[str, int] = {}
        for r in self.registers:
            if r.offset >= len(data):
                break
            end = r.offset + r.size
            if end > len(data):
                raise ValueError(f"G block ends inside {r.name}")
            out[r.vmm] = int.from_bytes(data[r.offset : end], "little")
        return out

    def partial_names(self, values: Iterable[str]) -> tuple[str, ...]:
        """The VMM names among ``values`` whose write must be merged (``merge``)."""
        return tuple(n for n in values if self._by_name[n].partial)

    def merge(self, values: Mapping[str, int], current: Mapping[str, int]) -> dict[str, int]:
        """Writes from gdb (VMM names, wire values) -> the values to give the VMM: a
        partial register replaces the low bytes of ``current[name]`` and keeps the
        rest; the others are written as they are."""
        out = dict(values)
        for name in self.partial_names(values):
            mask = self._by_name[name].mask
            out[name] = (current[name] & ~mask) | (values[name] & mask)
        return out

    def expedited_registers(self, values: Mapping[str, int]) -> dict[int, bytes]:
        """{regnum: bytes} of the expedited registers for ``packets.stop_reply``, from
        VMM-named values."""
        return {r.regnum: self._to_bytes(r, values[r.vmm]) for r in self.expedited}

    # ------------------------------------------------------------ the document
    def target_xml(self) -> bytes:
        """The target description served for ``qXfer:features:read:target.xml``."""
        return _document(self.document)

    def feature_document(self, annex: str) -> bytes | None:
        """The document for a qXfer:features annex, or None if there is no such annex.
        Whatever the layout's file is called, gdb asks for ``target.xml``."""
        return self.target_xml() if annex in FEATURE_DOCUMENTS else None


@functools.cache
def _document(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def vmm_names(regs: Iterable[RegisterDef] | None = None) -> tuple[str, ...]:
    """VMM names of ``regs`` (default: the x86-64 layout's) in order: what to read
    from a vCPU to build a ``g``."""
    return tuple(r.vmm for r in (X86_64.registers if regs is None else regs))


def _x87_sse(xmm: int) -> list[_Spec]:
    spec: list[_Spec] = [(f"st{i}", 10, "i387_ext", None, False) for i in range(8)]
    spec += [(n, 4, "int", None, False)
             for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
    spec += [(f"xmm{i}", 16, "vec128", None, False) for i in range(xmm)]
    spec += [("mxcsr", 4, "i386_mxcsr", None, False)]
    return spec


def _x86_64() -> list[_Spec]:
    spec: list[_Spec] = []
    spec += [(n, 8, "int64", None, False) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi")]
    spec += [("rbp", 8, "data_ptr", None, False), ("rsp", 8, "data_ptr", None, False)]
    spec += [(f"r{i}", 8, "int64", None, False) for i in range(8, 16)]
    spec += [("rip", 8, "code_ptr", None, False), ("eflags", 4, "i386_eflags", None, False)]
    spec += [(n, 4, "int32", None, False) for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    spec += [(n, 8, "int64", None, False) for n in ("fs_base", "gs_base", "k_gs_base")]
    spec += [
        ("cr0", 8, "i386_cr0", None, False),
        ("cr2", 8, "int64", None, False),
        ("cr3", 8, "i386_cr3", None, False),
        ("cr4", 8, "i386_cr4", None, False),
        ("cr8", 8, "int64", None, False),
        ("efer", 8, "i386_efer", None, False),
    ]
    return spec + _x87_sse(16)


def _i386() -> list[_Spec]:
    """QEMU's i386-32bit.xml order (gdb's i386 numbering for eax..gs: ecx before ebx)."""
    def low(name: str, typ: str, vmm: str) -> _Spec:
        return (name, 4, typ, vmm, True)

    spec: list[_Spec] = [
        low("eax", "int32", "rax"),
        low("ecx", "int32", "rcx"),
        low("edx", "int32", "rdx"),
        low("ebx", "int32", "rbx"),
        low("esp", "data_ptr", "rsp"),
        low("ebp", "data_ptr", "rbp"),
        low("esi", "int32", "rsi"),
        low("edi", "int32", "rdi"),
        low("eip", "code_ptr", "rip"),
        ("eflags", 4, "i386_eflags", "rflags", False),
    ]
    spec += [(n, 4, "int32", None, False) for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    spec += [low(n, "int32", n) for n in ("fs_base", "gs_base", "k_gs_base")]
    spec += [
        low("cr0", "i386_cr0", "cr0"),
        low("cr2", "int32", "cr2"),
        low("cr3", "i386_cr3", "cr3"),
        low("cr4", "i386_cr4", "cr4"),
        low("cr8", "int32", "cr8"),
        low("efer", "i386_efer", "efer"),
    ]
    return spec + _x87_sse(8)


X86_64 = RegisterLayout("i386:x86-64", "target.xml", _x86_64(), ("rbp", "rsp", "rip"))
I386 = RegisterLayout("i386", "target-i386.xml", _i386(), ("ebp", "esp", "eip"))

#: The layouts by the architecture name their documents declare (and ``vm.boot.arch``).
LAYOUTS: dict[str, RegisterLayout] = {layout.arch: layout for layout in (X86_64, I386)}
DEFAULT_LAYOUT = X86_64


def layout_for(arch: object) -> RegisterLayout:
    """The layout for a gdb architecture name (``"i386"``, ``"i386:x86-64"``);
    ValueError for any other name or any other object (a VM's boot information is
    duck-typed)."""
    if isinstance(arch, str) and arch in LAYOUTS:
        return LAYOUTS[arch]
    raise ValueError(f"no register layout for architecture {arch!r}")


#: Annexes served by qXfer:features:read (every layout serves its own as target.xml).
FEATURE_DOCUMENTS = ("target.xml",)

# The x86-64 layout under the names this module had before there were two.
REGISTERS: tuple[RegisterDef, ...] = X86_64.registers
G_SIZE = X86_64.g_size  # 608 bytes
EXPEDITED: tuple[RegisterDef, ...] = X86_64.expedited  # rbp, rsp, rip
EXPEDITED_REGNUMS: tuple[int, ...] = X86_64.expedited_regnums
by_name = X86_64.by_name
by_number = X86_64.by_number
encode_register = X86_64.encode_register
decode_register = X86_64.decode_register
encode_g = X86_64.encode_g
decode_g = X86_64.decode_g
expedited_registers = X86_64.expedited_registers
target_xml = X86_64.target_xml
feature_document = X86_64.feature_document
