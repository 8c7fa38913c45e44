"""Traces end to end: `distcomp submit` and a real worker export OTLP/HTTP to a receiver started
here on loopback; the spans must follow docs/ARCHITECTURE.md#traces and the worker's OpenMetrics exposition must
carry their ids as exemplars."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from distcomp_obs.queue import Queue
from tests.conftest import run_cli, wait_until
from tests.test_exporter import http_get


@dataclass
class Receiver:
    """A minimal OTLP/HTTP trace receiver: protobuf POSTs to /v1/traces, kept in memory."""

    url: str
    spans: list[tuple[str, Span]] = field(default_factory=list)  # (service.name, span)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def named(self, prefix: str) -> list[tuple[str, Span]]:
        with self.lock:
            return [(svc, s) for svc, s in self.spans if s.name.startswith(prefix)]


@pytest.fixture
def otlp() -> Iterator[Receiver]:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            req = ExportTraceServiceRequest.FromString(body)
            with receiver.lock:
                for rs in req.resource_spans:
                    svc = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                    for ss in rs.scope_spans:
                        receiver.spans.extend((svc, s) for s in ss.spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


def otel_env(receiver: Receiver, service: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export promptly so the test need not wait
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_submit_receive_process_run_settle(
    redis_url: str, prefix: str, queue: Queue, tmp_path: Path, start_worker, otlp: Receiver
) -> None:
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("".join(f"builtin:1:0:0:noop {i}\n" for i in range(8)) + "builtin:1:0:0:fail x\n")
    out = run_cli("submit", str(tasks), "--redis-url", redis_url, "--prefix", prefix, env=otel_env(otlp, "submitter"))
    assert out.returncode == 0, out.stderr
    (_, send), *more = wait_until(lambda: otlp.named("send "), what="send span exported")
    assert not more and send.name == f"send {prefix}" and send.kind == Span.SPAN_KIND_PRODUCER
    assert attrs(send)["messaging.batch.message_count"] == 9
    assert attrs(send)["messaging.system"] == "distcomp"

    worker = start_worker("--concurrency", "2", "--prefetch", "16", env=otel_env(otlp, "distcomp-worker"))
    wait_until(lambda: queue.counts()["finished"] + queue.counts()["failed"] == 9, what="queue drained")
    code, _, om = http_get(_metrics_url(worker), "application/openmetrics-text")
    assert code == 200
    assert worker.stop() == 0  # flushes the batch span processor at exit
    processes = wait_until(lambda: p if len(p := otlp.named("process ")) == 9 else None, what="9 process spans")

    # receive: one per claim round trip that returned tasks, a link per task to the send span
    receives = [s for _, s in otlp.named("receive ")]
    assert receives and all(s.kind == Span.SPAN_KIND_CLIENT for s in receives)
    assert sum(attrs(s)["messaging.batch.message_count"] for s in receives) == 9
    assert len(receives) < 9  # batched: prefetch claims several tasks per round trip
    for r in receives:
        assert len(r.links) == attrs(r)["messaging.batch.message_count"]
        assert all(link.trace_id == send.trace_id and link.span_id == send.span_id for link in r.links)
        assert not r.parent_span_id  # its own trace: tasks from many submits arrive in one claim
    receive_ids = {r.span_id for r in receives}

    # process: child of the submit's send span, linked to its receive, CONSUMER, outcome as status
    for svc, p in processes:
        assert svc == "distcomp-worker"
        assert p.kind == Span.SPAN_KIND_CONSUMER and p.trace_id == send.trace_id and p.parent_span_id == send.span_id
        assert [link.span_id for link in p.links][0] in receive_ids
    statuses = sorted(p.status.code for _, p in processes)
    assert statuses == [Status.STATUS_CODE_OK] * 8 + [Status.STATUS_CODE_ERROR]
    failed = next(p for _, p in processes if p.status.code == Status.STATUS_CODE_ERROR)
    assert attrs(failed)["distcomp.task.outcome"] == "failed"

    # run and settle: one each per task, children of its process span
    by_id = {p.span_id: p for _, p in processes}
    for kind_prefix, kind in (("run", Span.SPAN_KIND_INTERNAL), ("settle ", Span.SPAN_KIND_CLIENT)):
        children = [s for _, s in otlp.named(kind_prefix)]
        assert sorted(c.parent_span_id for c in children) == sorted(by_id), kind_prefix
        assert all(c.kind == kind and c.trace_id == send.trace_id for c in children)

    # no span for heartbeats, empty polls or buffered-but-not-started tasks
    names = {s.name.split(" ")[0] for _, s in otlp.spans}
    assert names == {"send", "receive", "process", "run", "settle"}

    # exemplars: task duration -> a process span, claim round trip -> a receive span
    exemplars = re.findall(r'^(\S+)\{([^}]*)\} \S+ # \{span_id="([0-9a-f]{16})",trace_id="([0-9a-f]{32})"\}', om, re.M)
    exemplars += [
        (m[0], m[1], m[3], m[2])
        for m in re.findall(r'^(\S+)\{([^}]*)\} \S+ # \{trace_id="([0-9a-f]{32})",span_id="([0-9a-f]{16})"\}', om, re.M)
    ]
    assert exemplars, om
    duration = [e for e in exemplars if e[0] == "distcomp_task_duration_seconds_bucket"]
    assert duration and all(bytes.fromhex(e[2]) in by_id for e in duration)
    claims = [e for e in exemplars if e[0] == "distcomp_redis_roundtrip_seconds_bucket" and 'op="claim"' in e[1]]
    assert claims and all(bytes.fromhex(e[2]) in receive_ids for e in claims)


def test_no_tracing_no_spans_no_exemplars(redis_url: str, prefix: str, queue: Queue, start_worker) -> None:
    queue.submit([f"builtin:1:0:0:noop {i}" for i in range(5)])
    worker = start_worker(env={"OTEL_TRACES_EXPORTER": "none"})
    wait_until(lambda: queue.counts()["finished"] == 5, what="drained")
    _, _, om = http_get(_metrics_url(worker), "application/openmetrics-text")
    assert "distcomp_task_duration_seconds_bucket" in om and " # {" not in om


def _metrics_url(worker: Any) -> str:
    url = wait_until(lambda: re.search(r"metrics=(http://\S+)", worker.log()), what="metrics URL logged")
    return url.group(1)
