//! The node's object store: key index, LRU eviction, multi-part (ranged) assembly and counters.
//!
//! Owns: which key names which arena slot, when an object becomes visible, and what is evicted
//! when the arena is full. Never does I/O; the index lock is never held while bytes move (the
//! session receives into a [`SlotMut`]/[`PartWrite`] without it, and sends from an `Object`
//! clone).
//!
//! Invariants:
//! - an object is in the index only when all its bytes arrived and their CRC32C matched, so a
//!   reader never sees a torn or mixed block; two writers of one key: the last complete write wins;
//! - eviction removes objects from the index only; their memory returns to the arena when the
//!   last in-flight read drops its `Object`;
//! - the in-flight ranges of a partial object never overlap (the soundness condition of
//!   [`PartialBuf::range_mut`]).
//!
//! Eviction policy: LRU with a second chance (CLOCK) over complete objects: a PUT makes its
//! object the most recent, a GET marks it read (EXISTS does not), and eviction skips (and
//! requeues) read objects once. KV-cache reuse is dominated by recency — a prefix that was just
//! used is the one most likely to be used again — and this is O(1) per operation under one short
//! lock, with a GET touching only its own object (see [`Lru`]). Frequency-aware admission comes
//! with the drive tier (see docs/architecture.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use parking_lot::Mutex;

use super::arena::{Arena, PartialBuf, SlotMut};
use super::metrics::add;
pub(crate) use super::object::Object;
use crate::transport::crc_copy::crc_bulk;
use crate::wire::Status;

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
    objects: Lru,
    partial: HashMap<Box<[u8]>, Partial>,
    next_generation: u64,
}

/// No slab index: the end of the LRU list.
const NIL: u32 = u32::MAX;

fn hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The complete objects, in recency order, in as little memory as a node with millions of small
/// objects needs: a dense slab of 8-byte [`Object`] handles, a hash table of 4-byte slab
/// indices, and the recency list's links inside the objects (as slab indices). Each object's
/// allocation carries its key. About 22 bytes per object here, plus the object's own 56
/// (benches/index.rs measures the total).
///
/// Recency is LRU with a second chance (CLOCK): a write moves its object to the head; a read
/// only sets the object's `referenced` bit, and the eviction scan moves a referenced tail back
/// to the head (clearing the bit) instead of evicting it. A read therefore touches one object,
/// not its two neighbours and the head as a strict LRU's move would, which keeps lookups and
/// the index lock short at millions of objects; eviction still takes the object unused longest
/// among those not read since the scan last passed.
///
/// Removal moves the slab's last object into the hole (fixing its table entry and its
/// neighbours' links), so the slab never has gaps to track.
struct Lru {
    table: HashTable<u32>,
    slab: Vec<Object>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next victim.
    tail: u32,
}

impl Lru {
    fn new() -> Self {
        Self { table: HashTable::new(), slab: Vec::new(), head: NIL, tail: NIL }
    }

    fn len(&self) -> usize {
        self.slab.len()
    }

    fn prev(&self, i: u32) -> u32 {
        self.slab[i as usize].links().0.load(Ordering::Relaxed)
    }

    fn next(&self, i: u32) -> u32 {
        self.slab[i as usize].links().1.load(Ordering::Relaxed)
    }

    fn set_prev(&self, i: u32, to: u32) {
        self.slab[i as usize].links().0.store(to, Ordering::Relaxed);
    }

    fn set_next(&self, i: u32, to: u32) {
        self.slab[i as usize].links().1.store(to, Ordering::Relaxed);
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        self.table.find(hash(key), |&i| self.slab[i as usize].key() == key).copied()
    }

    /// Points the entry before a position (`p`, or the head when NIL) at `after_p`, and the
    /// entry after it (`n`, or the tail when NIL) at `before_n`.
    fn point_neighbours(&mut self, p: u32, n: u32, after_p: u32, before_n: u32) {
        if p == NIL {
            self.head = after_p
        } else {
            self.set_next(p, after_p)
        }
        if n == NIL { self.tail = before_n } else { self.set_prev(n, before_n) }
    }

    fn unlink(&mut self, i: u32) {
        let (p, n) = (self.prev(i), self.next(i));
        self.point_neighbours(p, n, n, p);
    }

    fn push_front(&mut self, i: u32) {
        self.set_prev(i, NIL);
        self.set_next(i, self.head);
        if self.head == NIL {
            self.tail = i
        } else {
            self.set_prev(self.head, i)
        }
        self.head = i;
    }

    fn promote(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// The object under `key`, marked as read (see the type's doc).
    fn get(&self, key: &[u8]) -> Option<&Object> {
        let o = &self.slab[self.find(key)? as usize];
        // Only a clear bit is written: a hot object's line is not dirtied on every read.
        if !o.referenced().load(Ordering::Relaxed) {
            o.referenced().store(true, Ordering::Relaxed);
        }
        Some(o)
    }

    /// The object under `key`, its recency untouched.
    fn peek(&self, key: &[u8]) -> Option<&Object> {
        self.find(key).map(|i| &self.slab[i as usize])
    }

    /// Stores `obj` under its key as the most recently used; returns the object it replaces.
    fn put(&mut self, obj: Object) -> Option<Object> {
        if let Some(i) = self.find(obj.key()) {
            // The new version takes the old one's place in the list, then moves to the head.
            let old = std::mem::replace(&mut self.slab[i as usize], obj);
            self.slab[i as usize].links().0.store(old.links().0.load(Ordering::Relaxed), Ordering::Relaxed);
            self.slab[i as usize].links().1.store(old.links().1.load(Ordering::Relaxed), Ordering::Relaxed);
            self.promote(i);
            return Some(old);
        }
        let i =
            u32::try_from(self.slab.len()).ok().filter(|&i| i != NIL).expect("fewer than 2^32 - 1 objects per node");
        let h = hash(obj.key());
        self.slab.push(obj);
        let slab = &self.slab;
        self.table.insert_unique(h, i, |&j| hash(slab[j as usize].key()));
        self.push_front(i);
        None
    }

    /// Removes and returns the object under `key`.
    fn pop(&mut self, key: &[u8]) -> Option<Object> {
        let slab = &self.slab;
        let (i, _) = self.table.find_entry(hash(key), |&i| slab[i as usize].key() == key).ok()?.remove();
        Some(self.remove_at(i))
    }

    /// Removes and returns the object unused longest, giving read ones a second chance.
    /// Amortized O(1): every pass over a referenced object clears a bit that a read set.
    fn pop_lru(&mut self) -> Option<Object> {
        let mut i = self.tail;
        while i != NIL && self.slab[i as usize].referenced().swap(false, Ordering::Relaxed) {
            self.promote(i);
            i = self.tail;
        }
        if i == NIL {
            return None;
        }
        let h = hash(self.slab[i as usize].key());
        match self.table.find_entry(h, |&j| j == i) {
            Ok(e) => e.remove(),
            Err(_) => unreachable!("every slab entry has a table entry"),
        };
        Some(self.remove_at(i))
    }

    /// Takes slab entry `i` (already out of the table) out of the list and the slab.
    fn remove_at(&mut self, i: u32) -> Object {
        self.unlink(i);
        let last = (self.slab.len() - 1) as u32;
        if i != last {
            // The last object moves to `i`: repoint its table entry and its neighbours.
            let h = hash(self.slab[last as usize].key());
            match self.table.find_mut(h, |&j| j == last) {
                Some(slot) => *slot = i,
                None => unreachable!("every slab entry has a table entry"),
            }
            let (p, n) = (self.prev(last), self.next(last));
            self.point_neighbours(p, n, i, i);
        }
        self.slab.swap_remove(i as usize)
    }
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
            index: Mutex::new(Index { objects: Lru::new(), partial: HashMap::new(), next_generation: 1 }),
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
                Some(obj) => {
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

    /// Makes `obj` visible under its key (replacing any older object: the last write wins).
    pub(crate) fn publish(&self, obj: Object) {
        let old = self.index.lock().objects.put(obj);
        drop(old);
    }

    /// Makes `obj` visible under its key unless an object is already there (a promotion from
    /// the drive tier never replaces a newer write). Returns the object now visible.
    pub(crate) fn publish_if_absent(&self, obj: Object) -> Object {
        let mut ix = self.index.lock();
        if let Some(o) = ix.objects.get(obj.key()) {
            return o.clone();
        }
        ix.objects.put(obj.clone());
        obj
    }

    /// The object under `key`, pinned, promoted to most recently used. Not counted: the caller
    /// counts the lookup once it has asked every tier ([`Store::count_lookup`]).
    pub(crate) fn get(&self, key: &[u8]) -> Option<Object> {
        self.index.lock().objects.get(key).cloned()
    }

    /// Whether `key` is in DRAM (without promoting it).
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.index.lock().objects.peek(key).is_some()
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
        if let Some(w) = Self::join_part(&mut self.index.lock(), key, (offset, end), total, now)? {
            return Ok(w);
        }
        // New partial object (or one with a different size): reserve outside the index lock.
        let buf = Arc::new(self.reserve(total)?.into_partial());
        let mut ix = self.index.lock();
        // A first part of the same object begun at the same moment (on another connection) may
        // have created it meanwhile: join that one, so that neither part is acknowledged into a
        // buffer that the other replaced. Ours goes back to the arena (after the lock, as `buf`
        // was declared before `ix`).
        if let Some(w) = Self::join_part(&mut ix, key, (offset, end), total, now)? {
            return Ok(w);
        }
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

    /// Registers `range` with the partial object `key` when one of `total` bytes exists.
    fn join_part(
        ix: &mut Index,
        key: &[u8],
        range: (u64, u64),
        total: u64,
        now: Instant,
    ) -> Result<Option<PartWrite>, StoreError> {
        let Some(p) = ix.partial.get_mut(key).filter(|p| p.buf.len() == total) else {
            return Ok(None);
        };
        if let Some(&w) = p.writing.iter().find(|&&w| overlaps(w, range)) {
            return Err(StoreError::BadRange(format!(
                "range {}..{} overlaps range {}..{} that another writer is sending now",
                range.0, range.1, w.0, w.1
            )));
        }
        p.writing.push(range);
        p.touched = now;
        Ok(Some(PartWrite {
            key: key.into(),
            buf: Arc::clone(&p.buf),
            generation: p.generation,
            offset: range.0,
            len: range.1 - range.0,
        }))
    }

    /// Ends a ranged write. With `ok` (CRC matched) the range counts as received; when the whole
    /// object has arrived it is checksummed and returned, for the caller to publish.
    pub(crate) fn finish_part(&self, w: PartWrite, ok: bool) -> Option<Object> {
        let PartWrite { key, buf, generation, offset, len } = w;
        let range = (offset, offset + len);
        let entry = {
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
            if p.done.first() != Some(&(0, buf.len())) || !p.writing.is_empty() {
                // Our clone of the buffer goes while the lock is held: the writer that completes
                // the object must find itself its only owner.
                drop(buf);
                return None;
            }
            ix.partial.remove(&key)
        };
        drop(entry);
        // Every clone of the buffer except ours is gone: the partial entry was removed, and every
        // other writer dropped its clone in the same critical section that took its range out
        // of `writing`.
        let buf = Arc::try_unwrap(buf).ok()?;
        let slot = buf.freeze();
        let crc = crc_bulk(0, slot.bytes());
        Some(Object::new(&key, slot, crc))
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
        s.publish(Object::new(key.as_bytes(), slot.freeze(), crc));
    }

    fn finish(s: &Store, w: PartWrite, ok: bool) -> bool {
        let done = s.finish_part(w, ok);
        let complete = done.is_some();
        if let Some(o) = done {
            s.publish(o);
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

    /// The first parts of a new object, begun at the same moment on several threads (one per
    /// connection the client's staging pipeline uses), all land in one partial object: none is
    /// acknowledged into a buffer that a concurrent first part replaced.
    #[test]
    fn first_parts_begun_concurrently_join_one_partial_object() {
        const PARTS: usize = 4;
        let s = Arc::new(store(1 << 20));
        for round in 0..1000 {
            let key = format!("k{round}");
            let start = Arc::new(std::sync::Barrier::new(PARTS));
            let writers: Vec<_> = (0..PARTS)
                .map(|i| {
                    let (s, key, start) = (Arc::clone(&s), key.clone(), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        let mut w = s.begin_part(key.as_bytes(), i as u64 * 8, 8, 8 * PARTS as u64).unwrap();
                        w.bytes_mut().fill(i as u8 + 1);
                        finish(&s, w, true)
                    })
                })
                .collect();
            let completed = writers.into_iter().map(|w| w.join().unwrap()).filter(|&c| c).count();
            assert_eq!(completed, 1, "round {round}: exactly the last part completes the object");
            let o = s.get(key.as_bytes()).expect("every acknowledged part is in the object");
            let want: Vec<u8> = (0..PARTS).flat_map(|i| [i as u8 + 1; 8]).collect();
            assert_eq!(o.bytes(), &want[..], "round {round}");
        }
        for round in 0..1000 {
            assert!(s.delete(format!("k{round}").as_bytes()));
        }
        assert_eq!(s.arena().used(), 0, "no buffer of a lost race stays reserved");
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
        let old = Object::new(b"k", slot.freeze(), crc32c::crc32c(&[1u8; 10]));
        assert_eq!(s.publish_if_absent(old).bytes(), &[2u8; 10][..]);
        assert_eq!(s.get(b"k").unwrap().bytes(), &[2u8; 10][..]);
        s.delete(b"k");
        let mut slot = s.reserve(10).unwrap();
        slot.bytes_mut().fill(3);
        let promoted = Object::new(b"k", slot.freeze(), crc32c::crc32c(&[3u8; 10]));
        assert_eq!(s.publish_if_absent(promoted).bytes(), &[3u8; 10][..]);
    }

    /// The index against a plain model (a list, most recent first, with read bits) under random
    /// operations: same contents, same order, same victims, every handle's key and bytes intact
    /// after slab moves.
    #[test]
    fn the_index_matches_a_second_chance_lru_model_through_random_operations() {
        use proptest::prelude::*;
        let arena = Arena::new(1 << 20).unwrap();
        let ops = proptest::collection::vec((0u8..5, 0u8..24), 1..400);
        proptest!(ProptestConfig::with_cases(200), |(ops in ops)| {
            let mut lru = Lru::new();
            // (key, version, read since the scan passed)
            let mut model: Vec<(Vec<u8>, u8, bool)> = Vec::new();
            let mut version = 0u8;
            for (op, k) in ops {
                let key = format!("key-{k}").into_bytes();
                match op {
                    0 | 1 => {
                        version = version.wrapping_add(1);
                        let mut slot = arena.try_alloc(8).unwrap();
                        slot.bytes_mut().fill(version);
                        let old = lru.put(Object::new(&key, slot.freeze(), 0));
                        let was = model.iter().position(|(m, ..)| *m == key).map(|i| model.remove(i));
                        prop_assert_eq!(old.map(|o| o.bytes()[0]), was.map(|(_, v, _)| v));
                        model.insert(0, (key, version, false));
                    }
                    2 => {
                        let got = lru.get(&key).map(|o| o.bytes()[0]);
                        let was = model.iter_mut().find(|(m, ..)| *m == key);
                        prop_assert_eq!(got, was.as_ref().map(|(_, v, _)| *v));
                        if let Some(e) = was { e.2 = true }
                    }
                    3 => {
                        let got = lru.pop(&key).map(|o| o.bytes()[0]);
                        let was = model.iter().position(|(m, ..)| *m == key).map(|i| model.remove(i));
                        prop_assert_eq!(got, was.map(|(_, v, _)| v));
                    }
                    _ => {
                        let got = lru.pop_lru().map(|o| (o.key().to_vec(), o.bytes()[0]));
                        while model.last().is_some_and(|e| e.2) {
                            let mut e = model.pop().unwrap();
                            e.2 = false;
                            model.insert(0, e);
                        }
                        prop_assert_eq!(got, model.pop().map(|(k, v, _)| (k, v)));
                    }
                }
                prop_assert_eq!(lru.len(), model.len());
            }
            // Walk the list from the most recent end: the model's order, with intact handles.
            let mut i = lru.head;
            let mut walked = Vec::new();
            while i != NIL {
                let o = &lru.slab[i as usize];
                walked.push((o.key().to_vec(), o.bytes()[0], o.referenced().load(Ordering::Relaxed)));
                i = lru.next(i);
            }
            prop_assert_eq!(walked, model.clone());
            for (k, v, _) in &model {
                prop_assert_eq!(lru.peek(k).map(|o| o.bytes()[0]), Some(*v));
            }
        });
        assert_eq!(arena.used(), 0, "every dropped object returned its slot");
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
