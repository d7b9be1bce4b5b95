"""The stub's exit status follows the guest (README, "Exit status"): one test per row
the other suites do not cover already.

Covered elsewhere: isa-debug-exit V gives (V<<1)|1 (test_real_kernels: 33, with and
without gdb; test_faults: 1 for V=0); a triple fault under gdb (test_faults); ``kill``
from gdb 0 (test_gdb); Ctrl-C or SIGTERM in the stub's terminal 0 (test_faults);
unusable input 2 (test_faults, tests/stub). Here: the ACPI power-off, the two resets,
a triple fault with no debugger attached, and isa-debug-exit with a value whose
status keeps only 8 bits.

Each guest action is a few instructions written over the demo kernel's ``flags_probe``
by a raw gdb client, which then points RIP at them and continues (or detaches).
"""

from __future__ import annotations

import pytest

from .test_faults import RIP, attach, sym

SPIN = b"\xeb\xfe"  # jmp . (never reached when the write ends the VM)

#: row -> (code, gdb's reply, exit status)
ENDINGS = {
    # mov dx, 0x604; mov ax, 0x2000 (SLP_EN, SLP_TYP 0: QEMU's \_S5); out dx, ax
    "acpi-poweroff": (b"\x66\xba\x04\x06\x66\xb8\x00\x20\x66\xef", b"W00", 0),
    # mov al, 0xfe; out 0x64, al (i8042: pulse the reset line)
    "i8042-reset": (b"\xb0\xfe\xe6\x64", b"W00", 0),
    # mov al, 1; out 0x92, al (port A: fast reset, bit 0 rising)
    "port92-reset": (b"\xb0\x01\xe6\x92", b"W00", 0),
    # mov eax, 0x1ff; out 0xf4, eax: gdb gets V & 0xFF, the process (V<<1)|1 & 0xFF
    "debug-exit-0x1ff": (b"\xb8\xff\x01\x00\x00\xe7\xf4", b"Wff", 0xFF),
    # mov al, 0x7f; out 0xf4, al: the largest status that keeps V whole
    "debug-exit-0x7f": (b"\xb0\x7f\xe6\xf4", b"W7f", 0xFF),
    # mov al, 0x80; out 0xf4, al: (0x80<<1)|1 = 0x101, of which a status keeps 1
    "debug-exit-0x80": (b"\xb0\x80\xe6\xf4", b"W80", 1),
    # mov al, 0x05; out 0xf4, al
    "debug-exit-5": (b"\xb0\x05\xe6\xf4", b"W05", 11),
}


def run_code(c, code: bytes) -> None:
    """Write ``code`` at flags_probe and point vCPU 0 at it."""
    at = sym("flags_probe")
    data = (code + SPIN).hex().encode()
    assert c.ask(b"M%x,%x:%s" % (at, len(code) + len(SPIN), data)) == b"OK"
    assert c.ask(b"P%x=%s" % (RIP, at.to_bytes(8, "little").hex().encode())) == b"OK"


@pytest.mark.parametrize("row", list(ENDINGS))
def test_the_guest_decides_the_exit_status(stub_factory, row):
    code, reply, status = ENDINGS[row]
    sp = stub_factory("--vm", "demo", "--vcpus", "1")
    c = attach(sp.port)
    run_code(c, code)
    assert c.ask(b"vCont;c") == reply
    assert sp.proc.wait(30) == status, sp.stderr
    said = "guest reset the machine" if row.endswith("-reset") else "guest powered off"
    assert said in sp.stderr, sp.stderr


def test_a_triple_fault_without_a_debugger_exits_1(stub_factory):
    sp = stub_factory("--vm", "demo", "--vcpus", "1")
    c = attach(sp.port)
    zeros = b"00" * 0x1000
    assert c.ask(b"M%x,1000:" % sym("idt") + zeros) == b"OK"  # no usable gate anywhere
    bad = (0x0000_7000_0000_0000).to_bytes(8, "little").hex().encode()  # non-canonical
    assert c.ask(b"P%x=%s" % (RIP, bad)) == b"OK"
    c.send(b"D")  # detach: the guest runs on, alone, into the fault
    assert c.recv_packet() == b"OK"
    c.close()
    assert sp.proc.wait(30) == 1, sp.stderr
    assert "triple fault" in sp.stderr, sp.stderr
