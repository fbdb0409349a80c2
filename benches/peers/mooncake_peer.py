#!/usr/bin/env python3
"""Peer: Mooncake Store over TCP (PyPI mooncake-transfer-engine-non-cuda), zero-copy API.

Needs a running `mooncake_master` (with its HTTP metadata server) and a second process holding a
memory segment (`--hold SECONDS` runs that role), so that this client, which contributes no
segment of its own, moves every byte over TCP. PUT writes batches of 16 new keys
(batch_put_from; Mooncake does not rewrite an existing key, so keys are never reused) until
--duration or the --budget of segment memory is used; GET reads the first batch back
repeatedly (batch_get_into) and compares it with what was written; then every key is removed
(and the segment is emptied when a run starts). Each batch call is timed (one batch is in flight
at a time), and the p99 of those latencies is reported per phase. Prints one JSON line.

  python mooncake_peer.py --hold 600 &          # the segment holder
  python mooncake_peer.py --size 2MiB --duration 3
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from mooncake.store import MooncakeDistributedStore

BATCH = 16
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(text):
    for unit, mult in sorted(UNITS.items(), key=lambda u: -len(u[0])):
        if text.endswith(unit):
            return int(text[: -len(unit)]) * mult
    return int(text)


def p99(lat_us):
    """p99 of the samples, picked like `memkv bench` does (no interpolation)."""
    s = sorted(lat_us)
    return s[min(int(len(s) * 0.99), len(s) - 1)] if s else None


def store(a, segment, buffer):
    s = MooncakeDistributedStore()
    rc = s.setup("127.0.0.1", a.metadata, segment, buffer, "tcp", "", a.master)
    if rc != 0:
        raise RuntimeError(f"mooncake setup failed: {rc}")
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2MiB")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--budget", default="1536MiB", help="segment memory the PUT phase may fill")
    ap.add_argument("--master", default="127.0.0.1:50051")
    ap.add_argument("--metadata", default="http://127.0.0.1:8090/metadata")
    ap.add_argument("--hold", type=float, help="run as the segment holder for this many seconds")
    ap.add_argument("--segment", default="2GiB", help="segment size of the holder")
    a = ap.parse_args()
    if a.hold:
        s = store(a, parse_size(a.segment), 16 << 20)
        print("holding", flush=True)
        time.sleep(a.hold)
        return 0
    block = parse_size(a.size)
    n = BATCH * block
    s = store(a, 0, 64 << 20)
    # Start from an empty segment: objects an earlier run left behind (a batch still under its
    # read lease when that run removed its keys, or a run that was killed) would push the segment
    # past the master's eviction watermark, which then evicts the batch this run reads back.
    s.remove_all(True)
    src = np.random.default_rng(5).integers(0, 256, n, dtype=np.uint8)
    dst = np.zeros(n, dtype=np.uint8)
    for b in (src, dst):
        if s.register_buffer(b.ctypes.data, b.nbytes) != 0:
            raise RuntimeError("register_buffer failed")
    addrs = lambda base: [base + i * block for i in range(BATCH)]  # noqa: E731
    tag = f"{block}-{time.time_ns()}"
    written, put_lat, get_lat = [], [], []
    start = time.perf_counter()
    while time.perf_counter() - start < a.duration and (len(written) + 1) * n <= parse_size(a.budget):
        keys = [f"{tag}-{len(written)}-{i}" for i in range(BATCH)]
        t0 = time.perf_counter()
        r = s.batch_put_from(keys, addrs(src.ctypes.data), [block] * BATCH)
        put_lat.append((time.perf_counter() - t0) * 1e6)
        if any(x != 0 for x in r):
            raise RuntimeError(f"batch_put_from: {r}")
        written.append(keys)
    put = len(written) * n / (time.perf_counter() - start)
    moved, start = 0, time.perf_counter()
    while time.perf_counter() - start < a.duration:
        t0 = time.perf_counter()
        r = s.batch_get_into(written[0], addrs(dst.ctypes.data), [block] * BATCH)
        get_lat.append((time.perf_counter() - t0) * 1e6)
        if any(x != block for x in r):
            raise RuntimeError(f"batch_get_into: {r}")
        moved += n
    get = moved / (time.perf_counter() - start)
    ok = bool(np.array_equal(src, dst))
    for keys in written:
        s.batch_remove(keys, True)  # force: the batch just read is still under its lease
    gib = float(1 << 30)
    print(json.dumps({"system": "mooncake", "block_bytes": block, "batch": BATCH, "put_gib_per_s": put / gib,
                      "put_p99_us": p99(put_lat), "put_verified": ok, "get_gib_per_s": get / gib,
                      "get_p99_us": p99(get_lat), "get_verified": ok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
