"""Start `bentoml serve` of this bundle in a subprocess on free ports, and always tear it down.

Used by the integration tests, the benchmarks and the load-test helpers:

    with BundleServer(env={"FRAUD_BATCHING_ENABLED": "false"}) as server:
        httpx.post(server.url + "/predict", json=...)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx
import psutil

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_SHARED_HOME_ENTRIES = ("models", "bentos", "fraud-rollout")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BundleServer:
    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        bentoml_home: str | os.PathLike[str] | None = None,
        target: str = "service:FraudDetection",
        ready_timeout_s: float = 120.0,
        cwd: Path = PROJECT_ROOT,
        port: int | None = None,
        grpc_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = target
        self.cwd = cwd
        self.ready_timeout_s = ready_timeout_s
        self.env = {
            **os.environ,
            "FRAUD_GRPC_PORT": str(self.grpc_port),
            "PYTHONUNBUFFERED": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            **(env or {}),
        }
        # `bentoml serve` wipes $BENTOML_HOME/prometheus_multiproc_dir at start, so two servers on
        # one home reset each other's metrics. Each server gets a private home that shares the
        # model store and the rollout registry of the given one.
        shared = Path(bentoml_home or os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
        self.home = Path(tempfile.mkdtemp(prefix="bundle-home-"))
        for name in _SHARED_HOME_ENTRIES:
            (shared / name).mkdir(parents=True, exist_ok=True)
            (self.home / name).symlink_to(shared / name, target_is_directory=True)
        self.env["BENTOML_HOME"] = str(self.home)
        self.log_path = Path(tempfile.mkstemp(prefix="bundle-server-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BundleServer:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.ready_timeout_s)
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout_s or self.ready_timeout_s}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> None:
        try:
            stop_group(self.process)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> BundleServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def stop_group(process: subprocess.Popen[bytes] | None, grace_s: float = 20.0) -> None:
    """SIGTERM the process group of ``process`` (started with start_new_session), SIGKILL what outlives it."""
    if process is None or process.poll() is not None:
        return
    # BentoML 1.4 puts its workers in process groups of their own: remember every descendant
    # before the arbiter goes, so that none can outlive it.
    descendants = psutil.Process(process.pid).children(recursive=True)
    pgid = os.getpgid(process.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _, alive = psutil.wait_procs(descendants, timeout=10)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
