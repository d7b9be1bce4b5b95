"""``python -m bench --profile``: where our stub's time goes on the raw single-step path
and the raw memory-read path, sampled by py-spy from outside (no change to the stub).

For each path: the stub (1 vCPU, ``--cpu amd``) is driven by the raw client while
``py-spy record --threads --gil`` samples it; the collapsed stacks are written to
``bench/profiles/<path>.txt`` and summarised: the share of GIL-holding samples per
thread, per function (self) and per stub function (inclusive). ``--gil`` keeps only the
thread holding the GIL, i.e. Python work, which is what bounds a Python stub; time
spent blocked (select, futex hand-offs) shows as the gap between the client's wall
time and the stub's CPU time, printed too.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import measure, targets

OUT = Path(__file__).resolve().parent / "profiles"
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
_FRAME = re.compile(r" \((.*?):\d+\)$")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _record(t: targets.Target, name: str, seconds: float, op) -> tuple[Path, str]:
    OUT.mkdir(exist_ok=True)
    raw = OUT / f"{name}.txt"
    spy = subprocess.Popen([PY_SPY, "record", "-p", str(t.pid), "-d", str(int(seconds)),
                            "-r", "400", "--threads", "--gil", "-f", "raw", "-o", str(raw),
                            "--nonblocking"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)  # py-spy attaches
    n, c0, t0 = 0, _cpu_seconds(t.pid), time.perf_counter()
    while spy.poll() is None:
        op()
        n += 1
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds(t.pid) - c0
    err = spy.stderr.read().decode(errors="replace")
    if spy.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy failed: {err[-400:]}")
    return raw, (f"{n} operations in {wall:.2f} s: {wall / n * 1e6:.0f} us wall per operation, "
                 f"stub CPU {cpu / n * 1e6:.0f} us per operation (user+sys, all threads)")


def summarise(raw: Path, top: int = 18) -> str:
    incl: collections.Counter = collections.Counter()
    self_: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        thread = frames[0].split(": ")[-1]
        threads[thread] += n
        names = [_FRAME.sub(lambda m: f" ({Path(m.group(1)).name})", f) for f in frames[1:]]
        for f in set(names):
            if "/stub/" in f or "(" in f and f.split("(")[-1].rstrip(")") in _STUB_FILES:
                incl[f] += n
        self_[names[-1] if names else "(native)"] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples holding the GIL", "by thread: " + ", ".join(
        f"{t} {c / total:.0%}" for t, c in threads.most_common())]
    out.append("self (where the interpreter was):")
    out += [f"  {c / total:6.1%}  {f}" for f, c in self_.most_common(top)]
    out.append("inclusive, stub/model functions:")
    out += [f"  {c / total:6.1%}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out) + "\n"


_STUB_FILES = {p.name for d in ("stub", "stub/rsp", "stub/vmm", "model")
               for p in (targets.ROOT / d).glob("*.py")}


def main(quick: bool = False) -> int:
    if not Path(PY_SPY).exists():
        print("py-spy is not installed (pip install py-spy)")
        return 2
    seconds = 4 if quick else 10
    t = targets.start_ours("amd", 1)
    try:
        s = t.to_cpu_loop()
        c = s.c
        measure.fill(s)
        report = []
        for name, packet in (("step", b"vCont;s:" + s.thread),
                             ("m", b"m%x,10000" % measure.MEM_BASE),
                             ("x", b"x%x,10000" % measure.MEM_BASE)):
            raw, rates = _record(t, name, seconds, lambda packet=packet: c.ask(packet))
            text = f"== {name}: raw `{packet.decode()}`\n{rates}\n{summarise(raw)}"
            print(text, flush=True)
            report.append(text)
        (OUT / "SUMMARY.txt").write_text("\n".join(report))
        print(f"collapsed stacks and SUMMARY.txt in {OUT}")
    finally:
        t.stop()
    return 0
