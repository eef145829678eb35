#!/usr/bin/env python3
"""Generate the bundled sample streams: synthetic LOBSTER-format pairs.

    python3 scripts/make_sample_stream.py [--events 20000] [--seed 7]
    python3 scripts/make_sample_stream.py --levels 5 [--events 5000] [--seed 11]

Level 1 (default) writes data/sample/SYNTH_2026-01-05_34200000_57600000_{message,orderbook}_1.csv
zipped into data/sample/SYNTH_2026-01-05_sample.zip; `--levels N` writes the N-level pair
(`..._N.csv`, 4·N orderbook columns) into data/sample/SYNTH_2026-01-05_sample_N.zip, for
depth features and level-N parsing without third-party data. No third-party data: a small
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


def simulate_depth(n, seed, levels):
    """A ladder of `levels` price levels per side, one tick apart. Orders join or leave
    any level (more often near the best), executions hit the best; an emptied level is
    removed and a fresh one joins at the back, so the best price moves when its queue
    empties. Rows as LOBSTER writes them: ask_1, ask_size_1, bid_1, bid_size_1, ask_2, ..."""
    rng = np.random.default_rng(seed)
    bids = [[1_000_000 - k * TICK, int(rng.integers(1, 6)) * 100] for k in range(levels)]
    asks = [[1_000_100 + k * TICK, int(rng.integers(1, 6)) * 100] for k in range(levels)]
    t = 34200.0
    msgs, books = [], []
    oid = 1
    weights = np.array([0.5 ** k for k in range(levels)])
    weights /= weights.sum()
    for _ in range(n):
        t += rng.exponential(0.002)
        side = 1 if rng.random() < 0.5 else -1
        book = bids if side == 1 else asks
        away = -TICK if side == 1 else TICK  # one tick further from the spread
        size = int(rng.integers(1, 3)) * 100
        u = rng.random()
        k = int(rng.choice(levels, p=weights))
        if asks[0][0] - bids[0][0] > TICK and rng.random() < 0.3:
            kind, k = 1, 0  # price improvement inside a wide spread: a new best level
            book.insert(0, [book[0][0] - away, size])
            book.pop()
        elif u < 0.45:
            kind = 1  # a new limit order joins level k
            book[k][1] += size
        else:
            kind = 3 if u < 0.75 else 4  # a delete at level k, or an execution at the best
            if kind == 4:
                k = 0
            size = min(size, book[k][1])
            book[k][1] -= size
        price = book[k][0]
        if book[k][1] <= 0:  # an emptied level leaves; a new one forms behind the last
            book.pop(k)
            book.append([book[-1][0] + away, int(rng.integers(1, 4)) * 100])
        msgs.append(f"{t:.9f},{kind},{oid},{size},{price},{side}")
        books.append(",".join(f"{asks[j][0]},{asks[j][1]},{bids[j][0]},{bids[j][1]}" for j in range(levels)))
        oid += 1
    return msgs, books


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=None, help="20000 at level 1, 5000 deeper")
    ap.add_argument("--seed", type=int, default=None, help="7 at level 1, 11 deeper")
    ap.add_argument("--levels", type=int, default=1)
    args = ap.parse_args()
    if args.levels == 1:
        msgs, books = simulate(args.events or 20000, 7 if args.seed is None else args.seed)
        name = "SYNTH_2026-01-05_sample.zip"
    else:
        msgs, books = simulate_depth(args.events or 5000, 11 if args.seed is None else args.seed, args.levels)
        name = f"SYNTH_2026-01-05_sample_{args.levels}.zip"
    out = os.path.join(os.path.dirname(__file__), "..", "data", "sample")
    os.makedirs(out, exist_ok=True)
    base = "SYNTH_2026-01-05_34200000_57600000"
    path = os.path.join(out, name)
    # A fixed timestamp per member keeps the zip byte-identical from run to run.
    def member(n):
        return zipfile.ZipInfo(n, date_time=(2026, 1, 5, 0, 0, 0))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(member(f"{base}_message_{args.levels}.csv"), "\n".join(msgs) + "\n",
                   compress_type=zipfile.ZIP_DEFLATED)
        z.writestr(member(f"{base}_orderbook_{args.levels}.csv"), "\n".join(books) + "\n",
                   compress_type=zipfile.ZIP_DEFLATED)
    print(f"wrote {path}: {len(msgs)} events")


if __name__ == "__main__":
    main()
