"""A worker's ranking as the gateway holds it: plain lists, no per-item protobuf messages.

`Ranked` is one user's answer; `unpack` splits a packed RankRowsResponse into one `Ranked`
(or one status) per row; `from_rank_response` reads an older worker's RankResponse, and
`rank_request` turns a packed row back into the RankRequest such a worker understands.
The public reply (with titles from the gateway's catalog) is server/service.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from recgen.worker.v1 import worker_pb2 as wpb

_CODES = {c.value[0]: c for c in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error one request's own Rank call would have raised."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@dataclass
class Ranked:
    item_ids: list[str]  # best first
    scores: list[float]
    model_version: str
    catalog_seq: int = 0  # the last catalog change the worker had applied
    batch_size: int = 1
    titles: list[str] | None = None  # only from an older worker's RankResponse
    # Sharded workers only (server/shards.py merges by these): per item ...
    rows: list[int] | None = None
    pool_keys: list[float] | None = None
    near: list[float] | None = None
    # ... and per answer.
    pool: int = 0
    demotion: float = 0.0


def unpack(reply: wpb.RankRowsResponse, n: int) -> list[Ranked | grpc.aio.AioRpcError]:
    """One Ranked per OK row, one error per failed row, in row order."""
    if len(reply.codes) != n or len(reply.offsets) != n + 1:
        raise RuntimeError(
            f"RankRows of {n} rows answered {len(reply.codes)} codes, {len(reply.offsets)} offsets"
        )
    ids, scores, offsets = reply.item_ids, reply.scores, reply.offsets
    sharded = len(reply.rows) == len(ids) and len(reply.pools) == n and n > 0
    out: list[Ranked | grpc.aio.AioRpcError] = []
    version, seq, size = reply.model_version, reply.catalog_seq, reply.batch_size
    for i, code in enumerate(reply.codes):
        if code:
            out.append(rpc_error(_CODES.get(code, grpc.StatusCode.UNKNOWN), reply.messages[i]))
            continue
        a, b = offsets[i], offsets[i + 1]
        r = Ranked(list(ids[a:b]), list(scores[a:b]), version, seq, size)
        if sharded:
            r.rows = list(reply.rows[a:b])
            r.pool_keys = list(reply.pool_keys[a:b])
            r.near = list(reply.near[a:b])
            r.pool = reply.pools[i]
            r.demotion = reply.demotions[i]
        out.append(r)
    return out


def from_rank_response(r: wpb.RankResponse) -> Ranked:
    items = r.items
    out = Ranked(
        [i.item_id for i in items],
        [i.score for i in items],
        r.model_version,
        r.catalog_seq,
        r.batch_size,
        titles=[i.title for i in items],
    )
    if r.pool or any(i.row for i in items):
        out.rows = [i.row for i in items]
        out.pool_keys = [i.pool_key for i in items]
        out.near = [i.near for i in items]
        out.pool, out.demotion = r.pool, r.demotion
    return out


def rank_request(row: wpb.RankRow) -> wpb.RankRequest:
    """The packed row as the plain Rank request of a worker from before RankRows."""
    return wpb.RankRequest(
        history=[
            wpb.Interaction(item_id=i, weight=w, timestamp=t)
            for i, w, t in zip(row.history_item_ids, row.history_weights, row.history_timestamps, strict=True)
        ],
        exclude_item_ids=row.exclude_item_ids,
        k=row.k,
        context=row.context if row.HasField("context") else None,
        include_seen=row.include_seen,
        include_categories=row.include_categories,
        exclude_categories=row.exclude_categories,
        dismissed_item_ids=row.dismissed_item_ids,
        user_id=row.user_id,
        forgotten_at=row.forgotten_at,
        seen_item_ids=row.seen_item_ids,
    )
