"""The chaos table: one row per claim with the figures behind it, and the latency summary the
JSON holds. Each scenario module turns its own result into its Row; this only lays them out."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from tools.harness.percentiles import latency_ms


def pct(values: Sequence[float]) -> dict[str, float] | None:
    """p50 / p99 / max in milliseconds of values in seconds, and their count."""
    return latency_ms(values, (("p50", 50.0), ("p99", 99.0)), digits=1, stats=("max", "n"))


@dataclass
class Row:
    scenario: str
    survived: str
    lost: str
    ok: bool


def ms(p: dict[str, float] | None, q: str = "p99") -> str:
    return "-" if not p else f"{p[q]:.0f} ms"


def table(rs: Sequence[Row]) -> str:

    widths = (26, 72, 38)
    lines = [f"{'scenario':<26} {'survived':<72} {'lost':<38} result", "-" * 145]
    for r in rs:
        cols = [
            textwrap.wrap(text, w) or [""]
            for text, w in zip((r.scenario, r.survived, r.lost), widths, strict=True)
        ]
        for i in range(max(map(len, cols))):
            cells = [f"{(c[i] if i < len(c) else ''):<{w}}" for c, w in zip(cols, widths, strict=True)]
            lines.append(" ".join(cells) + (" " + ("ok" if r.ok else "FAIL") if i == 0 else ""))
    return "\n".join(lines)
