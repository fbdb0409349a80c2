//! The GPU memory path without a GPU: the staging pipeline (host copy engine standing in for a
//! CUDA stream) moving blocks to real `memkv-server` processes and back, byte-exact, with the
//! slot pool's back-pressure; and the client's descriptor pools (prepared batches), whose sends
//! allocate per node, never per descriptor, counted by a global allocator. 127.0.8.x.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use common::{Creds, Node, runtime};
use memkv::client::{GetItem, Loans, PutSpec, StagedError, StagedPart};
use memkv::mem::staging::{HostCopy, PageAlignedHost, SlotPool};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is process-wide: the tests of this file take turns, so that one test's
/// allocations (or a failing test's backtrace) never count against another's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// All of object `key` ↔ `len` bytes at `addr` (`total` is only read by writes).
fn whole(key: &str, addr: u64, len: usize) -> StagedPart<'_> {
    StagedPart { key: key.as_bytes(), offset: 0, total: len as u64, addr, len: len as u64 }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
}

#[test]
fn staged_blocks_round_trip_through_live_nodes_byte_exact() {
    let _turn = one_at_a_time();
    let creds = Creds::new();
    let nodes: Vec<Node> = ["127.0.8.1", "127.0.8.2"].iter().map(|ip| Node::start(&creds, ip, &[])).collect();
    let client = creds.client(&nodes.iter().collect::<Vec<_>>(), &[]);
    let rt = runtime();
    // 4 slots of 64 KiB: blocks below, at and well above a slot, and a ragged tail.
    let slot = 64 << 10;
    let pool = SlotPool::new(Box::new(PageAlignedHost::new(4 * slot).unwrap()), slot).unwrap();
    let engine = HostCopy::new().unwrap();
    let sizes = [1usize, 4096, slot, slot + 1, 5 * slot + 123, 1 << 20];
    // "Device" memory: host buffers the host copy engine reads and writes.
    let device: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();
    let keys: Vec<String> = (0..sizes.len()).map(|i| format!("gpu-block-{i}")).collect();
    let parts: Vec<StagedPart<'_>> =
        device.iter().zip(&keys).map(|(d, k)| whole(k, d.as_ptr() as u64, d.len())).collect();
    // SAFETY: `device` outlives the call and is not modified.
    rt.block_on(unsafe { client.put_staged(&pool, &engine, &parts) }).unwrap();
    for (k, d) in keys.iter().zip(&device) {
        let got = rt.block_on(client.get(k.as_bytes())).unwrap().expect("stored");
        assert_eq!(&got[..], &d[..], "{k} as stored on the node");
    }

    let mut back: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
    let parts_in: Vec<StagedPart<'_>> =
        back.iter_mut().zip(&keys).map(|(b, k)| whole(k, b.as_mut_ptr() as u64, b.len())).collect();
    // SAFETY: `back` outlives the call and nothing else touches it.
    rt.block_on(unsafe { client.get_staged(&pool, &engine, &parts_in) }).unwrap();
    assert_eq!(back, device, "staged READ returns the exact bytes");
    let st = pool.stats();
    assert_eq!(st.busy, 0, "every slot is back: {st:?}");
    assert!(st.peak_busy <= 4 && st.peak_busy >= 2, "double buffering within the pool: {st:?}");
    let total: u64 = sizes.iter().map(|&n| n as u64).sum();
    assert_eq!((st.bytes_staged_out, st.bytes_staged_in), (total, total), "{st:?}");

    // A ranged READ from the middle of a block that spans slots.
    let mut mid = vec![0u8; 2 * slot];
    let part = StagedPart {
        key: keys[4].as_bytes(),
        offset: 1000,
        total: 0,
        addr: mid.as_mut_ptr() as u64,
        len: mid.len() as u64,
    };
    let one = [part];
    // SAFETY: as above.
    rt.block_on(unsafe { client.get_staged(&pool, &engine, &one) }).unwrap();
    assert_eq!(&mid[..], &device[4][1000..1000 + 2 * slot]);

    // An absent object names its part; the slots still come back.
    let mut sink = vec![0u8; 10];
    let absent = StagedPart { key: b"gpu-absent", offset: 0, total: 0, addr: sink.as_mut_ptr() as u64, len: 10 };
    let two = [parts_in[0], absent];
    // SAFETY: as above.
    let e = rt.block_on(unsafe { client.get_staged(&pool, &engine, &two) }).unwrap_err();
    assert!(matches!(e, StagedError::Absent(1)), "{e:?}");
    assert_eq!(pool.stats().busy, 0);
}

/// A staged transfer dropped half-way (a NIXL request released, a timeout) gives every slot back
/// once its requests are done, nothing writes into a slot after it came back, and the pool serves
/// the next transfer byte-exact.
#[test]
fn dropped_staged_transfers_give_every_slot_back() {
    let _turn = one_at_a_time();
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.8.3", &[]);
    let client = creds.client(&[&node], &[]);
    let rt = runtime();
    let slot = 64 << 10;
    let pool = SlotPool::new(Box::new(PageAlignedHost::new(4 * slot).unwrap()), slot).unwrap();
    let engine = HostCopy::new().unwrap();
    let device: Vec<Vec<u8>> = (0..256).map(|i| pattern(slot, i as u8)).collect();
    let keys: Vec<String> = (0..device.len()).map(|i| format!("dropped-{i}")).collect();
    let slots_back = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.stats().busy > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(pool.stats().busy, 0, "{what}: slots still leased 10 s later: {:?}", pool.stats());
        let mut all: Vec<_> = std::iter::from_fn(|| pool.try_acquire()).collect();
        assert_eq!(all.len(), 4);
        all.iter_mut().for_each(|s| s.as_mut_slice().fill(0xEE));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            all.iter().all(|s| s.as_slice().iter().all(|&b| b == 0xEE)),
            "{what}: a slot was written after it came back"
        );
    };
    let out: Vec<StagedPart<'_>> =
        device.iter().zip(&keys).map(|(d, k)| whole(k, d.as_ptr() as u64, d.len())).collect();
    // SAFETY: `device` outlives the call and is not modified.
    rt.block_on(unsafe { client.put_staged(&pool, &engine, &out) }).unwrap();

    // 16 MiB in 64 KiB chunks cannot finish within the cut: both transfers are dropped half-way.
    let cut = std::time::Duration::from_micros(200);
    let mut back: Vec<Vec<u8>> = (0..device.len()).map(|_| vec![0u8; slot]).collect();
    let inn: Vec<StagedPart<'_>> =
        back.iter_mut().zip(&keys).map(|(b, k)| whole(k, b.as_mut_ptr() as u64, b.len())).collect();
    // SAFETY: `back` outlives the call and nothing else touches it; a dropped transfer settles
    // its copies before the future is gone.
    let get = unsafe { client.get_staged(&pool, &engine, &inn) };
    let cut_get = rt.block_on(async { tokio::time::timeout(cut, get).await });
    assert!(cut_get.is_err(), "the GET finished within {cut:?}: nothing was dropped");
    slots_back("a dropped get_staged");
    // SAFETY: as for the first PUT.
    let put = unsafe { client.put_staged(&pool, &engine, &out) };
    let cut_put = rt.block_on(async { tokio::time::timeout(cut, put).await });
    assert!(cut_put.is_err(), "the PUT finished within {cut:?}: nothing was dropped");
    slots_back("a dropped put_staged");

    back.iter_mut().for_each(|b| b.fill(0));
    let inn: Vec<StagedPart<'_>> =
        back.iter_mut().zip(&keys).map(|(b, k)| whole(k, b.as_mut_ptr() as u64, b.len())).collect();
    // SAFETY: as above.
    rt.block_on(unsafe { client.get_staged(&pool, &engine, &inn) }).unwrap();
    assert_eq!(back, device, "the pool serves the next transfer byte-exact");
}

/// Allocations of one prepared PUT and one prepared GET of `n` descriptors (each its own object
/// of `len` bytes), counted over the whole call: client, runtime and sockets (the node is
/// another process).
fn allocations_per_post(client: &memkv::Client, rt: &tokio::runtime::Runtime, n: usize, len: usize) -> (u64, u64) {
    let keys: Vec<String> = (0..n).map(|i| format!("hot-{n}-{i}")).collect();
    let src = pattern(n * len, 7);
    let mut dst = vec![0u8; n * len];
    let put = client
        .prepare_put(keys.iter().map(|k| PutSpec { key: k.as_bytes(), offset: 0, len: len as u64, total: len as u64 }))
        .unwrap();
    let items: Vec<GetItem> =
        keys.iter().map(|k| GetItem { key: k.as_bytes().to_vec(), offset: 0, length: len as u64 }).collect();
    let get = client.prepare_get(&items).unwrap();
    let loans = Loans::new();
    let mut data = Vec::with_capacity(n);
    let mut targets = Vec::with_capacity(n);
    let mut measure = |warm: bool| {
        // Everything a post builds per descriptor is counted: the payload views (slices of one
        // view of the region) and the read targets.
        let before = ALLOCS.load(Ordering::SeqCst);
        // SAFETY: `src` outlives the request and is not modified.
        let region = unsafe { loans.bytes(src.as_ptr(), src.len()) };
        data.clear();
        data.extend((0..n).map(|i| region.slice(i * len..(i + 1) * len)));
        drop(region);
        rt.block_on(client.put_prepared(&put, &data)).unwrap();
        data.clear();
        let put_allocs = ALLOCS.load(Ordering::SeqCst) - before;
        let before = ALLOCS.load(Ordering::SeqCst);
        // SAFETY: `dst` is untouched until the read finished and its loans ended.
        targets.extend((0..n).map(|i| unsafe { loans.target(dst.as_mut_ptr().wrapping_add(i * len), len) }));
        let found = rt.block_on(client.get_prepared_into(&get, std::mem::take(&mut targets))).unwrap();
        let get_allocs = ALLOCS.load(Ordering::SeqCst) - before;
        assert!(found.iter().all(|f| *f), "every block found");
        while loans.outstanding() > 0 {
            std::thread::yield_now();
        }
        targets = Vec::with_capacity(n);
        if !warm {
            assert_eq!(dst, src, "the READ returned the WRITE's bytes");
        }
        (put_allocs, get_allocs)
    };
    // Warm the connections and the runtime first.
    measure(true);
    measure(false)
}

#[test]
fn prepared_posts_allocate_per_node_not_per_descriptor() {
    let _turn = one_at_a_time();
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.8.3", &[]);
    // One connection: frames of both sizes take the same path. 16 blocks of 8 KiB are above the
    // 64 KiB a shared-memory session sends inline, so both sizes of PUT go one-sidedly.
    let client = creds.client(&[&node], &[("num_connections", "1")]);
    let rt = runtime();
    let len = 8192;
    let (put_16, get_16) = allocations_per_post(&client, &rt, 16, len);
    let (put_1k, get_1k) = allocations_per_post(&client, &rt, 1024, len);
    println!(
        "allocations per post: PUT 16 descs {put_16}, 1024 descs {put_1k}; GET 16 descs {get_16}, 1024 descs {get_1k}"
    );
    // 64× the descriptors: any per-descriptor allocation would add ≥ 1008. The slack covers the
    // runtime's own bookkeeping (timers, wakeups) and buffers sized by the frame.
    assert!(put_1k <= put_16 + 16, "PUT: {put_16} allocations for 16 descriptors, {put_1k} for 1024");
    assert!(get_1k <= get_16 + 16, "GET: {get_16} allocations for 16 descriptors, {get_1k} for 1024");
}
