"""Debug points in the emulated VMM (docs/debug-points.md): VA breakpoints (``sw_va``,
``hw``) and watchpoints (``write``, ``read``, ``access``), armed on every vCPU, stopping
before the instruction or the access, at no cost while none is armed."""

from __future__ import annotations

import pytest

from model.points import ACCESS, HW, READ, SW_VA, WRITE, Point
from stub.vmm.api import ExitKind, Feature, TranslationFault, VmmError
from tests.vmm.conftest import run_to_stop, step, u64

DATA = """
.data
.balign 4096
var:    .quad 0
other:  .quad 0
.balign 4096
far:    .quad 0
.text
"""


def test_features_listed(make_vm):
    vm, _ = make_vm("main:\n hlt\n")
    assert {Feature.DEBUG_POINTS, Feature.RANGE_STEP, Feature.RESET} <= vm.features


def test_write_watch_stops_before_the_access(make_vm):
    vm, sym = make_vm("main:\n mov qword ptr [rip + other], 5\n"
                      "w: mov qword ptr [rip + var], 7\n after: int3\n" + DATA)
    v = vm.vcpus[0]
    point = Point(WRITE, sym["var"], 8)
    vm.arm_point(point, v)
    exit_ = v.run()
    assert exit_.kind is ExitKind.WATCH and exit_.point == point and exit_.rip == sym["w"]
    assert u64(vm, sym["var"]) == 0 and u64(vm, sym["other"]) == 5  # non-hit went through
    v.complete_access()
    assert u64(vm, sym["var"]) == 7 and v.get_register("rip") == sym["after"]
    exit_ = run_to_stop(v)
    assert exit_.rip == sym["after"]
