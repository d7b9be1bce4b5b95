"""The runtime's guest-virtual reads: a large page is read in one piece (one walk, one
copy), yet a read that runs past the end of RAM inside that page is short, not an
error, and a breakpoint's byte reads as the original wherever it falls."""

from __future__ import annotations

import pytest

from stub.runtime import MemoryAccessError, Runtime
from tests.stub.test_lone_step import Stops
from tests.vmm.conftest import MEMORY, make_vm  # noqa: F401 - the fixture

SPIN = "main:\n spin: pause\n jmp spin\n"


@pytest.fixture
def stopped(make_vm):  # noqa: F811 - pytest fixture injection
    vm, _sym = make_vm(SPIN)
    rt = Runtime(vm, wait_for_debugger=True)
    rt.start()
    rt.attach()
    rt.query_halt()
    Stops(rt).next()
    yield vm, rt
    rt.shutdown()
    rt.join()


def test_a_read_across_4_kib_boundaries_of_a_large_page(stopped):
    vm, rt = stopped
    gva = 0x20_0000 + 0x0FF0  # the boot tables map RAM with large pages
    vm.write_phys(gva, bytes(range(256)) * 40)
    assert rt.read_memory(0, gva, 10240) == bytes(range(256)) * 40


def test_a_read_past_the_end_of_ram_is_short(stopped):
    vm, rt = stopped
    vm.write_phys(MEMORY - 0x1800, b"\xab" * 0x1800)
    assert rt.read_memory(0, MEMORY - 0x1800, 0x4000) == b"\xab" * 0x1800


def test_a_read_that_starts_past_ram_is_an_error(stopped):
    _vm, rt = stopped
    with pytest.raises(MemoryAccessError):
        rt.read_memory(0, MEMORY + 0x1000, 16)


def test_breakpoint_bytes_read_as_the_original_in_a_large_read(stopped):
    vm, rt = stopped
    base = 0x30_0000
    vm.write_phys(base, b"\x90" * 0x3000)
    for off in (0x0FFF, 0x1000, 0x2ABC):
        rt.insert_point(0, "sw", base + off)
    assert vm.read_phys(base + 0x1000, 1) == b"\xcc"  # patched in guest RAM
    assert rt.read_memory(0, base, 0x3000) == b"\x90" * 0x3000
