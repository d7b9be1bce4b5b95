"""Counterexamples as people read them: a numbered trace of gdb packets, VMM exits and
coordinator actions with every vCPU's state after each step, and the same as a
graphviz diagram in ``diagrams/counterexamples/``."""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

from proofs.checker import Counterexample, Result
from proofs.env import (
    ACC,
    EXIT,
    FLT,
    HIT,
    ISR,
    OWN,
    PC,
    REAL,
    RF,
    RNG,
    STARTED,
    SUSP,
    TFS,
    VCAPS,
    System,
    _bits,
    _caps,
)
from proofs.symmetry import Canon, relabel

OUT = Path(__file__).resolve().parent.parent / "diagrams" / "counterexamples"


def describe_vcpu(sys: System, state, i: int) -> str:
    cid, *_rest, cpus = state
    snap = sys.snaps[cid]
    cpu = cpus[i]
    if not cpu[STARTED]:
        return "off"
    bits = [snap.states[i], f"pc={cpu[PC]}:{sys.prog[cpu[PC]]}", f"TF={cpu[REAL]}/own={cpu[OWN]}"]
    if cpu[VCAPS]:
        bits.append(_caps(cpu[VCAPS]))
    if cpu[TFS][0] != "off":
        bits.append(f"shadow={cpu[TFS][0]}:{int(cpu[TFS][1])}")
    if cpu[SUSP]:
        bits.append("suspend-req")
    ex = cpu[EXIT]
    if ex is not None:
        if isinstance(ex, str):
            bits.append(f"exit={ex}")
        elif ex < sys.k:
            bits.append(f"exit=BPT@{ex}")
        else:
            p = sys.va[ex - sys.k]
            bits.append(f"exit={'HWBREAK' if p.kind == 'hw' else 'WATCH'}:{p.kind}")
    if cpu[ISR] is not None:
        bits.append(f"in {cpu[ISR][0]} handler")
    if cpu[HIT] is not None:
        bits.append(f"hit={sys._point_name(cpu[HIT][0])}" + ("" if cpu[HIT][1] else "(removed)"))
    bits += [label for on, label in ((cpu[RF], "rf"), (cpu[FLT] == 1, "faulted"),
                                     (cpu[FLT] == 2, "fault-reported"),
                                     (cpu[ACC], "access-done"), (cpu[RNG], "range")) if on]
    return " ".join(bits)


def describe_global(sys: System, state) -> str:
    cid, phase, ctrlc, bps, _mem, ended, _cpus = state
    snap = sys.snaps[cid]
    bits = [f"gdb={phase}" + ("+^C" if ctrlc else ""), f"bps={_bits(bps)}"]
    if snap.owner is not None:
        bits.append(f"owner=vCPU{snap.owner}")
    if snap.want_stopped:
        bits.append(f"want_stopped={sorted(snap.want_stopped)}")
    if ended:
        bits.append("guest ended")
    return " ".join(bits)


def replay(res: Result, cex: Counterexample | None = None):
    """Re-run the counterexample's moves; yields (label, log lines, state after)."""
    sys = res.sys
    cex = cex or res.counterexample
    canon = Canon(sys) if res.symmetry else None
    state = sys.initial()
    if canon:
        state = canon(state)
    for lab, perm in cex.path:
        log: list[str] = []
        if perm is None:
            state, _ = sys.apply(state, lab, log)
        else:
            log.append(f"(reduced search: vCPUs {perm[lab[1]] if len(lab) > 1 else ''} "
                       "swapped to stand for another pending event)")
            state, _ = sys.apply(sys.permute(state, perm), relabel(lab, perm), log)
        if canon:
            nxt = canon(state)
            if nxt is not state:
                log.append("(vCPUs renumbered to the canonical order)")
            state = nxt
        yield lab, log, state


def label_text(lab: tuple) -> str:
    name, *args = lab
    return name + ("(" + ",".join(map(str, args)) + ")" if args else "")


def format_trace(res: Result, cex: Counterexample | None = None) -> str:
    cex = cex or res.counterexample
    sys = res.sys
    lines = [f"Counterexample for {res.cfg.name}: {cex.violation}",
             f"({len(cex.path)} moves, shortest: breadth-first search)", ""]
    state = sys.initial()
    lines.append("initial: " + describe_global(sys, state))
    lines += [f"    vCPU{i}: {describe_vcpu(sys, state, i)}" for i in range(sys.n)]
    for n, (lab, log, state) in enumerate(replay(res, cex), 1):
        if cex.loop_at is not None and n - 1 == cex.loop_at:
            lines.append("---- the loop: from here the moves repeat forever, fairly ----")
        lines.append(f"{n:3}. {label_text(lab)}")
        lines += [f"       {x}" for x in log]
        lines.append("     -> " + describe_global(sys, state))
        lines += [f"       vCPU{i}: {describe_vcpu(sys, state, i)}" for i in range(sys.n)]
    if cex.kind == "state":
        lines.append(f"the last state breaks {cex.violation.prop}: {cex.violation.msg}")
    elif cex.kind == "deadlock":
        lines.append("nothing can happen from the last state but gdb hanging up")
    elif cex.kind == "lasso":
        lines.append("---- back to the start of the loop ----")
    return "\n".join(lines)


def to_dot(res: Result, title: str) -> str:
    """A vertical chain: one box per state (each vCPU one row), edges labelled by the
    move and what it sent; the breaking move or state in red."""
    sys = res.sys
    cex = res.counterexample
    start = sys.initial()
    if res.symmetry:
        start = Canon(sys)(start)
    rows = [("initial", [], start)] + [(label_text(lab), log, st) for lab, log, st
                                       in replay(res)]
    out = ["digraph counterexample {", '  rankdir=TB; node [shape=plaintext fontname="Helvetica"];',
           f'  labelloc=t; label="{_esc(title)}\\n{_esc(str(cex.violation))}";',
           '  edge [fontname="Helvetica" fontsize=10];']
    for n, (_lab, _log, st) in enumerate(rows):
        bad = n == len(rows) - 1 and cex.kind in ("state", "deadlock")
        out.append(f"  s{n} [label=<{_table(sys, st, n, bad)}>];")
    for n in range(1, len(rows)):
        lab, log, _ = rows[n]
        bad = n == len(rows) - 1 and cex.kind == "move"
        events = [x.strip() for x in log if not x.startswith(" ")]
        text = "\\n".join([lab] + [_esc(p) for p in events[:5]])
        color = ' color=red fontcolor=red penwidth=2' if bad else ""
        out.append(f'  s{n - 1} -> s{n} [label="{_esc_keep(text)}"{color}];')
    if cex.kind == "lasso":
        out.append(f'  s{len(rows) - 1} -> s{cex.loop_at} [style=dashed color=red fontcolor=red '
                   'label="the same state: the loop repeats forever"];')
    out.append("}")
    return "\n".join(out) + "\n"


def _table(sys: System, st, n: int, bad: bool) -> str:
    color = "#ffdddd" if bad else "#eeeeee"
    cells = [(f'<tr><td bgcolor="{color}"><b>{n}</b> {html.escape(describe_global(sys, st))}'
             "</td></tr>")]
    for i in range(sys.n):
        cells.append(f'<tr><td align="left">vCPU{i}: {html.escape(describe_vcpu(sys, st, i))}'
                     "</td></tr>")
    return '<table border="0" cellborder="1" cellspacing="0">' + "".join(cells) + "</table>"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _esc_keep(s: str) -> str:
    return s.replace('"', '\\"')


def write_diagram(res: Result, name: str, out: Path = OUT, svg: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    dot_path = out / f"{name}.dot"
    dot_path.write_text(to_dot(res, name))
    written = [dot_path]
    dot = shutil.which("dot")
    if svg and dot:
        svg_path = out / f"{name}.svg"
        subprocess.run([dot, "-Tsvg", "-o", str(svg_path), str(dot_path)], check=True)
        written.append(svg_path)
    return written
