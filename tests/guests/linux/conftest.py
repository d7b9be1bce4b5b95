"""The Debian kit as a fixture: fetched once per session, skipped (saying why) only
when Debian's packages cannot be had."""

from __future__ import annotations

import pytest

from tests.guests.linux import kit as kit_module


@pytest.fixture(scope="session")
def linux_kit() -> kit_module.Kit:
    try:
        return kit_module.fetch()
    except kit_module.KitUnavailable as err:
        pytest.skip(f"Debian's kernel and busybox cannot be fetched: {err}")


@pytest.fixture(scope="session")
def linux_symbols(linux_kit, tmp_path_factory):
    """The kallsyms ELF of the kit's kernel (python -m stub symbols; ~15 s)."""
    from stub.symbols import write_symbols

    out = tmp_path_factory.mktemp("symbols") / "vmlinuz.elf"
    write_symbols(linux_kit.vmlinuz.read_bytes(), out)
    return out
