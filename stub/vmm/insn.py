"""The little instruction decoding the VMM needs, from raw bytes (no disassembler on
the hot path): what SVM's PUSHF/POPF intercepts would catch, hlt and pause (which
Unicorn's trap flag gets wrong), and whether the last instruction opened an interrupt
shadow."""

from __future__ import annotations

from collections.abc import Callable

PUSHF, POPF, HLT, IRET, NOP = 0x9C, 0x9D, 0xF4, 0xCF, 0x90
REP = 0xF3
STI = 0xFB
MOV_SREG = 0x8E
_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65})
_NAMES = {PUSHF: "pushf", POPF: "popf", HLT: "hlt", IRET: "iret"}
MAX_INSN = 15


def classify(code: bytes, long_mode: bool = True) -> tuple[str | None, int]:
    """(``"pushf"``/``"popf"``/``"hlt"``/``"iret"``/``"pause"``/None, operand size in
    bytes).

    In 64-bit mode pushf/popf default to 8 bytes (4 in 32-bit code); a 0x66 prefix
    makes them 2 (pushfw); REX.W changes nothing. ``pause`` is ``rep nop``; with REX.B
    the 0x90 is ``xchg r8, rax`` instead. Outside long mode 0x40-0x4F are ``inc``/``dec``,
    not prefixes (``dec eax; pushf`` must not read as a pushf)."""
    size, i, rep, rex_b = (8 if long_mode else 4), 0, False, False
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        if code[i] == 0x66:
            size = 2
        rep = rep or code[i] == REP
        i += 1
    if long_mode and i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex_b = bool(code[i] & 1)
        i += 1
    if i >= len(code):
        return None, size
    if code[i] == NOP:
        return ("pause" if rep and not rex_b else None), size
    return _NAMES.get(code[i]), size


_STRING_OPS = frozenset({0x6C, 0x6D, 0x6E, 0x6F, *range(0xA4, 0xA8), *range(0xAA, 0xB0)})


def rep_count_width(code: bytes, long_mode: bool = True) -> int | None:
    """For a ``rep``/``repe``/``repne`` string instruction, the width in bits of its
    count register (64: RCX, 32: ECX under a 0x67 prefix; outside long mode 32: ECX,
    16: CX under 0x67); None for anything else."""
    rep, width, i = False, (64 if long_mode else 32), 0
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        rep = rep or code[i] in (0xF2, REP)
        if code[i] == 0x67:
            width = 32 if long_mode else 16
        i += 1
    if long_mode and i < len(code) and 0x40 <= code[i] <= 0x4F:
        i += 1
    return width if rep and i < len(code) and code[i] in _STRING_OPS else None


def after_shadow_opener(byte_at: Callable[[int], int | None], rip: int) -> bool:
    """Might the instruction just before ``rip`` be ``sti`` or ``mov ss, r16``?

    Both block interrupts until the next instruction has run. Decoding backwards is
    ambiguous, so this says yes whenever the bytes fit; a false yes only delays an
    interrupt by one instruction."""
    last = byte_at(rip - 1)
    if last == STI:
        return True
    # mov ss, r16 is 8E /2 with a register operand: ModRM 0xD0-0xD7.
    return last is not None and (last & 0xF8) == 0xD0 and byte_at(rip - 2) == MOV_SREG
