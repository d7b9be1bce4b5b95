"""``python -m bench [--quick]``: ours against QEMU 7.2 (TCG, KVM) and udbserver, side by
side on the demo kernel, in one run; prints the table and writes bench/RESULTS.md.

Phases, so that only the debuggee being measured ever runs guest code:

A. raw client, 1 vCPU everywhere: every debuggee is started and stopped at ``cpu_loop``
   (a stopped debuggee is idle), then the trials go round-robin over them, so a burst
   of load from elsewhere on this shared machine hits every column alike.
B. gdb 13 in batch mode, one debuggee at a time (``stepi N``, ``dump binary memory``).
C. 4 vCPUs: Ctrl-C latency (round-robin again), continue-to-breakpoint, gdb ``stepi``
   with the other vCPUs continuing, and the free-running guest with the stub attached,
   trial by trial against the bare VMM (``bench/bare.py``) in turn.
D. the emulated PC, no gdb attached (bench/pc.py): our stub and QEMU TCG each boot a
   Multiboot kernel, one process at a time, in turn: the free-running speed of
   ``bench/guests/loop.elf`` and the time from process start to mbkernel's first
   serial line.
E. gdb ``next``/``until`` over smpkernel's 1000-iteration loop line (bench/smpsteps.py):
   ours with 1 and with 4 busy vCPUs and QEMU TCG with one, a fresh debuggee per gdb
   session, in turn; then guest speed with 4 watchpoints against none (bench/watch.py).
F. the model checker against SPIN (if proofs/ and its SPIN cross-check exist).
G. Debian's Linux kernel with the test kit's initramfs on 2 vCPUs, no gdb (bench/linux.py):
   ours and QEMU TCG in turn, boot to ``/init`` and a user-space loop.

``--baseline REV`` adds our stub at git revision REV (bench/baseline.py) as one more
column in the stepping, memory-read and breakpoint rows, in turn with ours at every trial.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import (baseline, checker, gdbbench, linux, measure, pc, report, smpsteps,
                   sysinfo, targets)
from bench.report import Row

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


@dataclass(frozen=True)
class Plan:
    trials: int
    seconds: float  # per trial of a rate
    ctrl_c: int  # interrupts per debuggee
    speed_trials: int
    speed_seconds: float
    stepi: int
    stepi_reps: int
    dump_bytes: int
    dump_reps: int
    checker_reps: int
    loop_trials: int  # runs of bench/guests/loop.elf, each side
    first_line_trials: int  # boots of mbkernel, each side
    smp_trials: int  # gdb sessions on smpkernel, each debuggee
    smp_per_session: int  # timed `next` (and as many `until`) per session
    watch_trials: int  # bench/watch.py: with/without alternations per placement
    watch_seconds: float
    linux_trials: int  # boots of Debian's kernel, each side


FULL = Plan(trials=5, seconds=1.5, ctrl_c=40, speed_trials=5, speed_seconds=2.5, stepi=1000,
            stepi_reps=3, dump_bytes=16 << 20, dump_reps=3, checker_reps=3, loop_trials=5,
            first_line_trials=7, smp_trials=3, smp_per_session=2, watch_trials=3,
            watch_seconds=2.0, linux_trials=3)
QUICK = Plan(trials=3, seconds=0.4, ctrl_c=12, speed_trials=2, speed_seconds=1.0, stepi=300,
             stepi_reps=2, dump_bytes=4 << 20, dump_reps=1, checker_reps=1, loop_trials=2,
             first_line_trials=3, smp_trials=1, smp_per_session=2, watch_trials=2,
             watch_seconds=1.0, linux_trials=1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def col_of(key: str) -> str:
    """The column of a debuggee: ours-intel -> ours, base-intel -> base, tcg -> tcg."""
    return key.split("-")[0]


def attempt(row: Row, col: str, what: str, fn) -> None:
    """Run one measurement; a failure becomes the cell's note, not the end of the run."""
    try:
        row.add(col, fn())
    except Exception as err:  # noqa: BLE001 - any peer may fail in its own way
        log(f"{what}: {type(err).__name__}: {err}")
        if "-v" in sys.argv:
            traceback.print_exc()
        row.na(col, f"error: {type(err).__name__}")


# ------------------------------------------------------------------ the rows
def make_rows(p: Plan) -> dict[str, Row]:
    def at_least(col: str, factor: float):
        return lambda r: None if r.median(col) is None else r.median("ours") >= factor * r.median(col)

    def both(*checks):
        def f(r):
            res = [c(r) for c in checks]
            return None if None in res else all(res)
        return f

    step_target = ("≥ 2× QEMU TCG and ≥ 1× udbserver",
                   both(at_least("tcg", 2), at_least("udb", 1)))
    mem_target = ("≥ 4× QEMU (TCG and KVM)", both(at_least("tcg", 4), at_least("kvm", 4)))
    dump_mib = p.dump_bytes >> 20
    return {
        "s": Row("raw `s` single-steps/s, 1 vCPU", "/s", target=step_target[0],
                 check=step_target[1]),
        "s-intel": Row("raw `s` single-steps/s, 1 vCPU, ours `--cpu intel` (MTRAP)", "/s",
                       target=step_target[0], check=step_target[1]),
        "vcont": Row("raw `vCont;s:N` single-steps/s, 1 vCPU", "/s", target=step_target[0],
                     check=step_target[1]),
        "s-floor": Row("raw `s`, the floor: a null Python responder, no VM (bench/floor.py)",
                       "/s"),
        "stepi": Row(f"gdb 13 `stepi {p.stepi}`, steps/s, 1 vCPU", "/s",
                     target="≥ 1.2× QEMU TCG", check=at_least("tcg", 1.2)),
        # Issue 15: no 10x penalty for stepping among busy vCPUs. The reference is
        # the 1-vCPU row's own samples (filled in once both are measured).
        "stepi4": Row(f"gdb 13 `stepi {p.stepi}`, steps/s, ours 4 vCPUs (`vCont;s:1;c`)",
                      "/s", ref_label="ours, 1 vCPU", target="≥ 0.7× ours with 1 vCPU",
                      check=lambda r: None if r.median("ref") is None
                      else r.median("ours") >= 0.7 * r.median("ref")),
        "m": Row("raw `m` read, largest packet each side", "MB/s", target=mem_target[0],
                 check=mem_target[1]),
        "x": Row("raw `x` read (peers: their `m`)", "MB/s", target=mem_target[0],
                 check=mem_target[1]),
        "dump": Row(f"gdb 13 `dump binary memory`, {dump_mib} MiB", "MB/s",
                    target=mem_target[0], check=mem_target[1]),
        "bp": Row("continue-to-breakpoint cycles/s (z0, s, Z0, `vCont;c`), 1 vCPU", "/s",
                  target="≥ 1× QEMU TCG", check=at_least("tcg", 1)),
        "bp4": Row("continue-to-breakpoint cycles/s, ours 4 vCPUs", "/s"),
        "ctrlc": Row("Ctrl-C to stop reply, 4 busy vCPUs (QEMU: 1 busy, -smp 4)", "ms",
                     higher_better=False, target="< 10 ms median",
                     check=lambda r: r.median("ours") < 10.0),
        "speed": Row("guest speed, stub attached and guest continued", "loops/s",
                     target="≥ 90 % of the bare VMM", ref_label="bare VMM",
                     check=lambda r: None if r.median("ref") is None
                     else r.median("ours") >= 0.9 * r.median("ref")),
        "speed-d": Row("guest speed, after `D` (detached)", "loops/s",
                       target="≥ 90 % of the bare VMM", ref_label="bare VMM",
                       check=lambda r: None if r.median("ref") is None
                       else r.median("ours") >= 0.9 * r.median("ref")),
        "loop": Row("free-running Multiboot guest (loop.elf), no gdb",
                    "M insns/s", target="≥ 0.5× QEMU TCG", check=at_least("tcg", 0.5)),
        "first-line": Row("process start to mbkernel's first serial line", "ms",
                          higher_better=False, target="≤ 1.5× QEMU",
                          check=lambda r: None if r.median("tcg") is None
                          else r.median("ours") <= 1.5 * r.median("tcg")),
        "first-line-nocache": Row("the same, ours compiling its source (no .pyc)", "ms",
                                  higher_better=False),
        **smp_rows(),
        "linux-boot": Row(f"Debian's kernel, {linux.BENCH_VCPUS} vCPUs: process start to /init",
                          "s", higher_better=False, target="≤ 1.5× QEMU TCG",
                          check=lambda r: None if r.median("tcg") is None
                          else r.median("ours") <= 1.5 * r.median("tcg")),
        "linux-loop": Row("the same Linux: a user-space loop (busybox sh)", "iterations/s",
                          target="≥ 0.5× QEMU TCG", check=at_least("tcg", 0.5)),
        "checker": Row("model checker, same model (2 vCPUs, amd)", "states/s",
                       ref_label="SPIN", target="report (no target)"),
    }


SMP_ROWS = ("next", "until", "next4", "until4", "watch-quiet", "watch-hot")


def smp_rows() -> dict[str, Row]:
    """Issue 14's range-stepping rows and issue 13's watchpoint rows (phase E)."""
    def faster(factor: float):  # times: the peer's over ours
        return lambda r: None if r.median("tcg") is None else \
            r.median("tcg") >= factor * r.median("ours")

    def within(factor: float):  # ours (4 vCPUs) against the ref (ours, 1 vCPU)
        return lambda r: None if r.median("ref") is None else \
            r.median("ours") <= factor * r.median("ref")

    def watched(r):
        return None if not r.pairs else r.ratio("ref") >= 0.5

    rows = {}
    for cmd in smpsteps.COMMANDS:
        rows[cmd] = Row(f"gdb 13 `{cmd}` over a 1000-iteration loop line (smpkernel), 1 vCPU",
                        "ms", higher_better=False, target="≥ 10× faster than QEMU TCG",
                        check=faster(10))
        rows[f"{cmd}4"] = Row(f"the same `{cmd}`, ours 4 busy vCPUs", "ms",
                              higher_better=False, ref_label="ours, 1 vCPU",
                              target="≤ 2× ours with 1 vCPU", check=within(2))
    for where, what in (("quiet", "on pages the guest does not write"),
                        ("hot", "on the page the guest writes every pass")):
        rows[f"watch-{where}"] = Row(f"guest speed, 4 write watchpoints {what} (demo)",
                                     "loops/s", ref_label="none set",
                                     target="≥ 0.5× none set", check=watched)
    return rows


# ------------------------------------------------------------------ phases
def phase_raw(p: Plan, rows: dict[str, Row], peers: dict[str, bool], base=None):
    """Phase A. Returns the debuggees and their sessions, still stopped, for phase B."""
    starters = {"ours": lambda: targets.start_ours("amd", 1),
                "base": lambda: targets.start_base(base, "amd", 1),
                "ours-intel": lambda: targets.start_ours("intel", 1, key="ours-intel"),
                "base-intel": lambda: targets.start_base(base, "intel", 1, key="base-intel"),
                "tcg": lambda: targets.start_qemu("tcg"), "kvm": lambda: targets.start_qemu("kvm"),
                "udb": targets.start_udb}
    live: dict[str, targets.Target] = {}
    sessions: dict[str, targets.Session] = {}
    for key, start in starters.items():
        col = col_of(key)
        if not peers.get(col, True):
            continue
        try:
            t = start()
            sessions[key] = t.to_cpu_loop()
            live[key] = t
            log(f"{t.label}: stopped at cpu_loop (thread {sessions[key].thread.decode()}, "
                f"{'no-ack' if sessions[key].no_ack else 'ack mode'})")
        except Exception as err:  # noqa: BLE001
            log(f"{key}: cannot start: {err}")
            for r in rows.values():
                if col != "ours":
                    r.na(col, "did not start")

    def fresh_udb() -> None:
        """udbserver slows down with every step of a session (see targets.py): each
        trial gets a new one, as fresh as the first."""
        if "udb" not in sessions:
            return
        live["udb"].stop()
        try:
            live["udb"] = targets.start_udb()
            sessions["udb"] = live["udb"].to_cpu_loop()
        except Exception as err:  # noqa: BLE001
            log(f"udbserver restart failed: {err}")
            sessions.pop("udb")
            live.pop("udb")

    def step_row(key: str, packet: bytes) -> Row:
        if key.endswith("-intel"):
            return rows["s-intel"]
        return rows["s" if packet == b"s" else "vcont"]

    floor = None
    try:
        floor = targets.start_floor()
        floor_session = floor.to_cpu_loop()
    except Exception as err:  # noqa: BLE001
        log(f"floor: cannot start: {err}")
        rows["s-floor"].na("ours", "did not start")
        if floor is not None:
            floor.stop()
        floor = None

    # Single steps, round-robin over debuggees, trial by trial.
    for trial in range(p.trials):
        fresh_udb()
        if floor is not None:
            attempt(rows["s-floor"], "ours", "floor b's'",
                    lambda: measure.step_rates(floor_session, b"s", 1, p.seconds))
        for key, s in list(sessions.items()):
            for packet in (b"s", b"vCont;s:{t}"):
                if key.endswith("-intel") and packet != b"s":
                    continue
                row = step_row(key, packet)
                attempt(row, col_of(key), f"{key} {packet!r}",
                        lambda s=s, packet=packet: measure.step_rates(s, packet, 1, p.seconds))
        log(f"steps: trial {trial + 1}/{p.trials} done")
    for key in ("s-intel", "s-floor"):  # these rows compare with the same peers
        for col in ("tcg", "kvm", "udb"):
            rows[key].samples[col] = rows["s"].samples.get(col, [])
            if col in rows["s"].notes:
                rows[key].notes[col] = rows["s"].notes[col]
    if floor is not None:
        floor_session.close()
        floor.stop()
    for key in ("ours-intel", "base-intel"):
        if key in sessions:
            sessions.pop(key).close()
            live.pop(key).stop()

    # Memory: fill 1 MiB with random bytes, then m (and x) with the largest packets.
    sizes: dict[str, int] = {}
    for key, s in sessions.items():
        try:
            measure.fill(s)
            sizes[key] = measure.largest_m(s, measure.packet_size(s))
        except Exception as err:  # noqa: BLE001
            log(f"{key}: memory set-up failed: {err}")
            rows["m"].na(col_of(key), "error")
    for trial in range(p.trials):
        if trial:
            fresh_udb()
            if "udb" in sessions:
                measure.fill(sessions["udb"])
        for key, s in list(sessions.items()):
            if key not in sizes:
                continue
            col = col_of(key)
            attempt(rows["m"], col, f"{key} m", lambda s=s, key=key: measure.read_rates(
                s, "m", sizes[key], 1, p.seconds / 1.5)[0])
            if s.target.has_x:
                attempt(rows["x"], col, f"{key} x", lambda s=s: measure.read_rates(
                    s, "x", 0x10000, 1, p.seconds / 1.5)[0])
            elif col != "ours":
                rows["x"].samples.setdefault(col, [])
        log(f"memory: trial {trial + 1}/{p.trials} done")
    for col in ("tcg", "kvm", "udb"):
        rows["x"].samples[col] = list(rows["m"].samples.get(col, []))
    rows["m"].detail = ", ".join(f"{col_of(k)}: {v} B per reply" for k, v in sizes.items())

    # Continue to a breakpoint and back, round-robin.
    for trial in range(p.trials):
        fresh_udb()
        for key, s in list(sessions.items()):
            attempt(rows["bp"], col_of(key), f"{key} breakpoint cycle",
                    lambda s=s: measure.bp_cycle_rates(s, 1, p.seconds / 1.5))
    log("breakpoint cycles done")
    return live, sessions


def phase_gdb(p: Plan, rows: dict[str, Row], live, sessions) -> None:
    """Phase B: one debuggee at a time (ours and the baseline's `stepi` in turn); the
    others stay stopped under their raw session."""
    if gdbbench.GDB is None:
        for key in ("stepi", "dump"):
            rows[key].na("ours", "gdb not installed")
        return
    ours = {k: live[k] for k in ("ours", "base") if k in live}
    gdb_in_turn(rows["stepi"], ours, sessions, p.stepi, p.stepi_reps)
    for key in list(live):
        t = live[key]
        col = col_of(key)
        if key == "udb":
            t.stop()  # it serves one connection in its life: a fresh one for gdb
            try:
                t = targets.start_udb()
            except Exception as err:  # noqa: BLE001
                rows["stepi"].na("udb", f"error: {err}")
                continue
        else:
            sessions[key].close()
        if key not in ours:
            attempt(rows["stepi"], col, f"{t.label} gdb stepi",
                    lambda t=t: gdbbench.stepi_rates(t, p.stepi, p.stepi_reps))
        if key == "udb":
            rows["dump"].na("udb", "not measured (~0.4 MB/s)")
        elif key != "base":
            attempt(rows["dump"], col, f"{t.label} gdb dump",
                    lambda t=t: gdbbench.dump_rates(t, p.dump_bytes, p.dump_reps))
        t.stop()
        log(f"{t.label}: gdb rows done")


def gdb_in_turn(row: Row, debuggees: dict[str, targets.Target],
                held: dict[str, targets.Session], steps: int, reps: int) -> None:
    """gdb `stepi`, one timed command per gdb run, our stub now and at the baseline in
    turn. Between runs each waits under a raw session in ``held`` (keyed like
    ``debuggees``): our stub resumes its guest when gdb leaves."""
    for _ in range(reps):
        for key, t in debuggees.items():
            held.pop(key).close()
            attempt(row, col_of(key), f"{t.label} gdb stepi",
                    lambda t=t: gdbbench.stepi_rates(t, steps, 1))
            held[key] = t.connect()


def start_four(start) -> tuple[targets.Target, targets.Session]:
    """A 4-vCPU debuggee, connected (so stopped) once all its vCPUs are online."""
    t = start()
    try:
        s = t.connect()
        measure.wait_online(s, 4)
        return t, s
    except BaseException:
        t.stop()
        raise


def phase_four(p: Plan, rows: dict[str, Row], peers: dict[str, bool], base=None) -> None:
    """Phase C: the rows that need 4 vCPUs."""
    rng = random.Random(4)
    live: dict[str, targets.Session] = {}
    try:
        ours, live["ours"] = start_four(lambda: targets.start_ours("amd", 4))
    except Exception as err:  # noqa: BLE001
        log(f"ours, 4 vCPUs: cannot start: {err}")
        return
    for accel in ("tcg", "kvm"):
        if not peers.get(accel, True):
            continue
        try:
            t = targets.start_qemu(accel, smp=4)
            live[accel] = t.to_cpu_loop()
        except Exception as err:  # noqa: BLE001
            log(f"QEMU {accel} -smp 4: {err}")
            rows["ctrlc"].na(accel, "did not start")
    rows["ctrlc"].na("udb", "n/a: no Ctrl-C while running")
    rounds = 4
    for _ in range(rounds):
        for key, sess in live.items():
            attempt(rows["ctrlc"], key, f"{key} Ctrl-C",
                    lambda sess=sess: measure.ctrl_c_latencies(sess, p.ctrl_c // rounds, rng))
    log("Ctrl-C done")
    for key in ("tcg", "kvm"):
        if key in live:
            live.pop(key).target.stop()

    s = live["ours"]
    # Free-running guest, attached and continued, and after D, each trial right next to
    # a run of the bare VMM (order alternating), so that each ratio compares neighbours.
    for trial in range(p.speed_trials):
        try:
            bare_first = trial % 2 == 0
            bare = bare_speed(p.speed_seconds) if bare_first else None
            attached = measure.guest_speed_continued(s, 4, p.speed_seconds)
            detached, s = measure.guest_speed_detached(s, 4, p.speed_seconds)
            if not bare_first:
                bare = bare_speed(p.speed_seconds)
        except Exception as err:  # noqa: BLE001
            log(f"guest speed: {type(err).__name__}: {err}")
            rows["speed"].na("ours", "error")
            s = ours.connect()
            continue
        for key, v in (("speed", attached), ("speed-d", detached)):
            rows[key].add("ours", [v])
            rows[key].add("ref", [bare])
            rows[key].pairs.append(v / bare)
    for key in ("speed", "speed-d"):
        rows[key].check = lambda r: None if not r.pairs else r.ratio("ref") >= 0.9
        rows[key].detail = "ratio: median of back-to-back pairs " + ", ".join(
            f"{x:.2f}" for x in rows[key].pairs)
    log("guest speed done")
    four_in_turn(p, rows, {"ours": ours}, {"ours": s}, base)
    log("4-vCPU rows done")


def four_in_turn(p: Plan, rows: dict[str, Row], debuggees: dict[str, targets.Target],
                 held: dict[str, targets.Session], base) -> None:
    """Breakpoint cycles and gdb `stepi` with 4 vCPUs (whichever vCPU hits reports),
    our stub now and (with ``--baseline``) at the baseline, trial by trial in turn."""
    if base is not None:
        try:
            debuggees["base"], held["base"] = start_four(
                lambda: targets.start_base(base, "amd", 4))
        except Exception as err:  # noqa: BLE001
            log(f"{base.label}, 4 vCPUs: cannot start: {err}")
            for key in ("bp4", "stepi4"):
                rows[key].na("base", "did not start")
    for s in held.values():
        s.run_to(targets.CPU_LOOP)
    for _ in range(p.trials):
        for key, s in held.items():
            attempt(rows["bp4"], key, f"{debuggees[key].label} breakpoint cycle",
                    lambda s=s: measure.bp_cycle_rates(s, 1, p.seconds / 1.5))
    gdb_in_turn(rows["stepi4"], debuggees, held, p.stepi // 2, p.stepi_reps)
    rows["stepi4"].add("ref", rows["stepi"].samples.get("ours", []))
    for key, t in debuggees.items():
        held[key].close()
        t.stop()


def bare_speed(seconds: float) -> float:
    out = subprocess.run([sys.executable, "-m", "bench.bare", str(seconds)], cwd=targets.ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if "loops_per_s" in d:
                return d["loops_per_s"]
    raise RuntimeError(f"bench.bare: {out.stdout[-300:]} {out.stderr[-300:]}")


def phase_pc(p: Plan, rows: dict[str, Row], qemu: str | None, why_not: str) -> None:
    """Phase D: the emulated PC with no gdb (bench/pc.py), ours and QEMU TCG (``qemu``,
    its binary, or None: ``why_not``) one process at a time, in turn, the order
    alternating from trial to trial. Nothing else runs guest code meanwhile."""
    loop, first, nocache = rows["loop"], rows["first-line"], rows["first-line-nocache"]
    for r in (loop, first, nocache):
        for col in ("kvm", "udb"):
            r.na(col, "n/a")
        if not qemu:
            r.na("tcg", f"n/a: {why_not}")
    n, k = pc.loop_count()
    loop.detail = (f"{n:,} passes x {k} instructions = {n * k:,}, timed between two serial "
                   f"lines; QEMU: {qemu or 'none'}")
    first.detail = f"ours: bytecode cached; QEMU: {qemu or 'none'}, SeaBIOS"
    stale = pc.tree_pycache()
    nocache.detail = ("ours: PYTHONDONTWRITEBYTECODE=1, " + (
        f"but the tree has {len(stale)} __pycache__ ({stale[0]}, ...): not compiled"
        if stale else "no __pycache__ in stub/ or model/: their source compiled") +
        "; QEMU: the row above's boots")
    with pc.bytecode_cache() as (cached, none):
        ems = {"ours": pc.Emulator(pc.ours_cmd, cached)}
        if qemu:
            ems["tcg"] = pc.Emulator(lambda kernel: pc.qemu_cmd(kernel, qemu))
        for col, em in ems.items():  # untimed: fills our cache, warms the page cache
            attempt(Row("warm-up", "ms"), col, f"{col} warm-up", lambda em=em: [
                pc.first_line_ms(em)])

        def in_turn(trials: int, fn, cells: dict[str, tuple[Row, str, pc.Emulator]],
                    scale: float = 1.0) -> None:
            """``cells``: who -> (row, column, emulator), all in turn at every trial."""
            for trial in range(trials):
                order = list(cells) if trial % 2 == 0 else list(cells)[::-1]
                for who in order:
                    row, col, em = cells[who]
                    attempt(row, col, f"{who} {row.title}",
                            lambda em=em: [fn(em) * scale])
        in_turn(p.loop_trials, pc.loop_rate,
                {col: (loop, col, em) for col, em in ems.items()}, 1e-6)
        log("free-running Multiboot guest done")
        in_turn(p.first_line_trials, pc.first_line_ms,
                {**{col: (first, col, em) for col, em in ems.items()},
                 "ours-nocache": (nocache, "ours", pc.Emulator(pc.ours_cmd, none))})
    if "tcg" in first.samples:  # the same QEMU boots: its ratio against ours uncached
        nocache.samples["tcg"] = list(first.samples["tcg"])
    log("time to the first serial line done")


def phase_smp(p: Plan, rows: dict[str, Row], tcg: bool) -> None:
    """Phase E: gdb ``next``/``until`` over smpkernel's loop line, a fresh debuggee per
    gdb session (bench/smpsteps.py), ours with 1 and 4 vCPUs and QEMU TCG in turn, the
    order alternating; then bench/watch.py, with and without watchpoints alternating."""
    keys = ["ours1", "ours4", *(["tcg"] if tcg else [])]
    if not tcg:
        for cmd in smpsteps.COMMANDS:
            rows[cmd].na("tcg", "skipped")
    cells = {"ours1": {c: (rows[c], "ours") for c in smpsteps.COMMANDS},
             "ours4": {c: (rows[f"{c}4"], "ours") for c in smpsteps.COMMANDS},
             "tcg": {c: (rows[c], "tcg") for c in smpsteps.COMMANDS}}
    for trial in range(p.smp_trials):
        for key in (keys if trial % 2 == 0 else keys[::-1]):
            try:
                got = smpsteps.measure(key, p.smp_per_session)
            except Exception as err:  # noqa: BLE001
                log(f"{key} next/until: {type(err).__name__}: {err}")
                for row, col in cells[key].values():
                    row.na(col, f"error: {type(err).__name__}")
                continue
            for cmd, secs in got.items():
                row, col = cells[key][cmd]
                row.add(col, [s * 1e3 for s in secs])
                if key == "ours1":  # the 4-vCPU rows' reference
                    rows[f"{cmd}4"].add("ref", [s * 1e3 for s in secs])
    for cmd in smpsteps.COMMANDS:
        for r in (rows[cmd], rows[f"{cmd}4"]):
            for col in ("kvm", "udb"):
                r.na(col, "n/a")
        rows[f"{cmd}4"].na("tcg", "n/a")
        ours, tcg_ms = rows[cmd].median("ours"), rows[cmd].median("tcg")
        speedup = f"QEMU TCG / ours = {tcg_ms / ours:,.0f}×; " if ours and tcg_ms else ""
        rows[cmd].detail = (f"{speedup}gdb sends vCont;r to ours; QEMU has no range "
                            f"stepping: gdb single-steps each instruction; "
                            f"{p.smp_per_session} per session")
    log("next/until over the loop line done")
    try:
        for d in watch_speeds(p.watch_seconds, p.watch_trials):
            row = rows[f"watch-{d['placement']}"]
            row.add("ours", [d["loops_per_s_with"]])
            row.add("ref", [d["loops_per_s_without"]])
            row.pairs.append(d["ratio"])
            row.detail = (f"{d['vcpus']} vCPUs, {d['watchpoints']} watchpoints, medians of "
                          f"{p.watch_trials} alternations of {p.watch_seconds:g} s")
    except Exception as err:  # noqa: BLE001
        log(f"bench.watch: {type(err).__name__}: {err}")
        for where in ("quiet", "hot"):
            rows[f"watch-{where}"].na("ours", f"error: {type(err).__name__}")
    for where in ("quiet", "hot"):
        for col in ("tcg", "kvm", "udb"):
            rows[f"watch-{where}"].na(col, "n/a")
    log("guest speed with watchpoints done")


def watch_speeds(seconds: float, trials: int) -> list[dict]:
    """bench/watch.py's JSON lines (one per placement), run in its own process."""
    out = subprocess.run([sys.executable, "-m", "bench.watch", str(seconds), str(trials)],
                         cwd=targets.ROOT, capture_output=True, text=True, timeout=600,
                         check=False)
    found = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    good = [d for d in found if "placement" in d]
    if out.returncode != 0 or not good:
        raise RuntimeError(f"bench.watch (exit {out.returncode}): {out.stdout[-300:]} "
                           f"{out.stderr[-300:]}")
    return good


def phase_linux(p: Plan, rows: dict[str, Row], qemu: bool) -> None:
    """Phase G: bench/linux.py's boots, ours and QEMU TCG in turn, the order alternating."""
    boot, loop = rows["linux-boot"], rows["linux-loop"]
    for r in (boot, loop):
        for col in ("kvm", "udb"):
            r.na(col, "n/a")
    try:
        kit, initrd = linux.kit_and_initrd()
    except linux.KitUnavailable as err:
        for r in (boot, loop):
            r.na("ours", f"n/a: {err}")
            r.na("tcg", "n/a")
        return
    cols = {"ours": linux.ours, **({"tcg": linux.qemu} if qemu else {})}
    if not qemu:
        boot.na("tcg", "skipped")
        loop.na("tcg", "skipped")
    boot.detail = (f"{kit.kernel_package}, {linux.MEMORY_MB} MiB, '{linux.APPEND}'; the "
                   f"same initramfs and command line both sides")
    for trial in range(p.linux_trials):
        for col in (list(cols) if trial % 2 == 0 else list(cols)[::-1]):
            cmd = cols[col](kit.vmlinuz, initrd, linux.BENCH_VCPUS)
            got: dict[str, float] = {}

            def one(cmd=cmd) -> list[float]:
                got["boot"], got["loop"] = linux.measure(cmd, linux.BENCH_VCPUS)
                return [got["boot"]]
            attempt(boot, col, f"{col} Linux boot", one)
            if "loop" in got:
                loop.add(col, [got["loop"]])
    log("Linux rows done")


def phase_checker(p: Plan, rows: dict[str, Row]) -> None:
    row = rows["checker"]
    ok, why = checker.available()
    if not ok:
        row.na("ours", f"not available ({why})")
        row.na("ref", "not available")
        return
    info = {}
    for _ in range(p.checker_reps):
        attempt(row, "ours", "python -m proofs", lambda: [checker.python_run()["rate"]])

        def spin():
            d = checker.spin_run()
            info.update(d)
            return [d["rate"]]
        attempt(row, "ref", "SPIN", spin)
    if info:
        row.detail = (f"{info['states']:,} states; SPIN {info.get('version', '?')}: pan's own "
                      f"search time, compile excluded")
    log("model checker done")


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about a minute, fewer and shorter trials")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--no-kvm", action="store_true")
    ap.add_argument("--no-udbserver", action="store_true")
    ap.add_argument("--no-checker", action="store_true")
    ap.add_argument("--baseline", metavar="REV",
                    help="also measure our stub at git revision REV, side by side")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"Markdown (default {RESULTS})")
    ap.add_argument("--profile", action="store_true",
                    help="instead: profile our stub's step and memory-read paths (py-spy)")
    ap.add_argument("--only-smp", action="store_true",
                    help="only phase E: next/until over smpkernel's loop line, watchpoints")
    ap.add_argument("-v", action="store_true", help="tracebacks of failed measurements")
    a = ap.parse_args(argv)
    if a.profile:
        from bench import profile
        return profile.main(quick=a.quick)

    plan = QUICK if a.quick else FULL
    info = sysinfo.collect()
    load_before = sysinfo.load()
    peers = {"tcg": targets.qemu_available() and not a.no_qemu,
             "kvm": not a.no_qemu and not a.no_kvm, "udb": not a.no_udbserver,
             "base": bool(a.baseline)}
    rows = make_rows(plan)
    if peers["kvm"]:
        ok, why = targets.kvm_available()
        if not ok:
            peers["kvm"] = False
            for r in rows.values():
                r.na("kvm", f"skipped: {why}")
    for col, on in peers.items():
        if not on:
            for r in rows.values():
                r.notes.setdefault(col, "skipped")
    t0 = time.monotonic()
    log(f"{'quick' if a.quick else 'full'} run; load average {load_before}")
    if a.only_smp:
        phase_smp(plan, rows, peers["tcg"])
        ordered = [rows[k] for k in SMP_ROWS]
        print()
        print(report.text_table(ordered))
        print(f"\nload average before {load_before}, after {sysinfo.load()}; "
              f"{time.monotonic() - t0:.0f} s (not written to {a.out.name})")
        return 0
    with baseline.checkout(a.baseline) if a.baseline else contextlib.nullcontext() as base:
        if base:
            log(f"baseline: {base.label}, checked out in {base.path}; ours and the "
                "baseline both run as pure Python in these rows")
        with pure_python(base is not None):
            live, sessions = phase_raw(plan, rows, peers, base)
            phase_gdb(plan, rows, live, sessions)
            phase_four(plan, rows, peers, base)
    qemu = pc.qemu_binary() if not a.no_qemu else None
    phase_pc(plan, rows, qemu, "skipped (--no-qemu)" if a.no_qemu else "no qemu-system-i386")
    phase_smp(plan, rows, peers["tcg"])
    phase_linux(plan, rows, peers["tcg"])
    if not a.no_checker:
        phase_checker(plan, rows)
    else:
        rows["checker"].na("ours", "skipped")
    elapsed = time.monotonic() - t0
    load_after = sysinfo.load()

    ordered = [rows[k] for k in ("s", "s-intel", "s-floor", "vcont", "stepi", "stepi4", "m", "x", "dump",
                                 "bp", "bp4", "ctrlc", "speed", "speed-d", "loop", "first-line",
                                 "first-line-nocache", *SMP_ROWS, "linux-boot",
                                 "linux-loop", "checker")]
    label = base.label if base else ""
    print()
    print(report.text_table(ordered, label))
    print(f"\nload average before {load_before}, after {load_after}; {elapsed:.0f} s")
    md = render(ordered, info, plan, a.quick, load_before, load_after, elapsed, base)
    a.out.write_text(md)
    print(f"wrote {a.out}")
    return 0


def render(rows, info, plan: Plan, quick: bool, load_before, load_after, elapsed,
           base=None) -> str:
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    flags = (" --quick" if quick else "") + (f" --baseline {base.rev}" if base else "")
    return f"""# Benchmark results

`python -m bench{flags}` on {when}, {elapsed:.0f} s; load average
(1/5/15 min) {load_before} before, {load_after} after (a shared 2-core machine: other
people's tests were running).

Medians of {plan.trials} trials (gdb rows: {plan.stepi_reps} timed commands; Ctrl-C:
{plan.ctrl_c} interrupts; guest speed: {plan.speed_trials} trials of {plan.speed_seconds:g} s;
Multiboot guest: {plan.loop_trials} runs, first serial line: {plan.first_line_trials} boots;
`next`/`until`: {plan.smp_trials} gdb sessions of {plan.smp_per_session} each per debuggee;
watchpoints: {plan.watch_trials} alternations of {plan.watch_seconds:g} s per placement).
Peer cells read `value (×ours/peer)`. Higher is better unless the row says otherwise.
{base_note(base)}
{report.markdown(rows, base.label if base else "")}
Targets met: {sum(r.met() is True for r in rows)} of {sum(bool(r.target) and r.check is not None for r in rows)}.

## Machine

{machine}

## How each column was run

- ours: `python -m stub --vm demo --cpu amd --vcpus 1` (4 for the 4-vCPU rows; `--cpu intel`
  for its row), no-ack mode, stopped at `cpu_loop` by a `Z0` breakpoint.
- QEMU: `qemu-system-x86_64 -machine pc,accel=tcg|kvm -bios qboot.rom -m 64 -smp 1 -kernel
  demo.elf -gdb tcp:... -S` (`-cpu host,-arch-capabilities` under KVM), ack mode (QEMU 7.2
  has no no-ack mode), 2 KiB `m` replies (it answers E22 above PacketSize/2). Under this
  nested KVM, `int3` kills QEMU, so the KVM column stops with `Z1`.
- udbserver: the same ELF loaded by our loader into one bare Unicorn, served by
  `udbserver(uc, port, cpu_loop)` (bench/udb_target.py); a fresh one per trial (it slows
  down as a session goes on: each step adds and deletes a Unicorn hook).
- Every column steps the same instructions: the guest's own `int3` in `cpu_loop` is
  patched to `nop` (nested KVM and bare Unicorn cannot run it), from `cpu_loop` on.
- All: one raw RSP client (bench/client.py, `TCP_NODELAY`) over loopback; memory reads
  walk a 1 MiB region at GVA 0x1000000 (identity-mapped RAM) filled with random bytes first;
  gdb timings come from gdb's own Python around the timed command only.
- The two Multiboot rows, no gdb attached (bench/pc.py): ours `python -m stub --kernel
  K --listen 127.0.0.1:0`, QEMU `qemu-system-i386 -kernel K -serial stdio -display none
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 -no-reboot -accel tcg` (SeaBIOS), one
  process at a time, in turn; the guest's COM1 output read unbuffered from the child's
  stdout, each line stamped with `time.monotonic()` as its newline arrives. Speed:
  K = `bench/guests/loop.elf`, its loop's instruction count / the time between its two
  lines. First line: K = `tests/guests/mbkernel/mbkernel.elf`, from just before `Popen` to
  its banner, after one untimed run of each; ours with its bytecode cached (in a
  directory of the bench's, `PYTHONPYCACHEPREFIX`), as any run after the first of an
  installed stub, and in the next row as this environment runs it
  (`PYTHONDONTWRITEBYTECODE=1`: every start compiles the stub's and the model's source).
  Every run must end with exit status 33 (isa-debug-exit of 0x10).
- `next`/`until` rows (bench/smpsteps.py): `tests/guests/smpkernel/smpkernel.elf`, ours
  `python -m stub --kernel K --boot vmstub --vcpus 1|4` (4: vCPUs 1-3 spin throughout),
  QEMU `qemu-system-x86_64 -machine pc,accel=tcg -bios qboot.rom -smp 1 -kernel K -S`
  (Multiboot entry, one CPU, the same C loop line); a fresh debuggee per gdb session:
  `break kernel.c:LOOP_LINE`, then `continue` and the timed command, alternately `next`
  and `until`, each checked to stop on the line after the loop. The 4-vCPU rows'
  reference is ours with 1 vCPU from the same trials.
- Watchpoint rows: `python -m bench.watch SECONDS TRIALS` (the demo VM on the bare VMM,
  4 vCPUs, `Vm.arm_point` of 4 write watchpoints, with and without alternating); ratio:
  with / without.

## Samples

{report.samples_markdown(rows)}"""


@contextlib.contextmanager
def pure_python(on: bool):
    """With ``--baseline``, our stubs start with ``VMSTUB_PURE=1`` as the baseline's do
    (targets.start_base): the compiled build belongs to this tree, so REV cannot have
    one, and compiled against pure would not be a before/after of REV's change."""
    saved = os.environ.get("VMSTUB_PURE")
    if on:
        os.environ["VMSTUB_PURE"] = "1"
    try:
        yield
    finally:
        if on:
            if saved is None:
                os.environ.pop("VMSTUB_PURE", None)
            else:
                os.environ["VMSTUB_PURE"] = saved


def base_note(base) -> str:
    if base is None:
        return ""
    return (f"\nColumn `{base.label}`: our stub at git revision {base.rev} (`--baseline`),"
            f" measured in turn with ours (the working tree, {base.current}) trial by"
            f" trial; its ratio is ×ours/{base.label}. In the rows with that column both"
            f" ran as pure Python (`VMSTUB_PURE=1`): the compiled build belongs to the"
            f" working tree.\n")


if __name__ == "__main__":
    sys.exit(main())
