"""Hypothesis stateful tests of the whole stub, deterministic: gdb packets and scheduler
moves interleaved by hypothesis over the real model, runtime, session and emulated VMM
(tests/stateful/machine.py says which moves, driver.py how they run and what is
checked after each one).

One TestCase per VM personality of the demo, 4 vCPUs each: ``demo`` (AMD: RFLAGS.TF
steps with MASK_HWINTR), ``demo-intel`` (monitor trap flag), ``demo-amd-nomask``
(RFLAGS.TF, interrupts delivered during steps).

Numbers (hypothesis 6.170.17, this machine, ``CI=true``: derandomized, no database):

- ``MAX_EXAMPLES`` = 100 runs x ``STEPS`` = 200 moves per personality: ~115 runs and
  ~15,000 moves (each followed by every check), 7-9 s per personality, ~24 s in all.
- Reached per personality (``python -m tests.stateful.coverage`` runs the same
  settings and prints the counters): ~2,000 stop replies (~550 step reports, 135-280
  breakpoint reports of which 60-110 report a hit left pending by an earlier resume,
  ~800 after a Ctrl-C, ~300 for the ``?`` after attach, ~120 for ``?`` while
  stopped), 180-360 breakpoint hits, ~3,900
  exits held in flight while other moves happen, ~350 steps cancelled by a suspend
  request, 65-140 vCPUs started while gdb held the others, 8-32 guest int3s
  re-injected, up to ~17 int3s of removed breakpoints. vCPU lifecycle transitions
  (model/lifecycle.py) taken: 19-21 of the 23 a personality can take. Not taken: a step
  over the guest's own int3 while a breakpoint exists (``armed``/``abandoned`` x
  ``foreign_int3``), sometimes the stale int3 of a step abandoned by a detach. Three
  more are unreachable by design (coverage.py says why).
- Longer runs found nothing more: 500 x 200 per personality, not derandomized (~33 s
  each).

Locally (no ``CI``) hypothesis draws new examples on every run; ``CI=true`` replays what
CI runs.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.stateful.machine import StubMachine

MAX_EXAMPLES = 100
STEPS = 200

SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,  # a run boots a VM; the deadline would be per run, not per move
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Demo(StubMachine):
    PERSONALITY = "demo"


class DemoIntel(StubMachine):
    PERSONALITY = "demo-intel"


class DemoAmdNomask(StubMachine):
    PERSONALITY = "demo-amd-nomask"


TestDemo = Demo.TestCase
TestDemo.settings = SETTINGS
TestDemoIntel = DemoIntel.TestCase
TestDemoIntel.settings = SETTINGS
TestDemoAmdNomask = DemoAmdNomask.TestCase
TestDemoAmdNomask.settings = SETTINGS
