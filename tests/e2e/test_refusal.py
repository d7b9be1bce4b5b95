"""A second gdb while one is connected is told why it is refused (issue 14, point 4).

Two real gdb 13 processes: the first holds the stub through gdb's machine interface,
the second runs ``target remote`` in batch mode and must print the stub's reason, not a
bare "Connection reset by peer". The stub's log names whom it refused, and the first
gdb is still served afterwards.
"""

from __future__ import annotations

import re

from .conftest import need_gdb
from .mi import Mi
from .stubproc import run_gdb


def test_a_second_gdb_is_told_why_and_the_first_goes_on(stub_factory):
    need_gdb()
    sp = stub_factory("--vm", "demo")
    first = Mi()
    try:
        first.command(f"-target-select remote 127.0.0.1:{sp.port}", "^connected")
        second = run_gdb(sp.port, ["info threads"], timeout=60)
        out = second.stdout + second.stderr
        reason = re.search(r"Remote failure reply: E\.another debugger is connected "
                           r"\(127\.0\.0\.1:(\d+)\); only one at a time", out)
        assert reason, out
        assert "Connection reset by peer" not in out, out
        # The log names both ends: the refused gdb and the one that holds the stub.
        holder = reason.group(1)
        assert re.search(r"refused a second debugger from 127\.0\.0\.1:\d+: "
                         rf"127\.0\.0\.1:{holder} is connected", sp.stderr), sp.stderr
        # The first gdb was not disturbed.
        threads = first.command("-thread-info")
        assert threads.count('target-id="Thread') == 4, threads
        first.command("-target-detach")
    finally:
        first.close()
