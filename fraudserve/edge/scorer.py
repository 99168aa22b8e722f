#!/usr/bin/env python3
"""Offline fraud scorer for an exported edge bundle. Needs only numpy and onnxruntime.

    python edge_scorer.py BUNDLE_DIR < transactions.jsonl > scores.jsonl
    python edge_scorer.py BUNDLE_DIR --input transactions.jsonl --output scores.jsonl

Each input line is one transaction as a JSON object (the fields of schema.json; an optional
"id" is echoed back). Each output line is, in input order, either
    {"fraud_probability": 0.01, "is_fraud": false, "threshold": 0.6, "scores": {...}, "model_version": "v1"}
or, for a line that breaks the schema,
    {"line": 3, "error": "invalid_input", "field": "amount", "message": "must be a number, got str"}.
Before loading anything the scorer checks every file of the bundle against the sha256 in
manifest.json and refuses a bundle that does not match. Exit status: 0 done (rejected lines
are reported inline), 2 bad bundle or arguments.

This file is copied into every bundle by `fraud-edge export`: it must import nothing but the
standard library, numpy and onnxruntime.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnxruntime as ort

FORMAT = "fraud-edge/1"
MANIFEST = "manifest.json"
SCHEMA = "schema.json"
COMBINER = "combiner.json"
_EPS = 1e-6
_CHUNK_ROWS = 1024


class BundleError(Exception):
    """The bundle is missing a file, was altered after export, or is of another format."""


class InvalidRow(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Scored:
    probabilities: np.ndarray
    decisions: np.ndarray
    member_scores: dict[str, np.ndarray]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(root: Path) -> dict[str, Any]:
    """The manifest, after checking that every file it lists has its recorded sha256."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST}; not an edge bundle")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name, entry in manifest["files"].items():
        file = root / name
        if not file.is_file():
            raise BundleError(f"{root}: {name} is listed in the manifest but missing")
        if sha256_file(file) != entry["sha256"]:
            raise BundleError(f"{root}: {name} does not match its sha256 in the manifest; refusing to load")
    for needed in (SCHEMA, COMBINER, *(m["file"] for m in manifest["members"].values())):
        if needed not in manifest["files"]:
            raise BundleError(f"{root}: {needed} is not covered by the manifest")
    return manifest


class EdgeBundle:
    """An exported ensemble: ONNX members + schema + combiner, verified on open."""

    def __init__(self, root: str | Path, *, threads: int = 1, only: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.manifest = verify_files(self.root)
        self.schema: dict[str, Any] = json.loads((self.root / SCHEMA).read_text())
        self.features: list[dict[str, Any]] = list(self.schema["features"])
        combiner = json.loads((self.root / COMBINER).read_text())
        self.version: str = combiner["version"]
        self.members: list[str] = list(combiner["members"])
        self.weights: dict[str, float] = {k: float(v) for k, v in combiner["weights"].items()}
        self.links: dict[str, str] = dict(combiner["links"])
        self.intercept = float(combiner["intercept"])
        self.threshold = float(combiner["threshold"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.input_dtypes: dict[str, type[np.floating[Any]]] = {}
        for member in self.members if only is None else only:
            if member not in self.members:
                raise BundleError(f"{self.root}: no member {member!r} (members: {self.members})")
            file = self.root / self.manifest["members"][member]["file"]
            session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            self.sessions[member] = session
            self.input_dtypes[member] = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32

    def encode(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows as mappings -> the float64 matrix the members take; InvalidRow names the first bad field."""
        names = {f["name"] for f in self.features}
        out = np.empty((len(records), len(self.features)), dtype=np.float64)
        for r, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise InvalidRow("each transaction must be a JSON object", field=f"[{r}]")
            extra = sorted(set(record) - names - {"id"})
            if extra:
                raise InvalidRow("unknown field", field=f"[{r}].{extra[0]}")
            for c, feature in enumerate(self.features):
                out[r, c] = _encode_value(feature, record.get(feature["name"]), f"[{r}].{feature['name']}")
        return out

    def member_scores(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        return {
            m: np.asarray(
                self.sessions[m].run(None, {"features": matrix.astype(self.input_dtypes[m], copy=False)})[0],
                dtype=np.float64,
            ).reshape(-1)
            for m in self.sessions
        }

    def combine(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        z = np.full(len(next(iter(scores.values()))), self.intercept, dtype=np.float64)
        for member, weight in self.weights.items():
            s = np.asarray(scores[member], dtype=np.float64)
            if self.links[member] == "logit":
                p = np.clip(s, _EPS, 1.0 - _EPS)
                s = np.log(p / (1.0 - p))
            z += weight * s
        return 1.0 / (1.0 + np.exp(-z))

    def score(self, matrix: np.ndarray) -> Scored:
        scores = self.member_scores(matrix)
        probabilities = self.combine(scores)
        return Scored(probabilities, probabilities >= self.threshold, scores)

    def predictions(self, matrix: np.ndarray) -> list[dict[str, Any]]:
        scored = self.score(matrix)
        columns = [scored.member_scores[m].tolist() for m in self.members]
        return [
            {
                "fraud_probability": p,
                "is_fraud": d,
                "threshold": self.threshold,
                "scores": dict(zip(self.members, row, strict=True)),
                "model_version": self.version,
            }
            for p, d, *row in zip(scored.probabilities.tolist(), scored.decisions.tolist(), *columns, strict=True)
        ]


def _encode_value(feature: Mapping[str, Any], value: Any, field: str) -> float:
    kind = feature["kind"]
    if value is None:
        raise InvalidRow("field is required", field=field)
    if kind == "category":
        categories = feature["categories"]
        if not isinstance(value, str):
            raise InvalidRow("must be a string category", field=field)
        if value not in categories:
            raise InvalidRow(f"unknown category {value!r}; expected one of {categories}", field=field)
        return float(categories.index(value))
    if kind == "bool":
        if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            return float(value)
        raise InvalidRow("must be a boolean", field=field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRow(f"must be a number, got {type(value).__name__}", field=field)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRow("must be a finite number", field=field)
    if kind == "int" and not number.is_integer():
        raise InvalidRow("must be an integer", field=field)
    lo, hi = feature.get("minimum"), feature.get("maximum")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise InvalidRow(f"{number!r} is out of range in [{lo}, {hi}]", field=field)
    return number


def score_lines(bundle: EdgeBundle, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """JSON lines in -> one result per non-blank line out, in order; bad lines become error results."""
    pending: list[tuple[int, Any, np.ndarray]] = []

    def flush() -> Iterator[dict[str, Any]]:
        if pending:
            results = bundle.predictions(np.vstack([row for _, _, row in pending]))
            for (_, ident, _), result in zip(pending, results, strict=True):
                yield result if ident is None else {"id": ident, **result}
            pending.clear()

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield from flush()
            yield {"line": number, "error": "invalid_json", "message": str(exc)}
            continue
        try:
            row = bundle.encode([record])
        except InvalidRow as exc:
            yield from flush()
            field = exc.field.partition(".")[2] or None
            yield {"line": number, "error": "invalid_input", "field": field, "message": exc.message}
            continue
        pending.append((number, record.get("id"), row))
        if len(pending) >= _CHUNK_ROWS:
            yield from flush()
    yield from flush()


def main(argv: list[str] | None = None, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "bundle", nargs="?", type=Path, default=Path(__file__).resolve().parent, help="bundle dir (default: here)"
    )
    parser.add_argument("--input", type=Path, help="JSON lines file (default: stdin)")
    parser.add_argument("--output", type=Path, help="JSON lines file (default: stdout)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = parser.parse_args(argv)
    try:
        bundle = EdgeBundle(args.bundle, threads=args.threads)
    except BundleError as exc:
        print(f"edge_scorer: {exc}", file=sys.stderr)
        return 2
    source = args.input.open() if args.input else (stdin or sys.stdin)
    sink = args.output.open("w") if args.output else (stdout or sys.stdout)
    rows = rejected = 0
    try:
        for result in score_lines(bundle, source):
            rows += 1
            rejected += "error" in result
            sink.write(json.dumps(result) + "\n")
    finally:
        if args.input:
            source.close()
        if args.output:
            sink.close()
    print(f"edge_scorer: {rows} lines, {rejected} rejected, model {bundle.version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
