//! The MR cache: a bounded, thread-safe index of the expensive NIC registrations made for ranges
//! of the memory the application registered.
//!
//! # What it owns
//!
//! Region records (what the application registered explicitly, e.g. NIXL `registerMem`) live
//! elsewhere. This module only indexes the *NIC registrations* (`V`, an RDMA memory registration
//! in production, a fake in tests) made for ranges of those regions, so that a descriptor anywhere
//! inside an already registered range is served without another `ibv_reg_mr`. It is pure: it
//! never registers, deregisters or touches hardware itself. Registration is the caller's closure;
//! deregistration is `V`'s `Drop`.
//!
//! # Invariants
//!
//! - Indexed entries never overlap and are never empty, so a lookup is one ordered-map probe
//!   (`range(..=addr).next_back()`) plus a containment check: O(log n), and the hit path neither
//!   allocates nor registers.
//! - After every operation `len() <= max_entries` and `registered_bytes() <= max_bytes`. A
//!   registration that alone exceeds the limits is returned to its caller but never indexed.
//! - The lock is never held while `register` runs, nor while a registration is dropped
//!   (deregistration can take milliseconds): removed entries are released after the lock.
//!
//! # Lifetime of a registration
//!
//! Entries are handed out as `Arc<Entry<V>>`. Eviction, replacement and invalidation only remove
//! an entry from the index; a transfer still holding the `Arc` keeps the registration alive, and
//! it is deregistered (dropped) when the last holder lets go. An evicted in-use registration
//! therefore stays pinned until its transfers finish; the byte/entry limits bound the *index*,
//! not the memory pinned by in-flight transfers. Eviction is plain LRU over indexed entries,
//! with no notion of "idle": recency is the proxy for use.
//!
//! # Design choices (and why)
//!
//! - `BTreeMap<start, Arc<Entry>>` plus an `lru::LruCache<start, ()>` for recency: O(log n)
//!   lookup, O(1) touch (Mooncake's ordered map + NCCL's containment rule; no UCX-style merging,
//!   which would make one hit depend on registrations of neighbours).
//! - One `parking_lot::Mutex` rather than an `RwLock`: every hit mutates the LRU order anyway.
//! - Two threads that miss the same range concurrently both register (neither holds the lock
//!   while registering). The first to insert wins; the second finds an indexed entry containing
//!   its request, returns that one and drops its own registration (counted in
//!   [`CacheStats::raced`]). Both lookups were misses and both registrations happened, so they
//!   are counted as such; nothing is counted twice.
//! - If [`MrCache::invalidate`] (or [`MrCache::clear`]) runs while a registration is in flight,
//!   that registration is returned to its caller but not indexed (its memory may be about to be
//!   freed); counted in [`CacheStats::uncached`].
//! - Ranges are `u64` addresses. An empty request (`len == 0`) or one whose end overflows `u64`
//!   never hits: `get` misses and `get_or_register` lets the `register` closure decide (it may
//!   return an error). A registration whose own range is empty or overflows is returned
//!   uncached.
//!
//! # Example
//!
//! ```
//! use memkv::mem::cache::MrCache;
//!
//! // At most 1024 registrations and 64 GiB registered at once.
//! let cache: MrCache<&'static str> = MrCache::new(1024, 64 << 30);
//! // A miss: the closure registers the whole region record containing the descriptor.
//! let mr = cache.get_or_register(0x1000_0100, 64, || Ok::<_, String>((0x1000_0000, 1 << 20, "mr#1")))?;
//! assert_eq!((mr.start(), mr.len(), *mr.value()), (0x1000_0000, 1 << 20, "mr#1"));
//! // Any descriptor inside that range now hits without registering.
//! let again = cache.get_or_register(0x1008_0000, 4096, || Err("not called".to_string()))?;
//! assert!(std::sync::Arc::ptr_eq(&mr, &again));
//! assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
//! # Ok::<(), String>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;
use serde::Serialize;

/// One cached registration covering `[start, start + len)`.
#[derive(Debug)]
pub struct Entry<V> {
    start: u64,
    len: u64,
    value: V,
}

impl<V> Entry<V> {
    /// First address covered.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Number of bytes covered.
    #[allow(clippy::len_without_is_empty)] // indexed entries are never empty
    pub fn len(&self) -> u64 {
        self.len
    }

    /// One past the last address covered (saturates at `u64::MAX` for a range that overflows;
    /// such an entry is never indexed).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// The registration itself (the NIC MRs in production).
    pub fn value(&self) -> &V {
        &self.value
    }

    /// Whether `[addr, addr + len)` lies entirely inside this entry. An empty or overflowing
    /// range is never contained (it names no memory a transfer could use).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match (range_end(addr, len), range_end(self.start, self.len)) {
            (Some(end), Some(own_end)) => addr >= self.start && end <= own_end,
            _ => false,
        }
    }
}

/// End of a non-empty, non-overflowing range; `None` otherwise.
fn range_end(addr: u64, len: u64) -> Option<u64> {
    if len == 0 { None } else { addr.checked_add(len) }
}

/// A snapshot of the cache's counters and occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CacheStats {
    /// Lookups answered by an indexed entry.
    pub hits: u64,
    /// Lookups that found no containing entry (including empty or overflowing requests).
    pub misses: u64,
    /// Successful `register` calls.
    pub registrations: u64,
    /// `register` calls that returned an error.
    pub register_errors: u64,
    /// Total time spent in `register` calls (successful or not), in nanoseconds.
    pub register_nanos: u64,
    /// Entries removed to respect `max_entries` / `max_bytes` (LRU first).
    pub evictions: u64,
    /// Entries removed because a new registration overlapped them.
    pub replaced: u64,
    /// Entries removed by [`MrCache::invalidate`] or [`MrCache::clear`].
    pub invalidations: u64,
    /// Registrations discarded because a concurrent miss had already indexed a containing entry.
    pub raced: u64,
    /// Registrations returned to the caller but not indexed (too large for the limits, an empty
    /// or overflowing range, or an invalidation ran while they were being made).
    pub uncached: u64,
    /// Entries indexed now.
    pub entries: u64,
    /// Bytes covered by the indexed entries now.
    pub registered_bytes: u64,
    /// Limit on indexed entries.
    pub max_entries: u64,
    /// Limit on indexed bytes.
    pub max_bytes: u64,
}

impl CacheStats {
    /// Fraction of lookups that hit, in `[0, 1]`; 0 before the first lookup.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 { 0.0 } else { self.hits as f64 / lookups as f64 }
    }

    /// Total time spent registering.
    pub fn register_time(&self) -> Duration {
        Duration::from_nanos(self.register_nanos)
    }
}

/// A bounded, thread-safe cache of registrations `V` indexed by address range.
///
/// See the [module documentation](self) for the semantics and an example.
pub struct MrCache<V> {
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    /// Indexed entries by start address; never overlapping, never empty.
    index: BTreeMap<u64, Arc<Entry<V>>>,
    /// Recency of the indexed entries (keyed by start), most recent first.
    lru: LruCache<u64, ()>,
    /// Bumped by every invalidation, so registrations in flight across one are not indexed.
    epoch: u64,
    max_entries: usize,
    max_bytes: u64,
    stats: CacheStats,
}

impl<V> fmt::Debug for MrCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MrCache").field("stats", &self.stats()).finish()
    }
}

impl<V> MrCache<V> {
    /// An empty cache indexing at most `max_entries` registrations covering at most `max_bytes`
    /// bytes in total (`usize::MAX` / `u64::MAX` for no limit).
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                index: BTreeMap::new(),
                lru: LruCache::unbounded(),
                epoch: 0,
                max_entries,
                max_bytes,
                stats: CacheStats::default(),
            }),
        }
    }

    /// The indexed entry containing `[addr, addr + len)`, marked most recently used; counts a
    /// hit or a miss. Never allocates or registers. An empty or overflowing range misses.
    pub fn get(&self, addr: u64, len: u64) -> Option<Arc<Entry<V>>> {
        self.inner.lock().lookup(addr, len)
    }

    /// The indexed entry containing `[addr, addr + len)` (a hit), or else the registration made
    /// by `register`, indexed (a miss).
    ///
    /// `register` runs without the cache's lock held and returns `(start, len, value)`; the range
    /// should contain the requested one (typically the whole region record around it; checked by a
    /// debug assertion, and in release a range that does not is indexed as returned, so the
    /// request simply misses again next time). On a miss
    /// the new entry replaces every indexed entry it overlaps, then least recently used entries
    /// are evicted until the limits hold again (never the new one). A registration that cannot
    /// be indexed (see [`CacheStats::uncached`]) is still returned. Errors from `register` are
    /// returned as is and leave the cache unchanged.
    pub fn get_or_register<E>(
        &self,
        addr: u64,
        len: u64,
        register: impl FnOnce() -> Result<(u64, u64, V), E>,
    ) -> Result<Arc<Entry<V>>, E> {
        let epoch = {
            let mut inner = self.inner.lock();
            if let Some(hit) = inner.lookup(addr, len) {
                return Ok(hit);
            }
            inner.epoch
        };

        let began = Instant::now();
        let registered = register();
        let nanos = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);

        let (start, reg_len, value) = match registered {
            Ok(r) => r,
            Err(e) => {
                let mut inner = self.inner.lock();
                inner.stats.register_nanos = inner.stats.register_nanos.saturating_add(nanos);
                inner.stats.register_errors += 1;
                return Err(e);
            }
        };
        let entry = Arc::new(Entry { start, len: reg_len, value });
        debug_assert!(
            range_end(addr, len).is_none() || entry.contains(addr, len),
            "register returned [{start:#x}, +{reg_len:#x}) which does not contain the request [{addr:#x}, +{len:#x})"
        );

        // Entries removed from the index are dropped (deregistered) after the lock is released.
        let (result, _removed) = self.inner.lock().insert(addr, len, entry, epoch, nanos);
        Ok(result)
    }

    /// Removes every indexed entry overlapping `[addr, addr + len)` and returns how many were
    /// removed. Call it when a region record is deregistered (its memory may be freed next).
    /// Holders of removed entries keep them alive until they drop them; registrations in flight
    /// when this runs are not indexed.
    pub fn invalidate(&self, addr: u64, len: u64) -> usize {
        let removed = {
            let mut inner = self.inner.lock();
            inner.epoch += 1;
            let removed = match range_end(addr, len) {
                Some(end) => inner.remove_overlapping(addr, end),
                // An overflowing range reaches the top of the address space.
                None if len != 0 => inner.remove_overlapping(addr, u64::MAX),
                None => Vec::new(),
            };
            inner.stats.invalidations += removed.len() as u64;
            removed
        };
        removed.len()
    }

    /// Removes every indexed entry (e.g. before a device reset or after `fork`); returns how many.
    pub fn clear(&self) -> usize {
        let removed: Vec<_> = {
            let mut inner = self.inner.lock();
            inner.epoch += 1;
            inner.lru.clear();
            let index = std::mem::take(&mut inner.index);
            inner.stats.invalidations += index.len() as u64;
            inner.stats.entries = 0;
            inner.stats.registered_bytes = 0;
            index.into_values().collect()
        };
        removed.len()
    }

    /// Changes the limits and evicts least recently used entries until they hold.
    pub fn set_limits(&self, max_entries: usize, max_bytes: u64) {
        let _removed = {
            let mut inner = self.inner.lock();
            inner.max_entries = max_entries;
            inner.max_bytes = max_bytes;
            inner.evict_to_limits(0, 0)
        };
    }

    /// A snapshot of the counters, occupancy and limits.
    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.lock();
        CacheStats { max_entries: inner.max_entries as u64, max_bytes: inner.max_bytes, ..inner.stats }
    }

    /// Number of indexed entries.
    pub fn len(&self) -> usize {
        self.inner.lock().index.len()
    }

    /// Whether no entry is indexed.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().index.is_empty()
    }

    /// Bytes covered by the indexed entries.
    pub fn registered_bytes(&self) -> u64 {
        self.inner.lock().stats.registered_bytes
    }

    /// `(start, len)` of the indexed entries, least recently used first.
    #[cfg(test)]
    fn snapshot_lru(&self) -> Vec<(u64, u64)> {
        let inner = self.inner.lock();
        inner.lru.iter().rev().map(|(start, ())| (*start, inner.index[start].len)).collect()
    }
}

impl<V> Inner<V> {
    fn lookup(&mut self, addr: u64, len: u64) -> Option<Arc<Entry<V>>> {
        match self.containing(addr, len) {
            Some(entry) => {
                let entry = Arc::clone(entry);
                self.lru.promote(&entry.start);
                self.stats.hits += 1;
                Some(entry)
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// The indexed entry containing `[addr, addr + len)`, without touching recency or counters.
    fn containing(&self, addr: u64, len: u64) -> Option<&Arc<Entry<V>>> {
        range_end(addr, len)?;
        // Entries never overlap, so the only candidate is the last one starting at or before addr.
        let (_, entry) = self.index.range(..=addr).next_back()?;
        entry.contains(addr, len).then_some(entry)
    }

    /// Indexes a fresh registration for the request `[addr, addr + len)` made while the epoch was
    /// `epoch`. Returns the entry to hand out and the entries removed from the index (or the
    /// discarded registration), to be dropped once the lock is released.
    fn insert(
        &mut self,
        addr: u64,
        len: u64,
        entry: Arc<Entry<V>>,
        epoch: u64,
        register_nanos: u64,
    ) -> (Arc<Entry<V>>, Vec<Arc<Entry<V>>>) {
        self.stats.registrations += 1;
        self.stats.register_nanos = self.stats.register_nanos.saturating_add(register_nanos);

        // Lost a race with a concurrent miss: use the entry it indexed and drop ours.
        if let Some(existing) = self.containing(addr, len) {
            let existing = Arc::clone(existing);
            self.lru.promote(&existing.start);
            self.stats.raced += 1;
            return (existing, vec![entry]);
        }

        let Some(end) = range_end(entry.start, entry.len) else {
            self.stats.uncached += 1;
            return (entry, Vec::new());
        };
        if epoch != self.epoch || self.max_entries == 0 || entry.len > self.max_bytes {
            self.stats.uncached += 1;
            return (entry, Vec::new());
        }

        let mut removed = self.remove_overlapping(entry.start, end);
        self.stats.replaced += removed.len() as u64;
        removed.extend(self.evict_to_limits(1, entry.len));

        self.index.insert(entry.start, Arc::clone(&entry));
        self.lru.put(entry.start, ());
        self.stats.entries += 1;
        self.stats.registered_bytes += entry.len;
        (entry, removed)
    }

    /// Removes every indexed entry overlapping `[start, end)` (`start < end`).
    fn remove_overlapping(&mut self, start: u64, end: u64) -> Vec<Arc<Entry<V>>> {
        let mut removed = Vec::new();
        // Entries are disjoint and sorted, so their ends are sorted too: walk back from the last
        // one starting before `end` while they still reach past `start`.
        while let Some((&key, entry)) = self.index.range(..end).next_back() {
            if entry.end() <= start {
                break;
            }
            removed.extend(self.unindex(key));
        }
        removed
    }

    /// Evicts least recently used entries until `extra_entries` more entries covering
    /// `extra_bytes` more bytes fit within the limits (the caller checked that they fit alone).
    fn evict_to_limits(&mut self, extra_entries: usize, extra_bytes: u64) -> Vec<Arc<Entry<V>>> {
        let mut removed = Vec::new();
        while self.index.len().saturating_add(extra_entries) > self.max_entries
            || self.stats.registered_bytes.saturating_add(extra_bytes) > self.max_bytes
        {
            let Some((&key, ())) = self.lru.peek_lru() else { break };
            removed.extend(self.unindex(key));
            self.stats.evictions += 1;
        }
        removed
    }

    /// Removes the entry starting at `key` from the index, the recency list and the occupancy.
    fn unindex(&mut self, key: u64) -> Option<Arc<Entry<V>>> {
        self.lru.pop(&key);
        let entry = self.index.remove(&key)?;
        self.stats.entries -= 1;
        self.stats.registered_bytes -= entry.len;
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Barrier, mpsc};
    use std::thread;

    use proptest::prelude::*;

    use super::*;

    /// A fake registration that counts how many times it was deregistered (dropped).
    #[derive(Debug)]
    struct FakeMr {
        id: u64,
        drops: Arc<AtomicUsize>,
    }

    impl Drop for FakeMr {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Registers `[start, start + len)` with value `id` for the request `[addr, addr + len)`.
    fn reg(cache: &MrCache<u64>, addr: u64, len: u64, start: u64, reg_len: u64, id: u64) -> Arc<Entry<u64>> {
        match cache.get_or_register(addr, len, || Ok::<_, Infallible>((start, reg_len, id))) {
            Ok(entry) => entry,
            Err(never) => match never {},
        }
    }

    /// A registration for the whole region `[start, start + len)`, requested at its start.
    fn region(cache: &MrCache<u64>, start: u64, len: u64, id: u64) -> Arc<Entry<u64>> {
        reg(cache, start, 1, start, len, id)
    }

    fn unbounded<V>() -> MrCache<V> {
        MrCache::new(usize::MAX, u64::MAX)
    }

    #[test]
    fn descriptor_anywhere_inside_a_registered_region_hits() {
        let cache = unbounded();
        region(&cache, 0x1000, 0x1000, 7);
        for (addr, len) in [(0x1000, 1), (0x1000, 0x1000), (0x1800, 0x10), (0x1fff, 1), (0x1234, 0xdcc)] {
            let hit = cache.get(addr, len).map(|e| *e.value());
            assert_eq!(hit, Some(7), "[{addr:#x}, +{len:#x}) should hit");
        }
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.registrations), (5, 1, 1));
    }

    #[test]
    fn descriptor_just_outside_either_end_misses() {
        let cache = unbounded();
        region(&cache, 0x1000, 0x1000, 7);
        for (addr, len) in [(0xfff, 1), (0xfff, 2), (0x2000, 1), (0x1fff, 2), (0xfff, 0x1002), (0, 0x10000)] {
            assert!(cache.get(addr, len).is_none(), "[{addr:#x}, +{len:#x}) should miss");
        }
        assert_eq!(cache.stats().misses, 7);
    }

    #[test]
    fn adjacent_regions_resolve_to_their_own_entry() {
        let cache = unbounded();
        region(&cache, 0x1000, 0x1000, 1);
        region(&cache, 0x2000, 0x1000, 2);
        assert_eq!(cache.len(), 2, "adjacent ranges do not overlap and are both kept");
        assert_eq!(cache.get(0x1fff, 1).map(|e| *e.value()), Some(1));
        assert_eq!(cache.get(0x2000, 1).map(|e| *e.value()), Some(2));
        assert!(cache.get(0x1fff, 2).is_none(), "a request straddling two entries is contained by neither");
        assert_eq!(cache.stats().replaced, 0);
    }

    #[test]
    fn overlapping_registration_replaces_indexed_entries() {
        let cache = unbounded();
        region(&cache, 0x1000, 0x100, 1);
        region(&cache, 0x1200, 0x100, 2);
        region(&cache, 0x1400, 0x100, 3);
        region(&cache, 0x2000, 0x100, 4);
        // A miss straddling 1 and 2 registers a range overlapping 1, 2 and the start of 3.
        let big = reg(&cache, 0x10f0, 0x20, 0x1080, 0x400, 5);
        assert_eq!((big.start(), big.end()), (0x1080, 0x1480));
        assert_eq!(cache.snapshot_lru(), vec![(0x2000, 0x100), (0x1080, 0x400)]);
        assert_eq!(cache.stats().replaced, 3);
        assert_eq!(cache.registered_bytes(), 0x500);
        assert!(cache.get(0x1000, 1).is_none(), "the replaced entry's uncovered head is gone");
        assert_eq!(cache.get(0x1450, 0x30).map(|e| *e.value()), Some(5));
    }

    #[test]
    fn lru_evicts_least_recently_used_when_over_max_entries() {
        let cache = MrCache::new(3, u64::MAX);
        for i in 0..3 {
            region(&cache, i * 0x1000, 0x100, i);
        }
        assert!(cache.get(0, 1).is_some()); // order now 1, 2, 0
        region(&cache, 0x3000, 0x100, 3);
        assert_eq!(cache.snapshot_lru(), vec![(0x2000, 0x100), (0, 0x100), (0x3000, 0x100)]);
        region(&cache, 0x4000, 0x100, 4);
        assert_eq!(cache.snapshot_lru(), vec![(0, 0x100), (0x3000, 0x100), (0x4000, 0x100)]);
        assert_eq!(cache.stats().evictions, 2);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn lru_evicts_least_recently_used_until_under_max_bytes() {
        let cache = MrCache::new(usize::MAX, 300);
        region(&cache, 0x0000, 100, 0);
        region(&cache, 0x1000, 100, 1);
        region(&cache, 0x2000, 100, 2);
        assert!(cache.get(0x0010, 1).is_some()); // order now 1, 2, 0
        // 150 more bytes need two evictions: 1 then 2.
        region(&cache, 0x3000, 150, 3);
        assert_eq!(cache.snapshot_lru(), vec![(0, 100), (0x3000, 150)]);
        assert_eq!(cache.registered_bytes(), 250);
        assert_eq!(cache.stats().evictions, 2);
    }

    #[test]
    fn registration_larger_than_the_limits_is_returned_but_not_indexed() {
        let cache = MrCache::new(4, 1000);
        region(&cache, 0, 600, 0);
        let big = region(&cache, 0x10000, 1001, 1);
        assert_eq!(*big.value(), 1, "the caller still gets its registration");
        assert_eq!(cache.snapshot_lru(), vec![(0, 600)], "nothing was evicted for it");
        let s = cache.stats();
        assert_eq!((s.uncached, s.evictions, s.registrations), (1, 0, 2));

        let none = MrCache::new(0, u64::MAX);
        assert_eq!(*region(&none, 0, 10, 9).value(), 9);
        assert!(none.is_empty());
    }

    #[test]
    fn set_limits_shrinks_immediately_in_lru_order() {
        let cache = MrCache::new(10, 10_000);
        for i in 0..5 {
            region(&cache, i * 0x1000, 100, i);
        }
        assert!(cache.get(0, 1).is_some()); // order now 1, 2, 3, 4, 0
        cache.set_limits(3, 10_000);
        assert_eq!(cache.snapshot_lru(), vec![(0x3000, 100), (0x4000, 100), (0, 100)]);
        cache.set_limits(10, 150);
        assert_eq!(cache.snapshot_lru(), vec![(0, 100)]);
        let s = cache.stats();
        assert_eq!((s.evictions, s.entries, s.registered_bytes, s.max_entries, s.max_bytes), (4, 1, 100, 10, 150));
        cache.set_limits(0, 0);
        assert!(cache.is_empty());
        assert_eq!(cache.registered_bytes(), 0);
    }

    #[test]
    fn invalidate_removes_overlapping_entries_only() {
        let cache = unbounded();
        region(&cache, 0x1000, 0x100, 1);
        region(&cache, 0x1100, 0x100, 2);
        region(&cache, 0x1200, 0x100, 3);
        region(&cache, 0x1300, 0x100, 4);
        assert_eq!(cache.invalidate(0x1000, 0), 0, "an empty range overlaps nothing");
        assert_eq!(cache.invalidate(0x1100, 0x100), 1, "exactly entry 2, not its neighbours");
        assert_eq!(cache.invalidate(0x12ff, 2), 2, "one byte of 3 and one of 4");
        assert_eq!(cache.snapshot_lru(), vec![(0x1000, 0x100)]);
        assert_eq!(cache.invalidate(0x0, 0x1000), 0, "ends where entry 1 starts");
        assert_eq!(cache.invalidate(0xfff, u64::MAX), 1, "an overflowing range reaches the top");
        assert!(cache.is_empty());
        assert_eq!(cache.stats().invalidations, 4);
    }

    #[test]
    fn evicted_entry_held_by_a_transfer_stays_registered_until_released() {
        let drops = Arc::new(AtomicUsize::new(0));
        let cache = MrCache::new(1, u64::MAX);
        let mr = |id| {
            let drops = Arc::clone(&drops);
            move || Ok::<_, Infallible>((id * 0x1000, 0x1000, FakeMr { id, drops }))
        };
        let in_flight = cache.get_or_register(0, 1, mr(0)).ok();
        let _ = cache.get_or_register(0x1000, 1, mr(1)); // evicts 0; its handle is dropped here
        assert!(cache.get(0, 1).is_none(), "0 is no longer indexed");
        assert_eq!(drops.load(Ordering::SeqCst), 0, "0 is still held by the transfer in flight");
        assert_eq!(in_flight.as_ref().map(|e| e.value().id), Some(0));
        drop(in_flight);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "deregistered when the last holder let go");
        assert_eq!(cache.invalidate(0x1000, 1), 1);
        assert_eq!(drops.load(Ordering::SeqCst), 2, "an unheld entry is deregistered on removal");
    }

    /// A registration that records, when dropped, whether the cache's lock was free.
    struct LockProbe {
        cache: Arc<std::sync::OnceLock<std::sync::Weak<MrCache<LockProbe>>>>,
        dropped_unlocked: Arc<AtomicUsize>,
    }

    impl Drop for LockProbe {
        fn drop(&mut self) {
            let cache = self.cache.get().and_then(|w| w.upgrade());
            if cache.is_some_and(|c| c.inner.try_lock().is_some()) {
                self.dropped_unlocked.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn registrations_are_released_after_the_lock_is_dropped() {
        let cache = Arc::new(MrCache::new(2, u64::MAX));
        let slot = Arc::new(std::sync::OnceLock::new());
        assert!(slot.set(Arc::downgrade(&cache)).is_ok());
        let unlocked = Arc::new(AtomicUsize::new(0));
        let probe = |start: u64, len: u64| {
            let (cache, dropped_unlocked) = (Arc::clone(&slot), Arc::clone(&unlocked));
            move || Ok::<_, Infallible>((start, len, LockProbe { cache, dropped_unlocked }))
        };
        let get = |addr: u64, len: u64, reg_len: u64| {
            let _ = cache.get_or_register(addr, len, probe(addr, reg_len));
        };
        get(0x1000, 0x10, 0x100);
        get(0x10f8, 0x10, 0x100); // misses, overlaps and replaces the first
        get(0x2000, 0x10, 0x100);
        get(0x3000, 0x10, 0x100); // evicts the LRU one
        cache.set_limits(1, u64::MAX); // evicts another
        assert_eq!(cache.invalidate(0x3000, 1), 1);
        get(0x4000, 0x10, 0x100);
        assert_eq!(cache.clear(), 1);
        // A registration discarded after losing a race: the closure itself indexes a containing entry first.
        let _ = cache.get_or_register(0x6010, 0x10, || {
            get(0x6000, 0x10, 0x100);
            probe(0x6000, 0x100)()
        });
        let s = cache.stats();
        assert_eq!((s.replaced, s.evictions, s.invalidations, s.raced), (1, 2, 2, 1), "every release path ran");
        assert_eq!(unlocked.load(Ordering::SeqCst), 6, "every release ran without the lock held");
    }

    #[test]
    fn stats_count_hits_misses_and_time_spent_registering() {
        let cache = unbounded();
        let slow = |start| {
            move || {
                thread::sleep(Duration::from_millis(5));
                Ok::<_, Infallible>((start, 0x1000, start))
            }
        };
        for addr in [0x1000, 0x1010, 0x1ff0, 0x5000, 0x5008] {
            let _ = cache.get_or_register(addr, 8, slow(addr & !0xfff));
        }
        let failed = cache.get_or_register(0x9000, 8, || {
            thread::sleep(Duration::from_millis(5));
            Err::<(u64, u64, u64), _>("no memory")
        });
        assert_eq!(failed.err(), Some("no memory"));
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.registrations, s.register_errors), (3, 3, 2, 1));
        assert!(s.register_time() >= Duration::from_millis(15), "{:?}", s.register_time());
        assert_eq!((s.entries, s.registered_bytes), (2, 0x2000));
        assert!((s.hit_rate() - 0.5).abs() < 1e-9);
        assert_eq!(CacheStats::default().hit_rate(), 0.0);
        let json = serde_json::to_value(s).unwrap_or_default();
        assert_eq!(json["registrations"], 2);
    }

    #[test]
    fn empty_and_overflowing_requests_never_hit_and_the_registrar_decides() {
        let cache = unbounded();
        region(&cache, u64::MAX - 0x1000, 0x1000, 1);
        assert!(cache.get(u64::MAX - 0x800, 0x10).is_some());
        assert!(cache.get(u64::MAX - 0x800, 0).is_none(), "an empty range never hits");
        assert!(cache.get(u64::MAX - 0x800, u64::MAX).is_none(), "an overflowing range never hits");
        let refused = cache.get_or_register(u64::MAX, 2, || Err::<(u64, u64, u64), _>("range overflows"));
        assert_eq!(refused.err(), Some("range overflows"));
        // A registration whose own range overflows or is empty is returned but not indexed.
        let odd = reg(&cache, 5, 0, u64::MAX, 2, 2);
        let empty = reg(&cache, 5, 0, 5, 0, 3);
        assert_eq!((*odd.value(), *empty.value()), (2, 3));
        assert!(!odd.contains(u64::MAX, 1) && !empty.contains(5, 0));
        assert_eq!(cache.len(), 1);
        let s = cache.stats();
        assert_eq!((s.misses, s.uncached, s.register_errors), (6, 2, 1));
    }

    #[test]
    fn registration_racing_an_invalidation_is_not_indexed() {
        let cache = unbounded();
        // The closure runs without the lock held, so it can call back into the cache.
        let entry = reg_with(&cache, 0x1000, 8, || {
            assert_eq!(cache.invalidate(0x1000, 0x1000), 0);
            (0x1000, 0x1000, 1)
        });
        assert_eq!(*entry.value(), 1);
        assert!(cache.is_empty(), "the memory may be freed: do not cache it");
        assert_eq!(cache.stats().uncached, 1);
        region(&cache, 0x1000, 0x1000, 2);
        assert_eq!(cache.len(), 1, "later registrations are cached again");
    }

    fn reg_with(cache: &MrCache<u64>, addr: u64, len: u64, f: impl FnOnce() -> (u64, u64, u64)) -> Arc<Entry<u64>> {
        match cache.get_or_register(addr, len, || Ok::<_, Infallible>(f())) {
            Ok(entry) => entry,
            Err(never) => match never {},
        }
    }

    #[test]
    fn concurrent_misses_of_one_range_leave_one_entry_and_consistent_stats() {
        const THREADS: usize = 8;
        let cache = Arc::new(MrCache::new(16, u64::MAX));
        let drops = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(THREADS));
        let (tx, rx) = mpsc::channel();
        let workers: Vec<_> = (0..THREADS as u64)
            .map(|i| {
                let (cache, drops, barrier, tx) = (cache.clone(), drops.clone(), barrier.clone(), tx.clone());
                thread::spawn(move || {
                    barrier.wait();
                    let got = cache.get_or_register(0x10_0000 + i * 64, 64, move || {
                        thread::sleep(Duration::from_millis(20));
                        Ok::<_, Infallible>((0x10_0000, 0x1_0000, FakeMr { id: i, drops }))
                    });
                    let _ = tx.send(got.ok());
                })
            })
            .collect();
        drop(tx);
        for w in workers {
            assert!(w.join().is_ok(), "worker panicked");
        }
        let got: Vec<_> = rx.iter().flatten().collect();
        assert_eq!(got.len(), THREADS);
        assert!(got.iter().all(|e| Arc::ptr_eq(e, &got[0])), "every thread got the indexed entry");

        let s = cache.stats();
        assert_eq!(cache.len(), 1);
        assert!((1..=THREADS as u64).contains(&s.registrations), "{s:?}");
        assert_eq!(s.hits + s.misses, THREADS as u64);
        assert_eq!(s.misses, s.registrations, "each miss registered once");
        assert_eq!(s.raced, s.registrations - 1, "all but the first insert lost the race");
        assert_eq!((s.replaced, s.evictions, s.uncached, s.registered_bytes), (0, 0, 0, 0x1_0000));
        assert_eq!(drops.load(Ordering::SeqCst) as u64, s.raced, "the losers' registrations were released");
        drop(got);
        assert_eq!(cache.clear(), 1);
        assert_eq!(drops.load(Ordering::SeqCst) as u64, s.registrations);
    }

    #[test]
    fn ten_thousand_regions_each_lookup_hits_its_own_entry() {
        const N: u64 = 10_000;
        let cache = unbounded();
        // Regions of varying size separated by gaps, registered in a scrambled order.
        let start = |i: u64| 0x7f00_0000_0000 + i * 0x10_0000;
        let len = |i: u64| 0x1000 * (1 + i % 64);
        for k in 0..N {
            let i = (k * 7919) % N;
            region(&cache, start(i), len(i), i);
        }
        assert_eq!(cache.len(), N as usize);
        for i in 0..N {
            let (s, l) = (start(i), len(i));
            for (addr, n) in [(s, 1), (s, l), (s + l / 2, l / 2), (s + l - 1, 1)] {
                assert_eq!(cache.get(addr, n).map(|e| *e.value()), Some(i), "[{addr:#x}, +{n:#x})");
            }
            assert!(cache.get(s - 1, 1).is_none() && cache.get(s + l, 1).is_none());
        }
        let st = cache.stats();
        assert_eq!((st.hits, st.misses), (4 * N, N + 2 * N));
    }

    // ---- model-based property test ----

    #[derive(Debug, Clone)]
    enum Op {
        /// `get_or_register` whose registrar covers `before` bytes below and `after` above.
        Access {
            addr: u64,
            len: u64,
            before: u64,
            after: u64,
        },
        Get {
            addr: u64,
            len: u64,
        },
        Invalidate {
            addr: u64,
            len: u64,
        },
        SetLimits {
            max_entries: usize,
            max_bytes: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..2_000u64, 0..64u64, 0..128u64, 0..128u64)
                .prop_map(|(addr, len, before, after)| Op::Access { addr, len, before: before.min(addr), after }),
            3 => (0..2_100u64, 0..64u64).prop_map(|(addr, len)| Op::Get { addr, len }),
            1 => (0..2_100u64, 0..300u64).prop_map(|(addr, len)| Op::Invalidate { addr, len }),
            1 => (0..12usize, 0..1_500u64).prop_map(|(max_entries, max_bytes)| Op::SetLimits { max_entries, max_bytes }),
        ]
    }

    /// The obviously correct cache: a Vec in LRU order (least recent first), linear scans.
    #[derive(Debug, Default)]
    struct Model {
        entries: Vec<(u64, u64)>,
        max_entries: usize,
        max_bytes: u64,
        stats: CacheStats,
    }

    impl Model {
        fn lookup(&mut self, addr: u64, len: u64) -> Option<(u64, u64)> {
            let i =
                (len > 0).then(|| self.entries.iter().position(|&(s, l)| s <= addr && addr + len <= s + l)).flatten();
            match i {
                Some(i) => {
                    self.stats.hits += 1;
                    let e = self.entries.remove(i);
                    self.entries.push(e);
                    Some(e)
                }
                None => {
                    self.stats.misses += 1;
                    None
                }
            }
        }

        fn bytes(&self) -> u64 {
            self.entries.iter().map(|e| e.1).sum()
        }

        fn insert(&mut self, s: u64, l: u64) {
            self.stats.registrations += 1;
            if l == 0 || self.max_entries == 0 || l > self.max_bytes {
                self.stats.uncached += 1;
                return;
            }
            let before = self.entries.len();
            self.entries.retain(|&(es, el)| es + el <= s || s + l <= es);
            self.stats.replaced += (before - self.entries.len()) as u64;
            self.shrink(1, l);
            self.entries.push((s, l));
        }

        fn shrink(&mut self, extra: usize, extra_bytes: u64) {
            while !self.entries.is_empty()
                && (self.entries.len() + extra > self.max_entries || self.bytes() + extra_bytes > self.max_bytes)
            {
                self.entries.remove(0);
                self.stats.evictions += 1;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn cache_matches_a_naive_model(max_entries in 0..10usize, max_bytes in 0..1_200u64,
                                       ops in proptest::collection::vec(op(), 1..120)) {
            let cache = MrCache::new(max_entries, max_bytes);
            let mut model = Model { max_entries, max_bytes, ..Model::default() };
            for op in ops {
                match op {
                    Op::Access { addr, len, before, after } => {
                        let (s, l) = (addr - before, before + len + after);
                        let got = reg(&cache, addr, len, s, l, addr);
                        let want = model.lookup(addr, len).unwrap_or_else(|| { model.insert(s, l); (s, l) });
                        prop_assert_eq!((got.start(), got.len()), want);
                    }
                    Op::Get { addr, len } => {
                        let got = cache.get(addr, len).map(|e| (e.start(), e.len()));
                        prop_assert_eq!(got, model.lookup(addr, len));
                    }
                    Op::Invalidate { addr, len } => {
                        let before = model.entries.len();
                        model.entries.retain(|&(s, l)| len == 0 || s + l <= addr || addr + len <= s);
                        let removed = before - model.entries.len();
                        model.stats.invalidations += removed as u64;
                        prop_assert_eq!(cache.invalidate(addr, len), removed);
                    }
                    Op::SetLimits { max_entries, max_bytes } => {
                        cache.set_limits(max_entries, max_bytes);
                        (model.max_entries, model.max_bytes) = (max_entries, max_bytes);
                        model.shrink(0, 0);
                    }
                }
                let snapshot = cache.snapshot_lru();
                prop_assert_eq!(&snapshot, &model.entries);
                let mut sorted = snapshot.clone();
                sorted.sort_unstable();
                prop_assert!(sorted.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "overlap in {:?}", sorted);
                let s = cache.stats();
                prop_assert!(s.entries as usize == snapshot.len() && s.entries <= s.max_entries);
                prop_assert!(s.registered_bytes == model.bytes() && s.registered_bytes <= s.max_bytes);
                let m = &model.stats;
                prop_assert_eq!(
                    (s.hits, s.misses, s.registrations, s.evictions, s.replaced, s.invalidations, s.uncached, s.raced),
                    (m.hits, m.misses, m.registrations, m.evictions, m.replaced, m.invalidations, m.uncached, 0)
                );
            }
        }
    }
}
