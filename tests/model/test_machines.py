"""The compiled tables are the transitions machines, and refused triggers are errors."""

import itertools

import pytest
from transitions import MachineError

from model.errors import InvalidTransition
from model.machine import run_effects, select
from model.tf_shadow import TF_SHADOW
from model.lifecycle import VCPU

SPECS = [VCPU, TF_SHADOW]


class Probe:
    """A model whose conditions are set per run and whose effects are recorded."""

    def __init__(self, truth: dict[str, bool], effects: set[str] = frozenset()):
        self._truth = truth
        self._effects = effects
        self.calls: list[str] = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._truth:
            return lambda *a: self._truth[name]
        if name in self._effects:
            return lambda *a: self.calls.append(name)
        raise AttributeError(name)


def effect_names(spec):
    return {e for tx in spec.transitions for e in tx.effects}


def condition_names(spec):
    return sorted({c for tx in spec.transitions for c in (*tx.conditions, *tx.unless)})


def valuations(spec):
    names = condition_names(spec)
    for bits in itertools.product([False, True], repeat=len(names)):
        yield dict(zip(names, bits))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_table_matches_transitions_for_every_state_trigger_and_condition(spec):
    checked = 0
    for state, trigger, truth in itertools.product(spec.states, spec.triggers, valuations(spec)):
        reference = Probe(truth, effect_names(spec))
        spec.attach(reference, initial=state)
        try:
            accepted = reference.trigger(trigger)
        except MachineError:
            accepted = None
        compiled = Probe(truth, effect_names(spec))
        try:
            branch = select(spec, state, trigger, compiled)
            run_effects(branch, compiled)
            dest = branch.dest
        except InvalidTransition:
            dest = None
        if accepted is None or accepted is False:
            # transitions raises for an unknown trigger in this state and returns False
            # when every branch's conditions fail; both are a refusal in the table.
            assert dest is None, (state, trigger, truth)
        else:
            assert (dest, compiled.calls) == (reference.state, reference.calls), (
                state, trigger, truth)
        checked += 1
    assert checked == len(spec.states) * len(spec.triggers) * 2 ** len(condition_names(spec))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_transition_is_reachable_in_the_table(spec):
    for tx in spec.transitions:
        for source in tx.sources:
            branches = spec.table[(source, tx.trigger)]
            assert any(b.dest == tx.dest and b.conditions == tx.conditions for b in branches)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_refused_triggers_are_typed_errors(spec):
    refused = [(s, t) for s in spec.states for t in spec.triggers if (s, t) not in spec.table]
    assert refused, "every machine refuses something"
    for state, trigger in refused:
        with pytest.raises(InvalidTransition) as err:
            select(spec, state, trigger, Probe({}))
        assert err.value.state == state and err.value.trigger == trigger


def test_unknown_state_in_a_spec_is_rejected():
    from model.machine import MachineSpec, Tx

    with pytest.raises(ValueError, match="unknown states"):
        MachineSpec("bad", "bad", ("a",), "a", (Tx("go", "a", "b"),))
