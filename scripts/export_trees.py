#!/usr/bin/env python3
"""Export the reference gradient-boosted-tree model of tickinfer's engine benchmark:
a LightGBM 3-class classifier, 100 boosting rounds x 31 leaves (300 trees: one per class
per round) on the 16 features the LSTM bench models read, converted by onnxmltools to
ONNX-ML `TreeEnsembleClassifier` (softmax probabilities, no ZipMap).

    python3 scripts/export_trees.py             # benches/models/lgbm_100x31.{onnx,toml}
    python3 scripts/export_trees.py --fixtures  # tests/fixtures/models/tree_{modes,regressor,wide}.*

The fixtures are hand-built ensembles that exercise what LightGBM never writes: every
node comparison (BRANCH_LEQ/LT/GTE/GT/EQ/NEQ), `missing_value_tracks_true` both ways,
several weights on one leaf, base values, LOGISTIC, a regressor averaging its trees, and
a tree of more than 32 leaves.
Their features are `extra:<i>`, so a test can feed any value, NaN included.

The bench model is trained on the server's own features over the committed synthetic
LOBSTER sample: the point is the model's shape (full 31-leaf trees, thresholds where
served rows fall), not its skill. Deterministic (fixed seeds);
onnxruntime must agree with LightGBM's own probabilities before anything is written.

Needs: lightgbm onnxmltools onnxruntime numpy (scripts/requirements.txt).
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)
from tickfeatures import (BENCH_FEATURES as FEATURES, classifier_manifest, feature_ranges, fixture_manifest,  # noqa: E402
                          read_lobster, stateful_rows)


def bench_model():
    import lightgbm as lgb
    import onnxruntime as ort
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    # The features the server computes over the committed synthetic LOBSTER sample (the
    # bit-exact twin), so thresholds sit where served rows fall; label: the mid's
    # direction 10 events ahead. The sample is small: each row is also jittered
    # into 5 copies so that every tree grows its 31 leaves.
    reqs = read_lobster(os.path.join(ROOT, "data", "sample", "SYNTH_2026-01-05_sample.zip"))
    rows, _ = stateful_rows(FEATURES, reqs, 10_000)
    base = np.array(rows, dtype=np.float64)
    mid = np.array([(r["bid_price"] + r["ask_price"]) / 2 for r in reqs])
    ahead = np.concatenate([mid[10:] - mid[:-10], np.zeros(10)])
    rng = np.random.default_rng(14)
    scale = base.std(axis=0) + 1e-9
    x = np.concatenate([base + rng.normal(scale=0.05, size=base.shape) * scale for _ in range(5)]).astype(np.float32)
    y = np.tile(np.sign(ahead).astype(int) + 1, 5)  # 0 sell, 1 flat, 2 buy
    f = len(FEATURES)
    clf = lgb.LGBMClassifier(n_estimators=100, num_leaves=31, learning_rate=0.05, min_child_samples=20,
                             verbose=-1, random_state=14)
    clf.fit(x, y)
    onx = convert_lightgbm(clf, initial_types=[("x", FloatTensorType([None, f]))], zipmap=False,
                           target_opset=9)
    out_dir = os.path.join(ROOT, "benches", "models")
    path = os.path.join(out_dir, "lgbm_100x31.onnx")
    data = onx.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    probe = x[rng.integers(0, len(x), 512)]
    theirs = sess.run(["probabilities"], {"x": probe})[0]
    ours = clf.predict_proba(probe)
    worst = float(np.abs(theirs - ours).max())
    assert worst < 1e-5, f"onnxruntime and LightGBM differ by {worst}"
    leaves = [t["num_leaves"] for t in clf.booster_.dump_model()["tree_info"]]
    assert len(leaves) == 300 and max(leaves) == 31, (len(leaves), max(leaves))
    with open(path, "wb") as fh:
        fh.write(data)
    desc = f"bench: LightGBM 100 rounds x 3 classes = {len(leaves)} trees, <= 31 leaves " \
           f"({sum(leaves)} leaves), 16 stateful features (trained on the synthetic sample)"
    with open(os.path.join(out_dir, "lgbm_100x31.toml"), "w") as fh:
        fh.write(classifier_manifest("export_trees.py", "lgbm_100x31", "lgbm_100x31.onnx", desc, FEATURES,
                                     ranges=feature_ranges(FEATURES, reqs, 10_000)))
    print(f"wrote {path} ({len(data)} bytes): {desc}; onnxruntime == LightGBM within {worst:.1e}")


def tree(tid, nodes):
    """nodes: (node id, mode, feature, threshold, true id, false id, missing tracks true)."""
    return [(tid,) + n for n in nodes]


def ensemble(op, rows, weights, **attrs):
    from onnx import helper
    cols = list(zip(*rows))
    return helper.make_node(
        op, ["x"], ["label", "scores"] if op == "TreeEnsembleClassifier" else ["scores"], domain="ai.onnx.ml",
        nodes_treeids=list(cols[0]), nodes_nodeids=list(cols[1]), nodes_modes=list(cols[2]),
        nodes_featureids=list(cols[3]), nodes_values=[float(v) for v in cols[4]],
        nodes_truenodeids=list(cols[5]), nodes_falsenodeids=list(cols[6]),
        nodes_missing_value_tracks_true=list(cols[7]), **weights, **attrs)


def write_fixture(name, node, outputs, manifest_output, extras):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    out_dir = os.path.join(ROOT, "tests", "fixtures", "models")
    outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, outputs])]
    if node.op_type == "TreeEnsembleClassifier":
        outs.insert(0, helper.make_tensor_value_info("label", TensorProto.INT64, [None]))
    mul = helper.make_node("Mul", ["scores", "two"], ["out"])
    graph = helper.make_graph([node, mul], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, extras])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, outputs])],
                              initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    # It must run in onnxruntime, NaN rows included.
    probe = np.array([[0.5] * extras, [np.nan] * extras], dtype=np.float32)
    ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["out"], {"x": probe})
    with open(os.path.join(out_dir, f"{name}.onnx"), "wb") as fh:
        fh.write(data)
    with open(os.path.join(out_dir, f"{name}.toml"), "w") as fh:
        fh.write(fixture_manifest("Written by scripts/export_trees.py --fixtures (hand-built ensemble, every node mode).",
                                  name, extras, "out", manifest_output))
    print(f"wrote tests/fixtures/models/{name}.onnx ({len(data)} bytes)")


def fixtures():
    # Classifier, 3 classes, 4 features: three trees using every comparison.
    rows = tree(0, [(0, "BRANCH_LEQ", 0, 0.25, 1, 2, 1), (1, "BRANCH_LT", 1, -0.5, 3, 4, 0),
                    (2, "BRANCH_GTE", 2, 1.0, 5, 6, 1), (3, "LEAF", 0, 0, 0, 0, 0), (4, "LEAF", 0, 0, 0, 0, 0),
                    (5, "LEAF", 0, 0, 0, 0, 0), (6, "BRANCH_GT", 3, 0.0, 7, 8, 0),
                    (7, "LEAF", 0, 0, 0, 0, 0), (8, "LEAF", 0, 0, 0, 0, 0)])
    rows += tree(1, [(0, "BRANCH_EQ", 0, 1.0, 1, 2, 0), (1, "LEAF", 0, 0, 0, 0, 0),
                     (2, "BRANCH_NEQ", 3, 2.0, 3, 4, 1), (3, "LEAF", 0, 0, 0, 0, 0), (4, "LEAF", 0, 0, 0, 0, 0)])
    rows += tree(2, [(0, "BRANCH_GT", 1, 0.75, 1, 2, 1), (1, "LEAF", 0, 0, 0, 0, 0),
                     (2, "BRANCH_LT", 2, -1.0, 3, 4, 1), (3, "LEAF", 0, 0, 0, 0, 0), (4, "LEAF", 0, 0, 0, 0, 0)])
    leaves = [(0, 3), (0, 4), (0, 5), (0, 7), (0, 8), (1, 1), (1, 3), (1, 4), (2, 1), (2, 3), (2, 4)]
    w = {"class_treeids": [], "class_nodeids": [], "class_ids": [], "class_weights": []}
    for k, (t, nid) in enumerate(leaves):
        for c in range(3) if k % 3 == 0 else [k % 3]:  # some leaves weigh every class, some one
            w["class_treeids"].append(t)
            w["class_nodeids"].append(nid)
            w["class_ids"].append(c)
            w["class_weights"].append(round(0.37 * ((k * 7 + c * 3) % 11) - 1.6, 3))
    node = ensemble("TreeEnsembleClassifier", rows, w, classlabels_int64s=[-1, 0, 1],
                    base_values=[0.1, -0.2, 0.05], post_transform="LOGISTIC")
    write_fixture("tree_modes", node, 3, 'kind = "classes"\nclasses = ["sell", "flat", "buy"]\n', 4)
    # Regressor averaging two trees, one target.
    rows = tree(0, [(0, "BRANCH_LEQ", 0, 0.0, 1, 2, 0), (1, "LEAF", 0, 0, 0, 0, 0), (2, "LEAF", 0, 0, 0, 0, 0)])
    rows += tree(1, [(0, "BRANCH_GTE", 1, 0.5, 1, 2, 1), (1, "LEAF", 0, 0, 0, 0, 0),
                     (2, "BRANCH_LT", 2, 0.1, 3, 4, 0), (3, "LEAF", 0, 0, 0, 0, 0), (4, "LEAF", 0, 0, 0, 0, 0)])
    rows += tree(2, [(0, "BRANCH_GT", 2, -0.25, 1, 2, 0), (1, "LEAF", 0, 0, 0, 0, 0), (2, "LEAF", 0, 0, 0, 0, 0)])
    w = {"target_treeids": [0, 0, 1, 1, 1, 2, 2], "target_nodeids": [1, 2, 1, 3, 4, 1, 2], "target_ids": [0] * 7,
         "target_weights": [1.5, -2.0, 3.0, -0.5, 0.25, 0.75, -0.125]}
    regression = 'kind = "regression"\ntarget = "mid_return_bps"\nflat_threshold = 0.5\nfull_confidence = 3.0\n'
    node = ensemble("TreeEnsembleRegressor", rows, w, n_targets=1, aggregate_function="AVERAGE", base_values=[0.125])
    write_fixture("tree_regressor", node, 1, regression, 3)
    # One tree of 48 leaves (more than a 32-bit leaf vector holds): a caterpillar on two features.
    rows, w = [], {"target_treeids": [], "target_nodeids": [], "target_ids": [], "target_weights": []}
    for k in range(47):
        mode = "BRANCH_LEQ" if k % 2 == 0 else "BRANCH_GT"
        rows.append((0, 2 * k, mode, k % 2, round(-1.7 + 0.05 * k, 2), 2 * k + 1, 2 * k + 2, int(k % 3 == 0)))
        rows.append((0, 2 * k + 1, "LEAF", 0, 0, 0, 0, 0))
    rows.append((0, 94, "LEAF", 0, 0, 0, 0, 0))
    for nid in [r[1] for r in rows if r[2] == "LEAF"]:
        w["target_treeids"].append(0)
        w["target_nodeids"].append(nid)
        w["target_ids"].append(0)
        w["target_weights"].append(round(0.01 * nid - 0.7, 3))
    write_fixture("tree_wide", ensemble("TreeEnsembleRegressor", rows, w, n_targets=1), 1, regression, 2)


if __name__ == "__main__":
    fixtures() if "--fixtures" in sys.argv[1:] else bench_model()
