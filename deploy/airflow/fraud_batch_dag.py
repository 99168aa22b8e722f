"""The nightly fraud-batch run under Airflow (3.x): every day at 02:00 UTC, one partition per run date.

    score            fraud-batch <input_root>/ds={{ ds }} <output_root>/ds={{ ds }} --resume
                     retried with a delay (a retry continues the interrupted run); its return value, the
                     run summary (_summary.json, also kept beside the output), is the task's XCom
    check_rejects    fails the run when rows_rejected / rows_in passes the `max_rejected_share` param

Airflow runs in its own venv (scripts/airflow-venv.sh); fraud-batch is the project venv's, named by the
`fraud_batch` param (default: $FRAUD_BATCH_BIN, else `fraud-batch` on PATH). The models come from the BentoML
store of $BENTOML_HOME (or the `bentoml_home` param).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException
from airflow.timetables.trigger import CronTriggerTimetable

DAG_ID = "fraud_batch_nightly"
# fraud-batch's exit status for bad input or usage (fraudserve/batch/cli.py): retrying cannot help.
EXIT_BAD_INPUT = 2
log = logging.getLogger(__name__)

with DAG(
    dag_id=DAG_ID,
    description="Score the day's transactions with fraud-batch; fail on too many rejected rows.",
    # A trigger timetable: the 02:00 run's logical date, and so {{ ds }}, is that day (not the day before).
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        # A multiplier in Airflow 3 (not a bool): 10 min, then 20 min.
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(hours=1),
        "execution_timeout": timedelta(hours=4),
    },
    params={
        "fraud_batch": Param(os.environ.get("FRAUD_BATCH_BIN", "fraud-batch"), type="string"),
        "input_root": Param(os.environ.get("FRAUD_BATCH_INPUT_ROOT", "/data/input"), type="string"),
        "output_root": Param(os.environ.get("FRAUD_BATCH_OUTPUT_ROOT", "/data/scored"), type="string"),
        "bentoml_home": Param(os.environ.get("BENTOML_HOME", ""), type="string"),
        "workers": Param(2, type="integer", minimum=1),
        "extra_args": Param([], type="array", description="more fraud-batch arguments, e.g. ['--engine', 'spark']"),
        "max_rejected_share": Param(0.01, type="number", minimum=0, maximum=1),
    },
    tags=["fraud"],
) as dag:

    @task
    def score(input_path: str, output_path: str, params: dict[str, Any]) -> dict[str, Any]:
        command = [
            params["fraud_batch"],
            input_path,
            output_path,
            "--resume",
            "--quiet",
            "--workers",
            str(params["workers"]),
            *params["extra_args"],
        ]
        env = dict(os.environ)
        if params["bentoml_home"]:
            env["BENTOML_HOME"] = params["bentoml_home"]
        log.info("running %s", command)
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        log.info("fraud-batch stdout:\n%s", done.stdout)
        if done.stderr:
            log.warning("fraud-batch stderr:\n%s", done.stderr)
        if done.returncode == EXIT_BAD_INPUT:
            raise AirflowFailException(f"fraud-batch: bad input or usage (exit 2): {done.stderr.strip()}")
        if done.returncode != 0:
            raise RuntimeError(f"fraud-batch exited with {done.returncode}: {done.stderr.strip()}")
        summary: dict[str, Any] = json.loads((Path(output_path) / "_summary.json").read_text())
        return summary

    @task(retries=0)
    def check_rejects(summary: dict[str, Any], params: dict[str, Any]) -> float:
        rows_in, rejected = summary["rows_in"], summary["rows_rejected"]
        share = rejected / rows_in if rows_in else 0.0
        limit = params["max_rejected_share"]
        log.info("rejected %s of %s rows (%.4f%%, limit %.4f%%)", rejected, rows_in, 100 * share, 100 * limit)
        if share > limit:
            raise AirflowFailException(
                f"{rejected} of {rows_in} rows rejected ({share:.2%} > max_rejected_share {limit:.2%}); "
                f"see {summary['rejected_file']}"
            )
        return share

    check_rejects(
        score(
            input_path="{{ params.input_root }}/ds={{ ds }}",
            output_path="{{ params.output_root }}/ds={{ ds }}",
        )
    )
