"""The model checker's speed against SPIN on the same model (proofs/ is someone else's;
we only call it). ``python -m bench.checker`` prints one JSON line for SPIN's run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from bench.elf import ROOT

# proofs.spin.CROSSCHECK's 2-vCPU AMD configuration: the largest cross-checked model
# that both explore in seconds.
CHECK_ARGS = ["check", "--vcpus", "2", "--personality", "amd", "--quiet"]
_SUMMARY = re.compile(r"([\d,]+) states, [\d,]+ transitions, depth \d+, ([\d.]+) s, "
                      r"([\d,]+) states/s")


def available() -> tuple[bool, str]:
    if not (ROOT / "proofs" / "__main__.py").exists():
        return False, "no python -m proofs"
    try:
        import proofs.spin  # noqa: F401
    except Exception as err:  # noqa: BLE001 - someone else's work in progress
        return False, f"proofs.spin not importable: {err}"
    return True, ""


def python_run() -> dict:
    p = subprocess.run([sys.executable, "-m", "proofs", *CHECK_ARGS], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, check=False)
    m = _SUMMARY.search(p.stdout)
    if m is None:
        raise RuntimeError(f"python -m proofs printed no states/s:\n{p.stdout[-500:]}"
                           f"{p.stderr[-500:]}")
    states = int(m.group(1).replace(",", ""))
    seconds = float(m.group(2))
    return {"states": states, "seconds": seconds, "rate": states / seconds}


def spin_run() -> dict:
    p = subprocess.run([sys.executable, "-m", "bench.checker"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"SPIN run failed:\n{p.stdout[-500:]}{p.stderr[-500:]}")
    out = json.loads(lines[-1])
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def main() -> int:
    """SPIN on the Promela that proofs/ generates for the same configuration; the rate is
    pan's own (states stored / pan's elapsed search time: compiling is not counted)."""
    try:
        from proofs.config import Config
        from proofs.promela import generate
        from proofs.spin import available as spin_here
        from proofs.spin import run_spin
    except Exception as err:  # noqa: BLE001
        print(json.dumps({"error": f"proofs' SPIN cross-check not available: {err}"}))
        return 0
    if not spin_here():
        print(json.dumps({"error": "spin or gcc not installed"}))
        return 0
    run = run_spin(generate(Config(vcpus=2, personality="amd")))
    m = re.search(r"pan: elapsed time ([\d.e+-]+) seconds", run.output)
    elapsed = float(m.group(1)) if m else run.seconds
    v = re.search(r"Spin Version ([\d.]+)", run.output)
    print(json.dumps({"states": run.states, "seconds": elapsed,
                      "rate": run.states / max(elapsed, 0.01),
                      "version": v.group(1) if v else "?"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
