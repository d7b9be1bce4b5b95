"""The one action executor: every action type the model can emit has a method, and
an action nobody can carry out is an error, never skipped."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import pytest

from model import actions as A
from model.executor import METHODS, ActionExecutor, UnknownAction, execute


def test_every_action_type_has_an_executor_method():
    emitted = set(typing.get_args(A.Action))
    assert set(METHODS) == emitted
    protocol = {name for name in vars(ActionExecutor) if not name.startswith("_")}
    assert set(METHODS.values()) == protocol


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name not in METHODS.values():
            raise AttributeError(name)
        return lambda action: self.calls.append((name, action))


def test_actions_run_in_order_on_their_methods():
    r = Recorder()
    batch = [A.RequestSuspend(1), A.SetCap(0, A.Cap.BPT_EXIT, True), A.ClearSuspend(1)]
    execute(batch, r)
    assert r.calls == [("request_suspend", batch[0]), ("set_cap", batch[1]),
                       ("clear_suspend", batch[2])]


@dataclass(frozen=True)
class NewAction:
    vcpu: int


def test_an_unknown_action_raises():
    r = Recorder()
    with pytest.raises(UnknownAction, match="NewAction"):
        execute([A.ClearSuspend(0), NewAction(0)], r)
    assert r.calls == [("clear_suspend", A.ClearSuspend(0))]
