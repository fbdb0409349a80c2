#!/usr/bin/env bash
# One command for the side-by-side benchmark (issue 7): installs what it needs (iperf3 and
# redis-server from Debian, the nixl-cu12 wheel into .venv/), builds MemKV, starts one MemKV node,
# one Redis and two iperf3 servers on 127.0.0.1, and runs benches/peers/peers.py, which measures
# every system in alternation and writes docs/benchmarks/peers.{csv,md,svg}.
#
#   benches/peers/run.sh [peers.py options]    e.g. --rounds 3 --seconds 5 --sizes 2MiB,4MiB
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

missing=()
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
fi
cargo build --release --quiet --bin memkv --bin memkv-server
cargo build --release --quiet -p memkv-nixl
py=$(scripts/nixl-venv.sh 1.5.1)
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
for _ in $(seq 1 50); do redis-cli -p $redis_port ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
sleep 0.3

"$py" benches/peers/peers.py --bin "$bin" --redis-port $redis_port --iperf-ports 5299,5300 "$@"
