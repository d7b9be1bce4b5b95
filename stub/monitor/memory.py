"""Guest memory and mappings: ``info mem``, ``info tlb``, ``xp`` and ``gva2gpa``, in
QEMU's output shapes (target/i386/monitor.c, monitor/hmp-cmds.c) so that scripts
written for QEMU's monitor read ours."""

from __future__ import annotations

import re
import string

import capstone

from stub import pagetables as pt
from stub.monitor.common import Context, MonitorError, parse_number
from stub.vmm.api import TranslationFault

PAGING_REGS = ("cr0", "cr3", "cr4", "efer")
MAX_XP_BYTES = 16 << 10  # one reply: the output must fit a packet
MAX_INSN = 15
MASK64 = (1 << 64) - 1  # a range up to the top of memory ends at 0
SPLIT = 8  # instruction bytes on an xp /i line, as QEMU prints them


def _mappings(ctx: Context) -> list[pt.Mapping] | None:
    regs = ctx.registers(PAGING_REGS)
    cr0, cr3, cr4, efer = (regs.get(name, 0) for name in PAGING_REGS)
    if pt.paging_mode(cr0, cr4, efer) is pt.PagingMode.NONE:
        return None
    try:
        return list(pt.mappings(ctx.read_phys_or_none, cr0, cr3, cr4, efer))
    except pt.PagingUnsupported as err:
        raise MonitorError(str(err)) from None


def info_mem(ctx: Context, args: list[str]) -> str:
    """Merged ranges: ``start-end size urw`` (QEMU prints ``r`` always: x86 pages are
    always readable)."""
    maps = _mappings(ctx)
    if maps is None:
        return "PG disabled\n"
    return "".join(f"{r.start:016x}-{r.end & MASK64:016x} {r.size:016x} "
                   f"{'u' if r.user else '-'}r{'w' if r.writable else '-'}\n"
                   for r in pt.merge(maps)) or "no mappings\n"


def info_tlb(ctx: Context, args: list[str]) -> str:
    """Every leaf: ``VA: PA`` and the leaf entry's flags as QEMU prints them:
    X (NX) G (global) P (PS: a large page) D A C (PCD) T (PWT) U W."""
    maps = _mappings(ctx)
    if maps is None:
        return "PG disabled\n"
    return "".join(f"{m.va:016x}: {m.pa:016x} {_tlb_flags(m)}\n" for m in maps) \
        or "no mappings\n"


def _tlb_flags(m: pt.Mapping) -> str:
    e = m.entry
    large = m.size > pt.PAGE  # in a 4 KiB PTE, bit 7 is PAT, not PS: QEMU drops it
    bits = ((pt.NX, "X"), (pt.G, "G"), (pt.PS if large else 0, "P"), (pt.D, "D"),
            (pt.A, "A"), (pt.PCD, "C"), (pt.PWT, "T"), (pt.US, "U"), (pt.RW, "W"))
    return "".join(c if e & bit else "-" for bit, c in bits)


def gva2gpa(ctx: Context, args: list[str]) -> str:
    if len(args) != 1:
        raise MonitorError("usage: gva2gpa ADDR")
    gva = parse_number(ctx, args[0])
    try:
        return f"gpa: {ctx.rt.translate(ctx.vcpu, gva):#x}\n"
    except TranslationFault as err:
        return f"Unmapped ({err.reason})\n"


# ------------------------------------------------------------------------------ xp
_FMT = re.compile(r"/(\d*)([a-z]*)\Z")
_SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}
_FORMATS = "xduoci"


def parse_format(fmt: str) -> tuple[int, str, int]:
    """QEMU's ``/[count][format][size]``, letters in either order: (count, format,
    size). Defaults as QEMU's first use: 1, ``x``, 4 bytes; ``c`` reads bytes."""
    m = _FMT.match(fmt)
    if not m:
        raise MonitorError(f"bad format {fmt!r}: /[count][x|d|u|o|c|i][b|h|w|g]")
    count = int(m.group(1)) if m.group(1) else 1
    form, size = "x", 4
    for letter in m.group(2):
        if letter in _SIZES:
            size = _SIZES[letter]
        elif letter in _FORMATS:
            form = letter
        else:
            raise MonitorError(f"bad format letter {letter!r} in {fmt!r}")
    if form == "c":
        size = 1
    if count < 1:
        raise MonitorError("the count must be at least 1")
    return count, form, size


def xp(ctx: Context, args: list[str]) -> str:
    """``xp /FMT ADDR``: guest-physical memory (breakpoints read as the guest's bytes)."""
    if args and args[0].startswith("/") and len(args) >= 2:
        fmt, rest = args[0], args[1:]
    elif args and not args[0].startswith("/"):
        fmt, rest = "/", args
    else:
        raise MonitorError("usage: xp /FMT ADDR (for example xp /4xg 0x1000)")
    count, form, size = parse_format(fmt)
    addr = parse_number(ctx, " ".join(rest))
    if form == "i":
        return _disassemble(ctx, addr, count)
    length = count * size
    if length > MAX_XP_BYTES:
        raise MonitorError(f"at most {MAX_XP_BYTES} bytes at a time")
    data = ctx.rt.read_physical(addr, length)
    if len(data) < length:
        raise MonitorError(f"no guest RAM at physical {addr + len(data):#x}")
    per_line = 8 if size == 1 else 16
    lines = []
    for off in range(0, length, per_line):
        chunk = data[off:off + per_line]
        values = [int.from_bytes(chunk[i:i + size], "little")
                  for i in range(0, len(chunk), size)]
        lines.append(f"{addr + off:016x}:" + "".join(" " + _value(v, form, size)
                                                     for v in values))
    return "\n".join(lines) + "\n"


def _value(v: int, form: str, size: int) -> str:
    bits = size * 8
    if form == "x":
        return f"0x{v:0{bits // 4}x}"
    if form == "o":
        return f"{'0' + format(v, 'o') if v else '0':>{-(-bits // 3)}}"
    if form == "c":
        return _char(v)
    digits = -(-bits * 10 // 33)
    if form == "d" and v >= 1 << (bits - 1):
        v -= 1 << bits
    return f"{v:{digits}d}"


def _char(v: int) -> str:
    c = chr(v)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", "'": "\\'"}
    if c in named:
        return f"'{named[c]}'"
    if c in string.printable and c not in "\x0b\x0c":
        return f"'{c}'"
    return f"'\\x{v:02x}'"


def _disassemble(ctx: Context, addr: int, count: int) -> str:
    """``count`` instructions from physical ``addr``, in the selected vCPU's mode
    (EFER.LMA: 64-bit; CR0.PE: 32-bit; else 16-bit: the VMM exposes no CS.L/CS.D)."""
    if count > 1024:
        raise MonitorError("at most 1024 instructions at a time")
    regs = ctx.registers(("cr0", "efer"))
    mode = (capstone.CS_MODE_64 if regs.get("efer", 0) & pt.EFER_LMA else
            capstone.CS_MODE_32 if regs.get("cr0", 0) & 1 else capstone.CS_MODE_16)
    data = _read_available(ctx, addr, count * MAX_INSN)
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    md.syntax = capstone.CS_OPT_SYNTAX_ATT  # QEMU's (and gdb's) default
    lines: list[str] = []
    end, decoded = addr, 0
    for insn in md.disasm(data, addr, count):
        lines += _insn_lines(insn)
        end, decoded = insn.address + insn.size, decoded + 1
    if decoded < count:
        lines.append(f"0x{end:08x}:  (cannot decode"
                     f"{' beyond RAM' if end >= addr + len(data) else ''})")
    return "\n".join(lines) + "\n"


def _insn_lines(insn) -> list[str]:
    """QEMU's capstone layout: 8 bytes, the mnemonic padded to 8, then the operands;
    the bytes of a longer instruction continue on lines of their own."""
    code = bytes(insn.bytes)
    first = "".join(f" {b:02x}" for b in code[:SPLIT])
    lines = [f"0x{insn.address:08x}: {first:<{3 * SPLIT}}  {insn.mnemonic:<8} {insn.op_str}"
             .rstrip()]
    for at in range(SPLIT, len(code), SPLIT):
        rest = "".join(f" {b:02x}" for b in code[at:at + SPLIT])
        lines.append(f"0x{insn.address + at:08x}: {rest}")
    return lines


def _read_available(ctx: Context, addr: int, size: int) -> bytes:
    """As many of the bytes as RAM holds (an instruction near its end still decodes)."""
    while size > 0:
        data = ctx.read_phys_or_none(addr, size)
        if data is not None:
            return data
        size //= 2
    raise MonitorError(f"physical address {addr:#x} is outside guest RAM")
