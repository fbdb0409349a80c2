//! Criterion micro-benchmarks of the per-request hot path: frame header encode/decode, the
//! per-frame MAC (seal/open), CRC32C of typical block sizes (hot, and cold: random blocks of a
//! 512 MiB buffer), the same-host copy with its CRC32C, batch meta codecs and key routing.
//!
//! Run: `cargo bench --bench hot_path` (figures in docs/benchmarks.md).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use memkv::auth::{AuthKey, Role, SessionKeys};
use memkv::config::{ClientConfig, Sources};
use memkv::wire::{self, BatchGetEntry, Header, Limits, Op};

fn frame_codec(c: &mut Criterion) {
    let mut h = Header::request(Op::Get, 42);
    h.meta_len = 24;
    h.offset = 4096;
    let raw = h.encode();
    c.bench_function("header_encode", |b| b.iter(|| black_box(black_box(&h).encode())));
    c.bench_function("header_decode", |b| b.iter(|| black_box(Header::decode(black_box(&raw), &Limits::default()))));
}

fn frame_mac(c: &mut Criterion) {
    let key = AuthKey::generate().expect("key");
    let mut client = SessionKeys::derive(&key, &[1; 32], &[2; 32], Role::Client);
    let mut node = SessionKeys::derive(&key, &[1; 32], &[2; 32], Role::Node);
    let meta = b"model-a/tp0/0000000000001234";
    c.bench_function("frame_seal_and_open", |b| {
        b.iter(|| {
            let mut h = Header::request(Op::Get, 1);
            h.meta_len = meta.len() as u32;
            let (raw, mac) = client.send.seal(&mut h, meta);
            node.recv.open(&raw, &h, meta, &mac).expect("authentic");
        })
    });
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [4096usize, 64 << 10, 2 << 20] {
        let data = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("crate", size), &data, |b, d| b.iter(|| crc32c::crc32c(black_box(d))));
        g.bench_with_input(BenchmarkId::new("crc_bulk", size), &data, |b, d| {
            b.iter(|| memkv::testing::crc_bulk(black_box(d)))
        });
    }
    g.finish();
}

/// Bytes that the cold benchmarks pick blocks from, one per iteration: far more than the caches
/// hold, so each block comes from memory, as a stored value or a caller's buffer usually does.
const COLD: usize = 512 << 20;

/// A `size`-byte block at a pseudo-random `size`-aligned place of a [`COLD`]-byte buffer (values
/// and arena slots lie scattered, not one after the other, so the hardware prefetchers get no
/// run-up from the block before). `state` is the generator's (xorshift).
fn next_block(state: &mut u64, size: usize) -> std::ops::Range<usize> {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let at = (*state % (COLD / size) as u64) as usize * size;
    at..at + size
}

/// CRC32C of blocks that are not in cache: the `crc32c` crate, and `crc_bulk` (the same
/// three-lane loop, plus a prefetch one step ahead across the 4 KiB pages where the hardware
/// prefetchers stop), which the node's COMMIT check and the clients' CRCs of caller buffers use.
fn crc_cold(c: &mut Criterion) {
    let data: Vec<u8> = (0..COLD).map(|i| ((i * 131) >> 7) as u8).collect();
    let mut g = c.benchmark_group("crc32c_cold");
    for size in [64usize << 10, 2 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        g.bench_function(BenchmarkId::new("crate", size), |b| {
            b.iter(|| crc32c::crc32c(&data[next_block(&mut rng, size)]))
        });
        g.bench_function(BenchmarkId::new("crc_bulk", size), |b| {
            b.iter(|| memkv::testing::crc_bulk(&data[next_block(&mut rng, size)]))
        });
        let r = next_block(&mut rng, size);
        assert_eq!(memkv::testing::crc_bulk(&data[r.clone()]), crc32c::crc32c(&data[r]));
    }
    g.finish();
}

/// The same-host copy with its CRC32C against `memcpy` followed by a CRC of the copy (what it
/// replaced). Buffers stay in cache here; docs/benchmarks.md measures cold ones.
fn same_host_copy(c: &mut Criterion) {
    let mut g = c.benchmark_group("copy_with_crc");
    for size in [64usize << 10, 2 << 20] {
        let src: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
        let mut dst = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("memcpy_then_crc", size), |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                crc32c::crc32c(&dst)
            })
        });
        g.bench_function(BenchmarkId::new("one_pass_cached", size), |b| {
            b.iter(|| memkv::testing::copy_with_crc(black_box(&src), &mut dst, false))
        });
        g.bench_function(BenchmarkId::new("one_pass_streamed", size), |b| {
            b.iter(|| memkv::testing::copy_with_crc(black_box(&src), &mut dst, true))
        });
        assert_eq!(memkv::testing::copy_with_crc(&src, &mut dst, true), crc32c::crc32c(&src));
    }
    g.finish();
}

/// The same-host copies from a cold source into a cold destination (random blocks of two 512 MiB
/// buffers): a write into the arena (`one_pass_streamed`) and a read out of it
/// (`one_pass_cached`), as the shared-memory transport runs them.
fn same_host_copy_cold(c: &mut Criterion) {
    let src: Vec<u8> = (0..COLD).map(|i| (i * 31) as u8).collect();
    // Filled, not zeroed: every page is faulted in before the first measurement.
    let mut dst = vec![0x5Au8; COLD];
    let mut g = c.benchmark_group("copy_with_crc_cold");
    for size in [64usize << 10, 2 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for (name, stream) in [("one_pass_streamed", true), ("one_pass_cached", false)] {
            g.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    let r = next_block(&mut rng, size);
                    memkv::testing::copy_with_crc(&src[r.clone()], &mut dst[r], stream)
                })
            });
        }
    }
    g.finish();
}

/// The streaming copy of 16 MiB from a cold source into a cold destination, by where the
/// destination lies against the source modulo 4 KiB (`crc_copy::stores_for` picks how to store
/// for each): a line below, the same offset, one and two lines above, half a page away.
fn same_host_copy_by_page_offset(c: &mut Criterion) {
    const SIZE: usize = 16 << 20;
    let src: Vec<u8> = (0..COLD).map(|i| (i * 31) as u8).collect();
    let mut dst = vec![0x5Au8; COLD + 16384];
    let base = |p: *const u8| (4096 - p as usize % 4096) % 4096;
    let (s0, d0) = (base(src.as_ptr()), base(dst.as_ptr()));
    let mut g = c.benchmark_group("copy_with_crc_page_offset");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    for rel in [-64isize, 0, 80, 144, 2048] {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        g.bench_function(BenchmarkId::new("one_pass_streamed", rel), |b| {
            b.iter(|| {
                // Page-aligned blocks of the source (less a page) and the destination, `rel`
                // bytes apart in page offset.
                let r = next_block(&mut rng, SIZE);
                let from = s0 + r.start.min(COLD - SIZE - 4096);
                let to = (d0 as isize + 4096 + rel) as usize + next_block(&mut rng, SIZE).start;
                memkv::testing::copy_with_crc(&src[from..from + SIZE], &mut dst[to..to + SIZE], true)
            })
        });
    }
    g.finish();
}

fn batch_meta(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..256).map(|i| format!("model-a/tp0/{i:016x}").into_bytes()).collect();
    let entries: Vec<BatchGetEntry<'_>> = keys.iter().map(|k| BatchGetEntry { key: k, offset: 0, length: 0 }).collect();
    let mut meta = Vec::new();
    wire::encode_get_entries(&entries, &mut meta);
    let mut g = c.benchmark_group("get_batch_meta_256");
    g.throughput(Throughput::Elements(256));
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut m = Vec::with_capacity(meta.len());
            wire::encode_get_entries(black_box(&entries), &mut m);
            m
        })
    });
    g.bench_function("decode", |b| b.iter(|| wire::decode_get_entries(black_box(&meta), 256).expect("valid")));
    g.finish();
}

fn routing(c: &mut Criterion) {
    let signing = memkv::license::SigningKey::generate().expect("signing key");
    let now = SystemTime::now();
    let token = signing.issue("bench", now, now + Duration::from_secs(3600), 0, 0).expect("license");
    let servers: Vec<String> = (1..=8).map(|i| format!("10.0.0.{i}:9900")).collect();
    let mut explicit = BTreeMap::new();
    explicit.insert("servers".to_string(), servers.join(","));
    explicit.insert("auth_key".to_string(), AuthKey::generate().expect("key").to_hex());
    explicit.insert("license".to_string(), token);
    explicit.insert("license_pubkey".to_string(), signing.public_key().to_string());
    let no_env = |_: &str| None;
    let cfg = ClientConfig::resolve(&Sources { explicit: &explicit, env: &no_env }).expect("config");
    let client = memkv::Client::new(cfg).expect("client");
    c.bench_function("route_key_8_nodes", |b| {
        b.iter(|| client.owner_of(black_box(b"model-a/tp0/0000000000001234")).expect("routable"))
    });
}

criterion_group!(
    benches,
    frame_codec,
    frame_mac,
    crc,
    crc_cold,
    same_host_copy,
    same_host_copy_cold,
    same_host_copy_by_page_offset,
    batch_meta,
    routing
);
criterion_main!(benches);
