"""gdb's ``monitor`` commands (``qRcmd``): one table, each command with its help.

The names and output shapes are QEMU's where QEMU has the command (``info mem``,
``info tlb``, ``xp``, ``gva2gpa``, ``info registers``, ``system_reset``, ``quit``), so a
kernel developer's habits and scripts carry over. ``execute`` is the session's one
entry: it never raises; bad input, a running guest or a failing VMM is one line of
text. Commands that read the guest need it stopped (the runtime checks, under its
lock); ``help``, ``info version``, ``info cpus`` and ``stepmode`` also answer while it
runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from model.errors import NotStopped, ProtocolError
from stub.monitor import cpus, machine, memory
from stub.monitor.common import Context, MonitorError, Reply
from stub.pagetables import PagingUnsupported
from stub.runtime import MemoryAccessError, Runtime
from stub.vmm.api import VmmError

log = logging.getLogger("stub.monitor")

# The reply is one packet of hex, two characters a byte. gdb grows its buffer for a
# long reply (the PacketSize it was told limits what gdb sends), so the output need
# not fit DEFAULT_MAX_PACKET; this bound only keeps a huge ``info tlb`` sane.
MAX_TEXT = 1 << 20


@dataclass(frozen=True)
class Command:
    name: str  # one or two words: "xp", "info mem"
    args: str  # the usage after the name
    help: str
    run: Callable[[Context, list[str]], str]
    quits: bool = False


def _help(ctx: Context, args: list[str]) -> str:
    return "".join(f"{(c.name + ' ' + c.args).strip():22} -- {c.help}\n" for c in COMMANDS)


def _info(ctx: Context, args: list[str]) -> str:
    if args:
        raise MonitorError(f"unknown info command {args[0]!r}; try 'monitor info'")
    return "".join(f"{(c.name + ' ' + c.args).strip():22} -- {c.help}\n"
                   for c in COMMANDS if c.name.startswith("info "))


COMMANDS: tuple[Command, ...] = (
    Command("help", "", "this list", _help),
    Command("info", "", "the info commands", _info),
    Command("info version", "", "the stub's version, its VMM and libraries",
            machine.info_version),
    Command("info cpus", "", "every vCPU: thread, state, RIP, mode; * the selected one",
            cpus.info_cpus),
    Command("info registers", "", "the selected vCPU's registers, QEMU's layout",
            cpus.info_registers),
    Command("info mem", "", "the selected vCPU's mappings, merged: range size rights",
            memory.info_mem),
    Command("info tlb", "", "the selected vCPU's pages: VA: PA flags", memory.info_tlb),
    Command("xp", "/FMT ADDR", "physical memory; FMT [count][x|d|u|o|c|i][b|h|w|g]",
            memory.xp),
    Command("gva2gpa", "ADDR", "the guest-physical address of a virtual one (selected vCPU)",
            memory.gva2gpa),
    Command("stepmode", "", "the step mechanism and what each vCPU has on",
            cpus.stepmode),
    Command("screen", "", "the guest's VGA text screen (80x25 at 0xB8000)", machine.screen),
    Command("system_reset", "", "start the guest over from boot (while stopped)",
            machine.system_reset),
    Command("quit", "", "end the VM and the stub (as gdb's kill)", machine.quit_,
            quits=True),
)
BY_NAME = {c.name: c for c in COMMANDS}


def find(words: list[str]) -> tuple[Command, list[str]] | None:
    """The command the words name (two-word names first) and its arguments."""
    if not words:
        return BY_NAME["help"], []
    if len(words) >= 2 and f"{words[0]} {words[1]}" in BY_NAME:
        return BY_NAME[f"{words[0]} {words[1]}"], words[2:]
    command = BY_NAME.get(words[0])
    return (command, words[1:]) if command else None


def execute(rt: Runtime, vcpu: int, line: str) -> Reply:
    """Run one monitor command line for the vCPU gdb has selected. Never raises."""
    words = line.split()
    found = find(words)
    if found is None:
        what = " ".join(words[:2]) if words[0] == "info" else words[0]
        return Reply(f"unknown monitor command {what!r}; try 'monitor help'\n")
    command, args = found
    try:
        text = command.run(Context(rt, vcpu), args)
    except NotStopped:
        return Reply(f"{command.name}: the guest is running; stop it first (Ctrl-C)\n")
    except (MonitorError, ProtocolError, PagingUnsupported, MemoryAccessError,
            VmmError) as err:
        message = str(err)
        return Reply(message + "\n" if message.startswith(command.name)
                     else f"{command.name}: {message}\n")
    except Exception as err:  # a bug must not become gdb's "Protocol error"
        log.exception("monitor %r failed", line)
        return Reply(f"{command.name}: internal error: {type(err).__name__}: {err}\n")
    return Reply(_fit(text), quit=command.quits)


def _fit(text: str) -> str:
    """The whole text, or its first lines and how many were left out."""
    if len(text) <= MAX_TEXT:
        return text
    head = text[:MAX_TEXT - 80].rsplit("\n", 1)[0] + "\n"
    left = text.count("\n") - head.count("\n")
    return head + f"... {left} more lines left out (at most 1 MiB a reply)\n"


__all__ = ["COMMANDS", "Reply", "execute"]
