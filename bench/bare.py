"""The bare emulated VMM, no stub: ``python -m bench.bare SECONDS``.

Boots the built-in ``demo`` VM exactly as ``python -m stub --vm demo`` would (same VM
definition: vCPUs, RAM, personality, timer), runs every vCPU in its own thread calling
``run()`` as the runtime does, with the stub's GIL switch interval (which changes how
fast vCPU threads get back into the guest after each exit, so the comparison must
share it), and prints one JSON line: the guest's ``loops[]``
progress per second summed over its vCPUs, read straight from guest RAM.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
import time

from bench import elf
from stub.cli import SWITCH_INTERVAL
from stub.config import resolve
from stub.vmm.api import ExitKind
from stub.vmm.backends import create_vm


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    sys.setswitchinterval(SWITCH_INTERVAL)
    cfg = resolve("demo")
    vm = create_vm("emulated", kernel=cfg.kernel, vcpus=cfg.vcpus, memory=cfg.memory,
                   cpu=cfg.cpu, timer_hz=cfg.timer_hz, console=None, boot=cfg.boot)
    n = cfg.vcpus

    def drive(vcpu) -> None:
        if not vcpu.wait_started():
            return
        while vcpu.run().kind is not ExitKind.SHUTDOWN:
            pass  # nothing asks for exits without a debugger

    threads = [threading.Thread(target=drive, args=(vcpu,), daemon=True) for vcpu in vm.vcpus]
    for t in threads:
        t.start()
    online, loops = elf.gpa("cpus_online"), elf.gpa("loops")

    def total() -> int:
        return sum(struct.unpack(f"<{n}Q", vm.read_phys(loops, 8 * n)))

    deadline = time.monotonic() + 30
    while struct.unpack("<Q", vm.read_phys(online, 8))[0] < n:
        if time.monotonic() > deadline:
            print(json.dumps({"error": "APs did not come online"}))
            return 1
        time.sleep(0.01)
    time.sleep(0.3)
    a, t0 = total(), time.perf_counter()
    time.sleep(seconds)
    b, t1 = total(), time.perf_counter()
    print(json.dumps({"vcpus": n, "loops_per_s": (b - a) / (t1 - t0)}), flush=True)
    vm.shutdown()
    for t in threads:  # out of Unicorn before the interpreter goes (else it may crash)
        t.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
