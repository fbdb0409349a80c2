#!/usr/bin/env bash
# The NIXL plugin tests: builds libplugin_MEMKV.so and the node (release), then runs the pytest
# suite in tests/nixl/ against real memkv-server processes, inside the real NIXL agent of each
# nixl-cu12 wheel Dynamo/KVBM users run (1.5.1, 1.4.1; 1.3.2 is what kvbm 1.6.1 pins).
#   scripts/test-nixl.sh [VERSION ...]   (default: 1.5.1 1.4.1 1.3.2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.5.1 1.4.1 1.3.2)

cargo build --release --locked -p memkv-nixl
cargo build --release --locked --bin memkv --bin memkv-server
for v in "${versions[@]}"; do
  printf '\n== NIXL plugin tests under nixl-cu12 %s\n' "$v"
  py=$(scripts/nixl-venv.sh "$v")
  (cd tests/nixl && MEMKV_BIN_DIR="$root/target/release" "$py" -m pytest -q -p no:cacheprovider)
done
