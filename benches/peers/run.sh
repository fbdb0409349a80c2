#!/usr/bin/env bash
# One command for the side-by-side benchmark (issue 7): installs what it needs (iperf3,
# redis-server and libibverbs1 from Debian; the nixl-cu12 wheel and Mooncake Store's
# mooncake-transfer-engine-non-cuda into .venv/), builds MemKV, starts on 127.0.0.1 one MemKV node,
# one Redis, two iperf3 servers, a mooncake_master and a Mooncake segment holder, and runs
# benches/peers/peers.py, which measures every system in alternation (MemKV over TCP and over the
# node's same-host shared memory, raw and through the NIXL plugin; Redis; Mooncake Store; NIXL UCX
# over tcp and shm), checks issue 7's targets, and writes docs/benchmarks/peers.{csv,md,svg}.
# Nothing else CPU-heavy should run meanwhile: peers.py reports the CPU other processes used.
#
#   benches/peers/run.sh [peers.py options]    e.g. --rounds 3 --seconds 3 --sizes 2MiB,4MiB
#   defaults: 1 round of 3 s per op, sizes 4KiB..16MiB: about 6 minutes on 2 cores (--rounds 3:
#   about 17). The medians over the rounds are reported.
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
node_1t_port=9995
redis_port=6399

# Every server below must be this run's own: with a port already taken, a peer would be measured
# against whatever holds it (a redis-server started by hand, say) and its start failure unseen.
for hp in 127.0.0.1:$node_port 127.0.0.2:$node_1t_port 127.0.0.1:$redis_port 127.0.0.1:5299 127.0.0.1:5300 \
  127.0.0.1:8090 127.0.0.1:50051 127.0.0.1:9013; do
  if (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null; then
    echo "peers: $hp is already in use, and this run starts its own server there; stop what listens" \
      "(ss -ltnp 'sport = :${hp##*:}' names it) and run again" >&2
    exit 1
  fi
done

# shellcheck source=../lib.sh
. "$root/benches/lib.sh"
bench_setup
bench_credentials
export MEMKV_SERVERS=127.0.0.1:$node_port
# The node offers shared memory to same-host clients by default (MEMKV_SHM_SOCKET=auto); memkv-shm
# and memkv-nixl-shm use it, memkv and memkv-nixl stay on TCP (bench_credentials sets
# MEMKV_TRANSPORT=tcp, and peers.py names the transport of each system explicitly).
# Both nodes commit their arenas at start (--prefault), as a dedicated cache node would: every
# NIXL driver process writes keys of its own, so without it they land in pages never touched
# before, which the kernel allocates and zeroes inside the timed phase (a node that has been full
# once has none left). docs/benchmarks.md has the before and after.
MEMKV_PREFAULT=true bench_node 127.0.0.1 $node_port 6GiB
# The node of the memkv-1t rows: one runtime thread, as redis-server has (peers.py --node-1t).
MEMKV_PREFAULT=true MEMKV_THREADS=1 bench_node 127.0.0.2 $node_1t_port 2GiB
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
  --node-1t 127.0.0.2:$node_1t_port \
  --mooncake-python "$mc/bin/python" "$@"
