"""``monitor`` commands (qRcmd): help, and the guest's VGA text screen on request."""

from __future__ import annotations

from stub.connection import GdbConnection
from stub.rsp.hexutil import hex_decode, hex_encode
from stub.runtime import Runtime
from stub.vmm.emulated import create_vm
from tests.e2e.stubproc import DEMO_ELF
from tests.fakevmm import FakeVm


def monitor(conn: GdbConnection, command: str) -> str:
    return hex_decode(conn.packet(b"qRcmd," + hex_encode(command.encode()))).decode()


def test_screen_shows_what_the_guest_wrote_to_vga_text_memory():
    vm = create_vm(DEMO_ELF, vcpus=1, memory=64 << 20, cpu="amd", timer_hz=0,
                   ticker=False, boot="vmstub")
    try:
        text = b"hello, screen"
        vm.write_phys(0xB8000 + 2 * 80, bytes(b for c in text for b in (c, 0x07)))
        out = monitor(GdbConnection(Runtime(vm)), "screen").splitlines()
        assert out[1] == "hello, screen" and out[0] == "" and len(out) == 25
    finally:
        vm.shutdown()


def test_help_unknown_and_no_screen():
    conn = GdbConnection(Runtime(FakeVm(1)))
    assert "screen" in monitor(conn, "help") and monitor(conn, "") == monitor(conn, "help")
    assert "unknown monitor command 'frobnicate'" in monitor(conn, "frobnicate now")
    assert monitor(conn, "screen") == "this machine has no text screen\n"
