#!/usr/bin/env python3
"""MemKV next to the tools users would run instead, on loopback, in one run, in alternation.

For each round and each block size, every system runs PUT then GET for --seconds each, one after
the other (so machine drift hits all of them alike; the order of the systems rotates by one each
round, and the rows the closest targets compare run next to each other, in turn first: GROUPS),
with the data verified:
  memkv          `memkv --transport tcp bench` (Rust client, one node, 4 connections, 32 in flight;
                 the client library checks every GET's CRC32C, and every --verify-every'th GET is
                 also compared byte for byte)
  memkv-shm      the same with --transport shm: the node's same-host shared-memory transport
  memkv-1t       memkv with one thread in each process, as Redis and redis-benchmark run: a second
                 node started with MEMKV_THREADS=1, the client with MEMKV_IO_THREADS=1 (on 2 cores
                 shared by both, two threads each mostly buy cross-thread wake-ups)
  memkv-shm-1t   memkv-shm against that one-thread node, with one client I/O thread
  memkv-1t-batch4  memkv-1t with 4 blocks per request (PUT_BATCH/GET_BATCH, 8 in flight), the shape
                 of Redis's pipeline of 4
  memkv-shm-1t-batch16  memkv-shm-1t with 16 blocks per request (8 in flight, at most 512 MiB:
                 2 at 16 MiB), the shape of KVBM's NIXL requests and of the UCX peer's transfers
  memkv-pool     memkv, its GETs read into a pool of this process's memory (`--pool`) as large as
                 memkv-nixl's: as many blocks in flight (64; 32 at 16 MiB). The raw client doing
                 what the NIXL driver does, for the plugin's target
  memkv-nixl     benches/nixl_kv.py: the NIXL agent + libplugin_MEMKV.so over TCP
                 (MEMKV_TRANSPORT=tcp; 16 blocks x 4 requests; every onboarded block compared;
                 the same blocks every round, as memkv rewrites its keys: --key-seed)
  memkv-nixl-shm the same with MEMKV_TRANSPORT=shm
  redis          Debian's redis-server + redis-benchmark (SET/GET, 8 connections, pipeline 4, over
                 as many random keys as memkv uses at that size: `-r`, so the server stores distinct
                 objects as MemKV does; redis-benchmark sends one value buffer, hot in cache, where
                 memkv reads 256 MiB of distinct values), plus one SET/GET round trip per size
                 compared byte for byte over RESP
  mooncake       Mooncake Store over TCP: mooncake_master + a segment-holding process + this client
                 (batch_put_from / batch_get_into of 16 blocks; bytes compared)
  nixl-ucx-tcp   NIXL's UCX backend between two agents, UCX_TLS=tcp (peer of a TCP path)
  nixl-ucx-shm   the same with UCX's default same-host transports (shared memory / CMA)
Ceilings, once per round: iperf3 with 1 and 4 streams, two iperf3 processes at once, and memcpy
bandwidth per size. p99 latency comes from each tool where it measures one (see LATENCY_UNIT).

Writes <out>.csv (every round: one row per system, op and size, with the CPU-seconds processes
outside this run used meanwhile; plus a "meta" row with the date and commit, "ceiling" rows and
"failed" rows), <out>.md (medians over the rounds: GiB/s, p99, the ratios issue 7 names, and a
list of its targets, each met or not met, computed from the figures) and <out>.svg (GiB/s vs block
size), and prints the markdown. `--from-csv` writes the .md and .svg again from a CSV without
measuring; given the CSVs of several runs of the same code, it pools their rounds. CPU time used
by processes outside this run is sampled from /proc after each measurement, so a busy machine
shows in the output.

Run through benches/peers/run.sh, which installs what this needs and starts the servers.
"""

import argparse
import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benches"))
from nixl_kv import size as parse_size  # noqa: E402

GIB = float(1 << 30)
# Peers of MemKV's TCP path. nixl-ucx-shm is the peer of the same-host transport (memkv-shm):
# shown, not counted as "best peer" of a TCP path.
TCP_PEERS = ["redis", "mooncake", "nixl-ucx-tcp"]
# What one p99 sample is, per system (None: the tool reports no latency).
LATENCY_UNIT = {
    "memkv": "one block (one request)",
    "memkv-shm": "one block (one request)",
    "memkv-1t": "one block (one request)",
    "memkv-shm-1t": "one block (one request)",
    "memkv-1t-batch4": "one request of 4 blocks (PUT_BATCH/GET_BATCH, 8 in flight)",
    "memkv-shm-1t-batch16": "one request of 16 blocks (PUT_BATCH/GET_BATCH, 8 in flight; 2 at 16 MiB)",
    "memkv-pool": "one block (one request)",
    "memkv-nixl": "one NIXL request of 16 blocks",
    "memkv-nixl-shm": "one NIXL request of 16 blocks",
    "redis": "one command (redis-benchmark, pipeline 4)",
    "mooncake": "one batch of 16 blocks (the only one in flight)",
    "nixl-ucx-tcp": "one transfer of 16 blocks (the only one in flight)",
    "nixl-ucx-shm": "one transfer of 16 blocks (the only one in flight)",
}
# Issue 7's targets.
BULK = (2 << 20, 4 << 20)  # "2 MiB and 4 MiB over TCP"
SMALL = (4 << 10, 64 << 10)  # "4 KiB and 64 KiB"
# A measurement during which processes outside the run used this many CPU-seconds is named.
BUSY_S = 1.0
TCP_RATIO, CEILING_SLACK, SHM_RATIO, MOONCAKE_RATIO, NIXL_SHARE = 1.2, 0.95, 3.0, 2.0, 0.90


def run_json(cmd, env=None, timeout=300):
    """Runs a command that prints JSON: the whole stdout, or its last JSON line (NIXL's Python API
    logs INFO lines on stdout before it)."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        lines = [x for x in p.stdout.strip().splitlines() if x.startswith("{") or x.startswith("[")]
        return json.loads(lines[-1])


def human(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def pick_p99(lat_us):
    """p99 of the samples, picked like `memkv bench` does (no interpolation)."""
    if not lat_us:
        return None
    s = sorted(lat_us)
    return s[min(int(len(s) * 0.99), len(s) - 1)]


# ---- systems: each returns {op: (GiB/s, ops/s, p99 us or None, verified)} ------------------------


def memkv_keys(block):
    """How many distinct keys Redis gets at this size: as many as `memkv bench` writes with as
    many blocks in flight as redis-benchmark's 8 connections x pipeline of 4 keep (its default:
    as many as fit 256 MiB of values, 8..=4096, and at least one per block in flight)."""
    return max(8, min(4096, (256 << 20) // block), 8 * 4)


# The most bytes the NIXL driver keeps in flight; the batched rows keep to it too.
INFLIGHT_BYTES = 512 << 20

# `memkv bench --count`: a bound that no phase of --seconds reaches, so that every memkv phase
# runs for its time, as the NIXL driver's do (the bench's default, 1,000,000 blocks, ended the
# 4 KiB phases of 16 blocks per request after about 1.1 s of 3).
MEMKV_COUNT = 100_000_000


def nixl_handles(block):
    """NIXL requests of 16 blocks in flight: 4, fewer where they would hold more than INFLIGHT_BYTES."""
    return max(1, min(4, INFLIGHT_BYTES // (16 * block)))


def memkv(transport, batch=1, one_thread=False, pool=False):
    """`memkv bench` over 4 connections, `batch` blocks per request: 32 blocks in flight, or
    8 requests where that is more, as long as they hold at most INFLIGHT_BYTES (the NIXL driver's bound);
    `one_thread`: against the one-thread node, with one client I/O thread; `pool`: GETs into a
    pool (`--pool`) of as many blocks as the NIXL driver has in flight."""
    def measure(a, block):
        if pool:
            inflight = 16 * nixl_handles(block)
        else:
            inflight = batch * max(32 // batch, min(8, INFLIGHT_BYTES // (block * batch)), 1)
        env = {**os.environ, "MEMKV_SERVERS": a.node_1t, "MEMKV_IO_THREADS": "1"} if one_thread else None
        rows = run_json([a.bin / "memkv", "--transport", transport, "bench", "--op", "both", "--size", str(block),
                         "--connections", "4", "--inflight", str(inflight), "--batch", str(batch), "--duration", str(a.seconds),
                         "--count", str(MEMKV_COUNT), "--verify-every", str(a.verify_every), "--json", "--no-progress"]
                        + (["--pool"] if pool else []), env=env)
        out = {}
        for r in rows:
            verified = r.get("errors", 0) == 0 and r.get("misses", 0) == 0
            out[r["op"]] = (r["gib_per_s"], r["ops_per_s"], r.get("p99_us"), verified)
        return out
    return measure


def memkv_nixl(transport):
    def measure(a, block):
        handles = nixl_handles(block)
        env = {**os.environ, "NIXL_PLUGIN_DIR": str(a.bin), "MEMKV_TRANSPORT": transport}
        # The same blocks every round (one namespace per transport, seeded hashes), as `memkv bench`
        # rewrites its own keys: a driver with new keys each run wrote into memory idle since the
        # node started, which this VM serves slower than memory in use (docs/benchmarks.md).
        r = run_json([sys.executable, ROOT / "benches" / "nixl_kv.py", "--size", str(block), "--handles",
                      str(handles), "--duration", str(a.seconds), "--namespace", f"peers-nixl-{transport}",
                      "--key-seed", "1", "--json"], env=env)
        ok = r["mismatched_blocks"] == 0 and all(p.get("errors", 0) == 0 for p in r.get("phases", []))
        p99 = {p["op"]: p.get("p99_us") for p in r.get("phases", [])}
        return {"put": (r["write_gib_per_s"], r["write_gib_per_s"] * GIB / block, p99.get("put"), ok),
                "get": (r["read_gib_per_s"], r["read_gib_per_s"] * GIB / block, p99.get("get"), ok)}
    return measure


def resp(sock, *args):
    """One RESP command; returns the reply (bytes for bulk strings)."""
    msg = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in args)
    sock.sendall(msg)
    f = sock.makefile("rb")
    line = f.readline()
    if line[:1] == b"$":
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2]
    return line.strip()


def redis(a, block):
    value = np.random.default_rng(block).integers(0, 256, block, dtype=np.uint8).tobytes()
    with socket.create_connection(("127.0.0.1", a.redis_port), timeout=30) as s:
        resp(s, b"SET", b"peers-verify", value)
        ok = resp(s, b"GET", b"peers-verify") == value
    n = int(max(200, min(300_000, a.seconds * 1.5 * GIB / block)))
    p = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(a.redis_port), "-t", "set,get", "-d",
                        str(block), "-r", str(memkv_keys(block)), "-n", str(n), "-c", "8", "-P", "4", "--csv"],
                       capture_output=True, text=True, timeout=600, check=True)
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",...
    header = [c.strip('"') for c in p.stdout.splitlines()[0].split(",")]
    col = header.index("p99_latency_ms")
    out = {}
    for line in p.stdout.splitlines()[1:]:
        cells = [c.strip('"') for c in line.split(",")]
        op = {"SET": "put", "GET": "get"}[cells[0]]
        rps = float(cells[1])
        out[op] = (rps * block / GIB, rps, float(cells[col]) * 1000, ok)
    return out


def ucx(tls):
    def measure(a, block):
        env = dict(os.environ)
        env.pop("NIXL_PLUGIN_DIR", None)  # NIXL's own plugin directory, where UCX lives
        if tls:
            env["UCX_TLS"] = tls
        else:
            env.pop("UCX_TLS", None)
        r = run_json([sys.executable, HERE / "ucx_peer.py", "--size", str(block), "--duration", str(a.seconds)], env=env)
        return {op: (r[f"{op}_gib_per_s"], r[f"{op}_gib_per_s"] * GIB / block, r.get(f"{op}_p99_us"),
                     r[f"{op}_verified"]) for op in ("put", "get")}
    return measure


def mooncake(a, block):
    r = run_json([a.mooncake_python, HERE / "mooncake_peer.py", "--size", str(block), "--duration", str(a.seconds)])
    return {op: (r[f"{op}_gib_per_s"], r[f"{op}_gib_per_s"] * GIB / block, r.get(f"{op}_p99_us"),
                 r[f"{op}_verified"]) for op in ("put", "get")}


# memkv-1t-batch4 is memkv-1t with 4 blocks per request: Redis's pipelining (`redis-benchmark -P 4`),
# and KVBM's batches, are the same idea.
SYSTEMS = {"memkv": memkv("tcp"), "memkv-shm": memkv("shm"), "memkv-1t": memkv("tcp", one_thread=True),
           "memkv-shm-1t": memkv("shm", one_thread=True),
           "memkv-1t-batch4": memkv("tcp", 4, one_thread=True),
           "memkv-shm-1t-batch16": memkv("shm", 16, one_thread=True),
           "memkv-pool": memkv("tcp", pool=True),
           "memkv-nixl": memkv_nixl("tcp"),
           "memkv-nixl-shm": memkv_nixl("shm"), "redis": redis, "mooncake": mooncake,
           "nixl-ucx-tcp": ucx("tcp"), "nixl-ucx-shm": ucx(None)}
# Rows that issue 7's targets compare closely, measured next to each other (in this order, reversed
# every other round), so that a ratio compares measurements seconds apart, not minutes: on the
# 2-core VM the loopback ceiling has moved by up to 30% from one round to the next. The NIXL pairs,
# and Redis between the two batched rows it is the best TCP peer of at 4 and 64 KiB.
GROUPS = [["memkv", "memkv-nixl", "memkv-pool"], ["memkv-shm", "memkv-nixl-shm"],
          ["memkv-1t-batch4", "redis", "memkv-shm-1t-batch16"]]


def groups_in(systems):
    """GROUPS cut to their members among `systems`, keeping those left with two or more."""
    return [cut for cut in ([m for m in g if m in systems] for g in GROUPS) if len(cut) > 1]


def round_order(systems, rnd):
    """The order in which round `rnd` (from 1) measures `systems`: each group's members that are
    among them form one unit where the first of them stands, every other system is a unit alone;
    the units rotate by one each round, and each unit runs reversed in even rounds."""
    units, grouped = [], set()
    for name in systems:
        if name in grouped:
            continue
        unit = next((g for g in groups_in(systems) if name in g), [name])
        grouped.update(unit)
        units.append(unit)
    shift = (rnd - 1) % len(units)
    return [n for u in units[shift:] + units[:shift] for n in (u if rnd % 2 else u[::-1])]


# The rows measured by `memkv bench` (`--verify-every` applies to them).
RAW_MEMKV = [n for n in SYSTEMS if n.startswith("memkv") and not n.startswith("memkv-nixl")]


# ---- ceilings -----------------------------------------------------------------------------------


def iperf_seconds(a):
    """iperf3 -t takes whole seconds, and reads 0 (what "0.5" becomes) as "run forever"."""
    return str(max(1, round(a.seconds)))


def iperf(a, port, streams):
    p = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-P", str(streams), "-t", iperf_seconds(a), "-J"],
                       capture_output=True, text=True, check=True, timeout=120)
    return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 8 / GIB


def iperf_two(a):
    procs = [subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-P", "2", "-t", iperf_seconds(a), "-J"],
                              stdout=subprocess.PIPE, text=True) for port in a.iperf_ports]
    try:
        return sum(json.loads(p.communicate(timeout=120)[0])["end"]["sum_received"]["bits_per_second"]
                   for p in procs) / 8 / GIB
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def memcpy(block, seconds=0.3):
    """GiB/s of copying `block`-byte blocks, warm in cache: about 1 MiB of them per call (numpy copies
    each row of the strided view on its own, so the Python loop does not set a 4 KiB block's pace),
    source and destination page-aligned. Not where `np.empty_like` puts the destination: 16 bytes
    above the source modulo 4 KiB, where glibc's `rep movsb` ran 64 KiB copies at 0.8-1.8 GiB/s
    instead of 28 on the AMD EPYC VM (4K aliasing; docs/benchmarks.md)."""
    rows = max(1, (1 << 20) // block)
    stride = block + (4096 if rows > 1 else 0)

    def view(fill):
        raw = np.full(rows * stride + 4096, fill, dtype=np.uint8)
        at = -raw.ctypes.data % 4096
        return np.lib.stride_tricks.as_strided(raw[at:], shape=(rows, block), strides=(stride, 1))

    src, dst = view(1), view(0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.copyto(dst, src)
        n += rows
    return n * block / (time.perf_counter() - start) / GIB


# ---- other load on the machine ------------------------------------------------------------------


class ForeignLoad:
    """CPU time used by processes outside this run (neither this process, nor its parent run.sh,
    nor their descendants; kernel threads left out), from /proc/<pid>/stat between samples (one
    after each measurement). A lower bound: a process that starts and ends between two samples
    is not seen."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.root = os.getppid()
        self.prev = self._read()
        self.start = time.monotonic()
        self.cpu_s = 0.0
        self.by_name = {}

    @staticmethod
    def _read():
        procs = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    raw = f.read()
            except OSError:
                continue
            comm = raw[raw.index("(") + 1: raw.rindex(")")]
            rest = raw[raw.rindex(")") + 2:].split()
            procs[int(d)] = (int(rest[1]), comm, int(rest[11]) + int(rest[12]))  # ppid, comm, utime+stime
        return procs

    def sample(self):
        """Samples now; returns the CPU-seconds outside this run since the previous sample."""
        cur = self._read()
        used = 0.0
        ours = {self.root, os.getpid()}
        grew = True
        while grew:
            n = len(ours)
            ours |= {pid for pid, (ppid, _, _) in cur.items() if ppid in ours}
            grew = len(ours) != n
        for pid, (ppid, comm, ticks) in cur.items():
            if pid in ours or pid == 2 or ppid == 2:
                continue
            before = self.prev.get(pid)
            delta = ticks - (before[2] if before and before[1] == comm else 0)
            if delta > 0:
                used += delta / self.tick
                self.by_name[comm] = self.by_name.get(comm, 0.0) + delta / self.tick
        self.prev = cur
        self.cpu_s += used
        return used

    def summary(self):
        wall = time.monotonic() - self.start
        heavy = [kv for kv in sorted(self.by_name.items(), key=lambda kv: -kv[1])[:4] if kv[1] >= 1]
        return (f"processes outside this run used at least {self.cpu_s:.0f} CPU-seconds during its {wall:.0f} s "
                f"({self.cpu_s / max(wall, 1e-9):.0%} of one core on average)"
                + (("; the most: " + ", ".join(f"{n} {s:.0f} s" for n, s in heavy)) if heavy else ""))


# ---- report -------------------------------------------------------------------------------------

COLORS = {"memkv": "#d62728", "memkv-shm": "#9400d3", "memkv-shm-1t": "#bcbd22", "memkv-1t": "#e377c2", "memkv-1t-batch4": "#ff7f0e", "memkv-shm-1t-batch16": "#7f7f7f", "memkv-pool": "#bc8f8f", "memkv-nixl": "#d62728", "memkv-nixl-shm": "#9400d3",
          "redis": "#1f77b4", "mooncake": "#8c564b", "nixl-ucx-tcp": "#2ca02c", "nixl-ucx-shm": "#17becf"}
DASHED = {"memkv-nixl", "memkv-nixl-shm", "nixl-ucx-shm"}


def svg(medians, sizes, systems, ceiling_name, ceiling):
    """GiB/s vs block size (sizes evenly spaced), one panel per op, the legend below."""
    w, h, pad, top_pad, bottom = 520, 360, 46, 30, 30
    legend_rows = (len(systems) + 3) // 4
    height = h + 18 * legend_rows + 10
    top = max([ceiling] + list(medians.values())) * 1.08
    step = 1 if top <= 10 else 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{height}" font-family="sans-serif" '
             'font-size="11">', f'<rect width="{2 * w}" height="{height}" fill="white"/>']
    for k, op in enumerate(("put", "get")):
        x0 = k * w
        pw, ph = w - 2 * pad, h - top_pad - bottom - 10

        def xy(i, v):
            return x0 + pad + pw * i / max(1, len(sizes) - 1), top_pad + ph * (1 - v / top)

        parts.append(f'<text x="{x0 + w / 2}" y="18" text-anchor="middle" font-size="13">{op.upper()} (GiB/s)</text>')
        for t in range(0, int(top) + 1, step):
            _, y = xy(0, t)
            parts.append(f'<line x1="{x0 + pad}" x2="{x0 + pad + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{x0 + pad - 6}" y="{y + 4:.1f}" text-anchor="end">{t}</text>')
        parts.append(f'<rect x="{x0 + pad}" y="{top_pad}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for i, s in enumerate(sizes):
            x, _ = xy(i, 0)
            parts.append(f'<text x="{x:.1f}" y="{top_pad + ph + 16}" text-anchor="middle">{human(s)}</text>')
        _, y = xy(0, ceiling)
        parts.append(f'<line x1="{x0 + pad}" x2="{x0 + pad + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#666" '
                     'stroke-dasharray="2,3"/>')
        parts.append(f'<text x="{x0 + pad + 4}" y="{y - 4:.1f}" fill="#444" stroke="white" stroke-width="3" '
                     f'paint-order="stroke">TCP ceiling ({ceiling_name})</text>')
        for name in systems:
            pts = [xy(i, medians[(name, op, s)]) for i, s in enumerate(sizes) if (name, op, s) in medians]
            if not pts:
                continue
            dash = ' stroke-dasharray="6,3"' if name in DASHED else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{COLORS.get(name, "#000")}" '
                         f'stroke-width="2"{dash}/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{COLORS.get(name, "#000")}"/>' for x, y in pts]
    for j, name in enumerate(systems):
        x, y = 60 + (j % 4) * 240, h + 4 + 18 * (j // 4)
        dash = ' stroke-dasharray="6,3"' if name in DASHED else ""
        parts.append(f'<line x1="{x}" x2="{x + 28}" y1="{y - 4}" y2="{y - 4}" stroke="{COLORS.get(name, "#000")}" '
                     f'stroke-width="2"{dash}/>')
        parts.append(f'<text x="{x + 34}" y="{y}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def git_commit():
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def round_ratio(rows, num, den, op, block):
    """The median over rounds of `num`'s GiB/s over `den`'s in the same round, for `op` at `block`
    (None with fewer than two rounds that measured both)."""
    by = {name: {r[0]: r[4] for r in rows if (r[1], r[2], r[3]) == (name, op, block)} for name in (num, den)}
    ratios = [v / by[den][rnd] for rnd, v in by[num].items() if by[den].get(rnd)]
    return statistics.median(ratios) if len(ratios) > 1 else None


def run_meta():
    """When, at which commit and on how many CPUs this run measured (one CSV cell: no commas)."""
    return f"{datetime.date.today().isoformat()}; commit {git_commit()}; {os.cpu_count()} CPUs"


def report(a, sizes, systems, rows, ceilings, load_summary, failures, busy, meta):
    med, p99 = {}, {}
    for key in {(r[1], r[2], r[3]) for r in rows}:
        med[key] = statistics.median(r[4] for r in rows if (r[1], r[2], r[3]) == key)
        lats = [r[6] for r in rows if (r[1], r[2], r[3]) == key and r[6] is not None]
        if lats:
            p99[key] = statistics.median(lats)
    ceiling = {k: statistics.median(c[k] for c in ceilings) for k in ceilings[0]}
    ceiling_name, best_ceiling = max(ceiling.items(), key=lambda kv: kv[1])
    verified = all(r[7] for r in rows) and not failures
    g = med.get

    def best_tcp(op, block):
        peers = [(med[(p, op, block)], p) for p in TCP_PEERS if p in systems and (p, op, block) in med]
        return max(peers) if peers else None

    def ratio(x, y):
        return x / y if x is not None and y else None

    def fx(v):
        return "" if v is None else f"{v:.2f}x"

    def pct(v):
        return "" if v is None else f"{v:.0%}"

    n_rounds = len({r[0] for r in rows})
    csvs = [c.resolve() for c in a.from_csv] if a.from_csv else [a.out.with_suffix(".csv")]
    md = [("Run " if len(csvs) == 1 else f"{len(csvs)} runs pooled: ") + f"{meta.replace('; ', ', ')}; "
          f"{n_rounds} round(s) of {a.seconds:g} s per op; medians over the rounds.",
          "",
          "Ceilings: " + ", ".join(f"{k} **{v:.3f} GiB/s**" for k, v in ceiling.items())
          + f"; the TCP ceiling below is the best of them ({ceiling_name}).",
          "", "**Throughput, GiB/s** (GiB = 2^30 bytes)", "",
          "| op | size | " + " | ".join(systems) + " | memcpy | best TCP peer |", "|---" * (len(systems) + 4) + "|"]
    for op in ("put", "get"):
        for block in sizes:
            cells = ["" if g((n, op, block)) is None else f"{g((n, op, block)):.3f}" for n in systems]
            best = best_tcp(op, block)
            mc = g(("memcpy", "copy", block))
            md.append(f"| {op.upper()} | {human(block)} | " + " | ".join(cells)
                      + f" | {'' if mc is None else f'{mc:.2f}'} | " + (f"{best[1]} {best[0]:.3f}" if best else "") + " |")

    lat_systems = [n for n in systems if any((n, op, b) in p99 for op in ("put", "get") for b in sizes)]
    no_lat = [n for n in systems if n not in lat_systems]
    md += ["", "**p99 latency, µs** (median of the rounds' p99; what one sample is differs per tool, see the notes)",
           "", "| op | size | " + " | ".join(lat_systems) + " |", "|---" * (len(lat_systems) + 2) + "|"]
    for op in ("put", "get"):
        for block in sizes:
            md.append(f"| {op.upper()} | {human(block)} | "
                      + " | ".join("" if (n, op, block) not in p99 else f"{p99[(n, op, block)]:,.0f}" for n in lat_systems)
                      + " |")
    md += [""] + [f"- {n}: one sample is {LATENCY_UNIT[n]}." for n in lat_systems if n in LATENCY_UNIT]
    if no_lat:
        md.append(f"- No p99 for {', '.join(no_lat)}: the tool did not report one in this run.")

    cols = ["memkv / best TCP peer", "memkv / TCP ceiling", "memkv-shm / best TCP peer", "memkv-shm / nixl-ucx-shm",
            "memkv / mooncake", "memkv / redis", "memkv-nixl / memkv", "memkv-nixl-shm / memkv-shm"]
    md += ["", "**Ratios** (of the medians)", "", "| op | size | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 2) + "|"]
    for op in ("put", "get"):
        for block in sizes:
            best = best_tcp(op, block)
            b = best[0] if best else None
            ours, shm = g(("memkv", op, block)), g(("memkv-shm", op, block))
            vals = [fx(ratio(ours, b)), pct(ratio(ours, best_ceiling)), fx(ratio(shm, b)),
                    fx(ratio(shm, g(("nixl-ucx-shm", op, block)))), fx(ratio(ours, g(("mooncake", op, block)))),
                    fx(ratio(ours, g(("redis", op, block)))), pct(ratio(g(("memkv-nixl", op, block)), ours)),
                    pct(ratio(g(("memkv-nixl-shm", op, block)), shm))]
            md.append(f"| {op.upper()} | {human(block)} | " + " | ".join(vals) + " |")

    # ---- issue 7's targets, each cell checked --------------------------------------------------
    def verdict(title, cells):
        """cells: (label, ok or None when a figure is missing, text)."""
        have = [c for c in cells if c[1] is not None]
        if not have:
            return f"- {title}: **not measured**"
        bad = [c for c in have if not c[1]]
        state = "met" if not bad and len(have) == len(cells) else (
            "not met" if bad else "met where measured")
        count = f" (met in {len(have) - len(bad)} of {len(cells)} cells)" if bad or len(have) != len(cells) else ""
        return (f"- {title}: **{state}**{count}. "
                + "; ".join(f"{c[0]} {c[2]}" + (" ✗" if c[1] is False else "") for c in cells) + ".")

    def rx(r, threshold):
        """A ratio to 2 decimals, or 3 where 2 would round it onto the threshold."""
        return f"{r:.3f}x" if abs(r - threshold) < 0.006 else f"{r:.2f}x"

    cells_of = lambda blocks: [(op, b) for op in ("put", "get") for b in blocks if b in sizes]  # noqa: E731

    def judged(num, den, op, b, threshold):
        """The ratio a cell is judged by, and its text: the per-round ratio of `num` to `den` (the
        rounds' own ratios cancel the drift between rounds that a ratio of two medians keeps), or
        with a single round the ratio of the medians; the medians and their ratio follow."""
        x, y = g((num, op, b)), g((den, op, b))
        medians = x / y
        paired = round_ratio(rows, num, den, op, b)
        if paired is None:
            return medians, rx(medians, threshold), f"{x:.3f} vs {y:.3f}"
        return paired, rx(paired, threshold), f"per round; medians {x:.3f} vs {y:.3f}, {rx(medians, threshold)}"

    targets = []
    tcp_cells = []
    for op, b in cells_of(BULK):
        ours, best = g(("memkv", op, b)), best_tcp(op, b)
        if ours is None or best is None:
            tcp_cells.append((f"{op.upper()} {human(b)}", None, "not measured"))
            continue
        r, shown, detail = judged("memkv", best[1], op, b, TCP_RATIO)
        at_ceiling = best[0] >= CEILING_SLACK * best_ceiling
        ok = r >= TCP_RATIO or (at_ceiling and ours >= CEILING_SLACK * best_ceiling)
        tcp_cells.append((f"{op.upper()} {human(b)}", ok, f"{shown} {best[1]} ({detail}"
                          + (f"; {best[1]} at {best[0] / best_ceiling:.0%} of the ceiling, memkv at "
                             f"{ours / best_ceiling:.0%}" if at_ceiling else "") + ")"))
    targets.append(verdict(f"2 MiB and 4 MiB over TCP, memkv ≥ {TCP_RATIO}x the best TCP peer (or ≥ "
                           f"{CEILING_SLACK:.0%} of the {best_ceiling:.3f} GiB/s ceiling where that peer is there too)",
                           tcp_cells))

    def pairwise(title, num, den, blocks, threshold, strict=False, den_label=None):
        """`num` against `den` (a system, or a function of op and size giving (GiB/s, system))."""
        cells = []
        for op, b in cells_of(blocks):
            d = den(op, b) if callable(den) else (g((den, op, b)), den)
            if g((num, op, b)) is None or d is None or d[0] is None:
                cells.append((f"{op.upper()} {human(b)}", None, "not measured"))
                continue
            r, shown, detail = judged(num, d[1], op, b, threshold)
            ok = r > threshold if strict else r >= threshold
            cells.append((f"{op.upper()} {human(b)}", ok, shown + (f" {d[1]}" if den_label else "") + f" ({detail})"))
        return verdict(title, cells)

    targets.append(pairwise(f"same host, memkv-shm ≥ {SHM_RATIO:g}x the best TCP peer (every size)", "memkv-shm",
                            best_tcp, sizes, SHM_RATIO, den_label=True))
    targets.append(pairwise("same host, memkv-shm ahead of nixl-ucx-shm (every size)", "memkv-shm", "nixl-ucx-shm",
                            sizes, 1.0, strict=True))
    for name, what in (("memkv-shm-1t", "one thread per process"),
                       ("memkv-shm-1t-batch16", "one thread per process and 16 blocks per request, as the UCX peer's "
                        "transfers")):
        if name in systems:
            targets.append(pairwise(f"same host, {name} ({what}) ≥ {SHM_RATIO:g}x the best TCP peer (every size)",
                                    name, best_tcp, sizes, SHM_RATIO, den_label=True))
            targets.append(pairwise(f"same host, {name} ahead of nixl-ucx-shm (every size)", name, "nixl-ucx-shm",
                                    sizes, 1.0, strict=True))
    targets.append(pairwise(f"4 KiB and 64 KiB, memkv ≥ {MOONCAKE_RATIO:g}x mooncake", "memkv", "mooncake", SMALL,
                            MOONCAKE_RATIO))
    targets.append(pairwise("4 KiB and 64 KiB, memkv ≥ redis", "memkv", "redis", SMALL, 1.0))
    for name, what in (("memkv-1t", "one thread per process, as Redis"),
                       ("memkv-1t-batch4", "one thread per process and 4 blocks per request, as Redis's pipeline of 4")):
        if name in systems:
            targets.append(pairwise(f"4 KiB and 64 KiB, {name} ({what}) ≥ redis", name, "redis", SMALL, 1.0))
            targets.append(pairwise(f"4 KiB and 64 KiB, {name} ≥ {MOONCAKE_RATIO:g}x mooncake", name, "mooncake",
                                    SMALL, MOONCAKE_RATIO))
    lat_cells = []
    for op, b in cells_of(SMALL):
        have = [f"{n} {p99[(n, op, b)]:,.0f}" for n in systems if (n, op, b) in p99]
        lat_cells.append(f"{op.upper()} {human(b)}: " + ", ".join(have))
    missing_lat = [n for n in ("memkv", "redis", "mooncake") if n in systems
                   and not all((n, op, b) in p99 for op, b in cells_of(SMALL))]
    reported = "yes" if not missing_lat else "not for " + ", ".join(missing_lat)
    targets.append(f"- 4 KiB and 64 KiB, p99 latency reported: **{reported}** "
                   "(µs; units per system in the notes above). " + "; ".join(lat_cells) + ".")
    targets.append(pairwise(f"NIXL plugin ≥ {NIXL_SHARE:.0%} of the raw client, TCP (every size)", "memkv-nixl", "memkv",
                            sizes, NIXL_SHARE))
    if "memkv-pool" in systems:
        targets.append(pairwise(f"NIXL plugin ≥ {NIXL_SHARE:.0%} of the raw client reading into a pool as large as the "
                                "driver's (memkv-pool), TCP (every size)", "memkv-nixl", "memkv-pool", sizes,
                                NIXL_SHARE))
    if "memkv-nixl-shm" in systems:
        targets.append(pairwise(f"NIXL plugin ≥ {NIXL_SHARE:.0%} of the raw client, shared memory (every size)",
                                "memkv-nixl-shm", "memkv-shm", sizes, NIXL_SHARE))
    md += ["", f"**Issue 7's targets** (best TCP peer = the fastest of {', '.join(p for p in TCP_PEERS if p in systems)} "
           "by the medians above; each cell is judged by the median of the rounds' own ratios of its two rows, "
           "\"per round\", which cancels the drift between rounds that a ratio of two medians keeps; the two "
           "medians and their ratio follow it)", ""] + targets

    md += ["", f"Data verified for every system: {'yes' if verified else 'NO (see the failures below)'}. "
           f"{', '.join(f'`{n}`' for n in systems if n in RAW_MEMKV)} compared every {a.verify_every}th GET byte "
           "for byte (every GET's CRC32C is "
           "checked by the client library). System order rotated by one each round, these rows next to each "
           f"other, in turn first: {'; '.join(', '.join(g) for g in groups_in(systems)) or 'none'}. {load_summary}"
           + (f"; measurements during which they used ≥ {BUSY_S:g} CPU-second: {', '.join(busy)}" if busy
              else f"; no measurement saw {BUSY_S:g} CPU-second of it") + ". "
           "Raw rows: " + ", ".join(f"`{c.relative_to(ROOT) if c.is_relative_to(ROOT) else c}`" for c in csvs) + "."]
    if failures:
        md += ["", "Failed measurements (left out of the medians; the run's output has the errors):"] + [
            f"- {f}" for f in failures]
    return "\n".join(md), med, ceiling_name, ceiling[ceiling_name], verified


CSV_HEADER = "round,system,op,block_bytes,gib_per_s,ops_per_s,p99_us,verified,other_cpu_s"
SIZES = "4KiB,64KiB,1MiB,2MiB,4MiB,16MiB"


def measure(a, sizes, systems):
    """Every round: the ceilings, then per size memcpy and every system in turn. Returns the
    rows (round, system, op, block, GiB/s, ops/s, p99 us, verified, other CPU-seconds), the
    ceilings of each round, the failed measurements (as rows with op "failed") and a summary
    of the load from outside."""
    load = ForeignLoad()
    rows, ceilings, failures = [], [], []
    for rnd in range(1, a.rounds + 1):
        c = {"iperf3 -P 1": iperf(a, a.iperf_ports[0], 1), "iperf3 -P 4": iperf(a, a.iperf_ports[0], 4),
             "2 x iperf3 -P 2": iperf_two(a)}
        ceilings.append(c)
        load.sample()
        print(f"round {rnd}: ceilings " + ", ".join(f"{k} {v:.3f} GiB/s" for k, v in c.items()), file=sys.stderr)
        order = round_order(systems, rnd)
        for block in sizes:
            rows.append((rnd, "memcpy", "copy", block, memcpy(block), None, None, True, load.sample()))
            for name in order:
                try:
                    result = SYSTEMS[name](a, block)
                except (RuntimeError, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
                    print(f"round {rnd}: {name:14} {human(block):>7}: FAILED: {e}", file=sys.stderr)
                    failures.append((rnd, name, "failed", block, None, None, None, False, load.sample()))
                    continue
                other = load.sample()
                for op, (gib, ops, p99, ok) in result.items():
                    rows.append((rnd, name, op, block, gib, ops, p99, ok, other))
                    lat = "" if p99 is None else f"  p99 {p99:,.0f} us"
                    print(f"round {rnd}: {name:14} {op} {human(block):>7}: {gib:7.3f} GiB/s {ops:12,.0f} ops/s{lat}"
                          f"{'' if ok else '  DATA NOT VERIFIED'}", file=sys.stderr)
    return rows, ceilings, failures, load.summary()


def read_csv(path):
    """The rows, ceilings, failures and date/commit line of an earlier run, from its CSV."""
    rows, ceilings, failures, meta = [], {}, [], "(date and commit not recorded)"
    lines = path.read_text().splitlines()
    if not lines or lines[0] != CSV_HEADER:
        raise SystemExit(f"{path}: not a peers CSV (its first line must be {CSV_HEADER!r})")
    for line in lines[1:]:
        c = line.split(",")
        num = lambda x: float(x) if x else None  # noqa: E731
        r = (int(c[0]), c[1], c[2], int(c[3]), num(c[4]), num(c[5]), num(c[6]), c[7] == "True", num(c[8]))
        if r[2] == "meta":
            meta = r[1]
        elif r[2] == "ceiling":
            ceilings.setdefault(r[0], {})[r[1]] = r[4]
        elif r[2] == "failed":
            failures.append(r)
        else:
            rows.append(r)
    if not ceilings:
        raise SystemExit(f"{path}: no ceiling rows")
    return rows, [ceilings[k] for k in sorted(ceilings)], failures, meta


def code_differs(a, b):
    """Whether commits `a` and `b` differ outside docs/ (None where git cannot tell)."""
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", a, b, "--", ".", ":!docs"], capture_output=True)
    except OSError:
        return None
    return {0: False, 1: True}.get(r.returncode)


def pool(runs):
    """Several runs' (rows, ceilings, failures, meta) as one: the rounds of each renumbered to follow
    those of the runs before it, every run's meta kept with the rounds it gave. Only runs of the
    same code belong together; the report names each run's commit so that a reader can check."""
    if len(runs) == 1:
        return runs[0]
    commits = [m.group(1) for m in (re.search(r"commit ([0-9a-f]{7,40})", r[3]) for r in runs) if m]
    for c in commits[1:]:
        if code_differs(commits[0], c):
            raise SystemExit(f"the runs measured different code: commits {commits[0]} and {c} differ outside docs/ "
                             f"(git diff {commits[0]} {c}); pool only runs of the same code")
    rows, ceilings, failures, metas = [], [], [], []
    for r, c, f, meta in runs:
        shift = len(ceilings)
        rows += [(x[0] + shift,) + x[1:] for x in r]
        failures += [(x[0] + shift,) + x[1:] for x in f]
        ceilings += c
        metas.append(f"{meta} (rounds {shift + 1}-{len(ceilings)})")
    return rows, ceilings, failures, " + ".join(metas)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--sizes", default=SIZES)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per op per system (default 3)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds; medians are reported (default 1)")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--verify-every", type=int, default=16,
                    help="the memkv-bench rows compare every Nth GET byte for byte (default 16; 1 = every GET)")
    ap.add_argument("--redis-port", type=int, default=6399)
    ap.add_argument("--node-1t", default="127.0.0.2:9995",
                    help="the MemKV node started with MEMKV_THREADS=1, for the memkv-1t rows (default 127.0.0.2:9995)")
    ap.add_argument("--mooncake-python", default=sys.executable, help="a python with mooncake installed")
    ap.add_argument("--iperf-ports", default="5299,5300")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "peers")
    ap.add_argument("--from-csv", type=Path, nargs="+",
                    help="measure nothing: write <out>.md and <out>.svg again from a run's CSV (give the "
                    "--seconds and --verify-every that run had); several CSVs, runs of the same code with the "
                    "same settings, are pooled: their rounds judged together, as one longer run's would be")
    a = ap.parse_args()
    a.iperf_ports = [int(p) for p in a.iperf_ports.split(",")]
    a.out = a.out.resolve()
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    systems = a.systems.split(",")
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or a.rounds < 1 or a.seconds <= 0:
        ap.error(f"unknown systems {unknown} (known: {', '.join(SYSTEMS)})" if unknown
                 else "--rounds must be at least 1 and --seconds positive")

    if a.from_csv:
        rows, ceilings, failures, meta = pool([read_csv(p) for p in a.from_csv])
        sizes = sorted({r[3] for r in rows if r[2] in ("put", "get")}) if a.sizes == SIZES else sizes
        # Only the systems the CSV measured (a row added since has no column there).
        systems = [s for s in systems if any(r[1] == s for r in rows + failures)]
        other = {(r[0], r[1], r[3]): r[8] or 0.0 for r in rows + failures}  # put and get share one sample
        load_summary = (f"processes outside this run used at least {sum(other.values()):.0f} CPU-seconds "
                        f"during its measurements (this report was re-rendered from "
                        f"{', '.join(f'`{p.name}`' for p in a.from_csv)})")
    else:
        # Taken before measuring: the binaries are built from the tree as it is now, and edits
        # made while the run goes on must not mark it as measuring uncommitted changes.
        meta = run_meta()
        rows, ceilings, failures, load_summary = measure(a, sizes, systems)
    busy = sorted({f"round {r[0]} {r[1]} {human(r[3])} ({r[8]:.1f} s)" for r in rows
                   if r[2] != "ceiling" and r[8] is not None and r[8] >= BUSY_S})

    a.out.parent.mkdir(parents=True, exist_ok=True)
    if not a.from_csv:
        with open(a.out.with_suffix(".csv"), "w") as f:
            f.write(CSV_HEADER + "\n")
            extra = [(rnd, k, "ceiling", 0, v, None, None, True, None)
                     for rnd, c in enumerate(ceilings, 1) for k, v in c.items()]
            for r in [(0, meta, "meta", 0, None, None, None, True, None)] + rows + extra + failures:
                f.write(",".join("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r) + "\n")
    failures = [f"round {r[0]}, {r[1]}, {human(r[3])}" for r in failures]
    text, med, ceiling_name, ceiling, verified = report(a, sizes, systems, rows, ceilings, load_summary, failures,
                                                        busy, meta)
    a.out.with_suffix(".md").write_text(text + "\n")
    a.out.with_suffix(".svg").write_text(svg({k: v for k, v in med.items() if k[0] in systems}, sizes, systems,
                                             ceiling_name, ceiling) + "\n")
    print(text)
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
