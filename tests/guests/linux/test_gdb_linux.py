"""gdb on Debian's kernel under our stub, with the symbols ``python -m stub symbols``
recovered from its kallsyms: a hardware breakpoint on a kernel function by name, set
at the 64-bit entry before the kernel's own page tables map it (so by virtual
address, not in memory), is hit; the registers, the backtrace and a data symbol read through the
kernel's page tables all make sense."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.stubproc import GDB, start_stub
from tests.guests.linux.kit import Kit

APPEND = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr panic=-1"
GDB_TIMEOUT = 600  # seconds: decompression and early boot take ~5 s on a quiet machine


@pytest.mark.skipif(GDB is None, reason="gdb is not installed (setup.sh installs it)")
def test_hbreak_on_a_kernel_function_by_name(linux_kit: Kit, linux_symbols):
    sp = start_stub("--kernel", str(linux_kit.vmlinuz), "--initrd", str(linux_kit.initramfs),
                    "--append", APPEND, "--memory-mb", "512", "--wait")
    try:
        done = subprocess.run(
            [GDB, "-batch", "-nx", str(linux_symbols),
             "-ex", f"target remote 127.0.0.1:{sp.port}",
             "-ex", "hbreak start_kernel", "-ex", "continue",
             "-ex", "info symbol $pc", "-ex", "bt 2", "-ex", "x/s (char *) &linux_banner",
             "-ex", "p/x $cr3", "-ex", "kill"],
            capture_output=True, text=True, timeout=GDB_TIMEOUT, check=False,
            stdin=subprocess.DEVNULL)
    finally:
        sp.stop()
    out = done.stdout + done.stderr
    assert "Breakpoint 1, " in out and "in start_kernel ()" in out, out
    assert "start_kernel in section .init.text" in out, out
    assert "in secondary_startup_64_no_verify ()" in out, out  # the frame below, by name
    assert ':\t"Linux version 6.1.0' in out, out  # linux_banner, a data symbol
