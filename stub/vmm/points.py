"""The debugger's armed points, VM-wide (docs/debug-points.md): VA breakpoints
(``sw_va``, ``hw``: a fetch at a virtual address) and watchpoints (``write``,
``read``, ``access``: guest-physical byte ranges, resolved through the inserting
vCPU's page tables when armed).

Any thread arms and disarms; each vCPU applies the set to its own Unicorn instance on
its own thread (``PointHooks.sync``) when its mailbox says the set changed, so no
thread touches another's Unicorn. ``generation`` counts the changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from model.points import ACCESS, READ, WATCH_KINDS, WRITE, Point

PAGE = 0x1000
# Which watch kinds an access of each direction matches.
_MATCHES = {True: frozenset({WRITE, ACCESS}), False: frozenset({READ, ACCESS})}


@dataclass(frozen=True)
class Armed:
    """One consistent view of the set (immutable: a vCPU keeps it between syncs)."""

    generation: int
    breaks: frozenset[int]  # virtual addresses of sw_va / hw points
    break_points: tuple[tuple[int, Point], ...]
    watches: tuple[tuple[Point, tuple[tuple[int, int], ...]], ...]  # GPA [start, end)

    def break_at(self, gva: int) -> Point | None:
        for addr, point in self.break_points:
            if addr == gva:
                return point
        return None

    def watch_hit(self, gpa: int, size: int, write: bool) -> Point | None:
        """The armed watchpoint an access of ``size`` bytes at ``gpa`` trips, if any."""
        kinds = _MATCHES[write]
        end = gpa + size
        for point, ranges in self.watches:
            if point.kind in kinds and any(s < end and gpa < e for s, e in ranges):
                return point
        return None

    def page_perms(self) -> dict[int, tuple[bool, bool]]:
        """page GPA -> (reads watched, writes watched)."""
        pages: dict[int, tuple[bool, bool]] = {}
        for point, ranges in self.watches:
            for start, end in ranges:
                for page in range(start & ~(PAGE - 1), end, PAGE):
                    reads, writes = pages.get(page, (False, False))
                    pages[page] = (reads or point.kind in _MATCHES[False],
                                   writes or point.kind in _MATCHES[True])
        return pages


EMPTY = Armed(0, frozenset(), (), ())


class ArmedPoints:
    """Thread-safe. ``on_change`` is called (no lock held) after every change."""

    def __init__(self, on_change):
        self._lock = threading.Lock()
        self._breaks: dict[Point, None] = {}
        self._watches: dict[Point, tuple[tuple[int, int], ...]] = {}
        self._on_change = on_change
        self.armed = EMPTY

    def arm_break(self, point: Point) -> None:
        with self._lock:
            if point in self._breaks:
                return
            self._breaks[point] = None
            self._publish()
        self._on_change()

    def arm_watch(self, point: Point, ranges: tuple[tuple[int, int], ...]) -> None:
        if point.kind not in WATCH_KINDS:
            raise ValueError(f"{point.kind!r} is not a watchpoint kind")
        with self._lock:
            if point in self._watches:
                return
            self._watches[point] = ranges
            self._publish()
        self._on_change()

    def disarm(self, point: Point) -> None:
        with self._lock:
            if self._breaks.pop(point, 0) == 0 and self._watches.pop(point, None) is None:
                return
            self._publish()
        self._on_change()

    def _publish(self) -> None:
        self.armed = Armed(self.armed.generation + 1,
                           frozenset(p.addr for p in self._breaks),
                           tuple((p.addr, p) for p in self._breaks),
                           tuple(self._watches.items()))
