//! Criterion micro-benchmarks of local memory management: the MR cache.
//!
//! - `mr_cache_lookup/<n>`: one hit (`MrCache::get`) for a random descriptor inside one of `n`
//!   disjoint registered regions; should grow at most logarithmically with `n`.
//! - `mr_cache_miss_register/<n>`: one miss + a no-op registration + insert, with the cache full
//!   at `n` entries, so every insert also evicts the least recently used entry.
//!
//! Run: `cargo bench --bench mem` (quick: `-- --warm-up-time 1 --measurement-time 2`).

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use memkv::mem::cache::MrCache;

/// Regions are 1 MiB, 2 MiB apart, from a typical heap address.
const BASE: u64 = 0x7f00_0000_0000;
const REGION: u64 = 1 << 20;
const STRIDE: u64 = 2 << 20;
const SIZES: [u64; 4] = [10, 1_000, 10_000, 100_000];

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn filled(n: u64) -> MrCache<u64> {
    let cache = MrCache::new(n as usize, u64::MAX);
    // Registered in a scrambled order so the tree is not built from sorted inserts only.
    let mut order: Vec<u64> = (0..n).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    for i in order {
        let start = BASE + i * STRIDE;
        let _ = cache.get_or_register(start, 1, || Ok::<_, Infallible>((start, REGION, i)));
    }
    assert_eq!(cache.len(), n as usize);
    cache
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("mr_cache_lookup");
    for n in SIZES {
        let cache = filled(n);
        // 4096 random descriptors (64 B to 64 KiB) inside random regions.
        let mut rng = Rng(n | 1);
        let descs: Vec<(u64, u64)> = (0..4096)
            .map(|_| {
                let len = 64 << (rng.next() % 11);
                let start = BASE + (rng.next() % n) * STRIDE;
                (start + rng.next() % (REGION - len), len)
            })
            .collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &descs, |b, descs| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (descs.len() - 1);
                let (addr, len) = descs[i];
                black_box(cache.get(black_box(addr), black_box(len)).is_some())
            })
        });
        assert_eq!(cache.stats().misses, n, "every benchmarked lookup must hit (n misses were the fill)");
    }
    g.finish();
}

fn miss_register(c: &mut Criterion) {
    let mut g = c.benchmark_group("mr_cache_miss_register");
    for n in [1_000, 100_000] {
        let cache = filled(n);
        // Fresh addresses above every registered region: always a miss, always an eviction.
        let mut next = n;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let start = BASE + next * STRIDE;
                next += 1;
                let entry = cache.get_or_register(start + 64, 64, || Ok::<_, Infallible>((start, REGION, next)));
                black_box(entry.is_ok())
            })
        });
        assert_eq!(cache.stats().hits, 0, "every benchmarked call must miss");
    }
    g.finish();
}

criterion_group!(benches, lookup, miss_register);
criterion_main!(benches);
