"""Stock gdb 13 with hardware breakpoints, watchpoints and range steps (issues 13, 14).

On the demo (4 vCPUs, each incrementing its own ``loops[i]`` in ``cpu_loop``): a
watchpoint on one vCPU's slot is reported for that vCPU, after the writing instruction,
with gdb's Old/New values; ``hbreak`` and ``break`` on higher-half code before the
kernel turned paging on. On mbkernel (C, i386): ``watch``/``rwatch``/``awatch`` on a
global, and ``next`` through a loop with the ``vCont;r`` range steps it then sends.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import need_gdb
from .stubproc import run_gdb

ROOT = Path(__file__).resolve().parents[2]
MBKERNEL = ROOT / "tests" / "guests" / "mbkernel" / "mbkernel.elf"
PERSONALITIES = ["demo", "demo-intel", "demo-amd-nomask"]
AFTER_INCQ = r"0xffffffff801010f4 in cpu_loop \(\)"  # cpu_loop+9: after `incq loops(,%r12,8)`


@pytest.fixture(autouse=True)
def _gdb():
    need_gdb()


def gdb_out(sp, commands, **kw) -> str:
    r = run_gdb(sp.port, commands, **kw)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "received signal SIGTRAP" not in out, out  # no stray or stale stop
    assert "Could not insert" not in out, out
    return out


def sections(out: str) -> dict[str, str]:
    """The output between ``echo @NAME`` markers, by NAME."""
    parts = re.split(r"^@(\w+)$", out, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def printed(section: str) -> str:
    """The value of the one ``p`` in a section (``$N = VALUE``)."""
    (value,) = re.findall(r"^\$\d+ = (.*)$", section, re.MULTILINE)
    return value


@pytest.mark.parametrize("vm", PERSONALITIES)
def test_demo_hbreak_before_paging_and_watchpoints_per_vcpu(stub_factory, vm):
    sp = stub_factory("--vm", vm, "--wait")
    out = gdb_out(sp, [
        "echo @THREADS\\n", "info threads",
        # kmain64 and ap_main64 are higher-half: not mapped before the kernel's paging
        "hbreak kmain64", "break ap_main64",
        "echo @KMAIN\\n", "continue",
        "echo @AP\\n", "continue", "p $_thread",
        "delete",
        "watch loops[2]", "echo @WATCH\\n", "continue", "p $_thread",
        "delete",
        "rwatch loops[1]", "echo @RWATCH\\n", "continue", "p $_thread",
        "delete",
        "awatch loops[3]", "echo @AWATCH\\n", "continue", "p $_thread",
        # hits of these may be pending on other vCPUs when the first is reported;
        # deleted, they must never be reported
        "watch loops[1]", "watch loops[2]", "watch loops[0]",
        "echo @MANY\\n", "continue",
        "delete",
        "hbreak flags_probe",
        "echo @AFTER\\n", "continue",
        "kill",
    ])
    s = sections(out)
    threads = re.findall(r'Thread (\d) "CPU#(\d)" \(([^)]*)\)', s["THREADS"])
    assert threads == [("1", "0", "stopped"), ("2", "1", "not started"),
                       ("3", "2", "not started"), ("4", "3", "not started")], out
    assert re.search(r'Thread 1 "CPU#0" hit Breakpoint 1, 0x[0-9a-f]+ in kmain64', s["KMAIN"]), out
    assert re.search(r"hit Breakpoint 2, 0x[0-9a-f]+ in ap_main64", s["AP"]), out
    assert re.search(r'Thread 3 "CPU#2" hit Hardware watchpoint 3: loops\[2\]\s+'
                     r"Old value = (\d+)\s+New value = (\d+)\s+" + AFTER_INCQ, s["WATCH"]), out
    old, new = map(int, re.search(r"Old value = (\d+)\s+New value = (\d+)", s["WATCH"]).groups())
    assert new == old + 1, out
    assert printed(s["WATCH"]) == "3", out
    assert re.search(r'Thread 2 "CPU#1" hit Hardware read watchpoint 4: loops\[1\]\s+'
                     r"Value = \d+", s["RWATCH"]), out
    assert printed(s["RWATCH"]) == "2", out
    assert re.search(r'Thread 4 "CPU#3" hit Hardware access \(read/write\) watchpoint 5: '
                     r"loops\[3\]", s["AWATCH"]), out
    assert printed(s["AWATCH"]) == "4", out
    assert re.search(r"hit Hardware (access \(read/write\) )?watchpoint", s["MANY"]), out
    assert re.search(r"hit Breakpoint 9, 0x[0-9a-f]+ in flags_probe", s["AFTER"]), out
    log = sp.stderr
    assert "Traceback" not in log, log


def test_mbkernel_watch_rwatch_awatch_on_a_global(stub_factory):
    sp = stub_factory("--kernel", str(MBKERNEL), "--wait")
    out = gdb_out(sp, [
        "hbreak work", "continue", "delete",
        "watch fib[5]", "echo @WATCH\\n", "continue",
        "delete",
        "rwatch fib[5]", "echo @RWATCH\\n", "continue",
        "delete",
        "awatch fib[7]", "echo @AWATCH\\n", "continue", "continue",
        "delete",
        "kill",
    ], elf=MBKERNEL)
    s = sections(out)
    # fib[5] = fib[4] + fib[3] = 3 + 2, written by line 429; gdb stops after the store
    assert re.search(r"Hardware watchpoint 2: fib\[5\]\s+Old value = 0\s+New value = 5\s+"
                     r"work \(n=n@entry=24\) at tests/guests/mbkernel/kernel\.c:\d+",
                     s["WATCH"]), out
    assert re.search(r"Hardware read watchpoint 3: fib\[5\]\s+Value = 5", s["RWATCH"]), out
    assert re.search(r"Hardware access \(read/write\) watchpoint 4: fib\[7\]\s+"
                     r"Old value = 0\s+New value = 13", s["AWATCH"]), out
    assert re.search(r"Hardware access \(read/write\) watchpoint 4: fib\[7\]\s+"
                     r"Value = 13", s["AWATCH"]), out


def test_mbkernel_next_range_steps_with_vcpus_not_started(stub_factory):
    """``next`` through work()'s loop: gdb sends ``vCont;rSTART,END:1;c`` (the default
    continue applies to the started vCPUs: three of four never start here) and stops
    on each next line."""
    sp = stub_factory("--kernel", str(MBKERNEL), "--wait", "--vcpus", "4")
    out = gdb_out(sp, [
        "break work", "continue",
        "set debug remote 1",
        "echo @NEXT\\n", "next", "next", "next", "next",
        "set debug remote 0",
        "echo @THREADS\\n", "info threads",
        "p i",
        "kill",
    ], elf=MBKERNEL)
    s = sections(out)  # of stdout: gdb's debug output goes to stderr, after it
    ranges = re.findall(r"Sending packet: \$vCont;r([0-9a-f]+),([0-9a-f]+):1;c#", out)
    assert ranges, out
    assert all(int(a, 16) < int(b, 16) for a, b in ranges), ranges
    lines = re.findall(r"^(\d+)\t", s["NEXT"], re.MULTILINE)
    assert len(lines) == 4 and len(set(lines)) >= 2, out  # line after line, into the loop
    rows = re.findall(r'Thread (\d) "CPU#(\d)" \(([^)]*)\)', s["THREADS"])
    assert [r[2] for r in rows] == ["stopped after a step", "not started", "not started",
                                    "not started"], out
