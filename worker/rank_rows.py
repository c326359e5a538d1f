"""The packed rank hop, worker side: a RankRowsRequest in, one ranking call, a RankRowsResponse out.

The gateway has batched already (server/rank_batch.py), so a RankRows batch is ranked as
one unit: every row's job is built, the valid ones go to `Ranker.rank` in a single call (one
fold-in, one FAISS search, one ONNX call), and the answers leave as packed arrays of item
ids and scores, without titles (the gateway holds the catalog). Everything here runs in the
worker's one model thread, so a batch never sees a catalog half changed.

What it does not do: queue, wait for more requests, or split the batch (no second batcher);
map exceptions to statuses (worker/service.py), or know gRPC.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from recgen import tracing
from recgen.core.user_history import fold_in_weights, merge_live
from recgen.worker.v1 import worker_pb2 as wpb
from worker.context import JobContext
from worker.folded_users import FoldedUser
from worker.model import LoadedModel
from worker.ranking import RankJob, RankResult

MAX_K = 1000
INVALID_ARGUMENT = 3  # grpc.StatusCode.INVALID_ARGUMENT's number
DEADLINE_EXCEEDED = 4


def item_rows(model: LoadedModel, ids: Sequence[str]) -> np.ndarray:
    """Catalog rows of `ids`; unknown ids are skipped, not errors: an item may have left the
    catalog between the user's event and this request."""
    index = model.item_index
    return np.asarray([index[i] for i in ids if i in index], dtype=np.int64)


def build_job(
    model: LoadedModel,
    *,
    user_id: str,
    forgotten_at: float,
    history: Sequence[tuple[str, float, float]],  # (item id, weight, unix time), newest first
    exclude: Sequence[str],
    dismissed: Sequence[str],
    seen: Sequence[str],
    include_categories: Sequence[str],
    exclude_categories: Sequence[str],
    k: int,
    include_seen: bool,
    context: JobContext,
) -> RankJob:
    """One request as a ranking job: the version's history of the user plus the live events,
    decayed and folded exactly as export evaluated them (recgen/core/user_history.py). The
    user's part, and later its vector, comes from the model's FoldedUsers when the same user
    arrived with the same history before (worker/folded_users.py)."""
    history = tuple(history)
    seen = tuple(seen)
    user = model.folded_users.get(
        (user_id, forgotten_at, history, seen),
        lambda: folded_user(model, user_id, forgotten_at, history, seen),
    )
    return RankJob(
        history_rows=user.rows,
        history_weights=user.weights,
        exclude_rows=item_rows(model, exclude),
        k=k,
        include_seen=include_seen,
        allowed=model.allowed_by_categories(list(include_categories), list(exclude_categories)),
        context=context,
        dismissed_rows=item_rows(model, dismissed),
        seen_rows=user.seen,
        folded=user,
    )


def folded_user(
    model: LoadedModel,
    user_id: str,
    forgotten_at: float,
    history: Sequence[tuple[str, float, float]],
    seen: Sequence[str],
) -> FoldedUser:
    """The user's fold-in inputs: held history merged with the live events, decayed."""
    index = model.item_index
    live = [(index[i], w, t) for i, w, t in history if w > 0 and i in index]
    held = model.held_history(user_id, forgotten_at)
    h = merge_live(
        held,
        np.asarray([r for r, _, _ in live], dtype=np.int64),
        np.asarray([w for _, w, _ in live], dtype=np.float32),
        np.asarray([t for _, _, t in live], dtype=np.float64),
        model.data_end,
    )
    rows, weights = fold_in_weights(h.rows, h.weights, h.ts)
    seen_rows = h.seen
    if seen:  # a live user's items older than the history sent
        seen_rows = np.union1d(seen_rows, item_rows(model, seen))
    return FoldedUser(rows, weights, seen_rows)


def _context(row: wpb.RankRow) -> JobContext:
    """The row's context; an unset message means none (its zeros are not hour 0, Monday)."""
    if not row.HasField("context"):
        return JobContext()
    c = row.context
    return JobContext(hour=c.hour, weekday=c.weekday, device=c.device, locale=c.locale, intent=c.intent)


def row_job(model: LoadedModel, row: wpb.RankRow) -> RankJob:
    return build_job(
        model,
        user_id=row.user_id,
        forgotten_at=row.forgotten_at,
        history=tuple(zip(row.history_item_ids, row.history_weights, row.history_timestamps, strict=True)),
        exclude=row.exclude_item_ids,
        dismissed=row.dismissed_item_ids,
        seen=row.seen_item_ids,
        include_categories=row.include_categories,
        exclude_categories=row.exclude_categories,
        k=row.k,
        include_seen=row.include_seen,
        context=_context(row),
    )


def rank_rows(
    model: LoadedModel, request: wpb.RankRowsRequest, catalog_seq: int, deadline: float | None
) -> wpb.RankRowsResponse:
    """The whole batch, ranked as one unit (runs in the model thread)."""
    rows = request.rows
    n = len(rows)
    codes = [0] * n
    messages = [""] * n
    if deadline is not None and time.monotonic() >= deadline:
        return wpb.RankRowsResponse(
            codes=[DEADLINE_EXCEEDED] * n,
            messages=["deadline passed while queued"] * n,
            offsets=[0] * (n + 1),
            model_version=model.name,
            catalog_seq=catalog_seq,
        )
    jobs: list[RankJob] = []
    ok: list[int] = []
    for i, row in enumerate(rows):
        if not 1 <= row.k <= MAX_K:
            codes[i] = INVALID_ARGUMENT
            messages[i] = f"k must be in 1..{MAX_K}, got {row.k}"
            continue
        jobs.append(row_job(model, row))
        ok.append(i)
    parent = next((r.traceparent for r in rows if r.traceparent), "")
    with tracing.span("worker.rank", parent=parent, rows=n, model_version=model.name):
        results = model.ranker.rank(jobs) if jobs else []
    return pack(model, catalog_seq, n, codes, messages, dict(zip(ok, results, strict=True)))


def pack(
    model: LoadedModel,
    catalog_seq: int,
    n: int,
    codes: list[int],
    messages: list[str],
    results: dict[int, RankResult],
) -> wpb.RankRowsResponse:
    """Per-row results as the packed reply: one concatenation per array, no per-item message."""
    parts = [results[i] for i in range(n) if i in results]
    counts = [results[i].rows.size if i in results else 0 for i in range(n)]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    all_rows = np.concatenate([r.rows for r in parts]) if parts else np.zeros(0, np.int64)
    reply = wpb.RankRowsResponse(
        codes=codes,
        messages=messages,
        offsets=offsets.tolist(),
        scores=(np.concatenate([r.scores for r in parts]) if parts else np.zeros(0, np.float32)).tolist(),
        model_version=model.name,
        catalog_seq=catalog_seq,
        batch_size=len(parts),
    )
    catalog = model.catalog
    reply.item_ids.extend([catalog[r].item_id for r in all_rows.tolist()])
    if any(r.pool_keys is not None for r in parts):  # a shard's answers: what server/shards.py merges by
        reply.rows.extend(all_rows.tolist())
        reply.pool_keys.extend(np.concatenate([_or_zeros(r.pool_keys, r.rows.size) for r in parts]).tolist())
        reply.near.extend(np.concatenate([_or_zeros(r.near, r.rows.size) for r in parts]).tolist())
        reply.pools.extend([results[i].pool if i in results else 0 for i in range(n)])
        reply.demotions.extend([results[i].demotion if i in results else 0.0 for i in range(n)])
    return reply


def _or_zeros(a: np.ndarray | None, size: int) -> np.ndarray:
    return np.zeros(size, np.float32) if a is None else a.astype(np.float32)
