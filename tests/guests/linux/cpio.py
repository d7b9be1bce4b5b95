"""A cpio archive in the "newc" format (the one the Linux initramfs unpacker reads).

Each entry: a 110-byte ASCII header (magic 070701, then 13 eight-digit hex fields), the
NUL-terminated name padded to 4 bytes, the data padded to 4 bytes; the archive ends with
the entry ``TRAILER!!!``. Written here, not by the cpio tool, so the test kit needs no
host package beyond apt/dpkg and the output is byte-for-byte reproducible (fixed mtime,
uid, gid and inode numbers).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink (its target as ``data``) in the archive."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    # ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    # rdevminor, namesize, check
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev,
              len(name) + 1, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def archive(entries: list[Entry]) -> bytes:
    """The newc archive of ``entries`` in order, with the trailer."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        raw = entry.name.encode()
        head = _header(0 if entry.name == TRAILER else ino, entry, raw)
        out += head + raw + b"\0"
        out += _pad4(len(head) + len(raw) + 1)
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)
