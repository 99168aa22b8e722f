"""The online path side by side: the bundle vs Seldon MLServer vs a trivial BentoML endpoint, in one run.

    make bench                                        # sets up MLServer's venv, then runs this
    .venv/bin/python -m benchmarks.online --duration-s 15 --warmup-s 3 --connections 8,64
    .venv/bin/python -m benchmarks.online --duration-s 3 --warmup-s 1 --rate-duration-s 5   # smoke run

Single-row requests, one server at a time (the others are not running), on free 127.0.0.1 ports:
1. the bundle (fraudserve.launcher.BundleServer, default settings, a temporary BENTOML_HOME
   sharing the model store): REST ``POST /predict``, OIP REST ``POST /v2/models/fraud_ensemble/infer``
   (one tensor per feature, JSON), OIP gRPC ``ModelInfer``; and ``/predict`` at a fixed offered rate;
2. Seldon MLServer 1.7.1 in its own venv (scripts/mlserver.sh) serving the same version of the same
   ensemble through benchmarks/mlserver/fraud_runtime.py with adaptive batching
   (benchmarks/mlserver/model-settings.json): REST and gRPC infer, byte-identical bodies;
3. benchmarks/trivial_service.py (returns a constant, as many workers as the bundle's API): the
   ceiling of BentoML itself.

Load generators: wrk for every REST point (compiled C, one event-loop thread: ~0.1 ms of CPU per
request on this VM vs 0.3-0.45 ms for hey, so on a 2-core machine it takes the least from the
server), with a Lua script cycling through the seeded bodies; benchmarks/grpc_load.py for gRPC
(a grpc.aio loop over N channels sending pre-serialised requests, in its own process; Debian has no
ghz); benchmarks/openloop.py for the fixed rate (open loop: hey -q paces each worker but stays a
closed loop, Debian has no wrk2). Each closed-loop point: a warm-up, then the measured run. During
the 64-connection /predict point of the bundle (and REST point of MLServer) pidstat samples every
process of the server and wrk.

Writes benchmarks/results/online.json and prints a markdown table with, per bundle row, its
throughput ratio to MLServer on the same kind of transport (REST to REST, gRPC to gRPC, and gRPC
also to MLServer REST) and to the trivial endpoint, at the same connections. Numbers are only
meaningful on an otherwise idle machine: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import httpx

from benchmarks import loadgen, payloads
from benchmarks.grpc_load import METHOD, pack
from benchmarks.loadgen import Point
from benchmarks.mlserver import fraud_store
from benchmarks.peers import MLServerPeer, process_roles, project_env, trivial_server
from fraudserve.launcher import PROJECT_ROOT, BundleServer
from fraudserve.schema import FeatureSchema
from fraudserve.settings import Settings

RESULTS = Path(__file__).parent / "results" / "online.json"
MODEL = "fraud_ensemble"
BUNDLE, MLSERVER, TRIVIAL = "bundle", "MLServer 1.7.1", "BentoML trivial"
TARGETS = ("bundle", "mlserver", "trivial")


def _store_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def _run(cmd: Sequence[str], timeout_s: float, **kwargs: Any) -> str:
    """Run a load client to completion within ``timeout_s``; its stdout, or an error with its output."""
    result = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout_s, check=False, cwd=PROJECT_ROOT, **kwargs
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} exited with {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.stdout


class Bench:
    """The payload files of one run and the load clients that use them."""

    def __init__(self, args: argparse.Namespace, schema: FeatureSchema, work: Path) -> None:
        from models.transactions import generate_transactions

        self.args = args
        rows = generate_transactions(args.rows, seed=args.seed).drop(columns="is_fraud").to_dict("records")
        predict = [payloads.predict_body(r) for r in rows]
        oip = [payloads.oip_json_body(schema, r) for r in rows]
        self.scripts = {
            "predict": work / "predict.lua",
            "oip": work / "oip.lua",
        }
        self.scripts["predict"].write_text(loadgen.wrk_script("/predict", predict))
        self.scripts["oip"].write_text(loadgen.wrk_script(f"/v2/models/{MODEL}/infer", oip))
        self.first = {"predict": predict[0], "oip": oip[0]}
        self.predict_bodies = work / "predict.json"
        self.predict_bodies.write_text(json.dumps(predict))
        grpc_requests = [payloads.model_infer_request(schema, r, MODEL) for r in rows]
        self.first_grpc = grpc_requests[0]
        self.grpc_requests = work / "grpc.bin"
        self.grpc_requests.write_bytes(pack(grpc_requests))

    def check_rest(self, base_url: str, path: str, script: str) -> None:
        """One request before any load: a target that rejects the body fails the run here, not as errors."""
        answer = httpx.post(
            base_url + path,
            content=self.first[script],
            headers={"Content-Type": "application/json"},
            timeout=self.args.timeout_s,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"POST {base_url}{path} answered {answer.status_code}: {answer.text[:500]}")

    def check_grpc(self, address: str) -> None:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            call(self.first_grpc, timeout=self.args.timeout_s)

    def _wrk(self, base_url: str, script: str, connections: int, duration_s: float) -> subprocess.Popen[str]:
        threads = max(1, min(self.args.wrk_threads, connections))
        cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration_s:g}s"]
        cmd += ["--timeout", f"{self.args.timeout_s:g}s", "-s", str(self.scripts[script]), base_url]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)

    def rest(
        self,
        target: str,
        transport: str,
        base_url: str,
        script: str,
        connections: int,
        cpu_of: int | None = None,
        root_role: str | None = None,
    ) -> Point:
        """A closed-loop wrk point; with ``cpu_of`` (a server's root pid) pidstat samples its processes and wrk."""
        if self.args.warmup_s > 0:
            _communicate(self._wrk(base_url, script, connections, self.args.warmup_s), self.args.warmup_s)
        wrk = self._wrk(base_url, script, connections, self.args.duration_s)
        pidstat = None
        roles: dict[int, str] = {}
        if cpu_of is not None and shutil.which("pidstat"):
            roles = process_roles(cpu_of, root_role=root_role)
            roles[wrk.pid] = "wrk (load generator)"
            samples = max(1, int(self.args.duration_s) - 1)
            pidstat = subprocess.Popen(
                ["pidstat", "-u", "-p", ",".join(map(str, roles)), "1", str(samples)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "LC_ALL": "C"},
            )
        out = _communicate(wrk, self.args.duration_s)
        point = loadgen.parse_wrk(out, target=target, transport=transport, connections=connections)
        if pidstat is not None:
            point.extra["cpu"] = loadgen.parse_pidstat(_communicate(pidstat, self.args.duration_s), roles)
        return point

    def grpc(self, target: str, address: str, connections: int) -> Point:
        cmd = [sys.executable, "-m", "benchmarks.grpc_load", "--target", address, "--requests", str(self.grpc_requests)]
        cmd += ["--connections", str(connections), "--duration-s", str(self.args.duration_s)]
        cmd += ["--warmup-s", str(self.args.warmup_s), "--timeout-s", str(self.args.timeout_s)]
        budget = self.args.warmup_s + self.args.duration_s + 2 * self.args.timeout_s + 30
        raw = json.loads(_run(cmd, budget, env=project_env()).strip().splitlines()[-1])
        return Point(
            target=target,
            transport="OIP gRPC" if target == BUNDLE else "gRPC",
            connections=connections,
            req_per_s=raw["req_per_s"],
            p50_ms=raw["p50_ms"],
            p99_ms=raw["p99_ms"],
            errors=raw["errors"],
            requests=raw["ok"] + raw["errors"],
            duration_s=raw["duration_s"],
            extra={"codes": raw["codes"], "client_cpu_pct": raw["client_cpu_pct"]},
        )

    def open_loop(self, target: str, url: str) -> Point:
        cmd = [sys.executable, "-m", "benchmarks.openloop", "--url", url, "--bodies", str(self.predict_bodies)]
        cmd += ["--rate", str(self.args.rate), "--duration-s", str(self.args.rate_duration_s)]
        cmd += ["--warmup-s", str(self.args.warmup_s), "--timeout-s", str(self.args.timeout_s)]
        budget = self.args.warmup_s + self.args.rate_duration_s + 2 * self.args.timeout_s + 30
        raw = json.loads(_run(cmd, budget, env=project_env()).strip().splitlines()[-1])
        return Point(
            target=target,
            transport="REST /predict",
            connections=0,
            req_per_s=raw["req_per_s"],
            p50_ms=raw["p50_ms"],
            p99_ms=raw["p99_ms"],
            errors=raw["errors"],
            requests=raw["sent"],
            duration_s=raw["duration_s"],
            offered_rate=raw["offered_rate"],
            extra={k: raw[k] for k in ("sent_rate", "max_send_lag_ms", "statuses", "client_cpu_pct")},
        )


def _communicate(process: subprocess.Popen[str], duration_s: float) -> str:
    try:
        out, err = process.communicate(timeout=duration_s + 60)
    except BaseException:  # a timeout, Ctrl-C or SIGTERM: the client must not outlive the run
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{out[-2000:]}\n{err or ''}")
    return out


def _show(point: Point) -> None:
    load = f"{point.offered_rate:.0f} req/s offered" if point.offered_rate else f"c={point.connections}"
    print(
        f"  {point.target:16s} {point.transport:14s} {load:18s} {point.req_per_s:9.1f} req/s"
        f"  p50 {point.p50_ms:8.1f} ms  p99 {point.p99_ms:8.1f} ms  errors {point.errors}",
        flush=True,
    )
    for warning in loadgen.client_warnings(point):
        print(f"    warning: {warning}", flush=True)


def measure_bundle(bench: Bench, args: argparse.Namespace, home: Path, report: dict[str, Any]) -> list[Point]:
    points: list[Point] = []
    with BundleServer(bentoml_home=home) as server:
        served = httpx.get(f"{server.url}/v2/models/{MODEL}", timeout=10).json()
        report["bundle"] = {"versions": served.get("versions"), "platform": served.get("platform")}
        bench.check_rest(server.url, "/predict", "predict")
        bench.check_rest(server.url, f"/v2/models/{MODEL}/infer", "oip")
        bench.check_grpc(f"127.0.0.1:{server.grpc_port}")
        for c in args.connections:
            cpu_of = server.process.pid if (c == max(args.connections) and server.process) else None
            points.append(bench.rest(BUNDLE, "REST /predict", server.url, "predict", c, cpu_of=cpu_of))
            _show(points[-1])
        for c in args.connections:
            points.append(bench.rest(BUNDLE, "OIP REST", server.url, "oip", c))
            _show(points[-1])
        for c in args.connections:
            points.append(bench.grpc(BUNDLE, f"127.0.0.1:{server.grpc_port}", c))
            _show(points[-1])
        if args.rate > 0:
            points.append(bench.open_loop(BUNDLE, f"{server.url}/predict"))
            _show(points[-1])
    return points


def measure_mlserver(
    bench: Bench, args: argparse.Namespace, home: Path, version: str, report: dict[str, Any]
) -> list[Point]:
    points: list[Point] = []
    with MLServerPeer(args.mlserver_venv, home, version, report["member_runtime"]) as peer:
        report["mlserver"] = peer.member_runtimes()
        print(f"  MLServer runtime: {report['mlserver']}", flush=True)
        bench.check_rest(peer.url, f"/v2/models/{MODEL}/infer", "oip")
        bench.check_grpc(f"127.0.0.1:{peer.grpc_port}")
        for c in args.connections:
            cpu_of = peer.process.pid if (c == max(args.connections) and peer.process) else None
            front = "mlserver front (REST, gRPC, batching)"
            points.append(bench.rest(MLSERVER, "REST", peer.url, "oip", c, cpu_of=cpu_of, root_role=front))
            _show(points[-1])
        for c in args.connections:
            points.append(bench.grpc(MLSERVER, f"127.0.0.1:{peer.grpc_port}", c))
            _show(points[-1])
    return points


def measure_trivial(bench: Bench, args: argparse.Namespace, home: Path, workers: int) -> list[Point]:
    points: list[Point] = []
    with trivial_server(home, workers) as server:
        bench.check_rest(server.url, "/predict", "predict")
        for c in args.connections:
            points.append(bench.rest(TRIVIAL, "REST", server.url, "predict", c))
            _show(points[-1])
    return points


def versions(args: argparse.Namespace) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("bentoml", "scikit-learn", "onnxruntime", "numpy", "grpcio", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    mlserver_python = args.mlserver_venv / "bin" / "python"
    if mlserver_python.exists():
        probe = "import importlib.metadata as m; print(m.version('mlserver'), m.version('scikit-learn'))"
        with contextlib.suppress(subprocess.SubprocessError, ValueError):
            mls, skl = subprocess.run(
                [str(mlserver_python), "-c", probe], capture_output=True, text=True, timeout=60, check=True
            ).stdout.split()
            out["mlserver"], out["mlserver_venv_scikit-learn"] = mls, skl
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        banner = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10).stdout
        out["wrk"] = banner.split("[")[0].strip().removeprefix("wrk ").strip()
    return out


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every server's context manager tears it down."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="8,64", help="closed-loop points, comma-separated (8,64)")
    parser.add_argument("--duration-s", type=float, default=15.0, help="measured time of each closed-loop point")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured load before each point")
    parser.add_argument(
        "--rate", type=float, default=500.0, help="offered req/s of the open-loop /predict point (0: skip)"
    )
    parser.add_argument("--rate-duration-s", type=float, default=30.0, help="measured time of the open-loop point")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="client timeout of one request")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1 leaves the most CPU to servers)")
    parser.add_argument("--rows", type=int, default=256, help="distinct seeded rows the clients cycle through")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument(
        "--mlserver-venv", type=Path, default=PROJECT_ROOT / "build" / "venv-mlserver", help="scripts/mlserver.sh"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.connections = sorted({int(c) for c in args.connections.split(",")})
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    if "mlserver" in args.targets and not (args.mlserver_venv / "bin" / "mlserver").exists():
        parser.error(f"no MLServer in {args.mlserver_venv}: run `bash scripts/mlserver.sh` (make bench does)")
    if not shutil.which("wrk"):
        parser.error("wrk is not installed: `bash scripts/system-deps.sh bench` (make bench does)")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        print("\ninterrupted: every server and load client was stopped; no results written", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    from models import store

    settings = Settings()
    home = _store_home()
    version = store.resolve_version(settings.model_prefix, settings.model_version)
    spec = store.load_ensemble(settings.model_prefix, version)
    # A bundle without the member-runtime setting predates ONNX serving: it scores with scikit-learn.
    member_runtime = str(getattr(settings, "member_runtime", "sklearn"))
    report: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_before": [round(x, 2) for x in os.getloadavg()],
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(args),
        "model_version": version,
        "member_runtime": member_runtime,
        # What the bundle's rules pick for each member from the store (the peer applies the same rules).
        "member_runtimes_expected": fraud_store.runtimes(home, settings.model_prefix, version, member_runtime),
        "api_workers": settings.api_workers,
        "settings": {
            "connections": args.connections,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "offered_rate": args.rate,
            "rate_duration_s": args.rate_duration_s,
            "wrk_threads": args.wrk_threads,
            "rows": args.rows,
            "mlserver_batching": {
                k: v
                for k, v in json.loads((Path(__file__).parent / "mlserver" / "model-settings.json").read_text()).items()
                if k.startswith("max_batch")
            },
        },
    }
    expected = {m: r["runtime"] for m, r in report["member_runtimes_expected"].items()}
    print(f"model {version}, member runtimes {expected}, {settings.api_workers} API worker(s)", flush=True)
    points: list[Point] = []
    with _terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        bench = Bench(args, spec.schema, Path(tmp))
        if "bundle" in args.targets:
            print("bundle:", flush=True)
            points += measure_bundle(bench, args, home, report)
        if "mlserver" in args.targets:
            print("MLServer:", flush=True)
            points += measure_mlserver(bench, args, home, version, report)
        if "trivial" in args.targets:
            print("trivial BentoML endpoint:", flush=True)
            points += measure_trivial(bench, args, home, settings.api_workers)

    rows = loadgen.with_ratios(points, bundle=BUNDLE, mlserver=MLSERVER, trivial=TRIVIAL)
    report["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["results"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    machine = report["machine"]
    print(
        f"\nsingle-row requests, {args.duration_s:g} s per point after {args.warmup_s:g} s warm-up;"
        f" {machine['nproc']} cores, load average {machine['load_avg_before'][0]} before,"
        f" {machine['load_avg_after'][0]} after"
    )
    print(loadgen.table(rows))
    for p in points:
        if "cpu" in p.extra:
            print(
                f"\nCPU per process, {p.target} {p.transport} at {p.connections} connections (pidstat, % of one core):"
            )
            for r in p.extra["cpu"]:
                print(
                    f"  {r['role']:38s} {r['cpu_pct']:6.1f} %  (usr {r['usr_pct']:.1f}, sys {r['system_pct']:.1f},"
                    f" waiting for a CPU {r['wait_pct']:.1f})"
                )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
