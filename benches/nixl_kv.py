#!/usr/bin/env python3
"""Offload and onboard KV blocks through the real NIXL agent and libplugin_MEMKV.so.

KVBM's shape: blocks of --size bytes in one registered host pool, one OBJ_SEG object per block
keyed by a 64-bit sequence hash (devId, empty metaInfo), --batch blocks per NIXL request,
--handles requests in flight (each reposted as soon as it completes). Phase WRITE (offload) then
phase READ (onboard into a second region, written once before timing), each for --duration
seconds (and at most --max-blocks blocks, rounded up to whole requests); then every onboarded
block is compared byte for byte with what was offloaded (the last READ of each block: the pool is
read over and over). `--op get` writes every block once, untimed, before the READ phase; `--op
put` runs the WRITE phase only.
A request's latency runs from its post to the poll that sees it DONE (when nothing completed, the
next poll comes after 1/10 of the last request's latency, between 20 us and 2 ms).

The cluster comes from the MEMKV_* environment (MEMKV_SERVERS, MEMKV_AUTH_KEY, MEMKV_LICENSE, ...);
NIXL finds the plugin through NIXL_PLUGIN_DIR (default: target/release of this checkout).
`memkv bench --via nixl` embeds this file and runs it with `--json`.

  python benches/nixl_kv.py [--size 2MiB[,4MiB...]] [--batch 16] [--handles 4] [--duration 5]
                            [--op both|put|get] [--max-blocks N] [--no-verify] [--json]
                            [--namespace NS] [--key-seed N]
  python benches/nixl_kv.py --check     (prints the nixl-cu12 version as JSON; exits 3 without it)

Exit status: 0 all well; 1 a request failed or an onboarded block differed; 3 no nixl-cu12 (or
numpy) in this Python; 4 NIXL could not create the MEMKV backend (plugin not found or refused).
"""

import argparse
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

# None when run with `python -c` (as `memkv bench --via nixl` does).
ROOT = Path(__file__).resolve().parents[1] if "__file__" in globals() else None
if importlib.util.find_spec("torch") is None:
    # nixl-cu12 1.3.2 imports torch at load, only to recognise tensors (isinstance(x,
    # torch.Tensor)); we pass address tuples, so a class nothing is an instance of stands in, as
    # tests/nixl/stubs/torch does for the test suite (no 2 GB CUDA torch wheel needed).
    _torch = types.ModuleType("torch")
    _torch.Tensor = type("Tensor", (), {})
    sys.modules["torch"] = _torch

try:
    import numpy as np
    from nixl_cu12._api import nixl_agent, nixl_agent_config
except ImportError as _e:  # reported by --check, and by a run, as one line
    np = nixl_agent = nixl_agent_config = None
    IMPORT_ERROR = f"{type(_e).__name__}: {_e}"
else:
    IMPORT_ERROR = None

# Between polls that found no request done: 1/POLL_SHARE of the last request's latency, at
# least POLL_S and at most POLL_MAX_S. A fixed 0.2 ms nap cost this process 4-5% of both cores
# (a poll and a context switch every 0.2 ms) while each 16 MiB request took 200 ms; a 0.2 ms
# floor made small requests wait for the nap instead (4 requests of 16 x 4 KiB finish in well
# under 0.2 ms, so the driver, not the plugin, set the pace: docs/benchmarks.md).
POLL_S = 0.00002
POLL_MAX_S = 0.002
POLL_SHARE = 10
UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "K": 1 << 10, "MIB": 1 << 20, "M": 1 << 20, "GIB": 1 << 30, "G": 1 << 30}
GIB = float(1 << 30)


def size(text):
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    return int(float(num) * UNITS[t[len(num):]])


def percentiles(lat_us):
    """p50, p99, p999 of request latencies, picked like `memkv bench` does (no interpolation)."""
    if not lat_us:
        return None, None, None
    s = sorted(lat_us)
    return tuple(s[min(int(len(s) * p), len(s) - 1)] for p in (0.50, 0.99, 0.999))


def run_phase(agent, handles, op, seconds, block_bytes, batch, max_blocks=0):
    """Keeps every handle posted for `seconds` (and until `max_blocks` blocks were posted, if
    nonzero). Returns a dict: blocks moved, seconds, request latencies (us), failed blocks, the
    indices of the requests that failed, and the first failure's text."""
    start = time.perf_counter()
    deadline = start + seconds
    state, posted_at = {}, {}
    lat_us, failed, first_error = [], set(), None
    done_blocks = posted_blocks = 0

    def post(i):
        nonlocal posted_blocks, first_error
        posted_blocks += batch
        posted_at[i] = time.perf_counter()
        try:
            state[i] = agent.transfer(handles[i])
        except Exception as e:  # nixl >= 1.5 raises nixl*Error for a negative status
            state[i] = f"ERR:{type(e).__name__}:{e}"

    for i in range(len(handles)):
        if max_blocks and posted_blocks >= max_blocks:
            break
        post(i)
    active = set(state)
    while active:
        progressed = False
        for i in list(active):
            s = state[i]
            if s == "PROC":
                try:
                    s = state[i] = agent.check_xfer_state(handles[i])
                except Exception as e:
                    s = state[i] = f"ERR:{type(e).__name__}:{e}"
            if s == "PROC":
                continue
            progressed = True
            now = time.perf_counter()
            if s == "DONE":
                done_blocks += batch
                lat_us.append((now - posted_at[i]) * 1e6)
            else:
                # A failed request is not reposted: its handle may be unusable, and a dead
                # cluster would otherwise fail as fast as it can for the whole phase.
                failed.add(i)
                first_error = first_error or f"{op} request failed: {s}"
                active.discard(i)
                continue
            if now < deadline and not (max_blocks and posted_blocks >= max_blocks):
                post(i)
            else:
                active.discard(i)
        if not progressed:
            # Poll like an inference loop between steps, not a busy spin that takes a core from
            # the transfers themselves.
            nap = lat_us[-1] / 1e6 / POLL_SHARE if lat_us else POLL_S
            time.sleep(min(POLL_MAX_S, max(POLL_S, nap)))
    return {
        "blocks": done_blocks,
        "seconds": time.perf_counter() - start,
        "lat_us": lat_us,
        "failed_blocks": len(failed) * batch,
        "failed_requests": failed,
        "first_error": first_error,
    }


def phase_row(name, p, block):
    p50, p99, p999 = percentiles(p["lat_us"])
    return {
        "op": name,
        "blocks": p["blocks"],
        "seconds": p["seconds"],
        "gib_per_s": p["blocks"] * block / p["seconds"] / GIB,
        "blocks_per_s": p["blocks"] / p["seconds"],
        "requests": len(p["lat_us"]),
        "p50_us": p50,
        "p99_us": p99,
        "p999_us": p999,
        "errors": p["failed_blocks"],
        "first_error": p["first_error"],
    }


def bench_size(agent, a, block):
    """Both phases (or one) for one block size; returns the result object."""
    n = a.batch * a.handles
    rng = np.random.default_rng(7)
    src = np.frombuffer(rng.bytes(n * block), dtype=np.uint8)
    # Written once before timing so that its pages exist, as those of a KVBM pool registered with
    # NIXL do, and as `memkv bench --pool` writes its pool (np.zeros leaves them to the first GET).
    dst = np.full(n * block, 0xA5, dtype=np.uint8)
    pools = agent.register_memory(
        [(src.ctypes.data, src.nbytes, 0, ""), (dst.ctypes.data, dst.nbytes, 0, "")], "DRAM", backends=["MEMKV"]
    )
    keys = np.random.default_rng(None if a.key_seed is None else [a.key_seed, block])
    hashes = [int(x) for x in keys.integers(0, 2**63, n, dtype=np.uint64) | np.uint64(1 << 63)]
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
    result = {"block_bytes": block, "batch": a.batch, "handles": a.handles, "obj_register_us": reg_us, "phases": []}
    try:
        if a.op in ("both", "put"):
            w = run_phase(agent, writes, "WRITE", a.duration, block, a.batch, a.max_blocks)
            row = phase_row("put", w, block)
            result["phases"].append(row)
            result.update(write_gib_per_s=row["gib_per_s"], write_blocks=w["blocks"])
        else:
            # The fill of `--op get`: every block written once, untimed.
            w = run_phase(agent, writes, "WRITE", 0.0, block, a.batch)
            if w["failed_blocks"]:
                raise RuntimeError(f"writing the blocks to read (before the READ phase) failed: {w['first_error']}")
        if a.op in ("both", "get"):
            rd = run_phase(agent, reads, "READ", a.duration, block, a.batch, a.max_blocks)
            row = phase_row("get", rd, block)
            # Blocks of a request that failed (or never wrote) are not compared: they already
            # count as errors.
            bad_w = w["failed_requests"] if a.op == "both" else set()
            check = [
                i
                for r in range(a.handles)
                if r not in rd["failed_requests"] and r not in bad_w
                for i in range(r * a.batch, (r + 1) * a.batch)
            ]
            if a.no_verify or not rd["blocks"]:
                check = []
            span = lambda i: slice(i * block, (i + 1) * block)  # noqa: E731
            bad = [i for i in check if not np.array_equal(src[span(i)], dst[span(i)])]
            row["errors"] += len(bad)
            result["phases"].append(row)
            result.update(
                read_gib_per_s=row["gib_per_s"],
                read_blocks=rd["blocks"],
                verified_blocks=len(check),
                mismatched_blocks=len(bad),
            )
    finally:
        for h in writes + reads:
            agent.release_xfer_handle(h)
        agent.deregister_memory(objects, backends=["MEMKV"])
        agent.deregister_memory(pools, backends=["MEMKV"])
    return result


def print_text(r):
    block = r["block_bytes"]
    for p in r["phases"]:
        what = "offload (NIXL WRITE):" if p["op"] == "put" else "onboard (NIXL READ): "
        print(
            f"{what} {p['blocks']} blocks of {block} B in {p['seconds']:.2f} s = {p['gib_per_s']:.3f} GiB/s"
            + (f"; {p['errors']} blocks failed: {p['first_error']}" if p["first_error"] else "")
        )
    if "verified_blocks" in r:
        n = r["verified_blocks"]
        print(f"verification: {n - r['mismatched_blocks']}/{n} onboarded blocks identical to the offloaded bytes")
    print(
        f"OBJ_SEG register + deregister: {r['obj_register_us']:.1f} us per block (batches of {r['batch']}, "
        "through NIXL's Python API)"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2MiB", help="block sizes, comma-separated (default 2MiB)")
    ap.add_argument("--batch", type=int, default=16, help="blocks per NIXL request (default 16)")
    ap.add_argument("--handles", type=int, default=4, help="requests in flight (default 4)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per phase (default 5)")
    ap.add_argument("--op", choices=("both", "put", "get"), default="both", help="phases to run (default both)")
    ap.add_argument("--max-blocks", type=int, default=0, help="most blocks per phase, 0 for no limit")
    ap.add_argument("--no-verify", action="store_true", help="skip comparing the onboarded blocks")
    ap.add_argument(
        "--namespace",
        default=os.environ.get("MEMKV_NAMESPACE") or f"nixl-kv-{os.getpid()}",
        help="key namespace (default: MEMKV_NAMESPACE, else nixl-kv-PID)",
    )
    ap.add_argument(
        "--key-seed",
        type=int,
        help="seed of the blocks' hashes (default: new ones every run); runs with the same --namespace, --size "
        "and seed offload the same blocks again, as `memkv bench` rewrites its own keys",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object per size instead of text")
    ap.add_argument("--check", action="store_true", help="print the nixl-cu12 version as JSON and exit")
    a = ap.parse_args()
    if IMPORT_ERROR:
        print(f"nixl_kv.py: {sys.executable} cannot import the nixl-cu12 wheel: {IMPORT_ERROR}", file=sys.stderr)
        return 3
    if a.check:
        from importlib import metadata

        try:
            version = metadata.version("nixl-cu12")
        except metadata.PackageNotFoundError:
            version = "unknown"
        print(json.dumps({"nixl": version, "python": sys.version.split()[0]}))
        return 0
    sizes = [size(s) for s in a.size.split(",") if s.strip()]
    if a.batch < 1 or a.handles < 1 or not sizes or min(sizes) < 1:
        ap.error("--batch, --handles and every --size must be at least 1")
    # Read by NIXL when the first agent is made.
    if ROOT is not None:
        os.environ.setdefault("NIXL_PLUGIN_DIR", str(ROOT / "target" / "release"))

    try:
        agent = nixl_agent(f"memkv-kv-{os.getpid()}", nixl_agent_config(backends=[]))
        agent.create_backend("MEMKV", {"namespace": a.namespace})
    except Exception as e:  # the plugin did not load, or refused its settings (its log says why)
        where = os.environ.get("NIXL_PLUGIN_DIR", "?")
        print(f"nixl_kv.py: NIXL could not create the MEMKV backend (NIXL_PLUGIN_DIR={where}): {e!r}", file=sys.stderr)
        return 4
    failed = False
    for block in sizes:
        r = bench_size(agent, a, block)
        failed |= any(p["errors"] for p in r["phases"])
        if a.json:
            print(json.dumps(r), flush=True)
        else:
            print_text(r)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
