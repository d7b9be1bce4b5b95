"""Loads the mypyc-compiled build of the hot pure-Python modules, all or nothing.

``./setup.sh`` compiles the modules in ``MODULES`` with mypyc (``stub.compiled_build``)
into ``.build/compiled/`` (never next to the sources: Python prefers an extension module
to a ``.py`` of the same name, so a stale one there would silently run old code), and
writes a ``.pth`` file into the venv that runs ``install()`` at every interpreter start,
before anything imports the modules: the stub, pytest, the proofs, bench subprocesses.

``install()`` puts a meta-path finder first on ``sys.meta_path`` only if the build's
manifest records, for every module of ``MODULES`` and no other, the SHA-256 of the
source file as it is now, and this interpreter's extension suffix. Otherwise nothing
compiled is loaded (mypyc modules of one build call each other natively and share their
classes: a mix of compiled and pure copies would break ``isinstance``). The finder serves
a module only when its parent package is this checkout's (another tree's ``stub`` run
with this venv stays pure).

``VMSTUB_PURE=1`` forces pure Python. A stale build is reported once, on stderr, by
``python -m stub`` run from a terminal only (tests read the stub's stderr line by line).

This file is run by path from the ``.pth`` (as module ``vmstub_compiled``) so that the
interpreter's start imports no package of the project. It must stay cheap: it hashes
the few sources and reads one JSON file.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import itertools
import json
import os
import sys
from pathlib import Path

#: The compiled modules. Edits to them are type-level only: see docs/compiled.md.
MODULES = (
    "model.actions",
    "model.caps",
    "model.coordinator",
    "model.errors",
    "model.invariants",
    "model.lifecycle",
    "model.machine",
    "model.points",
    "model.resume",
    "model.step_mode",
    "model.tf_shadow",
    "stub.connection",
    "stub.rsp.framing",
    "stub.rsp.hexutil",
    "stub.rsp.packets",
    "stub.rsp.registers",
    "stub.session",
)

#: mypyc's group name: the shared library of the build is ``vmstub__mypyc``.
GROUP = "vmstub"
ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build" / "compiled"
MANIFEST = BUILD / "manifest.json"
PTH_NAME = "vmstub_compiled.pth"
FIX = "run ./setup.sh to rebuild it"


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def source_hashes() -> dict[str, str]:
    """SHA-256 of every module's source as it is now."""
    return {m: hashlib.sha256(source_of(m).read_bytes()).hexdigest() for m in MODULES}


def ext_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def read_manifest() -> dict | None:
    try:
        return json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return None


def check(manifest: dict | None) -> str | None:
    """Why the build described by ``manifest`` must not be loaded, or None if it may."""
    if manifest is None:
        return "no compiled build"
    if manifest.get("suffix") != ext_suffix():
        return "the compiled build is for another Python"
    try:
        now = source_hashes()
    except OSError as err:
        return f"a compiled module's source is unreadable ({err})"
    if manifest.get("modules") != now:
        changed = sorted(set(now.items()) ^ set(manifest.get("modules", {}).items()))
        names = sorted({m for m, _ in changed})
        return f"the compiled build is stale ({', '.join(names)} changed)"
    return None


class CompiledFinder:
    """Finds the modules of one verified build in its directory ``build``."""

    def __init__(self, build: Path, modules: list[str], group: str):
        self.build = build
        self.parents = {m.rpartition(".")[0] for m in modules}
        self.files = {m: build.joinpath(*m.split(".")).with_name(
            m.rpartition(".")[2] + ext_suffix()) for m in modules}
        self.files[group + "__mypyc"] = build / (group + "__mypyc" + ext_suffix())

    def find_spec(self, fullname, path, target=None):
        so = self.files.get(fullname)
        if so is None:
            return None
        parent = fullname.rpartition(".")[0]
        if parent:  # only this checkout's packages: their __init__ stays pure
            here = str(ROOT.joinpath(*parent.split(".")))
            if not any(os.path.realpath(p) == here for p in (path or ())):
                return None
        return importlib.util.spec_from_file_location(fullname, so)


def active() -> bool:
    """Is a compiled build loaded in this process (or would be, on import)?"""
    return any(isinstance(f, CompiledFinder) or type(f).__name__ == "CompiledFinder"
               for f in sys.meta_path)


def _warn_stale(why: str) -> None:
    """Once, from ``python -m stub`` in a terminal: everything else stays quiet."""
    argv = getattr(sys, "orig_argv", [])
    running_stub = any(a == "-m" and b == "stub" for a, b in itertools.pairwise(argv))
    if running_stub and sys.stderr is not None and sys.stderr.isatty():
        print(f"vmstub: running as pure Python: {why}; {FIX}", file=sys.stderr)


def install() -> bool:
    """Install the finder if the build is whole and current; True if it is in place.
    Idempotent (site runs a venv's ``.pth`` files once per site-packages path)."""
    if active():
        return True
    if os.environ.get("VMSTUB_PURE") == "1":
        return False
    manifest = read_manifest()
    why = check(manifest)
    if why is not None:
        if manifest is not None:
            _warn_stale(why)
        return False
    assert manifest is not None
    build = BUILD / manifest["dir"]
    sys.meta_path.insert(0, CompiledFinder(build, list(MODULES), manifest["group"]))
    return True


def pth_line() -> str:
    """The ``.pth`` line that runs ``install()`` from this file at interpreter start."""
    here = str(Path(__file__).resolve())
    # Nothing at all if this file is gone (an older checkout): site would print an error.
    return ("import os, sys, importlib.util as u; "
            f"sys.modules.get('vmstub_compiled') or not os.path.exists({here!r}) or ("
            f"s := u.spec_from_file_location('vmstub_compiled', {here!r}), "
            "m := u.module_from_spec(s), sys.modules.__setitem__(s.name, m), "
            "s.loader.exec_module(m), m.install())\n")


def write_pth(site_packages: Path) -> Path:
    """Write (or refresh) the ``.pth`` file in ``site_packages``."""
    pth = site_packages / PTH_NAME
    line = pth_line()
    if not pth.exists() or pth.read_text() != line:
        pth.write_text(line)
    return pth


def main(argv: list[str]) -> int:
    """``python -m stub.compiled_loader [--status | --write-pth SITE_PACKAGES]``."""
    if argv[:1] == ["--write-pth"] and len(argv) == 2:
        write_pth(Path(argv[1]))
        return 0
    if argv in ([], ["--status"]):
        why = check(read_manifest())
        print("compiled build: " + ("loadable" if why is None else why)
              + ("; loaded in this process" if active() else "; not loaded"))
        return 0
    print("usage: python -m stub.compiled_loader [--status | --write-pth DIR]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
