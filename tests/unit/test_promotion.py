"""The SERVING pointer: quality gate, rollback, retention (recgen/promotion.py, `recgen reload`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recgen.cli import main
from recgen.promotion import GateRefused, pin, promote, prune, rollback, serving_state
from recgen.repository import SERVING, Manifest, ModelRepository, RepositoryError, VersionWriter


def make_version(root: Path, name: str, hit_rate: float | None) -> str:
    with VersionWriter(root, name) as w:
        (w.path / "item_factors.npy").write_bytes(b"x")
        quality = {} if hit_rate is None else {"mf": {"hit_rate@10": hit_rate}}
        w.commit(Manifest(name, "2026-11-28T00:00:00+00:00", {}, {}, {"quality": quality}, {}))
    return name


def test_first_promotion_then_the_gate(tmp_path: Path) -> None:
    v1 = make_version(tmp_path, "v1", 0.150)
    d = promote(tmp_path, v1)
    assert d.promoted and d.reason == "first promotion"
    assert serving_state(tmp_path) == ("v1", [])
    # Within tolerance (5 %): 0.145 >= 0.1425.
    make_version(tmp_path, "v2", 0.145)
    assert promote(tmp_path).version == "v2"
    assert serving_state(tmp_path) == ("v2", ["v1"])
    # Worse beyond tolerance: refused, nothing moves.
    v3 = make_version(tmp_path, "v3", 0.100)
    with pytest.raises(GateRefused, match="worse than serving v2"):
        promote(tmp_path, v3)
    assert serving_state(tmp_path) == ("v2", ["v1"])
    assert ModelRepository(tmp_path).serving() == "v2"  # newest is v3, but the pointer rules
    # Forced.
    d = promote(tmp_path, v3, force=True)
    assert d.promoted and d.reason == "forced"
    assert serving_state(tmp_path) == ("v3", ["v2", "v1"])
    # A looser tolerance lets it through without force.
    make_version(tmp_path, "v4", 0.080)
    assert promote(tmp_path, "v4", tolerance=0.25).promoted


def test_unmeasured_version_needs_force(tmp_path: Path) -> None:
    promote(tmp_path, make_version(tmp_path, "v1", 0.15))
    make_version(tmp_path, "v2", None)
    with pytest.raises(GateRefused, match="records no hit_rate@10"):
        promote(tmp_path, "v2")
    assert promote(tmp_path, "v2", force=True).promoted


def test_rollback_walks_back(tmp_path: Path) -> None:
    for i, q in enumerate((0.15, 0.15, 0.16), 1):
        make_version(tmp_path, f"v{i}", q)
        promote(tmp_path, f"v{i}")
    assert rollback(tmp_path).version == "v2"
    assert serving_state(tmp_path) == ("v2", ["v1"])
    assert rollback(tmp_path).version == "v1"
    with pytest.raises(RepositoryError, match="nothing to roll back to"):
        rollback(tmp_path)


def test_pin_freezes_the_newest(tmp_path: Path) -> None:
    pin(tmp_path)  # empty repository: nothing to pin
    assert not (tmp_path / SERVING).exists()
    make_version(tmp_path, "v1", 0.15)
    pin(tmp_path)
    make_version(tmp_path, "v2", 0.20)  # appears, but does not serve by being newest
    assert ModelRepository(tmp_path).serving() == "v1"


def test_prune_keeps_serving_and_rollback_targets(tmp_path: Path) -> None:
    for i in range(1, 7):
        make_version(tmp_path, f"v{i}", 0.15)
    promote(tmp_path, "v1")
    promote(tmp_path, "v2")  # serving v2, rollback to v1
    removed = prune(tmp_path, keep=2)
    assert removed == ["v3", "v4"]
    assert ModelRepository(tmp_path).versions() == ["v1", "v2", "v5", "v6"]
    assert not any(p.name.startswith(".deleting") for p in tmp_path.iterdir())


def test_pointer_to_a_deleted_version_falls_back_to_the_newest(tmp_path: Path) -> None:
    make_version(tmp_path, "v1", 0.15)
    make_version(tmp_path, "v2", 0.15)
    (tmp_path / SERVING).write_text(json.dumps({"version": "gone", "previous": []}))
    assert ModelRepository(tmp_path).serving() == "v2"
    (tmp_path / SERVING).write_text("{not json")
    with pytest.raises(RepositoryError, match="unreadable"):
        ModelRepository(tmp_path).serving()


def test_cli_reload_rollback_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_version(tmp_path, "v1", 0.15)
    make_version(tmp_path, "v2", 0.05)
    assert main(["reload", "--models", str(tmp_path), "--version", "v1"]) == 0
    assert main(["reload", "--models", str(tmp_path)]) == 1  # v2 refused by the gate
    assert "not promoted" in capsys.readouterr().err
    assert main(["reload", "--models", str(tmp_path), "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v2"
    assert main(["versions", "--models", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "v2  HR@10=0.0500  serving" in out and "v1  HR@10=0.1500  rollback" in out
    assert main(["rollback", "--models", str(tmp_path)]) == 0
    assert serving_state(tmp_path)[0] == "v1"
    assert main(["rollback", "--models", str(tmp_path)]) == 2
