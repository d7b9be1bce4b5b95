"""``python -m bench --baseline REV``: our stub at an older revision as one more column
("base"), measured in the same run, in turn with our stub at the working tree.

REV is checked out into a temporary ``git worktree`` for the run and removed afterwards
(also on an error or Ctrl-C); ``targets.start_base`` runs REV's own ``stub`` and
``model`` from there, with the same venv.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import elf

ROOT = elf.ROOT


@dataclass(frozen=True)
class Base:
    rev: str  # short hash
    path: Path  # the worktree
    current: str  # what "ours" is: HEAD's short hash, and whether the tree has changes

    @property
    def label(self) -> str:
        return f"ours@{self.rev}"


def git(*args: str, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    if check and out.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


@contextmanager
def checkout(rev: str) -> Iterator[Base]:
    full = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    short = git("rev-parse", "--short", full)
    tmp = Path(tempfile.mkdtemp(prefix="bench-base-"))
    tree = tmp / short
    try:
        git("worktree", "add", "--detach", str(tree), full)
        guest = "stub/guests/demo/demo.elf"
        if (tree / guest).read_bytes() != (ROOT / guest).read_bytes():
            print(f"warning: {guest} differs at {short}; addresses are taken from the "
                  "current one", file=sys.stderr)
        yield Base(short, tree, head())
    finally:
        git("worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        git("worktree", "prune", check=False)


def head() -> str:
    """The current tree, for the report: HEAD's short hash, + if it has changes."""
    dirty = git("status", "--porcelain", "--untracked-files=no", check=False)
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")
