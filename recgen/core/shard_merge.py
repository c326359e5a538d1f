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
  key *is* that pool. The dismissal demotion (recgen/core/dismissal.py), relative
  to the pool's score spread, is applied here, where the whole pool is known;
  then the top k by score.

Both are a sort of at most N·max(k, 50) numbers: cheap enough for the request
path. Plain numbers in, positions out: the gateway adapts the protobuf answers
(server/shards.py). No model math beyond the demotion; knows nothing of users.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recgen.core.dismissal import demote


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
        if demotion and len(cands) >= 2:  # in float64, as the scores arrived
            scores = np.asarray([c.score for _, _, c in cands], np.float64)
            near = np.asarray([c.near for _, _, c in cands], np.float64)
            demoted = demote(scores, near, demotion).tolist()
            final = {(s, i): d for (s, i, _), d in zip(cands, demoted, strict=True)}
    best = heapq.nsmallest(k, cands, key=lambda t: (-final[t[0], t[1]], -t[2].key, t[2].row))
    return [(s, i, final[s, i]) for s, i, _ in best]
