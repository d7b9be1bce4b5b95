"""The emulated PC's rows: our stub and QEMU 7.2 TCG each boot a Multiboot kernel with no
gdb attached, and the bench reads the guest's COM1 output from the emulator's stdout.

- free-running speed: ``bench/guests/loop.elf`` prints a line, runs a loop of a known
  instruction count (it says the count in that line), prints a second line and exits
  through isa-debug-exit; instructions per second = count / the time between the two
  lines' arrival on the child's stdout.
- time to the first serial line: from just before ``Popen`` to the first complete line
  of ``tests/guests/mbkernel/mbkernel.elf`` (its banner) on the child's stdout.

Our stub runs with its bytecode cached, as any run after the first of an installed stub:
``PYTHONDONTWRITEBYTECODE`` (this environment sets it) is dropped from its environment and
``PYTHONPYCACHEPREFIX`` points into a directory of the bench's own (``bytecode_cache``), so
the working tree gets no ``__pycache__``; an untimed run fills it. Without a cache (the
environment's ``PYTHONDONTWRITEBYTECODE=1``, no ``__pycache__`` in the tree) every start
compiles the stub's and the model's source first: its own row.

The child's stdout is a pipe read unbuffered here (``os.read`` as bytes arrive), each line
stamped with ``time.monotonic()`` when its ``\\n`` arrives; both emulators write the
guest's UART bytes as the guest sends them. Every run must also end with the guest's
exit status (33: isa-debug-exit of 0x10) and print what it should, so a broken run is an
error, never a number.

``python -m bench.pc [--quick]`` runs just these rows and prints their samples.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
LOOP_ELF = HERE / "guests" / "loop.elf"
MBKERNEL_ELF = ROOT / "tests" / "guests" / "mbkernel" / "mbkernel.elf"
EXIT_OK = 33  # isa-debug-exit of 0x10, both kernels' success
LOOP_START = re.compile(rb"^bench-loop: start 0x([0-9A-F]{8}) x 0x([0-9A-F]{8}) insns$")
LOOP_DONE = re.compile(rb"^bench-loop: done ebx=0x[0-9A-F]{8}$")
BANNER = b"mbkernel: Multiboot v1 test kernel"


class PcError(RuntimeError):
    pass


def qemu_binary() -> str | None:
    """qemu-system-i386 (an ELF32 kernel's own), else qemu-system-x86_64."""
    for name in ("qemu-system-i386", "qemu-system-x86_64"):
        if shutil.which(name):
            return name
    return None


def ours_cmd(kernel: Path) -> list[str]:
    return [PYTHON, "-m", "stub", "--kernel", str(kernel), "--listen", "127.0.0.1:0"]


def qemu_cmd(kernel: Path, binary: str) -> list[str]:
    return [binary, "-kernel", str(kernel), "-serial", "stdio", "-display", "none",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-no-reboot",
            "-accel", "tcg"]


@dataclass
class Emulator:
    """How to start one column's process for a kernel."""
    cmd: Callable[[Path], list[str]]
    env: dict[str, str] | None = None  # None: the bench's own environment


@contextlib.contextmanager
def bytecode_cache() -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The environments of our stub with a bytecode cache of the bench's own (written on
    the first run: the stub's modules and, since a prefix applies to every module, the
    standard library's and the venv's too), and with ``PYTHONDONTWRITEBYTECODE=1`` and no
    prefix (the installed libraries' own ``__pycache__`` is read; the stub's and the
    model's source, with none in the tree, is compiled on every start). The directory
    is removed at the end."""
    with tempfile.TemporaryDirectory(prefix="bench-pyc-") as tmp:
        base = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        cached = {**base, "PYTHONPYCACHEPREFIX": tmp}
        none = {**base, "PYTHONDONTWRITEBYTECODE": "1"}
        yield cached, none


def tree_pycache() -> list[str]:
    """``__pycache__`` directories of the project's own packages (with one, the
    no-cache row would read it)."""
    return sorted(str(p.relative_to(ROOT)) for pkg in ("stub", "model")
                  for p in (ROOT / pkg).rglob("__pycache__"))


@dataclass
class Run:
    lines: list[tuple[float, bytes]]  # (s since just before Popen, the line without \n)
    status: int
    stderr: str

    def describe(self) -> str:
        out = b" | ".join(line for _, line in self.lines[-4:]).decode(errors="replace")
        return f"exit {self.status}, stdout ...{out[-200:]!r}, stderr ...{self.stderr[-300:]!r}"


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60.0) -> Run:
    """Start ``cmd`` and read its stdout to the end, stamping each complete line."""
    lines: list[tuple[float, bytes]] = []
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, bufsize=0)
        try:
            fd = proc.stdout.fileno()
            buf = b""
            deadline = t0 + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise PcError(f"{cmd[0]}: no end within {timeout:g} s")
                data = os.read(fd, 65536)
                now = time.monotonic()
                if not data:
                    break
                buf += data
                while (i := buf.find(b"\n")) >= 0:
                    lines.append((now - t0, buf[:i].rstrip(b"\r")))
                    buf = buf[i + 1:]
            status = proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        err.seek(0)
        return Run(lines, status, err.read().decode(errors="replace"))


def loop_rate(em: Emulator) -> float:
    """Guest instructions per second over bench/guests/loop.elf's timed loop."""
    cmd = em.cmd(LOOP_ELF)
    r = run(cmd, em.env)
    starts = [(t, m) for t, line in r.lines if (m := LOOP_START.match(line))]
    dones = [t for t, line in r.lines if LOOP_DONE.match(line)]
    if r.status != EXIT_OK or len(starts) != 1 or len(dones) != 1 or dones[0] <= starts[0][0]:
        raise PcError(f"{cmd[0]} {LOOP_ELF.name}: {r.describe()}")
    (t_start, m), t_done = starts[0], dones[0]
    count = int(m.group(1), 16) * int(m.group(2), 16)
    return count / (t_done - t_start)


def first_line_ms(em: Emulator, banner: bytes = BANNER) -> float:
    """ms from just before Popen to mbkernel's first complete line (which must be
    ``banner``); the kernel then runs to its end, which must be a success."""
    cmd = em.cmd(MBKERNEL_ELF)
    r = run(cmd, em.env)
    if not r.lines or r.lines[0][1] != banner or r.status != EXIT_OK:
        raise PcError(f"{cmd[0]} {MBKERNEL_ELF.name}: {r.describe()}")
    return r.lines[0][0] * 1e3


def loop_count() -> tuple[int, int]:
    """(iterations, instructions a pass) of the committed loop.elf, from its source."""
    text = (HERE / "guests" / "loop.s").read_text()
    n = int(re.search(r"\.set ITERATIONS,\s*(\w+)", text).group(1), 0)
    k = int(re.search(r"\.set LOOP_INSNS,\s*(\w+)", text).group(1), 0)
    return n, k


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    qemu = qemu_binary()
    with bytecode_cache() as (cached, none):
        cols = {"ours": Emulator(ours_cmd, cached), "ours-nocache": Emulator(ours_cmd, none)}
        if qemu:
            cols["qemu"] = Emulator(lambda k: qemu_cmd(k, qemu))
        for em in cols.values():  # untimed: fills the cache, warms the page cache
            first_line_ms(em)
        for what, fn, trials in (("M insns/s", loop_rate, 2 if quick else 5),
                                 ("ms to first line", first_line_ms, 3 if quick else 7)):
            keys = [k for k in cols if fn is first_line_ms or k != "ours-nocache"]
            samples: dict[str, list[float]] = {k: [] for k in keys}
            for trial in range(trials):
                for k in (keys if trial % 2 == 0 else keys[::-1]):
                    v = fn(cols[k])
                    samples[k].append(v / 1e6 if fn is loop_rate else v)
            for k, vals in samples.items():
                print(f"{what:>18} {k:>12}: " + ", ".join(f"{v:,.1f}" for v in vals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
