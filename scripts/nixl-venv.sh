#!/usr/bin/env bash
# Makes (once) a Python venv with one nixl-cu12 wheel, for driving the real NIXL agent:
#   scripts/nixl-venv.sh [VERSION]   → prints the venv's python path (default VERSION: 1.5.1)
# The wheel is installed without its dependencies: its Python API needs only numpy (torch is
# optional from 1.4 on; tests/nixl/stubs stands in for it under 1.3.2), so no 2 GB CUDA torch.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-1.5.1}
venv=$root/.venv/nixl-$version
if ! "$venv/bin/python" -c "import nixl_cu12._bindings, numpy, pytest" 2>/dev/null; then
  python3 -m venv "$venv" >&2
  pip=("$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir)
  "${pip[@]}" numpy pytest >&2
  "${pip[@]}" --no-deps "nixl-cu12==$version" >&2
fi
echo "$venv/bin/python"
