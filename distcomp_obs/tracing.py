"""OpenTelemetry setup from the standard OTEL_* variables, and W3C context carried per task.

Tracing is off unless an exporter is configured (OTEL_TRACES_EXPORTER=otlp|console, or an
OTLP endpoint variable). Spans follow the messaging conventions with messaging.system=distcomp.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_enabled = False


def enabled() -> bool:
    return _enabled


def setup(service_name: str) -> bool:
    """Configure the SDK if the environment asks for it; returns whether tracing is on."""
    global _enabled
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if exporter in ("", "none") and not endpoint:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


@contextmanager
def send_span(queue: str, count: int) -> Iterator[str]:
    """A `send` span around a submit; yields the W3C context (JSON) to store with each task."""
    if not _enabled:
        yield ""
        return
    import json

    from opentelemetry import propagate, trace

    tracer = trace.get_tracer("distcomp_obs")
    attributes = {
        "messaging.system": "distcomp",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
        "messaging.batch.message_count": count,
    }
    with tracer.start_as_current_span(f"send {queue}", kind=trace.SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield json.dumps(carrier)
