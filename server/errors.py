"""The one place where failures become gRPC status codes: the `ErrorStatus` interceptor.

A table from exception type to status (as httpx maps transport errors):
bad input → INVALID_ARGUMENT, unknown item → NOT_FOUND, idempotency
conflict → ALREADY_EXISTS, overload → RESOURCE_EXHAUSTED, no worker or a
store that cannot write → UNAVAILABLE. Status codes a worker returned pass
through unchanged. Anything else is a bug: INTERNAL, logged with its trace.
Every call gets a request id (the caller's `x-request-id`, or a new one) in its
response trailers (with `request_id_header`, also in its response headers) and in every
log line it causes (recgen/logs.py). Every call of
the public service is also counted by method and status, traced (a server span,
child of the caller's `traceparent`: recgen/tracing.py) and access-logged
(server/access_log.py). An
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
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from recgen import tracing
from recgen.logs import request_id
from recgen.v1 import recommender_pb2
from server.access_log import REQUEST_ID_KEY, AccessLog, RequestIds
from server.metrics import GatewayMetrics
from server.state import Conflict, StoreUnavailable
from server.validation import InvalidArgument
from server.workers import NoWorkerAvailable

LOG = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
MAX_CACHED = 1024  # wrapped handlers kept: methods x (served, denied twice) is far fewer


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


@dataclass
class _Call:
    """One call as the interceptor sees it: what `_status` reports at the end."""

    method: str
    counted: bool  # a call of the public service: counted, traced and access-logged
    request: Any = None  # the decoded request (unary requests only)
    code: grpc.StatusCode = grpc.StatusCode.OK


class CallObserver:
    """What happens around every call: request id (x-request-id in, response trailer out, in
    every log line), the server span, the metrics and the access line. One per server."""

    def __init__(
        self,
        metrics: GatewayMetrics | None = None,
        access_log: AccessLog | None = None,
        request_id_header: bool = False,
    ) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self.request_ids = RequestIds()
        # The id always goes back in the trailers, with the status (no extra write). The header
        # copy is a separate gRPC operation: an HTTP/2 HEADERS write, ~150 CPU-µs per call, a
        # third of an empty gRPC call's cost here (docs/tracing.md): opt-in, `--request-id-header`.
        self.request_id_header = request_id_header

    def finish(self, call: _Call, seconds: float) -> None:
        if self.metrics is not None:
            # A call that writes text has its own latency series (seconds, not milliseconds).
            text = call.method == "StreamRecommend" or bool(getattr(call.request, "explain", False))
            self.metrics.observe_request(call.method, call.code, seconds, text=text)
        if self.access_log is not None:
            self.access_log.record(call.method, call.code, seconds, call.request)

    @contextlib.asynccontextmanager
    async def __call__(self, context: grpc.aio.ServicerContext, call: _Call) -> AsyncIterator[None]:
        """The call's request id and span around `_status` (which maps its exceptions)."""
        given = parent = ""
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                given = value
            elif key == tracing.TRACEPARENT:
                parent = value
        rid = self.request_ids.accept(given) if given else self.request_ids.new()
        token = request_id.set(rid)
        try:
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            if self.request_id_header:
                await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
            if not call.counted:
                async with _status(context, call, None):
                    yield
                return
            if self.metrics is not None:
                self.metrics.request_started(call.method)
            with tracing.span(
                f"{SERVICE_NAME}/{call.method}",
                parent if isinstance(parent, str) else "",
                kind=tracing.SpanKind.SERVER,
                **{"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": call.method},
                **{"recgen.request_id": rid},
            ):
                async with _status(context, call, self):
                    yield
        finally:
            request_id.reset(token)


@contextlib.asynccontextmanager
async def _status(
    context: grpc.aio.ServicerContext, call: _Call, observer: CallObserver | None
) -> AsyncIterator[None]:
    """Translate exceptions to statuses; report the call (metrics, access line) by method and status."""
    t0 = time.perf_counter()
    try:
        yield
    except grpc.aio.AbortError:  # the servicer aborted itself: the code it gave
        code = context.code()
        call.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        raise
    except asyncio.CancelledError:
        call.code = grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AioRpcError as e:  # a worker's status, passed through
        call.code = e.code()
        if call.code == grpc.StatusCode.CANCELLED:
            raise
        await context.abort(call.code, e.details() or call.code.name)
    except Exception as e:
        call.code = next(
            (mapped for exc_type, mapped in _TABLE if isinstance(e, exc_type)), grpc.StatusCode.INTERNAL
        )
        if call.code == grpc.StatusCode.INTERNAL:
            LOG.exception("%s failed", call.method)
            await context.abort(call.code, f"internal error in {call.method}")
        details = bad_request(e) if isinstance(e, InvalidArgument) else ()
        if details:  # abort's trailers replace those set before: keep the request id in them
            details += tuple(context.trailing_metadata() or ())
        await context.abort(call.code, str(e), details)
    finally:
        if observer is not None:
            tracing.set_attributes(**{"rpc.grpc.status_code": call.code.value[0]})
            observer.finish(call, time.perf_counter() - t0)


class ErrorStatus(grpc.aio.ServerInterceptor):
    """Every rpc's exceptions → its status (`_TABLE`); undecodable request bytes → INVALID_ARGUMENT.

    Each async behavior is wrapped here, unary or streaming, once per method (the wrapped
    handler is cached: the servicer's handlers do not change while the server runs). For a
    unary request the deserializer moves into the behavior, where a failure can become a
    status: grpc.aio itself would answer UNKNOWN ("Unexpected <class 'DecodeError'>") and
    log it as a servicer error. Every call gets a request id (the caller's x-request-id or
    a new one) in its response trailers (and headers with `request_id_header`) and its log
    lines. Calls of `service` are also
    counted in `metrics`, traced (a server span, the child of the caller's traceparent) and
    access-logged; the others (health, reflection) get the same mapping, unobserved.
    """

    def __init__(
        self,
        metrics: Any = None,
        service: str = SERVICE_NAME,
        access_log: AccessLog | None = None,
        request_id_header: bool = False,
    ) -> None:
        self.metrics = metrics
        self.service = service
        self.observer = CallObserver(metrics, access_log, request_id_header)
        # id(handler) -> (handler, its wrapped handler): the servicer's handlers and the auth
        # interceptor's denials are made once, so a handler is wrapped once, not per call.
        self._cache: dict[int, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: grpc answers UNIMPLEMENTED
        cached = self._cache.get(id(handler))
        if cached is not None and cached[0] is handler:
            return cached[1]
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        wrapped = _wrapped(handler, method, service == self.service, self.observer)
        if len(self._cache) >= MAX_CACHED:  # handlers made per call (none today) must not pile up
            self._cache.clear()
        self._cache[id(handler)] = (handler, wrapped)
        return wrapped


_KINDS = {  # (request_streaming, response_streaming) -> the handler's behavior attribute
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def _wrapped(handler: Any, method: str, counted: bool, observer: CallObserver) -> Any:
    """The handler with its behavior run inside the observer and `_status` (its request decoded there)."""
    if handler.request_streaming:
        decode = None  # grpc decodes each streamed message; the iterator raises inside the behavior
        deserializer = handler.request_deserializer
    else:
        decode = handler.request_deserializer
        deserializer = None

    def parse(request: Any, call: _Call) -> Any:
        if decode is None:
            return request
        try:
            call.request = decode(request)
        except Exception as e:  # protobuf's DecodeError, or whatever a custom deserializer raises
            raise InvalidArgument(f"request could not be decoded: {e}") from None
        return call.request

    kind = _KINDS[handler.request_streaming, handler.response_streaming]
    behavior = getattr(handler, kind)
    if inspect.isasyncgenfunction(behavior):  # streams its responses by yielding them

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(method, counted)
            async with observer(context, call):
                async for response in behavior(parse(request, call), context):
                    yield response

        wrapped: Callable[..., Any] = streaming
    elif inspect.iscoroutinefunction(behavior):  # one response, or a stream written with context.write()

        async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(method, counted)
            async with observer(context, call):
                return await behavior(parse(request, call), context)

        wrapped = single
    else:
        return handler  # a sync behavior (run in a thread pool): left as grpc serves it
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(wrapped, deserializer, handler.response_serializer)
