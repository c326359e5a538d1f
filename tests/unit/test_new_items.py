"""New items' stand-in vectors: the calibration scale export fits (held-out items reach users'
top k as often as their true factors), and the worker applying it (versions without it as before).
tools/new_items.py measures what it does on MovieLens-100K."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from export.content_map import fit_content_map, fit_exposure_scale
from recgen.core.content_map import (
    CALIBRATION_FILE,
    ContentCalibration,
    apply_content_map,
    load_calibration,
    map_content,
)
from recgen.repository import CatalogItem
from worker.live_catalog import stand_in_factors

D = 16


def _factors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # A shared "popular" direction plus item taste, norms spread like trained factors.
    return (rng.normal(size=(n, D)) + 0.8 * np.ones(D)) * rng.lognormal(0.0, 0.4, size=(n, 1))


def _users(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)) + 0.5


def test_shrunk_vectors_get_back_the_trained_exposure_and_norms() -> None:
    """Pure shrinkage (what ridge does to norms): the fitted scale undoes it, so the
    calibrated vectors' norm distribution is the trained one and their exposure too."""
    F = _factors(1500)
    rows = np.arange(300)
    true = F[rows]
    pred = 0.55 * true * (1 + 0.02 * np.random.default_rng(2).normal(size=true.shape))
    Q = _users(400)
    scale, rep = fit_exposure_scale(pred, rows, F, Q, k=10)
    assert scale == pytest.approx(1 / 0.55, rel=0.03)
    assert rep["exposure_raw"] < 0.3 * rep["exposure_true"]
    assert rep["exposure_calibrated"] == pytest.approx(rep["exposure_true"], rel=0.01)
    cal = ContentCalibration(scale).apply(pred)
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    got = np.quantile(np.linalg.norm(cal, axis=1), qs)
    want = np.quantile(np.linalg.norm(true, axis=1), qs)
    np.testing.assert_allclose(got, want, rtol=0.05)
    raw = np.quantile(np.linalg.norm(pred, axis=1), qs)
    assert (raw < 0.6 * want).all()


def test_consumed_pairs_do_not_count() -> None:
    F = _factors(600)
    rows = np.arange(100)
    Q = _users(200)
    pred = 0.5 * F[rows]
    # Every user consumed held-out item 0 and the 5 items they score highest: those leave
    # the competition (lower thresholds) and the counted pairs.
    scores = Q @ F.T
    seen = [np.r_[0, np.argsort(-s)[:5]] for s in scores]
    s_all, rep_all = fit_exposure_scale(pred, rows, F, Q, k=10)
    s_seen, rep_seen = fit_exposure_scale(pred, rows, F, Q, seen=seen, k=10)
    assert rep_seen["exposure_calibrated"] == pytest.approx(rep_seen["exposure_true"], rel=0.02)
    assert rep_seen["exposure_true"] != rep_all["exposure_true"]
    assert s_seen == pytest.approx(2.0, rel=0.05) and s_all == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match="seen has"):
        fit_exposure_scale(pred, rows, F, Q, seen=seen[:3])


def test_fit_content_map_reports_a_calibration_only_with_queries() -> None:
    rng = np.random.default_rng(3)
    n, dim = 1200, 48
    emb = rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    A = rng.normal(size=(dim, D))
    Y = emb @ A + 0.5 + 1.5 * rng.normal(size=(n, D))  # text explains part of each factor
    W, rep = fit_content_map(emb, Y, queries=_users(300))
    cal = rep["calibration"]
    assert cal["kind"] == "exposure_scale" and cal["scale"] > 1.1  # ridge shrank the norms
    exp = cal["exposure"]
    assert exp["exposure_calibrated"] == pytest.approx(exp["exposure_true"], rel=0.05)
    assert exp["exposure_raw"] < exp["exposure_true"]
    norms = rep["norms"]
    assert norms["heldout_mapped_median"] < norms["heldout_calibrated_median"]
    W2, rep2 = fit_content_map(emb, Y)  # as export/context_features.py calls it: unchanged
    assert rep2["calibration"] is None
    np.testing.assert_array_equal(W, W2)


def test_calibration_file_round_trip_and_validation(tmp_path: Path) -> None:
    assert load_calibration(tmp_path) is None  # versions exported before it
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(ContentCalibration(1.4).to_json()))
    assert load_calibration(tmp_path) == ContentCalibration(1.4)
    for bad in ({"kind": "exposure_scale", "scale": -1}, {"kind": "other", "scale": 1}, {"kind": "x"}):
        (tmp_path / CALIBRATION_FILE).write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=CALIBRATION_FILE):
            load_calibration(tmp_path)
    with pytest.raises(ValueError):
        ContentCalibration(float("nan"))


class _Encoder:
    dim = 8

    def encode(self, texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        e = rng.normal(size=(len(texts), self.dim)).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_worker_applies_the_versions_scale_and_old_versions_are_unchanged(tmp_path: Path) -> None:
    enc_dir = tmp_path / "encoder"
    enc_dir.mkdir()
    W = np.random.default_rng(4).normal(size=(_Encoder.dim + 1, D)).astype(np.float32)
    model = SimpleNamespace(encoder=_Encoder(), content_map=W, version=SimpleNamespace(path=tmp_path))
    items = [CatalogItem("n1", "New One", "a space opera"), CatalogItem("n2", "New Two", "", ("Drama",))]
    raw = apply_content_map(W, _Encoder().encode(["x", "y"]))
    old = stand_in_factors(model, items)  # no calibration file: the raw map, as before
    np.testing.assert_array_equal(old, raw)
    (enc_dir / CALIBRATION_FILE).write_text(json.dumps(ContentCalibration(1.5).to_json()))
    new = stand_in_factors(model, items)
    np.testing.assert_allclose(new, 1.5 * raw, rtol=1e-6)
    np.testing.assert_allclose(map_content(W, _Encoder().encode(["x", "y"]), ContentCalibration(1.5)), new)
    assert new.dtype == np.float32


def test_export_recipe_on_movielens(wheels_dir: Path) -> None:
    """fit_item_content_map + calibration_users (what export_content runs, minus the encoder)."""
    from export.content_step import calibration_users, fit_item_content_map
    from export.data import load_movielens100k
    from export.mf import ALSParams, train_als

    ds = load_movielens100k(wheels_dir)
    p = ALSParams(factors=16, reg=0.05, alpha=1.0, iterations=4)
    factors = train_als(ds.user, ds.item, ds.n_users, ds.n_items, p).item_factors
    rng = np.random.default_rng(5)
    # Embeddings that know something of the factors (no encoder in a unit test).
    emb = np.hstack([factors, rng.normal(size=(ds.n_items, 16))]) + rng.normal(size=(ds.n_items, 32))
    users = calibration_users(ds, factors, p.reg, p.alpha, n=300)
    assert users[0].shape == (300, 16) and len(users[1]) == 300
    W, cal, rep = fit_item_content_map(emb, factors, np.bincount(ds.item, minlength=ds.n_items), users)
    assert cal is not None and cal.scale == rep["calibration"]["scale"] and cal.scale > 1.0
    assert W.shape == (33, 16)
    _, none, _ = fit_item_content_map(emb, factors, np.bincount(ds.item, minlength=ds.n_items), None)
    assert none is None
