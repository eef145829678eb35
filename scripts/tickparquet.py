"""Training rows from the server's own feature code: `tickinfer features` run on a file, its
Parquet read back (pyarrow). The training scripts' default source of rows; the pure-Python twin
(tickfeatures.py) stays as their `--twin` option and as the independent check (tests/dataset.rs
holds the two bit-equal on the real days).

Each call writes a manifest for the features asked (with `mean`/`std` when given, so the rows are
normalised exactly as the server normalises them: (x - mean) / std in float64, then float32) and
the label rule (`horizon` events, flat within 0 bps), runs the command, and reads its output.

Needs: numpy pyarrow (scripts/requirements.txt), and a built tickinfer (cargo build --release).
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tickfeatures import classifier_manifest  # noqa: E402

DEFAULT_BIN = os.path.normpath(os.path.join(HERE, "..", "target", "release", "tickinfer"))


def add_arguments(ap):
    """The options every training script takes for where its rows come from."""
    ap.add_argument("--tickinfer", default=DEFAULT_BIN, metavar="BIN",
                    help="the tickinfer binary whose `features` command computes the rows (default: %(default)s)")
    ap.add_argument("--twin", action="store_true",
                    help="compute the rows with the Python twin (scripts/tickfeatures.py) instead of the server's code")


def binary(path):
    """`path` if it is an executable tickinfer; otherwise exit with what to do."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        sys.exit(f"{path}: no tickinfer binary there. Build it (cargo build --release), name another with "
                 "--tickinfer BIN, or compute the rows with the Python twin (--twin).")
    return path


def server_rows(tickinfer, input_path, names, horizon, mean=None, std=None, price_scale=10_000, fmt="lobster"):
    """(x float32 [events, features], label float64 [events]: -1/0/1, NaN where not known,
    timestamp_ns int64 [events]) of every event of `input_path` as the server computes them for a
    model reading `names`."""
    import numpy as np
    import pyarrow.parquet as pq
    with tempfile.TemporaryDirectory(prefix="tickparquet-") as d:
        manifest = os.path.join(d, "features.toml")
        with open(manifest, "w") as f:
            f.write(classifier_manifest("tickparquet.py", "training_features", "none.onnx", "training rows", names,
                                        None if mean is None else list(mean), None if std is None else list(std),
                                        horizon=horizon, price_scale=price_scale))
        out = os.path.join(d, "out")
        done = subprocess.run([tickinfer, "features", "--model", manifest, "--input", input_path, "--format", fmt,
                               "--out", out], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"tickinfer features failed ({done.returncode}): {done.stderr.strip()}")
        table = pq.read_table(done.stdout.strip().splitlines()[-1])
    x = np.stack([table[n].to_numpy() for n in names], axis=1).astype(np.float32)
    label = table["label"].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls → NaN
    return x, label, table["timestamp_ns"].to_numpy()


def labelled_prefix(label):
    """(y as classes 0 sell / 1 flat / 2 buy, n): the labels of the events before the first one
    without a label (the last `horizon` events of a one-symbol day)."""
    import numpy as np
    known = ~np.isnan(label)
    n = int(np.argmin(known)) if not known.all() else len(label)
    assert known[:n].all() and not known[n:].any(), "labels missing inside the day"
    return label[:n].astype(int) + 1, n


def normalised_rows(tickinfer, input_path, names, horizon, train_fraction=0.6):
    """The training protocol's rows from the server: (x normalised float32 [n, features], mean,
    std, y [n], n, timestamp_ns [n]). The raw rows of the first `train_fraction` of the labelled
    events give mean and std (float64 over the float32 rows, std 0 taken as 1, as the twin's
    scripts do); the command then runs again with them, so the rows are normalised by the server."""
    import numpy as np
    raw, label, ts = server_rows(tickinfer, input_path, names, horizon)
    y, n = labelled_prefix(label)
    train = raw[:int(n * train_fraction)].astype(np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    x, _, _ = server_rows(tickinfer, input_path, names, horizon, mean, std)
    return x[:n], mean, std, y, n, ts[:n]
