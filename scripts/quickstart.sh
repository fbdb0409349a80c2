#!/usr/bin/env bash
# The MemKV main job on one machine: build the node, the CLI and the NIXL plugin
# (libplugin_MEMKV.so), start a local 2-node cluster on 127.0.0.1 and 127.0.0.2 with a fresh dev
# cluster key and a dev license, offload and onboard KV blocks through the real NIXL agent
# (nixl-cu12 wheel, installed into .venv/ on first run) and our plugin, push and pull blocks with
# the CLI, show the cluster status, run the benchmark table, and stop the nodes.
#
# Everything it makes lives in .memkv-run/ (git-ignored). Ports: 9900 (data) and 9901 (admin)
# on each address, as in production; override with MEMKV_QUICKSTART_PORT.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
port=${MEMKV_QUICKSTART_PORT:-9900}
run=$root/.memkv-run
mkdir -p "$run"

say() { printf '\n== %s\n' "$*"; }

say "building (release): memkv-server, memkv, libplugin_MEMKV.so"
# shellcheck source=scripts/build-deps.sh
source scripts/build-deps.sh
cargo build --release --quiet --bin memkv --bin memkv-server
cargo build --release --quiet -p memkv-nixl
bin=$root/target/release

say "NIXL: nixl-cu12 1.5.1 in .venv/nixl-1.5.1 (first run downloads the wheel)"
py=$(scripts/nixl-venv.sh 1.5.1)

say "dev credentials in $run"
if [ ! -f "$run/dev-signing.key" ]; then
  "$bin/memkv" license keygen --out "$run/dev-signing.key" 2>/dev/null
fi
pub=$("$bin/memkv" license pubkey --signing-key "$run/dev-signing.key")
"$bin/memkv" license issue --signing-key "$run/dev-signing.key" --licensee "quickstart (dev)" \
  --days 30 > "$run/minio.license"
[ -f "$run/auth.key" ] || "$bin/memkv" keygen > "$run/auth.key"
MEMKV_AUTH_KEY=$(cat "$run/auth.key")
export MEMKV_AUTH_KEY
export MEMKV_LICENSE=$run/minio.license
export MEMKV_LICENSE_PUBKEY=$pub
export MEMKV_SERVERS=127.0.0.1:$port,127.0.0.2:$port
"$bin/memkv" license verify

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

say "starting 2 nodes: 127.0.0.1:$port and 127.0.0.2:$port (admin on :$((port + 1)))"
for ip in 127.0.0.1 127.0.0.2; do
  "$bin/memkv-server" --listen "$ip:$port" --memory 2GiB --node-id "node-$ip" \
    > "$run/node-$ip.out" 2> "$run/node-$ip.log" &
  pids+=($!)
done
for ip in 127.0.0.1 127.0.0.2; do
  for _ in $(seq 1 100); do
    grep -q ready "$run/node-$ip.out" 2>/dev/null && break
    if ! kill -0 "${pids[0]}" 2>/dev/null || ! kill -0 "${pids[1]}" 2>/dev/null; then
      echo "a node failed to start:"; cat "$run"/node-*.log; exit 1
    fi
    sleep 0.1
  done
  grep -q ready "$run/node-$ip.out" || { echo "node $ip did not start:"; cat "$run/node-$ip.log"; exit 1; }
  cat "$run/node-$ip.out"
done

say "KV blocks through NIXL: KVBM-shaped offload (WRITE) and onboard (READ), 16 x 2 MiB per request"
NIXL_PLUGIN_DIR=$bin "$py" benches/nixl_kv.py --size 2MiB --batch 16 --handles 4 --duration 3 \
  --namespace quickstart 2> "$run/nixl.log" || { cat "$run/nixl.log"; exit 1; }

say "push and pull blocks with the CLI"
head -c $((2 * 1024 * 1024)) /dev/urandom > "$run/block.bin"
for i in 1 2 3 4; do "$bin/memkv" put "quickstart/block-$i" "$run/block.bin"; done
"$bin/memkv" get quickstart/block-3 "$run/block.back"
cmp "$run/block.bin" "$run/block.back" && echo "block-3 came back byte-exact (2 MiB)"
"$bin/memkv" exists quickstart/block-1 quickstart/block-2 quickstart/block-3 quickstart/block-4 quickstart/never-written || true

say "cluster status"
"$bin/memkv" status

say "benchmark: 2 MiB blocks, 4 connections per node, 32 in flight"
"$bin/memkv" bench --size 2MiB --connections 4 --inflight 32 --duration 3 --no-progress
say "benchmark: 4 KiB blocks, 32 in flight"
"$bin/memkv" bench --size 4KiB --connections 4 --inflight 32 --duration 3 --no-progress

say "stopping the nodes (SIGTERM, graceful)"
