"""What the proofs covered in this pytest session, for the terminal summary
(``proofs/conftest.py``): one row per exhaustive run."""

from __future__ import annotations

from dataclasses import dataclass

from proofs.checker import Result


@dataclass(frozen=True)
class Row:
    what: str
    states: int
    transitions: int
    depth: int
    seconds: float
    verdict: str
    in_total: bool = True  # False for a run already counted under another row

    @property
    def rate(self) -> float:
        return self.states / self.seconds if self.seconds > 0 else 0.0


ROWS: list[Row] = []
_SEEN: set[int] = set()  # ids of results already in a row that counts


def record(res: Result, what: str | None = None, verdict: str | None = None,
           in_total: bool = True) -> Result:
    name = what or (res.cfg.name + (" (symmetry)" if res.symmetry else ""))
    if id(res) in _SEEN:
        in_total = False  # the same run, shown again under another name
    _SEEN.add(id(res))
    if verdict is None:
        verdict = "ok" if res.ok else f"{res.counterexample.violation.prop}"
    ROWS.append(Row(name, res.states, res.transitions, res.depth, res.seconds, verdict,
                    in_total))
    return res


def table(rows: list[Row]) -> list[str]:
    head = f"{'configuration':52} {'states':>10} {'transitions':>12} {'depth':>5} " \
           f"{'states/s':>9} {'time':>7}  verdict"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r.what[:52]:52} {r.states:>10,} {r.transitions:>12,} {r.depth:>5} "
                   f"{r.rate:>9,.0f} {r.seconds:>6.2f}s  {r.verdict}")
    counted = [r for r in rows if r.in_total]
    total = sum(r.states for r in counted)
    secs = sum(r.seconds for r in counted)
    out.append(f"{'total (each run once)':52} {total:>10,} "
               f"{sum(r.transitions for r in counted):>12,} "
               f"{'':>5} {total / secs if secs else 0:>9,.0f} {secs:>6.2f}s")
    return out
