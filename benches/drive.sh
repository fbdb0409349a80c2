#!/usr/bin/env bash
# The durable drive tier, measured on this machine in one run. Writes
# docs/benchmarks/drive.md (tables + what was run) and docs/benchmarks/drive.csv, and prints the
# markdown. GiB = 2^30 bytes. Nodes listen on 127.0.6.1 (DRAM only) and 127.0.6.2 (drives).
#   1. the drive itself: sequential write (dd oflag=direct conv=fdatasync), sequential read with
#      O_DIRECT and buffered after dropping the page cache, bs=2M, on a DD_GIB file in the same
#      file system as the data dirs (fio with the same pattern when it is installed)
#   2. PUT throughput, memory-only node against a --durability async node with the same --memory,
#      in alternating rounds (`memkv bench --op put`), for each size in PUT_SIZES.
#      Target: async >= 90% of memory-only (medians)
#   3. cold GETs: COLD_KEYS x COLD_SIZE values PUT into a node with COLD_MEMORY of DRAM, SIGTERM;
#      then ROUNDS rounds of: page cache dropped, dd O_DIRECT read of the step-1 file, restart
#      (DRAM empty), every key read once (--no-fill, verified). The disk's speed drifts, so the
#      medians of the rounds are compared. Target: >= 80% of the sequential read
#   4. recovery of RECOVERY_OBJECTS objects of 256 B: (a) SIGTERM + restart (checkpoints),
#      (b) TAIL_OBJECTS more PUTs, kill -9 KILL_DELAY_S after they return + restart (tail scan),
#      (c) SIGTERM, every seg-*.idx deleted, restart (full header scan); objects= and millis= of
#      the node's "drive tier recovered" line, the time to its ready line, and VmRSS after
#      recovery minus VmRSS of the same node empty, per object. Every restart is followed by a
#      verified GET of VERIFY_COUNT keys (and, after (b) and (c), of the TAIL_OBJECTS keys).
#      Target: < 10 s to the ready line
# The page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every cold read and
# restart when that file is writable (root, not in a read-only /proc); otherwise the run says so
# and the "cold" figures are partly from the page cache.
#
# Usage: benches/drive.sh   (parameters are environment variables, defaults in brackets)
#   ROUNDS [3]  SECONDS_PER_RUN [5]  PUT_SIZES ["2MiB 64KiB"]  MEMORY [2GiB]      step 2
#   DD_GIB [3]                                                                    step 1
#   COLD_MEMORY [512MiB]  COLD_KEYS [1536]  COLD_SIZE [2MiB]  COLD_INFLIGHT [64]  step 3
#   RECOVERY_OBJECTS [1000000]  RECOVERY_MEMORY [2GiB]  RECOVERY_PUT_SECONDS [120]
#   TAIL_OBJECTS [10000]  KILL_DELAY_S [1]  VERIFY_COUNT [100000]                 step 4
#     (KILL_DELAY_S longer than the 100 ms --flush-interval-ms: async durability then promises
#     every acknowledged write, and (b) exercises the tail scan; 0 shows what an immediate crash
#     loses)
#   DRIVE_DIR [.memkv-run]: parent of the run dir, so of the data dirs and the dd file; put it on
#     the drive to measure (the run dir is deleted at exit)
#   DRIVE_CAPACITY [8GiB]: --drive-capacity of every drive node (bounds the disk space used)
#   LOG_DIR [.memkv-run/drive-logs]: every node's stderr is copied here at exit
#   PORT [9960]  OUT [docs/benchmarks/drive]: writes $OUT.md and $OUT.csv
set -euo pipefail
rounds=${ROUNDS:-3}
secs=${SECONDS_PER_RUN:-5}
read -r -a put_sizes <<<"${PUT_SIZES:-2MiB 64KiB}"
memory=${MEMORY:-2GiB}
dd_gib=${DD_GIB:-3}
cold_memory=${COLD_MEMORY:-512MiB}
cold_keys=${COLD_KEYS:-1536}
cold_size=${COLD_SIZE:-2MiB}
cold_inflight=${COLD_INFLIGHT:-64}
rec_objects=${RECOVERY_OBJECTS:-1000000}
rec_memory=${RECOVERY_MEMORY:-2GiB}
rec_put_secs=${RECOVERY_PUT_SECONDS:-120}
tail_objects=${TAIL_OBJECTS:-10000}
kill_delay=${KILL_DELAY_S:-1}
verify_count=${VERIFY_COUNT:-100000}
capacity=${DRIVE_CAPACITY:-8GiB}
port=${PORT:-9960}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
drive_dir=${DRIVE_DIR:-$root/.memkv-run}
log_dir=${LOG_DIR:-$root/.memkv-run/drive-logs}
out=${OUT:-docs/benchmarks/drive}
mem_ip=127.0.6.1
drv_ip=127.0.6.2
export LC_ALL=C

cargo build --release --quiet --bin memkv --bin memkv-server
bin=$root/target/release
# shellcheck source=benches/lib.sh disable=SC1091 # checked on its own
. "$root/benches/lib.sh"
mkdir -p "$drive_dir" "$log_dir"
TMPDIR=$drive_dir bench_setup
# shellcheck disable=SC2154 # $work is set by bench_setup
trap 'cp "$work"/*.log "$log_dir"/ 2>/dev/null || true; bench_cleanup' EXIT
rm -f "$log_dir"/*.log
bench_credentials
csv=$work/drive.csv
echo "step,case,round,metric,value" > "$csv"
row() { echo "$1,$2,$3,$4,$5" >> "$csv"; }
say() { echo "drive.sh: $*" >&2; }

drop_caches() {
  sync
  if echo 3 2>/dev/null > /proc/sys/vm/drop_caches; then return 0; fi
  say "cannot write /proc/sys/vm/drop_caches: page cache NOT dropped, cold figures are partly cached"
  return 1
}
cache_note=dropped
drop_caches || cache_note="NOT dropped (/proc/sys/vm/drop_caches not writable)"

# node NAME IP MEM [memkv-server flags...]: starts a node, its stderr in $work/NAME.log; sets
# $node_pid and $node_ready_s (seconds from exec to its ready line, recovery included).
node() {
  local name=$1 ip=$2 mem=$3 t0
  shift 3
  t0=$(date +%s.%N)
  "$bin/memkv-server" --listen "$ip:$port" --memory "$mem" "$@" > "$work/$name.out" 2> "$work/$name.log" &
  node_pid=$!
  pids+=("$node_pid")
  for _ in $(seq 1 1200); do
    grep -q ready "$work/$name.out" 2>/dev/null && break
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
  done
  grep -q ready "$work/$name.out" || { say "node $name did not start:"; cat "$work/$name.log" >&2; exit 1; }
  node_ready_s=$(python3 -c "import time; print(f'{time.time() - $t0:.3f}')")
}

# stop PID [SIGNAL]: signals the node (TERM by default), waits for it, forgets it; sets $stop_rc.
stop() {
  local pid=$1 sig=${2:-TERM} p keep=()
  kill "-$sig" "$pid" || say "node $pid was already gone before SIG$sig"
  stop_rc=0
  wait "$pid" || stop_rc=$?
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
  if [ "$sig" = TERM ] && [ "$stop_rc" != 0 ]; then say "node $pid exited with status $stop_rc after SIGTERM"; fi
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# recovered LOGFILE FIELD: a field of the node's "drive tier recovered" line.
recovered() {
  grep 'drive tier recovered' "$1" | tail -n 1 | grep -oE "(^| )$2=[0-9]+" | cut -d= -f2
}

# bench IP [memkv bench flags...]: runs `memkv bench --csv --no-progress` against one node and
# prints its last CSV line (one phase); a non-zero exit (misses, errors) is reported, not fatal.
bench() {
  local ip=$1 rc=0 res
  shift
  res=$(MEMKV_SERVERS=$ip:$port timeout 900 "$bin/memkv" bench --csv --no-progress "$@" 2> "$work/bench.err") || rc=$?
  if [ "$rc" != 0 ]; then
    say "memkv bench $* against $ip exited with $rc:"
    tail -n 5 "$work/bench.err" >&2
  fi
  tail -n 1 <<<"$res"
}
col() { cut -d, -f"$1" <<<"$2"; }  # 3 ops, 5 gib_per_s, 10 misses, 11 errors

# counters CASE: the drive node's memkv_drive_* metrics (admin port) as rows of the CSV.
counters() {
  command -v curl >/dev/null || { say "no curl: the drive node's counters are not recorded"; return 0; }
  curl -s --max-time 10 "http://$drv_ip:$((port + 1))/metrics" |
    awk '/^memkv_drive_/ {sub(/\{.*/, "", $1); sub(/^memkv_drive_/, "", $1); print $1, $NF}' |
    while read -r m v; do row counters "$1" 1 "$m" "$v"; done
}

# The drive: sequential write and reads of a $dd_gib GiB file next to the data dirs.
gibps() { python3 -c "print(f'{$1 / $2 / 2**30:.3f}')"; }
settle() {  # lets the file system's deferred work (online discard of deleted files) finish
  sync
  sleep "${SETTLE_S:-5}"
}
dd_gibps() {  # the GiB/s of a dd run, from its "N bytes ... copied, S s" line
  local line
  line=$(dd "$@" 2>&1 | grep copied)
  gibps "$(awk '{print $1}' <<<"$line")" "$(sed -E 's/.*copied, ([0-9.e+-]+) s.*/\1/' <<<"$line")"
}
fio_gibps() {
  fio --name=seq --filename="$work/ddfile" --bs=2M --size="${dd_gib}G" --ioengine=psync \
    --output-format=json "$@" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
bw = max(j["read"]["bw_bytes"], j["write"]["bw_bytes"])
print(f"{bw / 2**30:.3f}")'
}
say "step 1: the drive (${dd_gib} GiB file in $work)"
if command -v fio >/dev/null; then
  tool="fio $(fio --version) (psync, bs=2M, 1 job)"
  wr=$(fio_gibps --rw=write --direct=1 --end_fsync=1)
  drop_caches || true
  rd_direct=$(fio_gibps --rw=read --direct=1)
  drop_caches || true
  rd_buffered=$(fio_gibps --rw=read --direct=0)
else
  tool="dd (coreutils $(dd --version | head -n 1 | awk '{print $NF}'), bs=2M)"
  wr=$(dd_gibps if=/dev/zero of="$work/ddfile" bs=2M count=$((dd_gib * 512)) oflag=direct conv=fdatasync)
  drop_caches || true
  rd_direct=$(dd_gibps if="$work/ddfile" of=/dev/null bs=2M iflag=direct)
  drop_caches || true
  rd_buffered=$(dd_gibps if="$work/ddfile" of=/dev/null bs=2M)
fi
row drive seq_write_direct 1 gib_per_s "$wr"
row drive seq_read_direct 1 gib_per_s "$rd_direct"
row drive seq_read_buffered 1 gib_per_s "$rd_buffered"
say "write $wr, read direct $rd_direct, read buffered $rd_buffered GiB/s"

# PUT: memory-only against async durability, alternating.
say "step 2: PUT, memory-only ($mem_ip) against --durability async ($drv_ip)"
mkdir "$work/put-data"
node put-memory "$mem_ip" "$memory"
mem_pid=$node_pid
node put-async "$drv_ip" "$memory" --data-dir "$work/put-data" --durability async --drive-capacity "$capacity"
drv_pid=$node_pid
for size in "${put_sizes[@]}"; do
  for r in $(seq 1 "$rounds"); do
    m=$(bench "$mem_ip" --op put --size "$size" --duration "$secs")
    a=$(bench "$drv_ip" --op put --size "$size" --duration "$secs")
    row "put_$size" memory "$r" gib_per_s "$(col 5 "$m")"
    row "put_$size" memory "$r" errors "$(col 11 "$m")"
    row "put_$size" async "$r" gib_per_s "$(col 5 "$a")"
    row "put_$size" async "$r" errors "$(col 11 "$a")"
    say "PUT $size round $r: memory $(col 5 "$m"), async $(col 5 "$a") GiB/s"
  done
done
counters put
stop "$mem_pid"
stop "$drv_pid"
row put_all async 1 sigterm_exit "$stop_rc"
rm -rf "$work/put-data"
settle

# Cold GETs: the values on the drive only, the page cache dropped. This virtual disk's speed
# drifts, so every round reads the dd file (O_DIRECT) right before the node's GET pass, and the
# medians are compared.
say "step 3: cold GETs of $cold_keys x $cold_size with $cold_memory of DRAM"
mkdir "$work/cold-data"
cold=(--data-dir "$work/cold-data" --drive-capacity "$capacity")
node cold-put "$drv_ip" "$cold_memory" "${cold[@]}"
p=$(bench "$drv_ip" --op put --size "$cold_size" --keys "$cold_keys" --count "$cold_keys" --duration 600)
row cold put 1 ops "$(col 3 "$p")"
row cold put 1 gib_per_s "$(col 5 "$p")"
row cold put 1 errors "$(col 11 "$p")"
stop "$node_pid"
row cold put 1 sigterm_exit "$stop_rc"
for r in $(seq 1 "$rounds"); do
  settle
  drop_caches || true
  d=$(dd_gibps if="$work/ddfile" of=/dev/null bs=2M iflag=direct)
  row cold dd "$r" gib_per_s "$d"
  drop_caches || true
  node cold-get "$drv_ip" "$cold_memory" "${cold[@]}"
  row cold restart "$r" objects "$(recovered "$work/cold-get.log" objects)"
  g=$(bench "$drv_ip" --op get --no-fill --size "$cold_size" --keys "$cold_keys" --count "$cold_keys" \
    --inflight "$cold_inflight" --duration 600)
  row cold get "$r" ops "$(col 3 "$g")"
  row cold get "$r" gib_per_s "$(col 5 "$g")"
  row cold get "$r" misses "$(col 10 "$g")"
  row cold get "$r" errors "$(col 11 "$g")"
  say "cold round $r: dd O_DIRECT read $d, GET $(col 5 "$g") GiB/s, $(col 3 "$g") ops, misses $(col 10 "$g"), errors $(col 11 "$g")"
  if [ "$r" -lt "$rounds" ]; then
    stop "$node_pid"
  fi
done
rm -f "$work/ddfile"
counters cold
stop "$node_pid"
rm -rf "$work/cold-data"

# Recovery of a million small objects.
say "step 4: recovery of $rec_objects objects of 256 B"
mkdir "$work/rec-data"
rec=(--data-dir "$work/rec-data" --drive-capacity "$capacity")
node rec-empty "$drv_ip" "$rec_memory" "${rec[@]}"
rss_empty=$(rss_kib "$node_pid")
row recovery empty 1 rss_kib "$rss_empty"
p=$(bench "$drv_ip" --op put --size 256 --keys "$rec_objects" --count "$rec_objects" --inflight 128 \
  --duration "$rec_put_secs")
row recovery put 1 ops "$(col 3 "$p")"
row recovery put 1 ops_per_s "$(col 6 "$p")"
row recovery put 1 errors "$(col 11 "$p")"
[ "$(col 3 "$p")" = "$rec_objects" ] || say "only $(col 3 "$p") of $rec_objects PUTs in $rec_put_secs s"
say "PUT $(col 3 "$p") objects at $(col 6 "$p") ops/s"

# after NAME: records the restart that just happened, then a verified GET of the first keys.
after() {
  local name=$1 f
  row recovery "$name" 1 ready_s "$node_ready_s"
  for f in objects bytes segments from_checkpoint scanned torn_bytes millis; do
    row recovery "$name" 1 "$f" "$(recovered "$work/rec-$name.log" "$f")"
  done
  rss=$(rss_kib "$node_pid")
  row recovery "$name" 1 rss_kib "$rss"
  v=$(bench "$drv_ip" --op get --no-fill --size 256 --keys "$rec_objects" \
    --count "$((verify_count < rec_objects ? verify_count : rec_objects))" --inflight 128 --duration 120)
  row recovery "$name" 1 verify_ops "$(col 3 "$v")"
  row recovery "$name" 1 verify_misses "$(col 10 "$v")"
  row recovery "$name" 1 verify_errors "$(col 11 "$v")"
  say "$name: $(grep 'drive tier recovered' "$work/rec-$name.log" | tail -n 1 | sed 's/.*recovered //'), ready in ${node_ready_s}s, VmRSS $rss KiB, verified GETs: misses $(col 10 "$v") errors $(col 11 "$v")"
  if [ "$name" != checkpoint ]; then  # the objects PUT just before the kill -9
    v=$(bench "$drv_ip" --op get --no-fill --size 256 --prefix drive-tail --keys "$tail_objects" \
      --count "$tail_objects" --inflight 128 --duration 60)
    row recovery "$name" 1 tail_misses "$(col 10 "$v")"
    row recovery "$name" 1 tail_errors "$(col 11 "$v")"
    say "$name: of the $tail_objects objects PUT ${kill_delay}s before the kill -9, $(col 10 "$v") missing, $(col 11 "$v") errors"
  fi
}
stop "$node_pid"
row recovery checkpoint 1 sigterm_exit "$stop_rc"
drop_caches || true
node rec-checkpoint "$drv_ip" "$rec_memory" "${rec[@]}"
after checkpoint

t=$(bench "$drv_ip" --op put --size 256 --prefix drive-tail --keys "$tail_objects" --count "$tail_objects" --duration 60)
row recovery tail 1 put_ops "$(col 3 "$t")"
say "kill -9 of the node ${kill_delay}s after the last acknowledgement (on purpose)"
sleep "$kill_delay"
stop "$node_pid" KILL
drop_caches || true
node rec-tail "$drv_ip" "$rec_memory" "${rec[@]}"
after tail

stop "$node_pid"
row recovery scan 1 sigterm_exit "$stop_rc"
row recovery scan 1 idx_deleted "$(find "$work/rec-data" -name 'seg-*.idx' | wc -l)"
find "$work/rec-data" -name 'seg-*.idx' -delete
drop_caches || true
node rec-scan "$drv_ip" "$rec_memory" "${rec[@]}"
after scan
counters recovery
stop "$node_pid"

# The report.
cp "$csv" "$out.csv"
grep -HE ' (WARN|ERROR) |panicked' "$work"/*.log | sed "s|^$work/||" > "$work/problems.txt" || true
fs=$(df -PT "$work" | awk 'NR == 2 {print $1 " (" $2 ")"}')
{
  echo "# Drive tier benchmark"
  echo
  echo "One run of \`benches/drive.sh\` on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)$([ -z "$(git status --porcelain -- src)" ] || echo ' + uncommitted changes in src/'),"
  echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo) RAM, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')."
  echo "Data dirs and the test file on $fs; drive measured with $tool; page cache $cache_note before every cold read and restart."
} > "$work/head.md"
python3 - "$csv" "$work/head.md" "$work/problems.txt" > "$out.md" <<EOF
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1])))
def get(step, case, metric, rnd=None):
    return [float(r["value"]) for r in rows if r["step"] == step and r["case"] == case and r["metric"] == metric
            and r["value"] != "" and (rnd is None or r["round"] == str(rnd))]
def one(step, case, metric):
    v = get(step, case, metric)
    return v[0] if v else float("nan")
verdict = lambda ok: "met" if ok else "**NOT met**"
print(open(sys.argv[2]).read())
wr, rdd, rdb = one("drive", "seq_write_direct", "gib_per_s"), one("drive", "seq_read_direct", "gib_per_s"), one("drive", "seq_read_buffered", "gib_per_s")
seq = max(rdd, rdb)
print("| measurement | result | target | verdict |")
print("|---|---|---|---|")
print(f"| drive sequential write, O_DIRECT + fdatasync | {wr:.3f} GiB/s | | |")
print(f"| drive sequential read, O_DIRECT | {rdd:.3f} GiB/s | | |")
print(f"| drive sequential read, buffered, cold cache | {rdb:.3f} GiB/s | | |")
sizes = []
for r in rows:
    if r["step"].startswith("put_") and r["step"] != "put_all" and r["step"] not in sizes:
        sizes.append(r["step"])
ceiling = {}
for s in sizes:
    m, a = st.median(get(s, "memory", "gib_per_s")), st.median(get(s, "async", "gib_per_s"))
    ceiling[s] = wr / m
    errs = sum(get(s, "memory", "errors") + get(s, "async", "errors"))
    print(f"| PUT {s[4:]}, --durability async / memory-only (medians {a:.3f} / {m:.3f} GiB/s) | {a / m:.1%} | >= 90% | {verdict(a / m >= 0.9 and errs == 0)} |")
    print(f"| PUT {s[4:]}, --durability async / the drive's O_DIRECT sequential write ({a:.3f} / {wr:.3f} GiB/s): the bound when the drive writes slower than memory-only PUT | {a / wr:.1%} | | |")
cg = st.median(get("cold", "get", "gib_per_s"))
cdd = st.median(get("cold", "dd", "gib_per_s"))
cbad = sum(get("cold", "get", "misses")) + sum(get("cold", "get", "errors"))
cops, ckeys = min(get("cold", "get", "ops")), one("cold", "put", "ops")
print(f"| cold GET $cold_size from drive, {len(get('cold', 'get', 'ops'))} rounds of {int(cops)} ops, {int(cbad)} misses + errors (medians; each round right after a dd O_DIRECT read of the drive) | {cg:.3f} GiB/s = {cg / cdd:.0%} of the rounds' O_DIRECT read ({cdd:.3f}), {cg / rdb:.0%} of buffered | >= 80% of sequential read | {verdict(cg >= 0.8 * max(cdd, rdb) and cbad == 0 and cops == ckeys)} |")
names = {"checkpoint": "SIGTERM + restart (checkpoints)", "tail": "kill -9 + restart (tail scan)", "scan": "seg-*.idx deleted + restart (full scan)"}
strict = float("$kill_delay") >= 0.1  # past the flush interval: the tail must have survived
for k, label in names.items():
    s, o = one("recovery", k, "millis") / 1000, one("recovery", k, "objects")
    bad = one("recovery", k, "verify_misses") + one("recovery", k, "verify_errors")
    if k != "checkpoint":
        bad += one("recovery", k, "tail_errors") + (one("recovery", k, "tail_misses") if strict else 0)
    print(f"| recovery of {int(o):,} objects, {label} | {s:.2f} s (ready after {one('recovery', k, 'ready_s'):.2f} s) | < 10 s | {verdict(one('recovery', k, 'ready_s') < 10 and bad == 0)} |")
empty = one("recovery", "empty", "rss_kib")
print()
print("PUT rounds (GiB/s; the two nodes in alternation, memory-only first). Under async durability every byte PUT is written to the drive, so once the drive queue is full a sustained PUT cannot outrun the drive's sequential write: here " + ", ".join(f"{wr:.3f} / {st.median(get(s, 'memory', 'gib_per_s')):.3f} GiB/s = {ceiling[s]:.0%} of memory-only for {s[4:]}" for s in sizes) + ".")
print()
print("| size | round | memory-only | async | async / memory-only |")
print("|---|---|---|---|---|")
for s in sizes:
    for r in range(1, $rounds + 1):
        m, a = get(s, "memory", "gib_per_s", r)[0], get(s, "async", "gib_per_s", r)[0]
        print(f"| {s[4:]} | {r} | {m:.3f} | {a:.3f} | {a / m:.1%} |")
print()
put_ops = one("recovery", "put", "ops")
print(f"Recovery: {int(put_ops):,} of {$rec_objects:,} PUTs of 256 B done at {one('recovery', 'put', 'ops_per_s'):,.0f} ops/s, then {$tail_objects:,} more before the kill -9. VmRSS of the empty node (--memory $rec_memory) right after start: {empty / 1024:.1f} MiB.")
print()
print("| path | objects | bytes | segments | from checkpoint | scanned | torn bytes | recovery (log) | ready after | VmRSS | (VmRSS - empty) / object | verified GETs | misses | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for k, label in names.items():
    g = lambda m: one("recovery", k, m)
    o, rss = g("objects"), g("rss_kib")
    print(f"| {label} | {int(o):,} | {int(g('bytes')):,} | {int(g('segments'))} | {int(g('from_checkpoint'))} | {int(g('scanned'))} | {int(g('torn_bytes'))} | {g('millis') / 1000:.3f} s | {g('ready_s'):.2f} s | {rss / 1024:.1f} MiB | {(rss - empty) * 1024 / o:.0f} B | {int(g('verify_ops')):,} | {int(g('verify_misses'))} | {int(g('verify_errors'))} |")
print()
if one("recovery", "tail", "scanned") == 0:
    print("The kill -9 left no record in an open segment (nothing reached the drive before the kill), so (b) did not exercise the tail scan.")
    print()
for k in ("tail", "scan"):
    print(f"Of the {$tail_objects:,} objects PUT ${kill_delay} s before the kill -9, after the {names[k].split(' + ')[0]} restart: {int(one('recovery', k, 'tail_misses'))} missing, {int(one('recovery', k, 'tail_errors'))} errors (--durability async may lose acknowledged writes still queued for the drive when the process dies).")
problems = open(sys.argv[3]).read().splitlines()
print()
print(f"Node log lines at WARN or ERROR, or panics: {len(problems)}" + (":" if problems else "."))
if problems:
    print()
    print("\`\`\`")
    print("\n".join(problems[:20]))
    print("\`\`\`")
cases = [c for c in ("put", "cold", "recovery") if get("counters", c, "online")]
if cases:
    print()
    print("The drive node's counters at the end of each step (GET /metrics, memkv_drive_*):")
    print()
    keys = ["objects", "used_bytes", "hits_total", "misses_total", "corrupt_records_total", "evictions_total", "reinserted_total", "rejected_writes_total", "write_errors_total", "read_errors_total", "online"]
    print("| step | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for c in cases:
        print(f"| {c} | " + " | ".join(f"{int(one('counters', c, k)):,}" if get("counters", c, k) else "" for k in keys) + " |")
print()
print("What was run (memkv-server --listen IP:$port; every drive node with --drive-capacity $capacity):")
print()
print("- drive: a ${dd_gib} GiB file written with O_DIRECT + fdatasync, then read with O_DIRECT and buffered, page cache dropped before each read, bs=2M")
print("- PUT: \`memkv-server --memory $memory\` on $mem_ip and \`memkv-server --memory $memory --data-dir D --durability async\` on $drv_ip; $rounds round(s) of \`memkv bench --op put --size S --duration $secs --csv --no-progress\` against each in turn")
print("- cold GET: \`memkv-server --memory $cold_memory --data-dir D\`; \`memkv bench --op put --size $cold_size --keys $cold_keys --count $cold_keys\`; SIGTERM; then $rounds round(s) of: sync and ${SETTLE_S:-5} s for deferred discards, page cache dropped, dd O_DIRECT read of the step-1 file, page cache dropped, restart (DRAM empty), \`memkv bench --op get --no-fill --size $cold_size --keys $cold_keys --count $cold_keys --inflight $cold_inflight\`, stop")
print("- recovery: \`memkv-server --memory $rec_memory --data-dir D\`; \`memkv bench --op put --size 256 --keys $rec_objects --count $rec_objects --inflight 128 --duration $rec_put_secs\`; (a) SIGTERM, restart; (b) \`memkv bench --op put --size 256 --prefix drive-tail --keys $tail_objects --count $tail_objects\`, kill -9 ${kill_delay} s after it returns, restart; (c) SIGTERM, rm seg-*.idx, restart; page cache dropped before each restart; after each, VmRSS, then \`memkv bench --op get --no-fill --size 256 --keys $rec_objects --count $verify_count --inflight 128\` (bytes compared)")
print()
print("GiB = 2^30 bytes. Raw rows: \`$out.csv\`.")
EOF
echo
cat "$out.md"
say "node logs in $log_dir"
