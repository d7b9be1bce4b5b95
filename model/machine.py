"""One definition per machine: a `transitions` spec, compiled to a table for the hot path.

Each protocol machine is written once, as a :class:`MachineSpec` (states and transitions
with named conditions and effects). From that single definition come:

- a real ``transitions.Machine`` (:meth:`MachineSpec.attach`), used by the diagrams and
  by the tests that check the compiled table against it;
- a compiled lookup table (:attr:`MachineSpec.table`) that the runtime and the model
  checker fire through :func:`fire`. A ``transitions`` trigger costs about 10 µs;
  a table lookup well under 1 µs, and the checker fires millions of them.

Conditions and effects are *names* of methods on a context object (the coordinator or
the TF shadow machine), so both paths run the same code. Transitions are tried in
definition order and the first whose conditions hold wins, exactly as ``transitions``
does. A trigger that matches nothing is a :class:`InvalidTransition`: the protocol never
ignores an event silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from transitions import Machine, MachineError

from model.errors import InvalidTransition


@dataclass(frozen=True)
class Tx:
    """One transition: on ``trigger`` from ``source`` to ``dest`` when every name in
    ``conditions`` is true and every name in ``unless`` is false; then run ``effects``."""

    trigger: str
    source: str | tuple[str, ...]
    dest: str
    conditions: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    effects: tuple[str, ...] = ()

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else self.source


@dataclass(frozen=True)
class Branch:
    conditions: tuple[str, ...]
    unless: tuple[str, ...]
    dest: str
    effects: tuple[str, ...]


@dataclass(frozen=True)
class MachineSpec:
    name: str
    title: str
    states: tuple[str, ...]
    initial: str
    transitions: tuple[Tx, ...]
    table: dict[tuple[str, str], tuple[Branch, ...]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        for tx in self.transitions:
            unknown = {tx.dest, *tx.sources} - set(self.states)
            if unknown:
                raise ValueError(f"{self.name}: {tx.trigger} names unknown states {unknown}")
        object.__setattr__(self, "table", compile_table(self))

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(tx.trigger for tx in self.transitions))

    def attach(self, model: Any, initial: str | None = None, machine_cls=Machine, **kw) -> Machine:
        """Build the ``transitions`` machine for ``model`` (which provides the condition
        and effect methods). Auto transitions are off: every move is in the table."""
        return machine_cls(
            model=model,
            states=list(self.states),
            initial=initial or self.initial,
            transitions=[_as_dict(tx) for tx in self.transitions],
            auto_transitions=False,
            **kw,
        )


def _as_dict(tx: Tx) -> dict[str, Any]:
    return {
        "trigger": tx.trigger,
        "source": list(tx.sources),
        "dest": tx.dest,
        "conditions": list(tx.conditions),
        "unless": list(tx.unless),
        "after": list(tx.effects),
    }


def compile_table(spec: MachineSpec) -> dict[tuple[str, str], tuple[Branch, ...]]:
    """Walk a real ``transitions.Machine`` built from the spec and flatten it.

    Reading the compiled form back out of ``transitions`` (rather than from the spec
    list directly) keeps the table honest: whatever ``transitions`` would do with the
    definition is what the table holds."""
    machine = spec.attach(model=_Inert(), machine_cls=Machine)
    table: dict[tuple[str, str], tuple[Branch, ...]] = {}
    for trigger, event in machine.events.items():
        for source, txs in event.transitions.items():
            branches = []
            for t in txs:
                conds = _names(c.func for c in t.conditions if c.target)
                unless = _names(c.func for c in t.conditions if not c.target)
                if t.dest is None:
                    raise ValueError(f"{spec.name}: {trigger} from {source} has no dest")
                branches.append(Branch(conds, unless, t.dest, _names(t.after)))
            table[(source, trigger)] = tuple(branches)
    return table


def _names(items: Iterable[object]) -> tuple[str, ...]:
    """Conditions and effects are method names here (``transitions`` also allows
    callables, which a table of names could not hold)."""
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"a machine's conditions and effects are names, not {item!r}")
        names.append(item)
    return tuple(names)


# A model with no behaviour, used only to read the machine's structure. Made at run
# time, not with a class statement: ``transitions`` adds its trigger methods to the
# model, which an instance of a class compiled by mypyc (docs/compiled.md) cannot take.
_Inert = type("_Inert", (), {})


def select(spec: MachineSpec, state: str, trigger: str, ctx: Any, *args: Any) -> Branch:
    """The branch ``trigger`` takes from ``state``: the first whose conditions hold."""
    for branch in spec.table.get((state, trigger), ()):
        # Plain loops, not all()/any() over generators: this runs several times per
        # single-step, and most branches have no condition at all.
        for name in branch.conditions:
            if not getattr(ctx, name)(*args):
                break
        else:
            for name in branch.unless:
                if getattr(ctx, name)(*args):
                    break
            else:
                return branch
    raise InvalidTransition(spec.name, state, trigger)


def run_effects(branch: Branch, ctx: Any, *args: Any) -> None:
    for effect in branch.effects:
        getattr(ctx, effect)(*args)


def fire(spec: MachineSpec, ctx: Any, trigger: str, *args: Any, attr: str = "state") -> None:
    """Fire ``trigger`` on the compiled table for the state held in ``ctx.<attr>``.

    As in ``transitions``, the state changes before the effects (``after`` callbacks)
    run, so an effect sees the machine in its destination state."""
    branch = select(spec, getattr(ctx, attr), trigger, ctx, *args)
    setattr(ctx, attr, branch.dest)
    run_effects(branch, ctx, *args)


__all__ = ["Branch", "MachineError", "MachineSpec", "Tx", "fire", "run_effects", "select"]
