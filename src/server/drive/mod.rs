//! The drive tier: durable, log-structured shards on one or more drives behind the DRAM arena.
//!
//! Owns: the drive index (which key lives in which record of which segment), placement of keys on
//! drives, one writer thread per drive (append, group commit, seal, reclaim), read-through with
//! promotion into DRAM, recovery at start and per-drive health. The DRAM [`Store`] stays the hot
//! tier and never does I/O; this module never sends bytes to a client.
//!
//! Invariants:
//! - a key's newest write has the highest version: versions are assigned under the index lock in
//!   the same critical section that makes the object visible in DRAM, so both tiers agree on
//!   which write is the newest, and recovery keeps the highest version of every key (a tombstone
//!   removes the key);
//! - a byte read from a drive is served only after its record's magic, header CRC, key, version,
//!   length and value CRC all match; anything else is a miss, counted, logged once and dropped
//!   from the index;
//! - an object waiting for its drive write stays reachable (`Loc::Pending` holds it) even after
//!   DRAM evicts it; the bytes of queued writes are bounded by `drive_queue` (PUTs wait for room);
//! - disk use stays below each drive's capacity: before an append the writer reclaims the oldest
//!   segments, re-inserting records read since they were written (a second chance, bounded by
//!   [`Tier::reserve`] per segment) and evicting the rest.
//!
//! Lock order: the drive index, then the store's index.

mod disk;
mod format;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::metrics::add;
use super::store::{Object, Store};
use crate::config::{Durability, StorageConfig, format_size};
use disk::{Drive, Head, ReadError};
use format::{FLAG_TOMBSTONE, RecordHeader};

/// Permits of the queue semaphore are KiB.
const QUEUE_UNIT: u64 = 1024;
/// Most jobs a writer takes before it syncs and acknowledges (one group commit).
const GROUP: usize = 256;

/// Where a key's newest version lives.
#[derive(Clone)]
enum Loc {
    /// Queued for its drive; the object is also (or was) in DRAM.
    Pending(Object),
    /// On drive `drive`, in segment `seg` at offset `off`, `len` value bytes.
    Disk { drive: u16, seg: u32, off: u64, len: u64 },
}

struct Entry {
    version: u64,
    loc: Loc,
    /// Read since it was written: earns a second chance when its segment is reclaimed.
    accessed: bool,
}

impl Entry {
    fn size(&self) -> u64 {
        match &self.loc {
            Loc::Pending(o) => o.len(),
            Loc::Disk { len, .. } => *len,
        }
    }
}

/// A waiter for one drive write; `Err` carries the reason it is not durable.
type Ack = oneshot::Sender<Result<(), String>>;
/// The receiving end of an [`Ack`].
pub(crate) type Durable = oneshot::Receiver<Result<(), String>>;

enum Job {
    Put { key: Box<[u8]>, obj: Object, version: u64, _permit: OwnedSemaphorePermit, ack: Option<Ack> },
    Delete { key: Box<[u8]>, version: u64, ack: Option<Ack> },
    Flush { ack: Ack },
    Stop { ack: Ack },
}

/// One attempt of a read-through.
enum Read {
    Found(Object),
    Absent,
    /// The record moved or was replaced during the read.
    Moved,
}

/// A write made visible in DRAM that still has to reach a drive.
pub(crate) struct Persist {
    key: Box<[u8]>,
    obj: Option<Object>,
    version: u64,
}

#[derive(Debug, Default)]
struct Counters {
    drive_hits: AtomicU64,
    drive_misses: AtomicU64,
    corrupt: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    reinserted: AtomicU64,
    rejected: AtomicU64,
    flushes: AtomicU64,
}

/// What the start-up recovery found, for status and the log.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Recovery {
    objects: u64,
    bytes: u64,
    segments: usize,
    segments_from_checkpoint: usize,
    segments_scanned: usize,
    torn_bytes: u64,
    millis: u64,
}

/// State shared by the tier handle and the writer threads.
struct Shared {
    index: Mutex<HashMap<Box<[u8]>, Entry>>,
    counters: Counters,
    durability: Durability,
    flush_interval: Duration,
    segment_size: u64,
    /// Re-insertion budget per reclaimed segment, kept free below each drive's capacity.
    reserve: u64,
}

/// The drive tier of a node.
pub(crate) struct Tier {
    shared: Arc<Shared>,
    drives: Vec<Arc<Drive>>,
    queues: Vec<mpsc::Sender<Job>>,
    writers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    queue: Arc<Semaphore>,
    queue_units: u32,
    next_version: AtomicU64,
    recovery: Recovery,
}

impl Tier {
    /// Opens every drive, rebuilds the index from them and starts one writer per drive.
    /// `queue_limit` caps the bytes of queued writes (they pin DRAM).
    pub(crate) fn open(cfg: &StorageConfig, queue_limit: u64) -> Result<Self, String> {
        let started = Instant::now();
        let fsync = cfg.durability != Durability::None;
        let opened: Vec<Result<(Drive, disk::Recovered), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = cfg
                .data_dirs
                .iter()
                .enumerate()
                .map(|(no, dir)| s.spawn(move || Drive::open(no as u16, dir, cfg.drive_capacity, fsync)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("drive open panicked".into()))).collect()
        });
        let mut drives = Vec::new();
        let mut recovery = Recovery::default();
        // The newest record of every key wins; a tombstone's version is remembered until the
        // end of the merge so that an older record read later cannot bring its key back.
        let mut index: HashMap<Box<[u8]>, Entry> = HashMap::new();
        let mut tombstones: HashMap<Box<[u8]>, u64> = HashMap::new();
        let mut max_version = 0;
        for r in opened {
            let (drive, rec) = r?;
            let min = cfg.segment_size * 4;
            if drive.capacity < min {
                return Err(format!(
                    "drive {} has a capacity of {}, below 4 segments of {} (MEMKV_SEGMENT_SIZE); raise \
                     MEMKV_DRIVE_CAPACITY or lower MEMKV_SEGMENT_SIZE",
                    drive.path.display(),
                    format_size(drive.capacity),
                    format_size(cfg.segment_size)
                ));
            }
            recovery.segments += rec.segments;
            recovery.segments_from_checkpoint += rec.from_checkpoint;
            recovery.segments_scanned += rec.scanned;
            recovery.torn_bytes += rec.torn_bytes;
            for (seg, e) in rec.records {
                max_version = max_version.max(e.version);
                let seen = index.get(&e.key).map(|x| x.version).max(tombstones.get(&e.key).copied());
                if seen >= Some(e.version) {
                    continue;
                }
                if e.is_tombstone() {
                    index.remove(&e.key);
                    tombstones.insert(e.key, e.version);
                } else {
                    tombstones.remove(&e.key);
                    let loc = Loc::Disk { drive: drive.no, seg, off: e.offset, len: e.value_len };
                    index.insert(e.key, Entry { version: e.version, loc, accessed: false });
                }
            }
            drives.push(Arc::new(drive));
        }
        drop(tombstones);
        recovery.objects = index.len() as u64;
        recovery.bytes = index.values().map(Entry::size).sum();
        // The scans' record lists are gone: hand their memory back to the system, so that the
        // node's resident size is its index, not recovery's scratch space.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free heap memory; it takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
        recovery.millis = started.elapsed().as_millis() as u64;
        tracing::info!(
            objects = recovery.objects,
            bytes = recovery.bytes,
            size = %format_size(recovery.bytes),
            drives = drives.len(),
            segments = recovery.segments,
            from_checkpoint = recovery.segments_from_checkpoint,
            scanned = recovery.segments_scanned,
            torn_bytes = recovery.torn_bytes,
            millis = recovery.millis,
            "drive tier recovered"
        );
        let shared = Arc::new(Shared {
            index: Mutex::new(index),
            counters: Counters::default(),
            durability: cfg.durability,
            flush_interval: cfg.flush_interval,
            segment_size: cfg.segment_size,
            reserve: cfg.segment_size / 4,
        });
        let queue_units = (cfg.drive_queue.min(queue_limit) / QUEUE_UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        let mut queues = Vec::new();
        let mut writers = Vec::new();
        for d in &drives {
            let (tx, rx) = mpsc::channel();
            let w = Writer::new(Arc::clone(&shared), Arc::clone(d));
            let h = std::thread::Builder::new()
                .name(format!("memkv-drive-{}", d.no))
                .spawn(move || w.run(rx))
                .map_err(|e| format!("cannot start the drive writer thread: {e}"))?;
            queues.push(tx);
            writers.push(h);
        }
        Ok(Self {
            shared,
            drives,
            queues,
            writers: Mutex::new(writers),
            queue: Arc::new(Semaphore::new(queue_units as usize)),
            queue_units,
            next_version: AtomicU64::new(max_version + 1),
            recovery,
        })
    }

    /// Makes `obj` the newest version of `key`: visible in DRAM now, queued for its drive by
    /// [`Tier::persist`].
    pub(crate) fn publish(&self, store: &Store, obj: Object) -> Persist {
        let key: Box<[u8]> = obj.key().into();
        let mut ix = self.shared.index.lock();
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        store.publish(obj.clone());
        ix.insert(key.clone(), Entry { version, loc: Loc::Pending(obj.clone()), accessed: false });
        Persist { key, obj: Some(obj), version }
    }

    /// Deletes `key` from both tiers. Returns whether it existed, and the tombstone to persist.
    /// A key found only in DRAM gets a tombstone too: its drive write may have failed after an
    /// older version reached a drive, and that record must not come back at the next start.
    pub(crate) fn delete(&self, store: &Store, key: &[u8]) -> (bool, Option<Persist>) {
        let mut ix = self.shared.index.lock();
        let on_drive = ix.remove(key).is_some();
        let in_dram = store.delete(key);
        drop(ix);
        if !on_drive && !in_dram {
            return (false, None);
        }
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        (true, Some(Persist { key: key.into(), obj: None, version }))
    }

    /// Queues a write for its drive, waiting while the queue is full (backpressure). Under
    /// `sync` durability the answer is a receiver that resolves once the write is on stable
    /// storage (or failed).
    pub(crate) async fn persist(&self, p: Persist) -> Option<Durable> {
        let (ack, rx) = if self.shared.durability == Durability::Sync {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let fail = |ack: Option<Ack>, why: String| {
            if let Some(a) = ack {
                let _ = a.send(Err(why));
            }
        };
        let Some(d) = self.route(&p.key) else {
            add(&self.shared.counters.rejected, 1);
            self.shared.settle(&p.key, p.version, None);
            fail(ack, "no drive is online; the write is held in DRAM only".into());
            return rx;
        };
        let job = match p.obj {
            Some(obj) => {
                let units = (obj.len().div_ceil(QUEUE_UNIT).max(1)).min(u64::from(self.queue_units)) as u32;
                let Ok(permit) = Arc::clone(&self.queue).acquire_many_owned(units).await else {
                    fail(ack, "the node is stopping".into());
                    return rx;
                };
                Job::Put { key: p.key, obj, version: p.version, _permit: permit, ack }
            }
            None => Job::Delete { key: p.key, version: p.version, ack },
        };
        if let Err(mpsc::SendError(Job::Put { ack, .. } | Job::Delete { ack, .. })) = self.queues[d].send(job) {
            fail(ack, "the drive writer has stopped".into());
        }
        rx
    }

    /// The online drive for `key`: its hash picks a drive; an offline one passes to the next.
    fn route(&self, key: &[u8]) -> Option<usize> {
        let n = self.drives.len();
        let h = xxhash_rust::xxh3::xxh3_64(key) as usize;
        (0..n).map(|i| (h + i) % n).find(|&d| self.drives[d].is_online())
    }

    /// Records that a DRAM hit used `key` (its drive copy earns a second chance).
    pub(crate) fn touch(&self, key: &[u8]) {
        if let Some(e) = self.shared.index.lock().get_mut(key) {
            e.accessed = true;
        }
    }

    /// Size of `key` in the drive tier.
    pub(crate) fn size(&self, key: &[u8]) -> Option<u64> {
        self.shared.index.lock().get(key).map(Entry::size)
    }

    /// Objects in the drive index (on drive or queued).
    pub(crate) fn object_count(&self) -> usize {
        self.shared.index.lock().len()
    }

    /// A DRAM miss: reads `key` from its drive into a new arena slot, verifies it, and promotes it
    /// into DRAM. `None` when the key is absent, its record is damaged (counted, dropped), or no
    /// arena room can be made.
    pub(crate) async fn read_through(&self, store: &Store, key: &[u8]) -> Option<Object> {
        // A reclaim may move the record (second chance) or a write replace it while we read:
        // look again, a bounded number of times.
        for _ in 0..3 {
            match self.read_once(store, key).await {
                Read::Found(obj) => return Some(obj),
                Read::Absent => return None,
                Read::Moved => {}
            }
        }
        add(&self.shared.counters.drive_misses, 1);
        None
    }

    async fn read_once(&self, store: &Store, key: &[u8]) -> Read {
        let c = &self.shared.counters;
        let (version, drive, seg, off, len) = {
            let mut ix = self.shared.index.lock();
            let Some(e) = ix.get_mut(key) else { return Read::Absent };
            e.accessed = true;
            match &e.loc {
                Loc::Pending(obj) => {
                    let obj = store.publish_if_absent(obj.clone());
                    add(&c.drive_hits, 1);
                    return Read::Found(obj);
                }
                &Loc::Disk { drive, seg, off, len } => (e.version, drive, seg, off, len),
            }
        };
        // Room for an O_DIRECT read straight into the slot (narrowed to the value afterwards),
        // unless that would pass the object size limit.
        let room = Drive::read_room(off, key.len(), len);
        let room = if room <= store.max_object() { room } else { len };
        let mut slot = match store.reserve(room) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "no DRAM room to promote a drive object; answering a miss");
                add(&c.drive_misses, 1);
                return Read::Absent;
            }
        };
        let d = Arc::clone(&self.drives[drive as usize]);
        if !d.is_online() {
            add(&c.drive_misses, 1);
            return Read::Absent;
        }
        let owned_key: Box<[u8]> = key.into();
        let read = tokio::task::spawn_blocking(move || {
            let r = d.read_value(seg, off, &owned_key, version, len, slot.bytes_mut());
            (d, owned_key, slot, r)
        })
        .await;
        let Ok((d, owned_key, slot, r)) = read else { return Read::Absent };
        match r {
            Ok((value, crc)) => {
                let slot = slot.narrow(value.start as u64, len);
                let ix = self.shared.index.lock();
                let same = ix.get(key).is_some_and(|e| {
                    e.version == version
                        && matches!(e.loc, Loc::Disk { drive: dr, seg: s, .. } if dr == drive && s == seg)
                });
                if !same {
                    // Overwritten, deleted or moved while we read: look again.
                    return Read::Moved;
                }
                let obj = store.publish_if_absent(Object::new(&owned_key, slot.freeze(), crc));
                drop(ix);
                add(&c.drive_hits, 1);
                Read::Found(obj)
            }
            Err(ReadError::Gone) => Read::Moved,
            Err(ReadError::Corrupt(why)) => {
                add(&c.corrupt, 1);
                add(&d.counters.corrupt_records, 1);
                add(&c.drive_misses, 1);
                let dropped = self.shared.drop_if(key, version);
                if dropped {
                    tracing::warn!(drive = %d.path.display(), key = %String::from_utf8_lossy(key), %why, "damaged record dropped; answered as a miss");
                }
                Read::Absent
            }
            Err(ReadError::Io(e)) => {
                add(&d.counters.read_errors, 1);
                add(&c.drive_misses, 1);
                tracing::warn!(drive = %d.path.display(), error = %e, "drive read failed; answered as a miss");
                Read::Absent
            }
        }
    }

    /// Writes out and syncs everything queued before this call, on every online drive.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        let mut waits = Vec::new();
        for (d, q) in self.drives.iter().zip(&self.queues) {
            if !d.is_online() {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            if q.send(Job::Flush { ack: tx }).is_ok() {
                waits.push((d, rx));
            }
        }
        let mut errors = Vec::new();
        for (d, rx) in waits {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{}: {e}", d.path.display())),
                Err(_) => errors.push(format!("{}: writer stopped", d.path.display())),
            }
        }
        add(&self.shared.counters.flushes, 1);
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Drains every queue, syncs and seals every drive, and stops the writers (clean shutdown).
    pub(crate) fn shutdown(&self) {
        let mut waits = Vec::new();
        for q in &self.queues {
            let (tx, rx) = oneshot::channel();
            if q.send(Job::Stop { ack: tx }).is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.blocking_recv();
        }
        for h in self.writers.lock().drain(..) {
            let _ = h.join();
        }
    }

    /// Whether a drive is offline.
    pub(crate) fn degraded(&self) -> bool {
        self.drives.iter().any(|d| !d.is_online())
    }

    /// Per-drive state for `/v1/health` and `/v1/status`.
    pub(crate) fn drives_json(&self) -> Vec<serde_json::Value> {
        self.drives
            .iter()
            .map(|d| {
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                serde_json::json!({
                    "path": d.path.display().to_string(),
                    "drive_id": d.drive_id,
                    "state": if d.is_online() { "online" } else { "offline" },
                    "error": d.error(),
                    "capacity_bytes": d.capacity,
                    "used_bytes": d.used(),
                    "segments": d.segment_count(),
                    "write_errors": l(&d.counters.write_errors),
                    "read_errors": l(&d.counters.read_errors),
                    "corrupt_records": l(&d.counters.corrupt_records),
                    "bytes_written": l(&d.counters.bytes_written),
                    "bytes_read": l(&d.counters.bytes_read),
                })
            })
            .collect()
    }

    /// The `storage` section of `/v1/status`.
    pub(crate) fn status_json(&self) -> serde_json::Value {
        let c = self.snapshot();
        serde_json::json!({
            "mode": "drive",
            "durability": self.shared.durability.name(),
            "flush_interval_ms": self.shared.flush_interval.as_millis() as u64,
            "segment_bytes": self.shared.segment_size,
            "objects": c.objects,
            "queue_capacity_bytes": u64::from(self.queue_units) * QUEUE_UNIT,
            "queued_bytes": c.queued_bytes,
            "drive_hits": c.drive_hits,
            "drive_misses": c.drive_misses,
            "corrupt_records": c.corrupt,
            "drive_evictions": c.evictions,
            "drive_evicted_bytes": c.evicted_bytes,
            "reinserted": c.reinserted,
            "rejected_writes": c.rejected,
            "flushes": c.flushes,
            "degraded": self.degraded(),
            "drives": self.drives_json(),
            "recovery": self.recovery,
        })
    }

    /// Counters for `/metrics`.
    pub(crate) fn snapshot(&self) -> TierSnapshot {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TierSnapshot {
            objects: self.object_count() as u64,
            queued_bytes: u64::from(self.queue_units - self.queue.available_permits() as u32) * QUEUE_UNIT,
            drive_hits: l(&c.drive_hits),
            drive_misses: l(&c.drive_misses),
            corrupt: l(&c.corrupt),
            evictions: l(&c.evictions),
            evicted_bytes: l(&c.evicted_bytes),
            reinserted: l(&c.reinserted),
            rejected: l(&c.rejected),
            flushes: l(&c.flushes),
            drives: self
                .drives
                .iter()
                .map(|d| DriveSnapshot {
                    path: d.path.display().to_string(),
                    online: d.is_online(),
                    capacity: d.capacity,
                    used: d.used(),
                    write_errors: l(&d.counters.write_errors),
                    read_errors: l(&d.counters.read_errors),
                })
                .collect(),
        }
    }
}

/// The drive tier's counters at one moment.
#[derive(Debug, Default)]
pub(crate) struct TierSnapshot {
    pub(crate) objects: u64,
    pub(crate) queued_bytes: u64,
    pub(crate) drive_hits: u64,
    pub(crate) drive_misses: u64,
    pub(crate) corrupt: u64,
    pub(crate) evictions: u64,
    pub(crate) evicted_bytes: u64,
    pub(crate) reinserted: u64,
    pub(crate) rejected: u64,
    pub(crate) flushes: u64,
    pub(crate) drives: Vec<DriveSnapshot>,
}

/// One drive's gauges.
#[derive(Debug)]
pub(crate) struct DriveSnapshot {
    pub(crate) path: String,
    pub(crate) online: bool,
    pub(crate) capacity: u64,
    pub(crate) used: u64,
    pub(crate) write_errors: u64,
    pub(crate) read_errors: u64,
}

impl Shared {
    /// A write of `version` finished: on success the entry (if still that version) now points
    /// at the drive; on failure it is dropped from the drive index (the DRAM copy, if any, stays).
    fn settle(&self, key: &[u8], version: u64, loc: Option<Loc>) {
        let mut ix = self.index.lock();
        if let Some(e) = ix.get_mut(key).filter(|e| e.version == version) {
            match loc {
                Some(l) => e.loc = l,
                None => {
                    ix.remove(key);
                }
            }
        }
    }

    /// Removes `key` if its entry is still `version`. True if removed.
    fn drop_if(&self, key: &[u8], version: u64) -> bool {
        let mut ix = self.index.lock();
        if ix.get(key).is_some_and(|e| e.version == version) {
            ix.remove(key);
            return true;
        }
        false
    }
}

/// A record the writer accepted but has not written yet: a batch's records are coalesced into
/// few `pwritev` calls (small objects would otherwise cost one system call each).
struct Staged {
    key: Box<[u8]>,
    obj: Option<Object>,
    header: RecordHeader,
    ack: Option<Ack>,
    /// Queue room, released once the record is written.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Most records coalesced into one write.
const STAGE_RECORDS: usize = 512;
/// Most bytes coalesced into one write.
const STAGE_BYTES: u64 = 16 << 20;

/// A drive's writer thread.
struct Writer {
    shared: Arc<Shared>,
    drive: Arc<Drive>,
    head: Option<Head>,
    staged: Vec<Staged>,
    staged_bytes: u64,
    /// Answers for this group commit, sent after its sync.
    acks: Vec<(Ack, Result<(), String>)>,
}

impl Writer {
    fn new(shared: Arc<Shared>, drive: Arc<Drive>) -> Self {
        Self { shared, drive, head: None, staged: Vec::new(), staged_bytes: 0, acks: Vec::new() }
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let durability = self.shared.durability;
        let interval = self.shared.flush_interval;
        let mut last_flush = Instant::now();
        loop {
            // Unsynced bytes (async) or bytes not yet handed to writeback (none) wake the writer
            // at the flush interval even without new jobs.
            let pending = self.head.as_ref().is_some_and(Head::dirty) && durability != Durability::Sync;
            let first = if pending {
                match rx.recv_timeout(interval.saturating_sub(last_flush.elapsed())) {
                    Ok(j) => Some(j),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(j) => Some(j),
                    Err(_) => break,
                }
            };
            let mut batch: Vec<Job> = first.into_iter().collect();
            while batch.len() < GROUP {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let mut sync = false;
            let mut stop = None;
            for job in batch {
                match job {
                    Job::Put { key, obj, version, _permit, ack } => {
                        self.stage(key, Some(obj), version, ack, Some(_permit));
                        sync |= durability == Durability::Sync;
                    }
                    Job::Delete { key, version, ack } => {
                        self.stage(key, None, version, ack, None);
                        sync |= durability == Durability::Sync;
                    }
                    Job::Flush { ack } => {
                        self.flush_staged();
                        sync = true;
                        self.acks.push((ack, Ok(())));
                    }
                    Job::Stop { ack } => stop = Some(ack),
                }
            }
            self.flush_staged();
            let due = last_flush.elapsed() >= interval;
            if sync || stop.is_some() || (due && durability == Durability::Async) {
                if let Err(e) = self.sync() {
                    for (_, r) in self.acks.iter_mut().filter(|(_, r)| r.is_ok()) {
                        *r = Err(e.clone());
                    }
                }
                last_flush = Instant::now();
            } else if let Some(h) = self.head.as_mut() {
                // Keep the drive busy between syncs instead of writing in bursts.
                self.drive.start_writeback(h, due);
                if due {
                    last_flush = Instant::now();
                }
            }
            for (a, r) in self.acks.drain(..) {
                let _ = a.send(r);
            }
            if let Some(ack) = stop {
                if let Some(h) = self.head.take()
                    && let Err(e) = self.drive.seal(h)
                {
                    self.io_failed("sealing the open segment at shutdown", &e);
                }
                let _ = ack.send(Ok(()));
                return;
            }
        }
    }

    fn io_failed(&self, what: &str, e: &std::io::Error) -> String {
        add(&self.drive.counters.write_errors, 1);
        let why = format!("{what}: {e}");
        self.drive.fail(&why);
        why
    }

    fn sync(&mut self) -> Result<(), String> {
        let Some(h) = self.head.as_mut() else { return Ok(()) };
        if !self.drive.is_online() {
            return Err("drive offline".into());
        }
        self.drive.sync(h).map_err(|e| self.io_failed("fdatasync", &e))
    }

    /// Accepts a record (a tombstone when `obj` is `None`): makes room, then stages it for the
    /// next coalesced write. A record that cannot be written is answered (and its index entry
    /// dropped) at once.
    fn stage(
        &mut self,
        key: Box<[u8]>,
        obj: Option<Object>,
        version: u64,
        ack: Option<Ack>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let header = RecordHeader {
            version,
            value_len: obj.as_ref().map_or(0, |o| o.len()),
            value_crc: obj.as_ref().map_or(0, |o| o.crc()),
            key_len: key.len() as u16,
            flags: if obj.is_none() { FLAG_TOMBSTONE } else { 0 },
        };
        if let Err(e) = self.make_room(header.record_len()) {
            if obj.is_some() {
                self.shared.settle(&key, version, None);
            }
            if let Some(a) = ack {
                self.acks.push((a, Err(e)));
            }
            return;
        }
        self.staged_bytes += header.record_len();
        self.staged.push(Staged { key, obj, header, ack, _permit: permit });
        if self.staged.len() >= STAGE_RECORDS || self.staged_bytes >= STAGE_BYTES {
            self.flush_staged();
        }
    }

    /// Before a record of `need` bytes is staged: rolls to a new segment when the head would
    /// overflow, and reclaims the oldest segments while the drive would pass its capacity.
    fn make_room(&mut self, need: u64) -> Result<(), String> {
        if !self.drive.is_online() {
            return Err(format!("drive {} is offline", self.drive.path.display()));
        }
        let limit = self.drive.capacity - self.shared.reserve;
        if need > limit - self.shared.segment_size.min(limit / 2) {
            add(&self.shared.counters.rejected, 1);
            return Err(format!(
                "a {} record does not fit drive {} ({} capacity)",
                format_size(need),
                self.drive.path.display(),
                format_size(self.drive.capacity)
            ));
        }
        let head_len = self.head.as_ref().map_or(0, |h| h.len) + self.staged_bytes;
        if head_len > 0 && head_len + need > self.shared.segment_size {
            self.flush_staged();
            self.seal_head()?;
        }
        if self.drive.used() + self.staged_bytes + need > limit {
            self.flush_staged();
            while self.drive.used() + need > limit {
                let head_id = self.head.as_ref().map(|h| h.id);
                let Some(oldest) = self.drive.oldest_segment(head_id) else { break };
                if let Err(e) = self.reclaim(oldest) {
                    return Err(self.io_failed("reclaiming a segment", &e));
                }
            }
        }
        Ok(())
    }

    fn seal_head(&mut self) -> Result<(), String> {
        match self.head.take() {
            Some(old) => self.drive.seal(old).map_err(|e| self.io_failed("sealing a segment", &e)),
            None => Ok(()),
        }
    }

    /// Writes every staged record (few `pwritev` calls), then points the index at them and
    /// queues their answers.
    fn flush_staged(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut self.staged);
        self.staged_bytes = 0;
        let written = self.write_records(
            &staged
                .iter()
                .map(|s| (&*s.key, s.obj.as_ref().map_or(&[][..], |o| o.bytes()), s.header))
                .collect::<Vec<_>>(),
        );
        for (i, s) in staged.into_iter().enumerate() {
            let r = written.as_ref().map(|(seg, offs)| (*seg, offs[i])).map_err(String::clone);
            if let Some(obj) = &s.obj {
                let loc =
                    r.as_ref().ok().map(|&(seg, off)| Loc::Disk { drive: self.drive.no, seg, off, len: obj.len() });
                self.shared.settle(&s.key, s.header.version, loc);
            }
            if let Some(a) = s.ack {
                self.acks.push((a, r.map(|_| ())));
            }
        }
    }

    /// Appends records to the head segment (starting one if needed). Returns the segment and
    /// each record's offset.
    fn write_records(&mut self, recs: &[(&[u8], &[u8], RecordHeader)]) -> Result<(u32, Vec<u64>), String> {
        if self.head.is_none() {
            let id = self.drive.next_segment_id();
            self.head = Some(self.drive.create_head(id).map_err(|e| self.io_failed("creating a segment", &e))?);
        }
        let head = self.head.as_mut().expect("head exists");
        let seg = head.id;
        match self.drive.append(head, recs) {
            Ok(offs) => Ok((seg, offs)),
            Err(e) => Err(self.io_failed("writing records", &e)),
        }
    }

    /// Appends one record now (re-insertion during a reclaim), rolling the head when full.
    fn append_now(&mut self, key: &[u8], value: &[u8], h: RecordHeader) -> Result<(u32, u64), String> {
        if self.head.as_ref().is_some_and(|hd| hd.len > 0 && hd.len + h.record_len() > self.shared.segment_size) {
            self.seal_head()?;
        }
        self.write_records(&[(key, value, h)]).map(|(seg, offs)| (seg, offs[0]))
    }

    /// Frees the oldest segment: live records read since they were written are copied to the
    /// head (up to the reserve), the other live records are evicted, then the segment is deleted.
    fn reclaim(&mut self, seg: u32) -> std::io::Result<()> {
        let entries = self.drive.entries(seg)?;
        let no = self.drive.no;
        let shared = Arc::clone(&self.shared);
        let c = &shared.counters;
        let mut keep = Vec::new();
        {
            // Half the reserve: the rest covers the checkpoints of segments sealed meanwhile.
            let mut budget = shared.reserve / 2;
            let mut ix = shared.index.lock();
            for e in entries.into_iter().filter(|e| !e.is_tombstone()) {
                let live = ix.get(&e.key).is_some_and(|x| {
                    x.version == e.version
                        && matches!(x.loc, Loc::Disk { drive, seg: s, off, .. } if drive == no && s == seg && off == e.offset)
                });
                if !live {
                    continue;
                }
                let hot = ix.get(&e.key).is_some_and(|x| x.accessed);
                if hot && e.record_len() <= budget {
                    budget -= e.record_len();
                    if let Some(x) = ix.get_mut(&e.key) {
                        x.accessed = false;
                    }
                    keep.push(e);
                } else {
                    ix.remove(&e.key);
                    add(&c.evictions, 1);
                    add(&c.evicted_bytes, e.value_len);
                }
            }
        }
        for e in keep {
            let mut buf = vec![0u8; Drive::read_room(e.offset, e.key.len(), e.value_len) as usize];
            let moved = match self.drive.read_value(seg, e.offset, &e.key, e.version, e.value_len, &mut buf) {
                Ok((value, crc)) => {
                    let h = RecordHeader {
                        version: e.version,
                        value_len: e.value_len,
                        value_crc: crc,
                        key_len: e.key.len() as u16,
                        flags: 0,
                    };
                    self.append_now(&e.key, &buf[value], h).ok()
                }
                Err(_) => {
                    add(&c.corrupt, 1);
                    None
                }
            };
            let mut ix = shared.index.lock();
            let still = ix.get_mut(&e.key).filter(|x| {
                x.version == e.version
                    && matches!(x.loc, Loc::Disk { drive, seg: s, off, .. } if drive == no && s == seg && off == e.offset)
            });
            match (still, moved) {
                (Some(x), Some((s, off))) => {
                    x.loc = Loc::Disk { drive: no, seg: s, off, len: e.value_len };
                    add(&c.reinserted, 1);
                }
                (Some(_), None) => {
                    ix.remove(&e.key);
                    add(&c.evictions, 1);
                    add(&c.evicted_bytes, e.value_len);
                }
                (None, _) => {}
            }
        }
        self.drive.remove_segment(seg)
    }
}

impl Durability {
    fn name(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Async => "async",
            Durability::Sync => "sync",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(d: &Drive, head: &mut Head, key: &[u8], value: &[u8], version: u64, flags: u16) {
        let h = RecordHeader {
            version,
            value_len: value.len() as u64,
            value_crc: crc32c::crc32c(value),
            key_len: key.len() as u16,
            flags,
        };
        d.append(head, &[(key, value, h)]).unwrap();
    }

    #[test]
    fn recovery_keeps_the_newest_version_across_drives_and_tombstones_win_in_any_order() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        {
            // Drive 0 (read first): k deleted at version 5, x written at 2.
            let (d0, _) = Drive::open(0, a.path(), Some(64 << 20), false).unwrap();
            let mut h0 = d0.create_head(1).unwrap();
            record(&d0, &mut h0, b"k", b"", 5, FLAG_TOMBSTONE);
            record(&d0, &mut h0, b"x", b"old", 2, 0);
            // Drive 1 (read second): an older k at 3, a newer x at 7, y at 4.
            let (d1, _) = Drive::open(1, b.path(), Some(64 << 20), false).unwrap();
            let mut h1 = d1.create_head(1).unwrap();
            record(&d1, &mut h1, b"k", b"stale", 3, 0);
            record(&d1, &mut h1, b"x", b"new", 7, 0);
            record(&d1, &mut h1, b"y", b"why", 4, 0);
        }
        let cfg = StorageConfig {
            data_dirs: vec![a.path().into(), b.path().into()],
            drive_capacity: Some(64 << 20),
            durability: Durability::Async,
            flush_interval: Duration::from_millis(100),
            drive_queue: 1 << 20,
            segment_size: 1 << 20,
        };
        let tier = Tier::open(&cfg, 1 << 20).unwrap();
        assert_eq!(tier.size(b"k"), None, "the tombstone beats the older record read after it");
        assert_eq!(tier.size(b"x"), Some(3));
        assert_eq!(tier.size(b"y"), Some(3));
        assert_eq!((tier.recovery.objects, tier.recovery.bytes), (2, 6));
        assert_eq!(tier.next_version.load(Ordering::Relaxed), 8, "new writes get versions above every record");
        let ix = tier.shared.index.lock();
        assert!(matches!(ix[&b"x"[..]].loc, Loc::Disk { drive: 1, .. }));
        drop(ix);
        tier.shutdown();
    }
}
