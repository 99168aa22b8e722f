"""fraud-batch, local engine: same scores as the inference core, bad rows kept, clear errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudserve.batch.cli import main
from fraudserve.batch.progress import Progress
from fraudserve.local import local_core
from fraudserve.settings import Settings
from models.transactions import generate_transactions


def transactions(n: int, seed: int = 31) -> pd.DataFrame:
    frame = generate_transactions(n, seed=seed).drop(columns="is_fraud")
    frame.insert(0, "txn_id", [f"t{seed}-{i}" for i in range(n)])
    return frame


def with_bad_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, str]]:
    bad = frame.astype(object)
    bad.loc[3, "amount"] = "abc"
    bad.loc[150, "merchant_category"] = "casino"
    bad.loc[151, "hour"] = 99
    bad.loc[299, "card_present"] = None
    return bad, {3: "amount", 150: "merchant_category", 151: "hour", 299: "card_present"}


def run(*args: object) -> int:
    return main([str(a) for a in args])


def test_csv_with_bad_rows_scores_like_the_core(trained: str, tmp_path: Path) -> None:
    frame, bad = with_bad_rows(transactions(300))
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "scored.parquet"

    assert run(source, out, "--id-column", "txn_id", "--model-version", trained, "--chunk-rows", 70, "-q") == 0

    scored = pd.read_parquet(out)
    assert list(scored.columns) == [
        "txn_id",
        "fraud_probability",
        "is_fraud",
        "score_hgb",
        "score_logreg",
        "score_iforest",
        "model_version",
    ]
    good = frame.drop(index=list(bad))
    assert scored["txn_id"].tolist() == good["txn_id"].tolist()
    core = local_core(Settings(model_version=trained))
    expected = asyncio.run(core.predict(transactions(300).drop(index=list(bad)).to_dict("records"), transport="test"))
    np.testing.assert_allclose(scored["fraud_probability"], expected.probabilities, rtol=1e-12)
    np.testing.assert_array_equal(scored["is_fraud"], expected.decisions)
    for member, values in expected.member_scores.items():
        np.testing.assert_allclose(scored[f"score_{member}"], values, rtol=1e-12)
    assert set(scored["model_version"]) == {trained}

    rejected = pd.read_csv(tmp_path / "scored.parquet.rejected.csv")
    assert rejected["row_number"].tolist() == sorted(bad)
    assert rejected["txn_id"].tolist() == [f"t31-{i}" for i in sorted(bad)]
    for row, field in bad.items():
        assert rejected.set_index("row_number").loc[row, "reason"].startswith(f"{field}: invalid")

    summary = json.loads((tmp_path / "scored.parquet.summary.json").read_text())
    assert (summary["rows_in"], summary["rows_out"], summary["rows_rejected"]) == (300, 296, 4)
    assert summary["rejected_by_field"] == {field: 1 for field in bad.values()}
    assert summary["flagged"] == int(expected.decisions.sum())
    assert summary["model_versions"]["ensemble"] == f"fraud_ensemble:{trained}"
    assert summary["chunks"] == 5
    assert sum(b["count"] for b in summary["score_distribution"]["histogram"]) == 296
    assert not (tmp_path / "scored.parquet.parts").exists()


def test_folder_output_has_one_part_per_chunk_and_chunking_does_not_change_scores(trained: str, tmp_path: Path) -> None:
    frame = transactions(1000, seed=32)
    folder = tmp_path / "in"
    folder.mkdir()
    frame.iloc[:600].to_parquet(folder / "a.parquet", row_group_size=100)
    frame.iloc[600:].to_parquet(folder / "b.parquet", row_group_size=100)

    assert run(folder, tmp_path / "parts", "--model-version", trained, "--chunk-rows", 250, "-q") == 0
    assert run(folder, tmp_path / "one.parquet", "--model-version", trained, "--workers", 1, "-q") == 0

    parts = sorted(p.name for p in (tmp_path / "parts").glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(5)]  # 600 -> 250+250+100, 400 -> 250+150
    partitioned = pd.read_parquet(tmp_path / "parts").sort_values("row_number", ignore_index=True)
    single = pd.read_parquet(tmp_path / "one.parquet")
    assert partitioned["row_number"].tolist() == list(range(1000))
    pd.testing.assert_frame_equal(partitioned, single, check_exact=False, rtol=1e-12)
    manifest = json.loads((tmp_path / "parts" / "_manifest.json").read_text())
    assert manifest["complete"] is True
    assert sorted(int(k) for k in manifest["chunks"]) == list(range(5))


def test_resume_refuses_a_changed_input(trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.parquet"
    transactions(400, seed=33).to_parquet(source)
    out = tmp_path / "out"
    assert run(source, out, "--model-version", trained, "--chunk-rows", 100, "-q") == 0
    assert run(source, out, "--model-version", trained, "--chunk-rows", 100, "-q") == 2
    assert "--resume" in capsys.readouterr().err

    assert run(source, out, "--model-version", trained, "--chunk-rows", 100, "--resume", "-q") == 0
    assert json.loads((out / "_summary.json").read_text())["chunks_resumed"] == 4

    transactions(400, seed=34).to_parquet(source)
    assert run(source, out, "--model-version", trained, "--chunk-rows", 100, "--resume", "-q") == 2
    assert "input changed" in capsys.readouterr().err
    assert run(source, out, "--model-version", trained, "--chunk-rows", 50, "--resume", "-q") == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", "amount,hour\n1.0,3\n", "missing columns ['merchant_category'"),
        ("garbage.parquet", "this is not parquet", "not a readable parquet file"),
        ("data.json", "{}", "unknown extension '.json'"),
        ("empty_folder", None, "no .parquet or .csv files"),
        ("nowhere.csv", False, "no such file or folder"),
    ],
)
def test_malformed_inputs_fail_clearly(
    trained: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | bool | None,
    message: str,
) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif content is not False:
        path.write_text(str(content))
    assert run(path, tmp_path / "out", "--model-version", trained, "-q") == 2
    err = capsys.readouterr().err
    assert err.startswith("fraud-batch: error: ") and message in err, err
    assert "Traceback" not in err


def test_unknown_model_version_is_a_clear_error(
    trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    transactions(5).to_csv(source, index=False)
    assert run(source, tmp_path / "out", "--model-version", "nope", "-q") == 3
    assert "fraud_ensemble:nope" in capsys.readouterr().err


def test_help_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("--engine {local,spark,server}", "--resume", "--id-column", "--master", "--url", "examples:"):
        assert phrase in text


def test_progress_line_has_rate_and_eta() -> None:
    import io

    stream = io.StringIO()
    progress = Progress(1000, stream=stream)
    progress.advance(250)
    line = progress.line()
    assert line.startswith("250 rows / 1,000 (25%)")
    assert "rows/s" in line and "ETA" in line
    progress.close()
    assert stream.getvalue().endswith("\n")
