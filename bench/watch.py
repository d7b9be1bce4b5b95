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
import struct
import sys
import threading
import time

from bench import elf
from model.points import WRITE, Point
from stub.cli import SWITCH_INTERVAL
from stub.config import resolve
from stub.vmm.api import ExitKind
from stub.vmm.backends import create_vm

PLACEMENTS = {
    "quiet": ("gdt", "gdtr", "idtr", "pml4"),
    "hot": ("tf_leaks", "flags_errors", "guest_int3_count", "spurious_irqs"),
}


class _HigherHalf:
    """Resolves the demo's higher-half symbols as its page tables map them."""

    @staticmethod
    def translate(gva: int) -> int:
        return gva - elf.KERNEL_VMA if gva >= elf.KERNEL_VMA else gva


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    trials = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    sys.setswitchinterval(SWITCH_INTERVAL)
    cfg = resolve("demo")
    vm = create_vm("emulated", kernel=cfg.kernel, vcpus=cfg.vcpus, memory=cfg.memory,
                   cpu=cfg.cpu, timer_hz=cfg.timer_hz, console=None, boot=cfg.boot)
    n = cfg.vcpus

    def drive(vcpu) -> None:
        if not vcpu.wait_started():
            return
        while (exit_ := vcpu.run()).kind is not ExitKind.SHUTDOWN:
            if exit_.kind is ExitKind.WATCH:  # not expected: the guest never writes them
                vcpu.complete_access()

    threads = [threading.Thread(target=drive, args=(v,), daemon=True) for v in vm.vcpus]
    for t in threads:
        t.start()
    online, loops = elf.gpa("cpus_online"), elf.gpa("loops")

    def rate() -> float:
        def total() -> int:
            return sum(struct.unpack(f"<{n}Q", vm.read_phys(loops, 8 * n)))
        a, t0 = total(), time.perf_counter()
        time.sleep(seconds)
        return (total() - a) / (time.perf_counter() - t0)

    deadline = time.monotonic() + 30
    while struct.unpack("<Q", vm.read_phys(online, 8))[0] < n:
        if time.monotonic() > deadline:
            print(json.dumps({"error": "APs did not come online"}))
            return 1
        time.sleep(0.01)
    time.sleep(0.3)
    try:
        for name, symbols in PLACEMENTS.items():
            points = [Point(WRITE, elf.addr(s), 8) for s in symbols]
            without, with_ = [], []
            for _ in range(trials):
                without.append(rate())
                for p in points:
                    vm.arm_point(p, _HigherHalf)
                time.sleep(0.2)  # every vCPU has applied them
                with_.append(rate())
                for p in points:
                    vm.disarm_point(p)
                time.sleep(0.2)
            a, b = statistics.median(without), statistics.median(with_)
            print(json.dumps({"placement": name, "vcpus": n, "watchpoints": len(points),
                              "loops_per_s_without": round(a), "loops_per_s_with": round(b),
                              "ratio": round(b / a, 3) if a else None}), flush=True)
    finally:
        vm.shutdown()
        for t in threads:  # out of Unicorn before the interpreter goes (else it may crash)
            t.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
