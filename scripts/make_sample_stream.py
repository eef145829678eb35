#!/usr/bin/env python3
"""Generate the bundled sample stream: a synthetic LOBSTER-format pair (level 1).

    python3 scripts/make_sample_stream.py [--events 20000] [--seed 7]

Writes data/sample/SYNTH_2026-01-05_34200000_57600000_{message,orderbook}_1.csv
zipped into data/sample/SYNTH_2026-01-05_sample.zip. No third-party data: a small
queue-reactive simulation of one instrument's best bid and ask. Limit orders,
cancels and executions arrive at random (exponential gaps, ~2 ms); when a side's
queue empties its price moves one tick away and a new queue forms, and orders
sometimes improve a wide spread. Because the thinner queue empties first, the
size imbalance really does predict the next mid move — as in real books — so a
top-of-book model has something to find.
"""
import argparse
import io
import os
import zipfile

import numpy as np

TICK = 100  # $0.01 at LOBSTER's price scale (USD x 10000)


def simulate(n, seed):
    rng = np.random.default_rng(seed)
    bid, ask = 1_000_000, 1_000_100  # $100.00 / $100.01
    bsz, asz = int(rng.integers(1, 6)) * 100, int(rng.integers(1, 6)) * 100
    t = 34200.0
    msgs, books = [], []
    oid = 1
    for _ in range(n):
        t += rng.exponential(0.002)
        u = rng.random()
        side = 1 if rng.random() < 0.5 else -1  # 1 bid side, -1 ask side
        size = int(rng.integers(1, 3)) * 100
        if ask - bid > TICK and rng.random() < 0.5:
            # Price improvement inside a wide spread.
            kind = 1
            if side == 1:
                bid += TICK
                bsz = size
                price = bid
            else:
                ask -= TICK
                asz = size
                price = ask
        elif u < 0.40:
            kind = 1  # new limit order joins the best queue
            if side == 1:
                bsz += size
                price = bid
            else:
                asz += size
                price = ask
        else:
            kind = 3 if u < 0.70 else 4  # delete at the best, or an execution against it
            if side == 1:
                size = min(size, bsz)
                bsz -= size
                price = bid
            else:
                size = min(size, asz)
                asz -= size
                price = ask
        if bsz <= 0:  # bid queue emptied: the bid drops a tick, a new queue forms
            bid -= TICK * int(rng.integers(1, 3))
            bsz = int(rng.integers(1, 4)) * 100
        if asz <= 0:
            ask += TICK * int(rng.integers(1, 3))
            asz = int(rng.integers(1, 4)) * 100
        if ask - bid > 4 * TICK:  # keep the spread sane, on either side
            if rng.random() < 0.5:
                bid += TICK
                bsz = int(rng.integers(1, 4)) * 100
            else:
                ask -= TICK
                asz = int(rng.integers(1, 4)) * 100
        msgs.append(f"{t:.9f},{kind},{oid},{size},{price},{side}")
        books.append(f"{ask},{asz},{bid},{bsz}")
        oid += 1
    return msgs, books


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    msgs, books = simulate(args.events, args.seed)
    out = os.path.join(os.path.dirname(__file__), "..", "data", "sample")
    os.makedirs(out, exist_ok=True)
    base = "SYNTH_2026-01-05_34200000_57600000"
    path = os.path.join(out, "SYNTH_2026-01-05_sample.zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{base}_message_1.csv", "\n".join(msgs) + "\n")
        z.writestr(f"{base}_orderbook_1.csv", "\n".join(books) + "\n")
    print(f"wrote {path}: {len(msgs)} events")


if __name__ == "__main__":
    main()
