#!/usr/bin/env python3
"""Offload and onboard KV blocks through the real NIXL agent and libplugin_MEMKV.so.

KVBM's shape: blocks of --size bytes in one registered host pool, one OBJ_SEG object per block
keyed by a 64-bit sequence hash (devId, empty metaInfo), --batch blocks per NIXL request,
--handles requests in flight (each reposted as soon as it completes). Phase WRITE (offload) then
phase READ (onboard into a zeroed region), each for --duration seconds; then every onboarded block
is compared byte for byte with what was offloaded.

The cluster comes from the MEMKV_* environment (MEMKV_SERVERS, MEMKV_AUTH_KEY, MEMKV_LICENSE, ...);
NIXL finds the plugin through NIXL_PLUGIN_DIR (default: target/release of this checkout).

  python benches/nixl_kv.py [--size 2MiB] [--batch 16] [--handles 4] [--duration 5] [--json]
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("torch") is None:  # nixl-cu12 1.3.2 imports torch; see the stub's docs
    sys.path.insert(0, str(ROOT / "tests" / "nixl" / "stubs"))

import numpy as np  # noqa: E402
from nixl_cu12._api import nixl_agent, nixl_agent_config  # noqa: E402

POLL_S = 0.0002
UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "K": 1 << 10, "MIB": 1 << 20, "M": 1 << 20, "GIB": 1 << 30, "G": 1 << 30}


def size(text):
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    return int(float(num) * UNITS[t[len(num):]])


def run_phase(agent, handles, op, seconds, block_bytes, batch):
    """Keeps every handle posted for `seconds`; returns (bytes, seconds)."""
    state = {}
    start = time.perf_counter()
    for h in handles:
        state[h] = agent.transfer(h)
    done_bytes = 0
    deadline = start + seconds
    active = set(handles)
    while active:
        progressed = False
        for h in list(active):
            s = state[h]
            if s == "PROC":
                s = state[h] = agent.check_xfer_state(h)
            if s == "PROC":
                continue
            progressed = True
            if s != "DONE":
                raise RuntimeError(f"{op} request failed: {s}")
            done_bytes += block_bytes * batch
            if time.perf_counter() < deadline:
                state[h] = agent.transfer(h)
            else:
                active.discard(h)
        if not progressed:
            # Poll like an inference loop between steps, not a busy spin that takes a core from
            # the transfers themselves.
            time.sleep(POLL_S)
    return done_bytes, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2MiB", help="block size (default 2MiB)")
    ap.add_argument("--batch", type=int, default=16, help="blocks per NIXL request (default 16)")
    ap.add_argument("--handles", type=int, default=4, help="requests in flight (default 4)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per phase (default 5)")
    ap.add_argument("--namespace", default=f"nixl-kv-{os.getpid()}", help="key namespace")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    a = ap.parse_args()
    block = size(a.size)
    n = a.batch * a.handles
    # Read by NIXL when the first agent is made.
    os.environ.setdefault("NIXL_PLUGIN_DIR", str(ROOT / "target" / "release"))

    agent = nixl_agent(f"memkv-kv-{os.getpid()}", nixl_agent_config(backends=[]))
    agent.create_backend("MEMKV", {"namespace": a.namespace})
    src = np.random.default_rng(7).integers(0, 256, n * block, dtype=np.uint8)
    dst = np.zeros(n * block, dtype=np.uint8)
    pools = agent.register_memory(
        [(src.ctypes.data, src.nbytes, 0, ""), (dst.ctypes.data, dst.nbytes, 0, "")], "DRAM", backends=["MEMKV"]
    )
    hashes = [int(x) for x in np.random.default_rng().integers(0, 2**63, n, dtype=np.uint64) | np.uint64(1 << 63)]
    objects = agent.register_memory([(0, block, h, "") for h in hashes], "OBJ", backends=["MEMKV"])

    def requests(op, base):
        out = []
        for r in range(a.handles):
            ids = range(r * a.batch, (r + 1) * a.batch)
            local = agent.get_xfer_descs([(base + i * block, block, 0) for i in ids], "DRAM")
            remote = agent.get_xfer_descs([(0, block, hashes[i]) for i in ids], "OBJ")
            out.append(agent.initialize_xfer(op, local, remote, agent.name))
        return out

    # KVBM registers each block's OBJ_SEG descriptor per transfer: time register + deregister.
    reg_rounds = 200
    t0 = time.perf_counter()
    for _ in range(reg_rounds):
        agent.deregister_memory(
            agent.register_memory([(0, block, h, "") for h in hashes[: a.batch]], "OBJ", backends=["MEMKV"]),
            backends=["MEMKV"],
        )
    reg_us = (time.perf_counter() - t0) / (reg_rounds * a.batch) * 1e6

    writes, reads = requests("WRITE", src.ctypes.data), requests("READ", dst.ctypes.data)
    wbytes, wsecs = run_phase(agent, writes, "WRITE", a.duration, block, a.batch)
    rbytes, rsecs = run_phase(agent, reads, "READ", a.duration, block, a.batch)
    bad = [i for i in range(n) if not np.array_equal(src[i * block : (i + 1) * block], dst[i * block : (i + 1) * block])]
    for h in writes + reads:
        agent.release_xfer_handle(h)
    agent.deregister_memory(objects, backends=["MEMKV"])
    agent.deregister_memory(pools, backends=["MEMKV"])

    gib = float(1 << 30)
    result = {
        "block_bytes": block,
        "batch": a.batch,
        "handles": a.handles,
        "write_gib_per_s": wbytes / wsecs / gib,
        "read_gib_per_s": rbytes / rsecs / gib,
        "write_blocks": wbytes // block,
        "read_blocks": rbytes // block,
        "obj_register_us": reg_us,
        "verified_blocks": n,
        "mismatched_blocks": len(bad),
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(
            f"offload (NIXL WRITE): {result['write_blocks']} blocks of {block} B in {wsecs:.2f} s = "
            f"{result['write_gib_per_s']:.3f} GiB/s\n"
            f"onboard (NIXL READ):  {result['read_blocks']} blocks of {block} B in {rsecs:.2f} s = "
            f"{result['read_gib_per_s']:.3f} GiB/s\n"
            f"verification: {n - len(bad)}/{n} onboarded blocks identical to the offloaded bytes\n"
            f"OBJ_SEG register + deregister: {reg_us:.1f} us per block (batches of {a.batch}, through NIXL's Python API)"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
