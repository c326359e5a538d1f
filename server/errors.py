"""The one place where failures become gRPC status codes.

A table from exception type to status (as httpx maps transport errors):
bad input → INVALID_ARGUMENT, unknown item → NOT_FOUND, idempotency
conflict → ALREADY_EXISTS, overload → RESOURCE_EXHAUSTED, no worker or a
store that cannot write → UNAVAILABLE. Status codes a worker returned pass
through unchanged. Anything else is a bug: INTERNAL, logged with its trace.

Request bytes that do not decode (corrupt wire format, bad UTF-8 in a string
field) never reach a servicer: grpc.aio would answer UNKNOWN and log a
traceback. `DecodeErrors`, a server interceptor, answers INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.metrics import GatewayMetrics
from server.state import Conflict, StoreUnavailable
from server.validation import InvalidArgument
from server.workers import NoWorkerAvailable

LOG = logging.getLogger(__name__)


class NotFound(LookupError):
    pass


class Overloaded(Exception):
    pass


_TABLE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NoWorkerAvailable, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
]


@contextlib.asynccontextmanager
async def map_errors(
    context: grpc.aio.ServicerContext, method: str, metrics: GatewayMetrics | None = None
) -> AsyncIterator[None]:
    """Translate exceptions to statuses; count every call by method and status."""
    t0 = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        yield
    except grpc.aio.AbortError:
        code = grpc.StatusCode.UNKNOWN  # an abort not made here (none exist today)
        raise
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AioRpcError as e:  # a worker's status, passed through
        code = e.code()
        if code == grpc.StatusCode.CANCELLED:
            raise
        await context.abort(code, e.details() or code.name)
    except Exception as e:
        for exc_type, mapped in _TABLE:
            if isinstance(e, exc_type):
                code = mapped
                await context.abort(code, str(e))
        code = grpc.StatusCode.INTERNAL
        LOG.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")
    finally:
        if metrics is not None:
            metrics.observe_request(method, code, time.perf_counter() - t0)


class DecodeErrors(grpc.aio.ServerInterceptor):
    """Undecodable request bytes → INVALID_ARGUMENT, for unary-request rpcs.

    The handler's deserializer is moved into the behavior, where a failure
    can abort with a status; grpc.aio itself would answer UNKNOWN
    ("Unexpected <class 'DecodeError'>") and log it as a servicer error.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        return _decoding(handler)


def _decoding(handler: Any) -> Any:
    decode = handler.request_deserializer

    async def parse(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return decode(raw)
        except Exception as e:  # protobuf's DecodeError, or whatever a custom deserializer raises
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request could not be decoded: {e}")

    if handler.response_streaming:
        behavior = handler.unary_stream
        if inspect.isasyncgenfunction(behavior):

            async def stream_gen(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                request = await parse(raw, context)
                async for response in behavior(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(stream_gen, None, handler.response_serializer)
        if inspect.iscoroutinefunction(behavior):  # writes with context.write()

            async def stream_co(raw: bytes, context: grpc.aio.ServicerContext) -> None:
                await behavior(await parse(raw, context), context)

            return grpc.unary_stream_rpc_method_handler(stream_co, None, handler.response_serializer)
        return handler
    behavior = handler.unary_unary
    if not inspect.iscoroutinefunction(behavior):
        return handler  # a sync behavior (run in a thread pool): left as grpc serves it

    async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await parse(raw, context), context)

    return grpc.unary_unary_rpc_method_handler(unary, None, handler.response_serializer)
