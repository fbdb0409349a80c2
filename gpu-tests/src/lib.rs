//! Harness of the GPU tests: the CUDA gate that turns "no GPU here" into a skip message (the
//! in-process node is `memkv::testing::LocalNode`).
//!
//! Run on a GPU host with `cargo test -p memkv-gpu-tests -- --nocapture --test-threads 1`
//! (see `gpu-tests/README.md`).

use memkv::mem::cuda::{Cuda, cuda};

/// The CUDA driver, or `None` after printing why the calling test is skipped.
pub fn gpu(test: &str) -> Option<&'static Cuda> {
    match cuda() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("{test}: skipped, no usable GPU on this host: {e}");
            None
        }
    }
}

/// A deterministic byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed).wrapping_add((i >> 12) as u8)).collect()
}
