"""The Linux test kit: Debian 12's stock cloud kernel and a busybox initramfs.

``fetch()`` returns a ``Kit`` (the bzImage and an initramfs whose /init prints
``MARKER`` on the console and powers off) or raises ``KitUnavailable`` saying exactly
why. The packages come from Debian with ``apt-get download`` into ``cache_dir()``
(``$VMSTUB_CACHE/debian``, default ``~/.cache/vmstub/debian``) and are reused while
there; the kernel package is the one the meta-package ``linux-image-cloud-amd64``
depends on today. The initramfs is written by ``cpio.py`` (newc, uncompressed: the
kernel spends no time inflating it, which matters under an emulator).

Run as a script (``python -m tests.guests.linux.kit``) it prints the two paths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.guests.linux import cpio

META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
MARKER = "VMSTUB-INIT-OK"
APT_TIMEOUT = 600  # seconds for one apt-get call (a 27 MB download)

#: /init: mount /proc, say the marker, power off at once (no init system, no sync).
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "{MARKER} cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)"
/bin/busybox poweroff -f
"""


class KitUnavailable(RuntimeError):
    """Debian's packages cannot be had here; the message says why (tests skip on it)."""


@dataclass(frozen=True)
class Kit:
    vmlinuz: Path
    initramfs: Path
    kernel_package: str  # e.g. linux-image-6.1.0-57-cloud-amd64


def cache_dir() -> Path:
    root = os.environ.get("VMSTUB_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "vmstub"
    return base / "debian"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise KitUnavailable(f"{argv[0]} is not installed (Debian's packages are fetched "
                             f"with apt-get download and unpacked with dpkg-deb)")
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              timeout=APT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as err:
        raise KitUnavailable(f"{' '.join(argv)} took more than {APT_TIMEOUT} s") from err
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise KitUnavailable(f"{' '.join(argv)} failed ({done.returncode}): {last}")
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the cloud meta-package depends on now. When apt
    has no package lists yet, updates them once (as root, as apt-get needs)."""
    for attempt in range(2):
        try:
            out = _run(["apt-cache", "depends", META_PACKAGE])
        except KitUnavailable:
            out = ""
        found = re.findall(r"Depends:\s*(linux-image-\S+-cloud-amd64)\b", out)
        if found:
            return found[0]
        if attempt == 0:
            _run(["apt-get", "update"])
    raise KitUnavailable(f"apt-cache knows no {META_PACKAGE} (is a Debian 12 "
                         f"'bookworm' source configured?)")


def download(package: str, into: Path) -> Path:
    """The package's .deb in ``into``, downloaded unless one is there already."""
    into.mkdir(parents=True, exist_ok=True)
    have = sorted(into.glob(f"{package}_*.deb"))
    if not have:
        _run(["apt-get", "download", package], cwd=into)
        have = sorted(into.glob(f"{package}_*.deb"))
        if not have:
            raise KitUnavailable(f"apt-get download {package} left no .deb in {into}")
    return have[-1]


def unpack(deb: Path, into: Path) -> Path:
    """``dpkg-deb -x`` into a directory of its own (kept: the next run reuses it)."""
    dest = into / deb.stem
    if not (dest / ".done").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(dest)])
        (dest / ".done").write_text("")
    return dest


def initramfs(busybox: bytes, init: str = INIT_SCRIPT) -> bytes:
    """The newc archive: busybox as /bin/busybox (and /bin/sh), /init, the mount
    points, and /dev/console (the kernel opens it for init's output before any
    devtmpfs is mounted)."""
    return cpio.archive([
        cpio.directory("bin"), cpio.directory("dev"), cpio.directory("proc"),
        cpio.directory("sys"), cpio.directory("tmp", 0o1777),
        cpio.char_device("dev/console", 5, 1),
        cpio.file("bin/busybox", busybox, 0o755),
        cpio.symlink("bin/sh", "busybox"),
        cpio.file("init", init.encode(), 0o755),
    ])


def fetch(cache: Path | None = None) -> Kit:
    cache = cache or cache_dir()
    package = kernel_package()
    kernel_dir = unpack(download(package, cache), cache)
    busybox_dir = unpack(download(BUSYBOX_PACKAGE, cache), cache)
    vmlinuz = next(iter(sorted((kernel_dir / "boot").glob("vmlinuz-*"))), None)
    if vmlinuz is None:
        raise KitUnavailable(f"{package} holds no /boot/vmlinuz-*")
    busybox = busybox_dir / "bin" / "busybox"
    if not busybox.exists():
        raise KitUnavailable(f"{BUSYBOX_PACKAGE} holds no /bin/busybox")
    image = cache / "initramfs.cpio"
    data = initramfs(busybox.read_bytes())
    if not image.exists() or image.read_bytes() != data:
        image.write_bytes(data)
    return Kit(vmlinuz, image, package)


if __name__ == "__main__":
    kit = fetch()
    print(kit.vmlinuz)
    print(kit.initramfs)
