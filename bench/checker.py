"""The model checker's speed against SPIN on the same model. ``python -m bench.checker``
prints one JSON line for SPIN's run (the bench's row); ``python -m bench.checker
--compare`` prints, for several configurations, the Python checker's states per CPU
second against SPIN's, and for a symmetry-reduced run the concrete states it covers
per CPU second (issue 15)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

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


def _compare_cases():
    from proofs.config import INT3, NOP, STORE, Config

    return (
        (Config(vcpus=2, personality="amd"), False),
        (Config(vcpus=2, personality="amd-nomask"), False),
        (Config(vcpus=3, personality="intel", program=(NOP, INT3)), False),
        (Config(vcpus=2, personality="intel", program=(NOP, STORE), watch=("write",)), False),
        (Config(vcpus=3, personality="intel", program=(NOP, STORE), bp_gpas=(),
                watch=("write",)), False),
        # SPIN explores the 4-vCPU model unreduced: its state count is the concrete
        # states the reduced run stands for (the Python unreduced run finds the same).
        (Config(vcpus=4, personality="amd", program=(NOP, INT3)), True),
    )


def _spin_rate(cfg) -> tuple[int, float]:
    from proofs.promela import generate
    from proofs.spin import run_spin

    run = run_spin(generate(cfg), hash_bits=26)
    m = re.search(r"pan: elapsed time ([\d.e+-]+) seconds", run.output)
    return run.states, float(m.group(1)) if m else run.seconds


def compare() -> int:
    """Python states per CPU second (``explore`` in this process, time.process_time:
    the machine is shared) against pan's states per second of its own search."""
    from proofs.checker import explore
    from proofs.spin import available as spin_here

    print(f"{'configuration':34} {'states':>9} {'Python/CPU s':>12} {'SPIN states':>11} "
          f"{'SPIN/s':>9} {'ratio':>6}")
    for cfg, sym in _compare_cases():
        t0 = time.process_time()
        res = explore(cfg, symmetry=sym)
        cpu = time.process_time() - t0
        name = cfg.name + (" (symmetry)" if sym else "")
        sstates, secs = _spin_rate(cfg) if spin_here() else (0, 0.0)
        srate = sstates / max(secs, 0.01) if sstates else 0.0
        ours = res.states / cpu
        print(f"{name:34} {res.states:>9,} {ours:>12,.0f} {sstates:>11,} {srate:>9,.0f} "
              f"{ours / srate if srate else 0:>6.2f}")
        if sym and sstates:
            cover = sstates / cpu
            print(f"{'  covered (concrete states)':34} {sstates:>9,} {cover:>12,.0f} "
                  f"{sstates:>11,} {srate:>9,.0f} {cover / srate:>6.2f}")
    return 0


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
    sys.exit(compare() if "--compare" in sys.argv[1:] else main())
