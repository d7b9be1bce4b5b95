"""``python -m stub``: ``symbols KERNEL -o FILE`` (stub/symbols.py), else the stub
itself (stub/cli.py)."""

import sys


def _main(argv: list[str]) -> int:
    if argv[:1] == ["symbols"]:
        from stub import symbols

        return symbols.main(argv[1:])
    from stub.cli import main

    return main(argv)


sys.exit(_main(sys.argv[1:]))
