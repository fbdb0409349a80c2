#!/usr/bin/env bash
# Every MemKV test: formatting, lints, unit + property + integration tests (real nodes on
# 127.0.0.x), doc tests. Installs what it needs itself. `.ci/run` calls this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --all-targets --locked -- -D warnings

step "build"
cargo build --all-targets --locked

step "tests"
cargo test --all-targets --locked
cargo test --doc --locked
