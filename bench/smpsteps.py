"""gdb 13's ``next`` and ``until`` over one source line of 1000 loop iterations (issue
14's bench rows), on ``tests/guests/smpkernel/smpkernel.elf``, the same C line everywhere:

- ours: ``python -m stub --kernel smpkernel.elf --boot vmstub --vcpus 1`` and
  ``--vcpus 4`` (vCPUs 1-3 spin in ``ap_spin`` the whole time: 4 busy vCPUs); gdb
  range-steps the line with ``vCont;r``;
- QEMU TCG: ``qemu-system-x86_64 -smp 1 -kernel smpkernel.elf`` (its Multiboot entry,
  one CPU: the same ``kmain`` and the same loop); QEMU 7.2 offers no range stepping, so
  gdb single-steps every instruction of the loop (6 per iteration, ~6,000 steps).

One gdb session per debuggee and trial, the debuggee started fresh and stopped after it
(a live one would run its guest while the next is measured): ``break kernel.c:LOOP_LINE``,
then ``continue`` to the line (vCPU 0 runs ``loop_work`` again and again) and the timed
command, ``next`` and ``until`` alternately, each timed by gdb's own Python around that
command only. A command that does not stop on the line after the loop is an error, never
a number. ``python -m bench.smpsteps [--quick]`` runs just these rows and prints them.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time

from bench import targets

ROOT = targets.ROOT
SMPKERNEL = ROOT / "tests" / "guests" / "smpkernel" / "smpkernel.elf"
SOURCE = SMPKERNEL.parent / "kernel.c"
COMMANDS = ("next", "until")
GDB = shutil.which("gdb")
_LINE = re.compile(r"^BENCH (\w+) ([\d.]+)$", re.MULTILINE)


class SmpBenchError(RuntimeError):
    pass


def marked_line(marker: str) -> int:
    """The line of kernel.c marked ``/* MARKER */``."""
    lines = SOURCE.read_text().splitlines()
    found = [i for i, text in enumerate(lines, 1) if f"/* {marker} */" in text]
    if len(found) != 1:
        raise SmpBenchError(f"kernel.c: {len(found)} lines marked {marker}")
    return found[0]


def start_ours(vcpus: int) -> targets.Target:
    sys.path.insert(0, str(ROOT))
    from tests.e2e.stubproc import start_stub

    sp = start_stub("--kernel", str(SMPKERNEL), "--boot", "vmstub", "--vcpus", str(vcpus),
                    "--console", "none")
    label = f"ours ({vcpus} vCPU{'s' if vcpus > 1 else ''}, smpkernel)"
    return targets.Target(f"ours{vcpus}", label, sp.proc, sp.port, _stub=sp)


def start_tcg() -> targets.Target:
    port = targets.free_port()
    cmd = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-bios", targets.QBOOT, "-m", "64",
           "-smp", "1", "-kernel", str(SMPKERNEL), "-display", "none", "-nodefaults",
           "-no-reboot", "-debugcon", "file:/dev/null", "-gdb", f"tcp:127.0.0.1:{port}", "-S"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return targets.Target("tcg", "QEMU TCG (-smp 1, smpkernel)", proc, port)


STARTERS = {"ours1": lambda: start_ours(1), "ours4": lambda: start_ours(4), "tcg": start_tcg}


def session(target: targets.Target, per_command: int, timeout: float = 600.0
            ) -> dict[str, list[float]]:
    """Seconds of each ``next`` and ``until`` over the loop line, ``per_command`` of each."""
    if GDB is None:
        raise SmpBenchError("gdb is not installed")
    loop, after = marked_line("LOOP_LINE"), marked_line("AFTER_LOOP")
    cmds = ["set confirm off", "set pagination off", "set width 0", "python import time",
            f"target remote 127.0.0.1:{target.port}", f"break kernel.c:{loop}"]
    for _ in range(per_command):
        for name in COMMANDS:
            cmds += ["continue", "python t0 = time.perf_counter()", name,
                     f"python print('BENCH {name} %.6f' % (time.perf_counter() - t0))"]
    cmds.append("kill")
    args = [GDB, "-nx", "-batch", str(SMPKERNEL)]
    for c in cmds:
        args += ["-ex", c]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                       cwd=ROOT)
    out: dict[str, list[float]] = {}
    for name, secs in _LINE.findall(p.stdout):
        out.setdefault(name, []).append(float(secs))
    landed = len(re.findall(rf"^{after}\t", p.stdout, re.MULTILINE))
    wanted = per_command * len(COMMANDS)
    if sum(map(len, out.values())) != wanted or landed != wanted:
        raise SmpBenchError(f"{target.label}: {landed} of {wanted} commands stopped on line "
                            f"{after}:\n{p.stdout[-1200:]}\n{p.stderr[-800:]}")
    return out


def measure(key: str, per_command: int) -> dict[str, list[float]]:
    """A fresh debuggee, one gdb session, the debuggee stopped."""
    t = STARTERS[key]()
    try:
        return session(t, per_command)
    finally:
        t.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    keys = [k for k in STARTERS if k != "tcg" or targets.qemu_available()]
    trials, per = (1, 2) if quick else (3, 2)
    samples: dict[tuple[str, str], list[float]] = {}
    for trial in range(trials):
        for key in (keys if trial % 2 == 0 else keys[::-1]):
            for name, secs in measure(key, per).items():
                samples.setdefault((key, name), []).extend(secs)
            print(f"[{time.strftime('%H:%M:%S')}] {key}: trial {trial + 1} done",
                  file=sys.stderr, flush=True)
    for (key, name), secs in sorted(samples.items()):
        print(f"{name:6} {key:6} median {statistics.median(secs) * 1e3:9.1f} ms  samples "
              + ", ".join(f"{s * 1e3:.1f}" for s in secs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
