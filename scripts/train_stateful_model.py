#!/usr/bin/env python3
"""Train tickinfer's stateful models on a LOBSTER day, with the default model's protocol.

    python3 scripts/train_stateful_model.py ../shared/data/lobster/LOBSTER_SampleFile_AMZN_2012-06-21_1.zip
    python3 scripts/train_stateful_model.py --twin DAY.zip   # rows from the Python twin instead

Rows come from the server's own code: `tickinfer features` (target/release/tickinfer, or
`--tickinfer BIN`) writes every event's model row and label as Parquet, read back with pyarrow
(scripts/tickparquet.py): run once for the raw rows the train-set mean/std come from, once for the
rows the server normalises with them. `--twin` computes the same rows with
`tickfeatures.stateful_rows`, the server's bit-exact twin, over the stream exactly as
`tickinfer replay` sends it (tests/dataset.rs holds the two equal bit for bit): the same model
either way. `--skip-lstm` leaves the LSTM out (no torch; its files are left as they are).
Label: sign of the mid change 10 events ahead (sell / flat / buy).
Split by time: first 60% train, next 10% validation (model choice), last 30% test (reported once).

Candidates, all scored on the same split:
  * `stateless logistic`: the default model's recipe (6 top-of-book features): the bar to beat;
  * `stateful logistic`, `stateful lightgbm`: the same plus order flow, returns, volatility, rates;
  * `lstm`: a one-layer LSTM over the stateful rows, run as the server runs it (state carried
    through the whole day, one step per event); exported as a step model and a window model.
The best stateful candidate on validation is refit on train+validation and shipped as
models/lobster_stateful.{onnx,toml,report.md}; the LSTM is shipped as
models/lobster_lstm_{step,window}.{onnx,toml} whatever its rank, for the sequence-model demo.
Each manifest's [label] section carries the label rule and the model's own test-set macro-F1
(the server's live signal quality scores against them).

Needs: numpy pyarrow scikit-learn skl2onnx lightgbm onnxmltools torch onnx onnxruntime (scripts/requirements.txt).
"""
import argparse
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tickparquet  # noqa: E402
from tickfeatures import classifier_manifest, read_lobster, stateful_rows  # noqa: E402

PRICE_SCALE = 10_000
CLASSES = ["sell", "flat", "buy"]
STATELESS = ["spread_bps", "size_imbalance", "microprice_offset_bps", "log_bid_size", "log_ask_size",
             "log_size_ratio"]
STATEFUL = STATELESS + ["mid_return_bps(1)", "mid_return_bps(10)", "mid_return_bps(50)", "ofi(1)", "ofi(10)",
                        "ofi(50)", "realized_vol_bps(50)", "spread_bps_mean(20)", "ewma_mid_return_bps(10)",
                        "time_since_last_ms", "event_rate(100)", "event_rate(1000)"]
LSTM_HIDDEN, LSTM_WINDOW, LSTM_CHUNK = 32, 32, 64


def labels(reqs, k):
    mid = np.array([(r["bid_price"] + r["ask_price"]) / 2.0 for r in reqs])
    y = np.sign(np.roll(mid, -k) - mid).astype(int) + 1  # 0 sell, 1 flat, 2 buy
    return y[:-k], len(mid) - k


def rows(names, reqs, mean=None, std=None):
    r, _ = stateful_rows(names, reqs, PRICE_SCALE, mean, std)
    return np.array(r, dtype=np.float32)


def normalised(names, reqs, i_tr):
    raw = rows(names, reqs).astype(np.float64)
    mean, std = raw[:i_tr].mean(axis=0), raw[:i_tr].std(axis=0)
    std[std == 0] = 1.0
    return rows(names, reqs, list(mean), list(std)), mean, std


def train_lstm(x, y, i_fit, seed=11, epochs=8):
    """An LSTM trained on chunks of the first `i_fit` events (truncated BPTT, zero initial state)."""
    import torch
    from export_lstm import LstmClassifier
    torch.manual_seed(seed)
    m = LstmClassifier(x.shape[1], hidden=LSTM_HIDDEN, layers=1)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    n = (i_fit // LSTM_CHUNK) * LSTM_CHUNK
    xs = torch.tensor(x[:n]).reshape(-1, LSTM_CHUNK, x.shape[1])
    ys = torch.tensor(y[:n]).reshape(-1, LSTM_CHUNK)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=g).split(32):
            # Each chunk starts from zero state: no loss on its first steps, where the state is young.
            logits = m(xs[idx])[:, 8:]
            loss = loss_fn(logits.reshape(-1, 3), ys[idx][:, 8:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def lstm_stream_predict(m, x):
    """Class of every event, the state carried through the whole stream (as the step model serves)."""
    import torch
    with torch.no_grad():
        y, _ = m.lstm(torch.tensor(x)[None])
        return m.head(y[0]).argmax(dim=1).numpy()


def lstm_window_predict(m, x, window, start):
    """Class of every event from `start` on as the window model serves it: the LSTM run from zero
    state over the event's last `window` rows (its own included)."""
    import torch
    idx = np.arange(start, len(x))[:, None] + np.arange(-window + 1, 1)[None, :]
    with torch.no_grad():
        y, _ = m.lstm(torch.tensor(x[idx]))
        return m.head(y[:, -1]).argmax(dim=1).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="LOBSTER zip or *_message_N.csv")
    ap.add_argument("--k", type=int, default=10, help="label horizon in events (default 10)")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "models"))
    ap.add_argument("--skip-lstm", action="store_true", help="leave the LSTM candidate and its export out (no torch)")
    tickparquet.add_arguments(ap)
    args = ap.parse_args()

    if not args.twin:
        tickinfer = tickparquet.binary(args.tickinfer)
        x0, mean0, std0, y, n, _ = tickparquet.normalised_rows(tickinfer, args.input, STATELESS, args.k)
        x1, mean1, std1, _, _, _ = tickparquet.normalised_rows(tickinfer, args.input, STATEFUL, args.k)
        i_tr, i_va = int(n * 0.6), int(n * 0.7)
    else:
        reqs = read_lobster(args.input)
        y, n = labels(reqs, args.k)
        i_tr, i_va = int(n * 0.6), int(n * 0.7)
        x0, mean0, std0 = normalised(STATELESS, reqs, i_tr)
        x1, mean1, std1 = normalised(STATEFUL, reqs, i_tr)
    x0, x1 = x0[:n], x1[:n]
    f1 = lambda yt, p: f1_score(yt, p, average="macro")  # noqa: E731

    import lightgbm as lgb
    make = {
        "stateless logistic": (lambda: LogisticRegression(max_iter=2000), x0),
        "stateful logistic": (lambda: LogisticRegression(max_iter=2000), x1),
        "stateful lightgbm": (lambda: lgb.LGBMClassifier(n_estimators=100, num_leaves=15, learning_rate=0.05,
                                                         min_child_samples=50, subsample=0.8, subsample_freq=1,
                                                         colsample_bytree=0.8, random_state=7, verbose=-1), x1),
    }
    val, test, fitted = {}, {}, {}
    for key, (new, x) in make.items():
        clf = new().fit(x[:i_tr], y[:i_tr])
        val[key] = f1(y[i_tr:i_va], clf.predict(x[i_tr:i_va]))
        clf = new().fit(x[:i_va], y[:i_va])  # refit on train + validation, test once
        fitted[key] = clf
        p = clf.predict(x[i_va:])
        test[key] = (accuracy_score(y[i_va:], p), f1(y[i_va:], p))
    if not args.skip_lstm:
        lstm = train_lstm(x1, y, i_tr)
        p = lstm_stream_predict(lstm, x1)
        val["lstm"] = f1(y[i_tr:i_va], p[i_tr:i_va])
        lstm = train_lstm(x1, y, i_va)
        p = lstm_stream_predict(lstm, x1)[i_va:]
        test["lstm"] = (accuracy_score(y[i_va:], p), f1(y[i_va:], p))
        # The window model's own test score (the same weights over the last LSTM_WINDOW rows only):
        # the reference its manifest carries for live signal quality.
        lstm_window_f1 = f1(y[i_va:], lstm_window_predict(lstm, x1, LSTM_WINDOW, i_va)[:n - i_va])
    else:
        lstm_window_f1 = float("nan")
    best = max((k for k in val if k != "stateless logistic"), key=val.get)
    if best == "lstm":  # the LSTM ships anyway as its own pair; the single-row default stays a table model
        best = max((k for k in val if k not in ("stateless logistic", "lstm")), key=val.get)

    import onnxruntime as ort
    os.makedirs(args.out, exist_ok=True)
    name = "lobster_stateful"
    onnx_path = os.path.join(args.out, f"{name}.onnx")
    clf = fitted[best]
    if "lightgbm" in best:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType
        onx = convert_lightgbm(clf, initial_types=[("x", FloatTensorType([None, len(STATEFUL)]))], zipmap=False,
                               target_opset=15)
    else:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
        onx = to_onnx(clf, initial_types=[("x", FloatTensorType([None, len(STATEFUL)]))],
                      options={id(clf): {"zipmap": False}}, target_opset=17)
    out_name = [o.name for o in onx.graph.output if "prob" in o.name][0]
    with open(onnx_path, "wb") as fh:
        fh.write(onx.SerializeToString())
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    agree = float((sess.run([out_name], {"x": x1[i_va:]})[0].argmax(axis=1) == clf.predict(x1[i_va:])).mean())
    with open(os.path.join(args.out, f"{name}.toml"), "w") as fh:
        fh.write(classifier_manifest(
            "train_stateful_model.py", name, f"{name}.onnx",
            f"{best} direction classifier on stateful LOBSTER features, label = mid direction {args.k} events ahead",
            STATEFUL, mean1, std1, output=out_name, horizon=args.k, reference_macro_f1=test[best][1]))

    if not args.skip_lstm:
        from export_lstm import write_pair
        write_pair(lstm, STATEFUL, LSTM_WINDOW, args.out, "lobster_lstm",
                   f"LSTM {LSTM_HIDDEN} on stateful LOBSTER features, label = mid direction {args.k} events ahead",
                   mean=list(mean1), std=list(std1), warmup=LSTM_WINDOW, horizon=args.k,
                   check_rows=x1[i_va:i_va + 4 * LSTM_WINDOW], writer="train_stateful_model.py",
                   reference_macro_f1=(test["lstm"][1], lstm_window_f1))

    FEATURES_BY = ("`tickinfer features` (the server's own code)" if not args.twin
                   else "`tickfeatures.stateful_rows` (the server's bit-exact twin)")
    lstm_line = (f"The LSTM ships as `lobster_lstm_step` / `lobster_lstm_window` (window {LSTM_WINDOW}) for the "
                 f"sequence-model demo;\nthe window model, the same weights over the last {LSTM_WINDOW} rows only, "
                 f"scores test macro-F1 {lstm_window_f1:.3f}." if not args.skip_lstm
                 else "The LSTM was not trained in this run (`--skip-lstm`): its files were left as they were.")
    table = "\n".join(f"| {k}{' (shipped)' if k == best else ''} | {val[k]:.3f} | {test[k][0]:.3f} | {test[k][1]:.3f} |"
                      for k in val)
    report = f"""# {name}: out-of-sample report

Written by `scripts/train_stateful_model.py` from `{os.path.basename(args.input)}`.

- Data: {n} events as `tickinfer replay` sends them (halts and one-sided books skipped).
- Label: sign of the mid-price change {args.k} events ahead: sell / flat / buy.
- Features ({len(STATEFUL)}), computed by {FEATURES_BY}:
  {", ".join(STATEFUL)}; normalised with train-set mean/std (in the manifest).
- Split by time: train {i_tr} events, validation {i_va - i_tr} (model choice), test {n - i_va} (last 30%, reported once).
- Every candidate is refit on train+validation before its one test score. The LSTM (hidden {LSTM_HIDDEN}) is trained on
  chunks of {LSTM_CHUNK} events and scored as the step model serves it: state carried through the whole stream.

| candidate | validation macro-F1 | test accuracy | test macro-F1 |
|---|---:|---:|---:|
{table}

Shipped as `{name}`: **{best}**, the best stateful table model on validation.
{lstm_line}

ONNX export agrees with the trained model on {agree:.2%} of test predictions (onnxruntime {ort.__version__}).
"""
    with open(os.path.join(args.out, f"{name}.report.md"), "w") as fh:
        fh.write(report)
    print(report)


if __name__ == "__main__":
    main()
