//! Descriptor batching (issue 7's micro-benchmarks): planning one KVBM-shaped request, 16 blocks
//! of one pool, and one 64-layer object given as 64 descriptors in reverse order.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use plugin_MEMKV::plan::{Pair, plan_read, plan_write};

const MIB: u64 = 1 << 20;

fn kvbm_batch() -> Vec<Pair> {
    (0..16)
        .map(|i| Pair { local: 0x7f00_0000_0000 + i * 2 * MIB, len: 2 * MIB, object: i as usize, offset: 0 })
        .collect()
}

fn layers() -> Vec<Pair> {
    let chunk = 32 * 1024;
    (0..64u64)
        .rev()
        .map(|l| Pair { local: 0x7f00_0000_0000 + l * chunk, len: chunk, object: 0, offset: l * chunk })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (batch, layered) = (kvbm_batch(), layers());
    c.bench_function("plan_write_16_blocks", |b| b.iter(|| plan_write(black_box(&batch), |i| i.to_string())));
    c.bench_function("plan_read_16_blocks", |b| b.iter(|| plan_read(black_box(&batch))));
    c.bench_function("plan_write_64_layers_one_object", |b| {
        b.iter(|| plan_write(black_box(&layered), |i| i.to_string()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
