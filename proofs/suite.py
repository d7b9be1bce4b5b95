"""The configurations ``pytest proofs/`` checks, shared with the CLI.

Sizes are picked so the whole suite runs in about a minute on a 2-core machine:
1 and 2 vCPUs with the full abstract program (every instruction kind, both
personalities that step with TF, with and without interrupt masking), 3 vCPUs with a
smaller program (the multi-vCPU races are in the protocol, not in the flags), 4 vCPUs
with symmetry reduction. ``python -m proofs check`` runs bigger ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from proofs.config import INT3, NOP, POPF, PUSHF, Config


@dataclass(frozen=True)
class Case:
    cfg: Config
    symmetry: bool = False
    liveness: bool = False

    @property
    def id(self) -> str:
        return self.cfg.name + ("-sym" if self.symmetry else "")


FULL = (NOP, PUSHF, POPF, INT3)
SMALL = (NOP, INT3)

CASES: tuple[Case, ...] = (
    # one vCPU: every personality, both breakpoints
    *(Case(Config(vcpus=1, personality=p, bp_gpas=(0, 1)), liveness=True)
      for p in ("intel", "amd", "amd-nomask", "both", "none")),
    Case(Config(vcpus=1, wait=True)),
    # two vCPUs, the full program
    Case(Config(vcpus=2, personality="intel"), liveness=True),
    Case(Config(vcpus=2, personality="amd"), liveness=True),
    Case(Config(vcpus=2, personality="amd-nomask"), liveness=True),
    Case(Config(vcpus=2, personality="amd", bp_gpas=(0, 1))),
    Case(Config(vcpus=2, personality="amd", wait=True)),
    # three vCPUs: breakpoints, the guest's int3, steps racing other vCPUs
    Case(Config(vcpus=3, personality="intel", program=SMALL), liveness=True),
    Case(Config(vcpus=3, personality="amd", program=SMALL), liveness=True),
    Case(Config(vcpus=3, personality="amd-nomask", program=(NOP, PUSHF), bp_gpas=(0, 1))),
    # four vCPUs, reduced by symmetry
    Case(Config(vcpus=4, personality="amd", program=SMALL), symmetry=True),
)
