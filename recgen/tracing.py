"""OpenTelemetry tracing for the gateway and the workers: W3C traceparent in, spans out.

    setup(service_name, otlp_endpoint, exporter=None)   turn tracing on in this process
    span(name, parent="", **attributes)                  a context manager; a child of `parent`
                                                         (a traceparent string) or of the current span
    record(name, parent, start_ns, end_ns, **attributes) a span measured elsewhere (a batcher's wait)
    current_traceparent() -> str                         the active span as a traceparent ("" if none)
    extract(metadata) -> str                             the caller's traceparent from gRPC metadata

Off by default: until `setup` installs an SDK TracerProvider, `span` returns one shared
null context manager and `current_traceparent` returns "" (a flag test each), so the
serving path pays nothing for tracing it does not do. Only opentelemetry-api is imported
here at import time; the SDK and the OTLP exporter (optional dependencies, the `tracing`
extra) are imported by `setup`, when tracing is asked for.

The provider is kept here, not installed as OpenTelemetry's global one: the global can be
set once per process and tests set up several in one. Standard OTEL_* variables the SDK
reads (OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS, ...) still apply.

RECGEN_TRACE_FILE=PATH adds an exporter writing each finished span as one JSON line to
PATH (appending; several processes may share it): how the tests see a worker's spans.
It is not meant for production (no rotation, a write per span).

What it does not do: decide where spans go in a request's path (the gateway's interceptor,
server/errors.py, starts the server span; the worker hop and the worker add theirs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

LOG = logging.getLogger(__name__)

SpanKind = trace.SpanKind  # SpanKind.SERVER for a call's span, CLIENT for an outgoing one
TRACE_FILE_ENV = "RECGEN_TRACE_FILE"
TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
_NULL = contextlib.nullcontext()

_tracer: trace.Tracer | None = None  # None: tracing is off
_provider: Any = None  # the SDK TracerProvider of `setup`, shut down by `shutdown`


def enabled() -> bool:
    return _tracer is not None


def current_traceparent() -> str:
    """The active span as a W3C traceparent ("00-<trace id>-<span id>-<flags>"); "" when
    tracing is off or no span is active (what the gateway passes on to a worker)."""
    if _tracer is None:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def extract(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The `traceparent` entry of gRPC invocation metadata ("" when absent or tracing is off)."""
    if _tracer is None or not metadata:
        return ""
    for key, value in metadata:
        if key == TRACEPARENT:
            return value if isinstance(value, str) else ""
    return ""


@contextlib.contextmanager
def _span(tracer: trace.Tracer, name: str, parent: str, kind: trace.SpanKind, attributes: dict) -> Iterator:
    ctx = _PROPAGATOR.extract({TRACEPARENT: parent}) if parent else None
    with tracer.start_as_current_span(name, context=ctx, kind=kind, attributes=attributes) as s:
        yield s


def span(
    name: str, parent: str = "", *, kind: trace.SpanKind = trace.SpanKind.INTERNAL, **attributes: Any
) -> contextlib.AbstractContextManager[Any]:
    """A span named `name` around the with-block, current inside it (so nested spans and
    `current_traceparent` see it); the child of `parent` (a traceparent string, e.g. from a
    caller's metadata) when given, else of the current span. An exception that leaves the
    block is recorded on the span and sets its status to ERROR. Attribute values: str, bool,
    int, float or sequences of one of those (OpenTelemetry's rule); None values are dropped.
    With tracing off: a shared null context manager."""
    tracer = _tracer
    if tracer is None:
        return _NULL
    attrs = {k: v for k, v in attributes.items() if v is not None}
    return _span(tracer, name, parent, kind, attrs)


def record(name: str, parent: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A span that already happened, from start_ns to end_ns (time.time_ns()), under `parent`
    (a traceparent string; "" for the current span): for a wait measured by a batcher (queue
    wait, a sequence's prefill and decode inside shared steps), where no with-block fits."""
    tracer = _tracer
    if tracer is None:
        return
    ctx = _PROPAGATOR.extract({TRACEPARENT: parent}) if parent else None
    attrs = {k: v for k, v in attributes.items() if v is not None}
    tracer.start_span(name, context=ctx, attributes=attrs, start_time=start_ns).end(end_time=end_ns)


def set_attributes(**attributes: Any) -> None:
    """Add attributes to the current span (nothing when tracing is off or none is active)."""
    if _tracer is None:
        return
    s = trace.get_current_span()
    if s.is_recording():
        s.set_attributes({k: v for k, v in attributes.items() if v is not None})


class JsonLinesExporter:
    """A SpanExporter writing one JSON object per finished span to a file (RECGEN_TRACE_FILE):
    name, service, trace_id, span_id, parent_span_id (hex; "" for a root), kind, status,
    start/end (ns since the epoch) and attributes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = []
        for s in spans:
            parent = s.parent.span_id if s.parent is not None else 0
            lines.append(
                json.dumps(
                    {
                        "name": s.name,
                        "service": s.resource.attributes.get("service.name", ""),
                        "pid": os.getpid(),
                        "trace_id": f"{s.context.trace_id:032x}",
                        "span_id": f"{s.context.span_id:016x}",
                        "parent_span_id": f"{parent:016x}" if parent else "",
                        "kind": s.kind.name,
                        "status": s.status.status_code.name,
                        "start": s.start_time,
                        "end": s.end_time,
                        "attributes": dict(s.attributes or {}),
                    },
                    default=str,
                )
            )
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))  # one write: lines of processes don't mix
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def setup(service_name: str, otlp_endpoint: str | None, *, exporter: Any = None) -> bool:
    """Turn tracing on in this process when an OTLP endpoint, an exporter (tests: the SDK's
    InMemorySpanExporter) or RECGEN_TRACE_FILE is given; otherwise leave it off. Replaces an
    earlier setup. Returns whether tracing is on.

    OTLP spans are batched and sent by a background thread (BatchSpanProcessor: a slow
    collector never blocks a request); `exporter` and the trace file get each span as it ends.
    `otlp_endpoint`: http://HOST:PORT (plaintext) or https://HOST:PORT (TLS), OTLP over gRPC.
    """
    global _tracer, _provider
    trace_file = os.environ.get(TRACE_FILE_ENV, "")
    shutdown()
    if not (otlp_endpoint or exporter is not None or trace_file):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as e:
        raise RuntimeError(f"tracing needs the OpenTelemetry SDK: pip install 'recgen[tracing]' ({e})") from e

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))  # type: ignore[arg-type]
    if otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise RuntimeError(f"--otlp-endpoint needs pip install 'recgen[tracing]' ({e})") from e

        otlp = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=not otlp_endpoint.startswith("https://"))
        provider.add_span_processor(BatchSpanProcessor(otlp))
        LOG.info("tracing: spans of %s go to %s (OTLP/gRPC)", service_name, otlp_endpoint)
    _provider = provider
    _tracer = provider.get_tracer("recgen")
    return True


def shutdown() -> None:
    """Flush and stop the exporters of `setup` (spans still batched are sent); tracing is off after."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()
