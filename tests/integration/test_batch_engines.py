"""fraud-batch against the real things: a killed run resumed, the served bundle, Spark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from fraudserve.batch.cli import main
from fraudserve.launcher import BundleServer
from models.transactions import generate_transactions

pytestmark = pytest.mark.integration


def transactions(n: int, seed: int) -> pd.DataFrame:
    frame = generate_transactions(n, seed=seed).drop(columns="is_fraud")
    frame.insert(0, "txn_id", np.arange(n, dtype=np.int64) * 10)
    return frame


def bad_rows_csv(path: Path, n: int, seed: int) -> Path:
    frame = transactions(n, seed).astype(object)
    frame.loc[5, "amount"] = "-3"
    frame.loc[n - 1, "merchant_category"] = "casino"
    frame.to_csv(path, index=False)
    return path


def run(*args: object) -> int:
    return main([str(a) for a in args])


def test_resume_after_sigkill_gives_the_same_output(trained: str, tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    transactions(30_000, seed=41).to_parquet(source)
    out = tmp_path / "out"
    args = [source, out, "--model-version", trained, "--chunk-rows", 300, "--workers", 1, "-q"]
    cmd = [sys.executable, "-m", "fraudserve.batch.cli", *map(str, args)]
    log = tmp_path / "killed-run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=sink, stderr=subprocess.STDOUT)
    manifest = out / "_manifest.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and len(json.loads(manifest.read_text())["chunks"]) >= 10:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = len(json.loads(manifest.read_text())["chunks"])
    assert 10 <= done_before < 100
    assert not (out / "_summary.json").exists()

    assert run(*args, "--resume") == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["chunks_resumed"] >= done_before and summary["rows_in"] == 30_000

    reference = tmp_path / "reference.parquet"
    assert run(source, reference, "--model-version", trained, "--chunk-rows", 7_000, "-q") == 0
    resumed = pd.read_parquet(out).sort_values("row_number", ignore_index=True)
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(reference), check_exact=False, rtol=1e-12)


def test_server_engine_equals_local_engine_and_predict(trained: str, server: BundleServer, tmp_path: Path) -> None:
    source = bad_rows_csv(tmp_path / "in.csv", 700, seed=42)
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    common = ["--id-column", "txn_id", "--chunk-rows", 300, "-q"]
    assert run(source, local, "--model-version", trained, *common) == 0
    # 130-row requests: above the service's bulk threshold (64), so the unbatched runner path.
    assert run(source, remote, "--engine", "server", "--url", server.url, "--request-rows", 130, *common) == 0

    a, b = pd.read_parquet(local), pd.read_parquet(remote)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)
    assert len(a) == 698
    rejected_local = pd.read_csv(tmp_path / "local.parquet.rejected.csv")
    rejected_remote = pd.read_csv(tmp_path / "remote.parquet.rejected.csv")
    pd.testing.assert_frame_equal(rejected_local, rejected_remote)
    assert rejected_local["row_number"].tolist() == [5, 699]

    rows = transactions(700, seed=42).iloc[100:140]
    body = httpx.post(
        server.url + "/predict", json={"transactions": rows.drop(columns="txn_id").to_dict("records")}, timeout=60
    )
    assert body.status_code == 200, body.text
    online = body.json()["predictions"]
    batch = a.set_index("txn_id").loc[rows["txn_id"].astype(str)]
    np.testing.assert_allclose(batch["fraud_probability"], [p["fraud_probability"] for p in online], rtol=1e-12)
    np.testing.assert_allclose(batch["score_iforest"], [p["scores"]["iforest"] for p in online], rtol=1e-12)
    assert batch["is_fraud"].tolist() == [p["is_fraud"] for p in online]


def test_server_engine_reports_an_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = bad_rows_csv(tmp_path / "in.csv", 10, seed=43)
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    assert run(source, tmp_path / "out", "--engine", "server", "--url", url, "--retries", 1, "-q") == 3
    err = capsys.readouterr().err
    assert "127.0.0.1:9/model failed" in err and "Connection refused" in err


def test_spark_engine_overwrites_only_an_output_it_wrote(
    trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyspark", reason="pyspark is optional: `make spark` installs requirements-spark.txt + Java")
    source = tmp_path / "in.parquet"
    transactions(50, seed=45).to_parquet(source)
    # Another Spark job's output: _SUCCESS proves only that some Spark job wrote it.
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "_SUCCESS").write_text("")
    (foreign / "part-00000-theirs.snappy.parquet").write_bytes(b"their data")
    args = ["--engine", "spark", "--model-version", trained, "--overwrite", "--master", "local[1]"]
    assert run(source, foreign, *args) == 2
    assert "not a fraud-batch output" in capsys.readouterr().err
    assert (foreign / "part-00000-theirs.snappy.parquet").read_bytes() == b"their data"


def test_spark_engine_equals_local_engine(trained: str, tmp_path: Path) -> None:
    pytest.importorskip("pyspark", reason="pyspark is optional: `make spark` installs requirements-spark.txt + Java")
    folder = tmp_path / "in"
    folder.mkdir()
    frame = transactions(4_000, seed=44)
    frame.iloc[:2_500].to_parquet(folder / "a.parquet", row_group_size=250)
    frame.iloc[2_500:].to_parquet(folder / "b.parquet", row_group_size=250)
    local, spark = tmp_path / "local", tmp_path / "spark"
    assert run(folder, local, "--model-version", trained, "--chunk-rows", 1_000, "-q") == 0
    # The Spark output replaces an older (local engine, smaller chunks) fraud-batch output of its own.
    assert run(folder, spark, "--model-version", trained, "--chunk-rows", 300, "-q") == 0
    # Small splits so that row numbering across many splits and both files is exercised.
    conf = ["--spark-conf", "spark.sql.files.maxPartitionBytes=20000", "--master", "local[2]"]
    assert run(folder, spark, "--engine", "spark", "--model-version", trained, "--overwrite", *conf) == 0
    manifest = json.loads((spark / "_manifest.json").read_text())
    assert (manifest["engine"], manifest["complete"]) == ("spark", True)
    assert not (spark / "part-00013.parquet").exists(), "a part of the replaced local run survived"

    a = pd.read_parquet(local).sort_values("row_number", ignore_index=True)
    b = pd.read_parquet(spark).sort_values("row_number", ignore_index=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)
    summary = json.loads((spark / "_summary.json").read_text())
    local_summary = json.loads((local / "_summary.json").read_text())
    for key in ("rows_in", "rows_out", "rows_rejected", "flagged", "model_versions"):
        assert summary[key] == local_summary[key], key
    assert summary["score_distribution"]["histogram"] == local_summary["score_distribution"]["histogram"]
    assert summary["score_distribution"]["quantiles"] == local_summary["score_distribution"]["quantiles"]
