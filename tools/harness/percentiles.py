"""Latency percentiles: the one helper every tool and test here reports latencies with.

    latency_ms([0.010, 0.012, ...]) -> {"p50": .., "p90": .., "p99": .., "p99_9": .., "mean": .., "max": ..}
    latency_ms(xs, (("p50", 50), ("p99", 99)), digits=1, stats=("max", "n"))  # a shorter summary

Values go in as seconds and come out in milliseconds, rounded; None when there are none. It
does not decide which answers count (OK only, warm-up excluded): the caller filters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

QUANTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def latency_ms(
    values_s: Sequence[float],
    quantiles: Sequence[tuple[str, float]] = QUANTILES,
    *,
    digits: int = 3,
    stats: Sequence[str] = ("mean", "max"),
) -> dict[str, float] | None:
    """{name: percentile} of `values_s` in ms, then the `stats` asked for ("mean", "max", "n")."""
    if len(values_s) == 0:
        return None
    a = np.asarray(values_s, dtype=np.float64) * 1000.0
    out = {
        k: round(float(v), digits)
        for (k, _), v in zip(quantiles, np.percentile(a, [q for _, q in quantiles]), strict=True)
    }
    for s in stats:
        if s == "mean":
            out["mean"] = round(float(a.mean()), digits)
        elif s == "max":
            out["max"] = round(float(a.max()), digits)
        elif s == "n":
            out["n"] = len(a)
        else:
            raise ValueError(f"unknown statistic {s!r}")
    return out
