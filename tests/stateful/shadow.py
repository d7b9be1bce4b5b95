"""The model the stateful tests run in lockstep with the stub: the same Coordinator, but
every vCPU's lifecycle is a real ``transitions.Machine`` built from ``model.lifecycle.VCPU``.

The runtime fires the compiled table (``model.machine.select``); this shadow fires the
library machines the table was compiled from, and is fed the events the *test* derives
from what it did (the packets it sent, the exits it saw), not what the runtime called.
Equal snapshots after every rule therefore say three things at once: the session turned
each packet into the request the protocol means, the runtime turned each VMM exit into
the event it means, and the compiled table behaves as the ``transitions`` machines.
"""

from __future__ import annotations

from transitions import MachineError

from model import lifecycle
from model.coordinator import Coordinator
from model.errors import InvalidTransition


class _VcpuModel:
    """The ``transitions`` model of one vCPU: its state lives in the coordinator's
    ``states`` list (so effects see it change before they run, as the table does), and
    condition/effect names resolve to the coordinator's methods."""

    def __init__(self, coord: Coordinator, index: int):
        object.__setattr__(self, "_coord", coord)
        object.__setattr__(self, "_index", index)

    @property
    def state(self) -> str:
        return self._coord.states[self._index]

    @state.setter
    def state(self, value: str) -> None:
        self._coord.states[self._index] = value

    def __getattr__(self, name: str):
        return getattr(self._coord, name)


class MachineCoordinator(Coordinator):
    def __init__(self, vcpus, step, wait_for_debugger: bool = False):
        super().__init__(vcpus, step, wait_for_debugger)
        self._models = [_VcpuModel(self, i) for i in range(vcpus)]
        self._machines = [lifecycle.VCPU.attach(m, initial=self.states[i])
                          for i, m in enumerate(self._models)]
        self.fired: dict[tuple[str, str, str], int] = {}  # coverage: (from, trigger, to)

    def _fire(self, i: int, trigger: str, *args) -> None:
        before = self.states[i]
        try:
            moved = self._models[i].trigger(trigger, i, *args)
        except MachineError:
            moved = False
        if not moved:
            raise InvalidTransition(lifecycle.VCPU.name, before, trigger)
        key = (before, trigger, self.states[i])
        self.fired[key] = self.fired.get(key, 0) + 1


def lifecycle_edges() -> set[tuple[str, str, str]]:
    """Every (from, trigger, to) the vCPU lifecycle defines: what coverage counts."""
    return {(src, tx.trigger, tx.dest) for tx in lifecycle.VCPU.transitions
            for src in tx.sources}


def with_machines(coordinator_cls: type[Coordinator]) -> type[Coordinator]:
    """``coordinator_cls`` (a mutant, say) firing real ``transitions`` machines, unless
    it brings its own ``_fire`` (an alternative lifecycle spec): then it is used as is."""
    if coordinator_cls is Coordinator:
        return MachineCoordinator
    if "_fire" in vars(coordinator_cls) or any(
            "_fire" in vars(b) for b in coordinator_cls.__mro__[1:]
            if b not in (Coordinator, object)):
        return coordinator_cls
    return type(f"Machine{coordinator_cls.__name__}", (MachineCoordinator, coordinator_cls), {})
