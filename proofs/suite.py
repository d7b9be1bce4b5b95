"""The configurations ``pytest proofs/`` checks, shared with the CLI.

Sizes are picked so the whole suite runs in about a minute on a 2-core machine:
1 and 2 vCPUs with the full abstract program (every instruction kind, both
personalities that step with TF, with and without interrupt masking), 3 vCPUs with a
smaller program (the multi-vCPU races are in the protocol, not in the flags), 4 vCPUs
with symmetry reduction. Debug points, range steps and triple faults (issues 13 and 14)
get their own configurations, on MTRAP (and one on AMD), each with a small program
(``store`` is the access the watchpoint catches) rather than in the full product.
``python -m proofs check`` runs bigger ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from proofs.config import INT3, NOP, POPF, PUSHF, STORE, Config


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
WATCH = (NOP, STORE)

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
    # watchpoints: hits racing steps and breakpoints, on vCPUs that start later,
    # removed while pending, completed only before their own stop
    Case(Config(vcpus=2, personality="intel", program=WATCH, watch=("write",)), liveness=True),
    Case(Config(vcpus=2, personality="amd", program=WATCH, bp_gpas=(), watch=("write",),
                hw_addrs=(0,))),
    Case(Config(vcpus=3, personality="intel", program=WATCH, bp_gpas=(), watch=("write",))),
    # range steps (vCont;r) with a watchpoint inside the range
    Case(Config(vcpus=2, personality="intel", program=(NOP, NOP, STORE), bp_gpas=(),
                step_range=(0, 2), watch=("write",)), liveness=True),
    Case(Config(vcpus=3, personality="intel", program=(NOP, NOP, STORE), bp_gpas=(),
                step_range=(0, 2), watch=("write",)), symmetry=True),
    # triple faults (a SIGSEGV stop) and monitor system_reset
    Case(Config(vcpus=2, personality="intel", program=SMALL, faults=True, gdb_reset=True),
         liveness=True),
    Case(Config(vcpus=3, personality="intel", program=WATCH, bp_gpas=(), watch=("write",),
                faults=True), symmetry=True),
)
