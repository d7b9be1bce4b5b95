"""stub.compiled_loader: the mypyc build is loaded whole and current, or not at all."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from stub import compiled_loader as L


def _manifest(**changes):
    m = {"dir": "x", "group": L.GROUP, "mypy": "0", "suffix": L.ext_suffix(),
         "modules": L.source_hashes()}
    m.update(changes)
    return m


def test_a_manifest_matching_every_source_may_be_loaded():
    assert L.check(_manifest()) is None


def test_no_build_a_stale_source_another_python_or_another_list_are_refused():
    assert L.check(None) == "no compiled build"
    stale = {**L.source_hashes(), "stub.session": "0" * 64}
    assert "stub.session changed" in L.check(_manifest(modules=stale))
    assert "another Python" in L.check(_manifest(suffix=".cpython-27.so"))
    fewer = dict(list(L.source_hashes().items())[1:])
    assert "stale" in L.check(_manifest(modules=fewer))


def test_all_or_nothing_in_this_process():
    """Every module of the list is compiled here, or none is (whichever mode runs)."""
    files = [importlib.import_module(m).__file__ for m in L.MODULES]
    compiled = {not f.endswith(".py") for f in files}
    assert compiled == {L.active()}, files


def test_the_finder_serves_only_this_checkouts_packages(tmp_path):
    finder = L.CompiledFinder(tmp_path, ["stub.session"], L.GROUP)
    here = [str(L.ROOT / "stub")]
    assert finder.find_spec("stub.session", here).origin.startswith(str(tmp_path))
    assert finder.find_spec("stub.session", [str(tmp_path / "other" / "stub")]) is None
    assert finder.find_spec("stub.runtime", here) is None
    assert finder.find_spec(L.GROUP + "__mypyc", None) is not None


def test_vmstub_pure_forces_plain_python_in_a_new_interpreter():
    code = "import stub.session, model.coordinator as c; print(stub.session.__file__, c.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env={"VMSTUB_PURE": "1", "PATH": ""},
                         capture_output=True, text=True, check=True, cwd=L.ROOT)
    assert [Path(f).suffix for f in out.stdout.split()] == [".py", ".py"], out
    assert out.stderr == ""


def test_the_pth_line_installs_at_most_once():
    line = L.pth_line()
    assert line.startswith("import ") and line.count("\n") == 1  # site runs such lines
    # site may run a venv's .pth twice (lib and lib64): in a new interpreter, not here
    # (a finder installed after the modules were imported would mix the two kinds).
    code = (f"exec({line!r}); exec({line!r}); import sys; "
            "print(sum(type(f).__name__ == 'CompiledFinder' for f in sys.meta_path))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=L.ROOT)
    assert out.stdout.strip() in ("0", "1"), out
