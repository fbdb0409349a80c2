//! The node's object store: key index, LRU eviction, multi-part (ranged) assembly and counters.
//!
//! Owns: which key names which arena slot, when an object becomes visible, and what is evicted
//! when the arena is full. Never does I/O; the index lock is never held while bytes move (the
//! session receives into a [`SlotMut`]/[`PartWrite`] without it, and sends from an `Arc<Object>`
//! clone).
//!
//! Invariants:
//! - an object is in the index only when all its bytes arrived and their CRC32C matched, so a
//!   reader never sees a torn or mixed block; two writers of one key: the last complete write wins;
//! - eviction removes objects from the index only; their memory returns to the arena when the
//!   last in-flight read drops its `Arc<Object>`;
//! - the in-flight ranges of a partial object never overlap (the soundness condition of
//!   [`PartialBuf::range_mut`]).
//!
//! Eviction policy: LRU over complete objects (a GET promotes; EXISTS does not). KV-cache reuse is
//! dominated by recency — a prefix that was just used is the one most likely to be used again —
//! and LRU is O(1) per operation under one short lock. Frequency-aware admission comes with the
//! drive tier (see docs/architecture.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use super::arena::{Arena, PartialBuf, Slot, SlotMut};
use super::metrics::add;
use crate::wire::Status;

/// A complete, visible object. Holding an `Arc<Object>` pins its memory.
pub(crate) struct Object {
    slot: Slot,
    crc: u32,
}

impl Object {
    /// A complete object over `slot`, whose bytes have CRC32C `crc`.
    pub(crate) fn new(slot: Slot, crc: u32) -> Self {
        Self { slot, crc }
    }
    /// All bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.slot.bytes()
    }
    /// CRC32C of all bytes.
    pub(crate) fn crc(&self) -> u32 {
        self.crc
    }
    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.slot.len()
    }
    /// Offset of the first byte inside the arena.
    pub(crate) fn arena_offset(&self) -> u64 {
        self.slot.offset()
    }
}

/// Why the store refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    /// No room even after evicting everything evictable.
    #[error(
        "no space for {need} bytes: {used} of {capacity} bytes in use and nothing left to evict (objects still being read or written)"
    )]
    NoSpace { need: u64, used: u64, capacity: u64 },
    /// Larger than the node's object limit.
    #[error("object of {size} bytes exceeds this node's max_object_size of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    /// A ranged write that makes no sense.
    #[error("{0}")]
    BadRange(String),
}

impl StoreError {
    pub(crate) fn status(&self) -> Status {
        match self {
            Self::NoSpace { .. } => Status::NoSpace,
            Self::TooLarge { .. } => Status::PayloadTooLarge,
            Self::BadRange(_) => Status::InvalidRequest,
        }
    }
}

struct Partial {
    buf: Arc<PartialBuf>,
    generation: u64,
    /// Received ranges, sorted and merged.
    done: Vec<(u64, u64)>,
    /// Ranges being written now.
    writing: Vec<(u64, u64)>,
    touched: Instant,
}

struct Index {
    objects: LruCache<Box<[u8]>, Arc<Object>>,
    partial: HashMap<Box<[u8]>, Partial>,
    next_generation: u64,
}

/// Live counters: relaxed atomic adds, never a lock on the request path.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    partial_expired: AtomicU64,
}

/// A snapshot of the counters the admin endpoints report.
#[derive(Debug, Default)]
pub(crate) struct StoreCounters {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
    pub(crate) evicted_bytes: u64,
    pub(crate) partial_expired: u64,
}

/// The store.
pub(crate) struct Store {
    arena: Arc<Arena>,
    index: Mutex<Index>,
    counters: Counters,
    max_object: u64,
    partial_timeout: Duration,
}

/// One in-flight ranged write into a partial object.
pub(crate) struct PartWrite {
    key: Box<[u8]>,
    buf: Arc<PartialBuf>,
    generation: u64,
    offset: u64,
    len: u64,
}

impl PartWrite {
    /// Offset inside the arena of the bytes this write owns.
    pub(crate) fn arena_offset(&self) -> u64 {
        self.buf.offset() + self.offset
    }

    /// The bytes this write owns.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `Store::begin_part` registered [offset, offset+len) as in flight and refused
        // overlaps with every other in-flight range of this buffer; the range stays registered
        // until `Store::finish_part` consumes this PartWrite, and `&mut self` makes this view
        // unique among the views this PartWrite hands out.
        unsafe { self.buf.range_mut(self.offset, self.len) }
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn add_range(done: &mut Vec<(u64, u64)>, r: (u64, u64)) {
    done.push(r);
    done.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(done.len());
    for &(s, e) in done.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *done = merged;
}

impl Store {
    pub(crate) fn new(arena: Arc<Arena>, max_object: u64, partial_timeout: Duration) -> Self {
        Self {
            arena,
            index: Mutex::new(Index { objects: LruCache::unbounded(), partial: HashMap::new(), next_generation: 1 }),
            counters: Counters::default(),
            max_object,
            partial_timeout,
        }
    }

    pub(crate) fn arena(&self) -> &Arena {
        &self.arena
    }

    pub(crate) fn max_object(&self) -> u64 {
        self.max_object
    }

    /// Objects visible now.
    pub(crate) fn object_count(&self) -> usize {
        self.index.lock().objects.len()
    }

    /// A snapshot of the counters.
    pub(crate) fn counters(&self) -> StoreCounters {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreCounters {
            hits: l(&c.hits),
            misses: l(&c.misses),
            evictions: l(&c.evictions),
            evicted_bytes: l(&c.evicted_bytes),
            partial_expired: l(&c.partial_expired),
        }
    }

    /// Reserves room for a `len`-byte object, evicting least recently used objects as needed.
    pub(crate) fn reserve(&self, len: u64) -> Result<SlotMut, StoreError> {
        if len > self.max_object {
            return Err(StoreError::TooLarge { size: len, max: self.max_object });
        }
        let mut expired_partials = false;
        loop {
            if let Some(s) = self.arena.try_alloc(len) {
                return Ok(s);
            }
            // Drop the victim after releasing the index lock: its memory goes back to the arena
            // (unless a reader still pins it).
            let victim = self.index.lock().objects.pop_lru();
            match victim {
                Some((_, obj)) => {
                    add(&self.counters.evictions, 1);
                    add(&self.counters.evicted_bytes, obj.len());
                }
                None if !expired_partials => {
                    expired_partials = true;
                    self.expire_partials(Instant::now());
                }
                None => {
                    return Err(StoreError::NoSpace {
                        need: len,
                        used: self.arena.used(),
                        capacity: self.arena.capacity(),
                    });
                }
            }
        }
    }

    /// Makes `obj` visible under `key` (replacing any older object: the last write wins).
    pub(crate) fn publish(&self, key: Box<[u8]>, obj: Arc<Object>) {
        let old = self.index.lock().objects.put(key, obj);
        drop(old);
    }

    /// Makes `obj` visible under `key` unless an object is already there (a promotion from the
    /// drive tier never replaces a newer write). Returns the object now visible.
    pub(crate) fn publish_if_absent(&self, key: Box<[u8]>, obj: Arc<Object>) -> Arc<Object> {
        let mut ix = self.index.lock();
        if let Some(o) = ix.objects.get(&key) {
            return Arc::clone(o);
        }
        ix.objects.put(key, Arc::clone(&obj));
        obj
    }

    /// The object under `key`, pinned, promoted to most recently used. Not counted: the caller
    /// counts the lookup once it has asked every tier ([`Store::count_lookup`]).
    pub(crate) fn get(&self, key: &[u8]) -> Option<Arc<Object>> {
        self.index.lock().objects.get(key).cloned()
    }

    /// Whether `key` is in DRAM (without promoting it).
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.index.lock().objects.contains(key)
    }

    /// Counts a GET lookup as a hit or a miss.
    pub(crate) fn count_lookup(&self, found: bool) {
        add(if found { &self.counters.hits } else { &self.counters.misses }, 1);
    }

    /// Sizes of the keys (None when absent), without promoting them.
    pub(crate) fn sizes<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<Option<u64>> {
        let ix = self.index.lock();
        keys.into_iter().map(|k| ix.objects.peek(k).map(|o| o.len())).collect()
    }

    /// Removes `key` (and any partial upload of it). True if a complete object was removed.
    pub(crate) fn delete(&self, key: &[u8]) -> bool {
        let (obj, part) = {
            let mut ix = self.index.lock();
            (ix.objects.pop(key), ix.partial.remove(key))
        };
        drop(part);
        obj.is_some()
    }

    /// Starts writing `[offset, offset+len)` of the `total`-byte object `key`. A partial object
    /// with another total is replaced (the newest writer wins).
    pub(crate) fn begin_part(&self, key: &[u8], offset: u64, len: u64, total: u64) -> Result<PartWrite, StoreError> {
        let end = offset.checked_add(len).filter(|&e| e <= total).ok_or_else(|| {
            StoreError::BadRange(format!("range {offset}+{len} lies outside an object of {total} bytes"))
        })?;
        if len == 0 {
            return Err(StoreError::BadRange("a ranged PUT must carry at least one byte".into()));
        }
        if total > self.max_object {
            return Err(StoreError::TooLarge { size: total, max: self.max_object });
        }
        let now = Instant::now();
        {
            let mut ix = self.index.lock();
            if let Some(p) = ix.partial.get_mut(key)
                && p.buf.len() == total
            {
                if let Some(&w) = p.writing.iter().find(|&&w| overlaps(w, (offset, end))) {
                    return Err(StoreError::BadRange(format!(
                        "range {offset}..{end} overlaps range {}..{} that another writer is sending now",
                        w.0, w.1
                    )));
                }
                p.writing.push((offset, end));
                p.touched = now;
                return Ok(PartWrite {
                    key: key.into(),
                    buf: Arc::clone(&p.buf),
                    generation: p.generation,
                    offset,
                    len,
                });
            }
        }
        // New partial object (or one with a different size): reserve outside the index lock.
        let buf = Arc::new(self.reserve(total)?.into_partial());
        let mut ix = self.index.lock();
        let generation = ix.next_generation;
        ix.next_generation += 1;
        let old = ix.partial.insert(
            key.into(),
            Partial { buf: Arc::clone(&buf), generation, done: Vec::new(), writing: vec![(offset, end)], touched: now },
        );
        drop(ix);
        drop(old);
        Ok(PartWrite { key: key.into(), buf, generation, offset, len })
    }

    /// Ends a ranged write. With `ok` (CRC matched) the range counts as received; when the whole
    /// object has arrived it is checksummed and returned, for the caller to publish.
    pub(crate) fn finish_part(&self, w: PartWrite, ok: bool) -> Option<(Box<[u8]>, Arc<Object>)> {
        let PartWrite { key, buf, generation, offset, len } = w;
        let range = (offset, offset + len);
        let complete = {
            let mut ix = self.index.lock();
            let Some(p) = ix.partial.get_mut(&key).filter(|p| p.generation == generation) else {
                // Superseded by a write with another size, deleted, or expired: nothing to do.
                return None;
            };
            if let Some(i) = p.writing.iter().position(|&r| r == range) {
                p.writing.swap_remove(i);
            }
            p.touched = Instant::now();
            if ok {
                add_range(&mut p.done, range);
            }
            let full = p.done.first() == Some(&(0, buf.len())) && p.writing.is_empty();
            if full { ix.partial.remove(&key) } else { None }
        };
        let p = complete?;
        drop(p.buf);
        // Every clone of the buffer except ours is gone: the partial entry was removed and no
        // writer is registered (a PartWrite exists only while its range is in `writing`).
        let buf = Arc::try_unwrap(buf).ok()?;
        let slot = buf.freeze();
        let crc = crc32c::crc32c(slot.bytes());
        Some((key, Arc::new(Object { slot, crc })))
    }

    /// Drops partial objects untouched for longer than the partial timeout.
    pub(crate) fn expire_partials(&self, now: Instant) {
        let timeout = self.partial_timeout;
        let mut dropped = Vec::new();
        {
            let mut ix = self.index.lock();
            ix.partial.retain(|_, p| {
                let keep = !p.writing.is_empty() || now.saturating_duration_since(p.touched) < timeout;
                if !keep {
                    dropped.push(Arc::clone(&p.buf));
                }
                keep
            });
        }
        if !dropped.is_empty() {
            add(&self.counters.partial_expired, dropped.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(cap: u64) -> Store {
        Store::new(Arena::new(cap).unwrap(), cap, Duration::from_secs(30))
    }

    fn put(s: &Store, key: &str, fill: u8, len: u64) {
        let mut slot = s.reserve(len).unwrap();
        slot.bytes_mut().fill(fill);
        let crc = crc32c::crc32c(slot.bytes_mut());
        s.publish(key.as_bytes().into(), Arc::new(Object::new(slot.freeze(), crc)));
    }

    fn finish(s: &Store, w: PartWrite, ok: bool) -> bool {
        let done = s.finish_part(w, ok);
        let complete = done.is_some();
        if let Some((k, o)) = done {
            s.publish(k, o);
        }
        complete
    }

    #[test]
    fn committed_objects_are_found_with_their_crc() {
        let s = store(4096);
        put(&s, "a", 1, 100);
        let o = s.get(b"a").unwrap();
        assert_eq!(o.bytes(), &[1u8; 100][..]);
        assert_eq!(o.crc(), crc32c::crc32c(&[1u8; 100]));
        assert!(s.get(b"b").is_none());
        s.count_lookup(true);
        s.count_lookup(false);
        let c = s.counters();
        assert_eq!((c.hits, c.misses), (1, 1));
    }

    #[test]
    fn full_store_evicts_the_least_recently_used_object() {
        let s = store(64 * 3);
        put(&s, "a", 1, 64);
        put(&s, "b", 2, 64);
        put(&s, "c", 3, 64);
        assert!(s.get(b"a").is_some()); // a is now most recent; b is the LRU
        put(&s, "d", 4, 64);
        assert!(s.get(b"b").is_none());
        assert!(s.get(b"a").is_some());
        assert_eq!(s.counters().evictions, 1);
    }

    #[test]
    fn eviction_never_frees_memory_under_an_in_flight_read() {
        let s = store(128);
        put(&s, "a", 9, 128);
        let reader = s.get(b"a").unwrap();
        let e = s.reserve(128).err().unwrap();
        assert_eq!(e.status(), Status::NoSpace);
        assert_eq!(reader.bytes(), &[9u8; 128][..], "the pinned bytes must be intact");
        drop(reader);
        assert!(s.reserve(128).is_ok());
    }

    #[test]
    fn last_complete_write_wins() {
        let s = store(4096);
        put(&s, "k", 1, 10);
        put(&s, "k", 2, 20);
        assert_eq!(s.get(b"k").unwrap().bytes(), &[2u8; 20][..]);
        assert_eq!(s.object_count(), 1);
    }

    #[test]
    fn ranged_parts_become_visible_only_when_complete() {
        let s = store(4096);
        let mut w1 = s.begin_part(b"k", 0, 4, 8).unwrap();
        let mut w2 = s.begin_part(b"k", 4, 4, 8).unwrap();
        w2.bytes_mut().copy_from_slice(b"5678");
        assert!(!finish(&s, w2, true));
        assert!(s.get(b"k").is_none(), "half an object must not be visible");
        w1.bytes_mut().copy_from_slice(b"1234");
        assert!(finish(&s, w1, true));
        let o = s.get(b"k").unwrap();
        assert_eq!(o.bytes(), b"12345678");
        assert_eq!(o.crc(), crc32c::crc32c(b"12345678"));
    }

    #[test]
    fn a_part_with_a_bad_checksum_does_not_count() {
        let s = store(4096);
        let w = s.begin_part(b"k", 0, 4, 4).unwrap();
        assert!(!finish(&s, w, false));
        assert!(s.get(b"k").is_none());
        let mut w = s.begin_part(b"k", 0, 4, 4).unwrap();
        w.bytes_mut().copy_from_slice(b"abcd");
        assert!(finish(&s, w, true));
        assert_eq!(s.get(b"k").unwrap().bytes(), b"abcd");
    }

    #[test]
    fn overlapping_in_flight_ranges_and_out_of_bounds_ranges_are_refused() {
        let s = store(4096);
        let _w = s.begin_part(b"k", 0, 6, 8).unwrap();
        assert!(matches!(s.begin_part(b"k", 4, 4, 8), Err(StoreError::BadRange(_))));
        assert!(matches!(s.begin_part(b"k", 6, 4, 8), Err(StoreError::BadRange(_))));
        assert!(matches!(s.begin_part(b"x", u64::MAX, 2, 8), Err(StoreError::BadRange(_))));
        assert!(matches!(s.begin_part(b"x", 0, 0, 8), Err(StoreError::BadRange(_))));
    }

    #[test]
    fn stale_partial_objects_expire_and_release_their_memory() {
        let s = store(128);
        let w = s.begin_part(b"k", 0, 64, 128).unwrap();
        assert!(!finish(&s, w, true));
        assert_eq!(s.arena().used(), 128);
        s.expire_partials(Instant::now() + Duration::from_secs(31));
        assert_eq!(s.arena().used(), 0);
        assert_eq!(s.counters().partial_expired, 1);
    }

    #[test]
    fn objects_over_the_limit_are_too_large() {
        let s = Store::new(Arena::new(4096).unwrap(), 100, Duration::from_secs(1));
        assert_eq!(s.reserve(101).err().unwrap().status(), Status::PayloadTooLarge);
    }

    #[test]
    fn a_promotion_never_replaces_a_newer_write() {
        let s = store(4096);
        put(&s, "k", 2, 10);
        let mut slot = s.reserve(10).unwrap();
        slot.bytes_mut().fill(1);
        let old = Arc::new(Object::new(slot.freeze(), crc32c::crc32c(&[1u8; 10])));
        assert_eq!(s.publish_if_absent(b"k".as_slice().into(), old).bytes(), &[2u8; 10][..]);
        assert_eq!(s.get(b"k").unwrap().bytes(), &[2u8; 10][..]);
        s.delete(b"k");
        let mut slot = s.reserve(10).unwrap();
        slot.bytes_mut().fill(3);
        let promoted = Arc::new(Object::new(slot.freeze(), crc32c::crc32c(&[3u8; 10])));
        assert_eq!(s.publish_if_absent(b"k".as_slice().into(), promoted).bytes(), &[3u8; 10][..]);
    }

    #[test]
    fn sizes_and_delete() {
        let s = store(4096);
        put(&s, "a", 1, 10);
        assert_eq!(s.sizes([b"a".as_slice(), b"b"]), vec![Some(10), None]);
        assert!(s.delete(b"a"));
        assert!(!s.delete(b"a"));
        assert_eq!(s.arena().used(), 0);
    }
}
