"""Rows of medians, ratios (ours / peer) and targets; printed and written as Markdown."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

PEERS = (("tcg", "QEMU TCG"), ("kvm", "QEMU KVM"), ("udb", "udbserver"))


@dataclass
class Row:
    title: str
    unit: str  # "/s", "MB/s", "ms", "loops/s", "states/s"
    higher_better: bool = True
    target: str = ""
    # ours -> met?  (None: not decidable, e.g. a peer missing)
    check: Callable[[Row], bool | None] | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # column -> why there is no value
    ref_label: str = ""  # what the "reference" column holds (bare VMM, SPIN)
    detail: str = ""
    # ours/ref measured back to back, trial by trial: on a machine whose load changes
    # within a run, the median of these is fairer than a ratio of two medians.
    pairs: list[float] = field(default_factory=list)

    def add(self, col: str, values: list[float]) -> None:
        self.samples.setdefault(col, []).extend(values)

    def na(self, col: str, why: str) -> None:
        self.notes[col] = why

    def median(self, col: str) -> float | None:
        s = self.samples.get(col)
        return statistics.median(s) if s else None

    def ratio(self, col: str) -> float | None:
        if col == "ref" and self.pairs:
            return statistics.median(self.pairs)
        ours, other = self.median("ours"), self.median(col)
        if ours is None or not other:
            return None
        return ours / other

    def met(self) -> bool | None:
        if self.check is None or self.median("ours") is None:
            return None
        return self.check(self)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("MB/s",):
        return f"{value:,.1f}"
    if unit == "ms":
        return f"{value:.2f}"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:,.0f}"


def cell(row: Row, col: str, with_ratio: bool = True) -> str:
    v = row.median(col)
    if v is None:
        return row.notes.get(col, "—")
    text = fmt(v, row.unit)
    if with_ratio and col != "ours":
        r = row.ratio(col)
        if r is not None:
            text += f" (×{r:.2f})"
    return text


def verdict(row: Row) -> str:
    m = row.met()
    if not row.target:
        return ""
    return {True: "**met**", False: "**not met**", None: "n/a"}[m]


def columns(base: str = "") -> list[tuple[str, str]]:
    """(key, label) of the value columns; "base" (``--baseline``) only when there is one."""
    return [("ours", "ours"), *([("base", base)] if base else []), *PEERS]


def markdown(rows: list[Row], base: str = "") -> str:
    cols = columns(base)
    head = ("| measurement | " + " | ".join(label for _, label in cols)
            + " | reference | target | |\n|---|" + "---:|" * (len(cols) + 1) + "---|---|\n")
    lines = []
    for r in rows:
        ref = cell(r, "ref") if ("ref" in r.samples or "ref" in r.notes) else ""
        if ref and r.ref_label:
            ref = f"{r.ref_label}: {ref}"
        title = f"{r.title} [{r.unit}{', lower is better' if not r.higher_better else ''}]"
        values = " | ".join(cell(r, c) for c, _ in cols)
        lines.append(f"| {title} | {values} | {ref} | {r.target} | {verdict(r)} |")
    return head + "\n".join(lines) + "\n"


def samples_markdown(rows: list[Row]) -> str:
    out = []
    for r in rows:
        parts = []
        for col, vals in r.samples.items():
            if vals:
                parts.append(f"{col}: " + ", ".join(fmt(v, r.unit) for v in vals))
        if parts:
            out.append(f"- {r.title}: " + "; ".join(parts) + (f" ({r.detail})" if r.detail else ""))
    return "\n".join(out) + "\n"


def text_table(rows: list[Row], base: str = "") -> str:
    cols = columns(base)
    head = ["measurement", *(label for _, label in cols), "reference", "target"]
    data = []
    for r in rows:
        ref = cell(r, "ref") if ("ref" in r.samples or "ref" in r.notes) else ""
        target = f"{r.target} {verdict(r).strip('*')}".strip()
        data.append([f"{r.title} [{r.unit}]", *(cell(r, c) for c, _ in cols), ref, target])
    widths = [min(max(len(str(x[i])) for x in [head, *data]), 58) for i in range(len(head))]
    line = "  ".join(c.ljust(w) for c, w in zip(head, widths))
    out = [line, "-" * len(line)]
    for d in data:
        out.append("  ".join(str(x)[:58].ljust(w) for x, w in zip(d, widths)))
    return "\n".join(out)
