"""Tree ensembles -> ONNX ``ai.onnx.ml.TreeEnsemble`` (opset 5), written from the fitted trees.

skl2onnx 1.20 converts HistGradientBoostingClassifier by reading only numeric thresholds: its
categorical splits (bitsets) are silently dropped, and its scores differ by up to ~0.97 on our
ensemble. Its IsolationForest ``score_samples`` route fails for float64 inputs. Opset 5 of
TreeEnsemble has set-membership splits (BRANCH_MEMBER) and double precision, so both models
are written here node by node, mirroring scikit-learn's own predict loops:

- HGB (``_predictor.pyx``): numeric ``x <= threshold`` goes left; a categorical value goes left
  when it is in the left bitset, right when it is another known category, and the missing-value
  way when it was never seen in training. Raw score = baseline + sum of leaves; p = sigmoid.
- IsolationForest (``_iforest.py``): inputs are cast to float32 before ``tree.apply``; a leaf
  contributes its path length + average path length - 1; score = 2 ** (-sum / (n_trees * c(n))),
  which is the member score (``-score_samples``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fraudserve.errors import ExportError

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 5
ONNX_OPSET = 21
INPUT = "features"
OUTPUT = "score"

_LEQ, _MEMBER = 0, 6
_SUM = 1


@dataclass
class _Forest:
    """Interior nodes and leaves of every tree, in TreeEnsemble's parallel-array layout."""

    featureids: list[int] = field(default_factory=list)
    modes: list[int] = field(default_factory=list)
    splits: list[float] = field(default_factory=list)
    missing_true: list[int] = field(default_factory=list)
    true_ids: list[int] = field(default_factory=list)
    true_leaf: list[int] = field(default_factory=list)
    false_ids: list[int] = field(default_factory=list)
    false_leaf: list[int] = field(default_factory=list)
    membership: list[float] = field(default_factory=list)
    leaf_weights: list[float] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)

    def add_leaf(self, weight: float) -> int:
        self.leaf_weights.append(float(weight))
        return len(self.leaf_weights) - 1

    def add_node(self, feature: int, mode: int, split: float, missing_true: bool) -> int:
        self.featureids.append(int(feature))
        self.modes.append(mode)
        self.splits.append(float(split))
        self.missing_true.append(int(missing_true))
        for column in (self.true_ids, self.true_leaf, self.false_ids, self.false_leaf):
            column.append(0)
        return len(self.featureids) - 1

    def link(self, node: int, branch: bool, target: int, is_leaf: bool) -> None:
        ids, leafs = (self.true_ids, self.true_leaf) if branch else (self.false_ids, self.false_leaf)
        ids[node] = target
        leafs[node] = int(is_leaf)

    def single_leaf_tree(self, weight: float) -> None:
        # TreeEnsemble roots must be interior nodes: a stump whose both ways reach the same leaf.
        leaf = self.add_leaf(weight)
        node = self.add_node(0, _LEQ, 0.0, False)
        self.link(node, True, leaf, True)
        self.link(node, False, leaf, True)
        self.roots.append(node)

    def node(self, dtype: np.dtype[Any], name: str, output: str) -> onnx.NodeProto:
        """The TreeEnsemble node reading tensor ``name``."""
        cast = np.dtype(dtype)
        return helper.make_node(
            "TreeEnsemble",
            [name],
            [output],
            domain=ML_DOMAIN,
            aggregate_function=_SUM,
            n_targets=1,
            post_transform=0,
            tree_roots=self.roots,
            nodes_featureids=self.featureids,
            nodes_modes=numpy_helper.from_array(np.asarray(self.modes, dtype=np.uint8), "nodes_modes"),
            nodes_splits=numpy_helper.from_array(np.asarray(self.splits, dtype=cast), "nodes_splits"),
            nodes_missing_value_tracks_true=self.missing_true,
            nodes_truenodeids=self.true_ids,
            nodes_trueleafs=self.true_leaf,
            nodes_falsenodeids=self.false_ids,
            nodes_falseleafs=self.false_leaf,
            leaf_targetids=[0] * len(self.leaf_weights),
            leaf_weights=numpy_helper.from_array(np.asarray(self.leaf_weights, dtype=cast), "leaf_weights"),
            **(
                {"membership_values": numpy_helper.from_array(np.asarray(self.membership, dtype=cast), "membership")}
                if self.membership
                else {}
            ),
        )


def _split_value(threshold: float, dtype: np.dtype[Any]) -> float:
    """A threshold in ``dtype`` that keeps ``x <= t`` for every x of that dtype that satisfies it in float64."""
    if np.dtype(dtype) == np.float64:
        return float(threshold)
    t32 = np.float32(threshold)
    if float(t32) > threshold:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return float(t32)


def hgb_to_onnx(model: Any, categories: Sequence[int | None], dtype: np.dtype[Any]) -> onnx.ModelProto:
    """A binary HistGradientBoostingClassifier -> graph ``features -> score`` (fraud probability).

    ``categories[i]`` is the number of categories of input column i (None for numeric columns):
    the exported set splits are exact over the codes ``0..n-1`` that the schema accepts.
    """
    if getattr(model, "n_trees_per_iteration_", 1) != 1 or len(getattr(model, "classes_", ())) != 2:
        raise ExportError("HistGradientBoostingClassifier: only binary classifiers can be exported")
    columns, category_values = _hgb_columns(model)
    known = model._bin_mapper.make_known_categories_bitsets() if category_values else None
    forest = _Forest()
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        if nodes[0]["is_leaf"]:
            forest.single_leaf_tree(nodes[0]["value"])
            continue
        ids: dict[int, tuple[int, bool]] = {}
        for i, n in enumerate(nodes):
            if n["is_leaf"]:
                ids[i] = (forest.add_leaf(n["value"]), True)
                continue
            inner = int(n["feature_idx"])
            column = columns[inner]
            missing_left = bool(n["missing_go_to_left"])
            if n["is_categorical"]:
                n_codes = categories[column] if column < len(categories) else None
                if n_codes is None or known is None:
                    raise ExportError(f"HGB splits input column {column} as categorical but the schema says numeric")
                known_bits, f_map = known
                seen = category_values[inner]
                left = []
                for code in range(n_codes):
                    hit = np.flatnonzero(seen == code)
                    if hit.size == 0:  # never seen in training: the OrdinalEncoder makes it NaN (missing)
                        goes_left = missing_left
                    elif _in_bitset(predictor.raw_left_cat_bitsets[n["bitset_idx"]], int(hit[0])):
                        goes_left = True
                    elif _in_bitset(known_bits[f_map[inner]], int(hit[0])):
                        goes_left = False
                    else:
                        goes_left = missing_left
                    if goes_left:
                        left.append(float(code))
                node = forest.add_node(column, _MEMBER, 0.0, missing_left)
                forest.membership.extend([*left, float("nan")])
            else:
                node = forest.add_node(column, _LEQ, _split_value(n["num_threshold"], dtype), missing_left)
            ids[i] = (node, False)
        for i, n in enumerate(nodes):
            if not n["is_leaf"]:
                forest.link(ids[i][0], True, *ids[int(n["left"])])
                forest.link(ids[i][0], False, *ids[int(n["right"])])
        forest.roots.append(ids[0][0])
    baseline = float(np.asarray(model._baseline_prediction).ravel()[0])
    cast = np.dtype(dtype)
    nodes = [
        forest.node(dtype, INPUT, "raw_trees"),
        helper.make_node("Add", ["raw_trees", "baseline"], ["raw"]),
        helper.make_node("Sigmoid", ["raw"], ["proba"]),
        helper.make_node("Reshape", ["proba", "flat"], [OUTPUT]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([baseline], dtype=cast), "baseline"),
        numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "flat"),
    ]
    return _model(nodes, inits, model.n_features_in_, dtype, "hgb")


def _hgb_columns(model: Any) -> tuple[list[int], dict[int, np.ndarray]]:
    """Input column of each tree feature, and the raw values behind each categorical tree feature.

    With ``categorical_features`` scikit-learn puts an OrdinalEncoder (categories seen in training,
    sorted; unseen -> NaN) in front of the trees and moves the categorical columns first.
    """
    pre = getattr(model, "_preprocessor", None)
    if pre is None:
        return list(range(int(model.n_features_in_))), {}
    n_inputs = int(pre.n_features_in_)
    columns = [0] * n_inputs
    values: dict[int, np.ndarray] = {}
    for name, transformer, selected in pre.transformers_:
        if isinstance(transformer, str):
            if transformer == "drop":
                continue
            raise ExportError(f"HGB preprocessor step {name!r} ({transformer}) is not supported")
        mask = np.zeros(n_inputs, dtype=bool)
        mask[selected] = True
        originals = np.flatnonzero(mask)
        outputs = range(n_inputs)[pre.output_indices_[name]]
        if len(outputs) != len(originals):
            raise ExportError(f"HGB preprocessor step {name!r} changes the number of columns")
        for k, (out, original) in enumerate(zip(outputs, originals, strict=True)):
            columns[out] = int(original)
            if name == "encoder":
                seen = np.asarray(transformer.categories_[k], dtype=np.float64)
                values[out] = seen[~np.isnan(seen)]
    return columns, values


def _in_bitset(bitset: np.ndarray, value: int) -> bool:
    return bool((int(bitset[value // 32]) >> (value % 32)) & 1)


def iforest_to_onnx(model: Any, dtype: np.dtype[Any]) -> onnx.ModelProto:
    """An IsolationForest -> graph ``features -> score`` (``-score_samples``, higher is stranger)."""
    from sklearn.ensemble._iforest import _average_path_length

    n_features = int(model.n_features_in_)
    subsample = model._max_features != n_features
    forest = _Forest()
    for t, (tree, features) in enumerate(zip(model.estimators_, model.estimators_features_, strict=True)):
        inner = tree.tree_
        leaf_value = model._decision_path_lengths[t] + model._average_path_length_per_tree[t] - 1.0
        ids: dict[int, tuple[int, bool]] = {}
        left, right = inner.children_left, inner.children_right
        if left[0] == -1:
            forest.single_leaf_tree(leaf_value[0])
            continue
        for i in range(inner.node_count):
            if left[i] == -1:
                ids[i] = (forest.add_leaf(leaf_value[i]), True)
            else:
                column = int(features[inner.feature[i]]) if subsample else int(inner.feature[i])
                # Thresholds stay float64 in the full variant: scikit-learn compares float32 inputs to them.
                ids[i] = (forest.add_node(column, _LEQ, _split_value(inner.threshold[i], dtype), False), False)
        for i in range(inner.node_count):
            if left[i] != -1:
                forest.link(ids[i][0], True, *ids[int(left[i])])
                forest.link(ids[i][0], False, *ids[int(right[i])])
        forest.roots.append(ids[0][0])
    denominator = len(model.estimators_) * float(_average_path_length([model._max_samples])[0])
    if denominator == 0:
        raise ExportError("IsolationForest fitted on a single sample cannot be exported")
    cast = np.dtype(dtype)
    onnx_type = helper.np_dtype_to_tensor_dtype(cast)
    nodes = [
        # scikit-learn casts inputs to float32 before walking the trees; do the same.
        helper.make_node("Cast", [INPUT], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["x32"], ["x_tree"], to=onnx_type),
        forest.node(dtype, "x_tree", "depths"),
        helper.make_node("Div", ["depths", "neg_denominator"], ["exponent"]),
        helper.make_node("Pow", ["two", "exponent"], ["anomaly"]),
        helper.make_node("Reshape", ["anomaly", "flat"], [OUTPUT]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([-denominator], dtype=cast), "neg_denominator"),
        numpy_helper.from_array(np.asarray([2.0], dtype=cast), "two"),
        numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "flat"),
    ]
    return _model(nodes, inits, n_features, dtype, "iforest")


def _model(
    nodes: list[onnx.NodeProto], inits: list[TensorProto], n_features: int, dtype: np.dtype[Any], name: str
) -> onnx.ModelProto:
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, onnx_type, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT, onnx_type, [None])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(ML_DOMAIN, ML_OPSET)],
        producer_name="fraudserve.edge",
    )
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model
