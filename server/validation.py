"""Public-API input checks: each bad field gets INVALID_ARGUMENT naming it.

Limits (documented in README "Operating recgen"):
user_id 1..256 bytes, item_id 1..256, event_id 1..128, request_id ≤ 64,
k 0..100 (0 → 10), exclude_item_ids ≤ 1000, intent ≤ 500 characters,
include/exclude_categories ≤ 50 entries of ≤ 64 bytes,
device ≤ 32, locale ≤ 35, local_time/timestamp RFC 3339, RATE value 0..5.
Ids contain no control characters (U+0000-U+001F, U+007F-U+009F).
Returns plain dataclasses: no protobuf types below the servicer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from recgen.v1 import recommender_pb2 as pb

DEFAULT_K = 10
MAX_K = 100
MAX_EXCLUDE = 1000
MAX_ID_BYTES = 256
MAX_EVENT_ID_BYTES = 128
MAX_REQUEST_ID_BYTES = 64
MAX_INTENT_CHARS = 500
MAX_DEVICE_CHARS = 32
MAX_CATEGORIES = 50
MAX_CATEGORY_CHARS = 64
MAX_LOCALE_CHARS = 35

FEEDBACK_TYPES = {
    pb.FEEDBACK_TYPE_VIEW: "VIEW",
    pb.FEEDBACK_TYPE_CLICK: "CLICK",
    pb.FEEDBACK_TYPE_PURCHASE: "PURCHASE",
    pb.FEEDBACK_TYPE_RATE: "RATE",
    pb.FEEDBACK_TYPE_DISMISS: "DISMISS",
}


class InvalidArgument(ValueError):
    """Bad input; the message names the field, and `field` is its path in the request
    (`user_id`, `context.local_time`, `items[3].title`; "" when no one field is wrong):
    server/errors.py sends it as a google.rpc.BadRequest field violation."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RequestContext:
    hour: int = -1  # local hour 0..23, -1 unknown
    weekday: int = -1  # 0 = Monday
    device: str = ""
    locale: str = ""
    intent: str = ""
    time: float | None = None  # unix seconds of the request's local time, if given


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    k: int
    explain: bool
    context: RequestContext
    exclude_item_ids: tuple[str, ...]
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    include_seen: bool = False  # allow items the user already consumed (re-consumption)


CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # a regex: ImportEvents checks 100Ks of ids


def _id(value: str, field: str, max_bytes: int = MAX_ID_BYTES, required: bool = True) -> str:
    n = len(value.encode("utf-8"))
    if required and n == 0:
        raise InvalidArgument(f"{field} must not be empty", field)
    if n > max_bytes:
        raise InvalidArgument(f"{field} is {n} bytes; at most {max_bytes}", field)
    if CONTROL_CHARS.search(value):  # Unicode Cc: C0, DEL, C1
        raise InvalidArgument(f"{field} contains control characters", field)
    return value


def parse_time(value: str, field: str) -> datetime:
    if len(value) > 64:
        raise InvalidArgument(f"{field} is too long for an RFC 3339 time", field)
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{field} {value[:64]!r} is not an RFC 3339 time", field) from None
    if not 1970 <= t.year <= 2200:
        raise InvalidArgument(f"{field} year {t.year} is out of range", field)
    return t


def context_from_pb(c: pb.Context) -> RequestContext:
    if len(c.device) > MAX_DEVICE_CHARS:
        raise InvalidArgument(
            f"context.device is longer than {MAX_DEVICE_CHARS} characters", "context.device"
        )
    if len(c.locale) > MAX_LOCALE_CHARS:
        raise InvalidArgument(
            f"context.locale is longer than {MAX_LOCALE_CHARS} characters", "context.locale"
        )
    if len(c.intent) > MAX_INTENT_CHARS:
        raise InvalidArgument(
            f"context.intent is longer than {MAX_INTENT_CHARS} characters", "context.intent"
        )
    hour = weekday = -1
    when = None
    if c.local_time:
        t = parse_time(c.local_time, "context.local_time")
        hour, weekday = t.hour, t.weekday()
        when = t.timestamp() if t.tzinfo else None
    return RequestContext(
        hour=hour,
        weekday=weekday,
        device=c.device.strip().lower(),
        locale=c.locale.strip(),
        intent=c.intent.strip(),
        time=when,
    )


def recommendation_from_pb(r: pb.RecommendRequest) -> Recommendation:
    user_id = _id(r.user_id, "user_id")
    if r.k < 0 or r.k > MAX_K:
        raise InvalidArgument(f"k must be in 0..{MAX_K} (0 means {DEFAULT_K}), got {r.k}", "k")
    if len(r.exclude_item_ids) > MAX_EXCLUDE:
        raise InvalidArgument(
            f"exclude_item_ids has {len(r.exclude_item_ids)} ids; at most {MAX_EXCLUDE}", "exclude_item_ids"
        )
    exclude = tuple(_id(i, f"exclude_item_ids[{n}]") for n, i in enumerate(r.exclude_item_ids))
    return Recommendation(
        user_id=user_id,
        k=r.k or DEFAULT_K,
        explain=r.explain,
        context=context_from_pb(r.context),
        exclude_item_ids=exclude,
        include_categories=_categories(r.include_categories, "include_categories"),
        exclude_categories=_categories(r.exclude_categories, "exclude_categories"),
        include_seen=r.include_seen,
    )


def _categories(values: object, field: str) -> tuple[str, ...]:
    cats = list(values)  # type: ignore[call-overload]
    if len(cats) > MAX_CATEGORIES:
        raise InvalidArgument(f"{field} has {len(cats)} entries; at most {MAX_CATEGORIES}", field)
    return tuple(_id(c, f"{field}[{n}]", MAX_CATEGORY_CHARS) for n, c in enumerate(cats))


def similar_from_pb(r: pb.SimilarItemsRequest) -> tuple[str, int]:
    item_id = _id(r.item_id, "item_id")
    if r.k < 0 or r.k > MAX_K:
        raise InvalidArgument(f"k must be in 0..{MAX_K} (0 means {DEFAULT_K}), got {r.k}", "k")
    return item_id, r.k or DEFAULT_K


@dataclass(frozen=True)
class Feedback:
    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None
    timestamp: float | None
    request_id: str


def feedback_from_pb(r: pb.SendFeedbackRequest) -> Feedback:
    """SendFeedback's rules; ImportEvents applies the same to each of its rows."""
    event_id = _id(r.event_id, "event_id", MAX_EVENT_ID_BYTES)
    user_id = _id(r.user_id, "user_id")
    item_id = _id(r.item_id, "item_id")
    if r.type not in FEEDBACK_TYPES:
        raise InvalidArgument(
            f"type {r.type} is not a known FeedbackType (VIEW, CLICK, PURCHASE, RATE, DISMISS)", "type"
        )
    kind = FEEDBACK_TYPES[r.type]
    value = r.value if r.HasField("value") else None
    if kind == "RATE":
        if value is None:
            raise InvalidArgument("value is required for RATE (0..5)", "value")
        if not 0.0 <= value <= 5.0:  # also rejects NaN
            raise InvalidArgument(f"value must be in 0..5 for RATE, got {value}", "value")
    elif value is not None and not -1e6 <= value <= 1e6:
        raise InvalidArgument(f"value {value} is out of range", "value")
    ts = parse_time(r.timestamp, "timestamp").timestamp() if r.timestamp else None
    request_id = _id(r.request_id, "request_id", MAX_REQUEST_ID_BYTES, required=False)
    return Feedback(event_id, user_id, item_id, kind, value, ts, request_id)


def user_id_from_pb(user_id: str) -> str:
    return _id(user_id, "user_id")


# ---------------------------------------------------------------- live catalog

MAX_CATALOG_BATCH = 1000
MAX_TITLE_CHARS = 512
MAX_TEXT_CHARS = 4096
MAX_ITEM_CATEGORIES = 32


def _text(value: str, field: str, max_chars: int, required: bool) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{field} must not be empty", field)
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} is {len(value)} characters; at most {max_chars}", field)
    # Line breaks and tabs are fine in a description; other control characters never are.
    if any((ord(ch) < 32 and ch not in "\n\t") or 0x7F <= ord(ch) <= 0x9F for ch in value):
        raise InvalidArgument(f"{field} contains control characters", field)
    return value


def catalog_items_from_pb(r: pb.UpsertItemsRequest) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(item_id, title, text, categories) per item, in request order."""
    if not 1 <= len(r.items) <= MAX_CATALOG_BATCH:
        raise InvalidArgument(f"items must hold 1..{MAX_CATALOG_BATCH} entries, got {len(r.items)}", "items")
    out, seen = [], set()
    for n, it in enumerate(r.items):
        item_id = _id(it.item_id, f"items[{n}].item_id")
        if item_id in seen:
            raise InvalidArgument(
                f"items[{n}].item_id {item_id!r} appears twice in the request", f"items[{n}].item_id"
            )
        seen.add(item_id)
        cats = list(it.categories)
        if len(cats) > MAX_ITEM_CATEGORIES:
            raise InvalidArgument(
                f"items[{n}].categories has {len(cats)} entries; at most {MAX_ITEM_CATEGORIES}",
                f"items[{n}].categories",
            )
        out.append(
            (
                item_id,
                _text(it.title, f"items[{n}].title", MAX_TITLE_CHARS, required=True),
                _text(it.text, f"items[{n}].text", MAX_TEXT_CHARS, required=False),
                tuple(_id(c, f"items[{n}].categories[{m}]", MAX_CATEGORY_CHARS) for m, c in enumerate(cats)),
            )
        )
    return out


def item_ids_from_pb(r: pb.DeleteItemsRequest) -> list[str]:
    if not 1 <= len(r.item_ids) <= MAX_CATALOG_BATCH:
        raise InvalidArgument(
            f"item_ids must hold 1..{MAX_CATALOG_BATCH} entries, got {len(r.item_ids)}", "item_ids"
        )
    return list(dict.fromkeys(_id(i, f"item_ids[{n}]") for n, i in enumerate(r.item_ids)))
