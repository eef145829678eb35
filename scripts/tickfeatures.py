"""Feature definitions shared by the training and fixture scripts.

This mirrors src/features.rs exactly (float64 arithmetic, cast to float32 after
normalisation): the parity tests depend on it. Request fields are the wire's:
prices fixed-point at `price_scale`, sizes plain counts, book_imbalance scaled
by IMBALANCE_SCALE.
"""
import numpy as np

IMBALANCE_SCALE = 1_000_000.0


def feature_column(name, r, price_scale):
    """One named feature over a dict of request-field arrays `r` (float64)."""
    bid = r["bid_price"] / price_scale
    ask = r["ask_price"] / price_scale
    bsz = r["bid_size"].astype(np.float64)
    asz = r["ask_size"].astype(np.float64)
    mid = (bid + ask) / 2.0
    tot = bsz + asz
    safe_tot = np.where(tot > 0, tot, 1.0)
    micro = np.where(tot > 0, (bid * asz + ask * bsz) / safe_tot, mid)
    if name.startswith("extra:"):
        return r["features"][:, int(name.split(":")[1])].astype(np.float32).astype(np.float64)
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


def feature_matrix(names, r, price_scale, mean=None, std=None):
    """(n, len(names)) float32 model input, normalised with mean/std if given."""
    cols = np.stack([feature_column(n, r, price_scale) for n in names], axis=1)
    if mean is not None:
        cols = (cols - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)
    return cols.astype(np.float32)


def toml_list(xs):
    return "[" + ", ".join(repr(float(x)) if not isinstance(x, str) else f'"{x}"' for x in xs) + "]"
