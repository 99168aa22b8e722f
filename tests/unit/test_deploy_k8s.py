"""deploy/k8s: every manifest validates offline, the kustomize build renders, and it agrees with the bundle.

No cluster: schemas come from the kubernetes-validate package, the build from tests/kustomize_lite.py (checked
against `kubectl kustomize` where kubectl is installed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fraudserve.batch.cli import build_parser as batch_parser
from fraudserve.security.auth import OPEN_PATHS
from fraudserve.settings import Settings
from fraudserve.stream.cli import build_parser as stream_parser
from tests.kustomize_lite import Unsupported, json_patch, parse_env_file, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
# 1.32: the oldest release where every field used here is GA (CronJob timeZone 1.27, Job podFailurePolicy 1.31).
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
CUSTOM_KINDS = {"ServiceMonitor"}

Resource = dict[str, Any]


@pytest.fixture(scope="module")
def overlay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s whose example overlay has a secrets.env made from its example."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    example = copy / "overlays" / "example"
    shutil.copy(example / "secrets.env.example", example / "secrets.env")
    return example


@pytest.fixture(scope="module")
def base() -> list[Resource]:
    return render(BASE)


@pytest.fixture(scope="module")
def overlay(overlay_dir: Path) -> list[Resource]:
    return render(overlay_dir)


def by_kind(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def pod_specs(resources: list[Resource]) -> Iterator[tuple[str, dict[str, Any]]]:
    for r in resources:
        if r["kind"] == "Deployment":
            yield r["metadata"]["name"], r["spec"]["template"]["spec"]
        elif r["kind"] == "CronJob":
            yield r["metadata"]["name"], r["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(resources: list[Resource]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs(resources):
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            yield name, container


def source_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


# --- schemas -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_resource_validates(base: list[Resource], overlay: list[Resource], version: str) -> None:
    checked = 0
    for resource in base + overlay:
        if resource["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(resource, version, strict=True)
        checked += 1
    assert checked >= 16


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)


def test_a_schema_violation_is_caught(base: list[Resource]) -> None:
    deployment = dict(by_kind(base, "Deployment")["fraud-detection"])
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_servicemonitor_selects_the_service_port(overlay: list[Resource]) -> None:
    monitor = by_kind(overlay, "ServiceMonitor")["fraud-detection"]
    service = by_kind(overlay, "Service")["fraud-detection"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}


# --- rendering -----------------------------------------------------------------------------------------------


def _key(resource: Resource) -> tuple[str, str, str]:
    return resource["kind"], resource["metadata"].get("namespace", ""), resource["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
@pytest.mark.parametrize("which", ["base", "overlay"])
def test_renderer_agrees_with_kubectl_kustomize(
    which: str, base: list[Resource], overlay: list[Resource], overlay_dir: Path
) -> None:
    folder, ours = (BASE, base) if which == "base" else (overlay_dir, overlay)
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
    theirs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert {_key(r): r for r in ours} == {_key(r): r for r in theirs}


def test_overlay_renders_namespace_images_secret_and_patches(overlay: list[Resource]) -> None:
    assert {r["metadata"].get("namespace") for r in overlay} == {"fraud"}
    images = {c["image"] for _, c in containers(overlay)}
    assert images == {
        "registry.example.com/fraud/fraud-detection:0.1.0",
        "registry.example.com/fraud/fraud-detection-batch:0.1.0",
    }
    secret = by_kind(overlay, "Secret")["fraud-api-keys"]
    assert set(secret["data"]) == {"FRAUD_API_KEYS", "FRAUD_ADMIN_API_KEYS"}
    settings = by_kind(overlay, "ConfigMap")["fraud-settings"]["data"]
    assert settings["FRAUD_REDIS_URL"].startswith("redis://redis.")
    assert by_kind(overlay, "PersistentVolumeClaim")["fraud-batch-data"]["spec"]["storageClassName"]


def test_renderer_json_patch_operations() -> None:
    doc: Resource = {"a": {"b": [1, 2]}, "c": "x"}
    json_patch(doc, {"op": "add", "path": "/a/b/-", "value": 3})
    json_patch(doc, {"op": "add", "path": "/a/b/0", "value": 0})
    json_patch(doc, {"op": "replace", "path": "/c", "value": "y"})
    json_patch(doc, {"op": "add", "path": "/a/d~1e", "value": {"f": 1}})
    json_patch(doc, {"op": "remove", "path": "/a/b/1"})
    assert doc == {"a": {"b": [0, 2, 3], "d/e": {"f": 1}}, "c": "y"}
    with pytest.raises(KeyError):
        json_patch(doc, {"op": "replace", "path": "/missing", "value": 1})
    with pytest.raises(Unsupported):
        json_patch(doc, {"op": "move", "from": "/c", "path": "/g"})


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("secretGenerator:\n  - name: s\n    literals: [A=1]\n")
    with pytest.raises(Unsupported, match="disableNameSuffixHash"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\n")
    with pytest.raises(Unsupported, match="namePrefix"):
        render(tmp_path)


def test_env_file_parsing(tmp_path: Path) -> None:
    env = tmp_path / "x.env"
    env.write_text("# comment\n\nA=1,2\nB=x=y\n")
    assert parse_env_file(env) == {"A": "1,2", "B": "x=y"}


# --- agreement with the image and the settings ---------------------------------------------------------------


def serving_container(resources: list[Resource]) -> dict[str, Any]:
    spec = by_kind(resources, "Deployment")["fraud-detection"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return dict(container)


def image_exposed_ports() -> set[int]:
    """EXPOSE of BentoML's Dockerfile template plus the ports scripts/image.sh adds with `buildah config`."""
    import bentoml._internal.container.frontend.dockerfile as frontend

    template = (Path(frontend.__file__).parent / "templates" / "base_v2.j2").read_text()
    ports = {int(p) for p in re.findall(r"^EXPOSE (\d+)$", template, re.MULTILINE)}
    script = (ROOT / "scripts" / "image.sh").read_text()
    ports |= {int(p) for p in re.findall(r"buildah config --port (\d+)", script)}
    return ports


def test_ports_match_the_image_and_the_settings(base: list[Resource]) -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    ports = {p["name"]: p["containerPort"] for p in serving_container(base)["ports"]}
    assert ports == {"http": BentoMLContainer.http.port.get(), "grpc": Settings().grpc_port}
    assert set(ports.values()) <= image_exposed_ports()
    assert int(by_kind(base, "ConfigMap")["fraud-settings"]["data"]["FRAUD_GRPC_PORT"]) == ports["grpc"]
    service = by_kind(base, "Service")["fraud-detection"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        name: (port, name) for name, port in ports.items()
    }
    annotations = by_kind(base, "Deployment")["fraud-detection"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]


def test_probe_paths_are_served_routes_open_without_a_key(base: list[Resource]) -> None:
    from bentoml._internal.server.base_app import BaseAppFactory
    from starlette.routing import Route

    stub = types.SimpleNamespace(livez=None, readyz=None, metrics=None)
    routes = BaseAppFactory.get_system_routes(stub)  # type: ignore[arg-type]
    system_routes = {route.path for route in routes if isinstance(route, Route)}
    container = serving_container(base)
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["path"] in system_routes
        assert probe["path"] in OPEN_PATHS
        assert probe["port"] == "http"
    metrics_path = by_kind(base, "Deployment")["fraud-detection"]["spec"]["template"]["metadata"]["annotations"]
    assert metrics_path["prometheus.io/path"] in system_routes & OPEN_PATHS
    ready_timeout = float(by_kind(base, "ConfigMap")["fraud-settings"]["data"]["FRAUD_READY_PROBE_TIMEOUT_S"])
    assert container["readinessProbe"]["timeoutSeconds"] > ready_timeout


def test_pods_run_as_the_image_user_with_a_read_only_root(base: list[Resource]) -> None:
    from bentoml._internal.container import generate

    template = (Path(generate.__file__).parent / "frontend" / "dockerfile" / "templates" / "base_v2.j2").read_text()
    assert "USER {{ bento__user }}" in template
    assert "useradd" not in (ROOT / "fraudserve" / "image.py").read_text()
    for name, spec in pod_specs(base):
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == context["runAsGroup"] == generate.BENTO_UID_GID, name
        mounts_by_volume = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: mounts_by_volume[m["name"]] for m in container["volumeMounts"]}
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            # What BentoML writes: its home and the runners' unix sockets in /tmp.
            assert "emptyDir" in mounts["/tmp"], name
            assert "emptyDir" in mounts[env["BENTOML_HOME"]], name


def test_every_fraud_variable_is_a_setting(base: list[Resource], overlay: list[Resource], monkeypatch: Any) -> None:
    fields = {f"FRAUD_{name.upper()}" for name in Settings.model_fields}
    names: set[str] = set()
    for resources in (base, overlay):
        for config in by_kind(resources, "ConfigMap").values():
            names |= set(config["data"])
        for secret in by_kind(resources, "Secret").values():
            names |= set(secret["data"])
        for _, container in containers(resources):
            names |= {e["name"] for e in container.get("env", [])}
            script = " ".join(container.get("args", []) + container.get("command", []))
            names |= set(re.findall(r"\bFRAUD_[A-Z0-9_]+", script))
    fraud = {n for n in names if n.startswith("FRAUD_")}
    assert fraud
    assert fraud <= fields, sorted(fraud - fields)
    for key, value in by_kind(overlay, "ConfigMap")["fraud-settings"]["data"].items():
        monkeypatch.setenv(key, value)
    Settings()  # the values parse too


def test_secret_is_never_committed(base: list[Resource]) -> None:
    assert not by_kind(base, "Secret")
    assert (OVERLAY / "secrets.env.example").is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(OVERLAY / "secrets.env")], cwd=ROOT, check=False
    ).returncode
    assert ignored == 0, "overlays/*/secrets.env must be gitignored"
    placeholders = parse_env_file(OVERLAY / "secrets.env.example")
    assert set(placeholders) == {"FRAUD_API_KEYS", "FRAUD_ADMIN_API_KEYS"}
    from fraudserve.security.auth import MIN_KEY_CHARS

    # Too short to be accepted: a forgotten placeholder stops the service instead of becoming its key.
    assert all(len(value) < MIN_KEY_CHARS for value in placeholders.values())
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert not [path for path in tracked.stdout.split() if path.endswith("secrets.env")]


def test_shutdown_grace_covers_the_service_drain(base: list[Resource]) -> None:
    from bentoml_cli.serve import build_serve_command

    serve = build_serve_command().commands["serve"]
    serve_options = {opt for param in serve.params for opt in param.opts}
    pod = by_kind(base, "Deployment")["fraud-detection"]["spec"]["template"]["spec"]
    container = serving_container(base)
    args = container["args"]
    assert args[0] in serve_options
    drain_s = int(args[args.index("--timeout-graceful-shutdown") + 1])
    data = by_kind(base, "ConfigMap")["fraud-settings"]["data"]
    settings = Settings(
        request_timeout_s=float(data["FRAUD_REQUEST_TIMEOUT_S"]),
        grpc_shutdown_grace_s=float(data["FRAUD_GRPC_SHUTDOWN_GRACE_S"]),
    )
    assert drain_s >= settings.request_timeout_s
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = int(pre_stop[1]) + drain_s + settings.grpc_shutdown_grace_s + 5
    assert pod["terminationGracePeriodSeconds"] >= budget


def test_hpa_and_pdb(base: list[Resource]) -> None:
    deployment = by_kind(base, "Deployment")["fraud-detection"]
    assert "replicas" not in deployment["spec"]
    hpa = by_kind(base, "HorizontalPodAutoscaler")["fraud-detection"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud-detection"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]}
    assert targets == {"cpu": 70, "memory": 80}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    resources = serving_container(base)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind(base, "PodDisruptionBudget")["fraud-detection"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == pdb["selector"]["matchLabels"]
    service = by_kind(base, "Service")["fraud-detection"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def run_container_script(container: dict[str, Any], tmp_path: Path, stub: str) -> list[str]:
    """Runs a container's `sh -c` script with `stub` on PATH recording its argv; returns that argv."""
    bin_dir, argv_file = tmp_path / "bin", tmp_path / "argv"
    bin_dir.mkdir()
    (bin_dir / stub).write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > "{argv_file}"\n')
    (bin_dir / stub).chmod(0o755)
    bento, home = tmp_path / "bento", tmp_path / "home"
    (bento / "models").mkdir(parents=True)
    home.mkdir()
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env |= {"PATH": f"{bin_dir}:{os.environ['PATH']}", "BENTO_PATH": str(bento), "BENTOML_HOME": str(home)}
    env.setdefault("POD_NAME", "pod-0")
    args = container["args"]
    assert args[:2] == ["sh", "-c"]
    subprocess.run(["sh", "-c", args[2]], env=env, check=True, timeout=30)
    assert (home / "models").resolve() == (bento / "models").resolve()
    return argv_file.read_bytes().decode().split("\0")[:-1]


def test_cronjob_runs_a_real_fraud_batch_nightly(base: list[Resource], tmp_path: Path) -> None:
    cronjob = by_kind(base, "CronJob")["fraud-batch"]
    assert cronjob["spec"]["schedule"] == "0 2 * * *"
    assert cronjob["spec"]["timeZone"] == "Etc/UTC"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    argv = run_container_script(container, tmp_path, "fraud-batch")
    args = batch_parser().parse_args(argv)
    assert args.engine == "local" and args.resume
    assert args.input.name == args.output.name == f"ds={today}"
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    pvc_mounts = [Path(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in claims]
    assert any(args.output.is_relative_to(mount) for mount in pvc_mounts), args.output
    assert any(args.input.is_relative_to(mount) for mount in pvc_mounts), args.input
    assert args.workers <= float(container["resources"]["requests"]["cpu"])
    rules = cronjob["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert {r["onExitCodes"]["containerName"] for r in rules if "onExitCodes" in r} == {container["name"]}


def test_stream_worker_runs_a_real_fraud_stream_worker(base: list[Resource], tmp_path: Path) -> None:
    deployment = by_kind(base, "Deployment")["fraud-stream-worker"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = run_container_script(container, tmp_path, "python")
    assert argv[:2] == ["-m", "fraudserve.stream.cli"]
    args = stream_parser(Settings()).parse_args(argv[2:])
    assert args.command == "worker" and args.consumer == "pod-0"
    data = by_kind(base, "ConfigMap")["fraud-settings"]["data"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(data["FRAUD_STREAM_METRICS_PORT"]) == args.metrics_port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
