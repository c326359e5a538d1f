"""The client's plain types, and their conversion from / to the protobuf messages.

Every public method of the clients takes and returns these: frozen dataclasses
and enums, no protobuf types. What this module does not do: talk to a server.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recgen_client._gen import recommender_pb2 as pb

if TYPE_CHECKING:
    from recgen_client.errors import RecgenError


class TextStatus(enum.IntEnum):
    """Whether a text is complete, and why not (recgen.v1.TextStatus)."""

    UNSPECIFIED = pb.TEXT_STATUS_UNSPECIFIED  # no text was asked for
    COMPLETE = pb.TEXT_STATUS_COMPLETE
    UNGROUNDED = pb.TEXT_STATUS_UNGROUNDED  # cut before a mention of an item not in the answer
    CUT_SHORT = pb.TEXT_STATUS_CUT_SHORT  # the deadline came first; the text so far
    UNAVAILABLE = pb.TEXT_STATUS_UNAVAILABLE  # no text could be generated


class FeedbackType(enum.IntEnum):
    """What a user did (recgen.v1.FeedbackType)."""

    VIEW = pb.FEEDBACK_TYPE_VIEW
    CLICK = pb.FEEDBACK_TYPE_CLICK
    PURCHASE = pb.FEEDBACK_TYPE_PURCHASE
    RATE = pb.FEEDBACK_TYPE_RATE  # with a value, 0..5
    DISMISS = pb.FEEDBACK_TYPE_DISMISS  # the item never comes back for this user

    @classmethod
    def parse(cls, value: FeedbackType | str | int) -> FeedbackType:
        """FeedbackType.CLICK, "click", "CLICK" or 2 -> FeedbackType.CLICK."""
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(f"unknown feedback type {value!r}; one of {[t.name for t in cls]}") from None
        return cls(value)


@dataclass(frozen=True)
class Context:
    """The situation the user is in; every field optional (recgen.v1.Context)."""

    device: str = ""  # "mobile", "tablet", "desktop", "tv"
    local_time: str | dt.datetime = ""  # RFC 3339 with offset; a datetime must be timezone-aware
    locale: str = ""  # BCP 47, e.g. "en-US"
    intent: str = ""  # free text, shown to the language model

    def to_pb(self) -> pb.Context:
        return pb.Context(
            device=self.device, local_time=_rfc3339(self.local_time), locale=self.locale, intent=self.intent
        )


@dataclass(frozen=True)
class Item:
    """One recommended item; score is comparable within one answer only."""

    item_id: str
    title: str
    score: float

    @classmethod
    def from_pb(cls, m: pb.Item) -> Item:
        return cls(item_id=m.item_id, title=m.title, score=m.score)


@dataclass(frozen=True)
class Recommendation:
    """The answer to recommend(): items best first, and the text when explain was set."""

    request_id: str  # pass it to feedback(request_id=...) for attribution
    items: tuple[Item, ...]
    text: str
    text_status: TextStatus
    text_reason: str  # why text_status is not COMPLETE
    model_version: str

    @classmethod
    def from_pb(cls, m: pb.RecommendResponse) -> Recommendation:
        return cls(
            request_id=m.request_id,
            items=tuple(Item.from_pb(i) for i in m.items),
            text=m.text,
            text_status=TextStatus(m.text_status),
            text_reason=m.text_reason,
            model_version=m.model_version,
        )


# The events of stream(): one StreamItems, any number of StreamText, one StreamFinal.
@dataclass(frozen=True)
class StreamItems:
    """First event: the ranked items (recommendation.text is empty)."""

    recommendation: Recommendation


@dataclass(frozen=True)
class StreamText:
    """The next piece of the text; all pieces joined are the text."""

    piece: str


@dataclass(frozen=True)
class StreamFinal:
    """Last event: the whole text with its status and reason."""

    recommendation: Recommendation


StreamEvent = StreamItems | StreamText | StreamFinal


def stream_event_from_pb(m: pb.StreamRecommendResponse) -> StreamEvent:
    kind = m.WhichOneof("event")
    if kind == "items":
        return StreamItems(Recommendation.from_pb(m.items))
    if kind == "text_piece":
        return StreamText(m.text_piece)
    if kind == "final":
        return StreamFinal(Recommendation.from_pb(m.final))
    raise ValueError(f"unknown stream event {kind!r} (a newer server? upgrade recgen-client)")


@dataclass(frozen=True)
class FeedbackEvent:
    """One user action, as sent by feedback() or imported by import_events().

    event_id is the idempotency key: the same id with the same payload is stored once
    (a retry is safe), with another payload it is AlreadyExists.
    """

    event_id: str
    user_id: str
    item_id: str
    type: FeedbackType
    value: float | None = None  # the rating, for RATE
    timestamp: str | dt.datetime = ""  # when it happened; the server's clock when empty
    request_id: str = ""  # the Recommendation.request_id it reacts to

    def to_pb(self) -> pb.SendFeedbackRequest:
        m = pb.SendFeedbackRequest(
            event_id=self.event_id,
            user_id=self.user_id,
            item_id=self.item_id,
            type=int(FeedbackType.parse(self.type)),  # type: ignore[arg-type]
            timestamp=_rfc3339(self.timestamp),
            request_id=self.request_id,
        )
        if self.value is not None:
            m.value = self.value
        return m


@dataclass(frozen=True)
class ImportResult:
    """What import_events() did: received = stored + duplicates."""

    received: int
    stored: int
    duplicates: int  # rows whose event_id was already stored with the same payload
    batches: int

    @classmethod
    def from_pb(cls, m: pb.ImportEventsResponse) -> ImportResult:
        return cls(received=m.received, stored=m.stored, duplicates=m.duplicates, batches=m.batches)


@dataclass(frozen=True)
class CatalogItem:
    """An item as the caller describes it, for upsert_items()."""

    item_id: str
    title: str
    text: str = ""
    categories: Sequence[str] = field(default_factory=tuple)

    def to_pb(self) -> pb.CatalogItem:
        return pb.CatalogItem(
            item_id=self.item_id, title=self.title, text=self.text, categories=list(self.categories)
        )


@dataclass(frozen=True)
class CatalogChange:
    """What upsert_items() / delete_items() changed; catalog_seq increases with every change."""

    added: int = 0
    updated: int = 0
    deleted: int = 0
    catalog_seq: int = 0


@dataclass(frozen=True)
class ForgetResult:
    """What forget_user() deleted."""

    events_deleted: int
    impressions_deleted: int


def recommend_request(
    user_id: str,
    k: int,
    explain: bool,
    include_seen: bool,
    context: Context | None,
    exclude: Sequence[str],
    include_categories: Sequence[str],
    exclude_categories: Sequence[str],
) -> pb.RecommendRequest:
    if isinstance(exclude, str) or isinstance(include_categories, str) or isinstance(exclude_categories, str):
        raise TypeError("exclude / include_categories / exclude_categories take a sequence of strings")
    return pb.RecommendRequest(
        user_id=user_id,
        k=k,
        explain=explain,
        include_seen=include_seen,
        context=context.to_pb() if context is not None else None,
        exclude_item_ids=list(exclude),
        include_categories=list(include_categories),
        exclude_categories=list(exclude_categories),
    )


def batch_results(m: pb.RecommendBatchResponse) -> list[Recommendation | RecgenError]:
    """Entry i: the Recommendation, or the error that user's own recommend() would have raised."""
    from recgen_client.errors import from_status

    return [
        Recommendation.from_pb(r.response) if r.code == 0 else from_status(r.code, r.message)
        for r in m.results
    ]


def _rfc3339(t: str | dt.datetime) -> str:
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            raise ValueError("a naive datetime has no offset: pass a timezone-aware one")
        return t.isoformat()
    return t
