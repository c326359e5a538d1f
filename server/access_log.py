"""Request ids and the access log: one line per call of the public service.

    RequestIds().accept(value) -> str     the caller's x-request-id if it is a good one, else a new id
    AccessLog(user_ids).record(...)        the call's line on the `recgen.access` logger

A new id is this process's random prefix and a counter ("5e0c93d1-2a"): unique across
restarts and gateways with overwhelming probability, and costs a counter step, not a
uuid4 (which reads the OS's random source on every call). A caller's id is kept when it
is 1..64 printable ASCII characters, so a backend can follow its own id through our
logs; anything else is replaced (never echoed back or logged). 64, not more: the same id is the
answer's request_id, which SendFeedback takes back with a limit of 64.

The line is INFO for an OK call and WARNING for any other status, with the method,
status, duration, request id (as every line of the call: recgen/logs.py), the user as
its keyed pseudonym (server/privacy.py: never the raw id unless --log-user-ids), and
k / explain when the request has them. JSON logs get the same as fields.

What it does not do: decide when a call starts or ends (server/errors.py's interceptor
calls `record` once per call) or count calls (server/metrics.py).
"""

from __future__ import annotations

import itertools
import logging
import secrets
from typing import Any

import grpc

from server.privacy import UserIdPolicy

LOG = logging.getLogger("recgen.access")

# Not 128: the id is also the answer's request_id, which a client sends back in
# SendFeedback.request_id, where the API allows at most 64 characters.
MAX_REQUEST_ID = 64
REQUEST_ID_KEY = "x-request-id"


class RequestIds:
    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4) + "-"
        self._count = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._count):x}"

    def accept(self, given: Any) -> str:
        """`given` (the caller's x-request-id) when it is 1..64 printable ASCII characters, else a new id."""
        if (
            isinstance(given, str)
            and 0 < len(given) <= MAX_REQUEST_ID
            and given.isascii()
            and given.isprintable()
        ):
            return given
        return self.new()


def _fields_of(request: Any) -> tuple[str | None, int | None, bool | None]:
    """(user id, k, explain) of a decoded request, None where it has no such field."""
    inner = getattr(request, "request", None)  # StreamRecommendRequest wraps a RecommendRequest
    if inner is not None and hasattr(inner, "user_id"):
        return inner.user_id, inner.k, True
    user = getattr(request, "user_id", None)
    k = getattr(request, "k", None)
    explain = getattr(request, "explain", None)
    return (user if isinstance(user, str) else None), k, explain


class AccessLog:
    """`record` writes one line per call; `enabled=False` (--no-access-log) writes none."""

    def __init__(self, user_ids: UserIdPolicy | None = None, enabled: bool = True) -> None:
        self.user_ids = user_ids or UserIdPolicy()
        self.enabled = enabled

    def record(self, method: str, code: grpc.StatusCode, seconds: float, request: Any) -> None:
        ok = code == grpc.StatusCode.OK
        level = logging.INFO if ok else logging.WARNING
        if not (self.enabled and LOG.isEnabledFor(level)):
            return
        user, k, explain = _fields_of(request)
        fields: dict[str, Any] = {"method": method, "code": code.name, "duration_ms": round(seconds * 1e3, 2)}
        text = f"{method} {code.name} {seconds * 1e3:.1f} ms"
        if user:
            fields["user"] = self.user_ids(user)
            text += f" user={fields['user']}"
        if k is not None:
            fields["k"] = k
            text += f" k={k}"
        if explain is not None:
            fields["explain"] = bool(explain)
            text += f" explain={str(bool(explain)).lower()}"
        LOG.log(level, "%s", text, extra={"fields": fields})
