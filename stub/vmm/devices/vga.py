"""The VGA text screen: 80x25 character cells at 0xB8000 in guest RAM (this machine's
RAM is flat, so the text buffer is ordinary memory the guest writes), and the CRT
controller's index/data ports (0x3D4/0x3D5), stored and read back so a guest can move
its cursor.

``render(read_phys)`` turns the 4,000 bytes (character, attribute per cell) into 25
lines of text, trailing spaces trimmed. Characters are code page 437, the VGA's font:
printable ASCII as is, NUL and 0xFF (blank glyphs) as spaces, the rest as the Unicode
characters CP437 draws for them (box drawing, accented letters, the control-range
symbols ☺ ♥ ...), or as '.' with ``ascii_only``. Attributes (colours, blink) are
dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stub.vmm.bus import PortDevice, Requester

TEXT_BASE = 0xB8000
COLUMNS, ROWS = 80, 25
CRTC_INDEX, CRTC_DATA = 0x3D4, 0x3D5
CRTC_REGISTERS = 0x19  # 0x00-0x18 on the VGA
CURSOR_HIGH, CURSOR_LOW = 0x0E, 0x0F

# CP437's glyphs for 0x01-0x1F and 0x7F (Python's cp437 codec gives control codes).
_LOW = "☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"
_GLYPHS = (" " + _LOW + bytes(range(0x20, 0x7F)).decode() + "⌂"
           + bytes(range(0x80, 0xFF)).decode("cp437") + " ")
_ASCII = "".join(g if " " <= g <= "~" else "." for g in _GLYPHS)


def render(read_phys: Callable[[int, int], bytes], ascii_only: bool = False) -> str:
    """The screen as text: 25 lines joined by newlines, each without trailing spaces."""
    cells = read_phys(TEXT_BASE, COLUMNS * ROWS * 2)
    glyphs = _ASCII if ascii_only else _GLYPHS
    text = "".join(glyphs[b] for b in cells[::2])
    return "\n".join(text[row * COLUMNS:(row + 1) * COLUMNS].rstrip(" ") for row in range(ROWS))


class Crtc(PortDevice):
    """CRT controller registers behind 0x3D4 (index) and 0x3D5 (data). A 16-bit write
    to 0x3D4 is index then data (``outw(0x3D4, 0x0E | hi << 8)``, as kernels do)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # vCPU threads
        self._index = 0
        self._regs = bytearray(CRTC_REGISTERS)

    def reset(self) -> None:
        with self._lock:
            self._index = 0
            self._regs = bytearray(CRTC_REGISTERS)

    @property
    def cursor(self) -> int:
        """The cursor's cell offset (row * 80 + column)."""
        with self._lock:
            return self._regs[CURSOR_HIGH] << 8 | self._regs[CURSOR_LOW]

    def io_out(self, port: int, size: int, value: int, cpu: Requester) -> None:
        with self._lock:
            if port == CRTC_INDEX:
                self._index = value & 0xFF
                if size == 1:
                    return
                value >>= 8
            if self._index < CRTC_REGISTERS:  # other indexes select nothing
                self._regs[self._index] = value & 0xFF

    def io_in(self, port: int, size: int, cpu: Requester) -> int:
        with self._lock:
            if port == CRTC_INDEX:
                return self._index
            return self._regs[self._index] if self._index < CRTC_REGISTERS else 0xFF
