"""The one place where failures become gRPC status codes.

A table from exception type to status (as httpx maps transport errors):
bad input → INVALID_ARGUMENT, unknown item → NOT_FOUND, idempotency
conflict → ALREADY_EXISTS, overload → RESOURCE_EXHAUSTED, no worker or a
store that cannot write → UNAVAILABLE. Status codes a worker returned pass
through unchanged. Anything else is a bug: INTERNAL, logged with its trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

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
