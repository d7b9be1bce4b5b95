"""What gdb can insert: breakpoints and watchpoints, as one hashable key.

See docs/debug-points.md for the semantics of each kind. ``sw`` is an int3 patched at a
guest-physical address (``addr`` is the GPA); every other kind is matched by the VMM
without touching guest memory, and its ``addr`` is gdb's virtual address.
"""

from __future__ import annotations

from dataclasses import dataclass

SW = "sw"          # Z0 at a mapped address: int3 at the GPA
SW_VA = "sw_va"    # Z0 at an address the vCPU does not map: a fetch at the VA
HW = "hw"          # Z1: a fetch at the VA
WRITE = "write"    # Z2
READ = "read"      # Z3
ACCESS = "access"  # Z4

BREAK_KINDS = frozenset({SW, SW_VA, HW})
WATCH_KINDS = frozenset({WRITE, READ, ACCESS})
VA_KINDS = frozenset({SW_VA, HW}) | WATCH_KINDS  # what the VMM arms (not patched)
WATCH_LENGTHS = frozenset({1, 2, 4, 8})

# The stop reply's reason for a hit of each kind (gdb's T packet "watch:ADDR;" etc.).
REASON = {SW: "swbreak", SW_VA: "swbreak", HW: "hwbreak",
          WRITE: "watch", READ: "rwatch", ACCESS: "awatch"}


@dataclass(frozen=True, order=True)
class Point:
    kind: str
    addr: int
    length: int = 1

    @property
    def is_watch(self) -> bool:
        return self.kind in WATCH_KINDS

    @property
    def reason(self) -> str:
        return REASON[self.kind]
