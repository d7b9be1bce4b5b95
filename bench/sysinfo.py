"""What the numbers were measured on."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path


def _first_line(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "not installed"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (p.stdout or p.stderr).strip()
    return out.splitlines()[0] if out else "?"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "?"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else "?"


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def collect() -> dict[str, str]:
    spin = _first_line(["spin", "-V"])
    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores",
        "OS": f"{os_name()}, Linux {platform.release()}",
        "Python": platform.python_version(),
        "unicorn": _version("unicorn"),
        "QEMU": _first_line(["qemu-system-x86_64", "--version"]),
        "gdb": _first_line(["gdb", "--version"]),
        "udbserver": _version("udbserver"),
        "SPIN": spin,
        "KVM": "/dev/kvm present (nested)" if os.path.exists("/dev/kvm") else "no /dev/kvm",
    }


def load() -> str:
    try:
        a, b, c = os.getloadavg()
    except OSError:
        return "?"
    return f"{a:.2f} {b:.2f} {c:.2f}"
