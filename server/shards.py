"""The shard merge at the gateway: protobuf answers in, one RankResponse / SimilarResponse out.

The merge itself (exact, on plain numbers) is recgen/core/shard_merge.py; this
module adapts the workers' protobuf answers to it and refuses answers from
different model versions.
"""

from __future__ import annotations

from collections.abc import Sequence

from recgen.core.shard_merge import Candidate, ShardAnswer, merge
from recgen.worker.v1 import worker_pb2 as wpb
from server.ranked import Ranked


class ShardMismatch(Exception):
    """The shards answered from different model versions (a hot swap in progress)."""


def _answer(items: Sequence[wpb.RankedItem], pool: int = 0, demotion: float = 0.0) -> ShardAnswer:
    return ShardAnswer([Candidate(it.row, it.score, it.pool_key, it.near) for it in items], pool, demotion)


def _one_version(responses: Sequence[Ranked] | Sequence[wpb.SimilarResponse]) -> str:
    versions = {r.model_version for r in responses}
    if len(versions) > 1:
        raise ShardMismatch(f"shards answered from different model versions: {', '.join(sorted(versions))}")
    return versions.pop()


def _ranked_answer(r: Ranked) -> ShardAnswer:
    n = len(r.item_ids)
    rows = r.rows if r.rows is not None else [0] * n
    keys = r.pool_keys if r.pool_keys is not None else [0.0] * n
    near = r.near if r.near is not None else [0.0] * n
    return ShardAnswer(
        [Candidate(rows[i], r.scores[i], keys[i], near[i]) for i in range(n)], r.pool, r.demotion
    )


def merge_rank(responses: Sequence[Ranked], k: int) -> Ranked:
    """One answer from every shard's, in shard order."""
    version = _one_version(responses)
    picked = merge([_ranked_answer(r) for r in responses], k)
    titles: list[str] | None = None if any(r.titles is None for r in responses) else []
    out = Ranked(
        [],
        [],
        version,
        catalog_seq=min(r.catalog_seq for r in responses),  # the most behind shard decides a re-sync
        batch_size=max(r.batch_size for r in responses),
        titles=titles,
    )
    for s, i, score in picked:
        out.item_ids.append(responses[s].item_ids[i])
        out.scores.append(score)
        if titles is not None:
            titles.append(responses[s].titles[i])  # type: ignore[index]
    return out


def merge_similar(responses: Sequence[wpb.SimilarResponse], k: int) -> wpb.SimilarResponse:
    version = _one_version(responses)
    picked = merge([_answer(r.items) for r in responses], k)
    return wpb.SimilarResponse(items=[responses[s].items[i] for s, i, _ in picked], model_version=version)
