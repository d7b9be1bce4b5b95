"""``python -m bench.soak --minutes 10``: long random gdb sessions on every personality.

The same driver as the CI soak test (``tests/stateful/test_soak.py``: random gdb actions
over the real socket to the real server, runtime, vCPU threads and emulated VMM, every
reply checked for deadlock, stray or stale stops and TF leaks), run for a given time per
personality instead of a bounded count. Reports actions, stops, errors, TF leaks and
memory use; exits non-zero if any error or leak was seen.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import sys
import time

from tests.stateful import test_soak as S

PERSONALITIES = ("demo", "demo-intel", "demo-amd-nomask", "demo-none")


def soak(name: str, seconds: float, seed: int) -> dict:
    served = S.Served(name)
    driver = S.Soak(served, random.Random(seed))
    actions, failure = 0, ""
    start = time.monotonic()
    try:
        driver.connect()
        driver.warm_up()
        while time.monotonic() - start < seconds:
            driver.act()
            actions += 1
            if actions % S.COUNTER_EVERY == 0:
                driver.check_memory()
                driver.check_registers()
        driver.finish()
    except AssertionError as err:  # SoakFailure: deadlock, stray stop, leak, ...
        failure = str(err).splitlines()[0]
    finally:
        driver.close()
        served.stop()
    stops = sum(v for k, v in driver.counts.items() if k.startswith(("T0", "W", "X")))
    return {
        "personality": name, "seconds": round(time.monotonic() - start, 1),
        "actions": actions, "stops": stops, "failure": failure,
        "counts": dict(sorted(driver.counts.items())),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0, help="per personality")
    p.add_argument("--seed", type=int, default=S.SEED)
    p.add_argument("--vm", action="append", choices=PERSONALITIES,
                   help="personality (repeatable; default: all)")
    args = p.parse_args(argv)
    errors = S.ErrorLog()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.WARNING)
    rng = random.Random(args.seed)
    failed = False
    for name in args.vm or PERSONALITIES:
        r = soak(name, args.minutes * 60, rng.getrandbits(64))
        logged = len(errors.records)
        leaks = "TF leak" in r["failure"] or "tf_leaks" in r["failure"]
        failed |= bool(r["failure"]) or logged > 0
        print(f"{r['personality']:16} {r['seconds']:7.1f}s  actions {r['actions']:7,}  "
              f"stops {r['stops']:6,}  errors {int(bool(r['failure'])) + logged}  "
              f"tf_leaks {int(leaks)}  max RSS {r['max_rss_mib']} MiB")
        print(f"    {r['counts']}")
        if r["failure"]:
            print(f"    FAILURE: {r['failure']}")
        for rec in errors.records:
            print(f"    logged: {rec}")
        errors.records.clear()
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
