"""The committed diagrams are what the model generates now."""

import shutil

import pytest

from model.diagrams import DIAGRAMS, MACHINES, dot_source


@pytest.mark.parametrize("spec", MACHINES, ids=lambda s: s.name)
def test_committed_dot_is_current(spec):
    committed = (DIAGRAMS / f"{spec.name}.dot").read_text()
    assert committed == dot_source(spec), "run: python -m model.diagrams"


@pytest.mark.parametrize("spec", MACHINES, ids=lambda s: s.name)
def test_dot_names_every_state_and_shows_conditions(spec):
    src = dot_source(spec)
    for state in spec.states:
        assert f"{state} [label=" in src
    for tx in spec.transitions:
        guard = " & ".join([*tx.conditions, *(f"!{u}" for u in tx.unless)])
        if guard:
            assert f"{tx.trigger} [{guard}]" in src


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
def test_svg_renders(tmp_path):
    from model.diagrams import write_all

    written = write_all(tmp_path)
    svgs = [p for p in written if p.suffix == ".svg"]
    assert len(svgs) == len(MACHINES)
    for svg in svgs:
        assert svg.read_text().lstrip().startswith("<?xml")
        assert (DIAGRAMS / svg.name).read_text() == svg.read_text()
