"""A separate process with its own NIXL agent, for the tests that need one (conftest.run_worker).

Usage: python worker.py '<json job>'; prints one JSON line with the result. Job keys:
  op:      "write" | "read" | "roundtrip" | "query"
  params:  backend params for create_backend("MEMKV", params) ({} = configure from MEMKV_* env)
  ids:     devIds of the blocks (decimal devId keys), block i = bytes [i*size, (i+1)*size) of
           buffer(len(ids)*size, seed)
  size:    block size in bytes
  seed:    seed of the block contents
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import buffer, make_agent, read_objects, register_dram, write_objects  # noqa: E402


def main():
    job = json.loads(sys.argv[1])
    agent = make_agent(job.get("params") or {})
    ids, size = job.get("ids", []), job.get("size", 0)
    objects = [(d, i * size, size) for i, d in enumerate(ids)]
    out = {}
    if job["op"] in ("write", "roundtrip"):
        src = buffer(len(ids) * size, job["seed"])
        register_dram(agent, src)
        out["write"] = write_objects(agent, src, objects)
    if job["op"] in ("read", "roundtrip"):
        expected = buffer(len(ids) * size, job["seed"])
        dst = buffer(len(ids) * size)
        register_dram(agent, dst)
        out["read"] = read_objects(agent, dst, objects)
        out["match"] = [bool((dst[o : o + n] == expected[o : o + n]).all()) for _, o, n in objects]
    if job["op"] == "query":
        out["query"] = agent.query_memory([(0, 1, d, "") for d in ids], "MEMKV", "OBJ")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
