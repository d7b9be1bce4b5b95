"""``python -m stub``: ``symbols KERNEL -o FILE`` (stub/symbols.py), else the stub
itself (stub/cli.py)."""

import sys


def _main(argv: list[str]) -> int:
    if argv[:1] == ["symbols"]:
        from stub import symbols

        return symbols.main(argv[1:])
    _hint_symbols(argv)
    from stub.cli import main

    return main(argv)


def _hint_symbols(argv: list[str]) -> None:
    """Booting a bzImage: say how to get symbols gdb can read (it cannot read the image)."""
    kernel = next((a.split("=", 1)[1] for a in argv if a.startswith("--kernel=")), None)
    if kernel is None and "--kernel" in argv[:-1]:
        kernel = argv[argv.index("--kernel") + 1]
    if kernel is not None:
        from pathlib import Path

        from stub.symbols import gdb_hint

        hint = gdb_hint(Path(kernel))
        if hint:
            print(f"stub: {hint}", file=sys.stderr)


sys.exit(_main(sys.argv[1:]))
