#!/usr/bin/env python3
"""The quick alternative a quant would write: a Python socket server that speaks
tickinfer's wire protocol and calls onnxruntime per request. Used as the last row
of `tickinfer bench` (it is not part of tickinfer).

    python3 scripts/python_sidecar.py --model models/lobster_direction.toml --socket /tmp/py.sock
"""
import argparse
import os
import socket
import struct
import sys
import time
import tomllib

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(__file__))
from tickfeatures import feature_matrix  # noqa: E402

REQ = struct.Struct("<QHqqqqqQHH32fI")  # ml_request_t, 194 bytes
RESP = struct.Struct("<bBqQQHHQQIHHI")  # ml_response_t, 58 bytes
HELLO = struct.Struct("<HHIHHHH")
ACK = struct.Struct("<HHIHHHHqHHII28s")
assert REQ.size == 194 and RESP.size == 58 and HELLO.size == 16 and ACK.size == 64


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--socket", required=True)
    args = ap.parse_args()
    with open(args.model, "rb") as f:
        m = tomllib.load(f)
    onnx = os.path.join(os.path.dirname(args.model), m["model"]["onnx"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])
    scale = m["model"]["price_scale"]
    feats, mean, std = m["input"]["features"], m["input"].get("mean"), m["input"].get("std")
    dirs = {"sell": -1, "flat": 0, "buy": 1}
    classes = [dirs[c] for c in m["output"]["classes"]]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.socket)
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        try:
            HELLO.unpack(recv_exact(conn, HELLO.size))
            conn.sendall(ACK.pack(1, 64, 0x41484B54, 0, 194, 58, 32, scale, 0, 0, 256, m["model"]["version"], b"python-sidecar"))
            while True:
                raw = recv_exact(conn, REQ.size)
                t_recv = now_ns()
                f = REQ.unpack(raw)
                r = {
                    "bid_price": np.array([f[2]], dtype=np.float64), "ask_price": np.array([f[3]], dtype=np.float64),
                    "bid_size": np.array([f[4]]), "ask_size": np.array([f[5]]),
                    "book_imbalance": np.array([f[6]], dtype=np.float64),
                    "features": np.array([f[10:10 + 32]], dtype=np.float32),
                }
                x = feature_matrix(feats, r, scale, mean, std)
                t0 = now_ns()
                p = sess.run([m["output"]["name"]], {m["input"]["name"]: x})[0][0]
                t1 = now_ns()
                j = int(np.argmax(p))
                conn.sendall(RESP.pack(classes[j], int(round(100 * p[j])), (f[2] + f[3]) // 2, t1 - t0, f[7], f[1], 0,
                                       t_recv, now_ns(), m["model"]["version"], 1, 0, 0x53524B54))
        except ConnectionError:
            conn.close()


if __name__ == "__main__":
    main()
