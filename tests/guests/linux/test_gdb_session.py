"""Issue 17's CI session: Debian's stock kernel on 2 vCPUs under each step personality,
debugged with stock gdb through the symbols ``python -m stub symbols`` recovered.

The session is what a kernel developer does first: a breakpoint on a kernel function by
name (set at reset, before the kernel maps itself: the stub keeps it by virtual
address), ``stepi`` until the kernel's own ``pushf`` (``_raw_spin_lock_irqsave`` saves
the flags through ``native_save_fl``, or the ``pushf; pop rax`` the kernel patches in
its place) and one more over it: the flags it pushed must not carry the debugger's TF.
Breakpoints stay inserted while the kernel runs its own int3 self-test, which must
reach the kernel's handler (it BUG()s otherwise). Then ``continue``, Ctrl-C, detach,
attach again and ``continue`` with a breakpoint inserted: the guest runs on to its
``/init``, which prints the marker with the CPUs it sees and powers off; gdb sees the
exit and the stub ends with status 0."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.e2e.stubproc import GDB, start_stub
from tests.guests.linux.kit import MARKER, Kit

APPEND = "console=ttyS0 nokaslr panic=-1"
TIMEOUT = 600  # seconds for any one wait: a loaded CI machine boots ~5x slower
MAX_STEPS = 40  # stepi until the pushf (a handful of instructions in)
TF = 0x100


def console(mi, command: str) -> str:
    """Run a CLI command through MI and return what it printed."""
    start = len(mi.transcript)
    mi.command(f'-interpreter-exec console "{command}"')
    lines = [line[2:-1] for line in mi.transcript[start:] if line.startswith('~"')]
    return "".join(lines).encode().decode("unicode_escape")


def value(mi, expression: str) -> int:
    done = mi.command(f'-data-evaluate-expression "{expression}"')
    return int(re.search(r'value="(-?\d+)', done).group(1)) & (1 << 64) - 1


def step_over_pushf(mi) -> int:
    """stepi to the first ``pushf`` and over it: the flags it pushed, as the kernel
    saved them on its stack."""
    for _ in range(MAX_STEPS):
        if "pushf" in console(mi, "x/i $pc"):
            break
        mi.command("-exec-step-instruction", "*running")
        assert 'reason="end-stepping-range"' in mi.wait_for("*stopped")
    else:
        pytest.fail(f"no pushf within {MAX_STEPS} instructions:\n" + "\n".join(mi.transcript))
    mi.command("-exec-step-instruction", "*running")
    assert 'reason="end-stepping-range"' in mi.wait_for("*stopped")
    return value(mi, "*(unsigned long *)$sp")


@pytest.mark.skipif(GDB is None, reason="gdb is not installed (setup.sh installs it)")
@pytest.mark.parametrize("cpu", ["intel", "amd"])
def test_gdb_session_on_two_vcpus(linux_kit: Kit, linux_symbols, cpu):
    from tests.e2e.mi import Mi

    sp = start_stub("--kernel", str(linux_kit.vmlinuz), "--initrd", str(linux_kit.initramfs),
                    "--append", APPEND, "--vcpus", "2", "--memory-mb", "512",
                    "--cpu", cpu, "--wait")
    try:
        mi = Mi(elf=linux_symbols, timeout=TIMEOUT)
        try:
            mi.command(f"-target-select remote 127.0.0.1:{sp.port}", "^connected")
            mi.command("-break-insert _raw_spin_lock_irqsave")
            mi.command("-exec-continue", "*running")
            hit = mi.wait_for("*stopped")
            assert 'reason="breakpoint-hit"' in hit and "_raw_spin_lock_irqsave" in hit, hit
            flags = step_over_pushf(mi)
            assert not flags & TF, f"the kernel saw the debugger's TF: {flags:#x}"
            # The kernel's own int3 (its boot-time int3 self-test in alternatives
            # patching, which BUG()s unless its handler runs) with a debugger's
            # breakpoint inserted all the while: reaching kernel_init proves it.
            mi.command("-break-delete")
            mi.command("-break-insert sysrq_handle_crash")  # never called: stays in
            mi.command("-break-insert kernel_init")
            mi.command("-exec-continue", "*running")
            hit = mi.wait_for("*stopped")
            assert 'reason="breakpoint-hit"' in hit and "kernel_init" in hit, hit
            mi.command("-break-delete")
            mi.command("-exec-continue", "*running")
            stopped = mi.command("-exec-interrupt", "*stopped")
            assert 'signal-name="SIGINT"' in stopped, stopped
            threads = mi.command("-thread-info")
            assert threads.count('target-id="Thread') == 2, threads
            mi.command("-target-detach")
        finally:
            mi.close()
        again = Mi(elf=linux_symbols, timeout=TIMEOUT)
        try:  # attach again: the VM stops, both vCPUs are there; then it runs to its
            # power-off with a breakpoint inserted (the kernel's own int3s in
            # text_poke_bp, patching jump labels, go to its handler all the while)
            again.command(f"-target-select remote 127.0.0.1:{sp.port}", "^connected")
            assert again.command("-thread-info").count('target-id="Thread') == 2
            again.command("-break-insert sysrq_handle_crash")
            again.command("-exec-continue", "*running")
            exited = again.wait_for("*stopped")
            assert 'reason="exited-normally"' in exited, exited
        finally:
            again.close()
        status = sp.proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("the guest did not power off:\n" + sp.stdout.decode(errors="replace")[-3000:])
    finally:
        sp.stop()
    out = sp.stdout.decode(errors="replace")
    assert f"{MARKER} cpus=2" in out, out[-3000:]
    assert status == 0, (status, sp.stderr[-2000:])
