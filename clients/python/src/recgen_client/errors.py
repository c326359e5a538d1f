"""The one place where gRPC failures become the client's exceptions: a table.

Every exception the clients raise for a failed call is a RecgenError; the class
says what the server meant (the status codes recgen answers with, per
docs and protos/recgen/v1/recommender.proto), `.code` keeps the gRPC status and
`.details` its message; the original grpc.RpcError is `__cause__`.
"""

from __future__ import annotations

import grpc


class RecgenError(Exception):
    """A call failed; .code is the grpc.StatusCode, .details the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgument(RecgenError):
    """A field broke the API's rules (ids, k, sizes, feedback type or value); not retried."""


class NotFound(RecgenError):
    """An item that is not in the catalog (feedback, similar_items, delete_items)."""


class AlreadyExists(RecgenError):
    """An event_id already stored with another payload."""


class Unauthenticated(RecgenError):
    """No token, or one the server does not know."""


class PermissionDenied(RecgenError):
    """A serving token on an admin method (forget_user, upsert_items, delete_items, import_events)."""


class ResourceExhausted(RecgenError):
    """The server is overloaded, or this user's feedback rate limit is spent; back off."""


class Unavailable(RecgenError):
    """No gateway could serve the call (after the retries of the service config): draining,
    restarting, unreachable, or a TLS handshake that failed."""


class DeadlineExceeded(RecgenError):
    """The call's deadline passed before the answer."""


_TABLE: dict[grpc.StatusCode, type[RecgenError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(e: grpc.RpcError) -> RecgenError:
    """The RecgenError for a failed call (RecgenError itself for codes not in the table)."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or code.name
    return _TABLE.get(code, RecgenError)(code, details)


def from_status(code: int, message: str) -> RecgenError:
    """The RecgenError for one failed entry of a batch answer (a status code number and message)."""
    status = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return _TABLE.get(status, RecgenError)(status, message or status.name)
