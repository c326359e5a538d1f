"""The deployment files, checked offline: no Docker engine and no cluster needed.

- Kubernetes: every YAML document under deploy/k8s/ is validated against the
  strict JSON schema of its kind and API version kept in deploy/schemas/v1.32/
  (additionalProperties false, as the schema says); a kind without a schema
  fails, nothing is skipped. Then what a schema cannot see: probes, drain
  timing, discovery through the headless Service, selectors, disruption
  budgets, autoscaling targets, security context, and that every container's
  args parse with the real `recgen` command line.
- Dockerfiles: parsed, and the properties docs/deploy.md promises asserted
  (non-root USER, a real gRPC HEALTHCHECK, no torch in the serving image,
  EXPOSEd ports, COPY sources that exist and are not docker-ignored).
- The serving dependency closure (from the installed distributions' metadata)
  holds no torch.
- `python -m recgen.healthcheck` against a real gRPC health server.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from packaging.requirements import Requirement
from referencing import Registry, Resource

from recgen.cli import build_parser
from recgen.config import ConfigError, ServeConfig, WorkerConfig
from recgen.config.flags import from_args

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "deploy" / "schemas" / "v1.32"
TORCH_LIKE = {"torch", "transformers", "optimum", "optimum-onnx", "sentence-transformers", "accelerate"}


def _load_vendor_script() -> ModuleType:
    """deploy/schemas/vendor.py (not a package): the one schema-naming rule, shared with it."""
    spec = importlib.util.spec_from_file_location("recgen_deploy_vendor", ROOT / "deploy/schemas/vendor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


schema_name = _load_vendor_script().schema_name

# ---------------------------------------------------------------- Kubernetes


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return docs


DOCS = documents()


def registry() -> Registry:
    defs = json.loads((SCHEMAS / "_definitions.json").read_text())
    return Resource.from_contents(defs) @ Registry()


def validator_for(doc: dict[str, Any]) -> jsonschema.Draft202012Validator:
    path = SCHEMAS / schema_name(doc["kind"], doc["apiVersion"])
    if not path.exists():
        pytest.fail(f"no schema for {doc['kind']} {doc['apiVersion']} ({path.name}): vendor it, never skip")
    schema = json.loads(path.read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry())


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == kind}


def test_there_is_something_to_validate() -> None:
    kinds = {d["kind"] for _, d in DOCS}
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds


@pytest.mark.parametrize(("where", "doc"), DOCS, ids=[w for w, _ in DOCS])
def test_manifest_matches_its_strict_schema(where: str, doc: dict[str, Any]) -> None:
    errors = sorted(validator_for(doc).iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{where}: /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_strict_schema_rejects_what_a_cluster_would() -> None:
    """The schemas are strict for real: a misspelt field, a wrong type, a missing port all fail."""
    gateway = by_kind("Deployment")["recgen-gateway"]
    v = validator_for(gateway)
    typo = copy.deepcopy(gateway)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 50051}
    wrong_type = copy.deepcopy(gateway)
    wrong_type["spec"]["replicas"] = "two"
    no_port = copy.deepcopy(gateway)
    del no_port["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"]
    for bad in (typo, wrong_type, no_port):
        assert list(v.iter_errors(bad)), "a broken manifest validated"


def test_vendored_schemas_are_exactly_the_kinds_used() -> None:
    used = {schema_name(d["kind"], d["apiVersion"]) for _, d in DOCS}
    kept = {p.name for p in SCHEMAS.glob("*.json")} - {"_definitions.json"}
    assert used == kept
    source = json.loads((SCHEMAS.parent / "SOURCE-v1.32.json").read_text())
    assert source["package"] == "kubernetes_validate-1.37.0-py3-none-any.whl"
    assert source["schemas"] == "v1.32.0-local-strict" and sorted(source["kinds"]) == sorted(kept)


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container_args(deployment: dict[str, Any]) -> list[str]:
    return pod(deployment)["containers"][0]["args"]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_container_args_parse_with_the_real_command_line() -> None:
    parser = build_parser()
    for name, dep in by_kind("Deployment").items():
        args = container_args(dep)
        try:
            parsed = parser.parse_args(args)
        except SystemExit:  # argparse exits on an invented flag or a bad value (message on stderr)
            pytest.fail(f"Deployment {name}: args do not parse with `recgen`: {args}")
        assert parsed.command in ("serve", "worker"), name
        # ...and make a valid config (TLS pairs, listeners, shards: what `recgen` checks at start).
        cls = ServeConfig if parsed.command == "serve" else WorkerConfig
        try:
            from_args(cls, parsed)
        except ConfigError as e:
            pytest.fail(f"Deployment {name}: {e}")


def test_gateway_finds_workers_through_the_headless_service() -> None:
    gw, worker = by_kind("Deployment")["recgen-gateway"], by_kind("Deployment")["recgen-worker"]
    services = by_kind("Service")
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1
    svc = headless[0]
    assert svc["spec"]["selector"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()
    port = svc["spec"]["ports"][0]["port"]
    ns = svc["metadata"]["namespace"]
    gw_args = container_args(gw)
    assert flag(gw_args, "--workers") == "0"
    assert (
        flag(gw_args, "--worker-address") == f"dns:///{svc['metadata']['name']}.{ns}.svc.cluster.local:{port}"
    )
    assert flag(container_args(worker), "--listen") == f"0.0.0.0:{port}"
    # Remote hops use TLS both ways.
    assert {"--worker-tls-ca", "--worker-tls-cert", "--worker-tls-key"} <= set(gw_args)
    assert {"--tls-cert", "--tls-key", "--tls-client-ca"} <= set(container_args(worker))
    assert "--insecure" not in container_args(worker) and "--worker-insecure" not in gw_args


def test_services_select_pods_and_target_named_ports() -> None:
    deployments = by_kind("Deployment").values()
    for name, svc in by_kind("Service").items():
        matches = [
            d
            for d in deployments
            if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        port_names = {p["name"] for p in pod(matches[0])["containers"][0]["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in port_names, (name, p)


def test_gateway_probes_are_native_grpc_and_worker_probes_run_the_health_check() -> None:
    deps = by_kind("Deployment")
    gw = pod(deps["recgen-gateway"])["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gw[probe]["grpc"]["port"] == int(flag(gw["args"], "--port"))
    worker = pod(deps["recgen-worker"])["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # Kubelet's gRPC probe has no TLS; the worker port is mTLS only.
        cmd = worker[probe]["exec"]["command"]
        assert cmd[:3] == ["python", "-m", "recgen.healthcheck"]
        assert cmd[-1].endswith(":" + flag(worker["args"], "--listen").rsplit(":", 1)[1])
        assert {"--tls-ca", "--tls-cert", "--tls-key"} <= set(cmd)


def test_termination_grace_covers_prestop_and_drain() -> None:
    for name, dep in by_kind("Deployment").items():
        spec = pod(dep)
        c = spec["containers"][0]
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        # `recgen serve --grace` (default 10 s); the worker's own drain is 5 s (worker/main.py).
        drain = float(flag(c["args"], "--grace")) if "--grace" in c["args"] else 5.0
        assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 5, name


def test_disruption_budgets_and_autoscalers_target_the_deployments() -> None:
    deps = by_kind("Deployment")
    pdb_targets = set()
    for pdb in by_kind("PodDisruptionBudget").values():
        sel = pdb["spec"]["selector"]["matchLabels"].items()
        pdb_targets |= {
            n for n, d in deps.items() if sel <= d["spec"]["template"]["metadata"]["labels"].items()
        }
    assert pdb_targets == set(deps)
    hpas = by_kind("HorizontalPodAutoscaler").values()
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(deps)
    for h in hpas:
        assert h["spec"]["minReplicas"] >= 2  # a PDB of 1 needs 2 to let a node drain
        assert any(m["resource"]["name"] == "cpu" for m in h["spec"]["metrics"])


def test_pods_are_non_root_read_only_and_sized() -> None:
    for name, dep in by_kind("Deployment").items():
        spec = pod(dep)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), name
            assert "memory" in c["resources"]["limits"], name
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert mounts["/models"]["readOnly"] is True


def test_max_connection_age_is_set_on_the_public_port() -> None:
    args = container_args(by_kind("Deployment")["recgen-gateway"])
    cfg = from_args(ServeConfig, build_parser().parse_args(args))
    assert 0 < cfg.max_connection_age_s and cfg.max_connection_age_grace_s >= cfg.grace


def test_gateway_pods_are_scraped_on_their_metrics_port() -> None:
    gw = by_kind("Deployment")["recgen-gateway"]
    notes = gw["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in pod(gw)["containers"][0]["ports"]}
    assert int(notes["prometheus.io/port"]) == ports["metrics"]
    args = container_args(gw)
    cfg = from_args(ServeConfig, build_parser().parse_args(args))
    assert cfg.metrics_port == ports["metrics"]


def test_prometheus_scrape_job_keeps_annotated_pods_on_their_port() -> None:
    """The ConfigMap's scrape job, its relabelling applied as Prometheus would (anchored RE2
    regexes, `;`-joined source labels) to a gateway pod and to a worker pod."""
    (job,) = yaml.safe_load(by_kind("ConfigMap")["recgen-prometheus"]["data"]["recgen-scrape.yml"])
    sd = job["kubernetes_sd_configs"][0]
    assert sd["role"] == "pod" and sd["namespaces"]["names"] == [by_kind("Namespace").popitem()[0]]
    assert job["scrape_timeout"] <= job["scrape_interval"]

    def relabel(meta: dict[str, str]) -> dict[str, str] | None:
        labels = dict(meta)
        for r in job["relabel_configs"]:
            joined = ";".join(labels.get(k, "") for k in r["source_labels"])
            m = re.fullmatch(r.get("regex", "(.*)"), joined)
            if r.get("action", "replace") == "keep":
                if m is None:
                    return None
            elif m is not None:
                labels[r["target_label"]] = m.expand(r.get("replacement", "$1").replace("$", "\\"))
        return labels

    gw = by_kind("Deployment")["recgen-gateway"]
    notes = gw["spec"]["template"]["metadata"]["annotations"]
    meta = {
        "__address__": "10.1.2.3:50051",
        "__metrics_path__": "/metrics-default",
        "__meta_kubernetes_namespace": "recgen",
        "__meta_kubernetes_pod_name": "recgen-gateway-abc",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "recgen-gateway",
    }
    meta |= {
        "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in notes.items()
    }
    out = relabel(meta)
    assert out is not None
    assert out["__address__"] == f"10.1.2.3:{notes['prometheus.io/port']}"
    assert out["__metrics_path__"] == "/metrics" and out["pod"] == "recgen-gateway-abc"
    worker = by_kind("Deployment")["recgen-worker"]
    assert "prometheus.io/scrape" not in worker["spec"]["template"]["metadata"].get("annotations", {})
    assert relabel({"__address__": "10.1.2.4:50052"}) is None  # not annotated: not scraped


def test_prometheus_files_are_valid_yaml_with_what_they_name() -> None:
    prom = ROOT / "deploy" / "prometheus"
    config = yaml.safe_load((prom / "scrape.yml").read_text())
    for rel in config["rule_files"]:
        assert (prom / rel).is_file(), rel
    rules = yaml.safe_load((prom / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule) and rule["expr"].strip(), rule
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"critical", "warning"}
                assert rule["annotations"]["summary"], rule["alert"]
    board = json.loads((ROOT / "deploy" / "grafana" / "recgen.json").read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] and board["title"]


# ---------------------------------------------------------------- Dockerfiles


def dockerfile(name: str) -> list[dict[str, Any]]:
    # From a file object: the parser takes any path not named "Dockerfile" for a directory.
    return DockerfileParser(fileobj=io.BytesIO((ROOT / "deploy" / name).read_bytes())).structure


def final_stage(instructions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    return instructions[last_from:]


def dockerignored(rel: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    rel = rel.rstrip("/")
    return any(fnmatch.fnmatch(rel, p) or rel.startswith(p + "/") for p in patterns)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.export"])
def test_dockerfile_runs_as_non_root_and_copies_what_exists(name: str) -> None:
    ins = dockerfile(name)
    final = final_stage(ins)
    users = [i["value"].split(":")[0] for i in final if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{name}: final stage runs as root"
    for i in ins:
        if i["instruction"] != "COPY" or "--from=" in i["value"]:
            continue
        *sources, _dest = shlex.split(i["value"])
        for src in sources:
            assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
            assert not dockerignored(src), f"{name}: COPY {src} is excluded by .dockerignore"


def test_serving_image_has_no_torch_and_a_real_health_check() -> None:
    ins = dockerfile("Dockerfile")
    runs = " ".join(i["value"] for i in ins if i["instruction"] == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the project is installed without extras"
    assert "[export" not in runs and "torch" not in runs
    final = final_stage(ins)
    hc = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert len(hc) == 1 and "recgen.healthcheck" in hc[0]
    exposed = {int(p) for i in final if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    # Every port the manifests open is exposed by the image they run.
    for dep in by_kind("Deployment").values():
        for c in pod(dep)["containers"]:
            assert {p["containerPort"] for p in c["ports"]} <= exposed
    cmd = json.loads(next(i["value"] for i in final if i["instruction"] == "CMD"))
    env = " ".join(i["value"] for i in final if i["instruction"] == "ENV")
    assert f"RECGEN_HEALTH_ADDRESS=127.0.0.1:{flag(cmd, '--port')}" in env
    assert flag(cmd, "--models") == "/models"


def test_export_image_carries_the_export_extra() -> None:
    runs = " ".join(i["value"] for i in dockerfile("Dockerfile.export") if i["instruction"] == "RUN")
    assert "'.[export]'" in runs and "torch==" in runs


def test_generated_stubs_are_not_in_the_build_context() -> None:
    assert dockerignored("recgen/v1") and dockerignored("recgen/worker/v1") and dockerignored(".venv")


# ------------------------------------------------- serving dependency closure


def closure(requirements: list[str]) -> set[str]:
    """Distributions these requirements pull in, with the extras they ask for (installed metadata)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (req.name.lower().replace("_", "-"), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            specs = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed: `make install` first")
        for spec in specs:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                todo.append(sub)
    return {name for name, _ in seen}


def test_serving_dependency_closure_has_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = closure(project["dependencies"])
    assert {"grpcio", "onnxruntime", "numpy", "protobuf"} <= deps
    assert not deps & TORCH_LIKE, deps & TORCH_LIKE
    # The export extra does bring torch: the check can fail.
    assert "torch" in closure(project["optional-dependencies"]["export"])


# ---------------------------------------------------------- recgen.healthcheck


@pytest.fixture()
def health_server() -> Iterator[tuple[health.HealthServicer, int]]:
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None)


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recgen.healthcheck", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_healthcheck_exit_codes(health_server) -> None:
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    ok = healthcheck(f"127.0.0.1:{port}")
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    draining = healthcheck(f"127.0.0.1:{port}")
    assert draining.returncode == 1 and "NOT_SERVING" in draining.stderr


def test_healthcheck_reads_its_address_from_the_environment(health_server) -> None:
    servicer, port = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    r = healthcheck(env={**os.environ, "RECGEN_HEALTH_ADDRESS": f"127.0.0.1:{port}"})
    assert r.returncode == 0, r.stderr


def test_healthcheck_fails_when_nothing_listens(health_server) -> None:
    _, port = health_server
    unknown = healthcheck("--service", "no.such.Service", f"127.0.0.1:{port}")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    down = healthcheck("--timeout", "1", f"127.0.0.1:{free}")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_healthcheck_over_mutual_tls_as_the_worker_probe_runs_it(tmp_path: Path) -> None:
    """The worker's exec probe: its own certificate as the client one, the Service name as server name."""
    from tests.pki import issue, make_ca

    name = "recgen-worker.recgen.svc.cluster.local"
    make_ca(tmp_path)
    issue(tmp_path, "worker", f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth")
    ca, crt, key = (tmp_path / f for f in ("ca.pem", "worker.pem", "worker.key"))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [(key.read_bytes(), crt.read_bytes())], root_certificates=ca.read_bytes(), require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        tls = ["--tls-ca", str(ca), "--tls-cert", str(crt), "--tls-key", str(key)]
        ok = healthcheck(*tls, "--server-name", name, f"127.0.0.1:{port}")
        no_client_cert = healthcheck("--tls-ca", str(ca), "--server-name", name, f"127.0.0.1:{port}")
        wrong_name = healthcheck(*tls, "--timeout", "2", f"127.0.0.1:{port}")
        plaintext = healthcheck("--timeout", "2", f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)
    assert ok.returncode == 0, ok.stderr
    assert no_client_cert.returncode == 1
    assert wrong_name.returncode == 1  # 127.0.0.1 is not the name in the certificate
    assert plaintext.returncode == 1  # why the kubelet's plaintext gRPC probe cannot check a worker
