"""Typed protocol errors. The model never asserts on input and never ignores an event."""

from __future__ import annotations


class ProtocolError(Exception):
    """An event or request the protocol does not allow in the current state."""


class InvalidTransition(ProtocolError):
    """A machine was given a trigger that no transition from its state accepts."""

    def __init__(self, machine: str, state: str, trigger: str):
        super().__init__(f"{machine}: '{trigger}' is not allowed in state '{state}'")
        self.machine = machine
        self.state = state
        self.trigger = trigger


class StepUnavailable(ProtocolError):
    """A step was asked for but the VM has no step mechanism (StepMode.NONE)."""


class NotStopped(ProtocolError):
    """A request that needs the guest stopped arrived while it runs."""


class BadVcpu(ProtocolError):
    """A vCPU index that does not exist or has not started."""
