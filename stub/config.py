"""VM definitions: the built-in catalog, a user directory, or a path.

A VM definition is a small TOML file (every key, its type, default and limits are in
README.md, "VM definition files")::

    kernel = "../guests/demo/demo.elf"   # relative to the TOML file
    vcpus = 4
    memory_mb = 64
    cpu = "amd"                          # intel | amd | amd-nomask | none
    backend = "emulated"
    timer_hz = 100
    boot = "vmstub"                      # auto | pvh | multiboot2 | multiboot | vmstub
    initrd = ["initrd.img"]              # boot modules, relative to the TOML file
    append = "console=ttyS0"             # the kernel's command line

``--vm NAME`` resolves, in order: ``stub/vms/NAME.toml`` (shipped), then
``$VMSTUB_VMS/NAME.toml`` or ``~/.config/vmstub/vms/NAME.toml``, then NAME as a path to
a TOML file, then NAME as a path to a kernel ELF (with the defaults below).
``--kernel FILE`` alone is a VM of its own (``kernel_vm``: one vCPU, 128 MiB, as
QEMU's -kernel). Command-line flags override what the file says. Every problem is a
:class:`VmConfigError` whose message is one line naming the file and the problem.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from model.caps import VM_PERSONALITIES as PERSONALITIES
from stub.vmm.backends import BACKENDS
from stub.vmm.boot import CHOICES as BOOT_CHOICES

CATALOG = Path(__file__).resolve().parent / "vms"
MAX_VCPUS = 16
KERNEL_MEMORY_MB = 128  # --kernel without --vm: what QEMU gives, and what kernels expect
MIN_MEMORY_MB, MAX_MEMORY_MB = 4, 4096
MAX_TIMER_HZ = 10000
#: Every key a VM definition may have, with the TOML type it must be (README, "VM
#: definition files"; ``initrd`` is a list of strings, checked on its own).
TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "a string"),
    "description": (str, "a string"),
    "kernel": (str, "a string (a file name)"),
    "vcpus": (int, "an integer"),
    "memory_mb": (int, "an integer"),
    "cpu": (str, "a string"),
    "backend": (str, "a string"),
    "timer_hz": ((int, float), "a number"),
    "boot": (str, "a string"),
    "initrd": (list, "a list of file names"),
    "append": (str, "a string"),
}
KEYS = set(TYPES)


class VmConfigError(Exception):
    """A VM name or file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class VmConfig:
    name: str
    kernel: Path
    vcpus: int = 1
    memory_mb: int = 64
    cpu: str = "amd"
    backend: str = "emulated"
    timer_hz: float = 100.0
    description: str = ""
    boot: str = "auto"  # the boot protocol (stub.vmm.boot.CHOICES)
    initrd: tuple[Path, ...] = ()  # boot modules, in order
    append: str = ""  # the kernel's command line
    source: str = ""  # where the definition came from, for messages

    @property
    def memory(self) -> int:
        return self.memory_mb << 20

    def with_overrides(self, **flags) -> VmConfig:
        """Apply command-line flags (None means "not given") and validate again. A bad
        flag is named as the user typed it (``--vcpus 99: ...``), not as the VM file."""
        given = {k: v for k, v in flags.items() if v is not None}
        for key, value in given.items():  # self is valid: only this flag can be wrong
            validate(replace(self, source=_flag(key, value), **{key: value}))
        return validate(replace(self, **given))


def user_dir() -> Path:
    env = os.environ.get("VMSTUB_VMS")
    return Path(env) if env else Path.home() / ".config" / "vmstub" / "vms"


def resolve(name: str) -> VmConfig:
    for directory in (CATALOG, user_dir()):
        candidate = directory / f"{name}.toml"
        if candidate.is_file():
            return load_toml(candidate)
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise VmConfigError(f"{name}: no such VM file")
        return load_toml(path)
    if path.is_file():
        if path.read_bytes()[:4] != b"\x7fELF":
            raise VmConfigError(f"{name}: neither a VM definition (.toml) nor an ELF kernel")
        return validate(VmConfig(name=path.stem, kernel=path.resolve(), source=str(path)))
    known = ", ".join(sorted(catalog_names()))
    raise VmConfigError(f"{name}: no such VM (built-in: {known}; or give a .toml or ELF path)")


def kernel_vm(kernel: str) -> VmConfig:
    """The VM ``--kernel FILE`` boots without ``--vm``: one vCPU, 128 MiB, protocol auto."""
    path = Path(kernel)
    return validate(VmConfig(name=path.stem, kernel=path.resolve(),
                             memory_mb=KERNEL_MEMORY_MB, source=kernel))


def catalog_names() -> list[str]:
    return [p.stem for p in CATALOG.glob("*.toml")]


def load_toml(path: Path) -> VmConfig:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise VmConfigError(f"{path}: cannot read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise VmConfigError(f"{path}: not valid TOML: {err}") from None
    unknown = set(data) - KEYS
    if unknown:
        raise VmConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    if "kernel" not in data:
        raise VmConfigError(f"{path}: missing 'kernel'")
    for key, value in data.items():
        kind, words = TYPES[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise VmConfigError(f"{path}: '{key}' must be {words}, not {_shown(value)}")
    initrd = data.get("initrd", [])
    if not all(isinstance(i, str) for i in initrd):
        raise VmConfigError(f"{path}: 'initrd' must be a list of file names, "
                            f"not {_shown(initrd)}")
    fields = {k: v for k, v in data.items() if k not in ("kernel", "initrd")}
    fields.setdefault("name", path.stem)
    kernel = (path.parent / data["kernel"]).resolve()
    return validate(VmConfig(kernel=kernel, source=str(path),
                             initrd=tuple((path.parent / i).resolve() for i in initrd),
                             **fields))


def _flag(key: str, value) -> str:
    """The command-line flag that sets ``key``, with ``value``, for messages."""
    shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
    return f"--{key.replace('_', '-')} {shown}"


def _shown(value) -> str:
    """A TOML value in a one-line message (a long one cut short)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(cfg: VmConfig) -> VmConfig:
    where = cfg.source or cfg.name
    if not 1 <= cfg.vcpus <= MAX_VCPUS:
        raise VmConfigError(f"{where}: vcpus must be 1..{MAX_VCPUS}, not {cfg.vcpus}")
    if not MIN_MEMORY_MB <= cfg.memory_mb <= MAX_MEMORY_MB:
        raise VmConfigError(f"{where}: memory_mb must be {MIN_MEMORY_MB}..{MAX_MEMORY_MB}, "
                            f"not {cfg.memory_mb}")
    if cfg.cpu not in PERSONALITIES:
        raise VmConfigError(f"{where}: cpu must be one of {', '.join(PERSONALITIES)}, "
                            f"not {cfg.cpu!r}")
    if cfg.backend not in BACKENDS:
        raise VmConfigError(f"{where}: backend must be one of {', '.join(BACKENDS)}, "
                            f"not {cfg.backend!r}")
    if not 0 < cfg.timer_hz <= MAX_TIMER_HZ:
        raise VmConfigError(f"{where}: timer_hz must be in (0, {MAX_TIMER_HZ}], "
                            f"not {cfg.timer_hz}")
    if cfg.boot not in BOOT_CHOICES:
        raise VmConfigError(f"{where}: boot must be one of {', '.join(BOOT_CHOICES)}, "
                            f"not {cfg.boot!r}")
    if not cfg.kernel.is_file():
        raise VmConfigError(f"{where}: kernel {cfg.kernel} does not exist")
    for module in cfg.initrd:
        if not module.is_file():
            raise VmConfigError(f"{where}: initrd {module} does not exist")
    if "\0" in cfg.append:
        raise VmConfigError(f"{where}: the command line (append) contains a NUL byte")
    return cfg
