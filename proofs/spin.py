"""Run SPIN on the generated Promela and compare with the Python checker.

research/model-checking.md §4: ``spin -a``, then ``gcc -DSAFETY -DBFS -DNOREDUCE``;
Python states = Spin "states, stored"; Python moves = Spin "transitions" - 1 (Spin
counts the initial state as a transition); Python depth = Spin "depth reached"."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from proofs.checker import Result, explore
from proofs.config import Config
from proofs.promela import generate


@dataclass(frozen=True)
class SpinRun:
    states: int
    transitions: int  # Spin's count, the initial state included
    depth: int
    errors: int
    seconds: float
    output: str

    @property
    def edges(self) -> int:
        return self.transitions - 1


def available() -> bool:
    return bool(shutil.which("spin") and shutil.which("gcc"))


def run_spin(pml: str, workdir: Path | None = None, hash_bits: int = 22) -> SpinRun:
    with tempfile.TemporaryDirectory(prefix="proofs-spin-") as tmp:
        d = Path(workdir or tmp)
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.pml").write_text(pml)
        t0 = time.perf_counter()
        _run(["spin", "-a", "model.pml"], d)
        _run(["gcc", "-O2", "-DSAFETY", "-DBFS", "-DNOREDUCE", "-DVECTORSZ=4096",
              "-o", "pan", "pan.c"], d)
        out = _run(["./pan", "-m10000000", f"-w{hash_bits}"], d, check=False)
        seconds = time.perf_counter() - t0
    return SpinRun(_num(r"(\d+) states, stored", out), _num(r"(\d+) transitions \(", out),
                   _num(r"depth reached (\d+)", out), _num(r"errors: (\d+)", out), seconds, out)


def _run(cmd: list[str], cwd: Path, check: bool = True) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def _num(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"no match for {pattern!r} in Spin's output:\n{text}")
    return int(m.group(1))


@dataclass(frozen=True)
class Comparison:
    cfg: Config
    python: Result
    spin: SpinRun

    @property
    def match(self) -> bool:
        p, s = self.python, self.spin
        return (p.states == s.states and p.transitions == s.edges and p.depth == s.depth
                and p.ok == (s.errors == 0))

    def row(self) -> str:
        p, s = self.python, self.spin
        return (f"{self.cfg.name:34} {p.states:>9,} {p.transitions:>10,} {p.depth:>5} | "
                f"{s.states:>9,} {s.transitions:>10,} {s.depth:>5} | "
                f"{'MATCH' if self.match else 'DIFFER'}  ({p.seconds:.2f} s / {s.seconds:.2f} s)")


HEADER = (f"{'configuration':34} {'py states':>9} {'py moves':>10} {'depth':>5} | "
          f"{'spin stored':>9} {'spin trans':>10} {'depth':>5} |")


def compare(cfg: Config, python: Result | None = None, **gen) -> Comparison:
    """``python``: the checker's run of ``cfg`` if there is one already."""
    return Comparison(cfg, python or explore(cfg), run_spin(generate(cfg, **gen)))


@dataclass(frozen=True)
class Verdicts:
    """Both find a violation, at the same distance from the initial state: Spin's
    "assertion violated (at depth D)" is a move from a state at BFS depth D."""

    name: str
    python: Result
    spin: SpinRun

    @property
    def spin_length(self) -> int | None:
        m = re.search(r"\(at depth (\d+)\)", self.spin.output)
        return int(m.group(1)) + 1 if m else None

    @property
    def match(self) -> bool:
        cex = self.python.counterexample
        return cex is not None and self.spin.errors > 0 and len(cex.path) == self.spin_length

    def row(self) -> str:
        cex = self.python.counterexample
        py = f"{cex.violation.prop} in {len(cex.path)} moves" if cex else "no violation"
        sp = f"error in {self.spin_length} moves" if self.spin.errors else "no error"
        return f"{self.name:44} python: {py:18} spin: {sp:18} {'MATCH' if self.match else 'DIFFER'}"


def compare_verdict(name: str, cfg: Config, mutation=None, **gen) -> Verdicts:
    return Verdicts(name, explore(cfg, mutation), run_spin(generate(cfg, **gen)))


# The cross-checked configurations: the whole environment (every move kind, every
# instruction, every personality), small enough for seconds. The Promela covers every
# Config switch; what it does not cover is listed in README.md.
CROSSCHECK: tuple[Config, ...] = (
    Config(vcpus=1, personality="intel", bp_gpas=(0, 1)),
    Config(vcpus=1, personality="amd", bp_gpas=(0, 1)),
    Config(vcpus=1, personality="amd-nomask", bp_gpas=(0, 1)),
    Config(vcpus=1, personality="none"),
    Config(vcpus=1, personality="amd", wait=True),
    Config(vcpus=2, personality="intel"),
    Config(vcpus=2, personality="amd"),
    Config(vcpus=2, personality="amd-nomask"),
    Config(vcpus=3, personality="amd", program=("nop", "int3")),
    # Power-off anywhere, gdb attached or not (the fixed finding-exit-before-query).
    Config(vcpus=1, personality="amd", poweroff=True),
    Config(vcpus=2, personality="intel", program=("nop", "int3"), poweroff=True),
    # The guest's own #DB handed back after a debugger step (the fixed 5d finding).
    Config(vcpus=1, personality="amd", checks=frozenset({"5d"})),
    Config(vcpus=2, personality="amd-nomask", checks=frozenset({"5d"})),
    # Write watchpoints (issue 13): hits racing steps and breakpoints, CompleteAccess.
    Config(vcpus=2, personality="intel", program=("nop", "store"), bp_gpas=(),
           watch=("write",)),
    Config(vcpus=2, personality="amd", program=("nop", "store"), watch=("write",)),
    Config(vcpus=3, personality="intel", program=("nop", "store"), bp_gpas=(),
           watch=("write",)),
)


def violating() -> list[tuple]:
    """Configurations where both must find the same shortest violation: the README's
    questions and findings, and the mutants that are alternative lifecycle tables (the
    Promela is generated from the mutated table)."""
    from proofs.mutants import BY_NAME

    one = Config(vcpus=1)
    out = [
        ("amd, no frame fix-up (bhyve's kernel)", one.with_(frame_fixup=False), None, {}),
        ("amd-nomask, no frame fix-up", one.with_(personality="amd-nomask", frame_fixup=False),
         None, {}),
        ("amd, iret not intercepted", one.with_(iret_fixup=False), None, {}),
        ("amd-nomask, stepi into the timer handler (U1)",
         one.with_(personality="amd-nomask", checks=frozenset({"U1"})), None, {}),
    ]
    for name in ("foreign-int3-swallowed", "debug-exit-keeps-step"):
        m = BY_NAME[name]
        out.append((f"mutant {name}", m.cfg, m.mutation, {"vcpu_spec": m.mutation.coordinator.SPEC}))
    return out
