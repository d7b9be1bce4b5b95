"""The AMD TF shadow: the guest's own TF survives, pushf/popf/event frames are fixed."""

import pytest

from model.errors import InvalidTransition
from model.tf_shadow import FixFlagsImage, ReflectDebugTrap, SetTrapFlag, TfShadow

OWN_DB = [ReflectDebugTrap()]


@pytest.mark.parametrize("guest_tf", [False, True])
def test_enable_saves_and_disable_restores_the_guests_tf(guest_tf):
    m = TfShadow()
    assert m.enable(guest_tf) == [SetTrapFlag(True)]
    assert m.trace_trap(True) == (OWN_DB if guest_tf else [])  # its own #DB is due too
    assert m.disable() == [SetTrapFlag(guest_tf)]
    assert m.snapshot() == ("off", guest_tf)


@pytest.mark.parametrize("guest_tf", [False, True])
def test_pushf_image_is_fixed_to_the_guests_tf(guest_tf):
    m = TfShadow()
    m.enable(guest_tf)
    assert m.intercept_pushf() == []
    assert m.state == "pushf_pending"
    # The image first, then the guest's own #DB (its frame goes below the image).
    assert m.trace_trap(True) == [FixFlagsImage("stack", guest_tf)] + (OWN_DB if guest_tf else [])
    assert m.disable() == [SetTrapFlag(guest_tf)]


@pytest.mark.parametrize("guest_tf,popped", [(False, True), (True, False), (False, False)])
def test_popf_makes_the_popped_tf_the_guests(guest_tf, popped):
    m = TfShadow()
    m.enable(guest_tf)
    m.intercept_popf()
    # x86 traps on the TF the popf started with, not the one it popped.
    assert m.trace_trap(popped) == (OWN_DB if guest_tf else [])
    assert m.disable() == [SetTrapFlag(popped)]


@pytest.mark.parametrize("guest_tf", [False, True])
def test_event_frame_gets_the_guests_tf_and_handler_starts_with_tf_clear(guest_tf):
    m = TfShadow()
    m.enable(guest_tf)
    assert m.event_delivered() == [FixFlagsImage("frame", guest_tf)]
    assert m.disable() == [SetTrapFlag(False)]


def test_exception_raised_by_a_pushf_cancels_the_pending_fix():
    m = TfShadow()
    m.enable(False)
    m.intercept_pushf()
    assert m.event_delivered() == [FixFlagsImage("frame", False)]
    assert m.state == "on"


def test_step_ended_without_its_trap_still_restores():
    m = TfShadow()
    m.enable(True)
    m.intercept_popf()
    assert m.disable() == [SetTrapFlag(True)]


@pytest.mark.parametrize("trigger", ["trace_trap", "intercept_pushf", "event_delivered", "disable"])
def test_nothing_but_enable_while_off(trigger):
    m = TfShadow()
    with pytest.raises(InvalidTransition):
        getattr(m, trigger)(*([False] if trigger == "trace_trap" else []))


def test_double_enable_and_double_intercept_are_refused():
    m = TfShadow()
    m.enable(False)
    with pytest.raises(InvalidTransition):
        m.enable(False)
    m.intercept_pushf()
    with pytest.raises(InvalidTransition):
        m.intercept_popf()


def test_snapshot_round_trip():
    m = TfShadow()
    m.enable(True)
    m.intercept_pushf()
    again = TfShadow.restore(m.snapshot())
    assert again.trace_trap(True) == [FixFlagsImage("stack", True), *OWN_DB]
