"""export.context on synthetic data: a planted time effect is learned and kept,
no effect is switched off; worker.context applies exactly what was kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.context import ContextOptions, fit_lift, format_table, learn_context, local_time_features
from export.data import CleaningReport, Dataset
from export.mf import ALSParams
from recgen.core.context_features import hour_bucket, weekend_flag
from recgen.core.formats import HOUR_LIFT_FILE
from recgen.repository import CatalogItem
from worker.context import ContextModel, JobContext

N_USERS, N_ITEMS, PER_USER = 400, 60, 24
PARAMS = ALSParams(factors=8, reg=0.1, alpha=2.0, iterations=4)
DAY = 86400.0


def synthetic(planted: bool, seed: int = 0) -> Dataset:
    """Users with random tastes; with `planted`, items 0..29 are only ever chosen
    in the evening (20-23 h) and items 30..59 only in the morning (8-11 h)."""
    rng = np.random.default_rng(seed)
    users, items, stamps = [], [], []
    for u in range(N_USERS):
        taste = rng.dirichlet(np.full(N_ITEMS, 0.3))
        days = np.sort(rng.uniform(0, 200, PER_USER)).astype(int)
        evening = rng.random(PER_USER) < 0.5
        for d, ev in zip(days, evening, strict=True):
            if planted:
                half = np.arange(30) if ev else np.arange(30, 60)
                p = taste[half] / taste[half].sum()
                i = int(rng.choice(half, p=p))
                hour = rng.integers(20, 24) if ev else rng.integers(8, 12)
            else:
                i = int(rng.choice(N_ITEMS, p=taste))
                hour = rng.integers(20, 24) if ev else rng.integers(8, 12)
            users.append(u)
            items.append(i)
            stamps.append(d * DAY + hour * 3600.0 + rng.uniform(0, 3000))
    order = np.lexsort((np.asarray(stamps), np.asarray(users)))
    return Dataset(
        items=[CatalogItem(str(i), f"Item {i}", categories=("Drama",)) for i in range(N_ITEMS)],
        users=[str(u) for u in range(N_USERS)],
        user=np.asarray(users, np.int32)[order],
        item=np.asarray(items, np.int32)[order],
        rating=np.ones(len(users), np.float32),
        timestamp=np.asarray(stamps, np.float64)[order],
        source="synthetic",
        fingerprint="0" * 64,
        report=CleaningReport(),
    )


def test_local_time_features_buckets_and_weekends() -> None:
    # 1970-01-03 was a Saturday; 1970-01-05 a Monday.
    ts = np.asarray([2 * DAY + 21 * 3600, 4 * DAY + 9 * 3600, 4 * DAY + 1 * 3600])
    hb, we = local_time_features(ts, 0.0)
    assert hb.tolist() == [5, 2, 0] and we.tolist() == [1, 0, 0]
    hb, _ = local_time_features(ts, -6.0)  # 21 h UTC is 15 h at UTC-6
    assert hb.tolist() == [3, 0, 4]
    assert hour_bucket(np.asarray([-1, 0, 23])).tolist() == [-1, 0, 5]
    assert weekend_flag(np.asarray([-1, 4, 5, 6])).tolist() == [-1, 0, 1, 1]


def test_fit_lift_shrinks_sparse_items_toward_zero() -> None:
    # Item 0: 100 interactions all in value 1; item 1: 2, all in value 1; item 2: never.
    item = np.asarray([0] * 100 + [1] * 2 + [3] * 102)
    value = np.asarray([1] * 102 + [0] * 102)
    lift = fit_lift(item, value, 4, 2)
    assert lift[0, 1] > 0.5 and lift[0, 0] < -1.0  # 2x the base rate of value 1, never value 0
    assert 0 < lift[1, 1] < 0.1 * lift[0, 1] * 2  # two interactions: mostly shrunk away
    assert np.allclose(lift[2], 0.0)  # no interactions: no effect


def _report(tmp_path: Path, planted: bool) -> tuple[dict, Path]:
    out = tmp_path / "context"
    report = learn_context(synthetic(planted), PARAMS, out, None, ContextOptions(bootstrap=300))
    return report, out


def test_planted_time_effect_is_learned_and_kept(tmp_path: Path) -> None:
    report, out = _report(tmp_path, planted=True)
    feats = report["features"]
    assert feats["hour"] == {"warm": "kept", "cold": "kept"}, feats
    for mode in ("warm", "cold"):
        row = report["ablation"][mode]["+hour"]
        assert (
            row["ndcg@10_gain_ci95"][0] > 0 and row["ndcg@10"] > report["ablation"][mode]["none"]["ndcg@10"]
        )
    # No encoder: intent not learned; device and locale never are on this data.
    assert feats["intent"]["warm"].startswith("not learned")
    assert feats["device"]["warm"] == "not learned (no data)"
    cfg = json.loads((out / "context.json").read_text())
    assert cfg["weights"]["cold"]["hour"] > 0 and (out / HOUR_LIFT_FILE).is_file()
    table = format_table(report)
    assert "| warm | +hour |" in table and "| hour | kept (weight" in table

    # Serving applies it: an evening request favours evening items (0..29) for a cold user.
    ctx = ContextModel.load(tmp_path, None, None)
    assert ctx is not None
    rows = np.arange(N_ITEMS)[None, :]
    base = np.zeros((1, N_ITEMS), np.float32)
    unit = np.eye(N_ITEMS, 8, dtype=np.float32)
    s = ctx.cold_scores(base, unit, rows, [JobContext(hour=21, weekday=2)], None)
    assert s is not None and s[0, :30].mean() > s[0, 30:].mean()
    s = ctx.cold_scores(base, unit, rows, [JobContext(hour=9, weekday=2)], None)
    assert s is not None and s[0, :30].mean() < s[0, 30:].mean()
    # Unknown time, and device/locale alone: no term at all.
    assert ctx.cold_scores(base, unit, rows, [JobContext(device="tv", locale="xx-YY")], None) is None


def test_no_time_effect_is_switched_off(tmp_path: Path) -> None:
    report, out = _report(tmp_path, planted=False)
    for f in ("hour", "weekday"):
        for mode in ("warm", "cold"):
            assert report["features"][f][mode].startswith("off"), report["features"]
    cfg = json.loads((out / "context.json").read_text())
    assert all(w == 0.0 for m in cfg["weights"].values() for w in m.values())
    assert not (out / HOUR_LIFT_FILE).exists()
    ctx = ContextModel.load(tmp_path, None, None)
    assert ctx is not None
    rows = np.arange(N_ITEMS)[None, :]
    assert ctx.time_term("warm", np.asarray([21]), np.asarray([5]), rows) is None


def test_time_term_ignores_rows_outside_the_tables(tmp_path: Path) -> None:
    lift = np.asarray([[0.0, 1.0]], np.float32).repeat(3, axis=0)
    ctx = ContextModel({"warm": {"weekday": 2.0}, "cold": {}}, weekend_lift=lift)
    rows = np.asarray([[0, 2, 7, -1]])  # 7: added after export; -1: padding
    term = ctx.time_term("warm", np.asarray([-1]), np.asarray([6]), rows)
    assert term is not None and term.tolist() == [[2.0, 2.0, 0.0, 0.0]]
    assert ctx.time_term("warm", np.asarray([-1]), np.asarray([-1]), rows) is None


def test_context_file_with_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "context").mkdir()
    (tmp_path / "context" / "context.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        ContextModel.load(tmp_path, None, None)
