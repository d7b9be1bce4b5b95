"""LLDB (Debian's lldb, 14) against the stub running the demo VM (issue 14, point 5):
attach with ``gdb-remote`` or ``process connect``, list the threads, read every
register, set a breakpoint, step and continue. LLDB asks for packets gdb never sends
(qHostInfo, qProcessInfo, QThreadSuffixSupported, jThreadsInfo, qThreadStopInfo...):
what we refuse gets the empty reply LLDB falls back from, and what we answer it uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .stubproc import DEMO_ELF

LLDB = shutil.which("lldb")


@pytest.fixture(autouse=True)
def _lldb():
    if LLDB is None:
        pytest.skip("lldb is not installed (setup.sh installs Debian's lldb)")


def run_lldb(commands: list[str], timeout: float = 120.0) -> str:
    args = [LLDB, "--no-lldbinit", "--batch", "-o", f"target create {DEMO_ELF}"]
    for c in commands:
        args += ["-o", c]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    return r.stdout + r.stderr


def test_attach_threads_registers_breakpoint_step_continue(stub_factory):
    sp = stub_factory("--vm", "demo")
    out = run_lldb([
        f"gdb-remote 127.0.0.1:{sp.port}",
        "thread list",
        "register read --all",
        "breakpoint set -n cpu_loop",
        "continue",
        "thread step-inst",
        "register read rip",
        "breakpoint delete 1",
        "breakpoint set -n flags_probe",
        "process continue",
        "process detach",
    ])
    # LLDB prints a command's output after it echoed the next command, now and then:
    # every pattern below is looked for in the whole output, and is unique there.
    assert "Process 1 stopped" in out, out
    tids = re.findall(r"thread #(\d): tid = 0x000(\d)", out)
    assert tids == [("1", "1"), ("2", "2"), ("3", "3"), ("4", "4")], out
    regs = out
    for name in ("rax", "rip", "eflags", "cs", "fs_base", "cr3", "efer", "st7", "xmm15",
                 "mxcsr"):
        assert re.search(rf"^\s+{name} = ", regs, re.MULTILINE), (name, out)
    assert re.search(r"stop reason = breakpoint 1\.1\s+frame #0: 0x[0-9a-f]+ demo\.elf`cpu_loop$",
                     out, re.MULTILINE), out
    assert "stop reason = instruction step into" in out, out
    assert re.search(r"rip = 0x[0-9a-f]+\s+demo\.elf`cpu_loop \+ 1", out), out
    assert "stop reason = breakpoint 2.1" in out, out
    assert re.search(r"^->\s+0x[0-9a-f]+ <\+0>:", out.split("process continue")[1],
                     re.MULTILINE), out  # at flags_probe's first instruction
    assert "Process 1 detached" in out, out
    assert "lost connection" not in out, out
    assert "Traceback" not in sp.stderr, sp.stderr


def test_process_connect_and_a_vcpu_not_started(stub_factory):
    """``--wait``: vCPUs 1-3 are threads before the guest starts them; stepping one
    gives its reason as a stop (an error reply would make LLDB drop the connection,
    a stop without a reason would make it send the step again forever)."""
    sp = stub_factory("--vm", "demo", "--wait")
    out = run_lldb([
        f"process connect connect://127.0.0.1:{sp.port}",
        "thread select 3",
        "thread step-inst",
        "thread select 1",
        "thread step-inst",
        "register read rip",
        "process kill",
    ], timeout=60)
    assert "demo.elf`_start" in out, out
    assert out.count("vCPU 2 has not started (thread 3): nothing ran") <= 3, out  # no loop
    assert re.search(r"thread #3.*stop reason = vCPU 2 has not started \(thread 3\): "
                     r"nothing ran", out), out
    # (LLDB's frame line after a step shows the old PC now and then; its register
    # read is right)
    assert "stop reason = instruction step into" in out, out
    assert re.search(r"rip = 0x0+100111\s+demo\.elf`_start \+ 1", out), out
    assert sp.proc.wait(30) is not None  # killed: the stub ends


def test_a_watchpoint_names_the_vcpu_that_wrote(stub_factory):
    """LLDB's ``watchpoint set`` (Z2 after an unanswered qWatchpointSupportInfo) on
    loops[2], which only vCPU 2 (thread 3) writes: the stop names thread 3, after the
    writing instruction."""
    sp = stub_factory("--vm", "demo")
    out = run_lldb([
        f"gdb-remote 127.0.0.1:{sp.port}",
        "watchpoint set expression -w write -s 8 -- (char *)&loops + 16",
        "continue",
        "process detach",
    ])
    assert re.search(r"^\* thread #3, stop reason = watchpoint 1$", out, re.MULTILINE), out
    assert re.search(r"^->\s+0xffffffff801010f4 <\+9>:", out, re.MULTILINE), out
    assert "Process 1 detached" in out, out
