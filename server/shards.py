"""The shard merge at the gateway: protobuf answers in, one RankResponse / SimilarResponse out.

The merge itself (exact, on plain numbers) is recgen/core/shard_merge.py; this
module adapts the workers' protobuf answers to it and refuses answers from
different model versions.
"""

from __future__ import annotations

from collections.abc import Sequence

from recgen.core.shard_merge import Candidate, ShardAnswer, merge
from recgen.worker.v1 import worker_pb2 as wpb


class ShardMismatch(Exception):
    """The shards answered from different model versions (a hot swap in progress)."""


def _answer(items: Sequence[wpb.RankedItem], pool: int = 0, demotion: float = 0.0) -> ShardAnswer:
    return ShardAnswer([Candidate(it.row, it.score, it.pool_key, it.near) for it in items], pool, demotion)


def _one_version(responses: Sequence[wpb.RankResponse] | Sequence[wpb.SimilarResponse]) -> str:
    versions = {r.model_version for r in responses}
    if len(versions) > 1:
        raise ShardMismatch(f"shards answered from different model versions: {', '.join(sorted(versions))}")
    return versions.pop()


def merge_rank(responses: Sequence[wpb.RankResponse], k: int) -> wpb.RankResponse:
    """One RankResponse from every shard's, in shard order."""
    version = _one_version(responses)
    picked = merge([_answer(r.items, r.pool, r.demotion) for r in responses], k)
    items = []
    for s, i, score in picked:
        it = responses[s].items[i]
        items.append(wpb.RankedItem(item_id=it.item_id, title=it.title, score=score, row=it.row))
    return wpb.RankResponse(
        items=items,
        model_version=version,
        batch_size=max(r.batch_size for r in responses),
        catalog_seq=min(r.catalog_seq for r in responses),  # the most behind shard decides a re-sync
    )


def merge_similar(responses: Sequence[wpb.SimilarResponse], k: int) -> wpb.SimilarResponse:
    version = _one_version(responses)
    picked = merge([_answer(r.items) for r in responses], k)
    return wpb.SimilarResponse(items=[responses[s].items[i] for s, i, _ in picked], model_version=version)
