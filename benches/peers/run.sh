#!/usr/bin/env bash
# One command for the side-by-side benchmark (issue 7): installs what it needs (iperf3,
# redis-server and libibverbs1 from Debian; the nixl-cu12 wheel and Mooncake Store's
# mooncake-transfer-engine-non-cuda into .venv/), builds MemKV, starts on 127.0.0.1 one MemKV node,
# one Redis, two iperf3 servers, a mooncake_master and a Mooncake segment holder, and runs
# benches/peers/peers.py, which measures every system in alternation and writes
# docs/benchmarks/peers.{csv,md,svg}.
#
#   benches/peers/run.sh [peers.py options]    e.g. --rounds 3 --seconds 5 --sizes 2MiB,4MiB
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

missing=()
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -e /usr/lib/x86_64-linux-gnu/libibverbs.so.1 ] || missing+=(libibverbs1)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
fi
cargo build --release --quiet --bin memkv --bin memkv-server
cargo build --release --quiet -p memkv-nixl
py=$(scripts/nixl-venv.sh 1.5.1)
mc=$root/.venv/mooncake
if ! "$mc/bin/python" -c "import mooncake.store, numpy" 2>/dev/null; then
  python3 -m venv "$mc"
  "$mc/bin/pip" install --quiet --disable-pip-version-check numpy mooncake-transfer-engine-non-cuda
fi
bin=$root/target/release
node_port=9985
redis_port=6399

# shellcheck source=../lib.sh
. "$root/benches/lib.sh"
bench_setup
bench_credentials
export MEMKV_SERVERS=127.0.0.1:$node_port
bench_node 127.0.0.1 $node_port 6GiB
redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no --maxmemory 4gb \
  > "$work/redis.log" 2>&1 &
pids+=($!)
for p in 5299 5300; do
  iperf3 -s -B 127.0.0.1 -p "$p" > /dev/null 2>&1 &
  pids+=($!)
done
# Mooncake: the master with its HTTP metadata server, all on loopback (its defaults bind 0.0.0.0),
# and a process that holds the 2 GiB memory segment the benchmark client writes into over TCP.
"$mc/bin/mooncake_master" --enable_http_metadata_server=true --http_metadata_server_host=127.0.0.1 \
  --http_metadata_server_port=8090 --rpc_address=127.0.0.1 --rpc_port=50051 \
  --metrics_host=127.0.0.1 --metrics_port=9013 > "$work/mooncake-master.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do redis-cli -p $redis_port ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
sleep 1
"$mc/bin/python" benches/peers/mooncake_peer.py --hold 86400 > "$work/mooncake-holder.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q holding "$work/mooncake-holder.log" 2>/dev/null && break; sleep 0.1; done
grep -q holding "$work/mooncake-holder.log" || { tail -5 "$work/mooncake-holder.log"; exit 1; }

"$py" benches/peers/peers.py --bin "$bin" --redis-port $redis_port --iperf-ports 5299,5300 \
  --mooncake-python "$mc/bin/python" "$@"
