#!/usr/bin/env bash
# Loopback throughput of MemKV against the loopback ceiling, measured in alternation so machine
# drift cancels out:
#   ceiling : iperf3 -P 4 (4 parallel TCP streams) on 127.0.0.1 — the issue's yardstick; Debian 12's
#             iperf3 (3.12) runs all streams in one thread, so we also measure
#   ceiling2: two iperf3 client/server process pairs at once (-P 2 each), summed: a
#             multi-process ceiling that can use both cores like MemKV does
#   memkv   : `memkv bench` PUT and GET of 2 MiB blocks, 4 connections, 32 in flight (one node)
#   small   : `memkv bench` GET of 4 KiB blocks, 32 in flight (ops/s)
# Targets (issue 2): PUT and GET each >= 85% of the ceiling; 4 KiB GETs >= 100k ops/s.
#
# Usage: benches/loopback.sh [ROUNDS] [SECONDS]   (defaults 3 rounds of 5 s per measurement)
# Prints a markdown table (GiB = 2^30 bytes). Installs iperf3 with apt-get when it is missing.
set -euo pipefail
rounds=${1:-3}
secs=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v iperf3 >/dev/null; then
  echo "installing iperf3" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3) >/dev/null
fi
cargo build --release --quiet --bin memkv --bin memkv-server
bin=$root/target/release
iperf_port=5299
node_port=9970
# shellcheck source=lib.sh
. "$root/benches/lib.sh"
bench_setup
bench_credentials
export MEMKV_SERVERS=127.0.0.1:$node_port

for p in $iperf_port $((iperf_port + 1)); do
  iperf3 -s -B 127.0.0.1 -p "$p" > /dev/null 2>&1 &
  pids+=($!)
done
bench_node 127.0.0.1 $node_port 4GiB
sleep 0.5

ceiling() {
  iperf3 -c 127.0.0.1 -p $iperf_port -P 4 -t "$secs" -J |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8/2**30)'
}
ceiling2() {
  iperf3 -c 127.0.0.1 -p $iperf_port -P 2 -t "$secs" -J > "$work/a.json" &
  local a=$!
  iperf3 -c 127.0.0.1 -p $((iperf_port + 1)) -P 2 -t "$secs" -J > "$work/b.json"
  wait "$a"
  python3 -c 'import json,sys; print(sum(json.load(open(f))["end"]["sum_received"]["bits_per_second"] for f in sys.argv[1:])/8/2**30)' "$work/a.json" "$work/b.json"
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print([r for r in d if r['op']=='$1'][0]['$2'])"; }

cols=()
for r in $(seq 1 "$rounds"); do
  c=$(ceiling)
  c2=$(ceiling2)
  big=$("$bin/memkv" bench --size 2MiB --connections 4 --inflight 32 --duration "$secs" --json)
  small=$("$bin/memkv" bench --op get --size 4KiB --connections 4 --inflight 32 --duration "$secs" --json)
  put=$(field put gib_per_s <<<"$big")
  get=$(field get gib_per_s <<<"$big")
  ops=$(field get ops_per_s <<<"$small")
  p99=$(field get p99_us <<<"$small")
  cols+=("$r $c $c2 $put $get $ops $p99")
  echo "round $r: ceiling $c GiB/s (2 processes: $c2), put $put, get $get, 4KiB get $ops ops/s" >&2
done

printf '%s\n' "${cols[@]}" | python3 -c '
import sys, statistics as st
rows=[list(map(float,l.split())) for l in sys.stdin if l.strip()]
print("| round | iperf3 -P 4 (GiB/s) | 2 x iperf3 -P 2 (GiB/s) | PUT 2 MiB (GiB/s) | GET 2 MiB (GiB/s) | PUT / iperf3 -P 4 | GET / iperf3 -P 4 | PUT / 2 x iperf3 | GET / 2 x iperf3 | GET 4 KiB (ops/s) | GET 4 KiB p99 (us) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r,c,c2,p,g,o,l in rows:
    print(f"| {int(r)} | {c:.3f} | {c2:.3f} | {p:.3f} | {g:.3f} | {p/c:.1%} | {g/c:.1%} | {p/c2:.1%} | {g/c2:.1%} | {o:,.0f} | {l:.0f} |")
med=lambda i: st.median(r[i] for r in rows)
c,c2,p,g,o=med(1),med(2),med(3),med(4),med(5)
print(f"| **median** | **{c:.3f}** | **{c2:.3f}** | **{p:.3f}** | **{g:.3f}** | **{p/c:.1%}** | **{g/c:.1%}** | **{p/c2:.1%}** | **{g/c2:.1%}** | **{o:,.0f}** | |")
ok = p/c>=0.85 and g/c>=0.85 and o>=100000
verdict = "met" if ok else "NOT met"
print()
print(f"Targets (issue 2): PUT and GET >= 85% of iperf3 -P 4, 4 KiB GET >= 100k ops/s: {verdict}.")
'
