#!/usr/bin/env bash
# Same-host shared memory (issue 6) against the same client over TCP loopback and against memcpy,
# 2 MiB blocks, measured in alternation so machine drift cancels out:
#   memcpy : 2 MiB copies between two 1 GiB buffers (numpy, i.e. libc memcpy), in 1 and in 2
#            processes at once (summed); the larger is the ceiling
#   shm    : `memkv --transport shm bench` PUT and GET, one node, 4 connections, 32 in flight;
#            every GET's CRC32C is checked by the client library, and every 16th GET is also
#            compared byte for byte (`--verify-every 16`: a full comparison is a second pass over
#            the bytes, as costly as the transfer itself at memory speed)
#   tcp    : the same with --transport tcp
# Targets (issue 6): shm >= 3x tcp and >= 60% of the memcpy ceiling, PUT and GET.
#
# Usage: benches/shm.sh [ROUNDS] [SECONDS]   (defaults 3 rounds of 5 s per measurement)
# Prints a markdown table (GiB = 2^30 bytes).
set -euo pipefail
rounds=${1:-3}
secs=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin memkv --bin memkv-server
bin=$root/target/release
node_port=9971
# shellcheck source=lib.sh
. "$root/benches/lib.sh"
bench_setup
bench_credentials
export MEMKV_SERVERS=127.0.0.1:$node_port
bench_node 127.0.0.1 $node_port 4GiB
py=python3
"$py" -c 'import numpy' 2>/dev/null || py=$(scripts/nixl-venv.sh 1.5.1)

memcpy() {
  "$py" - "$secs" "$1" <<'EOF'
import multiprocessing as mp, sys, time
import numpy as np
secs, procs = float(sys.argv[1]), int(sys.argv[2])
BLOCK, SPAN = 2 << 20, 1 << 30
def one(q):
    src = np.random.default_rng(1).integers(0, 255, SPAN, dtype=np.uint8)
    dst = np.empty_like(src)
    dst[:] = src  # fault every page in before timing
    n, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < secs:
        o = (i * BLOCK) % SPAN
        dst[o:o + BLOCK] = src[o:o + BLOCK]
        n += BLOCK
        i += 7  # stride through the span: blocks come from memory, not cache
    q.put(n / (time.perf_counter() - t0) / 2**30)
q = mp.Queue()
ps = [mp.Process(target=one, args=(q,)) for _ in range(procs)]
for p in ps: p.start()
print(sum(q.get() for _ in ps))
for p in ps: p.join()
EOF
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print([r for r in d if r['op']=='$1'][0]['$2'])"; }
bench() {
  "$bin/memkv" --transport "$1" bench --size 2MiB --connections 4 --inflight 32 --duration "$secs" --json \
    --no-progress --verify-every 16
}

cols=()
for r in $(seq 1 "$rounds"); do
  m1=$(memcpy 1)
  m2=$(memcpy 2)
  shm=$(bench shm)
  tcp=$(bench tcp)
  row="$r $m1 $m2 $(field put gib_per_s <<<"$shm") $(field get gib_per_s <<<"$shm")"
  row="$row $(field put gib_per_s <<<"$tcp") $(field get gib_per_s <<<"$tcp")"
  for j in "$shm" "$tcp"; do
    [ "$(field put errors <<<"$j")$(field get errors <<<"$j")$(field get misses <<<"$j")" = 000 ] ||
      { echo "round $r: errors or misses: $j" >&2; exit 1; }
  done
  cols+=("$row")
  echo "round $r (memcpy 1 proc, 2 procs, shm PUT, GET, tcp PUT, GET): ${row#* }" >&2
done

printf '%s\n' "${cols[@]}" | python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
print("| round | memcpy 1 proc (GiB/s) | memcpy 2 procs (GiB/s) | shm PUT | shm GET | tcp PUT | tcp GET | shm/tcp PUT | shm/tcp GET | shm PUT / memcpy | shm GET / memcpy |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
def line(r, m1, m2, sp, sg, tp, tg, bold=False):
    c = max(m1, m2)
    cells = [f"{m1:.2f}", f"{m2:.2f}", f"{sp:.2f}", f"{sg:.2f}", f"{tp:.2f}", f"{tg:.2f}",
             f"{sp/tp:.2f}x", f"{sg/tg:.2f}x", f"{sp/c:.0%}", f"{sg/c:.0%}"]
    if bold:
        cells = [f"**{x}**" for x in cells]
    print(f"| {r} | " + " | ".join(cells) + " |")
for row in rows:
    line(int(row[0]), *row[1:])
med = [st.median(r[i] for r in rows) for i in range(1, 7)]
line("**median**", *med, bold=True)
m1, m2, sp, sg, tp, tg = med
c = max(m1, m2)
verdict = lambda ok: "met" if ok else "NOT met"
print()
print(f"Targets (issue 6): shm >= 3x tcp: {verdict(sp / tp >= 3 and sg / tg >= 3)};"
      f" shm >= 60% of the memcpy ceiling: {verdict(sp / c >= 0.6 and sg / c >= 0.6)}.")
'
