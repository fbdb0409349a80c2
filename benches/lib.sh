# shellcheck shell=bash
# shellcheck disable=SC2154 # $bin is set by the script that sources this file
# Shared by the benchmark scripts (sourced, not run): a throw-away dev cluster on loopback.
#   bench_setup            work dir in $work, cleanup on exit (kills everything in $pids)
#   bench_credentials      a dev signing key, license and cluster key, exported as MEMKV_*; also
#                          MEMKV_TRANSPORT=tcp unless set (the node is on this host, where `auto`
#                          would pick shared memory; benches/shm.sh compares the two)
#   bench_node IP PORT MEM starts memkv-server on IP:PORT and waits for its ready line
# Needs $bin (the directory holding memkv and memkv-server).

bench_setup() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

bench_credentials() {
  "$bin/memkv" license keygen --out "$work/sign.key" 2>/dev/null
  MEMKV_LICENSE_PUBKEY=$("$bin/memkv" license pubkey --signing-key "$work/sign.key")
  "$bin/memkv" license issue --signing-key "$work/sign.key" --licensee bench --days 1 > "$work/lic"
  MEMKV_AUTH_KEY=$("$bin/memkv" keygen)
  export MEMKV_LICENSE_PUBKEY MEMKV_AUTH_KEY MEMKV_LICENSE=$work/lic
  export MEMKV_TRANSPORT=${MEMKV_TRANSPORT:-tcp}
}

bench_node() {
  local ip=$1 port=$2 memory=$3
  "$bin/memkv-server" --listen "$ip:$port" --memory "$memory" > "$work/node-$ip.out" 2> "$work/node-$ip.log" &
  pids+=($!)
  for _ in $(seq 1 600); do grep -q ready "$work/node-$ip.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$work/node-$ip.out" || { cat "$work/node-$ip.log"; exit 1; }
}
