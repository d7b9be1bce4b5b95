"""Issue 17's Linux rows: Debian's stock kernel with the test kit's busybox initramfs,
booted by our stub and by QEMU 7.2 TCG with the same kernel, initramfs, command line,
memory and vCPU count, no gdb attached, one process at a time, in turn.

- boot to ``/init``: seconds from just before ``Popen`` to the arrival of the line
  ``/init`` prints first (``VMSTUB-INIT-OK cpus=N``, which must name N CPUs) on the
  child's stdout (the guest's COM1 in both);
- a compute loop in the guest's user space: ``/init`` then prints a start line, runs a
  busybox ``sh`` arithmetic loop (user-space work: no system call per iteration), prints
  an end line and powers off; iterations per second between the two lines' arrival.

Every run must power off with exit status 0 and print both lines, so a broken run is an
error, never a number. The kit comes from ``tests.guests.linux.kit`` (Debian's
packages, fetched with ``apt-get download`` and cached).

``python -m bench.linux [--quick] [--vcpus N] [--no-qemu]`` prints the samples and the
medians' ratio (ours / QEMU: time ratio for boot, rate ratio for the loop).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from bench.pc import PYTHON, PcError, run
from tests.guests.linux import kit as linux_kit

APPEND = "console=ttyS0 panic=-1 nokaslr"
MEMORY_MB = 512
ITERATIONS = 100_000
TIMEOUT = 900.0  # seconds for one run (a loaded machine boots several times slower)
LOOP_START = re.compile(rb"^BENCH-LOOP-START$")
LOOP_END = re.compile(rb"^BENCH-LOOP-END (\d+)$")

#: /init for the bench: the kit's marker, then the timed loop, then power-off.
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "{linux_kit.MARKER} cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)"
echo BENCH-LOOP-START
i=0
while [ $i -lt {ITERATIONS} ]; do i=$((i+1)); done
echo "BENCH-LOOP-END $i"
/bin/busybox poweroff -f
"""

BENCH_VCPUS = 2  # the comparison: QEMU's -smp 2
KitUnavailable = linux_kit.KitUnavailable
Command = Callable[[Path, Path, int], list[str]]


def ours(kernel: Path, initrd: Path, vcpus: int) -> list[str]:
    return [PYTHON, "-m", "stub", "--kernel", str(kernel), "--initrd", str(initrd),
            "--append", APPEND, "--vcpus", str(vcpus), "--memory-mb", str(MEMORY_MB),
            "--listen", "127.0.0.1:0"]


def qemu(kernel: Path, initrd: Path, vcpus: int) -> list[str]:
    return [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-accel", "tcg",
            "-smp", str(vcpus), "-m", str(MEMORY_MB), "-nographic", "-no-reboot",
            "-monitor", "none", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", APPEND]


def measure(cmd: list[str], vcpus: int) -> tuple[float, float]:
    """(seconds to /init's first line, loop iterations per second) of one run."""
    r = run(cmd, timeout=TIMEOUT)
    marker = f"{linux_kit.MARKER} cpus={vcpus}".encode()
    boot = [t for t, line in r.lines if line.endswith(marker)]
    start = [t for t, line in r.lines if LOOP_START.match(line)]
    end = [(t, m) for t, line in r.lines if (m := LOOP_END.match(line))]
    if (r.status != 0 or len(boot) != 1 or len(start) != 1 or len(end) != 1
            or int(end[0][1].group(1)) != ITERATIONS):
        raise PcError(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])}: {r.describe()}")
    return boot[0], ITERATIONS / (end[0][0] - start[0])


def kit_and_initrd() -> tuple[linux_kit.Kit, Path]:
    """The kit, and the bench's initramfs written next to the kit's (cached)."""
    kit = linux_kit.fetch()
    initrd = kit.initramfs.with_name("bench-initramfs.cpio")
    data = linux_kit.initramfs(_busybox(kit.initramfs), INIT)
    if not initrd.exists() or initrd.read_bytes() != data:
        initrd.write_bytes(data)
    return kit, initrd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.linux", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 trials instead of 5")
    parser.add_argument("--vcpus", type=int, default=BENCH_VCPUS)
    parser.add_argument("--no-qemu", action="store_true")
    args = parser.parse_args(argv)
    try:
        kit, initrd = kit_and_initrd()
    except KitUnavailable as err:
        print(f"bench.linux: the Debian kit cannot be fetched: {err}", file=sys.stderr)
        return 2
    columns: dict[str, Command] = {"ours": ours}
    if not args.no_qemu and shutil.which("qemu-system-x86_64"):
        columns["qemu"] = qemu
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in columns}
    for trial in range(2 if args.quick else 5):
        for name in (list(columns) if trial % 2 == 0 else list(columns)[::-1]):
            try:
                samples[name].append(measure(columns[name](kit.vmlinuz, initrd, args.vcpus),
                                             args.vcpus))
            except PcError as err:
                print(f"bench.linux: {name}: {err}", file=sys.stderr)
                return 1
    report(samples, args.vcpus)
    return 0


def _busybox(initramfs: Path) -> bytes:
    """The busybox binary the kit unpacked (next to its cached initramfs)."""
    found = sorted(initramfs.parent.glob("busybox-static_*/bin/busybox"))
    if not found:
        raise KitUnavailable(f"no unpacked busybox-static next to {initramfs}")
    return found[-1].read_bytes()


def report(samples: dict[str, list[tuple[float, float]]], vcpus: int) -> None:
    med = {k: (statistics.median(b for b, _ in v), statistics.median(r for _, r in v))
           for k, v in samples.items()}
    for name, values in samples.items():
        boots = ", ".join(f"{b:.2f}" for b, _ in values)
        loops = ", ".join(f"{r:,.0f}" for _, r in values)
        print(f"{name:>5}: boot to /init (s, {vcpus} vCPUs): {boots}; "
              f"user-space loop (iterations/s): {loops}")
    if "qemu" in med:
        (ob, ol), (qb, ql) = med["ours"], med["qemu"]
        print(f"boot to /init: ours {ob:.2f} s, QEMU TCG {qb:.2f} s: x{ob / qb:.2f} of "
              f"QEMU's time (target <= 1.5)")
        print(f"user-space loop: ours {ol:,.0f}/s, QEMU TCG {ql:,.0f}/s: x{ol / ql:.2f} "
              f"(target >= 0.5)")


if __name__ == "__main__":
    sys.exit(main())
