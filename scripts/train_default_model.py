#!/usr/bin/env python3
"""Train tickinfer's default model: a small direction classifier on LOBSTER top of book.

    python3 scripts/train_default_model.py ../shared/data/lobster/LOBSTER_SampleFile_AMZN_2012-06-21_1.zip
    python3 scripts/train_default_model.py path/to/TICKER_..._message_N.csv   # orderbook file found beside it
    python3 scripts/train_default_model.py --twin DAY.zip   # rows from the Python twin instead

Rows come from the server's own code: `tickinfer features` (target/release/tickinfer, or
`--tickinfer BIN`) writes every event's model row and label as Parquet (scripts/tickparquet.py);
`--twin` computes them with the Python twin from the files directly (same rows, same labels on
the sample day: tests/dataset.rs holds the rows bit-equal).

Label: direction of the mid price k events ahead (sell / flat / buy). Split by time:
first 60% train, next 10% validation (model choice), last 30% test (reported once).
Writes models/<name>.onnx, models/<name>.toml (manifest, with the label rule and the test-set
macro-F1 in its [label] section: the server's live signal quality scores against them) and
models/<name>.report.md.
Needs: numpy pyarrow scikit-learn skl2onnx onnx onnxruntime (see scripts/requirements.txt).
"""
import argparse
import io
import os
import sys
import zipfile

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tickparquet  # noqa: E402
from tickfeatures import feature_matrix, label_section, toml_list  # noqa: E402

PRICE_SCALE = 10_000  # LOBSTER prices are USD x 10000
DUMMY = 9_999_999_999
FEATURES = ["spread_bps", "size_imbalance", "microprice_offset_bps", "log_bid_size", "log_ask_size", "log_size_ratio"]
CLASSES = ["sell", "flat", "buy"]


def read_lobster(path):
    """(messages, orderbook) arrays from a LOBSTER zip or message CSV (+ its orderbook beside it)."""
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            msg = next(n for n in z.namelist() if "_message_" in n)
            book = msg.replace("_message_", "_orderbook_")
            m = np.loadtxt(io.BytesIO(z.read(msg)), delimiter=",")
            b = np.loadtxt(io.BytesIO(z.read(book)), delimiter=",")
    else:
        book = path.replace("_message_", "_orderbook_")
        m = np.loadtxt(path, delimiter=",")
        b = np.loadtxt(book, delimiter=",")
    assert len(m) == len(b), "message and orderbook files must have the same number of rows"
    return m, b


def build(m, b, k):
    # Level 1 columns: ask price, ask size, bid price, bid size.
    ask, asz, bid, bsz = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    ok = (m[:, 1] != 7) & (np.abs(ask) != DUMMY) & (np.abs(bid) != DUMMY) & (bid > 0) & (ask > bid)
    mid = (ask + bid) / 2.0
    fut = np.roll(mid, -k)
    valid = ok & np.roll(ok, -k)
    valid[-k:] = False
    y = np.sign(fut - mid).astype(int) + 1  # 0 sell, 1 flat, 2 buy
    tot = bsz + asz
    r = {
        "bid_price": bid[valid], "ask_price": ask[valid], "bid_size": bsz[valid], "ask_size": asz[valid],
        "book_imbalance": np.trunc((bsz - asz)[valid] * 1e6 / np.where(tot > 0, tot, 1)[valid]),
        "features": np.zeros((valid.sum(), 0)),
    }
    return r, y[valid], m[valid, 0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="LOBSTER zip or *_message_N.csv")
    ap.add_argument("--k", type=int, default=10, help="label horizon in events (default 10)")
    ap.add_argument("--name", default="lobster_direction")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "models"))
    tickparquet.add_arguments(ap)
    args = ap.parse_args()

    if args.twin:
        m, b = read_lobster(args.input)
        r, y, t = build(m, b, args.k)
        n = len(y)
        i_tr = int(n * 0.6)
        raw = feature_matrix(FEATURES, r, PRICE_SCALE).astype(np.float64)
        mean, std = raw[:i_tr].mean(axis=0), raw[:i_tr].std(axis=0)
        std[std == 0] = 1.0
        x = feature_matrix(FEATURES, r, PRICE_SCALE, mean, std)
        rows_by = "the Python twin (`tickfeatures.feature_matrix`)"
    else:
        x, mean, std, y, n, ts = tickparquet.normalised_rows(tickparquet.binary(args.tickinfer), args.input,
                                                              FEATURES, args.k)
        t = (ts % 86_400_000_000_000) / 1e9  # seconds after midnight, as LOBSTER writes them
        rows_by = "`tickinfer features` (the server's own code)"
    i_tr, i_va = int(n * 0.6), int(n * 0.7)
    xtr, ytr, xva, yva, xte, yte = x[:i_tr], y[:i_tr], x[i_tr:i_va], y[i_tr:i_va], x[i_va:], y[i_va:]

    candidates = {
        "logistic": LogisticRegression(max_iter=2000, C=1.0),
        "mlp16": MLPClassifier(hidden_layer_sizes=(16,), max_iter=400, random_state=7, early_stopping=True),
    }
    scores = {}
    for key, clf in candidates.items():
        clf.fit(xtr, ytr)
        scores[key] = f1_score(yva, clf.predict(xva), average="macro")
    best = max(scores, key=scores.get)
    clf = candidates[best]
    # Refit the chosen model on train + validation, then evaluate once on test.
    clf.fit(x[:i_va], y[:i_va])
    pred = clf.predict(xte)
    majority = np.bincount(y[:i_va], minlength=3).argmax()
    acc, f1 = accuracy_score(yte, pred), f1_score(yte, pred, average="macro")
    base_acc = accuracy_score(yte, np.full_like(yte, majority))
    base_f1 = f1_score(yte, np.full_like(yte, majority), average="macro")

    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))],
                  options={id(clf): {"zipmap": False}}, target_opset=17)
    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, f"{args.name}.onnx")
    with open(onnx_path, "wb") as f:
        f.write(onx.SerializeToString())

    # Check the exported graph against sklearn on the test set.
    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    p_onnx = sess.run(["probabilities"], {"input": xte})[0]
    agree = float((p_onnx.argmax(axis=1) == pred).mean())

    manifest = f"""# Manifest of the default model (written by scripts/train_default_model.py).
[model]
name = "{args.name}"
version = 1
onnx = "{args.name}.onnx"
price_scale = {PRICE_SCALE}
description = "{best} direction classifier, LOBSTER top of book, label = mid direction {args.k} events ahead"

[input]
name = "input"
features = {toml_list(FEATURES)}
mean = {toml_list(mean)}
std = {toml_list(std)}

[output]
kind = "classes"
name = "probabilities"
classes = {toml_list(CLASSES)}
{label_section(args.k, f1)}"""
    with open(os.path.join(args.out, f"{args.name}.toml"), "w") as f:
        f.write(manifest)

    def balance(v):
        c = np.bincount(v, minlength=3) / len(v)
        return ", ".join(f"{CLASSES[i]} {c[i]:.1%}" for i in range(3))

    report = f"""# {args.name}: out-of-sample report

Written by `scripts/train_default_model.py` from `{os.path.basename(args.input)}`.

- Data: {n} usable events (one-sided books and trading halts dropped), times {t[0]:.0f}s-{t[-1]:.0f}s after midnight.
- Label: sign of the mid-price change {args.k} events ahead: sell / flat / buy.
- Features ({len(FEATURES)}), computed by {rows_by}: {", ".join(FEATURES)}; normalised with train-set mean/std (in the manifest).
- Split by time: train {i_tr} events, validation {i_va - i_tr} (model choice), test {n - i_va} (last 30%, reported once).
- Candidates on validation (macro-F1): {", ".join(f"{k_} {v:.3f}" for k_, v in scores.items())} -> chose **{best}**, refit on train+validation.

| test set ({n - i_va} events) | accuracy | macro-F1 |
|---|---:|---:|
| {best} | {acc:.3f} | {f1:.3f} |
| always-majority baseline ({CLASSES[majority]}) | {base_acc:.3f} | {base_f1:.3f} |

Class balance: train+validation {balance(y[:i_va])}; test {balance(yte)}.

ONNX export agrees with scikit-learn on {agree:.2%} of test predictions (onnxruntime {ort.__version__}).
"""
    with open(os.path.join(args.out, f"{args.name}.report.md"), "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
