#!/usr/bin/env python3
"""Write `[input] min`/`max` into manifests: each feature's range over the committed
synthetic sample, as the export scripts record it (`tickfeatures.feature_ranges`), without
retraining. The server's load-time gate tests a model whose manifest does not normalise
(`mean`/`std`) at this scale, instead of magnitudes from 1e-3 to 1e6.

    python3 scripts/manifest_ranges.py benches/models/lstm_h32_step.toml ...
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tickfeatures import feature_ranges, read_lobster, toml_list  # noqa: E402

SAMPLE = os.path.join(HERE, "..", "data", "sample", "SYNTH_2026-01-05_sample.zip")


def main(paths):
    reqs = read_lobster(SAMPLE)
    for path in paths:
        text = open(path).read()
        m = re.search(r"^features = (\[.*\])$", text, re.M)
        features = re.findall(r'"([^"]+)"', m.group(1))
        scale = int(re.search(r"^price_scale = (\d+)$", text, re.M).group(1))
        lo, hi = feature_ranges(features, reqs, scale)
        text = re.sub(r"^(min|max) = \[.*\]\n", "", text, flags=re.M)
        text = text.replace(m.group(0), f"{m.group(0)}\nmin = {toml_list(lo)}\nmax = {toml_list(hi)}", 1)
        open(path, "w").write(text)
        print(f"{path}: ranges of {len(features)} features")


if __name__ == "__main__":
    main(sys.argv[1:])
