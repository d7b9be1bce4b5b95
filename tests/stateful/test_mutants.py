"""The stateful tests catch a broken protocol, and say how in a few readable moves.

Each case plugs one seeded bug from proofs/mutants.py into the deterministic stub and
runs the state machine of tests/stateful/machine.py (2 vCPUs, starting booted with gdb
attached and stopped) until hypothesis fails it and shrinks the failure. Checked about
the failure: it is the property the bug breaks, and the printed trace (hypothesis'
``__notes__``: one ``Draw N: move(...)`` line per move) is short and names the moves
that matter. For instance ReportedStopKept shrinks to::

    state.start()
    Draw 1: insert(site='cpu_loop')
    Draw 2: continue_all()
    Draw 3: run(vcpu=0, k=100, deliver=False)
    Draw 4: deliver(vcpu=0)
    Draw 5: run(vcpu=1, k=1, deliver=False)
    Draw 6: deliver(vcpu=1)
    Draw 7: step(vcpu=0)
    state.teardown()
    Violation: stale stop: T05 for vCPU 0 (thread 1) swbreak at 0xffffffff801010eb, but
    vCPU 0 has no unreported hit there ({})

(gdb is told vCPU 0 hit cpu_loop; it steps vCPU 0 and is told the same hit again.)

The coordinator mutants run with a lockstep model that has the *same* bug, so the
lockstep comparison cannot see them: what catches them is what gdb and the VMM see (a
stale stop reply, a SIGTRAP for a thread nobody stepped, a reply to a Ctrl-C that came
after the stop, a vCPU running with a suspend request, a step capability left on).
The TF shadow mutant lives in the VMM and is caught by the state of a parked vCPU. The
last case keeps the true model in lockstep with a broken runtime model, to show that
comparison failing on its own.

Numbers (this machine, derandomized): every mutant is found within the first few dozen
runs (< 1 s) and shrunk to 1-7 moves; the module takes ~14 s, ReportedStopKept's
shrinking ~9 s of it.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import initialize, run_state_machine_as_test

from model.coordinator import Coordinator
from model.tf_shadow import TfShadow
from proofs.mutants import (
    MaskLeftOn,
    NoClearSuspend,
    ReportedStopKept,
    SigintWhenStopped,
    StepEverywhere,
    TfNotRestored,
)
from tests.stateful.driver import Violation
from tests.stateful.machine import StubMachine
from tests.stateful.shadow import MachineCoordinator, with_machines

FIND = settings(
    max_examples=200,
    stateful_step_count=25,
    derandomize=True,  # the same failure, shrunk the same way, on every run
    database=None,
    deadline=None,
    print_blob=False,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_MOVES = 12  # a shrunk trace longer than this is not what a reader can follow
MOVE_LINE = re.compile(r"Draw \d+: (\w+)\((.*)\)$")


def machine(coordinator=Coordinator, tf=TfShadow, lockstep_true_model=False, vcpus=2):
    class Mutated(StubMachine):
        PERSONALITY = "demo"
        VCPUS = vcpus
        COORDINATOR = coordinator
        SHADOW = MachineCoordinator if lockstep_true_model else with_machines(coordinator)
        TF_SHADOW = tf

        @initialize()
        def start(self) -> None:
            """Every AP started, gdb attached and stopped: the traces begin where the
            protocol does (booting and attaching are covered by the main tests)."""
            self.clean = False
            self.rig.boot()
            for i in self.rig.unnoticed():
                self.rig.notice_start(i)
            self.rig.attach()
            self.rig.settle()
    Mutated.__name__ = f"With{coordinator.__name__ if tf is TfShadow else tf.__name__}"
    return Mutated


def failure(machine_cls) -> tuple[Violation, list[tuple[str, str]]]:
    with pytest.raises(Violation) as caught:
        run_state_machine_as_test(machine_cls, settings=FIND)
    notes = getattr(caught.value, "__notes__", [])
    moves = [MOVE_LINE.match(line).groups() for line in notes if MOVE_LINE.match(line)]
    trace = "\n".join(notes)
    assert moves, f"no moves printed:\n{trace}"
    assert len(moves) <= MAX_MOVES, f"trace not shrunk ({len(moves)} moves): {caught.value}\n{trace}"
    assert all(len(line) < 100 for line in notes), trace
    return caught.value, moves


def names(moves) -> list[str]:
    return [name for name, _args in moves]


# (mutant, what the failure must say, moves the shrunk trace must contain one of)
RESUMES = {"continue_all", "continue_one", "step", "step_continue"}
CASES = {
    # A breakpoint report is not consumed by the next resume: it is reported again.
    "ReportedStopKept": ({"coordinator": ReportedStopKept}, "stale stop", RESUMES),
    # ``vCont;s:N`` arms every vCPU, so another thread's trap can claim the stop.
    "StepEverywhere": ({"coordinator": StepEverywhere}, "stray SIGTRAP",
                       {"step", "step_continue"}),
    # A Ctrl-C that arrives after the stop reply is answered too.
    "SigintWhenStopped": ({"coordinator": SigintWhenStopped}, "while gdb waits for none",
                          {"late_ctrl_c"}),
    # A resume does not withdraw the suspend requests.
    "NoClearSuspend": ({"coordinator": NoClearSuspend}, "runs with suspend=True", RESUMES),
    # MASK_HWINTR stays on after the step.
    "MaskLeftOn": ({"coordinator": MaskLeftOn}, "['mask_hwintr'] on", {"step",
                                                                       "step_continue"}),
    # Disabling RFLAGS_TF leaves the debugger's TF in the guest's RFLAGS (a VMM bug).
    "TfNotRestored": ({"tf": TfNotRestored}, "RFLAGS.TF set", {"step", "step_continue"}),
    # The runtime's model is broken, the lockstep model is not: they part at once.
    "StepEverywhere, true model in lockstep": (
        {"coordinator": StepEverywhere, "lockstep_true_model": True},
        "runtime model != lockstep model", {"step", "step_continue"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stateful_tests_catch_the_mutant(case):
    config, message, needed = CASES[case]
    err, moves = failure(machine(**config))
    assert message in str(err), str(err)
    assert set(names(moves)) & needed, moves
