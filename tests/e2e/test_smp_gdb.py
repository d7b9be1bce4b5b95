"""Stock gdb 13 on smpkernel, the multi-vCPU C test kernel (issues 13 and 14), booted by
vmstub on 4 vCPUs (tests/guests/smpkernel/README.md): ``hbreak`` on higher-half C code
before the kernel's paging is up; ``watch``/``rwatch``/``awatch`` on ``shared_flag``,
which vCPU 2 alone writes and reads, reported for Thread 3 on the writing line with gdb's
Old/New values; ``watch -l`` on a stack variable; watchpoints deleted while other vCPUs'
hits are pending; a watchpoint on memory the guest's own ``rep movsb`` writes; ``next``
and ``until`` over the 1000-iteration loop line through ``vCont;r`` range steps while the
other vCPUs spin. Each test asserts what gdb prints.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import need_gdb
from .stubproc import run_gdb

ROOT = Path(__file__).resolve().parents[2]
SMPKERNEL = ROOT / "tests" / "guests" / "smpkernel" / "smpkernel.elf"
SOURCE = ROOT / "tests" / "guests" / "smpkernel" / "kernel.c"
SRC = r"tests/guests/smpkernel/kernel\.c"
LOOP_SUM = 1498500  # sum(i * 3 for i in range(1000))


@pytest.fixture(autouse=True)
def _gdb():
    need_gdb()


def line(marker: str) -> int:
    """The line of kernel.c marked ``/* MARKER */``."""
    (n,) = [i for i, text in enumerate(SOURCE.read_text().splitlines(), 1)
            if f"/* {marker} */" in text]
    return n


def start(stub_factory, vcpus: int = 4):
    return stub_factory("--kernel", str(SMPKERNEL), "--boot", "vmstub", "--vcpus",
                        str(vcpus), "--wait")


def gdb_out(sp, commands) -> str:
    r = run_gdb(sp.port, commands, elf=SMPKERNEL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "received signal SIGTRAP" not in out, out  # no stray or stale stop
    assert "Could not insert" not in out, out
    assert "Traceback" not in sp.stderr, sp.stderr
    return out


def sections(out: str) -> dict[str, str]:
    """The output between ``echo @NAME`` markers, by NAME."""
    parts = re.split(r"^@(\w+)$", out, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def printed(section: str) -> list[str]:
    """The values of the ``p`` commands in a section (``$N = VALUE``), in order."""
    return re.findall(r"^\$\d+ = (.*)$", section, re.MULTILINE)


def test_hbreak_before_paging_then_watch_and_rwatch_name_vcpu_2_and_its_line(stub_factory):
    sp = start(stub_factory)
    flag_line = line("FLAG_LINE")
    out = gdb_out(sp, [
        "echo @THREADS\\n", "info threads",
        # kmain is higher-half C: the loader's tables do not map it yet
        "hbreak kmain", "echo @KMAIN\\n", "continue", "bt 1", "delete",
        "watch shared_flag", "echo @WATCH\\n", "continue", "p $_thread", "continue",
        "delete",
        "rwatch shared_flag", "echo @RWATCH\\n", "continue", "continue", "p $_thread",
        "kill",
    ])
    s = sections(out)
    rows = re.findall(r'Thread (\d) "CPU#(\d)" \(([^)]*)\)', s["THREADS"])
    assert rows == [("1", "0", "stopped"), ("2", "1", "not started"),
                    ("3", "2", "not started"), ("4", "3", "not started")], out
    assert re.search(r'Thread 1 "CPU#0" hit Breakpoint 1, kmain \(count=4, ram=134217728\) '
                     rf"at {SRC}:\d+", s["KMAIN"]), out
    assert re.search(r"#0 +kmain \(count=4", s["KMAIN"]), out
    # vCPU 2 starts after the watchpoint is set: its first write turns 0 into 1
    hits = re.findall(r'Thread 3 "CPU#2" hit Hardware watchpoint 2: shared_flag\s+'
                      r"Old value = (\d+)\s+New value = (\d+)\s+"
                      rf"set_shared_flag \(value=value@entry=(\d+)\) at {SRC}:(\d+)\s+"
                      rf"(\d+)\t\s*shared_flag = value;", s["WATCH"])
    assert [h[:3] for h in hits] == [("0", "1", "1"), ("1", "2", "2")], out
    assert {int(h[3]) for h in hits} == {int(h[4]) for h in hits} == {flag_line}, out
    assert printed(s["WATCH"]) == ["3"], out
    # each read right after a write, on the same line: reported once, after the load
    reads = re.findall(r'Thread 3 "CPU#2" hit Hardware read watchpoint 3: shared_flag\s+'
                       rf"Value = (\d+)\s+0x[0-9a-f]+ in set_shared_flag \(value=value@entry="
                       rf"(\d+)\) at {SRC}:{flag_line}", s["RWATCH"])
    assert reads == [("2", "2"), ("3", "3")], out
    assert s["RWATCH"].count(" hit ") == 2, out
    assert printed(s["RWATCH"]) == ["3"], out


def test_awatch_names_vcpu_2_its_line_and_the_old_and_new_values(stub_factory):
    sp = start(stub_factory)
    flag_line = line("FLAG_LINE")
    out = gdb_out(sp, [
        "hbreak kmain", "continue", "delete",
        "watch shared_flag", "continue", "continue", "delete",
        "awatch shared_flag", "echo @AWATCH\\n", "continue", "continue", "continue",
        "continue", "p $_thread", "p shared_flag", "kill",
    ])
    s = sections(out)
    # from the stop after the write of 2: the read of 2, the write of 3, the read of 3,
    # the write of 4, each reported once
    hits = re.findall(r'Thread 3 "CPU#2" hit Hardware access \(read/write\) watchpoint 3: '
                      r"shared_flag\s+((?:Old value = \d+\s+New value = |Value = )\d+)\s+"
                      rf"(0x[0-9a-f]+ in )?set_shared_flag \(value=value@entry=(\d+)\) "
                      rf"at {SRC}:{flag_line}", s["AWATCH"])
    values = [(re.sub(r"\s+", " ", v), bool(mid), entry) for v, mid, entry in hits]
    assert values == [("Value = 2", True, "2"), ("Old value = 2 New value = 3", False, "3"),
                      ("Value = 3", True, "3"), ("Old value = 3 New value = 4", False, "4")], out
    assert s["AWATCH"].count(" hit ") == 4, out
    assert printed(s["AWATCH"]) == ["3", "4"], out


def test_watch_location_on_a_stack_variable(stub_factory):
    sp = start(stub_factory)
    out = gdb_out(sp, [
        "break stack_work", "continue", "watch -l local",
        "echo @HITS\\n", "continue", "continue", "continue", "continue",
        "echo @AFTER\\n", "p $_thread", "p local", "p/x (unsigned long)&local - $sp",
        "kill",
    ])
    s = sections(out)
    hits = re.findall(r'Thread 1 "CPU#0" hit Hardware watchpoint 2: -location local\s+'
                      r"Old value = (\d+)\s+New value = (\d+)\s+"
                      rf"stack_work \(seed=seed@entry=5\) at {SRC}:(\d+)", s["HITS"])
    # local = 5; local = 5*3+1; local = 16^0x55; local = 69+7: each reported after its store
    assert [int(h[1]) for h in hits] == [5, 16, 69, 76], out
    assert [int(h[0]) for h in hits[1:]] == [5, 16, 69], out
    assert [int(h[2]) for h in hits[:3]] == [line("LOCAL_2"), line("LOCAL_3"),
                                             line("LOCAL_4")], out
    assert printed(s["AFTER"])[:2] == ["1", "76"], out


def test_watch_on_the_destination_of_the_guests_rep_movsb(stub_factory):
    """The hit comes inside the copy: RIP still on ``rep movsb`` with 13 bytes moved,
    copy_dst[12] holds its new byte and copy_dst[13] is not written yet. (Set once the
    kernel's paging is up: a watch range must be mapped, docs/debug-points.md.)"""
    sp = start(stub_factory)
    out = gdb_out(sp, [
        "hbreak kmain", "continue", "delete",
        "watch copy_dst[12]", "echo @HIT\\n", "continue",
        "x/i $pc", "p $rcx", "p copy_dst[13]", "delete",
        "hbreak loop_work", "echo @DONE\\n", "continue", "p (char *)copy_dst",
        "kill",
    ])
    s = sections(out)
    assert re.search(r'Thread 1 "CPU#0" hit Hardware watchpoint 2: copy_dst\[12\]\s+'
                     r"Old value = 0 '\\000'\s+New value = 111 'o'\s+"
                     rf"0x[0-9a-f]+ in rep_copy \(.*\) at {SRC}:{line('REP_LINE')}",
                     s["HIT"]), out
    assert re.search(r"=> 0x[0-9a-f]+ <rep_copy\+\d+>:\s+rep movsb", s["HIT"]), out
    assert printed(s["HIT"]) == ["51", "0 '\\000'"], out
    assert re.search(r'^\$\d+ = 0x[0-9a-f]+ <copy_dst> "smpkernel: copied by rep movsb"$',
                     s["DONE"], re.MULTILINE), out


def test_deleted_watchpoints_are_never_reported_though_their_hits_were_pending(
        stub_factory):
    """Three APs each write their own spins[i] all the time: when one hit is reported the
    others' are typically pending. Deleted, those must not be reported, nor be a stray
    SIGTRAP; a watchpoint kept is still reported for its own vCPU."""
    sp = start(stub_factory)
    many = ["watch spins[1]", "watch spins[2]", "watch spins[3]"]
    out = gdb_out(sp, [
        "hbreak loop_work", "continue", "delete",  # every AP online by now
        *many, "echo @FIRST\\n", "continue", "delete",
        "hbreak loop_work", "echo @BREAK1\\n", "continue", "echo @X\\n", "delete",
        *many, "echo @SECOND\\n", "continue", "delete 6 8",
        "echo @KEPT\\n", "continue", "continue", "p $_thread", "delete",
        "hbreak loop_work", "echo @BREAK2\\n", "continue", "echo @Y\\n",
        "kill",
    ])
    s = sections(out)
    for name in ("FIRST", "SECOND"):
        hit = re.findall(r'Thread (\d) "CPU#(\d)" hit Hardware watchpoint \d: spins\[(\d)\]',
                         s[name])
        assert len(hit) == 1 and int(hit[0][0]) - 1 == int(hit[0][1]) == int(hit[0][2]), out
    for name in ("BREAK1", "BREAK2"):
        assert re.search(r'Thread 1 "CPU#0" hit Breakpoint \d+, .*loop_work', s[name]), out
        assert "watchpoint" not in s[name], out
    kept = re.findall(r'Thread (\d) "CPU#(\d)" hit Hardware watchpoint (\d): (spins\[\d\])',
                      s["KEPT"])
    assert kept == [("3", "2", "7", "spins[2]")] * 2, out
    assert printed(s["KEPT"]) == ["3"], out


@pytest.mark.parametrize("vcpus", [1, 4])
def test_next_and_until_over_the_loop_line_range_step(stub_factory, vcpus):
    """``next`` over the 1000-iteration line is a few ``vCont;r`` range steps (not 6000
    single steps), with the other vCPUs spinning; it lands on the following line, as
    ``until`` does the next time vCPU 0 gets there."""
    sp = start(stub_factory, vcpus)
    loop, after = line("LOOP_LINE"), line("AFTER_LOOP")
    out = gdb_out(sp, [
        f"break kernel.c:{loop}", "echo @NEXT\\n", "continue",
        "set debug remote 1", "next", "set debug remote 0",
        "echo @NEXTED\\n", "p acc", "p i", "info threads",
        "echo @UNTIL\\n", "continue", "until", "p acc",
        "kill",
    ])
    s = sections(out)  # gdb's debug output goes to stderr, after these
    assert re.search(rf"Breakpoint 1, loop_work \(k=3\) at {SRC}:{loop}", s["NEXT"]), out
    assert re.search(rf"^{after}\t\s*loop_result = acc;", s["NEXT"], re.MULTILINE), out
    ranges = re.findall(r"Sending packet: \$vCont;r([0-9a-f]+),([0-9a-f]+):1;c#", out)
    assert ranges and all(int(a, 16) < int(b, 16) for a, b in ranges), out
    steps = re.findall(r"Sending packet: \$vCont;s", out)
    assert len(ranges) + len(steps) < 20, f"{len(steps)} single steps:\n{out[-3000:]}"
    assert printed(s["NEXTED"]) == [str(LOOP_SUM), "1000"], out
    states = re.findall(r'Thread \d "CPU#\d" \(([^)]*)\)', s["NEXTED"])
    assert states == ["stopped after a step"] + ["stopped"] * (vcpus - 1), out
    assert re.search(rf"Breakpoint 1, loop_work \(k=3\) at {SRC}:{loop}", s["UNTIL"]), out
    assert re.search(rf"^{after}\t\s*loop_result = acc;", s["UNTIL"], re.MULTILINE), out
    assert printed(s["UNTIL"]) == [str(LOOP_SUM)], out
