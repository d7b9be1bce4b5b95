"""Seeded protocol bugs. Each is a subclass of the real Coordinator or TfShadow (or an
alternative vCPU MachineSpec, or a different StepMode probe order) used for one run
only, with the configuration that kills it and the property expected to break.

The checker must find every one of them with a counterexample while the real model
passes the same configuration; ``test_mutants`` checks both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from model import lifecycle
from model.actions import Cap, ClearSuspend, CompleteAccess, RestoreBreakpoint, SetCap
from model.coordinator import Coordinator
from model.machine import MachineSpec, run_effects, select
from model.resume import Resume, ResumeRequest
from model.tf_shadow import TfShadow
from proofs.config import INT3, NOP, STORE, Config
from proofs.env import Mutation


def _spec(name: str, edit) -> MachineSpec:
    """The vCPU lifecycle with ``edit(tx) -> tx | None`` applied to each transition."""
    txs = tuple(t for t in (edit(tx) for tx in lifecycle.VCPU.transitions) if t is not None)
    return MachineSpec(f"vcpu-{name}", lifecycle.VCPU.title, lifecycle.VCPU.states,
                       lifecycle.VCPU.initial, txs)


class _SpecCoordinator(Coordinator):
    """A coordinator that fires an alternative lifecycle spec."""

    SPEC: MachineSpec = lifecycle.VCPU

    def _fire(self, i: int, trigger: str, *args) -> None:
        branch = select(self.SPEC, self.states[i], trigger, self, i, *args)
        self.states[i] = branch.dest
        run_effects(branch, self, i, *args)


# ----------------------------------------------------------------- TF shadow
class TfNotRestored(TfShadow):
    def restore_guest_tf(self) -> None:
        pass  # disable leaves the debugger's TF in RFLAGS


class PopfShadowStale(TfShadow):
    def take_popped_tf(self, tf_after: bool) -> None:
        pass  # the shadow keeps the TF from before the popf


class PushfImageNotFixed(TfShadow):
    def fix_pushed_image(self, _tf_after: bool) -> None:
        pass


class FrameNotFixed(TfShadow):
    def fix_frame_image(self) -> None:
        self.shadow = False  # bookkeeping kept, the frame left with TF=1


# --------------------------------------------------------------- coordinator
class StopBeforeParked(Coordinator):
    @property
    def all_parked(self) -> bool:
        return True  # report as soon as everyone is *asked* to stop


class PendingHitDropped(Coordinator):
    def claim_if_free(self, i: int, *_) -> None:
        if self.owner is None and self.attached:
            self.claim(i)
        else:
            self.want_stopped.add(i)
            self._consume(i)  # a second vCPU's breakpoint event thrown away


class StepEverywhere(Coordinator):
    def resume(self, request):
        if request.steps:  # every vCPU armed for one instruction
            request = ResumeRequest(tuple((i, Resume.STEP) for i in sorted(self.active)))
        return super().resume(request)


class MaskLeftOn(Coordinator):
    def disarm(self, i: int, *_) -> None:
        for cap in sorted(self.caps[i], key=lambda c: c.value):
            if cap is not Cap.MASK_HWINTR:
                self._out.append(SetCap(i, cap, False))
        self.caps[i] = frozenset()


class NewVcpuRuns(Coordinator):
    def holding(self, i: int, *_) -> bool:
        return False


class ReportedStopKept(Coordinator):
    def _consume_reported_stop(self) -> None:
        if self.owner is not None and self.states[self.owner] == "at_breakpoint":
            self.owner = None  # the reported breakpoint is not consumed: still pending
            return
        super()._consume_reported_stop()


class SigintWhenStopped(Coordinator):
    def interrupt(self):
        if self.attached and not self.ended:
            self.reply_owed = True  # a Ctrl-C always gets an answer, even when stopped
        return super().interrupt()


class EventResumed(_SpecCoordinator):
    """A resume releases vCPUs parked with an unreported breakpoint event: the real
    resume without its "a pending event is this resume's stop" branch."""

    SPEC = _spec("event-resumed", lambda tx: replace(
        tx, source=("suspended", "at_breakpoint")) if tx.trigger.startswith("release_") else tx)

    def resume(self, request):
        self._begin()
        self.require_stopped()
        plan = request.plan(self.active)
        self._check_plan(plan, request)
        self.release_new = request.default is Resume.CONTINUE
        self._consume_reported_stop()
        self._drop_stale_hits()
        self.reply_owed = True
        self.why = None
        for i, how in sorted(plan.items()):
            self.want_stopped.discard(i)
            self._fire(i, "release_step" if how is Resume.STEP else "release_continue")
            self.pending_hits[i] = None
            self._out.append(ClearSuspend(i))
        return self._out


class ForeignInt3Swallowed(_SpecCoordinator):
    SPEC = _spec("swallow", lambda tx: replace(tx, effects=()) if tx.trigger == "foreign_int3"
                 else tx)


class NoClearSuspend(Coordinator):
    def resume(self, request):
        out = super().resume(request)
        return [a for a in out if not isinstance(a, ClearSuspend)]


class DetachLeavesBreakpoints(Coordinator):
    def detach(self):
        self.points.clear()  # forgotten, but the 0xCC bytes stay in guest memory
        return super().detach()


class NewVcpuNoBptExit(Coordinator):
    def vcpu_started(self, i: int):
        self._begin()
        self._need_index(i)
        self._fire(i, "start")
        return self._out


class ExitDebugKeepsStep(_SpecCoordinator):
    SPEC = _spec("debug-keeps-step", lambda tx: replace(tx, effects=())
                 if tx.trigger == "exit_debug" and tx.dest == "suspended"
                 and "disarm" in tx.effects else tx)


# ------------------------------------------- debug points, range steps, faults
class CompleteAccessEarly(Coordinator):
    """The watched access is completed as soon as the hit arrives, while the other
    vCPUs may still run (and write the datum before gdb reads its New value)."""

    def record_hit(self, i: int, point=None) -> None:
        super().record_hit(i, point)
        if point is not None and point.is_watch:
            self.completed.add(i)
            self._out.append(CompleteAccess(i))


class RemovedWatchReported(Coordinator):
    """A pending watch hit is kept when its watchpoint is removed (only breakpoint
    hits are dropped)."""

    def _drop_stale_hits(self) -> None:
        for i, point in enumerate(self.pending_hits):
            if point is not None and not point.is_watch and point not in self.points:
                self._consume(i)


class RangeNeverEnds(_SpecCoordinator):
    """A range step's trap keeps the vCPU going whether or not RIP left the range."""

    SPEC = _spec("range-never-ends", lambda tx: replace(
        tx, conditions=tuple("range_step" if c == "in_range" else c for c in tx.conditions))
        if "in_range" in tx.conditions else tx)

    def range_step(self, i: int, *_) -> bool:
        return i in self.ranging


class FaultRunsOn(Coordinator):
    """gdb's resume after a fault stop releases the vCPUs as after any stop: the
    faulted vCPU's reported event is consumed and it runs again."""

    def resume(self, request):
        if self.owner is not None and self.states[self.owner] == "at_fault":
            self.states[self.owner] = "exited_mtrap"  # consumed like any reported stop
        return super().resume(request)


class AccessCompletedTwice(Coordinator):
    """Every report of a watch stop completes the access, a repeated '?' too."""

    def _finish_stop_if_complete(self) -> None:
        super()._finish_stop_if_complete()
        self.completed.clear()


class ResetKeepsInt3(Coordinator):
    """Reset without taking the int3 bytes out first: the saved bytes are the old
    kernel's, and patching the reloaded one saves 0xCC as the original."""

    def reset_vm(self):
        out = super().reset_vm()
        return [a for a in out if not isinstance(a, RestoreBreakpoint)]


# ---------------------------------------------------------------- the table
@dataclass(frozen=True)
class Mutant:
    name: str
    doc: str
    cfg: Config
    expect: str  # the property the counterexample breaks
    mutation: Mutation
    liveness: bool = False


def _mut(name, coordinator=Coordinator, tf=TfShadow) -> Mutation:
    m = Mutation()
    m.name = name
    m.coordinator = coordinator
    m.tf_shadow = tf
    return m


ONE = Config(vcpus=1)
TWO = Config(vcpus=2, program=(NOP, INT3))
WATCH1 = Config(vcpus=1, personality="intel", program=(NOP, STORE), bp_gpas=(),
                watch=("write",))
WATCH2 = WATCH1.with_(vcpus=2)
RANGE1 = Config(vcpus=1, personality="intel", program=(NOP, NOP, NOP), bp_gpas=(),
                step_range=(0, 2))
FAULT1 = Config(vcpus=1, personality="intel", program=(NOP,), bp_gpas=(), faults=True)
RESET1 = Config(vcpus=1, personality="intel", program=(NOP,), gdb_reset=True)
MUTANTS: tuple[Mutant, ...] = tuple(
    Mutant(name, doc, cfg, expect, _mut(name, *impl), liveness)
    for name, doc, cfg, expect, impl, liveness in (
        ("tf-not-restored", "RFLAGS_TF disable does not write the guest's TF back",
         ONE, "P5", (Coordinator, TfNotRestored), False),
        ("popf-shadow-stale", "the shadow does not take the TF a stepped popf loaded",
         ONE, "P5", (Coordinator, PopfShadowStale), False),
        ("pushf-image-not-fixed", "a stepped pushf leaves TF=1 in the pushed image",
         ONE, "P5", (Coordinator, PushfImageNotFixed), False),
        ("frame-not-fixed", "an interrupt frame pushed under the debugger's TF keeps TF=1",
         ONE.with_(personality="amd-nomask"), "P5", (Coordinator, FrameNotFixed), False),
        ("stop-before-parked", "the stop reply goes out before every vCPU is parked",
         TWO, "P1", (StopBeforeParked,), False),
        ("pending-hit-dropped", "a second vCPU's breakpoint event is thrown away",
         TWO, "P3", (PendingHitDropped,), False),
        ("step-everywhere", "a step arms every vCPU, not just the one gdb steps",
         TWO, "P2", (StepEverywhere,), False),
        ("mask-left-on", "MASK_HWINTR stays on after the step",
         ONE.with_(program=(NOP,)), "P4", (MaskLeftOn,), False),
        ("new-vcpu-runs", "a vCPU that starts while the others are held runs",
         TWO, "P8", (NewVcpuRuns,), False),
        ("reported-stop-kept", "a breakpoint already reported is reported again",
         ONE.with_(program=(NOP,)), "P2", (ReportedStopKept,), False),
        ("event-resumed", "a vCPU with an unreported breakpoint event is resumed",
         TWO, "P3", (EventResumed,), False),
        ("foreign-int3-swallowed", "the guest's own int3 is not re-injected",
         ONE.with_(program=(NOP, INT3)), "P6", (ForeignInt3Swallowed,), False),
        ("sigint-when-stopped", "a Ctrl-C that arrives after the stop reply is answered",
         ONE.with_(program=(NOP,)), "P1", (SigintWhenStopped,), False),
        ("no-clear-suspend", "a resume does not withdraw the suspend requests",
         TWO, "L1-step", (NoClearSuspend,), True),
        ("detach-leaves-breakpoints", "detach forgets breakpoints without restoring them",
         ONE.with_(program=(NOP,)), "P6", (DetachLeavesBreakpoints,), False),
        ("new-vcpu-no-bpt-exit", "a vCPU that starts later does not get BPT_EXIT",
         TWO, "P6", (NewVcpuNoBptExit,), False),
        ("debug-exit-keeps-step", "a step cancelled by a suspend leaves the step caps on",
         TWO, "P4", (ExitDebugKeepsStep,), False),
        ("complete-access-early",
         "a watched access is completed at the hit, while other vCPUs still run", WATCH2, "W1", (CompleteAccessEarly,), False),
        ("removed-watch-reported",
         "a pending watch hit is reported after its watchpoint was removed", WATCH2, "P2", (RemovedWatchReported,), False),
        ("access-completed-twice", "a repeated '?' completes the watched access again",
         WATCH1, "W1", (AccessCompletedTwice,), False),
        ("range-never-ends", "a range step's trap outside the range keeps it going",
         RANGE1, "L1-step", (RangeNeverEnds,), True),
        ("fault-runs-on", "resuming from a triple-fault stop runs the faulted vCPU again",
         FAULT1, "F1", (FaultRunsOn,), False),
        ("reset-keeps-int3", "reset reloads memory with the int3 bytes still in",
         RESET1, "P6", (ResetKeepsInt3,), False),
    )
)

BY_NAME = {m.name: m for m in MUTANTS}
