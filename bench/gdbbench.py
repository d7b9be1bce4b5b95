"""Stock gdb in batch mode, timed from inside gdb (its Python): only the command under
test is timed, not gdb's start-up, the ELF's symbols or the connection handshake."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import elf
from bench.targets import Target

GDB = shutil.which("gdb")
_LINE = re.compile(r"^BENCH (\w+) ([\d.]+)$", re.MULTILINE)


class GdbError(RuntimeError):
    pass


def version() -> str:
    if GDB is None:
        return "not installed"
    out = subprocess.run([GDB, "--version"], capture_output=True, text=True,
                         check=False).stdout
    return out.splitlines()[0] if out else "?"


def _timed(name: str, command: str) -> list[str]:
    return ["python t0 = time.perf_counter()", command,
            f"python print('BENCH {name} %.6f' % (time.perf_counter() - t0))"]


def run(target: Target, commands: list[str], timeout: float = 300.0) -> dict[str, list[float]]:
    if GDB is None:
        raise GdbError("gdb is not installed")
    args = [GDB, "-nx", "-batch", "-ex", "set confirm off", "-ex", "set pagination off",
            "-ex", "set width 0", "-ex", "python import time", str(elf.DEMO_ELF),
            "-ex", f"target remote 127.0.0.1:{target.port}"]
    for c in commands:
        args += ["-ex", c]
    # Leave without detaching: QEMU would resume the guest on 'D' and burn a core
    # while the next measurement runs (our stub resumes on a dropped connection anyway).
    args += ["-ex", "disconnect"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    out: dict[str, list[float]] = {}
    for name, secs in _LINE.findall(p.stdout):
        out.setdefault(name, []).append(float(secs))
    if not out:
        raise GdbError(f"gdb against {target.label} measured nothing:\n"
                       f"{p.stdout[-800:]}\n{p.stderr[-800:]}")
    return out


def prelude(target: Target) -> list[str]:
    """Stop at cpu_loop the way a user would."""
    if target.key == "udb":
        return []  # udbserver hands over there
    brk = "hbreak" if target.bp_kind == 1 else "tbreak"
    cmds = [f"{brk} *{elf.addr('cpu_loop'):#x}", "continue"]
    if target.bp_kind == 1:
        cmds.append("delete")
    if target.patch_int3 and target.key != "udb":  # udbserver's loader did it
        cmds.append(f"set {{unsigned char}}{elf.cpu_loop_int3():#x} = 0x90")
    return cmds


def stepi_rates(target: Target, steps: int, reps: int) -> list[float]:
    cmds = prelude(target)
    for _ in range(reps):
        cmds += _timed("stepi", f"stepi {steps}")
    res = run(target, cmds)
    return [steps / t for t in res.get("stepi", [])]


def dump_rates(target: Target, size: int, reps: int, base: int = 0x100_0000) -> list[float]:
    """MB/s of ``dump binary memory`` of ``size`` bytes."""
    with tempfile.TemporaryDirectory(prefix="bench-dump-") as tmp:
        out = Path(tmp) / "mem.bin"
        cmds = prelude(target)
        for _ in range(reps):
            cmds += _timed("dump", f"dump binary memory {out} {base:#x} {base + size:#x}")
        res = run(target, cmds)
        if out.stat().st_size != size:
            raise GdbError(f"{target.label}: dump wrote {out.stat().st_size} bytes, not {size}")
    return [size / t / 1e6 for t in res.get("dump", [])]
