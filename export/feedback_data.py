"""`recgen export --feedback STATE`: fold the gateway's log into the next training set.

What the served model learns from its own traffic:

- positive events (VIEW, CLICK, PURCHASE, RATE) become interactions at their
  event time, like the ratings of the base data (training counts every
  interaction as a positive; the gateway's per-type weights apply at fold-in);
- a DISMISS removes that user-item pair from the training data, base data
  included: the user said no;
- live catalog changes are applied in log order: upserted items join the
  catalog (or replace its title, text and categories), deleted items leave it
  with their interactions, so the next version's catalog is the live one;
- forgotten users (ForgetUser): their events are gone from the store, and
  their rows in the base data are dropped by the store's tombstones, so the
  next version neither holds their history nor learned from it; events they
  sent after being forgotten count like anyone's.

The result is an ordinary Dataset: the export pipeline (tuning, evaluation,
quality gate) treats it like any other.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import numpy as np

from export.data import Dataset
from recgen.core.feedback import POSITIVE_TYPES
from recgen.repository import CatalogItem

LOG = logging.getLogger(__name__)


def fold_feedback(
    ds: Dataset, events: list, changes: list, forgotten: dict[str, float] | None = None
) -> Dataset:
    """The base dataset with the logged events and catalog changes folded in.

    events: server.state Event-like objects (user_id, item_id, type, value, ts);
    changes: CatalogChange-like objects (op, item_id, title, text, categories), in seq order;
    forgotten: user id -> ForgetUser time: their base rows are dropped."""
    gone = set(forgotten or ())
    # 1. The live catalog.
    items: dict[str, CatalogItem] = {it.item_id: it for it in ds.items}
    added = updated = deleted = 0
    for ch in changes:
        if ch.op == "DELETE":
            deleted += items.pop(ch.item_id, None) is not None
            continue
        updated += ch.item_id in items
        added += ch.item_id not in items
        items[ch.item_id] = CatalogItem(ch.item_id, ch.title, ch.text, tuple(ch.categories))
    catalog = list(items.values())  # base order first, then additions in log order
    index = {it.item_id: i for i, it in enumerate(catalog)}

    # 2. Interactions: base rows whose item survives, plus positive events.
    users = {u: i for i, u in enumerate(ds.users)}
    base_ids = [ds.items[i].item_id for i in ds.item.tolist()]
    rows_u = [ds.users[u] for u in ds.user.tolist()]
    rows_i = base_ids
    rows_r = ds.rating.tolist()
    rows_t = ds.timestamp.tolist()
    dismissed = {(e.user_id, e.item_id) for e in events if e.type == "DISMISS"}
    used = 0
    for e in events:
        if e.type in POSITIVE_TYPES and e.item_id in index:
            rows_u.append(e.user_id)
            rows_i.append(e.item_id)
            rows_r.append(float(e.value) if e.type == "RATE" and e.value is not None else 1.0)
            rows_t.append(float(e.ts))
            used += 1
    pairs = zip(rows_u, rows_i, strict=True)
    n_base = len(ds)
    keep = [
        k
        for k, (u, i) in enumerate(pairs)
        if i in index and (u, i) not in dismissed and not (k < n_base and u in gone)
    ]
    for k in keep:
        users.setdefault(rows_u[k], len(users))
    # Users left without interactions (all dismissed) are dropped from the user list.
    active = sorted({users[rows_u[k]] for k in keep})
    remap = {old: new for new, old in enumerate(active)}
    names = [u for u, _ in sorted(users.items(), key=lambda kv: kv[1])]
    out_users = [names[old] for old in active]

    h = hashlib.sha256(ds.fingerprint.encode())
    h.update(f"{len(events)}:{len(changes)}:{changes[-1].seq if changes else 0}".encode())
    for e in events[-1000:]:
        h.update(f"{e.user_id}\x00{e.item_id}\x00{e.type}\x00{e.ts}".encode())
    LOG.info(
        "feedback folded in: %d positive events used of %d, %d dismissed pairs removed, "
        "catalog +%d new, %d changed, -%d deleted",
        used,
        len(events),
        len(dismissed),
        added,
        updated,
        deleted,
    )
    return replace(
        ds,
        items=catalog,
        users=out_users,
        user=np.asarray([remap[users[rows_u[k]]] for k in keep], dtype=np.int32),
        item=np.asarray([index[rows_i[k]] for k in keep], dtype=np.int32),
        rating=np.asarray([rows_r[k] for k in keep], dtype=np.float32),
        timestamp=np.asarray([rows_t[k] for k in keep], dtype=np.float64),
        source=f"{ds.source} + feedback ({used} events, {len(changes)} catalog changes)",
        fingerprint=h.hexdigest(),
    )


def load_feedback(state: str) -> tuple[list, list, dict[str, float]]:
    """Every event, catalog change and ForgetUser tombstone in a gateway's state store."""
    from server.state import open_store

    store = open_store(state)
    try:
        return store.all_events_sync(), store.catalog_changes_sync(0), store.forgotten_users_sync()
    finally:
        store.close()
