"""A watchdog for the fuzz tests: a hang must fail loudly, not stall CI forever."""

import faulthandler

import pytest

from .corpus import SCALE

HANG_SECONDS = 120 * SCALE  # far above any test here (the slowest takes a few seconds)


@pytest.fixture(autouse=True)
def _hang_watchdog():
    # On a hang, print every thread's stack and exit the run (a test cannot be
    # interrupted from inside; this at least names where it is stuck).
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
