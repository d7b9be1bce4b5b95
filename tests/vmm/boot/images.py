"""Tiny kernel images for the boot protocol tests, built with struct (no toolchain).

The code is hand-assembled 32-bit x86 (``GUEST32``): it stores a signature, eax and ebx
at ``RESULT`` and powers off through port 0xF4, so a test checks both what the kernel
was entered with and that it ran. The builders place the same code behind each
protocol's header.
"""

from __future__ import annotations

import struct

BASE = 0x10_0000
RESULT = 0x5000
SIGNATURE = 0x600D_B007
POWEROFF_CODE = 7

# mov dword [RESULT], SIGNATURE; mov [RESULT+4], eax; mov [RESULT+8], ebx;
# mov eax, POWEROFF_CODE; out 0xF4, eax; hlt
GUEST32 = (b"\xc7\x05" + struct.pack("<II", RESULT, SIGNATURE)
           + b"\xa3" + struct.pack("<I", RESULT + 4)
           + b"\x89\x1d" + struct.pack("<I", RESULT + 8)
           + b"\xb8" + struct.pack("<I", POWEROFF_CODE) + b"\xe7\xf4" + b"\xf4")

PT_LOAD, PT_NOTE = 1, 4
EM_386, EM_X86_64 = 3, 62
ET_EXEC, ET_REL = 2, 1


def note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"
    return (struct.pack("<III", len(name), len(desc), kind) + name + bytes(-len(name) % 4)
            + desc + bytes(-len(desc) % 4))


def elf(code: bytes, *, bits: int = 32, paddr: int = BASE, vaddr: int | None = None,
        entry: int | None = None, memsz: int | None = None, notes: bytes = b"",
        etype: int = ET_EXEC, machine: int | None = None, head: bytes = b"") -> bytes:
    """An ELF executable with one PT_LOAD segment (``head`` then ``code``, from file
    offset 0x1000 so a header in ``head`` lies in the first KiBs) and, with ``notes``,
    a PT_NOTE segment. ``entry`` defaults to the first byte of ``code`` (virtual)."""
    vaddr = paddr if vaddr is None else vaddr
    body = head + code
    entry = vaddr + len(head) if entry is None else entry
    machine = (EM_386 if bits == 32 else EM_X86_64) if machine is None else machine
    ehdr_fmt, phdr_fmt = ("<16sHHIIIIIHHHHHH", "<IIIIIIII") if bits == 32 else \
        ("<16sHHIQQQIHHHHHH", "<IIQQQQQQ")
    ehdr_size, phdr_size = struct.calcsize(ehdr_fmt), struct.calcsize(phdr_fmt)
    phnum = 2 if notes else 1
    note_off = ehdr_size + phnum * phdr_size
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    ehdr = struct.pack(ehdr_fmt, ident, etype, machine, 1, entry, ehdr_size, 0, 0, ehdr_size,
                       phdr_size, phnum, 0, 0, 0)
    load = (PT_LOAD, 0x1000, vaddr, paddr, len(body), memsz or len(body), 7, 0x1000)
    notes_ph = (PT_NOTE, note_off, 0, 0, len(notes), len(notes), 4, 4)
    phdrs = b"".join(_phdr(bits, *p) for p in ([load, notes_ph] if notes else [load]))
    headers = ehdr + phdrs + notes
    return headers + bytes(0x1000 - len(headers)) + body


def _phdr(bits: int, kind, offset, vaddr, paddr, filesz, memsz, flags, align) -> bytes:
    if bits == 32:
        return struct.pack("<IIIIIIII", kind, offset, vaddr, paddr, filesz, memsz, flags, align)
    return struct.pack("<IIQQQQQQ", kind, flags, offset, vaddr, paddr, filesz, memsz, align)


def pvh_elf(code: bytes = GUEST32, *, bits: int = 32, desc_size: int = 4, **kw) -> bytes:
    """An ELF whose PVH entry note points at ``code``'s physical address."""
    paddr = kw.get("paddr", BASE)
    desc = (paddr & ((1 << 8 * desc_size) - 1)).to_bytes(desc_size, "little")
    return elf(code, bits=bits, notes=note(b"Xen", 18, desc), **kw)


# ---- Multiboot v1 -----------------------------------------------------------------------

MB1_MAGIC = 0x1BAD_B002


def mb1_header(flags: int, fields: tuple[int, ...] = (), checksum_delta: int = 0) -> bytes:
    checksum = (-(MB1_MAGIC + flags) + checksum_delta) & 0xFFFF_FFFF
    return struct.pack("<III", MB1_MAGIC, flags, checksum) + struct.pack(
        f"<{len(fields)}I", *fields)


def mb1_elf(code: bytes = GUEST32, flags: int = 0x3, **kw) -> bytes:
    """An ELF with a Multiboot v1 header (no a.out kludge) at the start of its segment."""
    return elf(code, head=mb1_header(flags), **kw)


def mb1_kludge(code: bytes = GUEST32, load_addr: int = BASE, bss: int = 0x2000,
               flags: int = 0x10003) -> bytes:
    """A flat binary (no ELF): the Multiboot header with the a.out kludge, then the code.
    The file is loaded whole at ``load_addr``, with ``bss`` zeroed bytes after it."""
    header_len = 32
    end = load_addr + header_len + len(code)
    header = mb1_header(flags, (load_addr, load_addr, end, end + bss,
                                load_addr + header_len))
    return header + code


# ---- Multiboot2 ---------------------------------------------------------------------------

MB2_MAGIC = 0xE852_50D6


def mb2_tag(kind: int, body: bytes = b"", flags: int = 0) -> bytes:
    size = 8 + len(body)
    return struct.pack("<HHI", kind, flags, size) + body + bytes(-size % 8)


def mb2_header(*tags: bytes, arch: int = 0, checksum_delta: int = 0) -> bytes:
    body = b"".join(tags) + mb2_tag(0)
    length = 16 + len(body)
    checksum = (-(MB2_MAGIC + arch + length) + checksum_delta) & 0xFFFF_FFFF
    return struct.pack("<IIII", MB2_MAGIC, arch, length, checksum) + body


def mb2_elf(code: bytes = GUEST32, *tags: bytes, **kw) -> bytes:
    return elf(code, head=mb2_header(*tags), **kw)


def mb2_flat(code: bytes = GUEST32, *tags: bytes, load_addr: int = BASE, bss: int = 0) -> bytes:
    """A flat binary with address and entry tags (header first, loaded at load_addr)."""
    probe = mb2_header(mb2_tag(2, bytes(16)), mb2_tag(3, bytes(4)), *tags)
    entry = load_addr + len(probe)
    end = entry + len(code)
    header = mb2_header(mb2_tag(2, struct.pack("<IIII", load_addr, load_addr, end,
                                               end + bss if bss else 0)),
                        mb2_tag(3, struct.pack("<I", entry)), *tags)
    return header + code
