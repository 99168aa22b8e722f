"""One member estimator -> one ONNX graph ``features [n, f] -> score [n]`` that equals its runner's score.

Route per estimator: HistGradientBoostingClassifier and IsolationForest go through our own tree
writer (``trees.py``; skl2onnx drops HGB categorical splits and cannot emit float64 iforest
scores); anything else that skl2onnx knows goes through skl2onnx, probabilities of class 1 taken
from its output. What neither can convert is refused with an ``ExportError`` naming the member.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

from fraudserve.edge import trees
from fraudserve.errors import ExportError
from fraudserve.schema import FeatureSchema

# The ensemble's link says what a member returns: "logit" members return P(fraud), "identity"
# members an anomaly score (-score_samples). See models/members.py.
PROBABILITY_LINK = "logit"
ANOMALY_LINK = "identity"


def convert_member(
    member: str, estimator: Any, link: str, schema: FeatureSchema, dtype: np.dtype[Any], *, route: str = "auto"
) -> onnx.ModelProto:
    """Convert one member; ``route`` = "auto" | "skl2onnx" (the latter to show what skl2onnx alone gives)."""
    categories = [len(f.categories) if f.categories else None for f in schema.features]
    if link == PROBABILITY_LINK:
        if route == "auto" and isinstance(estimator, HistGradientBoostingClassifier):
            return trees.hgb_to_onnx(estimator, categories, dtype)
        if not hasattr(estimator, "predict_proba"):
            raise ExportError(f"member {member!r}: {type(estimator).__name__} has no predict_proba")
        return _skl2onnx_probability(member, estimator, len(schema.features), dtype)
    if link == ANOMALY_LINK:
        if isinstance(estimator, IsolationForest):
            return trees.iforest_to_onnx(estimator, dtype)
        raise ExportError(
            f"member {member!r}: only IsolationForest anomaly scores can be exported, not {type(estimator).__name__}"
        )
    raise ExportError(f"member {member!r}: unknown link {link!r}")


def _skl2onnx_probability(member: str, estimator: Any, n_features: int, dtype: np.dtype[Any]) -> onnx.ModelProto:
    try:
        return _skl2onnx_graph(member, estimator, n_features, np.dtype(dtype), cast_from=None)
    except ExportError as first:
        if np.dtype(dtype) != np.float64:
            raise
        # Some skl2onnx converters only work in float32 (tree classifiers): convert in float32 behind
        # a Cast of the float64 input. Whether that is faithful is for the parity check to judge.
        try:
            return _skl2onnx_graph(member, estimator, n_features, np.dtype(np.float32), cast_from=np.dtype(dtype))
        except ExportError:
            raise first from None


def _skl2onnx_graph(
    member: str, estimator: Any, n_features: int, dtype: np.dtype[Any], *, cast_from: np.dtype[Any] | None
) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    tensor_type = DoubleTensorType if dtype == np.float64 else FloatTensorType
    inner_input = trees.INPUT if cast_from is None else "features_cast"
    try:
        model = convert_sklearn(
            estimator,
            initial_types=[(inner_input, tensor_type([None, n_features]))],
            # zipmap=False: probabilities as a tensor, not a list of dicts.
            options={"zipmap": False},
            target_opset={"": trees.ONNX_OPSET, trees.ML_DOMAIN: 3},
        )
    except Exception as exc:  # skl2onnx raises many types; all mean "cannot convert"
        raise ExportError(
            f"member {member!r}: skl2onnx cannot convert {_describe(estimator)}: {type(exc).__name__}: {_first(exc)}"
        ) from exc
    graph = model.graph
    probabilities_out = next((o for o in graph.output if "prob" in o.name), None)
    if probabilities_out is None:
        raise ExportError(f"member {member!r}: skl2onnx gave no probability output for {_describe(estimator)}")
    output_type = probabilities_out.type.tensor_type.elem_type
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.asarray([1], dtype=np.int64), "fraud_class"),
            numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "flat"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Gather", [probabilities_out.name, "fraud_class"], ["fraud_column"], axis=1),
            helper.make_node("Reshape", ["fraud_column", "flat"], [trees.OUTPUT]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(trees.OUTPUT, output_type, [None]))
    if cast_from is not None:
        graph.node.insert(0, helper.make_node("Cast", [trees.INPUT], [inner_input], to=_onnx_type(dtype)))
        del graph.input[:]
        graph.input.append(helper.make_tensor_value_info(trees.INPUT, _onnx_type(cast_from), [None, n_features]))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"member {member!r}: skl2onnx gave an invalid graph for {_describe(estimator)}: {_first(exc)}"
        ) from exc
    _check_loads(member, estimator, model)
    return model


def _onnx_type(dtype: np.dtype[Any]) -> int:
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_loads(member: str, estimator: Any, model: onnx.ModelProto) -> None:
    import onnxruntime as ort

    # skl2onnx can emit graphs onnxruntime rejects (e.g. float64 tree classifiers).
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(
            f"member {member!r}: onnxruntime cannot load the graph for {_describe(estimator)}: {_first(exc)}"
        ) from exc


def _describe(estimator: Any) -> str:
    steps = getattr(estimator, "steps", None)
    if steps:
        return "Pipeline(" + ", ".join(type(step).__name__ for _, step in steps) + ")"
    return type(estimator).__name__
