"""The content → item-factor ridge map on synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from export.content_map import fit_content_map
from recgen.core.content_map import apply_content_map, load_content_map

DIM, D, N = 384, 32, 3000


def _data(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Unit-norm embeddings like the encoder's; factors a known affine function.
    emb = rng.normal(size=(N, DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    A = rng.normal(size=(DIM, D))
    b = rng.normal(size=D) * 0.3
    clean = emb @ A + b
    factors = clean + noise * clean.std() * rng.normal(size=clean.shape)
    return emb.astype(np.float32), factors.astype(np.float32), A, b


def test_recovers_a_known_linear_map() -> None:
    emb, factors, A, b = _data(noise=0.1)
    W, report = fit_content_map(emb, factors)
    assert W.shape == (DIM + 1, D) and W.dtype == np.float32
    assert report["l2_selected_by"] == "heldout_cosine" and report["l2"] > 0
    assert report["n_fit"] == N and report["n_heldout"] == 600
    assert report["heldout"]["cosine"] > 0.95
    assert report["heldout"]["r2"] > 0.9
    # Rank quality: mapped vectors land among the true neighbours far more
    # often than the content-blind mean factor does.
    assert report["heldout"]["nn_overlap@10"] > 0.5
    assert report["heldout"]["nn_any_overlap@10"] > 0.9
    assert report["heldout"]["nn_overlap@10"] > report["baseline_mean_factor"]["nn_overlap@10"] + 0.3
    rel = np.linalg.norm(W[:-1] - A) / np.linalg.norm(A)
    assert rel < 0.2
    np.testing.assert_allclose(W[-1], b, atol=0.3)


def test_apply_matches_the_formula_and_checks_shapes(tmp_path) -> None:
    emb, factors, _, _ = _data(noise=0.1)
    W, _ = fit_content_map(emb, factors, l2=1.0)
    got = apply_content_map(W, emb[:5])
    np.testing.assert_allclose(got, emb[:5] @ W[:-1] + W[-1], rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32
    assert apply_content_map(W, emb[0]).shape == (1, D)
    with pytest.raises(ValueError, match="do not fit"):
        apply_content_map(W, emb[:, :100])
    np.save(tmp_path / "content_map.npy", W)
    np.testing.assert_array_equal(load_content_map(tmp_path / "content_map.npy", dim=DIM, factors=D), W)
    with pytest.raises(ValueError, match="columns"):
        load_content_map(tmp_path / "content_map.npy", dim=DIM, factors=D + 1)


def test_zero_weight_items_are_left_out() -> None:
    emb, factors, _, _ = _data(noise=0.1)
    # Items without interactions: their "factors" are junk and weight 0.
    weights = np.ones(N)
    weights[:1000] = 0.0
    factors = factors.copy()
    factors[:1000] = np.random.default_rng(1).normal(size=(1000, D)) * 50
    W, report = fit_content_map(emb, factors, weights=weights)
    assert report["n_fit"] == 2000 and report["n_heldout"] == 400
    assert report["heldout"]["cosine"] > 0.95
    W_all, report_all = fit_content_map(emb, factors)
    assert report_all["heldout"]["cosine"] < 0.8  # the junk rows would have spoilt the fit


def test_pure_noise_is_reported_as_useless() -> None:
    rng = np.random.default_rng(2)
    emb, _, _, _ = _data(noise=0.0)
    factors = rng.normal(size=(N, D)).astype(np.float32)
    _, report = fit_content_map(emb, factors)
    assert report["heldout"]["r2"] < 0.05
    assert abs(report["heldout"]["cosine"]) < 0.1


def test_bad_arguments() -> None:
    emb, factors, _, _ = _data(noise=0.1)
    with pytest.raises(ValueError, match="equal rows"):
        fit_content_map(emb[:10], factors)
    with pytest.raises(ValueError, match="weights"):
        fit_content_map(emb, factors, weights=-np.ones(N))
    with pytest.raises(ValueError, match="l2"):
        fit_content_map(emb, factors, l2=0.0)
    with pytest.raises(ValueError, match="at least 10"):
        fit_content_map(emb, factors, weights=np.r_[np.ones(5), np.zeros(N - 5)])
