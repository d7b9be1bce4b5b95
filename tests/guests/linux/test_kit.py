"""The test kit itself: the cpio writer, and that QEMU TCG boots Debian's kernel with
our initramfs to /init's marker on 2 vCPUs (which proves the kit, whatever our stub
does with it)."""

from __future__ import annotations

import shutil
import stat
import subprocess

import pytest

from tests.guests.linux import cpio
from tests.guests.linux.kit import MARKER, initramfs

QEMU = shutil.which("qemu-system-x86_64")
QEMU_TIMEOUT = 300  # seconds; ~5 s on an idle machine


def parse_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, rdev) of each entry, up to the trailer (a reader written from
    the format's description, independent of cpio.py's writer)."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos:pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == cpio.TRAILER:
            assert pos == len(data)
            return out
        out.append((name, f[1], body, (f[9], f[10])))


def test_newc_round_trip():
    entries = [cpio.directory("d"), cpio.file("d/f", b"hello", 0o600),
               cpio.symlink("l", "d/f"), cpio.char_device("console", 5, 1)]
    parsed = parse_newc(cpio.archive(entries))
    assert [(n, stat.S_IFMT(m)) for n, m, _, _ in parsed] == [
        ("d", stat.S_IFDIR), ("d/f", stat.S_IFREG), ("l", stat.S_IFLNK),
        ("console", stat.S_IFCHR)]
    assert parsed[1][2] == b"hello" and parsed[1][1] & 0o777 == 0o600
    assert parsed[2][2] == b"d/f" and parsed[3][3] == (5, 1)


def test_initramfs_has_init_busybox_and_the_console():
    parsed = {n: (m, d, r) for n, m, d, r in parse_newc(initramfs(b"\x7fELF-busybox"))}
    assert parsed["init"][1].startswith(b"#!/bin/busybox sh\n")
    assert MARKER.encode() in parsed["init"][1] and parsed["init"][0] & 0o111
    assert parsed["bin/busybox"][1] == b"\x7fELF-busybox"
    assert parsed["dev/console"][2] == (5, 1)


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
def test_qemu_boots_the_kit_to_the_marker(linux_kit):
    done = subprocess.run(
        [QEMU, "-accel", "tcg", "-smp", "2", "-m", "512", "-nographic", "-no-reboot",
         "-monitor", "none", "-kernel", str(linux_kit.vmlinuz),
         "-initrd", str(linux_kit.initramfs),
         "-append", "console=ttyS0 panic=-1 nokaslr"],
        capture_output=True, text=True, timeout=QEMU_TIMEOUT, check=False,
        stdin=subprocess.DEVNULL)
    assert f"{MARKER} cpus=2" in done.stdout, done.stdout[-3000:]
    assert "reboot: Power down" in done.stdout
    assert done.returncode == 0
