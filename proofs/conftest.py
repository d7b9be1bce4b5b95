"""Print what the model checker covered at the end of every pytest run (with or
without ``-s``): states, transitions, depth and rate per configuration."""

from __future__ import annotations

from proofs import ledger


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not ledger.ROWS:
        return
    terminalreporter.section("model checking (proofs/)")
    for line in ledger.table(ledger.ROWS):
        terminalreporter.write_line(line)
