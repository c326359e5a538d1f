"""recgen-client: a typed Python client for the recgen recommendation server.

    from recgen_client import RecgenClient
    with RecgenClient("127.0.0.1:50051", token="...") as rc:
        rec = rc.recommend("alice", k=5, explain=True)

RecgenClient (sync) and AsyncRecgenClient (asyncio) take and return the plain
types below; failed calls raise RecgenError subclasses. The generated protobuf
stubs are recgen_client._gen.recommender_pb2 / _pb2_grpc, for whoever needs them.
"""

from recgen_client._channel import PUBLISHED_SERVICE_CONFIG
from recgen_client.aio import AsyncRecgenClient
from recgen_client.client import RecgenClient
from recgen_client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RecgenError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from recgen_client.types import (
    CatalogChange,
    CatalogItem,
    Context,
    FeedbackEvent,
    FeedbackType,
    ForgetResult,
    ImportResult,
    Item,
    Recommendation,
    StreamEvent,
    StreamFinal,
    StreamItems,
    StreamText,
    TextStatus,
)

__version__ = "0.1.0"

__all__ = [
    "PUBLISHED_SERVICE_CONFIG",
    "AlreadyExists",
    "AsyncRecgenClient",
    "CatalogChange",
    "CatalogItem",
    "Context",
    "DeadlineExceeded",
    "FeedbackEvent",
    "FeedbackType",
    "ForgetResult",
    "ImportResult",
    "InvalidArgument",
    "Item",
    "NotFound",
    "PermissionDenied",
    "RecgenClient",
    "RecgenError",
    "Recommendation",
    "ResourceExhausted",
    "StreamEvent",
    "StreamFinal",
    "StreamItems",
    "StreamText",
    "TextStatus",
    "Unauthenticated",
    "Unavailable",
]
