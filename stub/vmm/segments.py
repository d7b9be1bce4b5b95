"""Loading CS and SS with their hidden descriptor caches and the CPL, from Python.

Unicorn's register API cannot change privilege: in ``UC_MODE_64`` a write of CS or SS
sets the selector only, and the CPL (QEMU keeps it in ``env->hflags``, set from SS's
DPL when SS is loaded) never moves. The guest's own ``iretq``/``sysretq``/far jumps do
all of it natively. For what the VMM emulates (an event delivered from CPL 3, an
emulated ``syscall``) this module patches the CPU state Unicorn saves with
``uc_context_save``, a copy of QEMU's ``CPUX86State``, and restores it: the CS and SS
``SegmentCache`` (selector, base, limit, flags) and the hflags bits QEMU's
``cpu_x86_load_seg_cache`` derives from them (CPL, CS32, SS32, CS64, ADDSEG).

The layout is Unicorn 2.1's (QEMU 5.0): after the context header, ``regs[16]``,
``eip``, ``eflags``, ``cc_dst``, ``cc_src``, ``cc_src2``, ``cc_op``, ``df``, ``hflags``,
``hflags2``, then ``segs[6]`` (ES, CS, SS, DS, FS, GS; 24 bytes each). ``check_layout``
proves every offset used here on a scratch instance, once per process, by letting the
CPU itself ``mov ss`` and ``iretq`` to CPL 3 and reading the blob; another layout makes
it raise ``VmmError`` instead of corrupting a vCPU.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from stub.vmm.api import VmmError

# Offsets in the context blob (the header, then CPUX86State).
DATA = 40  # where CPUX86State starts: regs[0] (RAX)
EIP = DATA + 128
HFLAGS = DATA + 176
SEGS = DATA + 184
SEG_SIZE = 24  # u32 selector, (pad), u64 base, u32 limit, u32 flags
R_ES, R_CS, R_SS = 0, 1, 2
R_DS, R_FS, R_GS = 3, 4, 5

# hflags bits (QEMU target/i386/cpu.h)
HF_CPL_MASK = 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_VM = 1 << 17

# Descriptor flags: the descriptor's whole high dword, as QEMU caches it
DESC_A = 1 << 8
DESC_W = 1 << 9  # data: writable; code: readable
DESC_CS = 1 << 11  # code segment
DESC_S = 1 << 12  # code or data, not system
DESC_DPL_SHIFT = 13
DESC_P = 1 << 15
DESC_L = 1 << 21
DESC_B = 1 << 22
DESC_G = 1 << 23


class SegmentError(VmmError):
    """A selector the hardware would refuse (the caller turns it into #GP/#TS/#SS or a
    failed delivery)."""


@dataclass(frozen=True)
class Segment:
    """A segment register with its hidden part, in QEMU's SegmentCache form."""

    selector: int
    base: int
    limit: int
    flags: int

    @property
    def dpl(self) -> int:
        return self.flags >> DESC_DPL_SHIFT & 3

    @classmethod
    def from_descriptor(cls, selector: int, raw: int) -> Segment:
        lo, hi = raw & 0xFFFF_FFFF, raw >> 32
        base = lo >> 16 | (hi & 0xFF) << 16 | hi & 0xFF00_0000
        limit = lo & 0xFFFF | hi & 0x000F_0000
        if hi & DESC_G:
            limit = limit << 12 | 0xFFF
        return cls(selector, base, limit, hi | DESC_A)  # QEMU caches the whole dword


def null_stack(cpl: int) -> Segment:
    """The null SS a 64-bit interrupt or syscall loads at CPL < 3 (QEMU: selector =
    the CPL, flags = DPL only)."""
    return Segment(cpl, 0, 0, cpl << DESC_DPL_SHIFT)


def flat_code64(selector: int) -> Segment:
    """What ``syscall`` loads into CS without reading the GDT (STAR[47:32])."""
    return Segment(selector & 0xFFFC, 0, 0xFFFF_FFFF,
                   DESC_G | DESC_P | DESC_S | DESC_CS | DESC_W | DESC_A | DESC_L)


def flat_stack(selector: int) -> Segment:
    """What ``syscall`` loads into SS (STAR[47:32] + 8), DPL 0."""
    return Segment(selector & 0xFFFC, 0, 0xFFFF_FFFF,
                   DESC_G | DESC_B | DESC_P | DESC_S | DESC_W | DESC_A)


def check_code(seg: Segment, cpl: int, long_mode: bool) -> None:
    """A non-conforming code segment for CPL ``cpl`` (64-bit in long mode)."""
    if seg.selector & ~3 == 0:
        raise SegmentError("null code segment")
    if not seg.flags & DESC_S or not seg.flags & DESC_CS:
        raise SegmentError(f"selector {seg.selector:#x} is not a code segment")
    if not seg.flags & DESC_P:
        raise SegmentError(f"code segment {seg.selector:#x} is not present")
    if seg.dpl != cpl:
        raise SegmentError(f"code segment {seg.selector:#x} has DPL {seg.dpl}, not {cpl}")
    if long_mode and not seg.flags & DESC_L:
        raise SegmentError(f"code segment {seg.selector:#x} is not 64-bit")


def check_stack(seg: Segment, cpl: int, long_mode: bool) -> None:
    """A writable data segment of DPL ``cpl`` (a null one at CPL < 3 in long mode)."""
    if seg.selector & ~3 == 0:
        if long_mode and cpl < 3:
            return
        raise SegmentError("null stack segment")
    if seg.selector & 3 != cpl:
        raise SegmentError(f"stack segment {seg.selector:#x} has RPL {seg.selector & 3}, "
                           f"not {cpl}")
    if not seg.flags & DESC_S or seg.flags & DESC_CS or not seg.flags & DESC_W:
        raise SegmentError(f"selector {seg.selector:#x} is not a writable data segment")
    if not seg.flags & DESC_P:
        raise SegmentError(f"stack segment {seg.selector:#x} is not present")
    if seg.dpl != cpl:
        raise SegmentError(f"stack segment {seg.selector:#x} has DPL {seg.dpl}, not {cpl}")


# -- the blob -------------------------------------------------------------------------------
def _blob(ctx) -> bytearray:
    return bytearray(ctypes.string_at(ctx.context, ctx.size))


def _seg(blob: bytes, index: int) -> Segment:
    off = SEGS + index * SEG_SIZE
    selector, base, limit, flags = struct.unpack_from("<I4xQII", blob, off)
    return Segment(selector, base, limit, flags)


def _set_seg(blob: bytearray, index: int, seg: Segment) -> None:
    struct.pack_into("<I4xQII", blob, SEGS + index * SEG_SIZE, seg.selector, seg.base,
                     seg.limit, seg.flags)


def hflags_after(hflags: int, cs: Segment, ss: Segment, ds_base: int, es_base: int,
                 cr0_pe: bool, eflags_vm: bool) -> int:
    """``cpu_x86_load_seg_cache``'s hflags for CS then SS loaded (QEMU 5.0)."""
    if hflags & HF_LMA and cs.flags & DESC_L:
        hflags |= HF_CS32 | HF_SS32 | HF_CS64
    else:
        hflags = hflags & ~(HF_CS32 | HF_CS64) | (HF_CS32 if cs.flags & DESC_B else 0)
    hflags = hflags & ~HF_CPL_MASK | ss.dpl
    new = HF_SS32 if ss.flags & DESC_B else 0
    if hflags & HF_CS64:
        pass  # no segment bases in 64-bit code
    elif not cr0_pe or eflags_vm or not hflags & HF_CS32:
        new |= HF_ADDSEG
    elif ds_base | es_base | ss.base:
        new |= HF_ADDSEG
    return hflags & ~(HF_SS32 | HF_ADDSEG) | new


def load(uc: Uc, cs: Segment, ss: Segment | None, ctx=None) -> None:
    """Load CS and SS with these caches (and the CPL from SS's DPL), as the hardware's
    far transfer would; SS None keeps the current one. Registers other than CS, SS and
    hflags are untouched. ``ctx``: a context of this instance to reuse (saves the
    allocation; it is overwritten)."""
    check_layout()
    if ctx is None:
        ctx = uc.context_save()
    else:
        uc.context_update(ctx)
    blob = (ctypes.c_char * ctx.size).from_address(ctx.context.value)  # patched in place
    (hflags,) = struct.unpack_from("<I", blob, HFLAGS)
    if ss is None:
        ss = _seg(blob, R_SS)
    _set_seg(blob, R_CS, cs)
    _set_seg(blob, R_SS, ss)
    ds_base = _seg(blob, 3).base
    es_base = _seg(blob, R_ES).base
    cr0_pe = bool(uc.reg_read(X.UC_X86_REG_CR0) & 1)
    vm = bool(uc.reg_read(X.UC_X86_REG_EFLAGS) & (1 << 17))
    struct.pack_into("<I", blob, HFLAGS,
                     hflags_after(hflags, cs, ss, ds_base, es_base, cr0_pe, vm))
    uc.context_restore(ctx)


def load_data(uc: Uc, caches: Mapping[int, Segment]) -> None:
    """Set the data segment caches ``caches`` (R_ES, R_DS, R_FS, R_GS: segment), as a
    load would, with no check and no hflags change: CS and SS go through ``load``, which
    derives hflags (ADDSEG from the DS/ES bases), so call this one first. Other registers
    are untouched."""
    check_layout()
    if not set(caches) <= {R_ES, R_DS, R_FS, R_GS}:
        raise ValueError(f"not data segment registers: {sorted(caches)}")
    ctx = uc.context_save()
    blob = (ctypes.c_char * ctx.size).from_address(ctx.context.value)  # patched in place
    for index, seg in caches.items():
        _set_seg(blob, index, seg)
    uc.context_restore(ctx)


def current(uc: Uc, index: int) -> Segment:
    """The cached segment register ``index`` (R_CS, R_SS, ...) as the CPU holds it."""
    check_layout()
    return _seg(_blob(uc.context_save()), index)


def cpl(uc: Uc) -> int:
    check_layout()
    return struct.unpack_from("<I", _blob(uc.context_save()), HFLAGS)[0] & HF_CPL_MASK


# -- the layout check ---------------------------------------------------------------------------
_PROBE_GDT = (0, 0, 0x00AF_9A00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_FB00_0000_FFFF,
              0x00CF_F300_0000_FFFF, 0x00AF_FB00_0000_FFFF)
# mov ax, 0x18; mov ss, ax; push 0x2b; push 0x9000; push 0x202; push 0x33;
# push 0x3000; iretq  (at 0x2000; the user code at 0x3000 is never run)
_PROBE_CODE = bytes.fromhex("66b81800" "8ed0" "6a2b" "6800900000" "6800020000" "6a33"
                            "6800300000" "48cf")
_PROBE_MARK = 0x1122_3344_5566_7788


@functools.cache
def _layout_error() -> str | None:
    """None when this Unicorn's context blob has the offsets above (proved by a native
    mov ss and iretq to CPL 3 on a scratch instance), else what differs."""
    try:
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, 0x10000)
        uc.mem_write(0x1000, b"".join(struct.pack("<Q", d) for d in _PROBE_GDT))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x1000, len(_PROBE_GDT) * 8 - 1, 0))
        uc.mem_write(0x2000, _PROBE_CODE)
        uc.reg_write(X.UC_X86_REG_RSP, 0x8000)
        uc.reg_write(X.UC_X86_REG_RBX, _PROBE_MARK)
        blob = _blob(uc.context_save())
        if len(blob) < SEGS + 6 * SEG_SIZE or \
                struct.unpack_from("<Q", blob, DATA + 3 * 8)[0] != _PROBE_MARK:
            return "RBX is not regs[3] at the expected offset"
        uc.emu_start(0x2000, 0, 0, 2)  # mov ax; mov ss: a CPL 0 stack from the GDT
        blob = _blob(uc.context_save())
        if _seg(blob, R_SS) != Segment(0x18, 0, 0xFFFF_FFFF, 0x00CF_9300):
            return f"SS after mov ss reads {_seg(blob, R_SS)}"
        uc.emu_start(uc.reg_read(X.UC_X86_REG_RIP), 0, 0, 6)  # the pushes and iretq
        blob = _blob(uc.context_save())
        if struct.unpack_from("<Q", blob, EIP)[0] != 0x3000:
            return "eip is not where it should be"
        if _seg(blob, R_CS) != Segment(0x33, 0, 0xFFFF_FFFF, 0x00AF_FB00):
            return f"CS after iretq reads {_seg(blob, R_CS)}"
        if _seg(blob, R_SS) != Segment(0x2B, 0, 0xFFFF_FFFF, 0x00CF_F300):
            return f"SS after iretq reads {_seg(blob, R_SS)}"
        (hflags,) = struct.unpack_from("<I", blob, HFLAGS)
        want = HF_CS64 | HF_LMA | HF_PE | HF_CS32 | HF_SS32 | 3
        if hflags & (want | HF_ADDSEG) != want:
            return f"hflags after iretq to CPL 3 are {hflags:#x}"
    except (UcError, struct.error) as err:
        return f"the probe failed: {err}"
    return None


def check_layout() -> None:
    """Raise VmmError unless the offsets this module patches are this Unicorn's."""
    error = _layout_error()
    if error is not None:
        raise VmmError("cannot change privilege level on this Unicorn: its saved CPU "
                       f"context does not have the QEMU 5.0 layout expected ({error})")
