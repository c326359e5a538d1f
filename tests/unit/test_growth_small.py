"""The growth bench (tools/bench/growth.py) at tiny sizes: its synthetic versions are real
versions a worker serves, and its quick run measures every series through a real `recgen serve`
and prints an exponent for each. Never a speed: the numbers live in docs/growth.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recgen.core.formats import ITEM_FACTORS_FILE, ITEM_POPULARITY_FILE
from recgen.core.user_history import UserHistories
from recgen.repository import ModelRepository
from tools.bench.growth import slope, synthetic_version

ROOT = Path(__file__).resolve().parents[2]


def test_slope_is_the_log_log_exponent() -> None:
    assert slope([1e3, 1e4, 1e5], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert slope([1e3, 1e6], [5.0, 5.0]) == pytest.approx(0.0)
    assert slope([1e3, 1e6], [1.0, math.sqrt(1e3)]) == pytest.approx(0.5)
    assert slope([1e3, 1e6], [0.0, 1.0]) is None  # a log needs positive values


def test_synthetic_version_is_a_complete_version(tmp_path: Path) -> None:
    path = synthetic_version(tmp_path / "models", n_users=300, n_items=500)
    mv = ModelRepository(tmp_path / "models").open(verify=True)  # checksums, format version
    assert mv.path == path
    assert len(mv.catalog()) == 500
    assert mv.manifest.params["index"]["kind"] == "flat"
    assert {"reg", "alpha", "factors"} <= set(mv.manifest.params["mf"])
    users = UserHistories(path / "users", n_items=500)
    assert len(users) == 300
    h = users.get("u7")
    assert 1 <= h.rows.size <= 200 and h.rows.max() < 500
    # MF-like factors: norms grow with popularity (what norm-bounded search relies on at 1M items).
    norms = np.linalg.norm(np.load(path / ITEM_FACTORS_FILE), axis=1)
    pop = np.load(path / ITEM_POPULARITY_FILE)
    assert np.corrcoef(norms, pop)[0, 1] > 0.3


@pytest.mark.e2e
def test_quick_run_measures_every_series(tmp_path: Path) -> None:
    out = tmp_path / "growth.json"
    p = subprocess.run(
        [sys.executable, "-m", "tools.bench.growth", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["users"] for r in res["users_series"]["rows"]] == [1000, 10000]
    assert [r["items"] for r in res["items_series"]["rows"]] == [1000, 10000]
    for series in ("users_series", "items_series"):
        for row in res[series]["rows"]:
            for phase in ("cold_c1", "held_c1", "cold_cN", "held_cN"):
                assert row[phase]["errors"] == {}, (phase, row[phase])
                assert row[phase]["calls"] > 0 and row[phase]["p99"] >= row[phase]["p50"] > 0
            assert row["load_s"] > 0 and row["worker_rss_mib"] > 0
        assert all(isinstance(e, float) for e in res[series]["exponents"].values()), res[series]
    assert len(res["goals"]) == 4 and all(isinstance(g["met"], bool) for g in res["goals"])
    assert "exponent" in p.stdout and ("MET" in p.stdout or "MISSED" in p.stdout)
