#!/usr/bin/env python3
"""MemKV next to the tools users would run instead, on loopback, in one run, in alternation.

For each round and each block size, every system runs PUT then GET for --seconds each, one after
the other (so machine drift hits all of them alike), with the data verified:
  memkv        `memkv bench` (Rust client, one node, 4 connections, 32 in flight; every GET compared)
  memkv-nixl   benches/nixl_kv.py: the NIXL agent + libplugin_MEMKV.so (16 blocks x 4 requests;
               every onboarded block compared)
  redis        Debian's redis-server + redis-benchmark (SET/GET, 8 connections, pipeline 4), plus
               one SET/GET round trip per size compared byte for byte over RESP
  mooncake     Mooncake Store over TCP: mooncake_master + a segment-holding process + this client
               (batch_put_from / batch_get_into of 16 blocks; bytes compared)
  nixl-ucx-tcp NIXL's UCX backend between two agents, UCX_TLS=tcp (peer of a TCP path)
  nixl-ucx-shm the same with UCX's default same-host transports (shared memory / CMA)
Ceilings, once per round: iperf3 with 1 and 4 streams, two iperf3 processes at once, and memcpy
bandwidth per size. Writes <out>.csv, <out>.md (medians, ratio to the best peer and to the
ceiling) and <out>.svg (GiB/s vs block size), and prints the markdown.

Run through benches/peers/run.sh, which installs what this needs and starts the servers.
"""

import argparse
import json
import os
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
# Peers of MemKV's TCP path (`memkv` runs with --transport tcp here). nixl-ucx-shm is the peer of
# a same-host transport (benches/shm.sh measures MemKV's): shown, not counted as "best peer" of a
# TCP path.
TCP_PEERS = ["redis", "mooncake", "nixl-ucx-tcp"]


def run_json(cmd, env=None, timeout=300):
    """Runs a command that prints JSON: the whole stdout, or its last line (NIXL's Python API logs
    INFO lines on stdout before it)."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        return json.loads(p.stdout.strip().splitlines()[-1])


def human(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


# ---- systems ------------------------------------------------------------------------------------


def memkv(a, block):
    rows = run_json([a.bin / "memkv", "--transport", "tcp", "bench", "--op", "both", "--size", str(block), "--connections", "4",
                     "--inflight", "32", "--duration", str(a.seconds), "--json", "--no-progress"])
    out = {}
    for r in rows:
        verified = r.get("errors", 0) == 0 and r.get("misses", 0) == 0
        out[r["op"]] = (r["gib_per_s"], r["ops_per_s"], r.get("p99_us"), verified)
    return out


def memkv_nixl(a, block):
    handles = max(1, min(4, (512 << 20) // (16 * block)))
    env = {**os.environ, "NIXL_PLUGIN_DIR": str(a.bin)}
    r = run_json([sys.executable, ROOT / "benches" / "nixl_kv.py", "--size", str(block), "--handles", str(handles),
                  "--duration", str(a.seconds), "--json"], env=env)
    ok = r["mismatched_blocks"] == 0
    return {"put": (r["write_gib_per_s"], r["write_gib_per_s"] * GIB / block, None, ok),
            "get": (r["read_gib_per_s"], r["read_gib_per_s"] * GIB / block, None, ok)}


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
    with socket.create_connection(("127.0.0.1", a.redis_port)) as s:
        resp(s, b"SET", b"peers-verify", value)
        ok = resp(s, b"GET", b"peers-verify") == value
    n = int(max(200, min(300_000, a.seconds * 1.5 * GIB / block)))
    p = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(a.redis_port), "-t", "set,get", "-d",
                        str(block), "-n", str(n), "-c", "8", "-P", "4", "--csv"],
                       capture_output=True, text=True, timeout=600, check=True)
    out = {}
    for line in p.stdout.splitlines()[1:]:
        cells = [c.strip('"') for c in line.split(",")]
        op = {"SET": "put", "GET": "get"}[cells[0]]
        rps = float(cells[1])
        out[op] = (rps * block / GIB, rps, float(cells[6]) * 1000, ok)
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
        return {op: (r[f"{op}_gib_per_s"], r[f"{op}_gib_per_s"] * GIB / block, None, r[f"{op}_verified"])
                for op in ("put", "get")}
    return measure


def mooncake(a, block):
    r = run_json([a.mooncake_python, HERE / "mooncake_peer.py", "--size", str(block), "--duration", str(a.seconds)])
    return {op: (r[f"{op}_gib_per_s"], r[f"{op}_gib_per_s"] * GIB / block, None, r[f"{op}_verified"])
            for op in ("put", "get")}


SYSTEMS = {"memkv": memkv, "memkv-nixl": memkv_nixl, "redis": redis, "mooncake": mooncake,
           "nixl-ucx-tcp": ucx("tcp"), "nixl-ucx-shm": ucx(None)}


# ---- ceilings -----------------------------------------------------------------------------------


def iperf(a, port, streams):
    p = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-P", str(streams), "-t", str(a.seconds), "-J"],
                       capture_output=True, text=True, check=True, timeout=120)
    return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 8 / GIB


def iperf_two(a):
    procs = [subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-P", "2", "-t", str(a.seconds), "-J"],
                              stdout=subprocess.PIPE, text=True) for port in a.iperf_ports]
    return sum(json.loads(p.communicate(timeout=120)[0])["end"]["sum_received"]["bits_per_second"] for p in procs) / 8 / GIB


def memcpy(block, seconds=0.3):
    src = np.ones(block, dtype=np.uint8)
    dst = np.empty_like(src)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.copyto(dst, src)
        n += 1
    return n * block / (time.perf_counter() - start) / GIB


# ---- report -------------------------------------------------------------------------------------


def svg(medians, sizes, systems, ceiling):
    """GiB/s vs block size (log scale), one panel per op."""
    w, h, pad = 460, 300, 50
    colors = dict(zip(systems, ["#d62728", "#ff7f0e", "#1f77b4", "#8c564b", "#2ca02c", "#9467bd"]))
    top = max([ceiling] + [v for v in medians.values()]) * 1.1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h}" font-family="sans-serif" '
             'font-size="11">']
    for k, op in enumerate(("put", "get")):
        x0 = k * w
        parts.append(f'<text x="{x0 + w / 2}" y="16" text-anchor="middle" font-size="13">{op.upper()} (GiB/s)</text>')
        parts.append(f'<rect x="{x0 + pad}" y="{30}" width="{w - 2 * pad}" height="{h - 60}" fill="none" stroke="#888"/>')

        def xy(i, v):
            x = x0 + pad + (w - 2 * pad) * i / max(1, len(sizes) - 1)
            return x, 30 + (h - 60) * (1 - v / top)

        for i, s in enumerate(sizes):
            x, _ = xy(i, 0)
            parts.append(f'<text x="{x}" y="{h - 15}" text-anchor="middle">{human(s)}</text>')
        for t in range(0, int(top) + 1):
            _, y = xy(0, t)
            parts.append(f'<text x="{x0 + pad - 6}" y="{y + 4}" text-anchor="end">{t}</text>')
        _, y = xy(0, ceiling)
        parts.append(f'<line x1="{x0 + pad}" x2="{x0 + w - pad}" y1="{y}" y2="{y}" stroke="#999" stroke-dasharray="4"/>')
        parts.append(f'<text x="{x0 + w - pad}" y="{y - 4}" text-anchor="end" fill="#666">iperf3 -P 4</text>')
        for j, name in enumerate(systems):
            pts = [xy(i, medians[(name, op, s)]) for i, s in enumerate(sizes) if (name, op, s) in medians]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colors[name]}" stroke-width="2"/>')
            parts.append(f'<text x="{x0 + pad + 6}" y="{44 + 13 * j}" fill="{colors[name]}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--sizes", default="4KiB,64KiB,1MiB,2MiB,4MiB,16MiB")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--redis-port", type=int, default=6399)
    ap.add_argument("--mooncake-python", default=sys.executable, help="a python with mooncake installed")
    ap.add_argument("--iperf-ports", default="5299,5300")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "peers")
    a = ap.parse_args()
    a.iperf_ports = [int(p) for p in a.iperf_ports.split(",")]
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    systems = a.systems.split(",")

    rows, ceilings = [], []
    for rnd in range(1, a.rounds + 1):
        c = {"iperf3 -P 1": iperf(a, a.iperf_ports[0], 1), "iperf3 -P 4": iperf(a, a.iperf_ports[0], 4),
             "2 x iperf3 -P 2": iperf_two(a)}
        ceilings.append(c)
        print(f"round {rnd}: ceilings " + ", ".join(f"{k} {v:.3f} GiB/s" for k, v in c.items()), file=sys.stderr)
        for block in sizes:
            rows.append((rnd, "memcpy", "copy", block, memcpy(block), None, None, True))
            for name in systems:
                for op, (gib, ops, p99, ok) in SYSTEMS[name](a, block).items():
                    rows.append((rnd, name, op, block, gib, ops, p99, ok))
                    print(f"round {rnd}: {name:13} {op} {human(block):>7}: {gib:7.3f} GiB/s {ops:12,.0f} ops/s"
                          f"{'' if ok else '  DATA NOT VERIFIED'}", file=sys.stderr)

    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out.with_suffix(".csv"), "w") as f:
        f.write("round,system,op,block_bytes,gib_per_s,ops_per_s,p99_us,verified\n")
        for r in rows:
            f.write(",".join("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r) + "\n")
    med = {}
    for key in {(r[1], r[2], r[3]) for r in rows}:
        med[key] = statistics.median(r[4] for r in rows if (r[1], r[2], r[3]) == key)
    p99 = {(r[1], r[2], r[3]): r[6] for r in rows if r[6] is not None}
    ceiling = {k: statistics.median(c[k] for c in ceilings) for k in ceilings[0]}
    best_ceiling = max(ceiling.values())

    md = [f"Ceilings (median of {a.rounds} round(s)): " + ", ".join(f"{k} **{v:.3f} GiB/s**" for k, v in ceiling.items()),
          "", "| op | size | " + " | ".join(systems) + " | memcpy | best TCP peer | memkv / best TCP peer | memkv / ceiling "
          "| memkv-nixl / memkv |", "|---" * (len(systems) + 7) + "|"]
    verified = all(r[7] for r in rows)
    for op in ("put", "get"):
        for block in sizes:
            cells = []
            for name in systems:
                v = med.get((name, op, block))
                lat = p99.get((name, op, block))
                cells.append("" if v is None else f"{v:.3f}" + (f" (p99 {lat:,.0f} us)" if lat and block <= 65536 else ""))
            peers = [(med[(p, op, block)], p) for p in systems if p in TCP_PEERS and (p, op, block) in med]
            best = max(peers) if peers else None
            ours = med.get(("memkv", op, block))
            nixl = med.get(("memkv-nixl", op, block))
            md.append(f"| {op.upper()} | {human(block)} | " + " | ".join(cells) + f" | {med[('memcpy', 'copy', block)]:.2f} | "
                      + (f"{best[1]} {best[0]:.3f}" if best else "") + " | "
                      + (f"{ours / best[0]:.2f}x" if best and ours else "") + " | "
                      + (f"{ours / best_ceiling:.0%}" if ours else "") + " | "
                      + (f"{nixl / ours:.0%}" if nixl and ours else "") + " |")
    md += ["", f"GiB/s, median of {a.rounds} round(s) of {a.seconds:g} s per op; ceiling = the best of the iperf3 "
           f"figures; data verified for every system: {'yes' if verified else 'NO'}. Raw rows: "
           f"`{a.out.with_suffix('.csv').relative_to(ROOT)}`."]
    text = "\n".join(md)
    a.out.with_suffix(".md").write_text(text + "\n")
    a.out.with_suffix(".svg").write_text(svg({k: v for k, v in med.items() if k[0] in systems}, sizes, systems,
                                             ceiling["iperf3 -P 4"]))
    print(text)
    return 0 if verified else 1


if __name__ == "__main__":
    sys.exit(main())
