//! The durable drive tier against real `memkv-server` processes on 127.0.7.x: crash (kill -9 at
//! random moments of a write storm), corruption (bytes flipped on the drive while the node is
//! down), capacity (3× the drive written), a drive failing under load, and start-up refusals.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Creds, Node, http_request, runtime, server_bin, try_http_request};

/// xorshift64*: reproducible randomness from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The value written as generation `generation` of `key`: 16 header bytes (generation, length,
/// key hash) then a stream seeded by both, so that any byte read back under another key or
/// generation, or damaged, fails [`check_value`].
fn make_value(key: &str, generation: u32) -> Vec<u8> {
    let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    let len = 1024 + ((h ^ u64::from(generation).wrapping_mul(0x9e37_79b9)) % (31 * 1024)) as usize;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&generation.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    v.extend_from_slice(&h.to_le_bytes());
    let mut r = Rng(h ^ (u64::from(generation) << 32) | 1);
    while v.len() < len {
        v.push(r.next() as u8);
    }
    v
}

/// The generation of `bytes` if they are exactly a value written for `key`.
fn check_value(key: &str, bytes: &[u8]) -> Option<u32> {
    let generation = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    (make_value(key, generation) == bytes).then_some(generation)
}

/// What the test knows of one key: its state when last verified, and every write or delete
/// issued since, with the acknowledgement sequence number of those that were acknowledged.
#[derive(Default)]
struct KeyModel {
    /// `Some(g)`: generation g; `None`: absent.
    base: Option<u32>,
    ops: Vec<(Option<u32>, Option<u64>)>,
    next_gen: u32,
}

#[derive(Default)]
struct Model {
    keys: HashMap<String, KeyModel>,
}

/// Shared by the storm tasks, the flusher and the checker.
struct Storm {
    model: Mutex<Model>,
    acks: AtomicU64,
    /// Under `async`: every op acknowledged with a sequence number below this was acknowledged
    /// before a flush that completed.
    durable_below: AtomicU64,
}

const TASKS: usize = 4;
const OPS_PER_TASK: usize = 150;
const HOT_KEYS: usize = 6;

async fn storm_task(client: Arc<memkv::Client>, storm: Arc<Storm>, cycle: usize, task: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    for i in 0..OPS_PER_TASK {
        let roll = rng.below(100);
        let key = if roll < 60 {
            format!("c{cycle}-t{task}-{i}")
        } else {
            format!("hot-t{task}-{}", rng.below(HOT_KEYS as u64))
        };
        let delete = roll >= 95;
        let (idx, generation) = {
            let mut m = storm.model.lock().unwrap();
            let k = m.keys.entry(key.clone()).or_default();
            let generation = k.next_gen;
            k.next_gen += 1;
            let state = if delete { None } else { Some(generation) };
            k.ops.push((state, None));
            (k.ops.len() - 1, generation)
        };
        let ok = if delete {
            client.delete(key.as_bytes()).await.is_ok()
        } else {
            client.put(key.as_bytes(), Bytes::from(make_value(&key, generation))).await.is_ok()
        };
        if !ok {
            // The node is gone (killed): nothing more is acknowledged in this cycle.
            return;
        }
        let seq = storm.acks.fetch_add(1, Ordering::SeqCst);
        storm.model.lock().unwrap().keys.get_mut(&key).expect("key").ops[idx].1 = Some(seq);
    }
}

/// The states `key` may legally be in after a crash: the state after the last guaranteed op or
/// after any later (unacknowledged or not yet guaranteed) op; with no guaranteed op, also the
/// state before them all.
fn allowed(k: &KeyModel, guaranteed: impl Fn(u64) -> bool) -> Vec<Option<u32>> {
    let last = k.ops.iter().rposition(|(_, a)| a.is_some_and(&guaranteed));
    match last {
        Some(i) => k.ops[i..].iter().map(|(s, _)| *s).collect(),
        None => std::iter::once(k.base).chain(k.ops.iter().map(|(s, _)| *s)).collect(),
    }
}

fn drive_flags<'a>(dir: &'a str, durability: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut f = vec!["--data-dir", dir, "--durability", durability, "--memory", "32MiB"];
    f.extend_from_slice(extra);
    f
}

#[test]
fn a_clean_shutdown_flushes_everything_at_every_durability_level() {
    let creds = Creds::new();
    let rt = runtime();
    for durability in ["none", "async", "sync"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let flags = drive_flags(&data, durability, &["--segment-size", "1MiB", "--flush-interval-ms", "60000"]);
        let mut node = Node::start(&creds, "127.0.7.8", &flags);
        let client = creds.client(&[&node], &[]);
        let keys: Vec<String> = (0..100).map(|i| format!("{durability}-{i}")).collect();
        for k in &keys {
            rt.block_on(client.put(k.as_bytes(), Bytes::from(make_value(k, 3)))).unwrap();
        }
        rt.block_on(client.delete(keys[0].as_bytes())).unwrap();
        drop(client);
        assert!(node.terminate().success());
        let node = Node::start(&creds, "127.0.7.8", &flags);
        let client = creds.client(&[&node], &[]);
        for k in &keys {
            let got = rt.block_on(client.get(k.as_bytes())).unwrap();
            if k == &keys[0] {
                assert!(got.is_none(), "{durability}: a deleted key came back");
            } else {
                assert_eq!(got.map(|b| check_value(k, &b)), Some(Some(3)), "{durability}: {k}");
            }
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_at_random_moments_of_a_write_storm() {
    const CYCLES: usize = 24;
    let seed = std::env::var("MEMKV_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test seed {seed} (rerun with MEMKV_CRASH_SEED={seed})");
    let mut rng = Rng(seed | 1);
    let creds = Creds::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let rt = runtime();
    let storm = Arc::new(Storm {
        model: Mutex::new(Model::default()),
        acks: AtomicU64::new(0),
        durable_below: AtomicU64::new(0),
    });
    let (mut checked_keys, mut guaranteed_checked, mut torn_total, mut acked_total) = (0u64, 0u64, 0u64, 0u64);
    for cycle in 0..CYCLES {
        // Rotate the durability level: each restart recovers what the others wrote.
        let durability = ["sync", "async", "none"][cycle % 3];
        let flags = drive_flags(&data, durability, &["--segment-size", "1MiB", "--flush-interval-ms", "50"]);
        let mut node = Node::start(&creds, "127.0.7.1", &flags);
        let client = Arc::new(creds.client(&[&node], &[("num_connections", "2")]));
        storm.acks.store(0, Ordering::SeqCst);
        storm.durable_below.store(0, Ordering::SeqCst);
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| rt.spawn(storm_task(Arc::clone(&client), Arc::clone(&storm), cycle, t, rng.next())))
            .collect();
        // Under async, a flusher makes a moving prefix of the acknowledged writes durable.
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = (durability == "async").then(|| {
            let (storm, stop, admin) = (Arc::clone(&storm), Arc::clone(&stop), node.admin);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let before = storm.acks.load(Ordering::SeqCst);
                    let Ok((code, _)) = try_http_request(admin, "POST", "/v1/flush") else { return };
                    if code == 200 {
                        storm.durable_below.fetch_max(before, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(30));
                }
            })
        });
        // Kill at a random point of the storm: after a random number of acknowledgements.
        let target = 5 + rng.below((TASKS * OPS_PER_TASK) as u64 * 3 / 4);
        let deadline = Instant::now() + Duration::from_secs(20);
        while storm.acks.load(Ordering::SeqCst) < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(5_000)));
        node.kill();
        stop.store(true, Ordering::SeqCst);
        if let Some(f) = flusher {
            let _ = f.join();
        }
        rt.block_on(async {
            for t in tasks {
                t.abort();
                let _ = t.await;
            }
        });
        drop(client);
        let durable_below = storm.durable_below.load(Ordering::SeqCst);
        acked_total += storm.acks.load(Ordering::SeqCst);
        // `none` promises nothing after a crash (every state it went through is allowed), only
        // that no read returns bytes never written for its key.
        let guaranteed = |seq: u64| match durability {
            "sync" => true,
            "async" => seq < durable_below,
            _ => false,
        };

        // Restart on the same drive and check every key touched this cycle, plus a sample of
        // older ones (all of them on the last cycle).
        let node = Node::start(&creds, "127.0.7.1", &drive_flags(&data, "async", &["--segment-size", "1MiB"]));
        torn_total += node.status()["storage"]["recovery"]["torn_bytes"].as_u64().unwrap();
        let client = creds.client(&[&node], &[]);
        let mut m = storm.model.lock().unwrap();
        let last = cycle == CYCLES - 1;
        let mut keys: Vec<String> = m
            .keys
            .iter()
            .filter(|(k, km)| !km.ops.is_empty() || last || rng.below(20) == 0 || k.starts_with("hot"))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        for key in keys {
            let km = m.keys.get_mut(&key).unwrap();
            let got = rt.block_on(client.get(key.as_bytes())).expect("GET after restart");
            let state = got.as_ref().map(|b| {
                check_value(&key, b).unwrap_or_else(|| {
                    panic!(
                        "cycle {cycle} (seed {seed}): {key} returned {} bytes that were never written for it",
                        b.len()
                    )
                })
            });
            let ok = allowed(km, guaranteed);
            assert!(
                ok.contains(&state),
                "cycle {cycle} ({durability}, seed {seed}): {key} reads {state:?}, allowed {ok:?}; ops {:?}, durable below {durable_below}",
                km.ops
            );
            if km.ops.iter().any(|(_, a)| a.is_some_and(guaranteed)) {
                guaranteed_checked += 1;
            }
            km.base = state;
            km.ops.clear();
            checked_keys += 1;
        }
        drop(m);
    }
    eprintln!(
        "crash test: {CYCLES} kill -9 cycles, {acked_total} acknowledged ops, {checked_keys} key checks \
         ({guaranteed_checked} with a guaranteed write), {torn_total} torn bytes discarded"
    );
    assert!(acked_total >= 500, "the storms must have written something: {acked_total}");
    assert!(guaranteed_checked >= 200, "the test must check guaranteed writes: {guaranteed_checked}");
}

/// Segment files of a drive directory, oldest first.
fn segments(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == ext) && p.file_name().unwrap().to_string_lossy().starts_with("seg-")
        })
        .collect();
    v.sort();
    v
}

/// Flips one byte `delta` bytes after the first occurrence of `needle` in the drive's logs.
fn flip_after(dir: &Path, needle: &[u8], delta: usize) {
    for log in segments(dir, "log") {
        let mut b = std::fs::read(&log).unwrap();
        if let Some(at) = b.windows(needle.len()).position(|w| w == needle) {
            b[at + delta] ^= 0x5a;
            std::fs::write(&log, b).unwrap();
            return;
        }
    }
    panic!("{} not found on the drive", String::from_utf8_lossy(needle));
}

fn storage(node: &Node) -> serde_json::Value {
    node.status()["storage"].clone()
}

#[test]
fn bytes_flipped_on_the_drive_make_that_object_a_counted_miss_and_nothing_else() {
    let creds = Creds::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let rt = runtime();
    let keys: Vec<String> = (0..150).map(|i| format!("obj-{i:03}")).collect();
    let mut node = Node::start(&creds, "127.0.7.2", &drive_flags(&data, "sync", &["--segment-size", "1MiB"]));
    let client = creds.client(&[&node], &[]);
    for k in &keys {
        rt.block_on(client.put(k.as_bytes(), Bytes::from(make_value(k, 1)))).unwrap();
    }
    drop(client);
    assert!(node.terminate().success());
    assert!(segments(dir.path(), "log").len() >= 2, "several segments, each with a checkpoint");
    // A flipped value byte, a flipped key byte (header CRC), and a damaged checkpoint.
    flip_after(dir.path(), b"obj-017", 7 + 500);
    flip_after(dir.path(), b"obj-042", 3);
    let idx = segments(dir.path(), "idx");
    let mut b = std::fs::read(&idx[0]).unwrap();
    b[20] ^= 0xff;
    std::fs::write(&idx[0], b).unwrap();

    let node = Node::start(&creds, "127.0.7.2", &drive_flags(&data, "sync", &["--segment-size", "1MiB"]));
    let rec = &storage(&node)["recovery"];
    assert_eq!(rec["segments_scanned"], 1, "the damaged checkpoint is replaced by a scan: {rec}");
    let client = creds.client(&[&node], &[]);
    for round in 0..2 {
        for k in &keys {
            let got = rt.block_on(client.get(k.as_bytes())).unwrap();
            if k == "obj-017" || k == "obj-042" {
                assert!(got.is_none(), "{k}: a damaged record must never be served");
            } else {
                let b = got.unwrap_or_else(|| panic!("{k} lost (round {round})"));
                assert_eq!(check_value(k, &b), Some(1), "{k}");
            }
        }
    }
    let s = storage(&node);
    // obj-042's key is damaged, so its header no longer names it: whether the scan drops it at
    // start or the read refuses it, it is never served, and at most two records are counted.
    let corrupt = s["corrupt_records"].as_u64().unwrap();
    assert!((1..=2).contains(&corrupt), "damaged records are counted once each: {s}");
    let (_, metrics) = node.admin_get("/metrics");
    assert!(metrics.contains(&format!("memkv_drive_corrupt_records_total {corrupt}")), "{metrics}");
    let logged: Vec<String> = node.stderr.try_iter().filter(|l| l.contains("damaged record dropped")).collect();
    assert_eq!(logged.len() as u64, corrupt, "logged once per record, not per read: {logged:?}");
    assert!(logged.iter().any(|l| l.contains("obj-017") && l.contains("value checksum")), "{logged:?}");
}

/// Bytes of the files in `dir` (a file the node deletes while we list is skipped).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

#[test]
fn writing_three_times_the_drive_keeps_the_newest_data_under_the_cap() {
    const CAP: u64 = 8 << 20;
    const VALUE: usize = 64 << 10;
    let creds = Creds::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let rt = runtime();
    let flags = ["--data-dir", &data, "--drive-capacity", "8MiB", "--segment-size", "1MiB", "--memory", "4MiB"];
    let node = Node::start(&creds, "127.0.7.3", &flags);
    let client = creds.client(&[&node], &[]);
    let value = |i: usize| {
        let mut v = vec![(i % 251) as u8; VALUE];
        v[..8].copy_from_slice(&(i as u64).to_le_bytes());
        v
    };
    let total = 3 * CAP as usize / VALUE;
    let mut max_seen = 0;
    for i in 0..total {
        rt.block_on(client.put(format!("blk-{i}").as_bytes(), Bytes::from(value(i)))).unwrap();
        // One early block stays in use: it earns a second chance each time its segment is reclaimed.
        if i % 8 == 0 {
            let hot = rt.block_on(client.get(b"blk-0")).unwrap();
            assert_eq!(hot.as_deref(), Some(&value(0)[..]), "hot block after {i} writes");
        }
        if i % 16 == 0 {
            max_seen = max_seen.max(dir_bytes(dir.path()));
        }
    }
    let (code, _) = http_request(node.admin, "POST", "/v1/flush");
    assert_eq!(code, 200);
    max_seen = max_seen.max(dir_bytes(dir.path()));
    assert!(max_seen <= CAP, "drive use {max_seen} exceeded the {CAP}-byte cap");
    let s = storage(&node);
    assert!(s["drive_evictions"].as_u64().unwrap() > 0, "{s}");
    assert!(s["reinserted"].as_u64().unwrap() > 0, "the hot block was kept by reinsertion: {s}");
    assert!(s["drives"][0]["used_bytes"].as_u64().unwrap() <= CAP, "{s}");
    let (code, health) = node.admin_get("/v1/health");
    assert_eq!(code, 200, "{health}");
    drop(client);
    drop(node);

    // After a restart (DRAM empty, every read from the drive): the newest blocks and the hot
    // one are there and exact; evicted ones are misses, never other bytes.
    let node = Node::start(&creds, "127.0.7.3", &flags);
    let client = creds.client(&[&node], &[]);
    let newest = (CAP as usize / VALUE) / 2;
    let mut missing_old = 0;
    for i in 0..total {
        let got = rt.block_on(client.get(format!("blk-{i}").as_bytes())).unwrap();
        match got {
            Some(b) => assert_eq!(&b[..], &value(i)[..], "blk-{i}"),
            None if i >= total - newest || i == 0 => panic!("blk-{i} (newest or hot) lost"),
            None => missing_old += 1,
        }
    }
    assert!(missing_old >= total / 2, "most old blocks must have been evicted: {missing_old}");
    assert!(dir_bytes(dir.path()) <= CAP);
}

#[test]
fn a_failed_drive_degrades_the_node_and_the_other_drive_takes_the_writes() {
    let creds = Creds::new();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (da, db) = (a.path().join("drive"), b.path().join("drive"));
    std::fs::create_dir(&da).unwrap();
    std::fs::create_dir(&db).unwrap();
    let (sa, sb) = (da.display().to_string(), db.display().to_string());
    let rt = runtime();
    let flags = ["--data-dir", &sa, "--data-dir", &sb, "--durability", "sync", "--segment-size", "1MiB"];
    let node = Node::start(&creds, "127.0.7.4", &flags);
    let client = creds.client(&[&node], &[]);
    let put = |i: usize| rt.block_on(client.put(format!("k{i}").as_bytes(), Bytes::from(vec![i as u8; 100 << 10])));
    for i in 0..10 {
        put(i).unwrap();
    }
    // The second drive disappears: its next segment cannot be created.
    std::fs::remove_dir_all(&db).unwrap();
    let mut failed = 0;
    for i in 10..80 {
        if put(i).is_err() {
            failed += 1;
        }
    }
    let (code, health) = node.admin_get("/v1/health");
    assert_eq!(code, 200, "a degraded node keeps serving: {health}");
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["drives"][1]["state"], "offline", "{h}");
    assert_eq!(h["drives"][0]["state"], "online", "{h}");
    assert!(h["drives"][1]["error"].as_str().unwrap().contains("No such file or directory"), "{h}");
    assert!(failed <= 2, "only writes in flight at the failure may fail: {failed}");
    // Afterwards every write succeeds (on the surviving drive) and every object reads back.
    for i in 80..100 {
        put(i).unwrap();
    }
    for i in (0..10).chain(80..100) {
        let got = rt.block_on(client.get(format!("k{i}").as_bytes())).unwrap();
        assert_eq!(got.as_deref(), Some(&vec![i as u8; 100 << 10][..]), "k{i}");
    }
    let s = storage(&node);
    assert_eq!(s["degraded"], true);
    assert_eq!(node.status()["state"], "degraded");
    let (_, metrics) = node.admin_get("/metrics");
    assert!(metrics.contains(&format!("memkv_drive_online{{drive=\"{sb}\"}} 0")), "{metrics}");
}

/// Runs memkv-server expecting it to refuse to start; returns its stderr.
fn refused(creds: &Creds, flags: &[&str]) -> String {
    let out = std::process::Command::new(server_bin())
        .args(["--listen", "127.0.7.5:0", "--memory", "8MiB"])
        .args(flags)
        .env_clear()
        .envs(creds.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{flags:?} must be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unusable_data_directories_are_refused_at_start_naming_the_fix() {
    let creds = Creds::new();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing").display().to_string();
    let e = refused(&creds, &["--data-dir", &missing]);
    assert!(e.contains("does not exist: create it (mkdir -p"), "{e}");
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "x").unwrap();
    let e = refused(&creds, &["--data-dir", &foreign.display().to_string()]);
    assert!(e.contains("is not empty and is not a MemKV drive") && e.contains("notes.txt"), "{e}");
    assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "x", "foreign data untouched");
    let newer = tmp.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(
        newer.join("memkv-drive.json"),
        r#"{"format":"memkv-drive","format_version":7,"drive_id":"x","created_unix_secs":0}"#,
    )
    .unwrap();
    let e = refused(&creds, &["--data-dir", &newer.display().to_string()]);
    assert!(e.contains("on-drive format version 7"), "{e}");
    let e = refused(&creds, &["--durability", "sync"]);
    assert!(e.contains("MEMKV_DURABILITY") && e.contains("--data-dir"), "{e}");
    // Two nodes on one directory: the second is refused while the first runs.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let s = shared.display().to_string();
    let _first = Node::start(&creds, "127.0.7.6", &["--data-dir", &s]);
    let e = refused(&creds, &["--data-dir", &s]);
    assert!(e.contains("in use by another memkv-server"), "{e}");
}

#[test]
fn a_memory_only_node_reports_its_mode_and_refuses_flush() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.7.7", &[]);
    assert_eq!(storage(&node)["mode"], "memory");
    let (code, body) = http_request(node.admin, "POST", "/v1/flush");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("DRAM only"), "{body}");
}
