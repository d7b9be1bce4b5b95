"""End to end: stock gdb's ``monitor`` commands against the stub (batch mode)."""

import re

from .conftest import need_gdb
from .stubproc import run_gdb


def test_monitor_commands_through_gdb(stub_factory):
    need_gdb()
    sp = stub_factory("--vm", "demo")
    r = run_gdb(sp.port, [
        "monitor info cpus",
        "monitor info mem",
        "monitor xp /4xg 0x1000",
        "monitor info tlb",
        "monitor xp /16384xb 0x100000",  # a reply longer than PacketSize: gdb takes it
        "monitor frobnicate",
        "monitor quit",
    ])
    out = r.stdout + r.stderr  # gdb writes monitor output to stderr in batch mode
    cpus = re.findall(r"^([* ]) CPU #(\d): thread (\d) (\w+).*mode=long$", out, re.MULTILINE)
    assert [(mark, cpu, thread) for mark, cpu, thread, _ in cpus][:1] == [("*", "0", "1")], out
    assert len(cpus) == 4, out  # the demo VM's vCPUs, stopped by the attach
    # The demo kernel's own tables, in 2 MiB pages: info tlb lists the pages of info mem.
    ranges = re.findall(r"^([0-9a-f]{16})-([0-9a-f]{16}) ([0-9a-f]{16}) -rw$", out, re.MULTILINE)
    assert ranges[0][:2] == ("0000000000000000", "0000000040000000"), out
    assert re.search(r"^0000000000001000: 0x[0-9a-f]{16} 0x[0-9a-f]{16}\n"
                     r"0000000000001010: 0x[0-9a-f]{16} 0x[0-9a-f]{16}$", out, re.MULTILINE), out
    tlb = re.findall(r"^[0-9a-f]{16}: [0-9a-f]{16} --P[-D][-A]---W$", out, re.MULTILINE)
    assert tlb[0].startswith("0000000000000000: 0000000000000000 --P") and len(tlb) > 1000, out
    assert sum(int(size, 16) for _, _, size in ranges) >= 2 << 30, out
    xp = re.findall(r"^0000000000(?:1|2)[0-9a-f]{5}:(?: 0x[0-9a-f]{2}){8}$", out, re.MULTILINE)
    assert len(xp) == 16384 // 8, out
    assert "unknown monitor command 'frobnicate'" in out
    assert "the VM and the stub end now" in out
    assert sp.proc.wait(30) is not None  # quit ended the stub
