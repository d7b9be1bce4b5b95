"""Builds the mypyc-compiled copy of ``stub.compiled_loader.MODULES`` (run by ./setup.sh).

It first writes the venv's ``.pth`` that loads the build (``stub.compiled_loader``).

``python -m stub.compiled_build [--if-stale]``: compile the modules with mypyc into a
fresh directory ``.build/compiled/<stamp>-<time>/`` and then, as the last step, point
``.build/compiled/manifest.json`` at it (replaced atomically: a process starting
meanwhile sees the old build whole or the new one whole). The stamp is a hash of the
sources, mypy's version and the interpreter's extension suffix. ``--if-stale`` does
nothing when the manifest already matches. Exit status 0 on success; on failure 1 and
one line on stderr (mypyc's and the compiler's output go to ``.build/compile.log``).
The previous build directory is kept (a process that started with it may still import
from it); older ones are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

from stub import compiled_loader as L

LOG = L.BUILD.parent / "compile.log"


def mypy_version() -> str | None:
    try:
        return metadata.version("mypy")
    except metadata.PackageNotFoundError:
        return None


def stamp(hashes: dict[str, str], mypy: str) -> str:
    text = json.dumps([hashes, mypy, L.ext_suffix()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def up_to_date(mypy: str) -> bool:
    manifest = L.read_manifest()
    return L.check(manifest) is None and manifest is not None and manifest.get("mypy") == mypy


# Run in a child interpreter (cwd = the checkout) so that mypyc sees the module names
# stub.rsp.framing etc. and setuptools' noise stays in the log.
_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
paths, out, temp, c_dir = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4]
setup(name="vmstub_compiled", script_args=["build_ext", "--build-lib", out,
      "--build-temp", temp, "--parallel", "2"],
      ext_modules=mypycify(["--follow-imports=silent"] + paths,
                           opt_level="3", group_name="vmstub", target_dir=c_dir))
"""


def build(mypy: str) -> tuple[Path, dict[str, str]]:
    """Compile into a new stamped directory; returns it and the hashes of the sources
    it was built from. Raises on failure."""
    hashes = L.source_hashes()
    # A new directory each time: a live one (same sources, forced rebuild) is never
    # touched while processes may still import from it.
    out = L.BUILD / f"{stamp(hashes, mypy)}-{time.time_ns():x}"
    work = L.BUILD.parent / "work"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    paths = [str(L.source_of(m).relative_to(L.ROOT)) for m in L.MODULES]
    with open(LOG, "w") as log:
        status = subprocess.run(
            [sys.executable, "-c", _SETUP, ",".join(paths), str(out), str(work / "temp"),
             str(work / "c")],
            check=False, cwd=L.ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "VMSTUB_PURE": "1"}).returncode
    if status != 0:
        shutil.rmtree(out, ignore_errors=True)
        raise RuntimeError(f"mypyc or the C compiler exited with status {status}")
    missing = [f for f in L.CompiledFinder(out, list(L.MODULES), L.GROUP).files.values()
               if not f.is_file()]
    if missing:
        raise RuntimeError(f"the build has no {missing[0].name}")
    if L.source_hashes() != hashes:
        raise RuntimeError("a source changed during the build")
    shutil.rmtree(work, ignore_errors=True)
    return out, hashes


def publish(out: Path, hashes: dict[str, str], mypy: str) -> None:
    """Point the manifest at ``out`` (atomically); drop all but it and the last one."""
    previous = (L.read_manifest() or {}).get("dir")
    manifest = {"dir": out.name, "group": L.GROUP, "mypy": mypy, "suffix": L.ext_suffix(),
                "modules": hashes}
    tmp = L.MANIFEST.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, L.MANIFEST)
    for d in L.BUILD.iterdir():
        if d.is_dir() and d.name not in (out.name, previous):
            shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv not in ([], ["--if-stale"]):
        print("usage: python -m stub.compiled_build [--if-stale]", file=sys.stderr)
        return 2
    mypy = mypy_version()
    if mypy is None:
        print("setup: mypy is not installed (the 'compile' extra); the stub runs as pure "
              "Python", file=sys.stderr)
        return 1
    L.write_pth(Path(sysconfig.get_paths()["purelib"]))
    if argv and up_to_date(mypy):
        return 0
    L.BUILD.mkdir(parents=True, exist_ok=True)
    print(f"setup: compiling {len(L.MODULES)} modules with mypyc {mypy} "
          "(about a minute)", file=sys.stderr)
    started = time.monotonic()
    try:
        out, hashes = build(mypy)
    except Exception as err:  # noqa: BLE001 - any failure: one line, then pure Python
        print(f"setup: the mypyc build failed ({err}; see {os.path.relpath(LOG, L.ROOT)}); "
              "the stub runs as pure Python", file=sys.stderr)
        try:
            L.MANIFEST.unlink()  # a stale build would only be refused, with a warning
        except FileNotFoundError:
            pass
        return 1
    publish(out, hashes, mypy)
    print(f"setup: compiled in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
