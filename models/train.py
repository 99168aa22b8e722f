"""Train the default fraud ensemble (or one on your CSV) into the BentoML model store.

python -m models.train                       # generated transactions, seeded
python -m models.train --csv my.csv --label is_fraud
python -m models.train --if-missing          # no-op when an ensemble is already stored
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from fraudserve.ensemble import combine
from fraudserve.features import encode_frame
from fraudserve.schema import Feature, FeatureSchema
from models import store
from models.members import LINKS, SCORE
from models.onnx_export import export_member
from models.transactions import TRANSACTION_SCHEMA, generate_transactions

MAX_CATEGORIES = 64
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    version: str
    metrics: dict[str, dict[str, float]]
    threshold: float
    onnx: dict[str, str]  # member -> "max abs diff <d>" of its stored ONNX graph, or why it has none


def infer_schema(frame: pd.DataFrame, label: str) -> FeatureSchema:
    """A schema for a user's CSV: bools, ints, floats, and low-cardinality strings as categories.

    Numeric ranges are widened beyond what was seen (non-negative columns start at 0, the upper
    bound gets one more span) so that plausible new values are accepted and absurd ones are not.
    """
    if label not in frame.columns:
        raise SystemExit(f"label column {label!r} not in the CSV (columns: {list(frame.columns)})")
    features: list[Feature] = []
    for name in frame.columns:
        if name == label:
            continue
        col = frame[name]
        if col.isna().any():
            raise SystemExit(f"column {name!r} has missing values; fill or drop them before training")
        if pd.api.types.is_bool_dtype(col) or set(pd.unique(col.astype(str).str.lower())) <= {"true", "false"}:
            features.append(Feature(name=name, kind="bool"))
        elif pd.api.types.is_numeric_dtype(col):
            lo, hi = float(col.min()), float(col.max())
            span = max(hi - lo, 1.0)
            integral = pd.api.types.is_integer_dtype(col)
            minimum = 0.0 if lo >= 0 else lo - span
            features.append(Feature(name=name, kind="int" if integral else "float", minimum=minimum, maximum=hi + span))
        else:
            cats = sorted(str(v) for v in pd.unique(col))
            if len(cats) > MAX_CATEGORIES:
                raise SystemExit(
                    f"column {name!r} has {len(cats)} distinct strings; at most {MAX_CATEGORIES} are supported"
                )
            features.append(Feature(name=name, kind="category", categories=tuple(cats)))
    return FeatureSchema(features=tuple(features), label=label)


def fit_members(schema: FeatureSchema, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    cat = schema.categorical_indices
    num = schema.numeric_indices
    hgb = HistGradientBoostingClassifier(
        max_iter=200,
        learning_rate=0.08,
        max_leaf_nodes=31,
        categorical_features=cat or None,
        early_stopping=True,
        random_state=seed,
    )
    encoders: list[tuple[str, Any, list[int]]] = [("num", StandardScaler(), num)]
    if cat:
        categories = [list(range(len(schema.features[i].categories or ()))) for i in cat]
        encoders.append(("cat", OneHotEncoder(categories=categories, handle_unknown="ignore"), cat))
    logreg = Pipeline(
        [
            ("encode", ColumnTransformer(encoders)),
            ("model", LogisticRegression(max_iter=2000, C=1.0, class_weight="balanced")),
        ]
    )
    legit = X[y == 0] if (y == 0).any() else X
    # 256-row subsamples (the isolation forest paper's default) keep trees shallow and scoring cheap.
    iforest = IsolationForest(n_estimators=100, max_samples=min(256, len(legit)), random_state=seed)
    hgb.fit(X, y)
    logreg.fit(X, y)
    iforest.fit(legit)
    return {"hgb": hgb, "logreg": logreg, "iforest": iforest}


def member_scores(members: dict[str, Any], X: np.ndarray) -> dict[str, np.ndarray]:
    """The score each runner returns: fraud probability, or anomaly score (higher = stranger)."""
    return {kind: SCORE[kind](est, X) for kind, est in members.items()}


def train(
    frame: pd.DataFrame,
    schema: FeatureSchema,
    *,
    prefix: str = "fraud",
    seed: int = 7,
    version: str | None = None,
    source: str = "generated",
) -> TrainResult:
    encoded = encode_frame(schema, frame)
    if not encoded.valid.all():
        first = next(iter(encoded.reasons.items()))
        raise SystemExit(f"{len(encoded.reasons)} training rows break the schema, e.g. row {first[0]}: {first[1]}")
    X = encoded.matrix
    y = frame[schema.label].astype(int).to_numpy()
    if set(np.unique(y)) != {0, 1}:
        raise SystemExit(f"label {schema.label!r} must hold both 0 and 1")
    data_hash = hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest()
    X_fit, X_rest, y_fit, y_rest = train_test_split(X, y, test_size=0.4, stratify=y, random_state=seed)
    X_cal, X_test, y_cal, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)

    members = fit_members(schema, X_fit, y_fit, seed)
    cal_scores = member_scores(members, X_cal)
    stack_in = np.column_stack([_linked(kind, s) for kind, s in cal_scores.items()])
    stacker = LogisticRegression(max_iter=1000).fit(stack_in, y_cal)
    weights = {kind: float(w) for kind, w in zip(cal_scores, stacker.coef_[0], strict=True)}
    intercept = float(stacker.intercept_[0])

    cal_p = combine(cal_scores, weights, LINKS, intercept)
    threshold = _best_f1_threshold(y_cal, cal_p)

    test_scores = member_scores(members, X_test)
    metrics = {kind: _metrics(y_test, s) for kind, s in test_scores.items()}
    test_p = combine(test_scores, weights, LINKS, intercept)
    metrics["ensemble"] = {**_metrics(y_test, test_p), "f1_at_threshold": float(f1_score(y_test, test_p >= threshold))}

    version = version or time.strftime("v%Y%m%d-%H%M%S-") + data_hash[:8]
    common = {
        "schema": schema.model_dump_json(exclude_none=True),
        "data_hash": data_hash,
        "data_source": source,
        "rows": len(X),
        "fraud_rate": float(y.mean()),
        "version": version,
        "seed": seed,
    }
    onnx_status: dict[str, str] = {}
    for kind, est in members.items():
        onnx = export_member(kind, est, LINKS[kind], schema)
        if onnx.ok and onnx.parity is not None:
            onnx_status[kind] = f"max abs diff {onnx.parity.max_abs_diff[kind]:.2g} on {onnx.parity.rows} rows"
        else:
            onnx_status[kind] = f"none: {onnx.reason}"
            log.warning(
                "%s_%s:%s saved without ONNX (served with scikit-learn): %s", prefix, kind, version, onnx.reason
            )
        meta = {**common, "metrics": metrics[kind], "link": LINKS[kind]}
        store.save_member(prefix, kind, version, est, meta, onnx=onnx)
    combiner = {
        "members": list(members),
        "weights": weights,
        "links": LINKS,
        "intercept": intercept,
        "threshold": threshold,
    }
    store.save_ensemble(prefix, version, combiner, {**common, "metrics": metrics})
    return TrainResult(version=version, metrics=metrics, threshold=threshold, onnx=onnx_status)


def _linked(kind: str, scores: np.ndarray) -> np.ndarray:
    from fraudserve.ensemble import link

    return link(LINKS[kind], scores)


def _metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    return {"roc_auc": float(roc_auc_score(y, score)), "pr_auc": float(average_precision_score(y, score))}


def _best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(np.clip(thresholds[int(np.argmax(f1))], 1e-4, 1 - 1e-4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--csv", type=Path, help="train on this CSV instead of generated transactions")
    parser.add_argument("--label", default="is_fraud", help="label column of --csv (0/1)")
    parser.add_argument("--rows", type=int, default=200_000, help="generated rows (default 200000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--prefix", default="fraud", help="model name prefix in the store")
    parser.add_argument("--version", help="version string (default: timestamp + data hash)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing if an ensemble is stored")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.if_missing:
        try:
            existing = bentoml.models.get(f"{store.model_name(args.prefix, store.ENSEMBLE)}:latest")
            print(f"models present: {existing.tag}; skipping training")
            return 0
        except bentoml.exceptions.NotFound:
            pass
    if args.csv:
        frame = pd.read_csv(args.csv)
        schema = infer_schema(frame, args.label)
        source = str(args.csv)
    else:
        frame = generate_transactions(args.rows, seed=args.seed)
        schema = TRANSACTION_SCHEMA
        source = f"generated rows={args.rows} seed={args.seed}"
    started = time.perf_counter()
    result = train(frame, schema, prefix=args.prefix, seed=args.seed, version=args.version, source=source)
    print(
        f"trained {args.prefix} ensemble version {result.version} in {time.perf_counter() - started:.1f}s "
        f"(threshold {result.threshold:.3f})"
    )
    for kind, m in result.metrics.items():
        onnx = f"  ONNX {result.onnx[kind]}" if kind in result.onnx else ""
        print(f"  {kind:9s} ROC-AUC {m['roc_auc']:.4f}  PR-AUC {m['pr_auc']:.4f}{onnx}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
