"""Request building and settings shared by RecgenClient and AsyncRecgenClient (no I/O here)."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from recgen_client import _channel
from recgen_client._gen import recommender_pb2 as pb
from recgen_client.types import CatalogItem, FeedbackEvent, FeedbackType

MAX_IMPORT_BATCH = 10_000  # rows per ImportEvents message, the server's limit


class _Unset(enum.Enum):
    DEFAULT = enum.auto()


DEFAULT: Literal[_Unset.DEFAULT] = _Unset.DEFAULT
# A per-call deadline in seconds: DEFAULT takes the client's, None waits forever.
Timeout = float | None | Literal[_Unset.DEFAULT]


@dataclass(frozen=True)
class Settings:
    """What a client was built with, minus the channel itself."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: list[tuple[str, Any]]
    metadata: _channel.Metadata
    timeout: float | None

    @classmethod
    def make(
        cls,
        target: str,
        *,
        token: str | None,
        tls: _channel.Tls,
        client_cert: tuple[bytes, bytes] | None,
        server_name: str | None,
        timeout: float | None,
        retries: _channel.Retries,
        metadata: Sequence[tuple[str, str]],
        channel_options: Mapping[str, Any] | None,
    ) -> Settings:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout!r}")
        return cls(
            target=target,
            credentials=_channel.credentials(tls, client_cert),
            options=_channel.options(retries, channel_options, server_name),
            metadata=_channel.token_metadata(token) + tuple(metadata),
            timeout=timeout,
        )

    def deadline(self, timeout: Timeout) -> float | None:
        return self.timeout if timeout is DEFAULT else timeout


def feedback_request(
    user_id: str,
    item_id: str,
    type: FeedbackType | str | int,
    value: float | None,
    timestamp: Any,
    request_id: str,
    event_id: str | None,
) -> pb.SendFeedbackRequest:
    # One event_id per call, made here: the channel's retries resend the same id, so a
    # lost acknowledgement is recovered, never counted twice.
    return FeedbackEvent(
        event_id=event_id or str(uuid.uuid4()),
        user_id=user_id,
        item_id=item_id,
        type=FeedbackType.parse(type),
        value=value,
        timestamp=timestamp,
        request_id=request_id,
    ).to_pb()


def import_batches(events: Iterable[FeedbackEvent], batch_size: int) -> Iterator[pb.ImportEventsRequest]:
    """Events in messages of batch_size rows, lazily (a generator can feed millions)."""
    check_batch_size(batch_size)
    batch: list[pb.SendFeedbackRequest] = []
    for e in events:
        batch.append(e.to_pb())
        if len(batch) == batch_size:
            yield pb.ImportEventsRequest(events=batch)
            batch = []
    if batch:
        yield pb.ImportEventsRequest(events=batch)


def check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_IMPORT_BATCH:
        raise ValueError(f"batch_size must be 1..{MAX_IMPORT_BATCH}, not {batch_size}")


def upsert_request(items: Iterable[CatalogItem]) -> pb.UpsertItemsRequest:
    return pb.UpsertItemsRequest(items=[i.to_pb() for i in items])


def delete_request(item_ids: Iterable[str]) -> pb.DeleteItemsRequest:
    if isinstance(item_ids, str):
        raise TypeError("delete_items takes a sequence of item ids, not one string")
    return pb.DeleteItemsRequest(item_ids=list(item_ids))
