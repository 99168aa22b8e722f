"""Runs in Airflow's own venv (not the project's): loads a DAG folder with Airflow's DagBag and, when it loads
cleanly, runs one DAG in-process with ``dag.test()`` once per requested run. Prints, as its last line, one JSON
object: import errors, DAG ids, the DAG's schedule and task retries, and per run its state, task states and
XCom return values.

    python airflow_dag_runner.py DAG_FOLDER DAG_ID RUNS_JSON   # RUNS_JSON: [{"logical_date": ..., "conf": {...}}]
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any


def main(folder: str, dag_id: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=folder)
    result: dict[str, Any] = {
        "import_errors": {path: str(error) for path, error in bag.import_errors.items()},
        "dag_ids": sorted(bag.dag_ids),
    }
    if result["import_errors"] or dag_id not in bag.dag_ids:
        return result
    dag = bag.get_dag(dag_id)
    result["schedule"] = dag.timetable.summary
    result["params"] = sorted(dag.params)
    result["retries"] = {t.task_id: [t.retries, t.retry_delay.total_seconds()] for t in dag.tasks}
    result["runs"] = []
    for spec in runs:
        run = dag.test(logical_date=datetime.fromisoformat(spec["logical_date"]), run_conf=spec["conf"])
        result["runs"].append(
            {
                "state": str(run.state),
                "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()},
                "xcom": _return_values(run),
            }
        )
    return result


def _return_values(run: Any) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=run.dag_id, run_id=run.run_id, key="return_value").all()
        return {row.task_id: row.value for row in rows}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])), default=str))
