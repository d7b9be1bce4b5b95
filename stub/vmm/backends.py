"""VMM backends by name: what a VM definition's ``backend =`` chooses from.

A backend's module is imported only when a VM is made with it, so naming the backends
(the CLI's choices, config checks) needs none of them installed: importing this module
does not import Unicorn.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

from stub.vmm.api import Vm

Console = Callable[[bytes], None]  # gets the guest's console output as it comes

# name -> module with create_vm(kernel, vcpus, memory, cpu, timer_hz, console, initrd=,
# cmdline=, boot=)
_MODULES = {"emulated": "stub.vmm.emulated"}
BACKENDS: tuple[str, ...] = tuple(_MODULES)


def create_vm(backend: str, *, kernel: Path | bytes, vcpus: int, memory: int, cpu: str,
              timer_hz: float, console: Console | None = None,
              initrd: Sequence[Path | bytes] = (), cmdline: str = "",
              boot: str = "auto") -> Vm:
    """A running VM (vCPU 0 started). ``initrd``: boot modules; ``cmdline``: the kernel's
    command line; ``boot``: the boot protocol (``stub.vmm.boot.CHOICES``: auto, pvh,
    multiboot2, multiboot, vmstub). Raises ValueError for an unknown backend or CPU
    model, VmmError (LoaderError) for a kernel the backend cannot load."""
    module = _MODULES.get(backend)
    if module is None:
        raise ValueError(f"unknown VMM backend {backend!r} (one of {', '.join(BACKENDS)})")
    return importlib.import_module(module).create_vm(
        kernel, vcpus=vcpus, memory=memory, cpu=cpu, timer_hz=timer_hz, console=console,
        initrd=initrd, cmdline=cmdline, boot=boot)
