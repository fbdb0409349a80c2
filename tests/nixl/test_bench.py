"""`memkv bench --via nixl`: the same PUT/GET rows as the raw bench, measured through the real NIXL
agent and libplugin_MEMKV.so by the driver embedded in memkv (benches/nixl_kv.py), run with this
interpreter (MEMKV_PYTHON) and the plugin found next to memkv (no NIXL_PLUGIN_DIR)."""

import json
import subprocess
import sys
import urllib.request

from conftest import BIN, ROOT, worker_env

GIB = float(1 << 30)


def bench(cluster, *args, timeout=120):
    env = worker_env({**cluster.env(), "MEMKV_PYTHON": sys.executable})
    env.pop("NIXL_PLUGIN_DIR", None)
    p = subprocess.run(
        [str(BIN / "memkv"), "bench", "--via", "nixl", "--no-progress", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout)


def test_bench_via_nixl_reports_verified_put_and_get_rows_and_plots_them(cluster, tmp_path):
    svg = tmp_path / "nixl.svg"
    rows = bench(cluster, "--size", "64KiB", "--duration", "0.5", "--plot", str(svg))
    assert [r["op"] for r in rows] == ["put", "get"], rows
    for r in rows:
        assert r["size_bytes"] == 65536, r
        assert r["ops"] > 0 and r["errors"] == 0 and r["misses"] == 0, r
        assert r["inflight"] == 32 and r["connections"] == 4, r  # --inflight 32: 2 requests of 16 blocks
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"], r
        assert abs(r["gib_per_s"] - r["ops"] * 65536 / r["seconds"] / GIB) < 1e-9, r
        assert r["ops"] % 16 == 0, "blocks move in whole requests of 16"
    text = svg.read_text()
    assert "--via nixl (NIXL " in text and text.count("<polyline") == 2, text


def test_bench_via_nixl_get_fills_first_and_stops_at_count(cluster):
    rows = bench(cluster, "--op", "get", "--size", "4KiB,1MiB", "--inflight", "4", "--count", "64", "--duration", "5")
    assert [(r["op"], r["size_bytes"]) for r in rows] == [("get", 4096), ("get", 1 << 20)], rows
    for r in rows:
        # One request of 4 blocks in flight; --count 64 blocks, well before --duration.
        assert r["inflight"] == 4 and r["ops"] == 64 and r["errors"] == 0, r
        assert r["seconds"] < 5, r


def test_the_driver_with_a_key_seed_offloads_the_same_blocks_again(cluster):
    """benches/nixl_kv.py --key-seed: runs with one namespace and seed rewrite one set of blocks
    (as `memkv bench` rewrites its keys); without it every run offloads new ones."""

    def objects():
        return sum(
            json.load(urllib.request.urlopen(f"http://{n.admin}/v1/status", timeout=5))["objects"]
            for n in cluster.nodes
        )

    def offload(*extra):
        args = ["--op", "put", "--size", "4KiB", "--batch", "4", "--handles", "1", "--max-blocks", "4"]
        p = subprocess.run(
            [sys.executable, str(ROOT / "benches" / "nixl_kv.py"), *args, "--namespace", "seeded", "--json", *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env=worker_env(cluster.env()),
        )
        assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
        # NIXL prints its own lines first; the driver's JSON object is the last line.
        assert json.loads(p.stdout.strip().splitlines()[-1])["write_blocks"] == 4, p.stdout

    before = objects()
    offload("--key-seed", "3")
    assert objects() == before + 4
    offload("--key-seed", "3")
    assert objects() == before + 4, "the same seed must offload the same 4 blocks"
    offload()
    assert objects() == before + 8, "without a seed the blocks are new"
