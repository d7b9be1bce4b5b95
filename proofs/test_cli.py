"""``python -m proofs`` runs and reports."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proofs", *args], capture_output=True, check=False,
                          text=True, timeout=300)


def test_check_ok_with_progress():
    p = run("check", "--vcpus", "1", "--program", "nop,pushf", "--liveness")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "states" in p.stderr and "L1-step: holds" in p.stdout


def test_check_mutant_prints_counterexample():
    p = run("check", "--vcpus", "1", "--program", "nop", "--mutant", "mask-left-on", "--quiet")
    assert p.returncode == 1
    assert "Counterexample" in p.stdout and "MASK_HWINTR" in p.stdout
