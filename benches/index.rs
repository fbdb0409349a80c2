//! The node's DRAM index at 10k, 1M and 10M objects: memory per object beyond the key, and
//! lookup time, measured two ways.
//!
//! - **index alone** (`memkv::testing::IndexProbe`: the node's store and arena without sockets):
//!   the heap bytes the index holds per object (glibc `mallinfo2`, so allocator headers and
//!   rounding count; the arena's bytes do not), minus the key's own bytes; and the time of one
//!   lookup of a random stored key, as a GET does it (found, promoted, pinned, released).
//! - **through a node** (`memkv::testing::LocalNode` on 127.0.0.1, one client, one request in
//!   flight): the p50/p99 round trip of a GET of a random stored 64-byte object.
//!
//! Keys have the NIXL plugin's shape: namespace `dynamo/` and a 20-digit decimal sequence hash
//! (27 bytes). Objects are 64 bytes (the arena's granularity).
//!
//! Run: `cargo bench --bench index` (all three sizes, about a minute and 3 GiB of memory at
//! 10M), or `cargo bench --bench index -- 10000 1000000` for chosen sizes. Figures in
//! docs/benchmarks.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memkv::client::{Client, GetItem, PutItem};
use memkv::testing::{IndexProbe, LocalNode};

const VALUE: u64 = 64;
const NAMESPACE: &str = "dynamo";
/// Random lookups timed per size (index alone).
const LOOKUPS: usize = 2_000_000;
/// GET round trips timed per size (through a node).
const ROUND_TRIPS: usize = 20_000;

/// Heap bytes in use (glibc: small chunks plus mmap'd large ones, headers included).
fn heap_bytes() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

/// The key suffix of object `i`: a 20-digit decimal "sequence hash", spread over u64.
fn suffix(i: u64) -> String {
    format!("{:020}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A deterministic pseudo-random sequence over 0..n (xorshift), the same for every run.
struct Picks(u64);
impl Picks {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn index_alone(n: u64) -> (f64, f64) {
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("{NAMESPACE}/{}", suffix(i)).into_bytes()).collect();
    let key_bytes: u64 = keys.iter().map(|k| k.len() as u64).sum();
    let before = heap_bytes();
    let probe = IndexProbe::new(n * VALUE + (64 << 20));
    for k in &keys {
        probe.put(k, VALUE);
    }
    let per_object = (heap_bytes() - before) as f64 / n as f64 - key_bytes as f64 / n as f64;
    assert_eq!(probe.len() as u64, n, "every object stays (the arena holds them all)");
    let mut picks = Picks(0x2545_F491_4F6C_DD1D);
    for _ in 0..LOOKUPS / 4 {
        black_box(probe.get(&keys[picks.next(n) as usize]));
    }
    let t = Instant::now();
    let mut found = 0u64;
    for _ in 0..LOOKUPS {
        found += probe.get(black_box(&keys[picks.next(n) as usize])).is_some() as u64;
    }
    let ns = t.elapsed().as_nanos() as f64 / LOOKUPS as f64;
    assert_eq!(found, LOOKUPS as u64, "every lookup finds its object");
    (per_object, ns)
}

fn through_node(n: u64) -> (f64, f64) {
    let memory = format!("{}MiB", ((n * VALUE * 2) >> 20).max(256));
    let node = LocalNode::with_memory("127.0.0.1", &memory);
    let cfg = node.client_config(&[("namespace", NAMESPACE), ("num_connections", "2")]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = Client::new(cfg).expect("client");
        let value = Bytes::from(vec![7u8; VALUE as usize]);
        let mut next = 0u64;
        let mut fill = Vec::new();
        while next < n {
            let end = (next + 1024).min(n);
            let items: Vec<PutItem> = (next..end)
                .map(|i| PutItem { key: suffix(i).into_bytes(), offset: 0, total: VALUE, data: value.clone() })
                .collect();
            fill.push(items);
            next = end;
            if fill.len() == 8 || next == n {
                let puts = fill.iter().map(|items| client.put_batch(items));
                for r in futures_util::future::join_all(puts).await {
                    r.expect("fill");
                }
                fill.clear();
            }
        }
        let mut picks = Picks(0x9E37_79B9_7F4A_7C15);
        let mut lat = Vec::with_capacity(ROUND_TRIPS);
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..ROUND_TRIPS {
            let key = suffix(picks.next(n)).into_bytes();
            let t = Instant::now();
            let got = client.get_batch(&[GetItem { key, offset: 0, length: 0 }]).await.expect("get");
            lat.push(t.elapsed().as_nanos() as f64 / 1e3);
            assert_eq!(got[0].as_deref(), Some(&value[..]), "a stored object comes back intact");
            if Instant::now() > deadline {
                break;
            }
        }
        lat.sort_by(f64::total_cmp);
        (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
    })
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("sizes are object counts, e.g. 10000 1000000"))
        .collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it, as a
    // quick check that it works (10k objects), not a measurement.
    let measuring = std::env::args().any(|a| a == "--bench");
    let sizes = match (sizes.is_empty(), measuring) {
        (false, _) => sizes,
        (true, true) => vec![10_000, 1_000_000, 10_000_000],
        (true, false) => {
            println!("(a quick check at 10k objects; `cargo bench --bench index` measures 10k, 1M and 10M)");
            vec![10_000]
        }
    };
    println!(
        "| objects | index bytes per object beyond the key | lookup (index alone) | GET round trip p50 / p99 (through a node) |"
    );
    println!("|---|---|---|---|");
    for n in sizes {
        let (bytes, ns) = index_alone(n);
        let (p50, p99) = through_node(n);
        println!("| {n} | {bytes:.1} B | {ns:.0} ns | {p50:.1} / {p99:.1} µs |");
    }
}
