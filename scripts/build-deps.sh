#!/usr/bin/env bash
# Installs what building and testing MemKV needs beyond Rust: cmake and clang, for the verbs
# binding (sideway's rdma-mummy-sys compiles a small C shim and runs bindgen), and Debian's
# rdma-core runtime (libibverbs1, ibverbs-providers), which the binding opens with dlopen (it
# links nothing, so libibverbs-dev is not needed). On a host without RDMA the verbs then answer
# "no device" and MEMKV_TRANSPORT=auto falls back. Nothing for CUDA: the driver is loaded at run
# time. Sourced by test.sh and quickstart.sh.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v clang >/dev/null || need+=(clang)
for pkg in libibverbs1 ibverbs-providers; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing ${need[*]} (the RDMA binding's build and run-time dependencies)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >/dev/null
fi
