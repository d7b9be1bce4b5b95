"""Render every protocol machine to DOT and SVG in ``diagrams/``.

``python -m model.diagrams`` regenerates the files; a test fails when the committed DOT
differs from what the model produces now. The DOT comes from ``transitions``'
GraphMachine (graphviz engine, conditions shown) built from the same specs the stub and
the checker run; the SVG needs graphviz's ``dot`` program.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from transitions.extensions import GraphMachine

from model.lifecycle import VCPU
from model.machine import MachineSpec
from model.tf_shadow import TF_SHADOW

MACHINES: tuple[MachineSpec, ...] = (VCPU, TF_SHADOW)
DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"


class _Inert:
    pass


def dot_source(spec: MachineSpec) -> str:
    model = _Inert()
    spec.attach(
        model,
        machine_cls=GraphMachine,
        graph_engine="graphviz",
        show_conditions=True,
        title=spec.title,
    )
    graph = model.get_graph()
    graph.graph_attr.update(rankdir="LR", fontname="Helvetica", nodesep="0.5", ranksep="0.9")
    return graph.source


def write_all(out: Path = DIAGRAMS, svg: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in MACHINES:
        dot_path = out / f"{spec.name}.dot"
        dot_path.write_text(dot_source(spec))
        written.append(dot_path)
        if svg:
            svg_path = out / f"{spec.name}.svg"
            render_svg(dot_path, svg_path)
            written.append(svg_path)
    return written


def render_svg(dot_path: Path, svg_path: Path) -> None:
    dot = shutil.which("dot")
    if dot is None:
        raise SystemExit("graphviz 'dot' is not installed (apt-get install graphviz)")
    subprocess.run([dot, "-Tsvg", "-o", str(svg_path), str(dot_path)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.diagrams", description=__doc__)
    parser.add_argument("--out", type=Path, default=DIAGRAMS)
    parser.add_argument("--no-svg", action="store_true", help="write DOT only")
    args = parser.parse_args(argv)
    for path in write_all(args.out, svg=not args.no_svg):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
