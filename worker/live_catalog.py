"""The live catalog: the gateway's change log applied on top of a model version.

A new item has no interactions, so it gets a stand-in factor from its text:
the version's content encoder (MiniLM, ONNX) embeds "title. Genres: ....
text" exactly as export embedded the catalog (`recgen.repository.item_text`),
and the learned linear map takes the embedding into the MF item space; the
version's calibration scale (``encoder/content_calibration.json``, where export
wrote one) then lengthens it so that it reaches users' top-k about as often as
a trained item with the same taste would (tools/new_items.py). A
version exported without an encoder falls back to the mean factor of the
items sharing the new item's categories (the global mean if none), so an
upsert still works there, with less taste.

Changes are applied in log order and remembered, so a hot swap replays them
on the new version before it serves (`LiveCatalog.replay`). All mutation
runs on the ranking thread (the caller's job), never beside a batch.
An item already in the version keeps its learned factor when upserted
(interactions beat text); only its title and categories change. An upserted
item whose text changes gets a fresh row (the old row is retired as
deleted), since FAISS indexes cannot update a vector in place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recgen.core.formats import ENCODER_DIR
from recgen.repository import CatalogItem, item_text

LOG = logging.getLogger(__name__)


class CatalogGap(Exception):
    """A change arrived whose predecessor was never applied."""


@dataclass(frozen=True)
class Change:
    seq: int
    delete: bool
    item: CatalogItem  # for a delete only item_id matters


def stand_in_factors(model: Any, items: list[CatalogItem]) -> np.ndarray:
    """(m, d) factors for new items: content map of their text (times the version's
    calibration scale, where it has one), else category means."""
    from recgen.core.content_map import load_calibration, map_content

    if model.encoder is not None and model.content_map is not None:
        emb = model.encoder.encode([item_text(it) for it in items])
        # Read at each upsert batch (a small JSON file, rare admin calls): versions are immutable.
        calibration = load_calibration(model.version.path / ENCODER_DIR)
        return map_content(model.content_map, emb, calibration)
    factors = model.ranker.factors
    out = np.empty((len(items), factors.shape[1]), np.float32)
    for i, it in enumerate(items):
        mask = np.zeros(len(model.catalog), dtype=bool)
        for c in it.categories:
            m = model.categories.get(c.lower())
            if m is not None:
                mask |= m[: len(mask)]
        out[i] = factors[mask].mean(axis=0) if mask.any() else factors.mean(axis=0)
    return out


def _set_categories(model: Any, row: int, categories: tuple[str, ...]) -> None:
    for mask in model.categories.values():
        mask[row] = False
    n = len(model.catalog)
    for c in categories:
        model.categories.setdefault(c.lower(), np.zeros(n, dtype=bool))[row] = True


def _grow_categories(model: Any, n: int) -> None:
    for key, mask in list(model.categories.items()):
        if len(mask) < n:
            model.categories[key] = np.concatenate([mask, np.zeros(n - len(mask), dtype=bool)])


def apply_changes(model: Any, changes: list[Change]) -> None:
    """Apply changes (already in order, all new) to one loaded model version."""
    ranker = model.ranker
    new_items: dict[str, CatalogItem] = {}  # item_id -> item, in order of first addition
    deleted: dict[int, bool] = {}  # row -> deleted?, the last change wins; applied once below
    titles_changed = False
    for ch in changes:
        item_id = ch.item.item_id
        row = model.item_index.get(item_id)
        if ch.delete:
            if item_id in new_items:  # added and removed in one batch: never appears
                del new_items[item_id]
            elif row is not None:
                deleted[row] = True
            continue
        if item_id in new_items or row is None:
            new_items[item_id] = ch.item
            continue
        old = model.catalog[row]
        if row in model.content_rows and item_text(old) != item_text(ch.item):
            deleted[row] = True  # its stand-in factor came from the old text: re-embed as a new row
            new_items[item_id] = ch.item
            continue
        titles_changed |= old.title != ch.item.title
        model.catalog[row] = ch.item
        _set_categories(model, row, ch.item.categories)
        deleted[row] = False
    for flag in (True, False):
        rows = [r for r, d in deleted.items() if d is flag]
        if rows:
            ranker.set_deleted(np.asarray(rows, dtype=np.int64), flag)
    if new_items:
        t = time.perf_counter()
        added = list(new_items.values())
        vectors = stand_in_factors(model, added)
        n0 = len(model.catalog)
        model.catalog.extend(added)
        _grow_categories(model, len(model.catalog))
        for i, it in enumerate(added):
            model.item_index[it.item_id] = n0 + i
            model.content_rows.add(n0 + i)
            _set_categories(model, n0 + i, it.categories)
        ranker.append_items(vectors)
        # A history id that was unknown (skipped) or re-embedded has a new row now: the kept
        # fold-in inputs and vectors no longer say what a fresh request would compute.
        model.folded_users.clear()
        titles_changed = True
        LOG.info("live catalog: %d items added in %.0f ms", len(new_items), (time.perf_counter() - t) * 1e3)
    if titles_changed and model.checker is not None:
        from recgen.core.grounding import GroundingChecker

        model.checker = GroundingChecker([it.title for it in model.catalog], boundary="word")


class LiveCatalog:
    """The change log a worker has applied, to re-apply on a new model version."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    @property
    def applied_seq(self) -> int:
        return self.changes[-1].seq if self.changes else 0

    def apply(self, model: Any, changes: list[Change]) -> int:
        """Apply the changes after `applied_seq`; returns the new applied seq."""
        fresh = [c for c in changes if c.seq > self.applied_seq]
        expected = self.applied_seq + 1
        for c in fresh:
            if c.seq != expected:
                raise CatalogGap(f"catalog change {c.seq} arrived, but {expected} is the next to apply")
            expected += 1
        if fresh:
            apply_changes(model, fresh)
            self.changes.extend(fresh)
        return self.applied_seq

    def replay(self, model: Any) -> None:
        """Bring a freshly loaded version up to the applied seq (before it serves)."""
        if self.changes:
            apply_changes(model, self.changes)
            LOG.info("replayed %d catalog changes on %s", len(self.changes), model.name)
