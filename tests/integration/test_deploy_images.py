"""deploy/k8s's pod specs run on the real images: podman with what Kubernetes would enforce (read-only root,
runAsUser/runAsGroup, no capabilities, emptyDirs as tmpfs, the PVC as a bind mount, env from the ConfigMap
and a Secret). The serving pod gets ready and drains within its grace period, a stream worker scores and stops
on SIGTERM, the CronJob's script scores a date partition.

Host networking with free ports (PORT, FRAUD_GRPC_PORT, FRAUD_STREAM_METRICS_PORT) instead of the manifests'
fixed ones: the machine is shared. Slow: builds both images (scripts/image.sh build, build-batch).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import redis

from fraudserve.launcher import PROJECT_ROOT, free_port
from fraudserve.stream.local_redis import LocalRedis
from models.transactions import generate_transactions
from tests.kustomize_lite import render

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCRIPT = PROJECT_ROOT / "scripts" / "image.sh"
BASE_IMAGES = ("localhost/fraud-detection:latest", "localhost/fraud-detection-batch:latest")


@pytest.fixture(scope="module")
def images(trained: str, bentoml_home: Path) -> Iterator[dict[str, Any]]:
    """Both images built from the session's model store under tags of their own; removed after."""
    suffix = uuid.uuid4().hex[:8]
    refs = dict(
        zip(
            BASE_IMAGES,
            (f"localhost/fraud-detection:pytest-{suffix}", f"localhost/fraud-detection-batch:pytest-{suffix}"),
            strict=True,
        )
    )
    env = {
        **os.environ,
        "BENTOML_HOME": str(bentoml_home),
        "IMAGE_REF": refs[BASE_IMAGES[0]],
        "BATCH_IMAGE_REF": refs[BASE_IMAGES[1]],
    }
    exports = subprocess.run(["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True)
    for line in exports.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    try:
        for command in ("build", "build-batch"):
            done = subprocess.run(
                ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=1_500
            )
            assert done.returncode == 0, done.stdout[-3_000:] + done.stderr[-5_000:]
        yield {"env": env, "refs": refs}
    finally:
        subprocess.run(["podman", "rmi", "--force", *refs.values()], env=env, capture_output=True, check=False)


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["kind"], r["metadata"]["name"]): r for r in render(PROJECT_ROOT / "deploy" / "k8s" / "base")}


def pod_of(resource: dict[str, Any]) -> dict[str, Any]:
    if resource["kind"] == "CronJob":
        return dict(resource["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(resource["spec"]["template"]["spec"])


def podman_run(
    images: dict[str, Any],
    pod: dict[str, Any],
    config: dict[str, str],
    *,
    name: str,
    secret: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
    claims: dict[str, Path] | None = None,
    detach: bool = False,
) -> list[str]:
    """The `podman run` of the pod's only container, as the kubelet would constrain it."""
    (container,) = pod["containers"]
    context, security = pod["securityContext"], container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"] and not security["allowPrivilegeEscalation"]
    args = [
        "podman",
        "run",
        *(["--detach"] if detach else []),
        "--name",
        name,
        "--network",
        "host",
        "--cap-drop",
        "ALL",
    ]
    args += ["--security-opt", "no-new-privileges", "--user", f"{context['runAsUser']}:{context['runAsGroup']}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
        else:
            host = (claims or {})[volume["persistentVolumeClaim"]["claimName"]]
            args += ["--volume", f"{host}:{mount['mountPath']}"]
    env = {**config, **(secret or {})}
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", name)  # fieldRef metadata.name: the pod's name
    env.update(overrides or {})
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return [*args, images["refs"][container["image"]], *container.get("args", [])]


def podman(images: dict[str, Any], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=images["env"], capture_output=True, text=True, timeout=timeout_s)


def wait_for(condition: Any, timeout_s: float, what: str, logs: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (httpx.HTTPError, redis.RedisError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout_s}s:\n{logs()}")


def test_serving_pod_is_ready_guarded_and_drains_within_its_grace(images: dict[str, Any], manifests: Any) -> None:
    deployment = manifests[("Deployment", "fraud-detection")]
    pod = pod_of(deployment)
    config = manifests[("ConfigMap", "fraud-settings")]["data"]
    key = secrets.token_hex(16)
    port, grpc_port, name = free_port(), free_port(), f"fraud-k8s-api-{uuid.uuid4().hex[:8]}"
    command = podman_run(
        images,
        pod,
        config,
        name=name,
        secret={"FRAUD_API_KEYS": key, "FRAUD_ADMIN_API_KEYS": secrets.token_hex(16)},
        overrides={"PORT": str(port), "FRAUD_GRPC_PORT": str(grpc_port), "FRAUD_GRPC_HOST": "127.0.0.1"},
        detach=True,
    )
    subprocess.run(command, env=images["env"], check=True, timeout=60)
    try:
        (container,) = pod["containers"]
        url = f"http://127.0.0.1:{port}"
        budget = container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
        logs = lambda: podman(images, "logs", "--tail", "40", name).stderr  # noqa: E731
        wait_for(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, budget, "/readyz 200", logs)
        assert httpx.get(url + container["livenessProbe"]["httpGet"]["path"], timeout=5).status_code == 200
        row = generate_transactions(1, seed=3).drop(columns=["is_fraud"]).iloc[0].to_dict()
        body = {"transactions": {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}}
        assert httpx.post(url + "/predict", json=body, timeout=30).status_code == 401
        answer = httpx.post(url + "/predict", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert "fraud_request_rows" in httpx.get(url + "/metrics", timeout=10).text
        grace = pod["terminationGracePeriodSeconds"]
        started = time.monotonic()
        podman(images, "stop", "--time", str(grace), name, timeout_s=grace + 30)
        assert time.monotonic() - started < grace
    finally:
        podman(images, "rm", "--force", name)


def test_stream_worker_pod_scores_and_stops_on_sigterm(images: dict[str, Any], manifests: Any) -> None:
    pod = pod_of(manifests[("Deployment", "fraud-stream-worker")])
    config = manifests[("ConfigMap", "fraud-settings")]["data"]
    metrics_port, name = free_port(), f"fraud-k8s-stream-{uuid.uuid4().hex[:8]}"
    with LocalRedis() as server:
        overrides = {"FRAUD_REDIS_URL": server.url, "FRAUD_STREAM_METRICS_PORT": str(metrics_port)}
        command = podman_run(images, pod, config, name=name, overrides=overrides, detach=True)
        subprocess.run(command, env=images["env"], check=True, timeout=60)
        try:
            logs = lambda: podman(images, "logs", "--tail", "40", name).stderr  # noqa: E731
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            wait_for(lambda: httpx.get(metrics, timeout=5).status_code == 200, 120, "worker /metrics", logs)
            produce = [sys.executable, "-m", "fraudserve.stream.cli", "--redis-url", server.url, "produce"]
            subprocess.run([*produce, "--generate", "50"], cwd=PROJECT_ROOT, check=True, timeout=60)
            client = redis.Redis.from_url(server.url)
            wait_for(lambda: client.xlen("fraud:scores") == 50, 120, "50 scores", logs)
            grace = pod["terminationGracePeriodSeconds"]
            started = time.monotonic()
            podman(images, "stop", "--time", str(grace), name, timeout_s=grace + 30)
            assert time.monotonic() - started < grace
            state = podman(images, "inspect", "--format", "{{.State.ExitCode}}", name)
            assert state.stdout.strip() == "0", logs()
        finally:
            podman(images, "rm", "--force", name)


def test_cronjob_pod_scores_the_date_partition(images: dict[str, Any], manifests: Any, tmp_path: Path) -> None:
    pod = pod_of(manifests[("CronJob", "fraud-batch")])
    config = manifests[("ConfigMap", "fraud-settings")]["data"]
    data = tmp_path / "data"
    ds = datetime.now(UTC).strftime("%Y-%m-%d")
    (data / "input" / f"ds={ds}").mkdir(parents=True)
    frame = generate_transactions(2_000, seed=5)
    frame.loc[:4, "hour"] = 99
    frame.to_parquet(data / "input" / f"ds={ds}" / "part-0.parquet")
    # The kubelet gives the pod's fsGroup the volume; here the bind mount is made writable for the pod's uid.
    os.chown(data, pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"])
    name = f"fraud-k8s-batch-{uuid.uuid4().hex[:8]}"
    command = podman_run(images, pod, config, name=name, claims={"fraud-batch-data": data})
    try:
        done = subprocess.run(command, env=images["env"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2_000:] + done.stderr[-3_000:]
    finally:
        podman(images, "rm", "--force", name)
    out = data / "scored" / f"ds={ds}"
    scored = pd.read_parquet(out / "part-00000.parquet")
    assert len(scored) == 1_995
    assert (out / "_summary.json").is_file() and (out / "_rejected.csv").is_file()
