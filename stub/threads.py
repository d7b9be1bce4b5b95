"""vCPUs as gdb sees them: threads, numbered from reset, described in plain words.

Every configured vCPU is a thread from the moment the VM exists, started or not:
thread N is vCPU N-1, always (QEMU's rule, which Linux's ``lx-*`` gdb scripts rely on
when they take the CPU number from the thread number). What a thread is doing is said
in the words of :data:`WORDS`, the one table of them, for ``qThreadExtraInfo`` and the
``qXfer:threads:read`` document alike (gdb shows the second's text in ``info threads``
instead of asking the first).
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

#: The coordinator's lifecycle states (``model.lifecycle``) in a user's words.
WORDS = {
    "absent": "not started",
    "running": "running",
    "armed": "stepping",
    "abandoned": "running (finishing a step it was given before the debugger left)",
    "exited_mtrap": "stopped after a step",
    "exited_db": "stopped after a step",
    "at_breakpoint": "at a breakpoint",
    "at_watchpoint": "at a watchpoint",
    "at_fault": "triple fault",
    "suspended": "stopped",
}
HALTED = "halted (hlt)"  # stopped while waiting in hlt for an interrupt


def thread_id(vcpu: int) -> int:
    return vcpu + 1


def vcpu_of_thread(tid: int) -> int:
    return tid - 1


def name(vcpu: int) -> str:
    """QEMU's name for it: ``CPU#0`` is thread 1."""
    return f"CPU#{vcpu}"


def words(state: str, halted: bool = False) -> str:
    """What a vCPU in lifecycle ``state`` is doing; ``halted``: it is stopped in hlt
    (only a VMM that tells knows). An unknown state shows as itself, never as an
    error: a display must not fail because the model grew a state."""
    if halted and state == "suspended":
        return HALTED
    return WORDS.get(state, state)


def threads_document(states: Sequence[tuple[str, bool]]) -> bytes:
    """The ``qXfer:threads:read`` document for vCPUs in (state, halted) order."""
    rows = "".join(
        f'<thread id="{thread_id(i):x}" core="{i}" name={quoteattr(name(i))}>'
        f"{escape(words(state, halted))}</thread>\n"
        for i, (state, halted) in enumerate(states))
    return f'<?xml version="1.0"?>\n<threads>\n{rows}</threads>\n'.encode()
