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


class FreeDemo:
    """The demo VM on the bare VMM, each vCPU run by a thread of its own as the runtime
    runs it, with no debugger; ``on_exit(vcpu, exit_)`` sees every exit but SHUTDOWN.
    ``total()`` is the guest's ``loops[]`` summed over its vCPUs, read from RAM."""

    def __init__(self, on_exit=lambda vcpu, exit_: None):
        sys.setswitchinterval(SWITCH_INTERVAL)
        cfg = resolve("demo")
        self.vm = create_vm("emulated", kernel=cfg.kernel, vcpus=cfg.vcpus,
                            memory=cfg.memory, cpu=cfg.cpu, timer_hz=cfg.timer_hz,
                            console=None, boot=cfg.boot)
        self.n = cfg.vcpus
        self._loops = elf.gpa("loops")

        def drive(vcpu) -> None:
            if not vcpu.wait_started():
                return
            while (exit_ := vcpu.run()).kind is not ExitKind.SHUTDOWN:
                on_exit(vcpu, exit_)

        self._threads = [threading.Thread(target=drive, args=(v,), daemon=True)
                         for v in self.vm.vcpus]
        for t in self._threads:
            t.start()

    def wait_online(self, timeout: float = 30) -> bool:
        """Every AP started and the loops running (False: they did not come online)."""
        online = elf.gpa("cpus_online")
        deadline = time.monotonic() + timeout
        while struct.unpack("<Q", self.vm.read_phys(online, 8))[0] < self.n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        time.sleep(0.3)
        return True

    def total(self) -> int:
        return sum(struct.unpack(f"<{self.n}Q", self.vm.read_phys(self._loops, 8 * self.n)))

    def rate(self, seconds: float) -> float:
        """``loops[]`` progress per second over ``seconds`` of wall time."""
        a, t0 = self.total(), time.perf_counter()
        time.sleep(seconds)
        return (self.total() - a) / (time.perf_counter() - t0)

    def close(self) -> None:
        self.vm.shutdown()
        for t in self._threads:  # out of Unicorn before the interpreter goes (else it may crash)
            t.join(5)


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    demo = FreeDemo()  # nothing asks for exits without a debugger
    try:
        if not demo.wait_online():
            print(json.dumps({"error": "APs did not come online"}))
            return 1
        print(json.dumps({"vcpus": demo.n, "loops_per_s": demo.rate(seconds)}), flush=True)
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
