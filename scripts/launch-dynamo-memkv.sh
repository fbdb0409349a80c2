#!/usr/bin/env bash
# Reference launcher: NVIDIA Dynamo (vLLM + KVBM) with MemKV as KVBM's remote KV-cache tier,
# through the MEMKV NIXL plugin. Copy it and adapt it; INTEGRATIONS.md explains every piece.
#
#   export MEMKV_SERVERS=host-a:9900,host-b:9900 MEMKV_AUTH_KEY=<64 hex> MEMKV_LICENSE=/path/minio.license
#   scripts/launch-dynamo-memkv.sh --model /models/Llama-3.1-70B-Instruct --tp 4 [--dry-run]
#
# Everything is checked before anything starts (one line per problem, exit 2): the plugin,
# license and model paths, the auth key's format, the KVBM overlays, and every MemKV node's
# /v1/health (admin port = data port + 1). --dry-run prints the exact docker command instead of
# running it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch-dynamo-memkv.sh --model DIR [options]

  --model DIR          model directory on this host (mounted read-only at /models/<name>)
  --tp N               tensor-parallel size (default 1)
  --max-model-len N    longest sequence (default 32768)
  --port N             Dynamo HTTP port (default 8810)
  --image IMAGE        Dynamo vLLM runtime image with KVBM (default: $DYNAMO_IMAGE)
  --plugin FILE        libplugin_MEMKV.so (default: $MEMKV_PLUGIN, else /opt/memkv-plugins/libplugin_MEMKV.so)
  --license FILE       MemKV license (default: $MEMKV_LICENSE)
  --cpu-cache-gb N     DYN_KVBM_CPU_CACHE_GB, KVBM's host tier (default 60)
  --name NAME          container name (default memkv-dynamo)
  --skip-health-check  do not probe the MemKV nodes' /v1/health (planning offline)
  --dry-run            check everything, print the docker command, run nothing
  -h, --help           this text

Environment: MEMKV_SERVERS and MEMKV_AUTH_KEY (required) and every other MEMKV_* variable are
passed into the container. MEMKV_TRANSPORT auto (the default) or rdma adds the RDMA flags
(--device=/dev/infiniband --cap-add=IPC_LOCK --ulimit memlock=-1); shm and tcp do not (shm
reaches nodes on this host through their abstract socket, visible thanks to --net=host).
Optional KVBM overlays:
KVBM_CORE_SO (a rebuilt KVBM cdylib, lib_core.so) and KVBM_PY_SRC (a kvbm Python package
directory) are bind-mounted over the image's kvbm package at KVBM_PACKAGE_DIR
(default /opt/dynamo/venv/lib/python3.12/site-packages/kvbm).
EOF
}

die() {
  echo "launch-dynamo-memkv: $*" >&2
  exit 2
}

model=""
tp=1
max_len=32768
port=8810
image=${DYNAMO_IMAGE:-}
plugin=${MEMKV_PLUGIN:-/opt/memkv-plugins/libplugin_MEMKV.so}
license=${MEMKV_LICENSE:-}
cpu_cache_gb=60
name=memkv-dynamo
health=1
dry_run=0
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=${2:?--model needs a directory}; shift 2 ;;
    --tp) tp=${2:?--tp needs a number}; shift 2 ;;
    --max-model-len) max_len=${2:?--max-model-len needs a number}; shift 2 ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --image) image=${2:?--image needs an image}; shift 2 ;;
    --plugin) plugin=${2:?--plugin needs a file}; shift 2 ;;
    --license) license=${2:?--license needs a file}; shift 2 ;;
    --cpu-cache-gb) cpu_cache_gb=${2:?--cpu-cache-gb needs a number}; shift 2 ;;
    --name) name=${2:?--name needs a name}; shift 2 ;;
    --skip-health-check) health=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

# ---- checks: one clear line per problem -------------------------------------------------------
problems=()
problem() { problems+=("$*"); }
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }

[ -n "$model" ] || problem "--model is required: the model directory on this host"
[ -z "$model" ] || [ -d "$model" ] || problem "model directory $model does not exist"
is_uint "$tp" || problem "--tp $tp: expected a positive integer"
is_uint "$max_len" || problem "--max-model-len $max_len: expected a positive integer"
{ is_uint "$port" && [ "$port" -le 65535 ]; } || problem "--port $port: expected 1..65535"
is_uint "$cpu_cache_gb" || problem "--cpu-cache-gb $cpu_cache_gb: expected a positive integer"
[ -n "$image" ] || problem "no Dynamo image: pass --image or set DYNAMO_IMAGE (a vllm-runtime image with KVBM)"
[ -f "$plugin" ] || problem "NIXL plugin $plugin not found: build it with \`cargo build --release -p memkv-nixl\` and pass --plugin or MEMKV_PLUGIN"
if [ -z "$license" ]; then
  problem "no license: set MEMKV_LICENSE or pass --license (the plugin refuses to start without one)"
elif [ ! -f "$license" ]; then
  problem "license file $license does not exist (MEMKV_LICENSE / --license)"
fi
key=${MEMKV_AUTH_KEY:-}
if [ -z "$key" ]; then
  problem "MEMKV_AUTH_KEY is not set: the cluster key, 64 hex characters (\`memkv keygen\` makes one)"
elif ! [[ $key =~ ^[0-9a-fA-F]{64}$ ]]; then
  problem "MEMKV_AUTH_KEY is malformed: expected 64 hex characters, got ${#key} characters"
fi
transport=${MEMKV_TRANSPORT:-auto}
case ${transport,,} in
  auto | rdma | shm | tcp) ;;
  *) problem "MEMKV_TRANSPORT=$transport: expected auto, rdma, shm or tcp" ;;
esac
[ -z "${KVBM_CORE_SO:-}" ] || [ -f "$KVBM_CORE_SO" ] || problem "KVBM_CORE_SO=$KVBM_CORE_SO does not exist"
[ -z "${KVBM_PY_SRC:-}" ] || [ -d "$KVBM_PY_SRC" ] || problem "KVBM_PY_SRC=$KVBM_PY_SRC is not a directory"
if [ -z "${MEMKV_SERVERS:-}" ]; then
  problem "MEMKV_SERVERS is not set: the MemKV nodes, host:port[,host:port...]"
else
  IFS=, read -r -a servers <<<"$MEMKV_SERVERS"
  for s in "${servers[@]}"; do
    s=${s// /}
    if [[ $s =~ ^\[([0-9a-fA-F:.]+)\](:([0-9]+))?$ ]]; then
      host="[${BASH_REMATCH[1]}]" data_port=${BASH_REMATCH[3]:-9900}
    elif [[ $s =~ ^([^:/]+)(:([0-9]+))?$ ]]; then
      host=${BASH_REMATCH[1]} data_port=${BASH_REMATCH[3]:-9900}
    else
      problem "MEMKV_SERVERS entry '$s' is not host:port"
      continue
    fi
    if [ "$health" = 1 ]; then
      url="http://$host:$((data_port + 1))/v1/health"
      if ! curl -fsS --max-time 3 -o /dev/null "$url" 2>/dev/null; then
        problem "MemKV node $s is not healthy: $url did not answer 200 (is memkv-server running and reachable? --skip-health-check to plan offline)"
      fi
    fi
  done
fi
if [ ${#problems[@]} -gt 0 ]; then
  for p in "${problems[@]}"; do echo "launch-dynamo-memkv: $p" >&2; done
  exit 2
fi

# ---- the command --------------------------------------------------------------------------------
model_name=$(basename "$model")
kvbm_dir=${KVBM_PACKAGE_DIR:-/opt/dynamo/venv/lib/python3.12/site-packages/kvbm}
cmd=(docker run --rm --name "$name"
  --runtime=nvidia --gpus all --net=host --shm-size=64g --ipc=host)
case ${transport,,} in
  auto | rdma) cmd+=(--device=/dev/infiniband --cap-add=IPC_LOCK --ulimit memlock=-1) ;;
esac
cmd+=(-v "$(realpath "$plugin"):/opt/nvidia/nvda_nixl/lib/plugins/libplugin_MEMKV.so:ro"
  -v "$(realpath "$license"):/etc/memkv/minio.license:ro"
  -v "$(realpath "$model"):/models/$model_name:ro")
[ -z "${KVBM_PY_SRC:-}" ] || cmd+=(-v "$(realpath "$KVBM_PY_SRC"):$kvbm_dir:ro")
[ -z "${KVBM_CORE_SO:-}" ] || cmd+=(-v "$(realpath "$KVBM_CORE_SO"):$kvbm_dir/_core.abi3.so:ro")
cmd+=(-e DYN_KVBM_NIXL_BACKEND=MEMKV -e DYN_KVBM_REMOTE_STORAGE_TYPE=memkv
  -e "DYN_KVBM_CPU_CACHE_GB=$cpu_cache_gb" -e MEMKV_LICENSE=/etc/memkv/minio.license)
# Every MEMKV_* setting of this shell, by name (values stay out of the process list).
while IFS= read -r var; do
  case $var in MEMKV_LICENSE | MEMKV_PLUGIN) ;; *) cmd+=(-e "$var") ;; esac
done < <(compgen -e | grep '^MEMKV_' | sort)
serve="dynamo serve /models/$model_name --host 0.0.0.0 --port $port --tensor-parallel-size $tp"
serve+=" --enable-prefix-caching --max-model-len $max_len --gpu-memory-utilization 0.9"
# NIXL's UCX backend (used by KVBM next to MEMKV) needs libucx0 in the image.
inner="(dpkg -s libucx0 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libucx0)) && exec $serve"
cmd+=("$image" bash -c "$inner")

if [ "$dry_run" = 1 ]; then
  # One line a shell can run as is: words with special characters in single quotes.
  out=()
  for w in "${cmd[@]}"; do
    if [[ $w =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$w"); else out+=("'${w//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
  exit 0
fi
command -v docker >/dev/null || die "docker is not installed on this host"
exec "${cmd[@]}"
