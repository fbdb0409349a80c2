#!/usr/bin/env bash
# The NIXL path against the raw client, measured in alternation on the same 2-node cluster
# (127.0.0.1 and 127.0.0.2) so machine drift cancels out:
#   raw  : `memkv bench` PUT and GET of 2 MiB blocks, 4 connections per node, 64 blocks in flight
#   nixl : benches/nixl_kv.py through the real NIXL agent (nixl-cu12) and libplugin_MEMKV.so:
#          KVBM-shaped requests of 16 x 2 MiB blocks, 4 requests in flight (64 blocks), WRITE
#          (offload) then READ (onboard), every onboarded block compared afterwards
# Target (issue 3): NIXL WRITE and READ each >= 90% of the raw PUT and GET of the same round.
#
# Usage: benches/nixl.sh [ROUNDS] [SECONDS] [NIXL_VERSION]   (defaults 3 rounds of 5 s, 1.5.1)
# Prints a markdown table (GiB = 2^30 bytes).
set -euo pipefail
rounds=${1:-3}
secs=${2:-5}
version=${3:-1.5.1}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cargo build --release --quiet --bin memkv --bin memkv-server
cargo build --release --quiet -p memkv-nixl
py=$(scripts/nixl-venv.sh "$version")
bin=$root/target/release
port=9975
# shellcheck source=lib.sh
. "$root/benches/lib.sh"
bench_setup
bench_credentials
export MEMKV_SERVERS=127.0.0.1:$port,127.0.0.2:$port
export NIXL_PLUGIN_DIR=$bin
bench_node 127.0.0.1 $port 2GiB
bench_node 127.0.0.2 $port 2GiB

field() { python3 -c "import json,sys; d=json.load(sys.stdin); print([r for r in d if r['op']=='$1'][0]['$2'])"; }
key() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

cols=()
for r in $(seq 1 "$rounds"); do
  raw=$("$bin/memkv" bench --size 2MiB --connections 4 --inflight 64 --duration "$secs" --json)
  # The JSON is the last line (NIXL's Python API logs INFO lines on stdout).
  nixl=$("$py" benches/nixl_kv.py --size 2MiB --batch 16 --handles 4 --duration "$secs" --json 2> "$work/nixl.log" | tail -n 1) ||
    { cat "$work/nixl.log"; exit 1; }
  put=$(field put gib_per_s <<<"$raw")
  get=$(field get gib_per_s <<<"$raw")
  w=$(key write_gib_per_s <<<"$nixl")
  rd=$(key read_gib_per_s <<<"$nixl")
  bad=$(key mismatched_blocks <<<"$nixl")
  cols+=("$r $put $get $w $rd $bad")
  echo "round $r: raw put $put get $get, nixl write $w read $rd GiB/s, $bad mismatched blocks" >&2
done

printf '%s\n' "${cols[@]}" | python3 -c '
import sys, statistics as st
rows=[list(map(float,l.split())) for l in sys.stdin if l.strip()]
print("| round | raw PUT (GiB/s) | raw GET (GiB/s) | NIXL WRITE (GiB/s) | NIXL READ (GiB/s) | WRITE / PUT | READ / GET | mismatched blocks |")
print("|---|---|---|---|---|---|---|---|")
for r,p,g,w,rd,b in rows:
    print(f"| {int(r)} | {p:.3f} | {g:.3f} | {w:.3f} | {rd:.3f} | {w/p:.1%} | {rd/g:.1%} | {int(b)} |")
med=lambda i: st.median(r[i] for r in rows)
p,g,w,rd=med(1),med(2),med(3),med(4)
print(f"| **median** | **{p:.3f}** | **{g:.3f}** | **{w:.3f}** | **{rd:.3f}** | **{w/p:.1%}** | **{rd/g:.1%}** | {int(sum(r[5] for r in rows))} |")
ok = w/p >= 0.9 and rd/g >= 0.9 and sum(r[5] for r in rows) == 0
print()
verdict = "met" if ok else "NOT met"
print(f"Target (issue 3): NIXL WRITE and READ >= 90% of the raw client in the same run, no wrong block: {verdict}.")
'
