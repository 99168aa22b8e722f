"""deploy/airflow: the nightly DAG loads in Airflow's own venv and runs fraud-batch from the project venv.

Slow: the first run creates Airflow's venv (scripts/airflow-venv.sh, ~1.5-2 min with a warm pip cache; cached
by a stamp afterwards), then one process loads the DagBag and runs ``dag.test()`` three times (~1.5 min).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from models.transactions import generate_transactions

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DAG_FOLDER = ROOT / "deploy" / "airflow"
DAG_ID = "fraud_batch_nightly"
ROWS, BAD_ROWS = 3_000, 30


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "airflow-venv.sh")], capture_output=True, text=True, check=True, timeout=1200
    )
    print(f"airflow venv ready in {time.monotonic() - started:.1f}s")
    return Path(out.stdout.strip().splitlines()[-1]) / "bin" / "python"


def fraud_batch_bin() -> str:
    found = Path(sys.executable).parent / "fraud-batch"
    return str(found) if found.exists() else shutil.which("fraud-batch") or "fraud-batch"


def write_partition(root: Path, ds: str) -> None:
    frame = generate_transactions(ROWS, seed=5)
    frame.loc[: BAD_ROWS - 1, "hour"] = 99  # out of range: rejected, never scored
    (root / f"ds={ds}").mkdir(parents=True)
    frame.to_parquet(root / f"ds={ds}" / "part-0.parquet")


def run_dag(python: Path, tmp_path: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    home = tmp_path / "airflow-home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    env.pop("PYTHONPATH", None)  # Airflow's venv must not see the project's packages
    airflow = python.parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, check=True, timeout=300)
    runner = ROOT / "tests" / "integration" / "airflow_dag_runner.py"
    done = subprocess.run(
        [str(python), str(runner), str(DAG_FOLDER), DAG_ID, json.dumps(runs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_nightly_dag_scores_the_run_date_partition(
    airflow_python: Path, trained: str, bentoml_home: Path, tmp_path: Path
) -> None:
    inputs, outputs = tmp_path / "input", tmp_path / "scored"
    write_partition(inputs, "2026-11-29")
    write_partition(inputs, "2026-11-30")
    conf = {
        "fraud_batch": fraud_batch_bin(),
        "input_root": str(inputs),
        "output_root": str(outputs),
        "bentoml_home": str(bentoml_home),
        "workers": 1,
    }
    share = BAD_ROWS / ROWS
    started = time.monotonic()
    result = run_dag(
        airflow_python,
        tmp_path,
        [
            {"logical_date": "2026-11-29T02:00:00+00:00", "conf": {**conf, "max_rejected_share": 2 * share}},
            {"logical_date": "2026-11-30T02:00:00+00:00", "conf": {**conf, "max_rejected_share": share / 2}},
            {"logical_date": "2026-12-01T02:00:00+00:00", "conf": conf},  # no input partition for that day
        ],
    )
    print(f"DagBag + 3 dag.test() runs in {time.monotonic() - started:.1f}s")

    assert result["import_errors"] == {}
    assert result["dag_ids"] == [DAG_ID]
    assert result["schedule"] == "0 2 * * *"
    assert {"fraud_batch", "input_root", "output_root", "max_rejected_share"} <= set(result["params"])
    retries, delay_s = result["retries"]["score"]
    assert retries >= 1 and delay_s > 0

    ok, too_many_rejects, no_input = result["runs"]
    assert ok["state"] == "success", ok
    summary = ok["xcom"]["score"]
    assert (summary["rows_in"], summary["rows_rejected"]) == (ROWS, BAD_ROWS)
    assert ok["xcom"]["check_rejects"] == pytest.approx(share)
    partition = outputs / "ds=2026-11-29"
    assert summary["output"] == str(partition)
    assert json.loads((partition / "_summary.json").read_text()) == summary
    assert sorted(p.name for p in partition.glob("part-*.parquet")) == ["part-00000.parquet"]

    assert too_many_rejects["state"] == "failed"
    assert too_many_rejects["tasks"] == {"score": "success", "check_rejects": "failed"}
    assert (outputs / "ds=2026-11-30" / "_summary.json").is_file()

    # fraud-batch exits 2 (bad input): the task fails at once instead of being retried.
    assert no_input["state"] == "failed"
    assert no_input["tasks"]["score"] == "failed"
