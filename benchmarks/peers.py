"""The servers benchmarks/online.py compares the bundle with: Seldon MLServer and a trivial BentoML endpoint.

Each runs in a process group of its own on free 127.0.0.1 ports and is always torn down, like
fraudserve.launcher.BundleServer (which also serves the trivial endpoint: it starts any
``bentoml serve`` target).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from fraudserve.launcher import PROJECT_ROOT, BundleServer, free_port, stop_group

MLSERVER_DIR = Path(__file__).resolve().parent / "mlserver"
MODEL_NAME = "fraud_ensemble"
_RUNTIME_LINE = re.compile(r"FRAUD_RUNTIME version=(\S+) members=(\{.*?\}) reasons=(\{.*\})")


def trivial_server(bentoml_home: Path, workers: int) -> BundleServer:
    return BundleServer(
        {"BENCH_TRIVIAL_WORKERS": str(workers), "FRAUD_GRPC_ENABLED": "false"},
        bentoml_home=bentoml_home,
        target="benchmarks.trivial_service:Trivial",
    )


def model_settings(version: str, bentoml_home: Path, member_runtime: str) -> dict[str, Any]:
    """benchmarks/mlserver/model-settings.json with this run's version, model store and member runtime."""
    settings: dict[str, Any] = json.loads((MLSERVER_DIR / "model-settings.json").read_text())
    parameters = settings.setdefault("parameters", {})
    parameters["version"] = version
    parameters.setdefault("extra", {}).update(bentoml_home=str(bentoml_home), member_runtime=member_runtime)
    return settings


class MLServerPeer:
    """``mlserver start`` of a temporary model repository holding the fraud ensemble (fraud_runtime.py)."""

    def __init__(
        self, venv: Path, bentoml_home: Path, version: str, member_runtime: str, *, ready_timeout_s: float = 180.0
    ) -> None:
        self.venv = venv.resolve()
        self.port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        self.root = Path(tempfile.mkdtemp(prefix="mlserver-peer-"))
        (self.root / MODEL_NAME).mkdir()
        server_settings = {
            "host": "127.0.0.1",
            "http_port": self.port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            # debug turns on uvicorn's access log, which the bundle does not pay either.
            "debug": False,
            "environments_dir": str(self.root / ".envs"),
            "metrics_dir": str(self.root / ".metrics"),
        }
        (self.root / "settings.json").write_text(json.dumps(server_settings, indent=2))
        settings = model_settings(version, bentoml_home, member_runtime)
        (self.root / MODEL_NAME / "model-settings.json").write_text(json.dumps(settings, indent=2))
        self.log_path = self.root / "mlserver.log"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        threads = str(settings["parameters"]["extra"].get("threads") or 1)
        # Only the runtime module is importable: the project itself is not on MLServer's path.
        self.env = {**env, "PYTHONPATH": str(MLSERVER_DIR), "BENTOML_HOME": str(bentoml_home), "PYTHONUNBUFFERED": "1"}
        # threadpool_limits in load() alone did not hold for predict() (OpenMP's thread count is per
        # calling thread): on the shared 2-core box a batch then took ~200 ms to score instead of ~75 ms.
        # The environment holds for every thread of every process.
        self.env.update({k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MLServerPeer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(self.venv / "bin" / "mlserver"), "start", str(self.root)],
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"mlserver exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/models/{MODEL_NAME}/ready", timeout=5).status_code == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"mlserver not ready after {self.ready_timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def member_runtimes(self) -> dict[str, Any]:
        """What fraud_runtime.py printed at load: the version and each member's runtime."""
        match = _RUNTIME_LINE.search(self.log_path.read_text(errors="replace"))
        if match is None:
            return {}
        return {"version": match.group(1), "members": json.loads(match.group(2)), "reasons": json.loads(match.group(3))}

    def pids(self) -> list[int]:
        if self.process is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            return [root.pid, *(p.pid for p in root.children(recursive=True))]
        return []

    def stop(self) -> None:
        try:
            stop_group(self.process)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MLServerPeer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def process_roles(root_pid: int, *, root_role: str | None = None) -> dict[int, str]:
    """pid -> a readable role for ``root_pid`` (``root_role`` if given) and its descendants: a BentoML worker
    is named by its ``--service-name`` and ``--worker-id``, a multiprocessing child as such, anything else
    by its executable."""
    roles: dict[int, str] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(root_pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                roles[proc.pid] = role_of(proc.cmdline(), proc.name(), is_root=proc.pid == root_pid)
        if root_role:
            roles[root_pid] = root_role
    return roles


def role_of(cmdline: Sequence[str], name: str, *, is_root: bool = False) -> str:
    if is_root:
        return f"{name} (supervisor)"
    args = list(cmdline)
    if any("multiprocessing" in a for a in args):
        # MLServer's inference workers (and any other multiprocessing child).
        return f"{name} (multiprocessing worker)"
    if "--service-name" not in args and "--worker-id" not in args:
        return name

    def option(flag: str) -> str:
        return args[args.index(flag) + 1] if flag in args[:-1] else ""

    service = option("--service-name") or "entry service"
    worker = option("--worker-id")
    return f"{service} worker {worker}" if worker else service


def project_env() -> dict[str, str]:
    """Environment of the load-client processes: the project importable, nothing else changed."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{path}" if path else str(PROJECT_ROOT)}
