"""The AMD trap-flag shadow: how the hypervisor hides its RFLAGS.TF from the guest.

SVM has no monitor trap flag, so a single step on AMD sets the *real* RFLAGS.TF and
intercepts the #DB it raises (``VM_CAP_RFLAGS_TF``). Left alone, the guest would see
that TF: in RFLAGS, in the image ``pushf`` writes, and in the frame an interrupt or
exception pushes. This machine is the hypervisor-side bookkeeping that prevents it, as
bhyve's ``svm_setcap``/``svm_vmexit``/``vm_handle_db`` do, plus the event-frame case
bhyve leaves open. It is pure: the emulated VMM feeds it what the CPU did and carries
out the actions it returns; the model checker runs the same code.

States and what they mean:

- ``off``: the capability is off; RFLAGS.TF is the guest's own.
- ``on``: the debugger's TF is set; ``shadow`` holds the guest's own TF.
- ``pushf_pending``: the next instruction is a ``pushf`` (PUSHF intercept). It runs with
  TF set, so the image it pushes carries TF=1; after its trap the image is fixed to the
  shadow value (a guest whose own TF was 1 keeps TF=1 in the image).
- ``popf_pending``: the next instruction is a ``popf`` (POPF intercept), or an ``iret``,
  which pops RFLAGS from a frame just the same (SVM's IRET intercept). x86 decides the
  trap from TF at the *start* of the instruction, so the trap still comes even if the
  popped image clears TF; the shadow then takes the popped TF, so the disable that ends
  the step leaves the guest the value it asked for.

``trace_trap`` with the guest's own TF set: a guest that single-steps itself (a kernel
debugger inside the VM) expects a #DB after this very instruction, and x86 raises only
one: the VMM claimed it as the debugger's. ``ReflectDebugTrap`` asks the VMM to deliver
the guest's own #DB (DR6.BS) right after the step, so the step ends at the guest's #DB
handler, exactly as MTF does on Intel. Which TF counts is the one at the *start* of the
instruction (the shadow before a ``popf`` replaces it). bhyve swallows this #DB; the
model checker found it (proofs/README.md, check 5d).

``event_delivered``: an interrupt or exception was delivered while TF was set (an
exception raised by the stepped instruction, or an interrupt on a VMM without
``MASK_HWINTR``). Hardware pushed RFLAGS with the debugger's TF and then cleared TF; the
frame image is fixed to the guest's own TF, and because delivery cleared TF the handler
starts with TF=0, which becomes the shadow. The VMM ends the step there (the trap reports
RIP at the handler's first instruction), like MTF does after event delivery on Intel.

Every step is ``enable``, at most one intercept, one ``trace_trap`` or
``event_delivered``, then ``disable``; ``disable`` is allowed from every state the
capability can be on in, because a step can end without its trap (a suspend request
honoured before entry, a breakpoint exit).
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from model.machine import MachineSpec, Tx, fire

TF_SHADOW = MachineSpec(
    name="tf_shadow",
    title="AMD trap-flag shadow (VM_CAP_RFLAGS_TF, hypervisor side)",
    states=("off", "on", "pushf_pending", "popf_pending"),
    initial="off",
    transitions=(
        Tx("enable", "off", "on", effects=("save_guest_tf",)),
        Tx("intercept_pushf", "on", "pushf_pending"),
        Tx("intercept_popf", "on", "popf_pending"),
        Tx("trace_trap", "on", "on", effects=("reflect_own_trap",)),
        Tx("trace_trap", "pushf_pending", "on", effects=("fix_pushed_image", "reflect_own_trap")),
        Tx("trace_trap", "popf_pending", "on", effects=("reflect_own_trap", "take_popped_tf")),
        Tx("event_delivered", ("on", "pushf_pending", "popf_pending"), "on",
           effects=("fix_frame_image",)),
        Tx("disable", ("on", "pushf_pending", "popf_pending"), "off",
           effects=("restore_guest_tf",)),
    ),
)


@dataclass(frozen=True)
class SetTrapFlag:
    """Set the real RFLAGS.TF of the vCPU to ``value``."""

    value: bool


@dataclass(frozen=True)
class FixFlagsImage:
    """Set bit 8 (TF) of a flags image in guest memory to ``tf``.

    ``where`` is ``"stack"`` for the image a ``pushf`` just wrote at RSP (its operand
    size decides 2 or 8 bytes), or ``"frame"`` for the RFLAGS slot of the interrupt or
    exception frame just pushed."""

    where: str
    tf: bool


@dataclass(frozen=True)
class ReflectDebugTrap:
    """The guest's own TF was set for the instruction just stepped: deliver its #DB
    (with DR6.BS) now, after every other action of this trap."""


TfAction = SetTrapFlag | FixFlagsImage | ReflectDebugTrap


# The proofs' mutants (proofs/mutants.py) subclass it in plain Python; compiled with
# mypyc (docs/compiled.md) it must allow that.
@mypyc_attr(allow_interpreted_subclasses=True)
class TfShadow:
    """One vCPU's shadow. Each trigger returns the actions to carry out, in order."""

    def __init__(self, state: str = "off", shadow: bool = False):
        self.state = state
        self.shadow = shadow
        self._out: list[TfAction] = []

    # -- triggers ---------------------------------------------------------------
    def enable(self, guest_tf: bool) -> list[TfAction]:
        return self._fire("enable", guest_tf)

    def intercept_pushf(self) -> list[TfAction]:
        return self._fire("intercept_pushf")

    def intercept_popf(self) -> list[TfAction]:
        return self._fire("intercept_popf")

    def trace_trap(self, tf_after: bool) -> list[TfAction]:
        """The #DB with DR6.BS arrived; ``tf_after`` is RFLAGS.TF after the instruction."""
        return self._fire("trace_trap", tf_after)

    def event_delivered(self) -> list[TfAction]:
        return self._fire("event_delivered")

    def disable(self) -> list[TfAction]:
        return self._fire("disable")

    # -- effects (named in the spec) --------------------------------------------
    def save_guest_tf(self, guest_tf: bool) -> None:
        self.shadow = bool(guest_tf)
        self._out.append(SetTrapFlag(True))

    def reflect_own_trap(self, _tf_after: bool) -> None:
        if self.shadow:  # still the TF the instruction started with (see the order above)
            self._out.append(ReflectDebugTrap())

    def fix_pushed_image(self, _tf_after: bool) -> None:
        self._out.append(FixFlagsImage("stack", self.shadow))

    def take_popped_tf(self, tf_after: bool) -> None:
        self.shadow = bool(tf_after)
        # The popf may have cleared the real TF; the step is over (its trap arrived), so
        # nothing needs it again before disable writes the shadow back.

    def fix_frame_image(self) -> None:
        self._out.append(FixFlagsImage("frame", self.shadow))
        self.shadow = False

    def restore_guest_tf(self) -> None:
        self._out.append(SetTrapFlag(self.shadow))

    # -- plumbing ---------------------------------------------------------------
    def _fire(self, trigger: str, *args) -> list[TfAction]:
        self._out = []
        fire(TF_SHADOW, self, trigger, *args)
        return self._out

    @property
    def is_on(self) -> bool:
        return self.state != "off"

    def snapshot(self) -> tuple[str, bool]:
        return (self.state, self.shadow)

    @classmethod
    def restore(cls, snap: tuple[str, bool]) -> TfShadow:
        return cls(*snap)
