"""What the stateful tests reach: ``python -m tests.stateful.coverage [EXAMPLES STEPS]``.

Runs the state machine of test_stub_machine.py for each personality with its settings
(derandomized) and prints counters: moves by kind and gdb state, stop replies by kind,
exits, and which transitions of the vCPU lifecycle (``model/lifecycle.py``) were taken, out
of those the personality can take. Not a test: numbers for tuning and for the
docstring of test_stub_machine.py.
"""

from __future__ import annotations

import sys
import time
import zlib
from typing import ClassVar

from hypothesis import seed, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.stateful.machine import StubMachine
from tests.stateful.shadow import lifecycle_edges
from tests.stateful.test_stub_machine import MAX_EXAMPLES, SETTINGS, STEPS

# The other vendor's step trap and exit state: a personality never takes those edges.
OTHER_VENDOR = {"demo-intel": ("db_trap", "exited_db"), "demo": ("mtrap_exit", "exited_mtrap"),
                "demo-amd-nomask": ("mtrap_exit", "exited_mtrap")}
# Edges no stub can take. A suspend request is withdrawn, and a breakpoint removed,
# only while every vCPU is parked or by a detach, which turns an armed vCPU into an
# abandoned one: so no stale DEBUG exit or stale int3 meets an armed vCPU. And no
# breakpoint exists while a vCPU is abandoned: detach removed them all, and gdb can
# insert again only once the next stop has parked every vCPU.
BY_DESIGN = {("armed", "exit_debug", "armed"), ("armed", "stale_int3", "armed"),
             ("abandoned", "breakpoint", "at_breakpoint")}


def main(examples: int = MAX_EXAMPLES, steps: int = STEPS) -> None:
    for personality in ("demo", "demo-intel", "demo-amd-nomask"):
        @seed(zlib.crc32(personality.encode()))  # one sequence per personality, as in CI
        class Machine(StubMachine):
            PERSONALITY = personality
            STATS: ClassVar[dict[str, int]] = {}

        started = time.perf_counter()
        run_state_machine_as_test(Machine, settings=settings(
            SETTINGS, max_examples=examples, stateful_step_count=steps, derandomize=True))
        took = time.perf_counter() - started
        stats = Machine.STATS
        trap, state = OTHER_VENDOR[personality]
        edges = {e for e in lifecycle_edges() if trap != e[1] and state not in (e[0], e[2])}
        taken = {e for e in edges if f"edge {e[0]} -{e[1]}-> {e[2]}" in stats}
        print(f"== {personality}: {stats.get('runs')} runs, {stats.get('moves')} moves, "
              f"{took:.1f} s; lifecycle transitions {len(taken)}/{len(edges - BY_DESIGN)} "
              f"(+{len(BY_DESIGN)} unreachable by design)")
        for key in sorted(stats):
            if not key.startswith(("edge ", "move ")) or "-v" in sys.argv:
                print(f"   {key}: {stats[key]}")
        for a, t, b in sorted(edges - taken - BY_DESIGN):
            print(f"   not taken: {a} -{t}-> {b}")


if __name__ == "__main__":
    main(*map(int, [a for a in sys.argv[1:3] if a.isdigit()]))
