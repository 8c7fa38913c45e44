"""OpenTelemetry setup from the standard OTEL_* variables, and the spans of docs/ARCHITECTURE.md#traces.

Tracing is off unless an exporter is configured (OTEL_TRACES_EXPORTER=otlp|console, or an
OTLP endpoint variable; OTEL_SDK_DISABLED=true wins). Spans follow the messaging semantic
conventions with messaging.system=distcomp:

- `send {queue}` (PRODUCER) around a submit; its W3C context is stored in every task's meta;
- `receive {queue}` (CLIENT) per claim round trip that returned tasks, with a link per task's
  stored context (empty polls make no span; buffered tasks get none until they start);
- `process {queue}` (CONSUMER) per task when a slot starts it, parent = the task's submit
  context, link = its receive span; children `run` (the task itself) and `settle {queue}` (the
  report round trip, CLIENT); the outcome is the process span's status.

When tracing is off the worker holds no WorkerTracer at all (`Worker.tracer is None`), so the
per-task cost is one `is None` test. When a span is sampled, its ids go on the round-trip and
task-duration histograms as an exemplar (RoundTrips.exemplar, Worker._account).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

    from distcomp_obs.worker.buffer import Held

from distcomp_obs.records import ClaimResult, ReportCode

R = TypeVar("R", ClaimResult, ReportCode)
_enabled = False
SYSTEM = "distcomp"


def enabled() -> bool:
    return _enabled


def setup(service_name: str) -> bool:
    """Configure the SDK if the environment asks for it; returns whether tracing is on."""
    global _enabled
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if exporter == "none" or (not exporter and not endpoint):
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    # The sampler comes from OTEL_TRACES_SAMPLER / _ARG (TracerProvider reads them).
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
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer("distcomp_obs")
    attributes: dict[str, AttributeValue] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue,
        "messaging.batch.message_count": count,
    }
    with tracer.start_as_current_span(f"send {queue}", kind=trace.SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield json.dumps(carrier)


def exemplar_of(span: Span) -> dict[str, str] | None:
    """{trace_id, span_id} of a sampled span (32 + 16 hex: within OpenMetrics' 128-rune limit)."""
    ctx = span.get_span_context()
    if not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


class TaskTrace:
    """The spans of one started task; travels with its result to the report."""

    __slots__ = ("process", "run", "exemplar")

    def __init__(self, process: Span, run: Span) -> None:
        self.process = process
        self.run = run
        self.exemplar = exemplar_of(process)


class _RoundTrip:
    __slots__ = ("start_ns", "pipelined", "settles", "receive", "batch")

    def __init__(self, start_ns: int, pipelined: bool, settles: list[tuple[TaskTrace, Span]], batch: int) -> None:
        self.start_ns = start_ns
        self.pipelined = pipelined
        self.settles = settles
        self.receive: Span | None = None
        self.batch = batch


class WorkerTracer:
    """Makes the worker's spans. Claim and report round trips run on the fetch loop's thread only,
    so the round trip in flight is a plain attribute."""

    def __init__(self, queue: str) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

        self._trace, self._propagate, self._link, self._span_context = trace, propagate, Link, SpanContext
        self._kind, self._status, self._code = SpanKind, Status, StatusCode
        self.tracer = trace.get_tracer("distcomp_obs")
        self.queue = queue
        self.attrs = {"messaging.system": SYSTEM, "messaging.destination.name": queue}
        self._pending: _RoundTrip | None = None

    # --- claim / report round trips ------------------------------------------------------------
    def wrap(
        self, fn: Callable[..., R], traces: Sequence[TaskTrace | None], pipelined: bool = True
    ) -> Callable[..., R]:
        """`fn` (Queue.settle, claim_unpipelined or report_unpipelined) with its spans around it."""

        def call(*args: Any, **kwargs: Any) -> R:
            self._begin(traces, pipelined)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._fail(exc)
                raise
            self._end(result)
            return result

        return call

    def _begin(self, traces: Sequence[TaskTrace | None], pipelined: bool) -> None:
        start = time.time_ns()
        settles = []
        for tt in traces:
            if tt is None:
                continue
            attrs: dict[str, AttributeValue] = {
                **self.attrs,
                "messaging.operation.type": "settle",
                "messaging.operation.name": "report",
                "messaging.batch.message_count": len(traces),
            }
            span = self.tracer.start_span(
                f"settle {self.queue}",
                context=self._trace.set_span_in_context(tt.process),
                kind=self._kind.CLIENT,
                attributes=attrs,
                start_time=start,
            )
            settles.append((tt, span))
        self._pending = _RoundTrip(start, pipelined, settles, len(traces))

    def exemplar(self, op: str, result: Any) -> dict[str, str] | None:
        """RoundTrips hook, called right after each round trip returns (before it is observed)."""
        pending = self._pending
        if pending is None or op not in ("claim", "report"):
            return None
        if op == "report":
            for _, span in pending.settles:
                ex = exemplar_of(span)
                if ex:
                    return ex
            return None
        # The receive span exists only if tasks came back (no empty polls).
        if pending.pipelined and isinstance(result, ClaimResult) and result.tasks:
            pending.receive = self._start_receive(pending.start_ns)
            return exemplar_of(pending.receive)
        return None

    def _start_receive(self, start_ns: int) -> Span:
        attrs = {**self.attrs, "messaging.operation.type": "receive", "messaging.operation.name": "claim"}
        return self.tracer.start_span(
            f"receive {self.queue}", kind=self._kind.CLIENT, attributes=attrs, start_time=start_ns
        )

    def _end(self, result: ClaimResult | ReportCode) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if isinstance(result, ReportCode):  # one report of the one-command protocol
            claimed, codes = [], [result]
        else:
            claimed, codes = result.tasks, result.report_codes
        if claimed:
            span = pending.receive or self._start_receive(pending.start_ns)
            span.set_attribute("messaging.batch.message_count", len(claimed))
            for c in claimed:
                ctx = self._creation_context(c.trace_context)
                if ctx is not None:
                    span.add_link(ctx, {"messaging.operation.type": "send"})
                c.receive_link = span.get_span_context()  # the process span links it
            span.end()
        now = time.time_ns()
        for (tt, settle), code in zip(pending.settles, codes, strict=False):
            outcome = code.outcome
            settle.set_attribute("distcomp.report.outcome", outcome)
            if outcome == "stale":
                settle.set_status(self._status(self._code.ERROR, "claim no longer ours"))
                settle.set_attribute("error.type", "stale_report")
            settle.end(now)
            self._finish(tt, outcome, now)

    def _fail(self, exc: BaseException) -> None:
        """The round trip failed: its settle spans end in error; the process spans stay open for
        the retried report; a claim that may have happened is reconciled, not traced."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        for _, settle in pending.settles:
            settle.record_exception(exc)
            settle.set_status(self._status(self._code.ERROR, type(exc).__name__))
            settle.set_attribute("error.type", type(exc).__name__)
            settle.end()
        if pending.receive is not None:
            pending.receive.end()

    def _creation_context(self, carrier: str) -> Any:
        if not carrier:
            return None
        ctx = self._trace.get_current_span(self._propagate.extract(json.loads(carrier))).get_span_context()
        return ctx if ctx.is_valid else None

    # --- tasks ---------------------------------------------------------------------------------
    def start_process(self, held: Held) -> TaskTrace:
        """When a slot starts a task: its process span (parent = submit context) and run span."""
        claim = held.claim
        parent = self._propagate.extract(json.loads(claim.trace_context)) if claim.trace_context else None
        receive = claim.receive_link
        links = [self._link(receive)] if isinstance(receive, self._span_context) else []
        attrs = {
            **self.attrs,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": str(claim.seq),
            "distcomp.task.type": held.task.type.value,
            "distcomp.task.priority": held.task.priority,
        }
        process = self.tracer.start_span(
            f"process {self.queue}", context=parent, kind=self._kind.CONSUMER, attributes=attrs, links=links
        )
        run = self.tracer.start_span(
            "run", context=self._trace.set_span_in_context(process), attributes={"distcomp.task.type": attrs[
                "distcomp.task.type"]}
        )  # fmt: skip
        return TaskTrace(process, run)

    def ran(self, tt: TaskTrace, ok: bool, detail: str = "") -> None:
        if not ok:
            tt.run.set_status(self._status(self._code.ERROR, detail[:200]))
        tt.run.end()

    def returned(self, tt: TaskTrace, reason: str) -> None:
        """A started task given back unfinished (memory pressure, shutdown): no report, no settle."""
        tt.process.set_attribute("distcomp.returned.reason", reason)
        self._finish(tt, "returned", time.time_ns())

    def _finish(self, tt: TaskTrace, outcome: str, end_ns: int) -> None:
        span = tt.process
        span.set_attribute("distcomp.task.outcome", outcome)
        if outcome == "finished":
            span.set_status(self._status(self._code.OK))
        elif outcome != "duplicate":
            span.set_status(self._status(self._code.ERROR, outcome))
            span.set_attribute("error.type", "task_" + outcome)
        span.end(end_ns)
