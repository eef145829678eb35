#!/usr/bin/env python3
"""Models nobody here trained, written the way exporters write them, for the native
backend's trust tests (tests/native_trust.rs): each exercises a rule of ONNX Runtime's
that an evaluator can get wrong while agreeing on small random rows.

    python3 scripts/make_trust_fixtures.py    # tests/fixtures/models/trust_*.{onnx,toml}

- trust_binary: a 2-class TreeEnsembleClassifier whose leaves weigh both classes or only
  class 0 (ONNX Runtime derives the row's two scores from which classes were reached).
- trust_binary_logistic: the same shape with LOGISTIC and two base values.
- trust_lt_regressor: XGBoost-style `BRANCH_LT` splits at 0.0 and at thresholds real
  features sit on, one target, base value (fed exactly 0.0 by real feeds all the time).
- trust_gte_classifier: 3 classes, `BRANCH_GTE` at 0.0 and `BRANCH_GT`, SOFTMAX.
- trust_gemm_softmax: `Gemm` + `Softmax` on raw inputs (prices and sizes in the thousands).
- trust_nan_threshold: `BRANCH_GT`/`BRANCH_GTE`/`BRANCH_LEQ` nodes whose threshold is NaN.
- trust_softmax_zero: SOFTMAX_ZERO with scores that are exactly 0 or tiny (|s| < 1e-7).
- trust_first_weight: a one-target regressor whose leaves carry two weights
  (ONNX Runtime's one-target path adds only the first).
- trust_root_last: a tree listed leaves first, root last (ONNX Runtime starts each tree at
  the first node listed).
- trust_lstm_clip: the LSTM step fixture with a `Clip` on its cell-state output.

Features are `extra:<i>`, so a test can feed any value. Each model must run in
onnxruntime before it is written. Needs: onnx onnxruntime numpy (scripts/requirements.txt).
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tickfeatures import fixture_manifest  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "models")
ML = "ai.onnx.ml"


def tree_node(op, n_features, nodes, weights, outputs, **attrs):
    """nodes: (tree, id, mode, feature, threshold, true id, false id, missing tracks true);
    weights: (tree, id, output, weight)."""
    cols = list(zip(*nodes))
    prefix = "class" if op == "TreeEnsembleClassifier" else "target"
    w = list(zip(*weights))
    return helper.make_node(
        op, ["x"], ["label", "scores"] if prefix == "class" else ["scores"], domain=ML,
        nodes_treeids=list(cols[0]), nodes_nodeids=list(cols[1]), nodes_modes=list(cols[2]),
        nodes_featureids=list(cols[3]), nodes_values=[float(v) for v in cols[4]],
        nodes_truenodeids=list(cols[5]), nodes_falsenodeids=list(cols[6]),
        nodes_missing_value_tracks_true=list(cols[7]),
        **{f"{prefix}_treeids": list(w[0]), f"{prefix}_nodeids": list(w[1]), f"{prefix}_ids": list(w[2]),
           f"{prefix}_weights": [float(v) for v in w[3]]},
        **attrs)


def save(name, graph, n_features, output, opsets, what):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    probe = np.array([[0.0] * n_features, [150.0] * n_features, [np.nan] * n_features], dtype=np.float32)
    sess.run(None, {"x": probe})
    with open(os.path.join(OUT, f"{name}.onnx"), "wb") as fh:
        fh.write(data)
    with open(os.path.join(OUT, f"{name}.toml"), "w") as fh:
        fh.write(fixture_manifest(f"Written by scripts/make_trust_fixtures.py: {what}", name, n_features, "scores",
                                  output))
    print(f"wrote tests/fixtures/models/{name}.onnx ({len(data)} bytes)")


def ensemble_model(name, node, n_features, width, output, what):
    outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, width])]
    if node.op_type == "TreeEnsembleClassifier":
        outs.insert(0, helper.make_tensor_value_info("label", TensorProto.INT64, [None]))
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_features])],
                              outs)
    save(name, graph, n_features, output, [("", 13), (ML, 3)], what)


CLASSES2 = 'kind = "classes"\nclasses = ["sell", "buy"]\n'
CLASSES3 = 'kind = "classes"\nclasses = ["sell", "flat", "buy"]\n'
REGRESSION = 'kind = "regression"\ntarget = "mid_return_bps"\nflat_threshold = 0.5\nfull_confidence = 3.0\n'


def binary(name, post, base):
    # Tree 0: x0 <= 100 ? {0: 0.3, 1: 0.7} : {0: 0.9}. Tree 1: x1 <= -2.5 ? {0: 0.25} : {0: -0.1, 1: 0.4}.
    nodes = [(0, 0, "BRANCH_LEQ", 0, 100.0, 1, 2, 0), (0, 1, "LEAF", 0, 0, 0, 0, 0), (0, 2, "LEAF", 0, 0, 0, 0, 0),
             (1, 0, "BRANCH_LEQ", 1, -2.5, 1, 2, 0), (1, 1, "LEAF", 0, 0, 0, 0, 0), (1, 2, "LEAF", 0, 0, 0, 0, 0)]
    weights = [(0, 1, 0, 0.3), (0, 1, 1, 0.7), (0, 2, 0, 0.9), (1, 1, 0, 0.25), (1, 2, 0, -0.1), (1, 2, 1, 0.4)]
    attrs = {"classlabels_int64s": [0, 1], "post_transform": post}
    if base:
        attrs["base_values"] = base
    ensemble_model(name, tree_node("TreeEnsembleClassifier", 2, nodes, weights, 2, **attrs), 2, 2, CLASSES2,
                   f"2-class trees whose leaves weigh both classes or one, post {post}, base {base}")


def lt_regressor():
    # XGBoost writes `x < t` splits; real features are exactly 0.0 most of the time.
    nodes = [(0, 0, "BRANCH_LT", 0, 0.0, 1, 2, 1), (0, 1, "LEAF", 0, 0, 0, 0, 0),
             (0, 2, "BRANCH_LT", 1, 0.0, 3, 4, 1), (0, 3, "LEAF", 0, 0, 0, 0, 0), (0, 4, "LEAF", 0, 0, 0, 0, 0),
             (1, 0, "BRANCH_LT", 2, 1.5, 1, 2, 0), (1, 1, "BRANCH_LT", 0, -0.0, 3, 4, 0),
             (1, 2, "LEAF", 0, 0, 0, 0, 0), (1, 3, "LEAF", 0, 0, 0, 0, 0), (1, 4, "LEAF", 0, 0, 0, 0, 0)]
    weights = [(0, 1, 0, -1.25), (0, 3, 0, 0.75), (0, 4, 0, 2.0), (1, 2, 0, 0.5), (1, 3, 0, -0.875), (1, 4, 0, 1.0)]
    node = tree_node("TreeEnsembleRegressor", 3, nodes, weights, 1, n_targets=1, base_values=[0.5])
    ensemble_model("trust_lt_regressor", node, 3, 1, REGRESSION, "XGBoost-style `<` splits at 0.0")


def gte_classifier():
    nodes = [(0, 0, "BRANCH_GTE", 0, 0.0, 1, 2, 0), (0, 1, "BRANCH_GT", 1, 0.0, 3, 4, 0),
             (0, 2, "LEAF", 0, 0, 0, 0, 0), (0, 3, "LEAF", 0, 0, 0, 0, 0), (0, 4, "LEAF", 0, 0, 0, 0, 0),
             (1, 0, "BRANCH_GTE", 1, 250.0, 1, 2, 0), (1, 1, "LEAF", 0, 0, 0, 0, 0), (1, 2, "LEAF", 0, 0, 0, 0, 0)]
    weights = [(0, 2, 0, 1.5), (0, 3, 2, 1.25), (0, 4, 1, 0.5), (1, 1, 2, 0.25), (1, 2, 0, 0.125)]
    node = tree_node("TreeEnsembleClassifier", 2, nodes, weights, 3, classlabels_int64s=[-1, 0, 1],
                     post_transform="SOFTMAX")
    ensemble_model("trust_gte_classifier", node, 2, 3, CLASSES3, "`>=` splits at 0.0, SOFTMAX")


def nan_threshold():
    nan = float("nan")
    nodes = [(0, 0, "BRANCH_GT", 0, nan, 1, 2, 0), (0, 1, "LEAF", 0, 0, 0, 0, 0),
             (0, 2, "BRANCH_GTE", 1, nan, 3, 4, 1), (0, 3, "LEAF", 0, 0, 0, 0, 0),
             (0, 4, "BRANCH_LEQ", 0, nan, 5, 6, 0), (0, 5, "LEAF", 0, 0, 0, 0, 0), (0, 6, "LEAF", 0, 0, 0, 0, 0)]
    weights = [(0, 1, 0, 2.0), (0, 3, 1, 1.0), (0, 5, 2, 3.0), (0, 6, 1, -1.0)]
    node = tree_node("TreeEnsembleClassifier", 2, nodes, weights, 3, classlabels_int64s=[-1, 0, 1])
    ensemble_model("trust_nan_threshold", node, 2, 3, CLASSES3, "`>`/`>=`/`<=` splits at a NaN threshold")


def softmax_zero():
    nodes = [(0, 0, "BRANCH_LEQ", 0, 0.0, 1, 2, 0), (0, 1, "LEAF", 0, 0, 0, 0, 0), (0, 2, "LEAF", 0, 0, 0, 0, 0),
             (1, 0, "BRANCH_LEQ", 1, 0.0, 1, 2, 0), (1, 1, "LEAF", 0, 0, 0, 0, 0), (1, 2, "LEAF", 0, 0, 0, 0, 0)]
    weights = [(0, 1, 0, 5e-8), (0, 1, 2, 0.5), (0, 2, 1, -3e-8), (0, 2, 0, 1.0),
               (1, 1, 2, 0.0), (1, 2, 1, 0.75), (1, 2, 2, 2e-9)]
    node = tree_node("TreeEnsembleClassifier", 2, nodes, weights, 3, classlabels_int64s=[-1, 0, 1],
                     post_transform="SOFTMAX_ZERO")
    ensemble_model("trust_softmax_zero", node, 2, 3, CLASSES3, "SOFTMAX_ZERO with zero and tiny scores")


def first_weight():
    nodes = [(0, 0, "BRANCH_LEQ", 0, 1.0, 1, 2, 0), (0, 1, "LEAF", 0, 0, 0, 0, 0), (0, 2, "LEAF", 0, 0, 0, 0, 0)]
    weights = [(0, 1, 0, 1.0), (0, 1, 0, 2.0), (0, 2, 0, -1.5), (0, 2, 0, 0.25)]
    node = tree_node("TreeEnsembleRegressor", 1, nodes, weights, 1, n_targets=1)
    ensemble_model("trust_first_weight", node, 1, 1, REGRESSION, "one-target leaves with two weights each")


def root_last():
    nodes = [(0, 1, "LEAF", 0, 0, 0, 0, 0), (0, 2, "LEAF", 0, 0, 0, 0, 0), (0, 0, "BRANCH_LEQ", 0, 1.0, 1, 2, 0)]
    weights = [(0, 1, 0, 1.0), (0, 2, 0, -1.0)]
    node = tree_node("TreeEnsembleRegressor", 1, nodes, weights, 1, n_targets=1)
    ensemble_model("trust_root_last", node, 1, 1, REGRESSION, "a tree listed root last")


def gemm_softmax():
    rng = np.random.default_rng(25)
    n, k = 4, 3
    w = (rng.normal(size=(n, k)) * 1e-3).astype(np.float32)
    b = rng.normal(size=k).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["scores"], axis=1)],
        "trust_gemm_softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, k])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [n, k], w.flatten()),
                     helper.make_tensor("b", TensorProto.FLOAT, [k], b)])
    save("trust_gemm_softmax", graph, n, CLASSES3, [("", 13)], "Gemm + Softmax on raw inputs")


def lstm_clip():
    model = onnx.load(os.path.join(OUT, "lstm_step.onnx"))
    g = model.graph
    maker = next(n for n in g.node if "c_out" in n.output)
    maker.output[list(maker.output).index("c_out")] = "c_unclipped"
    g.initializer.extend([helper.make_tensor("clip_lo", TensorProto.FLOAT, [], [-0.5]),
                          helper.make_tensor("clip_hi", TensorProto.FLOAT, [], [0.5])])
    g.node.append(helper.make_node("Clip", ["c_unclipped", "clip_lo", "clip_hi"], ["c_out"]))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    feeds = {i.name: np.zeros([1] + [d.dim_value for d in i.type.tensor_type.shape.dim[1:]], dtype=np.float32)
             for i in g.input}
    ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    with open(os.path.join(OUT, "trust_lstm_clip.onnx"), "wb") as fh:
        fh.write(data)
    with open(os.path.join(OUT, "lstm_step.toml")) as fh:
        manifest = fh.read()
    manifest = manifest.replace("# Written by scripts/export_lstm.py.",
                                "# Written by scripts/make_trust_fixtures.py: the LSTM step fixture, Clip on c_out")
    manifest = manifest.replace('name = "lstm_step"', 'name = "trust_lstm_clip"')
    manifest = manifest.replace('onnx = "lstm_step.onnx"', 'onnx = "trust_lstm_clip.onnx"')
    with open(os.path.join(OUT, "trust_lstm_clip.toml"), "w") as fh:
        fh.write(manifest)
    print(f"wrote tests/fixtures/models/trust_lstm_clip.onnx ({len(data)} bytes)")


if __name__ == "__main__":
    binary("trust_binary", "NONE", None)
    binary("trust_binary_logistic", "LOGISTIC", [0.1, 0.2])
    lt_regressor()
    gte_classifier()
    gemm_softmax()
    nan_threshold()
    softmax_zero()
    first_weight()
    root_last()
    lstm_clip()
