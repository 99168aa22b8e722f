"""The pure parts of benchmarks/online.py: wrk scripts and output, pidstat output, ratios, payloads (no server)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import tritonclient.grpc.service_pb2 as pb  # not ours: two copies of the proto collide (test_oip_proto.py)
import yaml

from benchmarks import loadgen, payloads
from benchmarks.grpc_load import pack, unpack
from benchmarks.loadgen import Point
from benchmarks.mlserver import fraud_store
from benchmarks.peers import model_settings, role_of
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

WRK_OUTPUT = """\
Running 15s test @ http://127.0.0.1:3000
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   575.12ms  120.33ms   1.10s    70.00%
  1590 requests in 15.00s, 1.12MB read
  Non-2xx or 3xx responses: 10
Requests/sec:    106.00
Transfer/sec:     76.41KB
WRK_RESULT {"requests": 1590, "duration_us": 15000000, "connect": 0, "read": 2, "write": 0, "status": 10, \
"timeout": 1, "p50_us": 579000, "p99_us": 1074500, "max_us": 1100000}
"""

PIDSTAT_OUTPUT = """\
Linux 6.1.0 (vm) \t12/01/26 \t_x86_64_\t(2 CPU)

21:11:53      UID       PID    %usr %system  %guest   %wait    %CPU   CPU  Command
21:11:54        0       101   70.00    5.00    0.00   10.00   75.00     1  python

Average:      UID       PID    %usr %system  %guest   %wait    %CPU   CPU  Command
Average:        0       101   70.00    5.00    0.00   10.00   75.00     -  python
Average:        0       102   20.50    1.50    0.00    3.00   22.00     -  wrk
Average:        0       103    1.00    0.00    0.00    0.00    1.00     -  bentoml
"""


def test_wrk_output_becomes_a_point_counting_only_good_answers() -> None:
    point = loadgen.parse_wrk(WRK_OUTPUT, target="bundle", transport="REST /predict", connections=64)
    assert point.req_per_s == pytest.approx((1590 - 10) / 15.0)
    assert (point.p50_ms, point.p99_ms) == (579.0, 1074.5)
    assert point.errors == 10 + 2 + 1
    assert point.requests == 1590 and point.duration_s == 15.0
    assert point.extra["wrk"]["max_us"] == 1_100_000


def test_wrk_output_without_the_summary_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="WRK_RESULT"):
        loadgen.parse_wrk("unable to connect to 127.0.0.1:1", target="t", transport="REST", connections=8)


def test_wrk_script_holds_every_body_verbatim_and_the_path() -> None:
    bodies = ['{"a": "]]"}', '{"b": "]]]=]"}']
    script = loadgen.wrk_script("/v2/models/m/infer", bodies)
    assert "[==[" + bodies[1] + "]==]" in script
    assert "[[/v2/models/m/infer]]" in script
    assert loadgen.WRK_MARKER.strip() in script
    assert "%%" not in script and "%d" in script
    with pytest.raises(ValueError):
        loadgen.wrk_script("/predict", [])


def test_lua_long_string_picks_a_level_the_text_does_not_close() -> None:
    assert loadgen.lua_long_string("plain") == "[[plain]]"
    assert loadgen.lua_long_string("x]]y") == "[=[x]]y]=]"
    assert loadgen.lua_long_string("x]]y]=]") == "[==[x]]y]=]]==]"
    assert loadgen.lua_long_string("x]") == "[=[x]]=]"


def test_percentiles_are_nearest_rank_in_ms() -> None:
    latencies = [i / 1000.0 for i in range(1, 101)]  # 1..100 ms
    assert loadgen.percentile_ms(latencies, 50) == pytest.approx(50.0)
    assert loadgen.percentile_ms(latencies, 99) == pytest.approx(99.0)
    assert loadgen.percentile_ms([0.2], 99) == pytest.approx(200.0)
    assert math.isnan(loadgen.percentile_ms([], 50))


def test_pidstat_averages_are_labelled_and_sorted_by_cpu() -> None:
    rows = loadgen.parse_pidstat(PIDSTAT_OUTPUT, {101: "entry service worker 1", 102: "wrk (load generator)"})
    assert [r["pid"] for r in rows] == [101, 102, 103]
    assert rows[0] == {
        "pid": 101,
        "role": "entry service worker 1",
        "usr_pct": 70.0,
        "system_pct": 5.0,
        "cpu_pct": 75.0,
        "wait_pct": 10.0,
    }
    assert rows[2]["role"] == "bentoml"  # unknown pids keep pidstat's command name


def _point(target: str, transport: str, connections: int, rps: float, rate: float | None = None) -> Point:
    return Point(target, transport, connections, rps, 10.0, 20.0, 0, int(rps), 1.0, offered_rate=rate)


def test_ratios_compare_like_transports_at_the_same_connections() -> None:
    points = [
        _point("B", "REST /predict", 64, 100.0),
        _point("B", "OIP REST", 64, 120.0),
        _point("B", "OIP gRPC", 64, 150.0),
        _point("B", "OIP gRPC", 8, 90.0),
        _point("B", "REST /predict", 0, 480.0, rate=500.0),
        _point("M", "REST", 64, 1000.0),
        _point("M", "gRPC", 64, 300.0),
        _point("T", "REST", 64, 1250.0),
    ]
    ratios = loadgen.with_ratios(points, bundle="B", mlserver="M", trivial="T")
    rows = {(r["transport"], r["target"], r["connections"], r["offered_rate"]): r for r in ratios}
    predict = rows[("REST /predict", "B", 64, None)]
    assert predict["ratio_vs_mlserver"] == 0.1 and predict["ratio_vs_trivial"] == 0.08
    assert "ratio_vs_mlserver_rest" not in predict
    assert rows[("OIP REST", "B", 64, None)]["ratio_vs_mlserver"] == 0.12
    grpc = rows[("OIP gRPC", "B", 64, None)]
    assert grpc["ratio_vs_mlserver"] == 0.5 and grpc["ratio_vs_mlserver_rest"] == 0.15
    # Nothing measured at 8 connections to compare with: None, not a made-up ratio.
    assert rows[("OIP gRPC", "B", 8, None)]["ratio_vs_mlserver"] is None
    assert rows[("OIP gRPC", "B", 8, None)]["ratio_vs_trivial"] is None
    assert "ratio_vs_mlserver" not in rows[("REST /predict", "B", 0, 500.0)]
    assert rows[("REST", "M", 64, None)]["ratio_vs_trivial"] == 0.8  # MLServer REST vs the ceiling
    assert "ratio_vs_mlserver" not in rows[("REST", "M", 64, None)]
    assert "ratio_vs_trivial" not in rows[("REST", "T", 64, None)]


def test_ratio_guards_against_missing_or_zero_denominators() -> None:
    assert loadgen.ratio(10.0, None) is None
    assert loadgen.ratio(10.0, 0.0) is None
    assert loadgen.ratio(math.nan, 5.0) is None
    assert loadgen.ratio(1.0, 3.0) == 0.333


def test_table_shows_dashes_for_what_was_not_measured() -> None:
    rows = loadgen.with_ratios(
        [_point("B", "OIP gRPC", 8, 90.0), _point("B", "REST /predict", 0, 480.0, rate=500.0)],
        bundle="B",
        mlserver="M",
        trivial="T",
    )
    lines = loadgen.table(rows).splitlines()
    assert lines[0].startswith("| target | transport | connections | req/s")
    assert lines[2] == "| B | OIP gRPC | 8 | 90.0 | 10.0 | 20.0 | 0 | - | - |"
    assert "500 req/s offered" in lines[3]


def test_grpc_request_files_round_trip() -> None:
    blobs = [b"", b"abc", bytes(range(256))]
    assert unpack(pack(blobs)) == blobs


def test_the_three_protocols_carry_the_same_row() -> None:
    row = generate_transactions(1, seed=3).drop(columns="is_fraud").to_dict("records")[0]
    assert json.loads(payloads.predict_body(row))["transactions"]["merchant_category"] == row["merchant_category"]
    oip = {t["name"]: t for t in json.loads(payloads.oip_json_body(TRANSACTION_SCHEMA, row))["inputs"]}
    assert set(oip) == set(TRANSACTION_SCHEMA.names)
    assert oip["merchant_category"] == {
        "name": "merchant_category",
        "datatype": "BYTES",
        "shape": [1],
        "data": [row["merchant_category"]],
    }
    request = pb.ModelInferRequest.FromString(payloads.model_infer_request(TRANSACTION_SCHEMA, row, "fraud_ensemble"))
    tensors = {t.name: t for t in request.inputs}
    assert request.model_name == "fraud_ensemble" and set(tensors) == set(oip)
    assert list(tensors["amount"].contents.fp64_contents) == oip["amount"]["data"]
    assert list(tensors["hour"].contents.int64_contents) == oip["hour"]["data"]
    assert list(tensors["card_present"].contents.bool_contents) == oip["card_present"]["data"]
    assert tensors["merchant_category"].contents.bytes_contents[0].decode() == row["merchant_category"]


def test_mlserver_model_settings_keep_the_batching_and_take_this_runs_store() -> None:
    settings = model_settings("v123", Path("/store"), "sklearn")
    assert (settings["max_batch_size"], settings["max_batch_time"]) == (64, 0.005)
    assert settings["parameters"]["version"] == "v123"
    assert settings["parameters"]["extra"] == {
        "bentoml_home": "/store",
        "member_runtime": "sklearn",
        "prefix": "fraud",
        "threads": 1,
    }
    assert settings["implementation"] == "fraud_runtime.FraudEnsembleRuntime"


def test_bentoml_workers_are_named_by_service_and_worker_id() -> None:
    worker = ["python", "-m", "_bentoml_impl.worker.service", "service:X", "--service-name", "fraud_hgb_runner"]
    assert role_of([*worker, "--worker-id", "1"], "python") == "fraud_hgb_runner worker 1"
    assert role_of(["python", "-m", "x", "--worker-id", "2"], "python") == "entry service worker 2"
    assert role_of(["wrk", "-c", "64"], "wrk") == "wrk"
    assert role_of(["bentoml", "serve"], "bentoml", is_root=True) == "bentoml (supervisor)"


def _member(folder: Path, *, onnx: Mapping[str, object] | None, joblib_sha: str | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"pickled")
    (folder / "model.onnx").write_bytes(b"graph")
    meta: dict[str, object] = {"sha256": joblib_sha or fraud_store.sha256_file(folder / "model.joblib")}
    if onnx is not None:
        meta["onnx"] = dict(onnx)
    (folder / "model.yaml").write_text(yaml.safe_dump({"name": "fraud_hgb", "metadata": meta}))
    return folder


def test_the_peer_picks_onnx_only_when_recorded_parity_checked_and_intact(tmp_path: Path) -> None:
    graph_sha = hashlib.sha256(b"graph").hexdigest()
    good = {"file": "model.onnx", "sha256": graph_sha, "parity": {"ok": True}}
    assert fraud_store.choose(_member(tmp_path / "ok", onnx=good)).runtime == "onnx"
    assert fraud_store.choose(_member(tmp_path / "asked", onnx=good), "sklearn") == fraud_store.Choice(
        "sklearn", tmp_path / "asked" / "model.joblib"
    )
    fallbacks: dict[str, Mapping[str, object] | None] = {
        "none": None,
        "reason": {"reason": "not convertible"},
        "parity": {"file": "model.onnx", "sha256": graph_sha, "parity": {"ok": False}},
        "tampered": {"file": "model.onnx", "sha256": "0" * 64, "parity": {"ok": True}},
    }
    reasons = {}
    for name, info in fallbacks.items():
        choice = fraud_store.choose(_member(tmp_path / name, onnx=info))
        assert choice.runtime == "sklearn" and choice.path.name == "model.joblib"
        reasons[name] = choice.reason or ""
    assert "no ONNX export recorded" in reasons["none"] and "not convertible" in reasons["reason"]
    assert "parity" in reasons["parity"] and "sha256" in reasons["tampered"]


def test_the_peer_never_loads_a_joblib_that_fails_its_sha256(tmp_path: Path) -> None:
    folder = _member(tmp_path / "bad", onnx=None, joblib_sha="0" * 64)
    with pytest.raises(fraud_store.StoreError, match="sha256"):
        fraud_store.choose(folder)


def test_a_busy_or_late_client_is_flagged() -> None:
    fine = _point("B", "OIP gRPC", 64, 100.0)
    fine.extra["client_cpu_pct"] = 40.0
    assert loadgen.client_warnings(fine) == []
    busy = _point("B", "OIP gRPC", 64, 100.0)
    busy.extra["client_cpu_pct"] = 97.0
    assert "bottleneck" in loadgen.client_warnings(busy)[0]
    late = _point("B", "REST /predict", 0, 300.0, rate=500.0)
    late.extra["sent_rate"] = 410.0
    assert "sent 410 req/s of the 500 offered" in loadgen.client_warnings(late)[0]
