"""StepMode is probed once, MTRAP first, RFLAGS_TF second; MASK_HWINTR is optional."""

import pytest

from model.actions import Cap
from model.step_mode import StepConfig, StepMode, probe_step_config

# What each emulated personality answers (stub/vmm): readable caps, settable caps.
PERSONALITIES = {
    "intel": ({Cap.MTRAP_EXIT, Cap.BPT_EXIT}, {Cap.MTRAP_EXIT, Cap.BPT_EXIT, Cap.MASK_HWINTR}),
    "amd": ({Cap.RFLAGS_TF, Cap.BPT_EXIT, Cap.MASK_HWINTR},
            {Cap.RFLAGS_TF, Cap.BPT_EXIT, Cap.MASK_HWINTR}),
    "amd-nomask": ({Cap.RFLAGS_TF, Cap.BPT_EXIT}, {Cap.RFLAGS_TF, Cap.BPT_EXIT}),
    "none": ({Cap.BPT_EXIT}, {Cap.BPT_EXIT}),
}
EXPECTED = {
    "intel": StepConfig(StepMode.MTRAP, True),
    "amd": StepConfig(StepMode.RFLAGS_TF, True),
    "amd-nomask": StepConfig(StepMode.RFLAGS_TF, False),
    "none": StepConfig(StepMode.NONE, False),
}


class Recorder:
    def __init__(self, readable, settable):
        self.readable, self.settable, self.asked = readable, settable, []

    def has(self, cap):
        self.asked.append(("get", cap))
        return cap in self.readable

    def can_set(self, cap):
        self.asked.append(("set", cap))
        return cap in self.settable


@pytest.mark.parametrize("name", PERSONALITIES)
def test_probe_per_personality(name):
    vmm = Recorder(*PERSONALITIES[name])
    assert probe_step_config(vmm.has, vmm.can_set) == EXPECTED[name]


def test_mtrap_is_asked_first_and_wins_when_both_exist():
    vmm = Recorder({Cap.MTRAP_EXIT, Cap.RFLAGS_TF}, set())
    assert probe_step_config(vmm.has, vmm.can_set).mode is StepMode.MTRAP
    assert vmm.asked[0] == ("get", Cap.MTRAP_EXIT)
    assert ("get", Cap.RFLAGS_TF) not in vmm.asked


def test_rflags_tf_is_asked_second():
    vmm = Recorder({Cap.RFLAGS_TF}, set())
    probe_step_config(vmm.has, vmm.can_set)
    assert vmm.asked[:2] == [("get", Cap.MTRAP_EXIT), ("get", Cap.RFLAGS_TF)]


def test_mask_failure_is_ignored_not_fatal():
    cfg = probe_step_config(lambda c: c is Cap.MTRAP_EXIT, lambda c: False)
    assert cfg == StepConfig(StepMode.MTRAP, False)
    assert cfg.caps_for_step() == (Cap.MTRAP_EXIT,)


def test_caps_for_step():
    assert EXPECTED["amd"].caps_for_step() == (Cap.RFLAGS_TF, Cap.MASK_HWINTR)
    assert EXPECTED["none"].caps_for_step() == ()
    assert not EXPECTED["none"].can_step
