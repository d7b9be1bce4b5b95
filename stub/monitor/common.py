"""What every monitor command shares: the context it runs in, its one-line errors,
and how it reads guest memory and numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from stub.runtime import MemoryAccessError, Runtime


class MonitorError(Exception):
    """Bad input or an impossible request: the message is the command's whole answer."""


@dataclass(frozen=True)
class Context:
    """``vcpu``: the vCPU gdb has selected (``Hg``): the one ``info registers``,
    ``info mem`` and ``gva2gpa`` are about."""

    rt: Runtime
    vcpu: int

    def registers(self, names) -> dict[str, int]:
        """Those of ``names`` the VMM has, from the selected vCPU (guest stopped)."""
        return self.rt.available_registers(self.vcpu, tuple(names))

    def read_phys_or_none(self, gpa: int, size: int) -> bytes | None:
        """For the page-table walker: None where RAM ends."""
        try:
            data = self.rt.read_physical(gpa, size)
        except MemoryAccessError:
            return None
        return data if len(data) == size else None


@dataclass(frozen=True)
class Reply:
    text: str
    quit: bool = False  # end the VM and the stub after the reply (gdb's kill)


_NUMBER = re.compile(r"(0[xX][0-9a-fA-F_]+|0[0-7]*|[1-9][0-9_]*)\Z")


def parse_number(ctx: Context, text: str) -> int:
    """An address as QEMU's monitor takes it: C-style hex, octal or decimal, or a
    register of the selected vCPU (``$rip``, ``$cr3``)."""
    text = text.strip()
    if text.startswith("$"):
        name = text[1:].lower()
        value = ctx.registers((name,)).get(name)
        if value is None:
            raise MonitorError(f"unknown register {text!r}")
        return value
    if not _NUMBER.match(text):
        raise MonitorError(f"bad address {text!r} (a number such as 0x1000, or $rip)")
    if text.startswith(("0x", "0X")):
        return int(text, 16)
    return int(text, 8) if text.startswith("0") else int(text)
