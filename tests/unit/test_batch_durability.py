"""fraud-batch output durability: fsync before the manifest names a part, atomic manifest, safe --overwrite."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fraudserve.batch.scoring import ScoredChunk
from fraudserve.batch.sink import MANIFEST, Output
from fraudserve.batch.stats import ChunkStats
from fraudserve.errors import InvalidInput

KEY = {"input": "fingerprint", "chunk_rows": 2}
Event = tuple[str, str, frozenset[int]]


def chunk(chunk_id: int, rejected_rows: int) -> ScoredChunk:
    scored = pa.table({"row_number": [2 * chunk_id, 2 * chunk_id + 1], "fraud_probability": [0.1, 0.9]})
    rejected = pa.table({"row_number": list(range(rejected_rows)), "reason": ["amount: invalid"] * rejected_rows})
    return ScoredChunk(chunk_id, scored, rejected, ChunkStats(rows_in=2, rows_out=2), {"ensemble": "e:v"})


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every fsync (by path) and rename (by target, with the chunks a manifest names) in call order."""
    recorded: list[Event] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        recorded.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), frozenset()))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        listed: frozenset[int] = frozenset()
        if Path(dst).name == MANIFEST:
            listed = frozenset(int(k) for k in json.loads(Path(src).read_text())["chunks"])
        recorded.append(("replace", str(dst), listed))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)
    return recorded


def index(events: list[Event], kind: str, path: Path, after: int = -1) -> int:
    for i, (k, p, _) in enumerate(events):
        if i > after and k == kind and p == str(path):
            return i
    raise AssertionError(f"no {kind} of {path} after event {after}: {events}")


def first_manifest_listing(events: list[Event], chunk_id: int) -> int:
    return next(i for i, (k, p, listed) in enumerate(events) if k == "replace" and chunk_id in listed)


def test_a_part_is_durable_before_the_manifest_names_it(tmp_path: Path, events: list[Event]) -> None:
    out = Output(tmp_path / "out", key=KEY, resume=False, overwrite=False)
    for result in (chunk(0, rejected_rows=0), chunk(1, rejected_rows=3)):
        out.write_parts(result)
        out.record(result)

    for chunk_id in (0, 1):
        listed = first_manifest_listing(events, chunk_id)
        files = [out.part_path(chunk_id)] + ([out.rejected_part_path(chunk_id)] if chunk_id else [])
        for part in files:
            tmp = part.with_name(f".{part.name}.tmp-{os.getpid()}")
            data = index(events, "fsync", tmp)
            renamed = index(events, "replace", part, after=data)
            folder = index(events, "fsync", part.parent, after=renamed)
            assert data < renamed < folder < listed, (part, data, renamed, folder, listed)

    # The manifest itself: temp file fsynced, renamed over the old one, folder fsynced, every time.
    manifest = out.manifest_path
    tmp = manifest.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    renames = [i for i, (k, p, _) in enumerate(events) if k == "replace" and p == str(manifest)]
    assert len(renames) == 3  # the empty one at open, then one per recorded chunk
    previous = -1
    for renamed in renames:
        assert previous < index(events, "fsync", tmp, after=previous) < renamed
        assert index(events, "fsync", manifest.parent, after=renamed) < renamed + 2
        previous = renamed
    assert json.loads(manifest.read_text())["chunks"].keys() == {"0", "1"}
    assert not list(out.work_dir.glob(".*.tmp-*"))


def test_overwrite_of_a_single_file_refuses_a_parts_folder_that_is_not_ours(tmp_path: Path) -> None:
    target = tmp_path / "scored.parquet"
    target.write_bytes(b"an old result")
    foreign = tmp_path / "scored.parquet.parts"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone's work")

    with pytest.raises(InvalidInput, match=r"refusing to overwrite .*scored\.parquet\.parts.*no _manifest\.json"):
        Output(target, key=KEY, resume=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "someone's work"
    assert target.read_bytes() == b"an old result"


def test_overwrite_of_a_single_file_replaces_our_own_interrupted_parts(tmp_path: Path) -> None:
    target = tmp_path / "scored.parquet"
    first = Output(target, key=KEY, resume=False, overwrite=False)
    first.write_parts(chunk(0, rejected_rows=1))
    first.record(chunk(0, rejected_rows=1))  # interrupted here: .parts holds our manifest and a part

    with pytest.raises(InvalidInput, match="--resume"):
        Output(target, key=KEY, resume=False, overwrite=False)
    again = Output(target, key={**KEY, "chunk_rows": 3}, resume=False, overwrite=True)
    assert again.done == {}
    assert not first.part_path(0).exists()
    assert json.loads(again.manifest_path.read_text())["key"]["chunk_rows"] == 3


def test_overwrite_of_a_folder_refuses_a_folder_that_is_not_ours(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "part-00000.parquet").write_bytes(b"not ours")
    with pytest.raises(InvalidInput, match="not a fraud-batch output"):
        Output(folder, key=KEY, resume=False, overwrite=True)
    assert (folder / "part-00000.parquet").read_bytes() == b"not ours"
