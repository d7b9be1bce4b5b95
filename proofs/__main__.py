"""``python -m proofs``: the model checker from the command line, for bounds bigger than
``pytest proofs/`` runs. Subcommands:

- ``check``: one configuration (``--vcpus 4 --symmetry``, ``--mutant NAME``, ...), with a
  live progress line; prints the shortest counterexample if there is one.
- ``suite``: the configurations pytest checks.
- ``mutants``: every seeded bug and the length of the counterexample that kills it.
- ``counterexamples``: print every kept counterexample and render them into
  ``diagrams/counterexamples/`` (DOT, and SVG with graphviz's ``dot``).
- ``spin``: the SPIN cross-check table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from proofs import liveness
from proofs.checker import Result, explore
from proofs.config import INSTRUCTIONS, OPTIONAL_CHECKS, PERSONALITIES, Config
from proofs.report import OUT, format_trace, write_diagram


class Progress:
    """One line on stderr, rewritten in place at most every half second."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.last = 0.0

    def __call__(self, states: int, transitions: int, depth: int, queue: int, seconds: float):
        now = time.perf_counter()
        if now - self.last < 0.5 and queue:
            return
        self.last = now
        rate = states / seconds if seconds else 0
        self.stream.write(f"\r  {states:>12,} states {rate:>9,.0f}/s  {transitions:>13,} moves  "
                          f"depth {depth:>3}  queue {queue:>10,}  {seconds:7.1f} s ")
        if not queue:
            self.stream.write("\n")
        self.stream.flush()


def _config(a) -> Config:
    return Config(
        vcpus=a.vcpus, personality=a.personality, program=tuple(a.program.split(",")),
        bp_gpas=tuple(int(x) for x in a.bp.split(",") if x != ""), wait=a.wait,
        frame_fixup=not a.no_frame_fixup, iret_fixup=not a.no_iret_fixup,
        interrupts=not a.no_interrupts, poweroff=a.poweroff, boot_registered=not a.boot_race,
        checks=frozenset(x for x in a.check.split(",") if x),
        hw_addrs=tuple(int(x) for x in a.hw.split(",") if x != ""),
        watch=tuple(x for x in a.watch.split(",") if x),
        step_range=tuple(int(x) for x in a.range.split(",")) if a.range else None,
        faults=a.faults, gdb_reset=a.reset,
    )


def cmd_check(a) -> int:
    cfg = _config(a)
    mutation = None
    if a.mutant:
        from proofs.mutants import BY_NAME
        mutation = BY_NAME[a.mutant].mutation
    print(f"checking {cfg.name}" + (f" with mutant {a.mutant}" if a.mutant else "")
          + (" (symmetry-reduced)" if a.symmetry else ""))
    res = explore(cfg, mutation, symmetry=a.symmetry, keep_graph=a.liveness,
                  max_states=a.max_states, progress=Progress() if not a.quiet else None)
    print(res.summary())
    cex = res.counterexample
    if cex is None and a.liveness:
        for name, lasso in liveness.check(res, tuple(a.fair.split(","))).items():
            print(f"  {name}: {'holds' if lasso is None else 'VIOLATED'}")
            cex = cex or lasso
    if cex is not None:
        print(format_trace(res, cex))
        if a.diagram:
            res.counterexample = cex
            for p in write_diagram(res, a.diagram):
                print(f"wrote {p}")
        return 1
    return 0


def cmd_suite(a) -> int:
    from proofs.suite import CASES

    bad = 0
    for case in CASES:
        res = explore(case.cfg, symmetry=case.symmetry, keep_graph=case.liveness)
        line = res.summary()
        if res.ok and case.liveness:
            broken = [n for n, c in liveness.check(res).items() if c is not None]
            line += "; liveness " + ("holds" if not broken else "VIOLATED " + ",".join(broken))
            bad += bool(broken)
        bad += not res.ok
        print(line, flush=True)
    return int(bad > 0)


def cmd_mutants(a) -> int:
    from proofs.mutants import MUTANTS
    from proofs.runs import mutant

    missed = 0
    for m in MUTANTS:
        res: Result = mutant(m.name)
        cex = res.counterexample
        if cex is None:
            missed += 1
            print(f"{m.name:28} NOT KILLED")
        else:
            print(f"{m.name:28} killed: {cex.violation.prop:8} {len(cex.path):3} moves  "
                  f"({m.doc})")
    return int(missed > 0)


def cmd_counterexamples(a) -> int:
    from proofs.catalog import ALL

    for e in ALL:
        res = e.run()
        if res.counterexample is None:
            print(f"== {e.name}: no counterexample (expected {e.expect})")
            continue
        if not a.quiet:
            print(f"== {e.name}: {e.title}\n{format_trace(res)}\n")
        for p in write_diagram(res, e.name, a.out, svg=not a.no_svg):
            print(f"wrote {p}")
    return 0


def cmd_spin(a) -> int:
    from proofs import spin

    if not spin.available():
        print("spin and gcc are needed (apt-get install spin gcc)")
        return 2
    print(spin.HEADER)
    bad = 0
    for cfg in spin.CROSSCHECK:
        c = spin.compare(cfg)
        bad += not c.match
        print(c.row(), flush=True)
    print()
    for name, cfg, mutation, gen in spin.violating():
        v = spin.compare_verdict(name, cfg, mutation, **gen)
        bad += not v.match
        print(v.row(), flush=True)
    return int(bad > 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m proofs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check one configuration")
    c.add_argument("--vcpus", type=int, default=2)
    c.add_argument("--personality", choices=sorted(PERSONALITIES), default="amd")
    c.add_argument("--program", default="nop,pushf,popf,int3",
                   help=f"comma-separated, from {', '.join(INSTRUCTIONS)}")
    c.add_argument("--bp", default="0", help="GPAs gdb may break at, e.g. 0,1")
    c.add_argument("--wait", action="store_true", help="hold vCPU 0 until gdb resumes")
    c.add_argument("--no-frame-fixup", action="store_true", help="bhyve's kernel")
    c.add_argument("--no-iret-fixup", action="store_true", help="no IRET intercept")
    c.add_argument("--no-interrupts", action="store_true")
    c.add_argument("--poweroff", action="store_true")
    c.add_argument("--boot-race", action="store_true", help="gdb may connect first")
    c.add_argument("--check", default="", help=f"optional checks: {','.join(OPTIONAL_CHECKS)}")
    c.add_argument("--hw", default="", help="addresses gdb may put a Z1 at, e.g. 0")
    c.add_argument("--watch", default="", help="watchpoint kinds on the datum the program's "
                   "store/load access: write,read,access")
    c.add_argument("--range", default="", help="vCont;r range START,END (intel/both)")
    c.add_argument("--faults", action="store_true", help="vCPUs may triple-fault")
    c.add_argument("--reset", action="store_true", help="gdb may monitor system_reset")
    c.add_argument("--mutant", help="a seeded bug (python -m proofs mutants)")
    c.add_argument("--symmetry", action="store_true")
    c.add_argument("--liveness", action="store_true")
    c.add_argument("--fair", default=",".join(liveness.DEFAULT_FAIR))
    c.add_argument("--max-states", type=int)
    c.add_argument("--diagram", help="render the counterexample as diagrams/counterexamples/NAME")
    c.add_argument("--quiet", action="store_true", help="no progress line")
    c.set_defaults(func=cmd_check)
    sub.add_parser("suite", help="the pytest configurations").set_defaults(func=cmd_suite)
    sub.add_parser("mutants", help="every seeded bug").set_defaults(func=cmd_mutants)
    x = sub.add_parser("counterexamples", help="print and render every kept counterexample")
    x.add_argument("--out", type=Path, default=OUT)
    x.add_argument("--no-svg", action="store_true")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_counterexamples)
    sub.add_parser("spin", help="cross-check against SPIN").set_defaults(func=cmd_spin)
    a = p.parse_args(argv)
    try:
        return a.func(a)
    except ValueError as err:  # a configuration that makes no sense
        print(f"python -m proofs: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
