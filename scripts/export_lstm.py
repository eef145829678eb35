#!/usr/bin/env python3
"""Export one PyTorch LSTM classifier two ways, for tickinfer's sequence models:

* **step** (`<name>_step.onnx`): one recurrent step per request.
  Inputs  x [batch, F], h_in [batch, L*H], c_in [batch, L*H];
  outputs probabilities [batch, 3], h_out [batch, L*H], c_out [batch, L*H].
  tickinfer carries h and c per symbol between requests (manifest `[sequence] kind = "recurrent"`).
  PyTorch keeps LSTM state as [layers, batch, hidden]; the wrapper reshapes it to the
  batch-leading [batch, layers*hidden] tickinfer binds without a copy per layer.
* **window** (`<name>_window.onnx`): the whole window from zero state.
  Input x [batch, K, F] (oldest row first); output probabilities [batch, 3]
  (manifest `[sequence] kind = "window"`, `window = K`).

Both share the same weights, so over the same K rows from zero state they give the same
probabilities; `check_step_equals_window` proves it with onnxruntime before anything is written.

    python3 scripts/export_lstm.py --fixtures   # tests/fixtures/models/lstm_{step,window}.* (hidden 8)
    python3 scripts/export_lstm.py --bench      # benches/models/lstm_{h32,h64,2x128}_step.* + h32 window

Needs: torch onnx onnxruntime numpy (scripts/requirements.txt).
"""
import argparse
import os
import sys

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)
from tickfeatures import BENCH_FEATURES, classifier_manifest, feature_ranges, read_lobster  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "sample", "SYNTH_2026-01-05_sample.zip")

OPSET = 17


class LstmClassifier(nn.Module):
    """LSTM over feature rows, softmax head on the last hidden state."""

    def __init__(self, features, hidden, layers, classes=3):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        self.hidden, self.layers = hidden, layers

    def forward(self, x):  # x [batch, steps, F] -> logits of every step [batch, steps, classes]
        y, _ = self.lstm(x)
        return self.head(y)


class Step(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, h_in, c_in):
        b, L, H = x.shape[0], self.m.layers, self.m.hidden
        h = h_in.reshape(b, L, H).transpose(0, 1).contiguous()
        c = c_in.reshape(b, L, H).transpose(0, 1).contiguous()
        y, (h2, c2) = self.m.lstm(x.unsqueeze(1), (h, c))
        p = torch.softmax(self.m.head(y[:, -1]), dim=-1)
        return p, h2.transpose(0, 1).reshape(b, L * H), c2.transpose(0, 1).reshape(b, L * H)


class Window(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        y, _ = self.m.lstm(x)
        return torch.softmax(self.m.head(y[:, -1]), dim=-1)


def export(model, features, window, out_dir, name):
    """Write <name>_step.onnx and <name>_window.onnx; return their paths."""
    model = model.eval()
    F, S = features, model.layers * model.hidden
    step_path = os.path.join(out_dir, f"{name}_step.onnx")
    window_path = os.path.join(out_dir, f"{name}_window.onnx")
    with torch.no_grad():
        torch.onnx.export(Step(model), (torch.zeros(2, F), torch.zeros(2, S), torch.zeros(2, S)), step_path,
                          input_names=["x", "h_in", "c_in"], output_names=["probabilities", "h_out", "c_out"],
                          dynamic_axes={k: {0: "batch"} for k in ["x", "h_in", "c_in", "probabilities", "h_out",
                                                                   "c_out"]},
                          opset_version=OPSET, dynamo=False)
        torch.onnx.export(Window(model), (torch.zeros(2, window, F),), window_path, input_names=["x"],
                          output_names=["probabilities"],
                          dynamic_axes={"x": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return step_path, window_path


def check_step_equals_window(step_path, window_path, rows, window, tol=1e-5):
    """Run the step model over `rows` [n, F] from zero state and the window model over each
    full window; return the largest difference (asserting it is within `tol`)."""
    import onnxruntime as ort
    step = ort.InferenceSession(step_path, providers=["CPUExecutionProvider"])
    win = ort.InferenceSession(window_path, providers=["CPUExecutionProvider"])
    S = step.get_inputs()[1].shape[1]
    worst = 0.0
    for start in range(0, len(rows) - window + 1, max(1, window // 2)):
        h = np.zeros((1, S), np.float32)
        c = np.zeros((1, S), np.float32)
        for j in range(window):
            p, h, c = step.run(None, {"x": rows[start + j: start + j + 1], "h_in": h, "c_in": c})
        q = win.run(None, {"x": rows[None, start:start + window]})[0]
        worst = max(worst, float(np.abs(p - q).max()))
    assert worst <= tol, f"step and window models disagree by {worst}"
    return worst


def write_pair(model, features, window, out_dir, name, description, mean=None, std=None, warmup=None,
               horizon=None, check_rows=None, writer="export_lstm.py", reference_macro_f1=(None, None), ranges=None):
    """Export `model` as a step and a window model with their manifests; `reference_macro_f1`:
    the (step, window) test-set macro-F1 for their [label] sections (with `horizon`)."""
    step_path, window_path = export(model, len(features), window, out_dir, name)
    if check_rows is not None:
        worst = check_step_equals_window(step_path, window_path, check_rows, window)
        print(f"{name}: step == window over {len(check_rows)} rows, max |diff| {worst:.2e}")
    warm = warmup if warmup is not None else window
    rec = ('kind = "recurrent"\nstate = [{ input = "h_in", output = "h_out" }, { input = "c_in", output = "c_out" }]\n'
           f"warmup_events = {warm}")
    with open(os.path.join(out_dir, f"{name}_step.toml"), "w") as f:
        f.write(classifier_manifest(writer, f"{name}_step", f"{name}_step.onnx", f"{description}, one recurrent step",
                                    features, mean, std, sequence=rec, horizon=horizon,
                                    reference_macro_f1=reference_macro_f1[0], ranges=ranges))
    with open(os.path.join(out_dir, f"{name}_window.toml"), "w") as f:
        f.write(classifier_manifest(writer, f"{name}_window", f"{name}_window.onnx",
                                    f"{description}, window of {window}", features, mean, std,
                                    sequence=f'kind = "window"\nwindow = {window}', horizon=horizon,
                                    reference_macro_f1=reference_macro_f1[1], ranges=ranges))
    return step_path, window_path


# Stateless features only, so that a test can rebuild any window's rows from its requests alone.
FIXTURE_FEATURES = ["spread_bps", "size_imbalance", "microprice_offset_bps", "log_bid_size", "log_ask_size"]
FIXTURE_MEAN = [2.0, 0.0, 0.0, 4.0, 4.0]
FIXTURE_STD = [1.0, 0.5, 1.0, 1.5, 1.5]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", action="store_true", help="tiny test fixtures (hidden 8, window 6)")
    ap.add_argument("--bench", action="store_true", help="benchmark models: hidden 32, 64 and 2 layers x 128")
    args = ap.parse_args()
    if not (args.fixtures or args.bench):
        ap.error("say --fixtures and/or --bench")
    if args.fixtures:
        torch.manual_seed(5)
        out = os.path.join(ROOT, "tests", "fixtures", "models")
        m = LstmClassifier(len(FIXTURE_FEATURES), hidden=8, layers=1)
        rows = np.random.default_rng(5).normal(0, 1, (40, len(FIXTURE_FEATURES))).astype(np.float32)
        write_pair(m, FIXTURE_FEATURES, 6, out, "lstm", "fixture: LSTM hidden 8 (random weights)",
                   FIXTURE_MEAN, FIXTURE_STD, warmup=5, check_rows=rows)
    if args.bench:
        out = os.path.join(ROOT, "benches", "models")
        os.makedirs(out, exist_ok=True)
        F = len(BENCH_FEATURES)
        rows = np.random.default_rng(7).normal(0, 1, (24, F)).astype(np.float32)
        # The scale the server's load-time gate tests these raw-input models at: the features'
        # ranges over the committed sample.
        ranges = feature_ranges(BENCH_FEATURES, read_lobster(SAMPLE), 10_000)
        for hidden, layers, tag in [(32, 1, "h32"), (64, 1, "h64"), (128, 2, "2x128")]:
            torch.manual_seed(hidden + layers)
            m = LstmClassifier(F, hidden=hidden, layers=layers)
            n_params = sum(p.numel() for p in m.parameters())
            step, window = write_pair(m, BENCH_FEATURES, 16, out, f"lstm_{tag}",
                                      f"bench: LSTM {layers}x{hidden}, {n_params} parameters (random weights)",
                                      check_rows=rows, ranges=ranges)
            if tag != "h32":  # one window variant (the smallest) is enough for the bench
                os.remove(window)
                os.remove(window.replace(".onnx", ".toml"))
            print(f"lstm_{tag}: {n_params} parameters, {os.path.getsize(step)} bytes")


if __name__ == "__main__":
    main()
