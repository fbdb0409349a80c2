#!/usr/bin/env bash
# Throughput against connections and depth (issue 7): `memkv bench` GET and PUT of 4 KiB and
# 2 MiB blocks on one local node, for every pair of --connections in CONNS and --inflight in
# DEPTHS. Prints a markdown table per size and op (GiB/s, and ops/s for 4 KiB; p99 in µs).
#
# Usage: benches/scaling.sh [SECONDS] [CONNS] [DEPTHS]   (defaults: 2 "1 2 4 8 16" "1 8 32 128")
set -euo pipefail
secs=${1:-2}
read -r -a conns <<<"${2:-1 2 4 8 16}"
read -r -a depths <<<"${3:-1 8 32 128}"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin memkv --bin memkv-server
bin=$root/target/release
port=9987
# shellcheck source=lib.sh
. "$root/benches/lib.sh"
bench_setup
bench_credentials
export MEMKV_SERVERS=127.0.0.1:$port
bench_node 127.0.0.1 $port 4GiB

for size in 4KiB 2MiB; do
  for op in put get; do
    printf '\n%s %s: GiB/s (p99 us)\n\n| connections \\ in flight |' "${op^^}" "$size"
    printf ' %s |' "${depths[@]}"
    printf '\n|---|'
    printf -- '---|%.0s' "${depths[@]}"
    printf '\n'
    for c in "${conns[@]}"; do
      printf '| %s |' "$c"
      for d in "${depths[@]}"; do
        if [ "$d" -lt "$c" ]; then printf ' |'; continue; fi  # fewer requests than connections
        "$bin/memkv" bench --op "$op" --size "$size" --connections "$c" --inflight "$d" \
          --duration "$secs" --json --no-progress |
          python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; g, p = r["gib_per_s"], r["p99_us"]; print(f" {g:.3f} ({p:,.0f}) |", end="")'
      done
      printf '\n'
    done
  done
done
