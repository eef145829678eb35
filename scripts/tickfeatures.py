"""Feature definitions shared by the training and fixture scripts.

This mirrors src/features.rs and src/state.rs exactly (float64 arithmetic, cast to float32 after
normalisation): the parity tests depend on it. Request fields are the wire's:
prices fixed-point at `price_scale`, sizes fixed-point at `size_scale` (default 1: plain
counts; every size, level 1 and the depth block, is read × 1/size_scale as features.rs
does), book_imbalance scaled by IMBALANCE_SCALE.
"""
IMBALANCE_SCALE = 1_000_000.0


def feature_column(name, r, price_scale, size_scale=1):
    """One named feature over a dict of request-field arrays `r` (float64)."""
    import numpy as np
    # As the server (and stateless_value): prices times 1/price_scale, mid times 0.5. Dividing
    # by price_scale instead rounds differently now and then: the default model was once
    # trained on rows 1 833 of whose microprice_offset_bps differed from the server's.
    inv, inv_size = 1.0 / price_scale, 1.0 / size_scale
    bid = r["bid_price"] * inv
    ask = r["ask_price"] * inv
    bsz = r["bid_size"].astype(np.float64) * inv_size
    asz = r["ask_size"].astype(np.float64) * inv_size
    mid = (bid + ask) * 0.5
    tot = bsz + asz
    safe_tot = np.where(tot > 0, tot, 1.0)
    micro = np.where(tot > 0, (bid * asz + ask * bsz) / safe_tot, mid)
    if name.startswith("extra:"):
        return r["features"][:, int(name.split(":")[1])].astype(np.float32).astype(np.float64)
    if "(" in name:
        kind, k = parse_feature(name)
        assert kind in DEPTH, f"{name}: stateful features need stateful_rows()"
        f = r["features"].astype(np.float32).astype(np.float64)

        def lv(level, field, top):
            if level < 2:
                return top
            return f[:, depth_index(level) + field] * (inv_size if field in (1, 3) else 1.0)
        if kind == "depth_imbalance":
            b, a = bsz, asz
            for level in range(2, k + 1):
                b, a = b + lv(level, 1, None), a + lv(level, 3, None)
            return np.where(b + a > 0, (b - a) / np.where(b + a > 0, b + a, 1.0), 0.0)
        return {"bid_px": lambda: bid - lv(k, 0, 0.0), "ask_px": lambda: ask + lv(k, 2, 0.0),
                "bid_sz": lambda: lv(k, 1, bsz), "ask_sz": lambda: lv(k, 3, asz)}[kind]()
    table = {
        "bid_price": lambda: bid,
        "ask_price": lambda: ask,
        "bid_size": lambda: bsz,
        "ask_size": lambda: asz,
        "book_imbalance": lambda: r["book_imbalance"] / IMBALANCE_SCALE,
        "mid": lambda: mid,
        "spread": lambda: ask - bid,
        "spread_bps": lambda: (ask - bid) / mid * 1e4,
        "microprice": lambda: micro,
        "microprice_offset_bps": lambda: (micro - mid) / mid * 1e4,
        "size_imbalance": lambda: np.where(tot > 0, (bsz - asz) / safe_tot, 0.0),
        "log_bid_size": lambda: np.log1p(bsz),
        "log_ask_size": lambda: np.log1p(asz),
        "log_size_ratio": lambda: np.log1p(bsz) - np.log1p(asz),
    }
    return table[name]()


def feature_matrix(names, r, price_scale, mean=None, std=None, size_scale=1):
    """(n, len(names)) float32 model input, normalised with mean/std if given."""
    import numpy as np
    cols = np.stack([feature_column(n, r, price_scale, size_scale) for n in names], axis=1)
    if mean is not None:
        cols = (cols - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)
    return cols.astype(np.float32)


def toml_list(xs):
    return "[" + ", ".join(repr(float(x)) if not isinstance(x, str) else f'"{x}"' for x in xs) + "]"


# Stateful features for the benchmark models (the per-symbol state is part of what is timed).
BENCH_FEATURES = ["spread_bps", "size_imbalance", "microprice_offset_bps", "log_size_ratio", "mid_return_bps(1)",
                  "mid_return_bps(10)", "ofi(1)", "ofi(10)", "realized_vol_bps(20)", "spread_bps_mean(20)",
                  "ewma_mid_return_bps(8)", "time_since_last_ms", "event_rate(1000)", "book_imbalance",
                  "log_bid_size", "log_ask_size"]


def label_section(horizon, reference_macro_f1=None, flat_bps=0.0):
    """The manifest's `[label]` section: how the training labels were made (the sign of the mid
    change `horizon` events ahead; a move of at most `flat_bps` is flat) and the test-set macro-F1,
    which the server's live signal quality scores answers against (docs/signal-quality.md)."""
    ref = f"reference_macro_f1 = {reference_macro_f1:.4f}\n" if reference_macro_f1 is not None else ""
    return f"""
[label]
horizon_events = {horizon}
flat_bps = {float(flat_bps)}
{ref}"""


def classifier_manifest(writer, name, onnx, description, features, mean=None, std=None, output="probabilities",
                        sequence=None, horizon=None, price_scale=10_000, size_scale=1, reference_macro_f1=None,
                        ranges=None):
    """A tickinfer manifest (TOML text) for a sell/flat/buy classifier with input `x`;
    `sequence`: the body of a `[sequence]` section, if any; `horizon`: the labels' horizon in
    events (a `[label]` section, with `reference_macro_f1`); `writer`: the script's name;
    `ranges`: (min, max) of each feature in training (`feature_ranges`), the scale the
    server's load-time gate tests a model at."""
    norm = f"mean = {toml_list(mean)}\nstd = {toml_list(std)}\n" if mean is not None else ""
    if ranges is not None:
        norm += f"min = {toml_list(ranges[0])}\nmax = {toml_list(ranges[1])}\n"
    sz = f"size_scale = {size_scale}\n" if size_scale != 1 else ""
    seq = f"\n[sequence]\n{sequence}\n" if sequence else ""
    label = label_section(horizon, reference_macro_f1) if horizon else ""
    return f"""# Written by scripts/{writer}.
[model]
name = "{name}"
version = 1
onnx = "{onnx}"
price_scale = {price_scale}
{sz}description = "{description}"

[input]
name = "x"
features = {toml_list(features)}
{norm}
[output]
kind = "classes"
name = "{output}"
classes = ["sell", "flat", "buy"]
{seq}{label}"""


def fixture_manifest(comment, name, n_features, output_name, output_body):
    """A test fixture's manifest: features `extra:0..n` (a test feeds any value), input `x`,
    price scale 10000; `comment` says what wrote it."""
    feats = ", ".join(f'"extra:{i}"' for i in range(n_features))
    return f"""# {comment}
[model]
name = "{name}"
version = 1
onnx = "{name}.onnx"
price_scale = 10000

[input]
name = "x"
features = [{feats}]

[output]
name = "{output_name}"
{output_body}"""


def feature_ranges(names, requests, price_scale, size_scale=1):
    """Each feature's (min, max) over `requests` (raw units, as the server computes them),
    rounded outward to 6 significant digits: what a manifest's `[input] min`/`max` record."""
    import math
    rows, _ = stateful_rows(names, requests, price_scale, size_scale=size_scale)
    lo = [min(r[k] for r in rows) for k in range(len(names))]
    hi = [max(r[k] for r in rows) for k in range(len(names))]

    def out(v, up):
        if v == 0 or not math.isfinite(v):
            return 0.0 if not math.isfinite(v) else v
        e = math.floor(math.log10(abs(v))) - 5
        q = v / 10 ** e
        return float(f"{math.ceil(q) if up else math.floor(q)}e{e}")
    return [out(v, False) for v in lo], [out(v, True) for v in hi]


# ---------------------------------------------------------------- stateful features
#
# Pure Python floats (IEEE float64, like Rust's f64), one event at a time, in the
# server's order: each valid request first updates its symbol's state, then its row is
# computed. Every operation mirrors src/state.rs and src/features.rs (same order of
# additions, multiplication by 1/price_scale, the same libm functions), so the parity
# test holds both to the same bits.
import math
import struct

STATEFUL = ("mid_return_bps", "ofi", "realized_vol_bps", "spread_bps_mean",
            "ewma_mid_return_bps", "event_rate")
# Book depth, levels 1..DEPTH_LEVELS (stateless; levels 2.. read from features[], see ml_wire.h).
DEPTH = ("bid_px", "ask_px", "bid_sz", "ask_sz", "depth_imbalance")
DEPTH_LEVELS = 5


def depth_index(level):
    """ML_DEPTH_INDEX(k): level k's (bid distance, bid size, ask distance, ask size) in features[]."""
    return 4 * (level - 2)


def parse_feature(name):
    """('kind', n) for a feature name: ('mid_return_bps', 5), ('time_since_last_ms', 0), ('spread_bps', 0)."""
    if "(" in name:
        func, arg = name[:-1].split("(")
        assert func in STATEFUL + DEPTH and name.endswith(")"), name
        return (func, int(arg))
    return (name, 0)


def state_spec(feats):
    """Ring capacity, EWMA alphas, event-rate taus (s), history: as features.rs state_spec()."""
    cap, hist, alphas, taus = 0, 0, [], []
    for kind, n in feats:
        if kind == "mid_return_bps":
            cap, hist = max(cap, n + 1), max(hist, n)
        elif kind in ("ofi", "realized_vol_bps"):
            cap, hist = max(cap, n), max(hist, n)
        elif kind == "spread_bps_mean":
            cap, hist = max(cap, n), max(hist, n - 1)
        elif kind == "ewma_mid_return_bps":
            alphas.append(1.0 - 0.5 ** (1.0 / float(n)))
            hist = max(hist, n)
        elif kind == "event_rate":
            taus.append(n / 1e3)
            hist = max(hist, 1)
        elif kind == "time_since_last_ms":
            hist = max(hist, 1)
    return cap, alphas, taus, hist


class SymbolState:
    def __init__(self, cap, n_acc):
        self.count = 0
        self.ring = [None] * cap  # entries (mid, spread_bps, ofi, ret_bps)
        self.newest = 0
        self.last = None          # (bid, ask, bid_size, ask_size, mid, ts_ns)
        self.dt_ms = 0.0
        self.accum = [0.0] * n_acc

    def back(self, b):
        cap = len(self.ring)
        if b >= self.count or b >= cap:
            return None
        return self.ring[(self.newest + cap - b) % cap]

    def window(self, n):
        m = min(n, self.count, len(self.ring))
        return [self.back(b) for b in range(m - 1, -1, -1)]


def update(st, r, inv, alphas, taus, inv_size=1.0):
    bid = float(r["bid_price"]) * inv
    ask = float(r["ask_price"]) * inv
    bsz, asz = float(r["bid_size"]) * inv_size, float(r["ask_size"]) * inv_size
    mid = (bid + ask) * 0.5
    ts = r["timestamp_ns"]
    if st.count == 0:
        e, ret, dt_ms, dt_s = 0.0, 0.0, 0.0, 0.0
    else:
        pb, pa, pbs, pas, pmid, pts = st.last
        e = 0.0
        if bid >= pb:
            e += bsz
        if bid <= pb:
            e -= pbs
        if ask <= pa:
            e -= asz
        if ask >= pa:
            e += pas
        dt_ms = float(ts - pts) / 1e6
        dt_s = float(max(ts - pts, 0)) / 1e9
        ret = (mid - pmid) / pmid * 1e4
    na = len(alphas)
    for i, a in enumerate(alphas):
        st.accum[i] = a * ret + (1.0 - a) * st.accum[i]
    for j, tau in enumerate(taus):
        st.accum[na + j] = st.accum[na + j] * math.exp(-dt_s / tau) + 1.0 / tau
    cap = len(st.ring)
    if cap > 0:
        st.newest = 0 if st.count == 0 else (st.newest + 1) % cap
        st.ring[st.newest] = (mid, (ask - bid) / mid * 1e4, e, ret)
    st.count += 1
    st.last = (bid, ask, bsz, asz, mid, ts)
    st.dt_ms = dt_ms


def depth_value(kind, k, r, bid, ask, bsz, asz, inv_size=1.0):
    """A depth feature at level k, as features.rs computes it (sizes summed level 1 first)."""
    f = r["features"]
    if kind == "depth_imbalance":
        b, a = bsz, asz
        for level in range(2, k + 1):
            i = depth_index(level)
            b, a = b + float(f[i + 1]) * inv_size, a + float(f[i + 3]) * inv_size
        return (b - a) / (b + a) if b + a > 0.0 else 0.0
    if k < 2:
        return {"bid_px": bid, "ask_px": ask, "bid_sz": bsz, "ask_sz": asz}[kind]
    i = depth_index(k)
    return {"bid_px": lambda: bid - float(f[i]), "ask_px": lambda: ask + float(f[i + 2]),
            "bid_sz": lambda: float(f[i + 1]) * inv_size, "ask_sz": lambda: float(f[i + 3]) * inv_size}[kind]()


def stateless_value(kind, r, inv, level=0, inv_size=1.0):
    bid = float(r["bid_price"]) * inv
    ask = float(r["ask_price"]) * inv
    bsz, asz = float(r["bid_size"]) * inv_size, float(r["ask_size"]) * inv_size
    mid = (bid + ask) * 0.5
    tot = bsz + asz
    micro = (bid * asz + ask * bsz) / tot if tot > 0 else mid
    if kind.startswith("extra:"):
        return float(r["features"][int(kind.split(":")[1])])
    if kind in DEPTH:
        return depth_value(kind, level, r, bid, ask, bsz, asz, inv_size)
    return {
        "bid_price": lambda: bid, "ask_price": lambda: ask, "bid_size": lambda: bsz, "ask_size": lambda: asz,
        "book_imbalance": lambda: r["book_imbalance"] / IMBALANCE_SCALE, "mid": lambda: mid,
        "spread": lambda: ask - bid, "spread_bps": lambda: (ask - bid) / mid * 1e4, "microprice": lambda: micro,
        "microprice_offset_bps": lambda: (micro - mid) / mid * 1e4,
        "size_imbalance": lambda: (bsz - asz) / tot if tot > 0 else 0.0,
        "log_bid_size": lambda: math.log1p(bsz), "log_ask_size": lambda: math.log1p(asz),
        "log_size_ratio": lambda: math.log1p(bsz) - math.log1p(asz),
    }[kind]()


def f32(x):
    """float64 -> float32 as Rust's `as f32` (round to nearest even, overflow to inf)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def stateful_rows(names, requests, price_scale, mean=None, std=None, size_scale=1):
    """Rows (lists of float32 values as Python floats) and warming flags for `requests`
    (dicts of the wire fields, sizes at `size_scale`, in the order the server scores them)."""
    feats = [parse_feature(n) for n in names]
    cap, alphas, taus, hist = state_spec(feats)
    # Accumulator of each EWMA / rate feature, in row order (EWMAs first), as features.rs numbers them.
    acc_of, ei, ri = {}, 0, 0
    for k, f in enumerate(feats):
        if f[0] == "ewma_mid_return_bps":
            acc_of[k], ei = ei, ei + 1
        elif f[0] == "event_rate":
            acc_of[k], ri = len(alphas) + ri, ri + 1
    inv, inv_size = 1.0 / price_scale, 1.0 / size_scale
    states, rows, warming = {}, [], []
    for r in requests:
        st = states.get(r["symbol_id"])
        if st is None:
            st = states[r["symbol_id"]] = SymbolState(cap, len(alphas) + len(taus))
        update(st, r, inv, alphas, taus, inv_size)
        row = []
        for k, (kind, n) in enumerate(feats):
            if kind == "mid_return_bps":
                now, then = st.back(0), st.back(n)
                x = (now[0] - then[0]) / then[0] * 1e4 if now is not None and then is not None else 0.0
            elif kind == "ofi":
                x = 0.0
                for e in st.window(n):
                    x = x + e[2]
            elif kind == "realized_vol_bps":
                x = 0.0
                for e in st.window(n):
                    x = x + e[3] * e[3]
                x = math.sqrt(x)
            elif kind == "spread_bps_mean":
                x, m = 0.0, 0
                for e in st.window(n):
                    x, m = x + e[1], m + 1
                x = x / float(m) if m > 0 else 0.0
            elif kind in ("ewma_mid_return_bps", "event_rate"):
                x = st.accum[acc_of[k]]
            elif kind == "time_since_last_ms":
                x = st.dt_ms
            else:
                x = stateless_value(kind, r, inv, n, inv_size)
            if mean is not None:
                x = (x - mean[k]) / std[k]
            row.append(f32(x))
        rows.append(row)
        warming.append(st.count <= hist)
    return rows, warming


LOBSTER_DUMMY = 9999999999


def read_lobster(path, limit=None, size_scale=1):
    """Requests from a LOBSTER pair (zip or *_message_N.csv), as `tickinfer replay` reads them:
    type-7 halts and dummy best levels skipped; ts = midnight of the file's date + round(secs·1e9);
    the ticker gets symbol 0; prices at scale 10 000; levels 2..5 of a level-N file in
    features[] (distances from level 1 in price units, float32; an empty level: size 0 and
    the price of the level above), n_features covering them. Sizes (every level's) fixed point at
    `size_scale`, as replay delivers them to a model with that size_scale."""
    import datetime
    import os
    import zipfile
    if path.endswith(".zip"):
        z = zipfile.ZipFile(path)
        msg = next(n for n in z.namelist() if "_message_" in n and n.endswith(".csv"))
        messages = z.read(msg).decode().splitlines()
        book = z.read(msg.replace("_message_", "_orderbook_")).decode().splitlines()
        base = os.path.basename(msg)
    else:
        messages = open(path).read().splitlines()
        book = open(path.replace("_message_", "_orderbook_")).read().splitlines()
        base = os.path.basename(path)
    parts = base.split("_")
    d = datetime.date.fromisoformat(parts[1])
    day_ns = (d - datetime.date(1970, 1, 1)).days * 86_400 * 10**9
    out = []
    for line, bline in zip(messages, book):
        m, b = line.split(","), bline.split(",")
        if int(m[1]) == 7:
            continue
        ask, asz, bid, bsz = int(b[0]), int(b[1]), int(b[2]), int(b[3])
        if abs(ask) == LOBSTER_DUMMY or abs(bid) == LOBSTER_DUMMY:
            continue
        x = float(m[0]) * 1e9
        # Rust's f64::round: half away from zero (x >= 0 here).
        ns = math.floor(x)
        if x - ns >= 0.5:
            ns += 1
        tot = bsz + asz
        num = (bsz - asz) * int(IMBALANCE_SCALE)
        imb = (abs(num) // tot) * (1 if num >= 0 else -1) if tot > 0 else 0  # truncation, as i128 division
        feats = [0.0] * 32
        pb, pa, deepest = bid, ask, 1
        for level in range(2, min(len(b) // 4, DEPTH_LEVELS) + 1):
            ap, az, bp, bz = (int(v) for v in b[4 * (level - 1):4 * level])
            if abs(bp) == LOBSTER_DUMMY:
                bz = 0
            else:
                pb = bp
            if abs(ap) == LOBSTER_DUMMY:
                az = 0
            else:
                pa = ap
            i = depth_index(level)
            # As MlRequest::set_level: integer distance / scale in float64, then float32.
            feats[i:i + 4] = [f32((bid - pb) / 10_000.0), f32(float(bz)), f32((pa - ask) / 10_000.0), f32(float(az))]
            if size_scale != 1:
                # As replay's rescale_sizes: the float32 size × to / from in float64, then float32.
                feats[i + 1] = f32(feats[i + 1] * float(size_scale) / 1.0)
                feats[i + 3] = f32(feats[i + 3] * float(size_scale) / 1.0)
            deepest = level
        out.append({"timestamp_ns": day_ns + int(ns), "symbol_id": 0, "bid_price": bid, "ask_price": ask,
                    "bid_size": bsz * size_scale, "ask_size": asz * size_scale, "book_imbalance": imb, "features": feats,
                    "n_features": 4 * (deepest - 1)})
        if limit is not None and len(out) == limit:
            break
    return out


if __name__ == "__main__":
    # Stateful rows over a LOBSTER file, as JSON (used by the live parity test):
    #   python3 scripts/tickfeatures.py LOBSTER.zip PRICE_SCALE LIMIT [--size-scale N] FEATURE...
    import json
    import sys
    path, scale, limit, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    size_scale = 1
    if names[:1] == ["--size-scale"]:
        size_scale, names = int(names[1]), names[2:]
    reqs = read_lobster(path, limit, size_scale)
    rows, warming = stateful_rows(names, reqs, scale, size_scale=size_scale)
    bits = [[struct.unpack("<I", struct.pack("<f", v))[0] for v in row] for row in rows]
    json.dump({"requests": [[r["timestamp_ns"], r["bid_price"], r["ask_price"], r["bid_size"], r["ask_size"]]
                            for r in reqs], "rows": bits, "warming": warming}, sys.stdout)
