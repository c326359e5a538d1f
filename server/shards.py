"""Merging the answers of catalog shards into the answer one index would give.

A sharded worker ranks only its own rows (row % N == shard) but keeps every item's
factors and the global popularity, so its scores are comparable with the other
shards'. Two kinds of answer come back (worker.ranking.RankResult.pool):

- pool == 0: the shard's top k by score (cold start, similar items). The merge is
  a sort of N·k items by score, ties by pool key then row, exactly as one ranker's
  stable sort over its pool breaks them.
- pool > 0: the shard's whole warm candidate pool, scored. One index would have
  re-ranked the `pool` candidates with the largest inner products; each shard's
  pool holds every one of those that it owns, so the top `pool` of the union by
  key *is* that pool. The dismissal demotion, relative to the pool's score spread,
  is applied here, where the whole pool is known; then the top k by score.

Both are a sort of at most N·max(k, 50) numbers: cheap enough for the request
path. No model math beyond that one subtraction; knows nothing of users.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from recgen.worker.v1 import worker_pb2 as wpb


class ShardMismatch(Exception):
    """The shards answered from different model versions (a hot swap in progress)."""


@dataclass(frozen=True)
class Candidate:
    row: int  # catalog row, the same on every shard
    score: float  # higher first; before the dismissal demotion when the answer is a pool
    key: float = 0.0  # place in the candidate pool, higher first
    near: float = 0.0  # nearness to a dismissed item, 0..1


@dataclass(frozen=True)
class ShardAnswer:
    items: Sequence[Candidate]
    pool: int = 0  # 0: the shard's top k; > 0: its whole pool, of which the merge keeps the top `pool`
    demotion: float = 0.0


def merge(answers: Sequence[ShardAnswer], k: int) -> list[tuple[int, int, float]]:
    """The best k of the shards' answers as (shard, position in its answer, final score)."""
    cands = [(s, i, c) for s, a in enumerate(answers) for i, c in enumerate(a.items)]
    pool = max((a.pool for a in answers), default=0)
    final = {(s, i): c.score for s, i, c in cands}
    if pool > 0:
        cands = heapq.nsmallest(pool, cands, key=lambda t: (-t[2].key, t[2].row))
        demotion = max(a.demotion for a in answers)
        if demotion and len(cands) >= 2:  # as recgen/core/dismissal.py does over one ranker's pool
            spread = max(c.score for _, _, c in cands) - min(c.score for _, _, c in cands)
            final = {(s, i): c.score - demotion * spread * c.near for s, i, c in cands}
    best = heapq.nsmallest(k, cands, key=lambda t: (-final[t[0], t[1]], -t[2].key, t[2].row))
    return [(s, i, final[s, i]) for s, i, _ in best]


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
