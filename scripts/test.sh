#!/usr/bin/env bash
# Every MemKV test: formatting, lints, unit + property + integration tests (real nodes on
# 127.0.0.x), doc tests. Installs what it needs itself. `.ci/run` calls this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n== %s\n' "$*"; }

# The full run builds each target once: incremental state would only take disk (1.6 GB on a
# clean checkout, where CI has little to spare).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
disk_free() { df -h --output=avail . | tail -1 | tr -d ' '; }

step "toolchain"
# shellcheck source=scripts/build-deps.sh
source scripts/build-deps.sh
cargo --version
rustc --version
echo "disk free: $(disk_free)"

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
if ! command -v shellcheck >/dev/null; then
  echo "installing shellcheck" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck) >/dev/null
fi
shellcheck -x -P SCRIPTDIR scripts/*.sh benches/*.sh benches/*/*.sh .ci/run

step "build"
cargo build --workspace --all-targets --locked

step "tests"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

step "NIXL plugin inside the real NIXL (nixl-cu12 1.5.1, 1.4.1, 1.3.2)"
scripts/test-nixl.sh
echo "disk free: $(disk_free)"
