#!/usr/bin/env python3
"""Peer: NIXL's own UCX backend moving host memory between two agents of one process.

WRITE (the PUT-like direction) copies 16 blocks from agent A's buffer into agent B's, READ pulls
them back into a zeroed buffer of A; each direction runs for --duration seconds with --inflight
requests of 16 blocks (each over its own blocks; default 1), each reposted as soon as it
completes. UCX picks its transports from UCX_TLS: `tcp` is the peer of MemKV's TCP path, UCX's
default (shared memory / CMA on one host) the peer of a same-host transport. Bytes are compared
after each phase. Each transfer is timed from its post to the poll that sees it DONE (busy
polling), and the p99 of those latencies is reported per phase; a transfer still in flight after
--timeout seconds is an error. Prints one JSON line.

  UCX_TLS=tcp python benches/peers/ucx_peer.py --size 2MiB --duration 3
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nixl_kv import size  # noqa: E402  (also applies the torch stub for nixl-cu12 1.3.2)
from nixl_cu12._api import nixl_agent, nixl_agent_config  # noqa: E402

import numpy as np  # noqa: E402

BATCH = 16


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2MiB")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--inflight", type=int, default=1, help="requests of 16 blocks in flight")
    ap.add_argument("--timeout", type=float, default=30.0, help="most seconds one transfer may take")
    a = ap.parse_args()
    if a.inflight < 1:
        ap.error("--inflight must be at least 1")
    block = size(a.size)
    n = a.inflight * BATCH * block
    pid = os.getpid()
    one = nixl_agent(f"ucx-a-{pid}", nixl_agent_config(backends=["UCX"]))
    two = nixl_agent(f"ucx-b-{pid}", nixl_agent_config(backends=["UCX"]))
    src = np.random.default_rng(3).integers(0, 256, n, dtype=np.uint8)
    back = np.zeros(n, dtype=np.uint8)
    far = np.zeros(n, dtype=np.uint8)
    one.register_memory([(src.ctypes.data, n, 0, ""), (back.ctypes.data, n, 0, "")], "DRAM")
    two.register_memory([(far.ctypes.data, n, 0, "")], "DRAM")
    one.add_remote_agent(two.get_agent_metadata())
    two.add_remote_agent(one.get_agent_metadata())

    def descs(agent, base, r):
        first = r * BATCH
        return agent.get_xfer_descs([(base + (first + i) * block, block, 0) for i in range(BATCH)], "DRAM")

    result = {"system": f"nixl-ucx-{os.environ.get('UCX_TLS', 'default')}", "block_bytes": block,
              "inflight": a.inflight}
    for op, local in (("WRITE", src), ("READ", back)):
        handles = [one.initialize_xfer(op, descs(one, local.ctypes.data, r), descs(one, far.ctypes.data, r), two.name)
                   for r in range(a.inflight)]
        moved, lat_us, start = 0, [], time.perf_counter()
        posted = []
        for h in handles:
            t0 = time.perf_counter()
            posted.append((h, t0, one.transfer(h)))
        while posted:
            h, t0, s = posted.pop(0)
            if s == "PROC":
                s = one.check_xfer_state(h)
            if s == "PROC" and time.perf_counter() - t0 < a.timeout:
                posted.append((h, t0, s))
                continue
            if s != "DONE":
                raise RuntimeError(f"{op}: {s}" + (f" after {a.timeout:g} s" if s == "PROC" else ""))
            now = time.perf_counter()
            lat_us.append((now - t0) * 1e6)
            moved += BATCH * block
            if now - start < a.duration:
                posted.append((h, now, one.transfer(h)))
        secs = time.perf_counter() - start
        for h in handles:
            one.release_xfer_handle(h)
        ok = bool(np.array_equal(src, far if op == "WRITE" else back))
        key = "put" if op == "WRITE" else "get"
        result[f"{key}_gib_per_s"] = moved / secs / (1 << 30)
        result[f"{key}_verified"] = ok
        ordered = sorted(lat_us)
        # p99 picked like `memkv bench` does (no interpolation)
        result[f"{key}_p99_us"] = ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)] if ordered else None
    print(json.dumps(result), flush=True)
    # With Debian's libibverbs1 installed (Mooncake needs it) but no RDMA device, the wheel's UCX
    # crashes while NIXL tears the agents down at exit (SIGSEGV after all work is done, seen with
    # nixl-cu12 1.5.1 here); the results are out, so leave without that teardown.
    os._exit(0)


if __name__ == "__main__":
    main()
