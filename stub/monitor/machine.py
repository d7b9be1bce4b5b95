"""The machine as a whole: ``info version``, ``screen``, ``system_reset``, ``quit``."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from stub.monitor.common import Context, MonitorError

PACKAGE = "vmstub"


def stub_version() -> str:
    """The installed package's version, else the source tree's pyproject.toml."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        project = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return tomllib.loads(project.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _library(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def info_version(ctx: Context, args: list[str]) -> str:
    vm = ctx.rt.vm
    backend = type(vm).__module__.rsplit(".", 1)[-1]
    model = getattr(getattr(vm, "cpu_model", None), "name", None)
    parts = [f"VMM {backend}" + (f" (CPU model {model})" if model else "")]
    parts += [f"{lib} {v}" for lib in ("unicorn", "capstone")
              if (v := _library(lib)) is not None]
    return f"{PACKAGE} {stub_version()} ({', '.join(parts)})\n"


def screen(ctx: Context, args: list[str]) -> str:
    text = ctx.rt.screen()
    return "this machine has no text screen\n" if text is None else text + "\n"


def system_reset(ctx: Context, args: list[str]) -> str:
    """Only while stopped; the guest starts over from boot, still stopped."""
    reset = getattr(ctx.rt, "reset", None)
    if reset is None:
        raise MonitorError("system_reset: this VM cannot reset (the stub has no reset yet)")
    reset()
    # gdb keeps the registers it read before the reset (QEMU's system_reset has the
    # same effect): say how to make it read them again.
    return ("the VM was reset: vCPU 0 is stopped at its first instruction\n"
            "(gdb shows the old registers until 'maintenance flush register-cache')\n")


def quit_(ctx: Context, args: list[str]) -> str:
    return "the VM and the stub end now\n"
