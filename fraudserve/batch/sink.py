"""The output side: one Parquet part file per chunk, written atomically, and a manifest.

A part is written to a temporary name and renamed into place; only then is its chunk id added
to ``_manifest.json`` (itself replaced atomically). A crash leaves at worst a part that the
manifest does not list, which a resumed run simply writes again. The manifest also holds the
input fingerprint and the run settings, so --resume refuses an input that changed.

Layout of a folder output::

    out/part-00000.parquet ...   scored rows, one file per chunk, in chunk order
    out/_rejected.csv            rejected rows: input row number, reason, raw values
    out/_summary.json            the run summary
    out/_manifest.json           finished chunks + fingerprint (what --resume reads)

An output named ``*.parquet`` or ``*.csv`` is one file, assembled from the parts at the end
(kept meanwhile in ``<name>.parts/``); its side files are ``<name>.rejected.csv`` and
``<name>.summary.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fraudserve.errors import InvalidInput

from .scoring import ScoredChunk
from .stats import ChunkStats

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = 1
SINGLE_FILE = {".parquet", ".csv"}


class Output:
    def __init__(self, path: Path, *, key: dict[str, Any], resume: bool, overwrite: bool) -> None:
        self.path = path
        self.key = key
        self.single = path.suffix.lower() in SINGLE_FILE
        self.work_dir = path.with_name(path.name + ".parts") if self.single else path
        self.rejected_path = path.with_name(path.name + ".rejected.csv") if self.single else path / "_rejected.csv"
        self.summary_path = path.with_name(path.name + ".summary.json") if self.single else path / "_summary.json"
        self.done: dict[int, ChunkStats] = {}
        self.model_versions: dict[str, str] = {}
        self._open(resume=resume, overwrite=overwrite)

    @property
    def manifest_path(self) -> Path:
        return self.work_dir / MANIFEST

    def part_path(self, chunk_id: int) -> Path:
        return self.work_dir / f"part-{chunk_id:05d}.parquet"

    def rejected_part_path(self, chunk_id: int) -> Path:
        return self.work_dir / "_rejected" / f"part-{chunk_id:05d}.parquet"

    def _open(self, *, resume: bool, overwrite: bool) -> None:
        manifest = self._read_manifest()
        if resume and manifest is not None:
            if manifest.get("key") != self.key:
                changed = sorted(k for k in self.key if manifest.get("key", {}).get(k) != self.key[k])
                raise InvalidInput(
                    f"cannot resume into {self.path}: {', '.join(changed)} changed since the interrupted run "
                    "(a changed input or different settings would mix two runs); rerun with --overwrite",
                    field="--resume",
                )
            self.done = {int(k): ChunkStats.from_json(v) for k, v in manifest["chunks"].items()}
            self.model_versions = manifest.get("model_versions", {})
            return
        taken = (self.single and self.path.exists()) or (self.work_dir.exists() and any(self.work_dir.iterdir()))
        if taken and not overwrite:
            hint = "pass --resume to continue it or " if manifest is not None else ""
            raise InvalidInput(
                f"output {self.path} already exists; {hint}pass --overwrite to replace it", field="output"
            )
        if taken:
            if self.work_dir.exists() and manifest is None and not self.single:
                raise InvalidInput(
                    f"refusing to overwrite {self.work_dir}: it is not a fraud-batch output (no {MANIFEST})",
                    field="output",
                )
            shutil.rmtree(self.work_dir, ignore_errors=True)
            for side in (self.path, self.rejected_path, self.summary_path):
                if self.single and side.exists():
                    side.unlink()
        (self.work_dir / "_rejected").mkdir(parents=True, exist_ok=True)
        self._write_manifest(complete=False)

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"{self.manifest_path} is unreadable ({exc}); rerun with --overwrite") from None
        if data.get("format") != MANIFEST_FORMAT:
            raise InvalidInput(f"{self.manifest_path}: unknown manifest format {data.get('format')!r}")
        return data

    def _write_manifest(self, *, complete: bool) -> None:
        data = {
            "format": MANIFEST_FORMAT,
            "key": self.key,
            "complete": complete,
            "model_versions": self.model_versions,
            "chunks": {str(k): v.to_json() for k, v in sorted(self.done.items())},
        }
        _atomic_write_text(self.manifest_path, json.dumps(data, indent=1))

    def write_parts(self, result: ScoredChunk) -> None:
        """Writes a chunk's files (any thread); ``record`` then marks it done (one thread)."""
        _atomic_parquet(result.scored, self.part_path(result.chunk_id))
        rejected = self.rejected_part_path(result.chunk_id)
        if result.rejected.num_rows:
            _atomic_parquet(result.rejected, rejected)
        elif rejected.exists():
            rejected.unlink()

    def record(self, result: ScoredChunk) -> None:
        self.done[result.chunk_id] = result.stats
        self.model_versions = result.model_versions
        self._write_manifest(complete=False)

    def totals(self) -> ChunkStats:
        total = ChunkStats()
        for stats in self.done.values():
            total += stats
        return total

    def finalize(self, summary: dict[str, Any], output_schema: pa.Schema, rejected_schema: pa.Schema) -> None:
        ids = sorted(self.done)
        _concat_csv([self.rejected_part_path(i) for i in ids], rejected_schema, self.rejected_path)
        if self.single:
            parts = [self.part_path(i) for i in ids]
            if parts:
                output_schema = pq.read_schema(parts[0])
            if self.path.suffix.lower() == ".csv":
                _concat_csv(parts, output_schema, self.path)
            else:
                _concat_parquet(parts, output_schema, self.path)
        self._write_manifest(complete=True)
        _atomic_write_text(self.summary_path, json.dumps(summary, indent=2))
        if self.single:
            shutil.rmtree(self.work_dir)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = _tmp(path)
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    tmp = _tmp(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _concat_csv(parts: list[Path], schema: pa.Schema, path: Path) -> None:
    tmp = _tmp(path)
    with pacsv.CSVWriter(tmp, schema) as writer:
        for part in parts:
            if part.exists():
                writer.write_table(pq.read_table(part).cast(schema))
    os.replace(tmp, path)


def _concat_parquet(parts: list[Path], schema: pa.Schema, path: Path) -> None:
    tmp = _tmp(path)
    with pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            writer.write_table(pq.read_table(part).cast(schema))
    os.replace(tmp, path)
