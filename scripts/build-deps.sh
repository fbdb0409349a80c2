#!/usr/bin/env bash
# Installs what building MemKV needs beyond Rust: cmake and clang, for the verbs binding
# (sideway's rdma-mummy-sys compiles a small C shim and runs bindgen). Nothing for CUDA: the
# driver is loaded at run time. Sourced by test.sh and quickstart.sh.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v clang >/dev/null || need+=(clang)
if ((${#need[@]})); then
  echo "installing ${need[*]} (build dependencies of the RDMA binding)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >/dev/null
fi
