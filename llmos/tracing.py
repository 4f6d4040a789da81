"""OpenTelemetry traces: one generation followed from the gateway through the scheduler
and the worker into Triton and the engine, and a training job through its placement and
attempts. Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set; then each process exports its
spans over OTLP/gRPC (the SDK reads the standard OTEL_* variables: endpoint, headers,
batch delays), with `service.name` its LLM OS service.

The context travels as a W3C `traceparent`: in gRPC metadata from a client into the
gateway, and inside the work itself from there on (GenerateWork.traceparent,
Job.traceparent) — work waits in queues, is handed back and sent again, and the context
must survive that as the work does. A request's first span (the gateway's) carries its
request id (`llmos.request_id`), every later one the work's id (`llmos.work_id`, which
starts with it) or the job's (`llmos.job_id`): a response's request id finds its trace.

Off, every call here is the API's no-op: no span is recorded, no id generated.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("llmos.tracing")

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
REQUEST_ID = "llmos.request_id"
#: the id of the work a request became (it starts with the request id)
WORK_ID = "llmos.work_id"
JOB_ID = "llmos.job_id"
_PROPAGATOR = TraceContextTextMapPropagator()

__all__ = ["Span", "SpanKind", "configure", "start", "traceparent", "traceparent_in"]

tracer = trace.get_tracer("llmos")
#: the traceparent a caller sent with the gRPC call being served ("" if none)
incoming = contextvars.ContextVar("llmos_incoming_traceparent", default="")


def configure(service: str, instance_id: str = "") -> bool:
    """Export this process's spans when an OTLP endpoint is configured; whether it is."""
    if not os.environ.get(ENDPOINT):
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service, "service.instance.id": instance_id})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # what is still batched leaves before the exit
    where = urllib.parse.urlsplit(os.environ[ENDPOINT])  # never its credentials, if any
    log.info("tracing on", extra={"endpoint": f"{where.scheme}://{where.hostname}:{where.port}"})
    return True


def traceparent(span: Span | None = None) -> str:
    """The W3C traceparent of `span` (default: the current one); "" when not traced."""
    carrier: dict[str, str] = {}
    context = trace.set_span_in_context(span) if span is not None else None
    _PROPAGATOR.inject(carrier, context=context)
    return carrier.get("traceparent", "")


def context_of(parent: str) -> Context:
    """The context a traceparent continues (a fresh trace for "")."""
    return _PROPAGATOR.extract({"traceparent": parent} if parent else {})


def traceparent_in(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The traceparent among gRPC metadata ("" if none)."""
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            return value
    return ""


def start(
    name: str,
    parent: str,
    kind: SpanKind = SpanKind.INTERNAL,
    *,
    waited_s: float = 0.0,
    attributes: Mapping[str, str | int | float] | None = None,
) -> Span:
    """A span continuing `parent` (a traceparent), begun `waited_s` ago, not made
    current: an async generator or another thread ends it (end(), or `with span:`)."""
    begun = time.time_ns() - int(waited_s * 1e9)
    context = context_of(parent)
    return tracer.start_span(name, context, kind, attributes, start_time=begun)
