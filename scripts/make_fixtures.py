#!/usr/bin/env python3
"""Make the engine's test fixtures: two small models of other shapes than the default
one, and parity files (requests + Python onnxruntime outputs) for all three.

    python3 scripts/make_fixtures.py

Writes tests/fixtures/models/{lgbm_direction,ridge_return,failing_gather,nonfinite_log,
stateful_linear,depth_linear,mlp_direction}.{onnx,toml} and tests/fixtures/parity/{lobster_direction,
lgbm_direction,ridge_return}.json, plus the twin's feature rows over the bundled samples
(stateful_features.json over the level-1 sample, depth_features.json over the 5-level one).
Training data for the fixture models is synthetic (seeded): they exist to pin
shapes and numerics, not to predict anything.
"""
import json
import math
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(__file__))
from tickfeatures import IMBALANCE_SCALE, feature_matrix, toml_list  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
PRICE_SCALE = 10_000


def random_requests(rng, n, n_extra):
    mid = rng.uniform(50.0, 500.0, n)
    spread = rng.integers(1, 40, n) / 100.0
    bid = np.round((mid - spread / 2) * PRICE_SCALE)
    ask = bid + np.round(spread * PRICE_SCALE)
    bsz = rng.integers(0, 5000, n)
    asz = rng.integers(0, 5000, n)
    asz[0] = bsz[0] = 0  # an empty book side pair: microprice falls back to mid
    tot = bsz + asz
    imb = np.trunc((bsz - asz) * IMBALANCE_SCALE / np.where(tot > 0, tot, 1))
    feats = rng.normal(0, 1, (n, n_extra)).astype(np.float32)
    return {
        "bid_price": bid.astype(np.int64), "ask_price": ask.astype(np.int64),
        "bid_size": bsz.astype(np.int64), "ask_size": asz.astype(np.int64),
        "book_imbalance": imb.astype(np.int64), "features": feats,
    }


def as_float_fields(r):
    return {k: (v.astype(np.float64) if k != "features" else v) for k, v in r.items()}


def decode(kind, out, r, cfg):
    """Mirror of src/manifest.rs output decoding: (direction, confidence, target_price)."""
    res = []
    for i in range(len(out)):
        mid2 = int(r["bid_price"][i]) + int(r["ask_price"][i])
        if kind == "classes":
            p = [float(x) for x in out[i]]
            j = max(range(len(p)), key=lambda c: (p[c], -c))  # first maximum
            dirs = {"sell": -1, "flat": 0, "buy": 1}
            res.append((dirs[cfg["classes"][j]], max(0, min(100, math.floor(100.0 * p[j] + 0.5))), mid2 // 2))
        else:
            y = float(out[i][0])
            mid = mid2 / 2.0
            d = 0 if abs(y) <= cfg["flat_threshold"] else (1 if y > 0 else -1)
            conf = max(0, min(100, math.floor(100.0 * abs(y) / cfg["full_confidence"] + 0.5)))
            res.append((d, conf, int(math.floor(mid * (1.0 + y / 1e4) + 0.5))))
    return res


def write_parity(name, onnx_path, manifest, r, input_name, output_name):
    x = feature_matrix(manifest["features"], as_float_fields(r), PRICE_SCALE, manifest.get("mean"), manifest.get("std"))
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = sess.run([output_name], {input_name: x})[0].reshape(len(x), -1)
    preds = decode(manifest["kind"], out, r, manifest)
    n_extra = r["features"].shape[1]
    cases = []
    for i in range(len(x)):
        cases.append({
            "request": {
                "symbol_id": i % 7, "request_id": 1000 + i,
                "bid_price": int(r["bid_price"][i]), "ask_price": int(r["ask_price"][i]),
                "bid_size": int(r["bid_size"][i]), "ask_size": int(r["ask_size"][i]),
                "book_imbalance": int(r["book_imbalance"][i]),
                "features": [float(v) for v in r["features"][i]][:n_extra],
            },
            "input": [float(v) for v in x[i]],
            "output": [float(v) for v in out[i]],
            "direction": preds[i][0], "confidence": preds[i][1], "target_price": preds[i][2],
        })
    os.makedirs(os.path.join(FIX, "parity"), exist_ok=True)
    with open(os.path.join(FIX, "parity", f"{name}.json"), "w") as f:
        json.dump({"model": name, "onnxruntime": ort.__version__, "cases": cases}, f, indent=1)
    print(f"{name}: {len(cases)} parity cases")


def lgbm_fixture(rng):
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    feats = ["book_imbalance", "spread_bps", "log_bid_size", "log_ask_size", "extra:0", "extra:1"]
    r = random_requests(rng, 3000, 2)
    x = feature_matrix(feats, as_float_fields(r), PRICE_SCALE)
    score = 2.0 * x[:, 0] + 0.5 * x[:, 4] - 0.3 * x[:, 5] + rng.normal(0, 0.5, len(x))
    y = np.digitize(score, [-0.7, 0.7])  # 0 sell, 1 flat, 2 buy
    clf = lgb.LGBMClassifier(n_estimators=30, num_leaves=8, learning_rate=0.2, verbose=-1, random_state=3)
    clf.fit(x, y)
    onx = convert_lightgbm(clf, initial_types=[("x", FloatTensorType([None, len(feats)]))], zipmap=False,
                           target_opset=15)
    path = os.path.join(FIX, "models", "lgbm_direction.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    out_name = [o.name for o in onx.graph.output if "prob" in o.name][0]
    manifest = {"features": feats, "kind": "classes", "classes": ["sell", "flat", "buy"]}
    with open(os.path.join(FIX, "models", "lgbm_direction.toml"), "w") as f:
        f.write(f"""# Fixture: LightGBM 3-class tree ensemble (onnxmltools), raw features, 2 extras.
[model]
name = "lgbm_direction"
version = 3
onnx = "lgbm_direction.onnx"
price_scale = {PRICE_SCALE}

[input]
name = "x"
features = {toml_list(feats)}

[output]
kind = "classes"
name = "{out_name}"
classes = ["sell", "flat", "buy"]
""")
    write_parity("lgbm_direction", path, manifest, random_requests(rng, 48, 2), "x", out_name)


def ridge_fixture(rng):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import Ridge

    feats = ["microprice_offset_bps", "size_imbalance", "extra:0"]
    r = random_requests(rng, 2000, 1)
    raw = feature_matrix(feats, as_float_fields(r), PRICE_SCALE).astype(np.float64)
    mean, std = raw.mean(axis=0), raw.std(axis=0)
    x = feature_matrix(feats, as_float_fields(r), PRICE_SCALE, mean, std)
    y = 1.5 * x[:, 0] + 0.8 * x[:, 1] - 0.4 * x[:, 2] + rng.normal(0, 0.2, len(x))
    reg = Ridge(alpha=1.0).fit(x, y)
    onx = to_onnx(reg, initial_types=[("features", FloatTensorType([None, len(feats)]))], target_opset=17)
    path = os.path.join(FIX, "models", "ridge_return.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    out_name = onx.graph.output[0].name
    cfg = {"features": feats, "mean": list(mean), "std": list(std), "kind": "regression",
           "flat_threshold": 0.5, "full_confidence": 3.0}
    with open(os.path.join(FIX, "models", "ridge_return.toml"), "w") as f:
        f.write(f"""# Fixture: ridge regressor of the mid return in bps, 3 features (1 extra), normalised.
[model]
name = "ridge_return"
version = 2
onnx = "ridge_return.onnx"
price_scale = {PRICE_SCALE}

[input]
name = "features"
features = {toml_list(feats)}
mean = {toml_list(mean)}
std = {toml_list(std)}

[output]
kind = "regression"
name = "{out_name}"
target = "mid_return_bps"
flat_threshold = 0.5
full_confidence = 3.0
""")
    write_parity("ridge_return", path, cfg, random_requests(rng, 48, 1), "features", out_name)


def failing_fixture():
    """A model that fails at run time on purpose: extra:0 is used as an index into a
    3-element table, so a request with extra 0 outside 0..2 makes ONNX Runtime's Gather
    fail. Used to test that a failed model run answers ML_ERR_MODEL_FAILURE."""
    import onnx
    from onnx import TensorProto, helper

    table = helper.make_tensor("table", TensorProto.FLOAT, [3], [0.1, -0.9, 0.7])
    nodes = [
        helper.make_node("Cast", ["x"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "idx"], ["y"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "failing_gather",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(FIX, "models", "failing_gather.onnx"))
    with open(os.path.join(FIX, "models", "failing_gather.toml"), "w") as f:
        f.write(f"""# Fixture: fails at run time when extra:0 is outside 0..2 (Gather index out of range).
[model]
name = "failing_gather"
version = 1
onnx = "failing_gather.onnx"
price_scale = {PRICE_SCALE}

[input]
name = "x"
features = ["extra:0"]

[output]
kind = "regression"
name = "y"
target = "mid_return_bps"
flat_threshold = 0.5
full_confidence = 1.0
""")
    sess = ort.InferenceSession(os.path.join(FIX, "models", "failing_gather.onnx"), providers=["CPUExecutionProvider"])
    assert abs(sess.run(None, {"x": np.array([[2.0]], dtype=np.float32)})[0][0][0] - 0.7) < 1e-6
    try:
        sess.run(None, {"x": np.array([[7.0]], dtype=np.float32)})
        raise SystemExit("failing_gather did not fail on an out-of-range index")
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        print(f"failing_gather: fails as intended ({type(e).__name__})")


def nonfinite_fixture():
    """A classifier whose output is log(extra:0) in every column: NaN below 0, -inf at 0,
    finite above. The server must answer ML_ERR_MODEL_FAILURE for the non-finite rows."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Log", ["x"], ["l"]),
        helper.make_node("Concat", ["l", "l", "l"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "nonfinite_log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(FIX, "models", "nonfinite_log.onnx"))
    with open(os.path.join(FIX, "models", "nonfinite_log.toml"), "w") as f:
        f.write(f"""# Fixture: outputs log(extra:0) in every class column: NaN for extra:0 < 0, -inf at 0.
[model]
name = "nonfinite_log"
version = 1
onnx = "nonfinite_log.onnx"
price_scale = {PRICE_SCALE}

[input]
name = "x"
features = ["extra:0"]

[output]
kind = "classes"
name = "probabilities"
classes = ["sell", "flat", "buy"]
""")
    sess = ort.InferenceSession(os.path.join(FIX, "models", "nonfinite_log.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.array([[-1.0], [0.0], [1.0]], dtype=np.float32)})[0]
    assert np.isnan(y[0]).all() and np.isneginf(y[1]).all() and (y[2] == 0).all(), y
    print("nonfinite_log: NaN, -inf and 0 as intended")


def linear_classifier(name, w, features, mean, std, what):
    """tests/fixtures/models/<name>.{onnx,toml}: softmax(x·w + b) over `features`."""
    import onnx
    from onnx import TensorProto, helper

    n = len(features)
    b = np.array([0.1, -0.2, 0.1], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [n, 3], w.flatten().tolist()),
                     helper.make_tensor("b", TensorProto.FLOAT, [3], b.tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(FIX, "models", f"{name}.onnx"))
    write_manifest(name, what, features, mean, std)


def write_manifest(name, what, features, mean, std):
    """tests/fixtures/models/<name>.toml: a sell/flat/buy classifier reading input `x`."""
    with open(os.path.join(FIX, "models", f"{name}.toml"), "w") as f:
        f.write(f"""# Fixture: {what} (made by scripts/make_fixtures.py).
[model]
name = "{name}"
version = 1
onnx = "{name}.onnx"
price_scale = {PRICE_SCALE}

[input]
name = "x"
features = {toml_list(features)}
mean = {toml_list(mean)}
std = {toml_list(std)}

[output]
kind = "classes"
name = "probabilities"
classes = ["sell", "flat", "buy"]
""")


def write_feature_parity(name, features, mean, std, reqs, rows, warming):
    """tests/fixtures/parity/<name>.json: the requests, and the twin's rows as float32 bits."""
    bits = [[int(np.float32(v).view(np.uint32)) for v in row] for row in rows]
    with open(os.path.join(FIX, "parity", f"{name}.json"), "w") as f:
        json.dump({"features": features, "mean": mean, "std": std, "price_scale": PRICE_SCALE,
                   "requests": [[r["timestamp_ns"], r["bid_price"], r["ask_price"], r["bid_size"], r["ask_size"],
                                 r["book_imbalance"]] for r in reqs],
                   "rows": bits, "warming": warming}, f, separators=(",", ":"))
    print(f"{name}: {len(rows)} rows of {len(features)} features, {sum(warming)} warming")


STATEFUL_FEATURES = ["spread_bps", "size_imbalance", "mid_return_bps(5)", "ofi(10)", "realized_vol_bps(20)",
                     "spread_bps_mean(8)", "ewma_mid_return_bps(4)", "time_since_last_ms", "event_rate(100)",
                     "mid_return_bps(1)"]


def stateful_fixture(rng):
    """A linear softmax classifier over stateless and stateful features, and the twin's
    rows (as float32 bits) over the first 3000 events of the bundled synthetic LOBSTER
    sample: the Rust state and features must give the same bits."""
    from tickfeatures import read_lobster, stateful_rows

    n = len(STATEFUL_FEATURES)
    w = rng.normal(0, 0.3, size=(n, 3)).astype(np.float32)
    mean = [2.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 5.0, 50.0, 0.0]
    std = [1.0, 0.5, 2.0, 500.0, 2.0, 1.0, 1.0, 10.0, 50.0, 1.0]
    linear_classifier("stateful_linear", w, STATEFUL_FEATURES, mean, std,
                      "a linear softmax over stateless and stateful features")
    reqs = read_lobster(os.path.join(ROOT, "data", "sample", "SYNTH_2026-01-05_sample.zip"), 3000)
    rows, warming = stateful_rows(STATEFUL_FEATURES, reqs, PRICE_SCALE, mean, std)
    write_feature_parity("stateful_features", STATEFUL_FEATURES, mean, std, reqs, rows, warming)


DEPTH_FEATURES = ["size_imbalance", "depth_imbalance(2)", "depth_imbalance(5)", "bid_px(2)", "ask_px(3)",
                  "bid_sz(4)", "ask_sz(5)", "bid_sz(1)", "ofi(10)", "mid_return_bps(5)"]


def depth_fixture(rng):
    """A linear softmax over 5-level depth and stateful features, and the twin's rows
    over the first 3000 events of the bundled 5-level synthetic LOBSTER sample."""
    from tickfeatures import read_lobster, stateful_rows

    n = len(DEPTH_FEATURES)
    mean = [0.0, 0.0, 0.0, 99.98, 100.03, 250.0, 250.0, 250.0, 0.0, 0.0]
    std = [0.5, 0.5, 0.5, 0.3, 0.3, 150.0, 150.0, 150.0, 500.0, 2.0]
    linear_classifier("depth_linear", rng.normal(0, 0.3, size=(n, 3)).astype(np.float32), DEPTH_FEATURES, mean,
                      std, "a linear softmax over book-depth and stateful features")
    reqs = read_lobster(os.path.join(ROOT, "data", "sample", "SYNTH_2026-01-05_sample_5.zip"), 3000)
    rows, warming = stateful_rows(DEPTH_FEATURES, reqs, PRICE_SCALE, mean, std)
    write_feature_parity("depth_features", DEPTH_FEATURES, mean, std, reqs, rows, warming)


MLP_FEATURES = ["bid_price", "ask_price", "bid_size", "ask_size", "book_imbalance", "mid", "spread", "spread_bps",
                "microprice", "microprice_offset_bps", "size_imbalance", "log_bid_size", "log_ask_size",
                "log_size_ratio", "extra:0", "extra:1"]


def mlp_fixture(rng):
    """An MLP 16 -> 64 -> 64 -> 3 (Gemm, Relu, Gemm, Relu, Gemm, Softmax; random weights):
    the dense chain the native backend runs, checked against ONNX Runtime at load."""
    import onnx
    from onnx import TensorProto, helper

    sizes = [16, 64, 64, 3]
    nodes, inits, x = [], [], "x"
    for k, (i, o) in enumerate(zip(sizes, sizes[1:])):
        w = rng.normal(0, 1.0 / math.sqrt(i), size=(o, i)).astype(np.float32)
        b = rng.normal(0, 0.1, size=o).astype(np.float32)
        inits += [helper.make_tensor(f"w{k}", TensorProto.FLOAT, [o, i], w.flatten().tolist()),
                  helper.make_tensor(f"b{k}", TensorProto.FLOAT, [o], b.tolist())]
        nodes.append(helper.make_node("Gemm", [x, f"w{k}", f"b{k}"], [f"z{k}"], transB=1))
        x = f"z{k}"
        if k < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{k}"]))
            x = f"r{k}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=-1))
    graph = helper.make_graph(nodes, "mlp_direction",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(FIX, "models", "mlp_direction.onnx"))
    mean = [100.0, 100.0, 300.0, 300.0, 0.0, 100.0, 0.05, 5.0, 100.0, 0.0, 0.0, 5.0, 5.0, 0.0, 0.0, 0.0]
    std = [50.0, 50.0, 300.0, 300.0, 0.5, 50.0, 0.05, 5.0, 50.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    write_manifest("mlp_direction", "an MLP 16 -> 64 -> 64 -> 3 with random weights", MLP_FEATURES, mean, std)
    print("mlp_direction: 16 -> 64 -> 64 -> 3")


def default_model_parity(rng):
    import tomllib
    with open(os.path.join(ROOT, "models", "lobster_direction.toml"), "rb") as f:
        m = tomllib.load(f)
    cfg = {"features": m["input"]["features"], "mean": m["input"]["mean"], "std": m["input"]["std"],
           "kind": "classes", "classes": m["output"]["classes"]}
    r = random_requests(rng, 48, 0)
    # Spreads and prices near the training data's (AMZN ~ $220, 1-20 cent spreads).
    write_parity("lobster_direction", os.path.join(ROOT, "models", "lobster_direction.onnx"), cfg, r,
                 m["input"]["name"], m["output"]["name"])


if __name__ == "__main__":
    os.makedirs(os.path.join(FIX, "models"), exist_ok=True)
    rng = np.random.default_rng(20261122)
    lgbm_fixture(rng)
    ridge_fixture(rng)
    default_model_parity(rng)
    failing_fixture()
    nonfinite_fixture()
    stateful_fixture(rng)
    depth_fixture(np.random.default_rng(20261123))
    mlp_fixture(np.random.default_rng(20261124))
