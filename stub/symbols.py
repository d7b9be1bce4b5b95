"""``python -m stub symbols KERNEL -o FILE``: an ELF gdb loads, with the symbols recovered
from the kernel image's own kallsyms tables (docs/linux.md, "Symbols").

Distribution kernels ship no symbol table (Debian's System.map is a placeholder; the real
one is in the -dbg package, 283 MB), but a kernel built with CONFIG_KALLSYMS carries its
own compressed table of every function and data symbol. ``vmlinux-to-elf`` (PyPI) finds
and decodes it. It cannot read Debian's bzImage by itself: its decompressor does not
know the LZ4 *legacy* format Debian's 6.1 kernels use, and the architecture guess then
fails. So we take the payload out of the bzImage ourselves (the setup header's
``payload_offset``/``payload_length``), decompress it (gzip, bzip2, LZMA, XZ, LZ4
legacy, zstd), and hand vmlinux-to-elf the vmlinux ELF inside; it keeps that ELF's
sections and adds a symbol table (about 87,000 symbols for Debian 12's cloud kernel, in
~15 s here). An ELF ``vmlinux`` is taken as it is.
"""

from __future__ import annotations

import argparse
import bz2
import logging
import lzma
import struct
import sys
import zlib
from pathlib import Path

HDR_MAGIC = b"HdrS"
OFF_SETUP_SECTS = 0x1F1
OFF_MAGIC = 0x202
OFF_VERSION = 0x206
OFF_PAYLOAD = 0x248  # payload_offset, payload_length (protocol 2.08+)
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20


class SymbolsError(Exception):
    """The kernel's symbols cannot be recovered; one line saying why."""


def is_bzimage(image: bytes) -> bool:
    return image[OFF_MAGIC:OFF_MAGIC + 4] == HDR_MAGIC


def payload(image: bytes) -> bytes:
    """The compressed kernel inside a bzImage (setup header 2.08 or later)."""
    version = struct.unpack_from("<H", image, OFF_VERSION)[0]
    if version < 0x0208:
        raise SymbolsError(f"boot protocol {version >> 8}.{version & 0xFF:02d}: its setup "
                           f"header has no payload_offset (2.08 or later needed)")
    start = ((image[OFF_SETUP_SECTS] or 4) + 1) * 512
    offset, length = struct.unpack_from("<II", image, OFF_PAYLOAD)
    data = image[start + offset:start + offset + length]
    if len(data) != length or not length:
        raise SymbolsError(f"the payload ({length} bytes at {start + offset:#x}) lies "
                           f"outside the file")
    return data


def _lz4_legacy(data: bytes) -> bytes:
    """LZ4's legacy frame: the magic, then blocks of (u32 size, data), each up to 8 MiB
    decompressed; Linux appends the decompressed size (4 bytes) after the last block."""
    import lz4.block

    out, pos = bytearray(), 4
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if size == LZ4_LEGACY_MAGIC:  # concatenated frames
            pos += 4
            continue
        if pos + 4 + size > len(data):
            break  # the appended size field
        out += lz4.block.decompress(data[pos + 4:pos + 4 + size],
                                    uncompressed_size=LZ4_LEGACY_BLOCK)
        pos += 4 + size
    return bytes(out)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _gzip(data: bytes) -> bytes:
    # A decompressor object, not gzip.decompress: bytes after the stream are ignored
    # (the other formats carry the decompressed size after theirs).
    return zlib.decompressobj(wbits=31).decompress(data)


def _bzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)


def _lzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data)


_DECOMPRESSORS = (
    (b"\x1f\x8b", "gzip", _gzip),
    (b"BZh", "bzip2", _bzip2),
    (b"\xfd7zXZ\x00", "xz", _xz),
    (b"\x5d\x00\x00", "lzma", _lzma),
    (struct.pack("<I", LZ4_LEGACY_MAGIC), "lz4", _lz4_legacy),
    (b"\x28\xb5\x2f\xfd", "zstd", _zstd),
)


def vmlinux(image: bytes) -> bytes:
    """The kernel ELF: ``image`` itself, or decompressed from a bzImage's payload."""
    if image[:4] == b"\x7fELF":
        return image
    if not is_bzimage(image):
        raise SymbolsError('neither an ELF vmlinux nor a bzImage ("HdrS" at 0x202)')
    data = payload(image)
    for magic, name, decompress in _DECOMPRESSORS:
        if data.startswith(magic):
            try:
                out = decompress(data)
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error,
                    RuntimeError) as err:
                raise SymbolsError(f"the {name} payload does not decompress: {err}") from err
            if out[:4] != b"\x7fELF":
                raise SymbolsError(f"the {name} payload is not an ELF vmlinux")
            return out
    raise SymbolsError(f"the payload's compression is not one we know (it starts "
                       f"{data[:6].hex()}; LZO is not supported)")


def write_symbols(kernel: bytes, out: Path) -> None:
    """Write the symbolized ELF of ``kernel`` (a bzImage or vmlinux) to ``out``."""
    try:
        from vmlinux_to_elf.core.elf_symbolizer import ElfSymbolizer
    except ImportError as err:
        raise SymbolsError("vmlinux-to-elf is not installed (pip install vmlinux-to-elf)"
                           ) from err
    elf = vmlinux(kernel)
    try:
        ElfSymbolizer(elf, str(out))
    except Exception as err:  # its failures are ValueError, AssertionError, ...
        raise SymbolsError(f"vmlinux-to-elf found no usable kallsyms table: "
                           f"{type(err).__name__}: {err}") from err


def default_output(kernel: Path) -> Path:
    return Path(kernel.name + ".elf")


def gdb_hint(kernel: Path) -> str | None:
    """For a bzImage, what to run so gdb has symbols (gdb cannot read a bzImage)."""
    try:
        with kernel.open("rb") as f:
            head = f.read(OFF_MAGIC + 4)
    except OSError:
        return None
    if not is_bzimage(head):
        return None
    out = default_output(kernel)
    return (f"{kernel.name} is a bzImage, which gdb cannot read: make its symbols with "
            f"'python -m stub symbols {kernel} -o {out}' and give gdb {out} instead")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stub symbols",
        description="Write an ELF with the kernel's kallsyms symbols, for gdb.")
    p.add_argument("kernel", type=Path, help="a bzImage (vmlinuz) or an ELF vmlinux")
    p.add_argument("-o", "--output", type=Path,
                   help="the ELF to write (default: KERNEL's name + .elf, here)")
    args = p.parse_args(argv)
    out = args.output or default_output(args.kernel)
    logging.basicConfig(level=logging.WARNING, format="vmlinux-to-elf: %(message)s")
    try:
        image = args.kernel.read_bytes()
        write_symbols(image, out)
    except (OSError, SymbolsError) as err:
        print(f"stub symbols: error: {args.kernel}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}: load it with 'gdb {out}' (or 'symbol-file {out}' in gdb)")
    return 0
