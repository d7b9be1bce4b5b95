"""``--cpu none`` (no single-step mechanism) is not a dead end (issue 14, point 4).

gdb 13 steps a thread over a breakpoint before it continues it (``vCont;s:N``), even
though the stub's ``vCont?`` reply lists no ``s``/``S``: on x86 gdb has no software
single-step, and all-stop gdb never asks whether the target can step. Refused with
``E.this VM has no single-step mechanism``, gdb takes the error as a stop with signal
0 ("Remote failure reply"). Why it then loops (``set debug infrun 1``): the thread's
stop reason is still the ``swbreak`` of the breakpoint stop before (the ``vCont`` path
does not clear it), so ``handle_signal_stop`` says "delayed software breakpoint trap,
ignoring", finds its step-over unfinished and sends the step again: thousands of
warnings a second, until it is killed.

What ends it (tried with gdb 13.1 against prototypes of the stub):
- the refusal answered as a stop, not an error: an ``O`` console-output packet with the
  reason, then ``T00thread:N;``. gdb prints the reason once, says "Thread N stopped."
  and returns to its prompt with the thread where it was; each further ``continue``
  does the same, and after ``delete`` a ``continue`` runs. The stub answers so
  (``Session._step_refused``).
- the ``E.`` kept, with no ``swbreak`` in the breakpoint's stop reply, or no ``vCont``
  at all (an empty ``vCont?`` reply: gdb's ``Hc``/``s`` path clears the stale reason):
  gdb prints "warning: Remote failure reply: E.this VM ..." and "Thread N stopped."
  once. Both work, but each gives up a feature to do it.
- a bare ``T05`` reads as "hit Breakpoint 1" again (misleading), ``T02`` as "received
  signal SIGINT, Interrupt."
"""

from __future__ import annotations

import queue
import subprocess
import threading

from .conftest import need_gdb
from .stubproc import DEMO_ELF, GDB

REASON = "no single-step mechanism"
LOOPING = 10  # more failure lines than this for 2 continues: gdb is looping


def gdb_lines(port: int, commands: list[str]):
    """Run gdb in batch mode; yield its output lines as they come (None at the end)."""
    args = [GDB, "-nx", "-batch", "-ex", "set confirm off", "-ex", "set pagination off",
            str(DEMO_ELF), "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def test_continue_from_a_breakpoint_gives_one_clear_error_and_stops(stub_factory):
    need_gdb()
    sp = stub_factory("--vm", "demo-none")
    proc, lines = gdb_lines(sp.port, [
        "break flags_probe", "continue",
        "echo CONTINUE-1\\n", "continue", "echo PC-1\\n", "p $pc",
        "echo CONTINUE-2\\n", "continue", "echo PC-2\\n", "p $pc",
        "kill"])
    out: list[str] = []
    failures = 0
    try:
        while True:
            line = lines.get(timeout=120)  # a hang guard only: gdb answers in seconds
            if line is None:
                break
            out.append(line)
            if REASON in line or "Remote failure reply" in line:
                failures += 1
                assert failures <= LOOPING, "gdb loops:\n" + "\n".join(out[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    text = "\n".join(out)
    assert proc.returncode == 0, text
    for n in (1, 2):
        refused = text.split(f"CONTINUE-{n}\n", 1)[1].split(f"PC-{n}\n", 1)[0]
        assert refused.count(REASON) == 1, refused  # said once, clearly
        assert "Remote failure reply" not in refused, refused
        pc = text.split(f"PC-{n}\n", 1)[1].splitlines()[0]
        assert "<flags_probe>" in pc, pc  # stopped where it was
