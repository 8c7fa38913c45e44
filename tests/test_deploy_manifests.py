"""The deployment files in deploy/: Kubernetes manifests (kustomize base and overlays) and the
systemd units, checked offline with real tools.

- Every kustomization is rendered by a real kustomize (`kustomize build` or `kubectl kustomize`).
- Built-in kinds are validated by kubernetes-validate against Kubernetes KUBE_VERSION (strict:
  unknown fields fail); KEDA and prometheus-operator resources against their CRDs' published
  schemas, vendored in tests/data/crds/ (see its README), made strict the same way.
- Semantics that a schema cannot see: the drain fits in terminationGracePeriodSeconds, probes
  point at the port the process listens on, selectors and ports line up, secrets are generated or
  documented, the KEDA threshold is the worker's slot count.
- Each container's command really runs (the real `distcomp` against a real redis-server) and
  answers its probe; the KEDA query parses (promtool check rules) and, evaluated by promtool on
  series scraped from a real exporter, counts exactly the tasks waiting or claimed.
- The systemd units pass `systemd-analyze verify`, and the worker unit's command line runs and
  drains on SIGTERM within TimeoutStopSec.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from distcomp_obs.config import ENV_NAMES
from distcomp_obs.keys import Keys
from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue
from tests.conftest import REPO, require, wait_until

KUBE_VERSION = "1.30.0"
KUBE = REPO / "deploy" / "kubernetes"
SYSTEMD = REPO / "deploy" / "systemd"
CRDS = REPO / "tests" / "data" / "crds"
DEPLOY_DOC = REPO / "docs" / "DEPLOY.md"
KUSTOMIZATIONS = ["base", "overlays/prometheus-operator", "overlays/keda", "overlays/keda-redis"]
#: what the base's `images:` turns the manifests' `distcomp-obs` into
IMAGE = "ghcr.io/OWNER/distcomp-obs:TAG"
#: the flag each process listens on, and so the port its probes must use
LISTEN_FLAGS = {"worker": "--metrics-addr", "exporter": "--metrics-addr", "console": "--addr"}

Doc = dict[str, Any]


# --- rendering and lookups ----------------------------------------------------------------------


def kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    require(shutil.which("kubectl") is not None, "kubectl or kustomize (apt-get install kubernetes-client)")
    return ["kubectl", "kustomize"]


def render(path: Path) -> list[Doc]:
    out = subprocess.run([*kustomize_command(), str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kustomize {path}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(KUBE / name) for name in KUSTOMIZATIONS}


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]  # type: ignore[no-any-return]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in args (None when absent)."""
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def deployments(docs: list[Doc]) -> list[Doc]:
    return find(docs, "Deployment")


# --- CRD schemas --------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD's structural schema, with unknown fields refused wherever the API server would prune or,
    with field validation Strict (kubectl's default since 1.27), refuse them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> the openAPIV3Schema of each served version of each vendored CRD."""
    out: dict[tuple[str, str], Any] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    out[(f"{group}/{version['name']}", kind)] = schema
    return out


CRD_SCHEMAS = crd_schemas()


def validate(doc: Doc) -> None:
    """Raise if doc is invalid: a CRD kind against its vendored schema, anything else against
    Kubernetes KUBE_VERSION (an unknown kind raises SchemaNotFoundError)."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.Draft4Validator(CRD_SCHEMAS[key]).validate(doc)
        assert doc["metadata"].get("name"), f"{key}: no name"
    else:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


# --- schema validation --------------------------------------------------------------------------


def test_every_kustomization_is_tested() -> None:
    found = sorted(str(p.parent.relative_to(KUBE)) for p in KUBE.rglob("kustomization.yaml"))
    assert found == sorted(KUSTOMIZATIONS)


def test_vendored_crds_cover_every_custom_kind(rendered: dict[str, list[Doc]]) -> None:
    kinds = {(d["apiVersion"], d["kind"]) for docs in rendered.values() for d in docs}
    custom = {k for k in kinds if k[0] not in ("v1", "apps/v1")}
    assert custom == {
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
    }
    assert custom <= set(CRD_SCHEMAS)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_resource_is_valid(rendered: dict[str, list[Doc]], name: str) -> None:
    docs = rendered[name]
    assert docs
    for doc in docs:
        try:
            validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
        assert doc["metadata"].get("namespace") == "distcomp", f"{doc['kind']}/{doc['metadata']['name']}"


BROKEN: list[tuple[str, Callable[[list[Doc]], Doc]]] = [
    ("deployment: unknown field", lambda d: {**one(d, "Deployment", "distcomp-worker"), "replica": 3}),
    ("deployment: wrong type", lambda d: _set(one(d, "Deployment", "distcomp-worker"), "spec", "minReadySeconds", "5")),
    (
        "scaledobject: unknown field",
        lambda d: _set(one(d, "ScaledObject", "distcomp-worker"), "spec", "minReplicas", 0),
    ),
    ("scaledobject: threshold as a number", lambda d: _trigger_threshold(one(d, "ScaledObject", "distcomp-worker"))),
    ("podmonitor: unknown field", lambda d: _set(one(d, "PodMonitor", "distcomp-worker"), "spec", "endpoints", [])),
    ("unknown kind", lambda d: {**one(d, "ScaledObject", "distcomp-worker"), "kind": "ScaledObjekt"}),
]


def _set(doc: Doc, section: str, key: str, value: Any) -> Doc:
    return {**doc, section: {**doc[section], key: value}}


def _trigger_threshold(doc: Doc) -> Doc:
    trigger = doc["spec"]["triggers"][0]
    bad = {**trigger, "metadata": {**trigger["metadata"], "threshold": 4}}
    return _set(doc, "spec", "triggers", [bad])


@pytest.mark.parametrize("what, breaks", BROKEN, ids=[b[0] for b in BROKEN])
def test_validation_rejects_a_broken_resource(
    rendered: dict[str, list[Doc]], what: str, breaks: Callable[[list[Doc]], Doc]
) -> None:
    """The validators bite: each of these mistakes is refused."""
    with pytest.raises((kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError,
                        jsonschema.ValidationError)):  # fmt: skip
        validate(breaks(rendered["overlays/keda"]))


# --- semantics ----------------------------------------------------------------------------------


def test_worker_drain_fits_in_the_termination_grace_period(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        worker = one(docs, "Deployment", "distcomp-worker")
        args = container(worker)["args"]
        grace = flag(args, "--grace-period")
        assert grace is not None, f"{name}: set --grace-period explicitly"
        termination = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # the drain, then returning what is left and flushing reports (a few round trips)
        assert termination >= float(grace) + 10, f"{name}: {termination} s for a {grace} s drain"
        env = {e["name"] for e in container(worker).get("env", [])}
        assert "DISTCOMP_GRACE_PERIOD_S" not in env  # one place only: the flag beside the grace period


def test_probes_point_at_the_listening_port_and_healthz(rendered: dict[str, list[Doc]]) -> None:
    for dep in deployments(rendered["base"]):
        c = container(dep)
        command = c["args"][0]
        addr = flag(c["args"], LISTEN_FLAGS[command])
        assert addr, f"{command}: no {LISTEN_FLAGS[command]}"
        port = int(addr.rpartition(":")[2])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert list(ports.values()) == [port], f"{command}: containerPort is not the listening port"
        for kind, path in (("readinessProbe", "/healthz"), ("livenessProbe", "/livez")):  # livez ignores Redis
            probe = c[kind]["httpGet"]
            assert probe["path"] == path, f"{command} {kind}"
            target = probe["port"]
            assert ports.get(target, target) == port, f"{command} {kind}: port {target}"
        if command == "worker":
            # advertised in the heartbeat, so /sd must hand out an address other pods can reach
            assert addr.startswith("$(POD_IP):"), addr
            env = {e["name"]: e for e in c["env"]}
            assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            assert flag(c["args"], "--concurrency"), "the default counts the node's cores"
        else:
            assert addr.startswith("0.0.0.0:"), f"{command}: must listen beyond loopback for probes"


def test_selectors_ports_and_targets_line_up(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        pods = {d["metadata"]["name"]: d["spec"]["template"] for d in deployments(docs)}
        for dep in deployments(docs):
            assert matches(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
        for svc in find(docs, "Service"):
            backing = [t for t in pods.values() if matches(svc["spec"]["selector"], t["metadata"]["labels"])]
            assert len(backing) == 1, f"{name}: Service {svc['metadata']['name']} selects {len(backing)} pods kinds"
            port_names = {p["name"] for c in backing[0]["spec"]["containers"] for p in c["ports"]}
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in port_names
        for pm in find(docs, "PodMonitor"):
            selected = [
                t for t in pods.values() if matches(pm["spec"]["selector"]["matchLabels"], t["metadata"]["labels"])
            ]
            assert [t["metadata"]["labels"]["app.kubernetes.io/name"] for t in selected] == ["distcomp-worker"]
            labels = selected[0]["metadata"]["labels"]
            assert labels[pm["spec"]["jobLabel"]] == "distcomp-worker"  # the rules' job name
            port_names = {p["name"] for c in selected[0]["spec"]["containers"] for p in c["ports"]}
            for endpoint in pm["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in port_names
            for relabel in (r for e in pm["spec"]["podMetricsEndpoints"] for r in e.get("relabelings", [])):
                label = relabel["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
                if label != relabel["sourceLabels"][0]:  # a pod label: it must exist (dots and slashes as _)
                    assert label in {re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in labels}, label
        for sm in find(docs, "ServiceMonitor"):
            services = [
                s
                for s in find(docs, "Service")
                if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
            ]
            assert [s["metadata"]["name"] for s in services] == ["distcomp-exporter"]
            assert services[0]["metadata"]["labels"][sm["spec"]["jobLabel"]] == "distcomp-exporter"
            port_names = {p["name"] for p in services[0]["spec"]["ports"]}
            assert {e["port"] for e in sm["spec"]["endpoints"]} <= port_names
        for so in find(docs, "ScaledObject"):
            target = so["spec"]["scaleTargetRef"]["name"]
            assert target in pods
            assert "replicas" not in one(docs, "Deployment", target)["spec"], "KEDA's HPA owns the replica count"
            for trigger in so["spec"]["triggers"]:
                if "authenticationRef" in trigger:
                    one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])


def test_every_image_goes_through_the_kustomization(rendered: dict[str, list[Doc]]) -> None:
    for name, docs in rendered.items():
        for dep in deployments(docs):
            c = container(dep)
            assert c["image"] == IMAGE, f"{name}: {dep['metadata']['name']}"
            assert c["command"] == ["distcomp"], "independent of the image's ENTRYPOINT"


def referenced_secrets(docs: list[Doc]) -> set[tuple[str, str, bool]]:
    """(secret, key, optional) for each secret key a resource reads."""
    refs: set[tuple[str, str, bool]] = set()
    for dep in deployments(docs):
        spec = dep["spec"]["template"]["spec"]
        for c in spec["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"], bool(ref.get("optional"))))
        assert not any("secret" in v for v in spec.get("volumes", [])), "add secret volumes to this check"
    for auth in find(docs, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            refs.add((ref["name"], ref["key"], False))
    return refs


def test_every_secret_is_generated_or_documented_as_user_provided(rendered: dict[str, list[Doc]]) -> None:
    doc = DEPLOY_DOC.read_text()
    documented: dict[str, set[str]] = {}
    for name, literals in re.findall(r"create secret generic (\S+)((?: +--from-(?:literal|file)=[\w.-]+=\S+)+)", doc):
        documented.setdefault(name, set()).update(re.findall(r"--from-(?:literal|file)=([\w.-]+)=", literals))
    seen = set()
    for name, docs in rendered.items():
        generated = {d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("stringData", {}))
                     for d in find(docs, "Secret")}  # fmt: skip
        for secret, key, _optional in referenced_secrets(docs):
            seen.add((secret, key))
            keys = generated.get(secret) or documented.get(secret, set())
            assert key in keys, f"{name}: Secret {secret} key {key} is neither generated nor in docs/DEPLOY.md"
    assert ("distcomp-redis", "url") in seen and ("distcomp-console", "token") in seen


def test_console_token_is_optional_and_redis_url_is_not(rendered: dict[str, list[Doc]]) -> None:
    refs = referenced_secrets(rendered["base"])
    assert ("distcomp-console", "token", True) in refs  # without it: a read-only console
    assert ("distcomp-redis", "url", False) in refs


def keda_prometheus_trigger(docs: list[Doc]) -> Doc:
    so = one(docs, "ScaledObject", "distcomp-worker")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    return trigger  # type: ignore[no-any-return]


def test_keda_scales_per_worker_slot_from_zero(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["overlays/keda"]
    so = one(docs, "ScaledObject", "distcomp-worker")
    concurrency = flag(container(one(docs, "Deployment", "distcomp-worker"))["args"], "--concurrency")
    assert so["spec"]["minReplicaCount"] == 0
    trigger = keda_prometheus_trigger(docs)
    assert trigger["metricType"] == "AverageValue"  # the HPA divides by the pod count: per worker slot
    meta = trigger["metadata"]
    assert float(meta["threshold"]) == float(str(concurrency))
    assert float(meta["activationThreshold"]) == 0  # the first submission starts a pod
    assert meta["ignoreNullValues"] == "false"  # no series is an error (fallback), not "scale to zero"
    assert so["spec"]["fallback"]["replicas"] >= 1  # KEDA allows fallback with AverageValue only
    redis_so = one(rendered["overlays/keda-redis"], "ScaledObject", "distcomp-worker")
    assert redis_so["spec"]["minReplicaCount"] == 0
    for t in redis_so["spec"]["triggers"]:
        assert t["type"] == "redis" and float(t["metadata"]["listLength"]) == float(str(concurrency))
    for spec in (so["spec"], redis_so["spec"]):  # the CRD's one CEL rule, which jsonschema cannot run
        assert spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100)


def test_keda_query_parses_as_promql(rendered: dict[str, list[Doc]], tmp_path: Path) -> None:
    require(shutil.which("promtool") is not None, "promtool (apt-get install prometheus)")
    query = keda_prometheus_trigger(rendered["overlays/keda"])["metadata"]["query"]
    rules = tmp_path / "keda.yml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "keda", "rules": [{"record": "keda:demand", "expr": query}]}]})
    )
    out = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(rules.read_text().replace("max by (state)", "max by state"))
    assert subprocess.run(["promtool", "check", "rules", str(broken)], capture_output=True, timeout=60).returncode != 0


def test_http_sd_scrape_config_is_valid() -> None:
    require(shutil.which("promtool") is not None, "promtool (apt-get install prometheus)")
    config = KUBE / "prometheus" / "prometheus.yml"
    out = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = {j["job_name"]: j for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert set(jobs) == {"distcomp-exporter", "distcomp-worker"}  # the job names the rules select
    assert jobs["distcomp-worker"]["http_sd_configs"][0]["url"].endswith(":9711/sd")


# --- the containers' commands, run for real -----------------------------------------------------


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def container_argv(c: Doc, env: dict[str, str], port: int) -> list[str]:
    """The container's command line as the kubelet would run it ($(VAR) expanded), with the listen
    address moved to 127.0.0.1:port (tests serve on loopback only) and `distcomp` run from here."""
    assert c["command"] == ["distcomp"]
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    listen = LISTEN_FLAGS[args[0]]
    args = [f"{listen}=127.0.0.1:{port}" if a.startswith(listen + "=") else a for a in args]
    return [sys.executable, "-m", "distcomp_obs", *args]


def container_env(c: Doc, redis_url: str, prefix: str) -> dict[str, str]:
    secrets = {("distcomp-redis", "url"): redis_url, ("distcomp-console", "token"): "s3cret-token"}
    fields = {"metadata.name": f"distcomp-worker-{prefix.strip(':')}", "status.podIP": "127.0.0.1"}
    env = {"DISTCOMP_PREFIX": prefix}
    for e in c.get("env", []):
        source = e.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[e["name"]] = secrets[(source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])]
        elif "fieldRef" in source:
            env[e["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = e["value"]
    return env


@pytest.mark.parametrize("name", ["distcomp-worker", "distcomp-exporter", "distcomp-console"])
def test_each_container_command_runs_and_answers_its_probe(
    rendered: dict[str, list[Doc]], redis_url: str, prefix: str, tmp_path: Path, name: str
) -> None:
    dep = one(rendered["base"], "Deployment", name)
    c = container(dep)
    env = container_env(c, redis_url, prefix)
    port = free_port()
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(container_argv(c, env, port), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env}, cwd=REPO)  # fmt: skip
    try:
        path = c["readinessProbe"]["httpGet"]["path"]
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}{path}")[0] == 200 or proc.poll() is not None,
                   timeout=60, what=f"{name} {path}")  # fmt: skip
        assert proc.poll() is None, log.read_text()
        live = c["livenessProbe"]["httpGet"]["path"]
        assert http_get(f"http://127.0.0.1:{port}{live}")[0] == 200, f"{name} {live}"
        if name == "distcomp-worker":
            status, body = http_get(f"http://127.0.0.1:{port}/metrics")
            samples = {s.name: s for f in text_string_to_metric_families(body) for s in f.samples}
            assert samples["distcomp_slots"].value == float(flag(c["args"], "--concurrency") or "nan")
            assert samples["distcomp_worker_info"].labels["worker"] == env["POD_NAME"]
        proc.send_signal(signal.SIGTERM)
        grace = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        # uvicorn (the console) ends a graceful shutdown by re-raising the SIGTERM: the same to the kubelet
        assert proc.wait(grace) in (0, -signal.SIGTERM), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def exporter_url(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "distcomp_obs", "exporter", "--redis-url", redis_url, "--prefix", prefix,
            "--metrics-addr", f"127.0.0.1:{port}"]  # fmt: skip
    with open(tmp_path / "exporter.log", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_get(url + "/healthz")[0] == 200, timeout=60, what="exporter /healthz")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def scrape_tasks(url: str) -> dict[str, float]:
    """state -> value of distcomp_queue_tasks in one real scrape."""
    status, body = http_get(url + "/metrics")
    assert status == 200
    return {
        s.labels["state"]: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == "distcomp_queue_tasks"
    }


def test_keda_query_counts_waiting_and_claimed_tasks_of_a_real_exporter(
    rendered: dict[str, list[Doc]], queue: Queue, prefix: str, exporter_url: str,
    start_worker: Callable[..., Any], tmp_path: Path,
) -> None:  # fmt: skip
    """promtool evaluates the ScaledObject's query on series scraped from a real exporter, served by
    two exporter replicas: 0 for an idle queue (scale to zero), then exactly the tasks waiting or
    claimed (buffered or running), counted once."""
    require(shutil.which("promtool") is not None, "promtool (apt-get install prometheus)")
    trigger = keda_prometheus_trigger(rendered["overlays/keda"])
    query: str = trigger["metadata"]["query"]
    label = prefix.rstrip(":")
    assert query.count('queue="distcomp"') == 1
    query = query.replace('queue="distcomp"', f'queue="{label}"')

    idle = scrape_tasks(exporter_url)
    tasks = [f"builtin:1:0:0:sleep {60 + i}" for i in range(10)]
    queue.submit(tasks)
    start_worker("--concurrency", "1", "--prefetch", "2")
    busy: dict[str, float] = wait_until(
        lambda: (s := scrape_tasks(exporter_url))["in_progress"] >= 1 and s["buffered"] >= 1 and s,
        timeout=30, what="a claimed and a buffered task",
    )  # fmt: skip
    assert busy["todo"] + busy["in_progress"] == len(tasks) and idle["todo"] + idle["in_progress"] == 0
    # every state the exporter serves goes in, buffered included (it is part of in_progress)
    assert set(idle) == set(busy) >= {"todo", "in_progress", "buffered"}

    series = [
        {"series": f'distcomp_queue_tasks{{job="distcomp-exporter",instance="{inst}",queue="{label}",state="{state}"}}',
         "values": f"{idle[state]:g} {busy[state]:g}"}
        for inst in ("exporter-a:9711", "exporter-b:9711") for state in busy
    ]  # fmt: skip
    # a job the query must ignore, with the same metric (e.g. a second Prometheus job scraping workers)
    series.append({"series": f'distcomp_queue_tasks{{job="other",queue="{label}",state="todo"}}', "values": "5 5"})
    expected = len(tasks)
    test_file = tmp_path / "keda_test.yml"
    test_file.write_text(yaml.safe_dump({
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {"expr": query, "eval_time": "0m", "exp_samples": [{"labels": "{}", "value": 0}]},
                {"expr": query, "eval_time": "1m", "exp_samples": [{"labels": "{}", "value": expected}]},
            ],
        }],
    }))  # fmt: skip
    out = subprocess.run(["promtool", "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # what the HPA then asks for: one pod per --concurrency tasks
    assert math.ceil(expected / float(trigger["metadata"]["threshold"])) == 3

    # The redis scaler alternative reads the same two records by key (TYPE, then ZCARD or HLEN):
    # waiting in the todo_tasks sorted set, claimed in the in_progress_tasks hash.
    keys, default = Keys(prefix), Keys()
    client = queue.r
    redis_so = one(rendered["overlays/keda-redis"], "ScaledObject", "distcomp-worker")
    names = [t["metadata"]["listName"] for t in redis_so["spec"]["triggers"]]
    assert names == [default.todo_tasks, default.in_progress_tasks]
    assert client.type(keys.todo_tasks) == "zset" and client.type(keys.in_progress_tasks) == "hash"
    now = scrape_tasks(exporter_url)
    assert client.zcard(keys.todo_tasks) == now["todo"] and client.hlen(keys.in_progress_tasks) == now["in_progress"]


# --- systemd ------------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, dict[str, str]]:
    """section -> key -> value (last one wins, as systemd reads it; comments and blanks skipped)."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


UNITS = sorted(p.name for p in SYSTEMD.glob("*.service"))


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze (apt-get install systemd)")
    assert UNITS == ["distcomp-exporter.service", "distcomp-worker@.service"]
    true = shutil.which("true")
    assert true
    for unit in UNITS:
        # verify checks that ExecStart is executable: point it at one that exists here
        text = (SYSTEMD / unit).read_text().replace("/opt/distcomp/bin/distcomp", true)
        (tmp_path / unit).write_text(text)
    names = [str(tmp_path / u.replace("@.", "@1.")) for u in UNITS]
    out = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=60)
    # systemd only warns (exit 0) on an unknown key or a bad value: any output is a failure here
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stderr + out.stdout


def test_systemd_worker_unit_drains_on_stop() -> None:
    service = unit_settings(SYSTEMD / "distcomp-worker@.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    grace = float(flag(argv, "--grace-period") or "nan")
    assert service["KillSignal"] == "SIGTERM"
    assert service.get("KillMode") == "mixed", "control-group would SIGTERM every running task at once"
    assert float(service["TimeoutStopSec"]) >= grace + 10
    assert "%i" in (flag(argv, "--name") or ""), "one name per instance"
    assert service["EnvironmentFile"] == "/etc/distcomp/distcomp.env"


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (SYSTEMD / "distcomp.env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#"))  # fmt: skip
    return {k.strip(): v.strip() for k, v in pairs}


def test_systemd_env_example_names_only_real_settings() -> None:
    env = env_example()
    assert set(env) <= set(ENV_NAMES), set(env) - set(ENV_NAMES)
    assert "DISTCOMP_GRACE_PERIOD_S" not in env  # it lives on ExecStart, beside TimeoutStopSec


def test_systemd_worker_command_runs_and_drains_within_timeout_stop(
    redis_url: str, prefix: str, queue: Queue, tmp_path: Path
) -> None:
    """ExecStart as systemd would run it (%H, %i expanded; the example environment file, pointed at
    the test's redis-server and loopback) starts a worker; SIGTERM lets its running task finish and
    the worker leave, within TimeoutStopSec."""
    service = unit_settings(SYSTEMD / "distcomp-worker@.service")["Service"]
    argv = shlex.split(service["ExecStart"].replace("%H", "testhost").replace("%i", "1"))
    assert argv[0] == "/opt/distcomp/bin/distcomp"
    env = {**env_example(), "DISTCOMP_REDIS_URL": redis_url, "DISTCOMP_PREFIX": prefix,
           "DISTCOMP_METRICS_ADDR": "127.0.0.1:0"}  # fmt: skip
    env.pop("DISTCOMP_REDIS_PASSWORD_FILE")  # the test's server has no password
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distcomp_obs", *argv[1:]], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=REPO)  # fmt: skip
    try:
        wait_until(lambda: "testhost-1" in queue.snapshot().workers or proc.poll() is not None, timeout=60,
                   what="worker testhost-1 registered")  # fmt: skip
        assert proc.poll() is None, log.read_text()
        started = tmp_path / "started"
        queue.submit([f"shell:1:0:0:touch {started} && sleep 1"])
        wait_until(started.exists, timeout=30, what="task started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(float(service["TimeoutStopSec"])) == 0, log.read_text()
        assert queue.counts()["finished"] == 1  # the running task was drained, not killed
        assert "testhost-1" not in queue.snapshot().workers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
