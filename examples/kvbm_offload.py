#!/usr/bin/env python3
"""KVBM-shaped offload and onboard through NIXL and MemKV, in five minutes of reading.

What KVBM does with a remote tier, step by step, with the real NIXL agent and the MEMKV plugin:
  1. create the MEMKV backend (cluster settings from MEMKV_* variables, namespace per model/rank),
  2. register the host block pool once (KVBM's pinned host pool; here plain host memory),
  3. offload a batch of blocks: one OBJ_SEG object per block, keyed by the block's sequence hash,
  4. ask which blocks the cluster holds (queryMem),
  5. onboard them into other pool slots, and check the bytes.

Run (with a cluster up, e.g. scripts/quickstart.sh's, and the plugin built):
  export MEMKV_SERVERS=127.0.0.1:9900 MEMKV_AUTH_KEY=... MEMKV_LICENSE=... NIXL_PLUGIN_DIR=target/release
  python examples/kvbm_offload.py
"""

import os
import sys
import time

import numpy as np
from nixl_cu12._api import nixl_agent, nixl_agent_config

BLOCK = 2 << 20  # one KV block: all layers of 16 tokens, say
BATCH = 16  # blocks per offload, as KVBM batches them


def run(agent, op, local, remote):
    """One NIXL request: local pool slots <-> remote objects; polls until it is done."""
    handle = agent.initialize_xfer(
        op, agent.get_xfer_descs(local, "DRAM"), agent.get_xfer_descs(remote, "OBJ"), agent.name
    )
    state = agent.transfer(handle)  # "PROC": the plugin works in the background
    while state == "PROC":
        time.sleep(0.0005)  # an inference loop would do a step here
        state = agent.check_xfer_state(handle)
    agent.release_xfer_handle(handle)
    if state != "DONE":
        raise RuntimeError(f"{op} failed: {state}")


def main():
    # 1. One agent per worker; the namespace keeps models and TP ranks apart while replicas of
    #    one model (same namespace) share blocks.
    agent = nixl_agent(f"kvbm-worker-{os.getpid()}", nixl_agent_config(backends=[]))
    agent.create_backend("MEMKV", {"namespace": os.environ.get("MEMKV_NAMESPACE", "example-model-tp0")})

    # 2. The host pool: 2 x BATCH slots, registered once (never per transfer).
    pool = np.zeros(2 * BATCH * BLOCK, dtype=np.uint8)
    base = pool.ctypes.data
    pool_reg = agent.register_memory([(base, pool.nbytes, 0, "")], "DRAM", backends=["MEMKV"])
    slot = lambda i: base + i * BLOCK  # noqa: E731
    pool[: BATCH * BLOCK] = np.random.default_rng().integers(0, 256, BATCH * BLOCK, dtype=np.uint8)

    # 3. Offload slots 0..15. Each block is an object named by its sequence hash (devId; empty
    #    metaInfo means the key is the decimal devId). Registering an OBJ_SEG descriptor costs no
    #    round trip, so KVBM registers per transfer.
    hashes = [int(h) for h in np.random.default_rng().integers(1, 2**63, BATCH, dtype=np.uint64)]
    objects = agent.register_memory([(0, BLOCK, h, "") for h in hashes], "OBJ", backends=["MEMKV"])
    run(agent, "WRITE", [(slot(i), BLOCK, 0) for i in range(BATCH)], [(0, BLOCK, h) for h in hashes])
    print(f"offloaded {BATCH} blocks of {BLOCK >> 20} MiB")

    # 4. Which blocks does the cluster hold? One batched EXISTS per node.
    unknown = hashes[-1] ^ 0x5A5A5A5A
    found = agent.query_memory([(0, 1, h, "") for h in hashes + [unknown]], "MEMKV", "OBJ")
    print(f"queryMem: {sum(f is not None for f in found[:-1])}/{BATCH} present, unknown hash -> {found[-1]}")

    # 5. Onboard into slots 16..31 and compare with what went out.
    run(agent, "READ", [(slot(BATCH + i), BLOCK, 0) for i in range(BATCH)], [(0, BLOCK, h) for h in hashes])
    same = np.array_equal(pool[: BATCH * BLOCK], pool[BATCH * BLOCK :])
    print(f"onboarded {BATCH} blocks: {'identical' if same else 'DIFFERENT'} to the offloaded bytes")

    agent.deregister_memory(objects, backends=["MEMKV"])
    agent.deregister_memory(pool_reg, backends=["MEMKV"])
    return 0 if same and found[-1] is None and all(found[:-1]) else 1


if __name__ == "__main__":
    sys.exit(main())
