"""Token authentication and rights, as a gRPC server interceptor.

Tokens come from a file (`--auth-tokens PATH`, one `ROLE TOKEN` per line,
ROLE ∈ serve | admin; never on the command line, where `ps` shows it) and
arrive in call metadata as `authorization: Bearer TOKEN`. A serving token may
call Recommend, StreamRecommend, SendFeedback, SimilarItems; admin methods
(ForgetUser, UpsertItems, DeleteItems, ImportEvents) need an admin token, which may call
everything. No token or an unknown one: UNAUTHENTICATED; a serving token on
an admin method: PERMISSION_DENIED. The services named open (by default health
checking, which load balancers and Kubernetes probes call without tokens, and
server reflection, which grpcurl and buf curl call before anything else) take
calls without a token. Tokens are compared in constant time and never logged.
A denied call's request bytes are never parsed; it still gets a request id, an
access line and its count, from server/errors.py's interceptor, which runs first.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

LOG = logging.getLogger(__name__)

ROLES = ("serve", "admin")
ADMIN_METHODS = frozenset(
    {
        "/recgen.v1.Recommender/ForgetUser",
        "/recgen.v1.Recommender/UpsertItems",
        "/recgen.v1.Recommender/DeleteItems",
        "/recgen.v1.Recommender/ImportEvents",
    }
)
HEALTH_SERVICE = "grpc.health.v1.Health"


class TokenFileError(ValueError):
    pass


def load_tokens(path: Path | str) -> dict[str, str]:
    """token -> role, from lines 'ROLE TOKEN' (blank lines and # comments skipped)."""
    tokens: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ROLES:
            raise TokenFileError(f"{path}:{n}: expected 'ROLE TOKEN' with ROLE in {ROLES}")
        if len(parts[1]) < 16:
            raise TokenFileError(f"{path}:{n}: token shorter than 16 characters")
        tokens[parts[1]] = parts[0]
    if not tokens:
        raise TokenFileError(f"{path}: no tokens")
    return tokens


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of handler's kind that answers `code` at once. It takes the request as bytes
    (no deserializer): a caller without the right token never gets its bytes parsed."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, None, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, None, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, None, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(abort, None, handler.response_serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """`tokens`: token -> role (`load_tokens`); `open_services`: full service names callable without one."""

    def __init__(self, tokens: dict[str, str], open_services: tuple[str, ...] = (HEALTH_SERVICE,)) -> None:
        self._tokens = list(tokens.items())
        self._open = tuple(f"/{name}/" for name in open_services)
        # (method, code) -> its denying handler, made once: the interceptor before this one
        # (server/errors.py) caches what it wraps by handler identity.
        self._denied: dict[tuple[str, grpc.StatusCode], grpc.RpcMethodHandler] = {}

    def _denial(
        self, method: str, handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
    ) -> grpc.RpcMethodHandler:
        key = (method, code)
        denied = self._denied.get(key)
        if denied is None:
            denied = self._denied[key] = _deny(handler, code, message)
        return denied

    def _role(self, presented: str) -> str | None:
        role = None
        for token, r in self._tokens:  # no early exit: constant time over the list
            if hmac.compare_digest(token.encode(), presented.encode()):
                role = r
        return role

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(self._open):
            return handler
        auth = dict(details.invocation_metadata or ()).get("authorization", "")
        presented = auth[7:] if auth.lower().startswith("bearer ") else ""
        role = self._role(presented) if presented else None
        if role is None:
            return self._denial(
                method,
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid token (metadata 'authorization: Bearer TOKEN')",
            )
        if method in ADMIN_METHODS and role != "admin":
            return self._denial(
                method, handler, grpc.StatusCode.PERMISSION_DENIED, f"{method} needs an admin token"
            )
        return handler
