"""Guest speed with watchpoints set (issue 13's bench row): ``python -m bench.watch
[SECONDS] [TRIALS]``.

Boots the built-in ``demo`` VM as ``bench.bare`` does (every vCPU on its own thread
calling ``run()``), measures the guest's ``loops[]`` progress per second with no point
armed, then with 4 write watchpoints armed on the VM (``Vm.arm_point``), in alternation,
``TRIALS`` times each. Two placements, each its own row:

- ``quiet``: 4 globals on pages the loop does not write (``gdt``, ``gdtr``, ``idtr``
  and ``pml4``'s first entry: read by the CPU's page walks and descriptor loads, which
  no watch sees, and never written): only the protection's presence costs;
- ``hot``: the demo's counters ``tf_leaks``, ``flags_errors``, ``guest_int3_count`` and
  ``spurious_irqs``, on the page where every vCPU increments ``loops[]`` each pass: every
  pass is an access to a watched page that no watchpoint matches, completed with the
  protection lifted (the VMM's worst case; the watchpoints never fire).

Prints one JSON line per placement: loops/s without and with, and the ratio (issue 13's
target: with >= 0.5x without). Nothing is asserted: the machine is shared.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from bench import elf
from bench.bare import FreeDemo
from model.points import WRITE, Point
from stub.vmm.api import ExitKind

PLACEMENTS = {
    "quiet": ("gdt", "gdtr", "idtr", "pml4"),
    "hot": ("tf_leaks", "flags_errors", "guest_int3_count", "spurious_irqs"),
}


class _HigherHalf:
    """Resolves the demo's higher-half symbols as its page tables map them."""

    @staticmethod
    def translate(gva: int) -> int:
        return gva - elf.KERNEL_VMA if gva >= elf.KERNEL_VMA else gva


def _complete(vcpu, exit_) -> None:
    if exit_.kind is ExitKind.WATCH:  # not expected: the guest never writes them
        vcpu.complete_access()


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    trials = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    demo = FreeDemo(on_exit=_complete)
    if not demo.wait_online():
        demo.close()
        print(json.dumps({"error": "APs did not come online"}))
        return 1
    try:
        for name, symbols in PLACEMENTS.items():
            points = [Point(WRITE, elf.addr(s), 8) for s in symbols]
            without, with_ = [], []
            for _ in range(trials):
                without.append(demo.rate(seconds))
                for p in points:
                    demo.vm.arm_point(p, _HigherHalf)
                time.sleep(0.2)  # every vCPU has applied them
                with_.append(demo.rate(seconds))
                for p in points:
                    demo.vm.disarm_point(p)
                time.sleep(0.2)
            a, b = statistics.median(without), statistics.median(with_)
            print(json.dumps({"placement": name, "vcpus": demo.n, "watchpoints": len(points),
                              "loops_per_s_without": round(a), "loops_per_s_with": round(b),
                              "ratio": round(b / a, 3) if a else None}), flush=True)
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
