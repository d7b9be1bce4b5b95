"""The guest's console on the stub's terminal (stub/console.py) and the emulated
machine's paced serial input."""

from __future__ import annotations

import os
import threading

from stub import console
from stub.vmm.emulated import create_vm
from tests.e2e.stubproc import DEMO_ELF


def test_stdin_pump_feeds_until_end_of_input():
    r, w = os.pipe()
    got = []
    os.write(w, b"hello\n")
    os.close(w)
    console._pump(r, lambda data, wait: got.append(data), threading.Event())
    os.close(r)
    assert b"".join(got) == b"hello\n"


def test_no_forwarding_without_a_terminal_or_a_backend_that_takes_input():
    stdio = console.Console(None)  # what --console stdio makes, minus the stream
    assert console.forward_stdin(stdio, None, threading.Event()) is None


def test_no_forwarding_unless_the_console_is_stdio(monkeypatch):
    class Tty:
        def isatty(self):
            return True

        def fileno(self):
            raise AssertionError("stdin was read although the console is not stdio")

    monkeypatch.setattr("sys.stdin", Tty())
    for spec in ("none",):
        con = console.open_console(spec)
        assert console.forward_stdin(con, lambda data, wait: None, threading.Event()) is None


def test_serial_input_waits_for_the_guest_to_read_each_byte():
    vm = create_vm(DEMO_ELF, vcpus=1, memory=64 << 20, cpu="amd", timer_hz=0,
                   ticker=False, boot="vmstub")
    uart = vm.platform.uart
    waits = []

    def wait(seconds):
        # Nobody reads COM1 here: the first byte stays in the receiver, and the
        # second waits for room until the VM goes away.
        waits.append(seconds)
        assert uart.fifo_length == 1
        vm.shutdown()

    try:
        vm.console_input(b"ab", wait)
    finally:
        vm.shutdown()
    assert len(waits) == 1 and uart.fifo_length == 1
