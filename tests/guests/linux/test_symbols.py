"""``python -m stub symbols``: the payload decompressors on synthetic bzImages, its
refusals, and the symbols it recovers from Debian's kernel."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
import sys

import lz4.block
import pytest
import zstandard

from stub import symbols

FAKE_VMLINUX = b"\x7fELF\x02\x01\x01" + bytes(57) + b"kernel text" * 100


def fake_bzimage(payload: bytes, version: int = 0x020F) -> bytes:
    setup = bytearray(4 * 512)  # setup_sects 3
    setup[0x1F1] = 3
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, 0x100, len(payload) + 4)
    return bytes(setup) + bytes(0x100) + payload + struct.pack("<I", len(FAKE_VMLINUX))


def lz4_legacy(data: bytes) -> bytes:
    block = lz4.block.compress(data, store_size=False)
    return struct.pack("<II", symbols.LZ4_LEGACY_MAGIC, len(block)) + block


COMPRESSORS = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    "lz4": lz4_legacy,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


@pytest.mark.parametrize("name", COMPRESSORS)
def test_vmlinux_comes_out_of_the_payload(name):
    assert symbols.vmlinux(fake_bzimage(COMPRESSORS[name](FAKE_VMLINUX))) == FAKE_VMLINUX


def test_an_elf_is_taken_as_it_is():
    assert symbols.vmlinux(FAKE_VMLINUX) == FAKE_VMLINUX


@pytest.mark.parametrize("image, message", [
    (b"MZ" + bytes(1000), "neither an ELF vmlinux nor a bzImage"),
    (fake_bzimage(gzip.compress(FAKE_VMLINUX), version=0x0206), "2.08 or later"),
    (fake_bzimage(b"\x89LZO" + bytes(20)), "not one we know"),
    (fake_bzimage(gzip.compress(b"not an elf")), "gzip payload is not an ELF vmlinux"),
    (fake_bzimage(b"\x1f\x8b" + bytes(20)), "gzip payload does not decompress"),
])
def test_refusals(image, message):
    with pytest.raises(symbols.SymbolsError, match=message):
        symbols.vmlinux(image)


def test_cli_refuses_with_one_line_and_status_2(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"MZ" + bytes(1000))
    done = subprocess.run([sys.executable, "-m", "stub", "symbols", str(bad), "-o",
                           str(tmp_path / "out.elf")], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "neither an ELF vmlinux" in done.stderr
    assert not (tmp_path / "out.elf").exists()


def test_gdb_hint_only_for_a_bzimage(tmp_path):
    bz, elf = tmp_path / "vmlinuz", tmp_path / "k.elf"
    bz.write_bytes(fake_bzimage(b""))
    elf.write_bytes(FAKE_VMLINUX)
    assert "python -m stub symbols" in symbols.gdb_hint(bz)
    assert symbols.gdb_hint(elf) is None and symbols.gdb_hint(tmp_path / "none") is None


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils (nm) not installed")
def test_debian_kernel_symbols(linux_symbols):
    """Names at the addresses of the kernel's own symbol table (with nokaslr, where the
    kernel runs): text from 0xffffffff81000000, data above it."""
    out = subprocess.run(["nm", str(linux_symbols)], capture_output=True, text=True,
                         check=True).stdout
    table = {line.split()[2]: (int(line.split()[0], 16), line.split()[1])
             for line in out.splitlines() if len(line.split()) == 3}
    assert len(table) > 50_000
    for name in ("start_kernel", "do_sys_openat2", "_raw_spin_lock_irqsave"):
        addr, kind = table[name]
        assert kind in "Tt" and 0xFFFF_FFFF_8100_0000 <= addr < 0xFFFF_FFFF_8400_0000
    assert table["jiffies"][1] in "Dd"
