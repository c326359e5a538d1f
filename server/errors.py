"""The one place where failures become gRPC status codes: the `ErrorStatus` interceptor.

A table from exception type to status (as httpx maps transport errors):
bad input → INVALID_ARGUMENT, unknown item → NOT_FOUND, idempotency
conflict → ALREADY_EXISTS, overload → RESOURCE_EXHAUSTED, no worker or a
store that cannot write → UNAVAILABLE. Status codes a worker returned pass
through unchanged. Anything else is a bug: INTERNAL, logged with its trace.
Every call of the public service is counted by method and status. An
InvalidArgument that names its field also carries a google.rpc.BadRequest
(grpc-status-details-bin: the field's path and the message), for clients that
read error details.

Request bytes that do not decode (corrupt wire format, bad UTF-8 in a string
field) never reach a servicer: grpc.aio would answer UNKNOWN and log a
traceback. The interceptor decodes them itself and answers INVALID_ARGUMENT.

What it does not do: authenticate (server/auth.py, the interceptor before it)
or validate decoded fields (server/validation.py raises, this maps).
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
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from recgen.v1 import recommender_pb2
from server.metrics import GatewayMetrics
from server.state import Conflict, StoreUnavailable
from server.validation import InvalidArgument
from server.workers import NoWorkerAvailable

LOG = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name


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


def bad_request(e: InvalidArgument) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a google.rpc.Status with e's BadRequest (none when e names no field)."""
    if not e.field:
        return ()
    violation = error_details_pb2.BadRequest.FieldViolation(field=e.field, description=str(e))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e), details=[detail])
    return tuple(rpc_status.to_status(status).trailing_metadata)


@contextlib.asynccontextmanager
async def _status(
    context: grpc.aio.ServicerContext, method: str, metrics: GatewayMetrics | None
) -> AsyncIterator[None]:
    """Translate exceptions to statuses; count the call by method and status."""
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
        code = next(
            (mapped for exc_type, mapped in _TABLE if isinstance(e, exc_type)), grpc.StatusCode.INTERNAL
        )
        if code == grpc.StatusCode.INTERNAL:
            LOG.exception("%s failed", method)
            await context.abort(code, f"internal error in {method}")
        details = bad_request(e) if isinstance(e, InvalidArgument) else ()
        await context.abort(code, str(e), details)
    finally:
        if metrics is not None:
            metrics.observe_request(method, code, time.perf_counter() - t0)


class ErrorStatus(grpc.aio.ServerInterceptor):
    """Every rpc's exceptions → its status (`_TABLE`); undecodable request bytes → INVALID_ARGUMENT.

    Each async behavior is wrapped once here, unary or streaming. For a unary request
    the deserializer moves into the behavior, where a failure can become a status:
    grpc.aio itself would answer UNKNOWN ("Unexpected <class 'DecodeError'>") and log
    it as a servicer error. Calls of `service` are counted in `metrics`; the others
    (health, reflection) get the same mapping, uncounted.
    """

    def __init__(self, metrics: GatewayMetrics | None = None, service: str = SERVICE_NAME) -> None:
        self.metrics = metrics
        self.service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: grpc answers UNIMPLEMENTED
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        return _wrapped(handler, method, self.metrics if service == self.service else None)


_KINDS = {  # (request_streaming, response_streaming) -> the handler's behavior attribute
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def _wrapped(handler: Any, method: str, metrics: GatewayMetrics | None) -> Any:
    """The handler with its behavior run inside `_status` (and its request decoded there)."""
    if handler.request_streaming:
        decode = None  # grpc decodes each streamed message; the iterator raises inside the behavior
        deserializer = handler.request_deserializer
    else:
        decode = handler.request_deserializer
        deserializer = None

    async def parse(request: Any) -> Any:
        if decode is None:
            return request
        try:
            return decode(request)
        except Exception as e:  # protobuf's DecodeError, or whatever a custom deserializer raises
            raise InvalidArgument(f"request could not be decoded: {e}") from None

    kind = _KINDS[handler.request_streaming, handler.response_streaming]
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):  # streams its responses by yielding them

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _status(context, method, metrics):
                async for response in behavior(await parse(request), context):
                    yield response

        wrapped: Callable[..., Any] = streaming
    elif inspect.iscoroutinefunction(behavior):  # one response, or a stream written with context.write()

        async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _status(context, method, metrics):
                return await behavior(await parse(request), context)

        wrapped = single
    else:
        return handler  # a sync behavior (run in a thread pool): left as grpc serves it
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(wrapped, deserializer, handler.response_serializer)
