"""A member's ONNX graph for the model store: converted at training time, checked against scikit-learn.

The graph comes from the edge export's converter (fraudserve/edge/convert.py, float64) and must
give the member's scikit-learn score (models/members.py SCORE) on the parity rows, to the edge
bundle's "full" tolerance (fraudserve/edge/parity.py), or it is not kept. A member that cannot be
converted or fails parity is saved without a graph, with the reason, and served with
scikit-learn (fraudserve/runtime.py): training on a user's CSV with an estimator the converter
does not know must still succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fraudserve.edge.parity import PARITY_ROWS, TOLERANCE, Parity, measure, parity_rows, reference_scores
from fraudserve.errors import ExportError
from fraudserve.schema import FeatureSchema


@dataclass(frozen=True)
class OnnxExport:
    graph: bytes | None  # serialised ONNX model, None when the member has none
    parity: Parity | None  # measured when a graph was converted
    reason: str | None = None  # why there is no graph

    @property
    def ok(self) -> bool:
        return self.graph is not None


def export_member(
    kind: str,
    estimator: Any,
    link: str,
    schema: FeatureSchema,
    *,
    parity_n: int = PARITY_ROWS,
    tolerance: float = TOLERANCE["full"],
) -> OnnxExport:
    """Convert one fitted member and check it on ``parity_n`` rows; never raises for a bad estimator."""
    from fraudserve.runtime import OnnxModel

    try:
        from fraudserve.edge.convert import convert_member

        graph = convert_member(kind, estimator, link, schema, np.dtype(np.float64)).SerializeToString()
        rows = parity_rows(schema, parity_n)
        parity = measure(
            reference_scores({kind: estimator}, rows), {kind: OnnxModel(graph, threads=1).score(rows)}, tolerance
        )
    except ExportError as exc:
        return OnnxExport(graph=None, parity=None, reason=exc.message)
    except Exception as exc:  # noqa: BLE001 - whatever breaks (converter, onnxruntime, a missing package): no graph
        return OnnxExport(graph=None, parity=None, reason=f"member {kind!r}: ONNX export failed: {_describe(exc)}")
    if not parity.ok:
        reason = (
            f"member {kind!r}: ONNX score differs from scikit-learn by {parity.max_abs_diff[kind]:.3g}"
            f" > tolerance {tolerance:g} on {parity.rows} rows"
        )
        return OnnxExport(graph=None, parity=parity, reason=reason)
    return OnnxExport(graph=graph, parity=parity)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
