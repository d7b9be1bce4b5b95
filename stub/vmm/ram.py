"""Guest RAM: one host buffer that every vCPU's Unicorn instance maps at GPA 0.

An anonymous ``mmap`` gives page-aligned, zero-filled memory whose address ctypes can
hand to ``uc.mem_map_ptr``; a ``memoryview`` over it is the fast path for Python-side
reads and writes (loader, page walks, event frames, debugger accesses).
"""

from __future__ import annotations

import ctypes
import mmap
import struct

from stub.vmm.api import MemoryFault

PAGE = 0x1000
_U64 = struct.Struct("<Q")


class GuestRam:
    """Guest-physical memory ``[0, size)``. Accesses outside raise MemoryFault."""

    def __init__(self, size: int):
        if size < 2 << 20 or size % PAGE:
            raise ValueError(f"guest RAM must be a multiple of 4 KiB and >= 2 MiB, not {size}")
        self.size = size
        self._map = mmap.mmap(-1, size)
        # The ctypes view pins the mapping (it cannot be closed or resized under Unicorn).
        self._anchor = ctypes.c_char.from_buffer(self._map)
        self.address = ctypes.addressof(self._anchor)
        self.view = memoryview(self._map)

    def check(self, gpa: int, size: int) -> None:
        if gpa < 0 or size < 0:
            raise MemoryFault(gpa)
        if gpa + size > self.size:
            raise MemoryFault(max(gpa, self.size))

    def read(self, gpa: int, size: int) -> bytes:
        self.check(gpa, size)
        return bytes(self.view[gpa:gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        self.check(gpa, len(data))
        self.view[gpa:gpa + len(data)] = data

    def read_u64(self, gpa: int) -> int:
        self.check(gpa, 8)
        return _U64.unpack_from(self.view, gpa)[0]

    def write_u64(self, gpa: int, value: int) -> None:
        self.check(gpa, 8)
        _U64.pack_into(self.view, gpa, value)

    def zero(self, gpa: int, size: int) -> None:
        self.check(gpa, size)
        self.view[gpa:gpa + size] = bytes(size)
