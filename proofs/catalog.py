"""Every counterexample the project keeps: the seeded mutants, the README's two
questions about AMD stepping, and the findings about ``model/``. Each entry runs the
checker and gives a Result whose counterexample is the shortest one; ``python -m
proofs counterexamples`` prints them and renders them into
``diagrams/counterexamples/``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from proofs.checker import Result
from proofs.config import INT3, NOP, Config
from proofs.mutants import MUTANTS
from proofs.runs import correct, mutant


@dataclass(frozen=True)
class Entry:
    name: str  # file name in diagrams/counterexamples/
    title: str
    expect: str  # the property the counterexample breaks
    run: Callable[[], Result]


ONE = Config(vcpus=1)

QUESTIONS: tuple[Entry, ...] = (
    Entry("q-a-nomask-irq-without-fixup",
          "(a) amd-nomask, an interrupt during a TF step, VMM without the frame fix-up "
          "(bhyve's kernel): the handler sees the debugger's TF", "P5",
          lambda: correct(ONE.with_(personality="amd-nomask", program=(NOP,),
                                    frame_fixup=False))),
    Entry("q-a-nomask-irq-stepi-lands-in-handler",
          "(a)/(b) amd-nomask with the fix-up: safe, but stepi stops at the first "
          "instruction of the timer interrupt handler", "U1",
          lambda: correct(ONE.with_(personality="amd-nomask", program=(NOP,),
                                    checks=frozenset({"U1"})))),
    Entry("q-b-mask-without-fixup-int3-frame",
          "(b) amd with MASK_HWINTR but without the frame fix-up: stepping the guest's "
          "own int3 still leaks TF into the #BP frame", "P5",
          lambda: correct(ONE.with_(program=(NOP, INT3), frame_fixup=False))),
)

# What the VMM side must do, shown by switching it off: the checker's environment routes
# iret through the POPF intercept (stub/vmm does, tests/vmm/test_step_amd.py).
QUESTIONS += (
    Entry("q-vmm-iret-not-intercepted",
          "AMD: stepping the iret of a handler entered during a step: without an IRET "
          "intercept the shadow keeps the handler's TF and the guest's own TF=1 is lost",
          "P5", lambda: correct(ONE.with_(iret_fixup=False))),
)

# Open findings about model/: each still reproduces (test_questions.py says so).
FINDINGS: tuple[Entry, ...] = ()  # open findings: none


@dataclass(frozen=True)
class Fixed:
    """A finding that was fixed in model/ or the runtime: its configuration must pass."""

    name: str
    title: str
    run: Callable[[], Result]


FIXED: tuple[Fixed, ...] = (
    Fixed("finding-own-db-swallowed",
          "AMD: a debugger step of an instruction the guest itself single-steps (TF=1) "
          "took the guest's #DB as the step trap; now the VMM hands it back (5d)",
          lambda: correct(ONE.with_(checks=frozenset({"5d"})))),
    Fixed("finding-exit-before-query",
          "the guest powers off between gdb's connect and its '?': W must wait for '?', "
          "and '?' must be answered with it",
          lambda: correct(ONE.with_(program=(NOP,), poweroff=True))),
    Fixed("finding-boot-race",
          "gdb connects before the boot vCPU's thread registered: '?' must wait until "
          "there is a vCPU to name",
          lambda: correct(ONE.with_(program=(NOP,), boot_registered=False))),
)

MUTANT_ENTRIES: tuple[Entry, ...] = tuple(
    Entry(f"mutant-{m.name}", f"mutant {m.name}: {m.doc}", m.expect,
          lambda name=m.name: mutant(name))
    for m in MUTANTS
)

ALL: tuple[Entry, ...] = QUESTIONS + FINDINGS + MUTANT_ENTRIES
