"""The offline scorer: runs with numpy + onnxruntime only, and answers like the inference core."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fraudserve.edge.bundle import export_bundle
from fraudserve.edge.cli import main as edge_main
from fraudserve.local import load_local, local_core
from models.transactions import generate_transactions

FORBIDDEN = ("bentoml", "sklearn", "pydantic", "pydantic_core", "fraudserve", "models", "skl2onnx", "onnx", "scipy")

# Refuses every import of a forbidden package, runs the bundle's scorer as a script, then reports
# which top-level packages were loaded: proof that the scorer needs nothing but numpy + onnxruntime.
_HARNESS = textwrap.dedent(
    """
    import atexit, json, runpy, sys

    FORBIDDEN = set(sys.argv[1].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    def report():
        print("MODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)

    atexit.register(report)
    script = sys.argv[2]
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(script, run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def bundle(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec, local = load_local(version=trained)
    out = tmp_path_factory.mktemp("scorer") / "bundle"
    export_bundle(spec, local.estimators, out, parity_n=1_000)
    return out


def _run_scorer(bundle: Path, stdin: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = bundle / "edge_scorer.py"
    return subprocess.run(
        [sys.executable, "-I", "-c", _HARNESS, ",".join(FORBIDDEN), str(script), str(bundle)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_scorer_runs_without_bentoml_sklearn_pydantic_and_matches_the_core(
    bundle: Path, trained: str, tmp_path: Path
) -> None:
    frame = generate_transactions(300, seed=31).drop(columns=["is_fraud"])
    lines = frame.to_json(orient="records", lines=True).splitlines()
    tagged = json.loads(lines[0])
    tagged["id"] = "txn-0"
    lines[0] = json.dumps(tagged)
    result = _run_scorer(bundle, "\n".join(lines) + "\n", tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stderr.split("MODULES ", 1)[1].splitlines()[0]))
    assert loaded.isdisjoint(FORBIDDEN), loaded & set(FORBIDDEN)
    assert {"numpy", "onnxruntime"} <= loaded

    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(frame)
    assert out[0]["id"] == "txn-0" and "id" not in out[1]
    core = local_core(version=trained)
    expected = asyncio.run(core.predict(frame.to_dict("records"), transport="test"))
    got_p = np.array([row["fraud_probability"] for row in out])
    np.testing.assert_allclose(got_p, expected.probabilities, rtol=0, atol=1e-9)
    assert [row["is_fraud"] for row in out] == expected.decisions.tolist()
    for member, scores in expected.member_scores.items():
        np.testing.assert_allclose([row["scores"][member] for row in out], scores, rtol=0, atol=1e-9)
    assert {row["model_version"] for row in out} == {trained}


def test_scorer_reports_bad_lines_in_place_and_keeps_going(bundle: Path, tmp_path: Path) -> None:
    good = generate_transactions(2, seed=3).drop(columns=["is_fraud"]).to_dict("records")
    good = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in good]
    lines = [
        json.dumps(good[0]),
        json.dumps({**good[0], "merchant_category": "casino"}),
        "{not json",
        json.dumps({k: v for k, v in good[0].items() if k != "amount"}),
        json.dumps({**good[0], "amount": "12"}),
        json.dumps({**good[0], "colour": "red"}),
        "",
        json.dumps(good[1]),
    ]
    result = _run_scorer(bundle, "\n".join(lines) + "\n", tmp_path)
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row.get("error") for row in out] == [
        None,
        "invalid_input",
        "invalid_json",
        "invalid_input",
        "invalid_input",
        "invalid_input",
        None,
    ]
    assert out[1]["line"] == 2 and out[1]["field"] == "merchant_category" and "casino" in out[1]["message"]
    assert out[3]["field"] == "amount" and out[3]["message"] == "field is required"
    assert out[4]["field"] == "amount" and "must be a number" in out[4]["message"]
    assert out[5]["field"] == "colour" and out[5]["message"] == "unknown field"
    assert "5 rejected" in result.stderr


def test_scorer_refuses_a_tampered_member(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with (copy / "members" / "hgb.onnx").open("ab") as fh:
        fh.write(b"\0")
    result = _run_scorer(copy, "", tmp_path)
    assert result.returncode == 2
    assert "members/hgb.onnx does not match its sha256" in result.stderr


def test_cli_score_delegates_to_the_bundle_scorer(bundle: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    generate_transactions(20, seed=8).drop(columns=["is_fraud"]).to_json(source, orient="records", lines=True)
    target = tmp_path / "out.jsonl"
    assert edge_main(["score", str(bundle), "--input", str(source), "--output", str(target)]) == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 20 and all(0.0 <= r["fraud_probability"] <= 1.0 for r in rows)
