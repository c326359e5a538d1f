"""`recgen export --feedback STATE`: the logged events and catalog changes of a real
SQLite state store folded into MovieLens-100K, then a real (small) export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.data import load_movielens100k
from export.feedback_data import fold_feedback, load_feedback
from recgen.cli import main
from recgen.repository import ModelRepository
from server.state import CatalogChange, Event, open_store

T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def ml100k(wheels_dir: Path):
    return load_movielens100k(wheels_dir)


@pytest.fixture()
def state(tmp_path: Path, ml100k) -> Path:
    path = tmp_path / "state.db"
    store = open_store(path)
    base_user = ml100k.users[0]
    base_item = ml100k.items[int(ml100k.item[ml100k.user == 0][0])].item_id  # one of user 0's items
    store.add_catalog_changes_sync(
        [
            CatalogChange("UPSERT", "new-item", "Brand New (2026)", "fresh", ("Drama",)),
            CatalogChange("DELETE", ml100k.items[1].item_id),
            CatalogChange("UPSERT", ml100k.items[2].item_id, "Renamed", "", ("Comedy",)),
        ]
    )
    events = [
        Event(f"e{i}", "fresh-user", ml100k.items[10 + i].item_id, "CLICK", None, T0 + i) for i in range(5)
    ]
    events += [
        Event("n1", "fresh-user", "new-item", "PURCHASE", None, T0 + 10),
        Event("n2", "other-user", "new-item", "RATE", 4.0, T0 + 11),
        Event("d1", base_user, base_item, "DISMISS", None, T0 + 12),
        Event("f1", "forgotten", ml100k.items[5].item_id, "CLICK", None, T0 + 13),
        Event("x1", "fresh-user", ml100k.items[1].item_id, "CLICK", None, T0 + 14),  # item deleted
    ]
    store.add_events_bulk_sync(events)
    store.forget_user_sync("forgotten")
    store.close()
    return path


def test_fold_feedback(ml100k, state: Path) -> None:
    events, changes, forgotten = load_feedback(str(state))
    ds = fold_feedback(ml100k, events, changes)
    ids = [it.item_id for it in ds.items]
    assert "new-item" in ids and ml100k.items[1].item_id not in ids
    assert len(ids) == ml100k.n_items  # one added, one deleted
    assert ds.items[ids.index(ml100k.items[2].item_id)].title == "Renamed"
    users = ds.users
    assert "fresh-user" in users and "other-user" in users and "forgotten" not in users
    fresh = ds.item[ds.user == users.index("fresh-user")]
    assert sorted(ds.items[i].item_id for i in fresh) == sorted(
        [ml100k.items[10 + i].item_id for i in range(5)] + ["new-item"]
    )  # the click on the deleted item is gone
    new_row = ids.index("new-item")
    assert int((ds.item == new_row).sum()) == 2
    # The dismissed pair left the training data; the user's other rows stayed.
    u0 = users.index(ml100k.users[0])
    base_item = ml100k.items[int(ml100k.item[ml100k.user == 0][0])].item_id
    u0_items = {ds.items[i].item_id for i in ds.item[ds.user == u0]}
    assert base_item not in u0_items and len(u0_items) == int((ml100k.user == 0).sum()) - 1
    assert len(ds) == len(ml100k) - int((ml100k.item == 1).sum()) - 1 + 7
    assert ds.fingerprint != ml100k.fingerprint


def test_forgotten_base_users_leave_the_next_version(ml100k, tmp_path: Path) -> None:
    """A training user forgotten through the API: their base rows are dropped too, and the
    version records which tombstones it applied; what they sent after the forget stays."""
    gone = ml100k.users[3]
    store = open_store(tmp_path / "state.db")
    store.forget_user_sync(gone)
    store.add_event_sync(Event("after", gone, ml100k.items[7].item_id, "CLICK", None, T0))
    events, changes, forgotten = load_feedback(str(tmp_path / "state.db"))
    store.close()
    assert set(forgotten) == {gone} and forgotten[gone] > 0
    ds = fold_feedback(ml100k, events, changes, forgotten)
    u = ds.users.index(gone)
    assert [ds.items[i].item_id for i in ds.item[ds.user == u]] == [ml100k.items[7].item_id]
    assert len(ds) == len(ml100k) - int((ml100k.user == 3).sum()) + 1


def test_export_with_feedback_builds_and_promotes_a_version(
    tmp_path: Path, state: Path, wheels_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    args = ["export", "--models", str(models), "--wheels", str(wheels_dir), "--quiet", "--no-llm"]
    args += ["--no-encoder", "--factors", "8", "--reg", "0.1", "--alpha", "2", "--iterations", "2"]
    assert main([*args, "--feedback", str(state)]) == 0
    out = capsys.readouterr().out
    assert "promoted: SERVING ->" in out
    repo = ModelRepository(models)
    mv = repo.open()
    catalog = {it.item_id: it for it in mv.catalog()}
    assert "new-item" in catalog and catalog["new-item"].title == "Brand New (2026)"
    assert "feedback (" in mv.manifest.dataset["source"]
    assert main([*args, "--feedback", str(tmp_path / "missing.db")]) == 2
    assert "no such state store file" in capsys.readouterr().out
    assert json.loads((models / "SERVING").read_text())["version"] == mv.name
