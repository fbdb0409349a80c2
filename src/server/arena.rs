//! The DRAM arena: one pre-allocated anonymous mapping that holds every object's bytes, and the
//! allocator that hands out ranges of it.
//!
//! Owns: the mapping, the free list, and the two views of a range — [`SlotMut`] (exclusive,
//! not yet visible: bytes are received from the socket straight into it) and [`Slot`] (frozen,
//! shared through `Arc`: bytes are sent from it). A range returns to the free list only when its
//! last `Slot`/`SlotMut`/[`PartialBuf`] is dropped, so memory under an in-flight read is never
//! reused. The mapping is made once so that a later transport can register it once as an RDMA
//! memory region.
//!
//! Invariants: ranges handed out never overlap; a `SlotMut` is the only handle to its range;
//! a `Slot` is never written; a `PartialBuf` is written only through ranges that the store has
//! checked to be disjoint from every other in-flight write (see [`PartialBuf::range_mut`]).

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;
use parking_lot::Mutex;

use crate::par;

/// Allocation granularity: objects start on a cache line.
const ALIGN: u64 = 64;
/// The largest allocation (2^32 - 1 units of [`ALIGN`]: just under 256 GiB).
pub(crate) const MAX_ALLOC: u64 = u32::MAX as u64 * ALIGN;

/// Best-fit free list over `[0, capacity)`, coalescing neighbours on free.
#[derive(Debug)]
struct FreeList {
    by_off: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
}

impl FreeList {
    fn new(capacity: u64) -> Self {
        let mut f = Self { by_off: BTreeMap::new(), by_size: BTreeSet::new() };
        if capacity > 0 {
            f.insert(0, capacity);
        }
        f
    }

    fn insert(&mut self, off: u64, len: u64) {
        self.by_off.insert(off, len);
        self.by_size.insert((len, off));
    }

    fn remove(&mut self, off: u64, len: u64) {
        self.by_off.remove(&off);
        self.by_size.remove(&(len, off));
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        let &(flen, off) = self.by_size.range((len, 0)..).next()?;
        self.remove(off, flen);
        if flen > len {
            self.insert(off + len, flen - len);
        }
        Some(off)
    }

    fn free(&mut self, mut off: u64, mut len: u64) {
        if let Some((&poff, &plen)) = self.by_off.range(..off).next_back()
            && poff + plen == off
        {
            self.remove(poff, plen);
            off = poff;
            len += plen;
        }
        if let Some(&nlen) = self.by_off.get(&(off + len)) {
            self.remove(off + len, nlen);
            len += nlen;
        }
        self.insert(off, len);
    }

    fn largest(&self) -> u64 {
        self.by_size.iter().next_back().map_or(0, |&(l, _)| l)
    }
}

/// The arena. Shared by every slot through `Arc`.
pub(crate) struct Arena {
    map: UnsafeCell<MmapMut>,
    /// The memfd behind the mapping, when the arena is shared with same-host clients.
    file: Option<std::fs::File>,
    capacity: u64,
    free: Mutex<FreeList>,
    used: AtomicU64,
}

// SAFETY: the mapping is only accessed through slots, and the slot types enforce the aliasing
// rules stated in the module doc (one writer per range, no writer for frozen ranges). The free
// list is behind a mutex and `used` is atomic.
unsafe impl Sync for Arena {}
// SAFETY: as above; the mapping is plain memory owned by this value.
unsafe impl Send for Arena {}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("capacity", &self.capacity).field("used", &self.used()).finish()
    }
}

impl Arena {
    /// Maps `capacity` bytes of anonymous memory (committed lazily by the kernel).
    pub(crate) fn new(capacity: u64) -> std::io::Result<Arc<Self>> {
        Self::create(capacity, None)
    }

    /// Maps `capacity` bytes of a memfd that same-host clients can map too (the shared-memory
    /// transport).
    pub(crate) fn shared(capacity: u64) -> std::io::Result<Arc<Self>> {
        Self::create(capacity, Some(crate::transport::shm::memfd(capacity.max(1))?))
    }

    fn create(capacity: u64, file: Option<std::fs::File>) -> std::io::Result<Arc<Self>> {
        let len = usize::try_from(capacity).map_err(|_| std::io::Error::other("arena size does not fit in memory"))?;
        let map = match &file {
            // SAFETY: the memfd is this arena's alone; other processes that map it write only
            // reserved ranges (the trust model of docs/security.md), and readers check CRCs.
            Some(f) => unsafe { MmapMut::map_mut(f)? },
            None => MmapMut::map_anon(len.max(1))?,
        };
        // Transparent huge pages where the kernel offers them (`madvise` mode): 512 times fewer
        // page faults while the arena fills, and far cheaper page pinning for O_DIRECT drive reads
        // into it. Only a hint: without THP the arena works the same on 4 KiB pages.
        #[cfg(target_os = "linux")]
        if let Err(e) = map.advise(memmap2::Advice::HugePage) {
            tracing::debug!(error = %e, "transparent huge pages not available for the arena");
        }
        Ok(Arc::new(Self {
            map: UnsafeCell::new(map),
            file,
            capacity,
            free: Mutex::new(FreeList::new(capacity)),
            used: AtomicU64::new(0),
        }))
    }

    /// Bytes handed out (rounded to the allocation granularity), including evicted objects that
    /// are still pinned by readers.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Total bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Largest contiguous free range.
    pub(crate) fn largest_free(&self) -> u64 {
        self.free.lock().largest()
    }

    fn rounded(len: u64) -> u64 {
        len.max(1).div_ceil(ALIGN) * ALIGN
    }

    /// Allocates `len` bytes, or `None` when no free range is large enough.
    /// Lengths above [`MAX_ALLOC`] never fit (the store refuses them first).
    pub(crate) fn try_alloc(self: &Arc<Self>, len: u64) -> Option<SlotMut> {
        let rounded = Self::rounded(len);
        let units = u32::try_from(rounded / ALIGN).ok()?;
        let off = self.free.lock().alloc(rounded)?;
        self.used.fetch_add(rounded, Ordering::Relaxed);
        Some(SlotMut(Range { arena: Arc::clone(self), off, len, units, skip: 0 }))
    }

    /// The memfd to hand to same-host clients, when the arena is shared.
    pub(crate) fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.file.as_ref().map(std::os::fd::AsFd::as_fd)
    }

    /// Commits every page of the arena now (`MEMKV_PREFAULT`), on up to `threads` threads, so
    /// that no PUT pays the first touch of a page: a page the kernel has to allocate and zero
    /// before the bytes can land in it. Without it a node's first pass over its memory runs
    /// slower (at 16 MiB PUTs through shared memory, about 12% slower on the bench machine:
    /// docs/benchmarks.md), and a host that cannot back the arena fails later, in the middle
    /// of a transfer, instead of at start-up.
    ///
    /// Refused up front when the host's available memory (`MemAvailable`) is smaller than the
    /// arena: committing it would drive the host into the OOM killer instead.
    ///
    /// A shared arena's memfd is allocated in full first (`fallocate`), which fails cleanly when
    /// the host lacks the memory; then each thread fills the page tables of its share of the
    /// mapping (`MADV_POPULATE_WRITE`; before Linux 5.14, by writing a zero into each page of
    /// the still untouched, all-zero mapping). Call it before any slot is handed out.
    pub(crate) fn prefault(&self, threads: usize) -> std::io::Result<()> {
        if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
            check_available(self.capacity, &meminfo)?;
        }
        if let Some(f) = &self.file {
            let len = libc::off_t::try_from(self.capacity).map_err(|_| std::io::Error::other("arena too large"))?;
            // SAFETY: a valid descriptor owned by this arena; the result is checked.
            let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(f), 0, 0, len) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let base = self.base() as usize;
        let len = usize::try_from(self.capacity).map_err(|_| std::io::Error::other("arena too large"))?;
        // Shares in whole multiples of 2 MiB, the size of a huge page, one per thread.
        let share = len.div_ceil(threads.max(1)).next_multiple_of(2 << 20);
        let shares: Vec<usize> = (0..len).step_by(share).collect();
        let size = |&off: &usize| share.min(len - off);
        par::map_by_bytes(&shares, threads, |off| size(off) as u64, |off| populate(base + off, size(off)))
            .into_iter()
            .collect()
    }

    /// The mapping's first byte (for registering the arena with a NIC once).
    pub(crate) fn base(&self) -> *mut u8 {
        // SAFETY: reading the pointer of the mapping does not create a reference to its bytes.
        unsafe { (*self.map.get()).as_mut_ptr() }
    }
}

/// Fails when `meminfo` (the text of /proc/meminfo) shows less `MemAvailable` than `need` bytes.
fn check_available(need: u64, meminfo: &str) -> std::io::Result<()> {
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb.saturating_mul(1024));
    match available {
        Some(a) if a < need => Err(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("the host has only {} available (MemAvailable in /proc/meminfo)", crate::config::format_size(a)),
        )),
        _ => Ok(()),
    }
}

/// Fills the page tables of `[addr, addr + len)`, a share of a fresh arena mapping, for writing
/// (see [`Arena::prefault`]).
fn populate(addr: usize, len: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the range lies inside the arena's mapping; the advice only faults pages in.
        if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    // No populate advice (Linux before 5.14): touch each page. The mapping is fresh, so every
    // byte is zero and writing a zero changes nothing.
    let page = 4096;
    for off in (0..len).step_by(page) {
        // SAFETY: inside the mapping; no slot has been handed out yet (see `Arena::prefault`).
        unsafe { std::ptr::write_volatile((addr + off) as *mut u8, 0) };
    }
    Ok(())
}

/// An allocated range, viewed as `[skip, skip + len)` of it (all of it unless narrowed);
/// returns the whole allocation to the free list on drop.
///
/// Kept to 32 bytes (the node holds one per stored object): the allocation is counted in units
/// of [`ALIGN`] and the view's start in a `u32`, which bounds an object at [`MAX_ALLOC`].
struct Range {
    arena: Arc<Arena>,
    off: u64,
    len: u64,
    /// Units of [`ALIGN`] allocated at `off`.
    units: u32,
    skip: u32,
}

impl Range {
    /// Bytes allocated at `off`.
    fn alloc(&self) -> u64 {
        u64::from(self.units) * ALIGN
    }

    /// Offset of the view's first byte inside the arena.
    fn offset(&self) -> u64 {
        self.off + u64::from(self.skip)
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: off + skip + len <= off + allocated length <= capacity (the free list only
        // hands out ranges inside it, and `SlotMut::narrow` only shrinks the view).
        unsafe { self.arena.base().add(self.offset() as usize) }
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        let alloc = self.alloc();
        self.arena.free.lock().free(self.off, alloc);
        self.arena.used.fetch_sub(alloc, Ordering::Relaxed);
    }
}

/// An exclusive, not yet visible range: the receive buffer of a whole-object PUT.
pub(crate) struct SlotMut(Range);

impl SlotMut {
    /// The range's bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: a SlotMut is the only handle to its range (ranges never overlap, and the
        // SlotMut is not Clone), and `&mut self` makes this borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.ptr(), self.0.len as usize) }
    }

    /// Narrows the view to `[start, start + len)` of the current one (the rest stays allocated
    /// until the slot is dropped): a read that needs alignment room around the bytes it keeps.
    pub(crate) fn narrow(mut self, start: u64, len: u64) -> SlotMut {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.0.len), "narrowed view outside the slot");
        // Narrowing trims alignment slack (under 4 KiB); an allocation may reach 256 GiB, so
        // the view's start is checked rather than assumed to fit.
        self.0.skip = u32::try_from(u64::from(self.0.skip) + start).expect("a narrowed view starts within 4 GiB");
        self.0.len = len;
        self
    }

    /// Offset of the range inside the arena (where a one-sided writer puts the bytes).
    pub(crate) fn offset(&self) -> u64 {
        self.0.offset()
    }

    /// Makes the range read-only and shareable.
    pub(crate) fn freeze(self) -> Slot {
        Slot(self.0)
    }

    /// Turns the range into a buffer that several writers fill in disjoint pieces.
    pub(crate) fn into_partial(self) -> PartialBuf {
        PartialBuf(self.0)
    }
}

/// A frozen range: the bytes of a complete object. Shared with `Arc`; never written again.
pub(crate) struct Slot(Range);

impl Slot {
    /// The object's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: a Slot is never written (only SlotMut and PartialBuf write, and freezing
        // consumes them), so shared reads cannot race with a write.
        unsafe { std::slice::from_raw_parts(self.0.ptr(), self.0.len as usize) }
    }

    /// Object size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.0.len
    }

    /// Offset of the object's first byte inside the arena (where a one-sided reader finds it).
    pub(crate) fn offset(&self) -> u64 {
        self.0.offset()
    }
}

/// The buffer of an object that arrives in several ranged PUTs, possibly on several
/// connections at once.
pub(crate) struct PartialBuf(Range);

impl PartialBuf {
    /// Object size.
    pub(crate) fn len(&self) -> u64 {
        self.0.len
    }

    /// Offset of the object's first byte inside the arena.
    pub(crate) fn offset(&self) -> u64 {
        self.0.offset()
    }

    /// A writable view of `[off, off + len)`.
    ///
    /// # Safety
    /// The caller must guarantee that no other view of an overlapping range (from this method or
    /// [`PartialBuf::bytes`]) is alive while the returned slice is. The store guarantees it by
    /// registering every in-flight range under its lock and refusing overlaps.
    #[allow(
        clippy::mut_from_ref,
        reason = "disjoint views of one buffer; exclusivity is the caller's contract (# Safety)"
    )]
    pub(crate) unsafe fn range_mut(&self, off: u64, len: u64) -> &mut [u8] {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.0.len), "range outside partial object");
        // SAFETY: in bounds (asserted above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.ptr().add(off as usize), len as usize) }
    }

    /// Freezes a fully written buffer. Consuming `self` requires that no range view is alive.
    pub(crate) fn freeze(self) -> Slot {
        Slot(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_never_overlap_and_free_space_coalesces() {
        let a = Arena::new(64 * 10).unwrap();
        let s: Vec<_> = (0..10).map(|_| a.try_alloc(64).unwrap()).collect();
        assert!(a.try_alloc(1).is_none(), "arena must be full");
        assert_eq!(a.used(), 640);
        let mut offs: Vec<u64> = s.iter().map(|x| x.0.off).collect();
        offs.sort_unstable();
        offs.dedup();
        assert_eq!(offs.len(), 10);
        drop(s);
        assert_eq!(a.used(), 0);
        assert_eq!(a.largest_free(), 640, "neighbours must coalesce back into one range");
        assert!(a.try_alloc(640).is_some());
    }

    /// Pages of the arena's mapping that are in memory (`mincore`).
    fn resident_pages(a: &Arena) -> usize {
        let len = a.capacity() as usize;
        let mut v = vec![0u8; len.div_ceil(4096)];
        // SAFETY: the range is the arena's mapping; `v` has a byte per page.
        assert_eq!(unsafe { libc::mincore(a.base().cast(), len, v.as_mut_ptr()) }, 0);
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn a_prefaulted_arena_has_every_page_in_memory_and_still_reads_zero() {
        // Not a multiple of the 2 MiB shares, and more threads than shares of 2 MiB fit.
        let len = (5 << 20) + 3 * 4096;
        for shared in [false, true] {
            let a = if shared { Arena::shared(len) } else { Arena::new(len) }.unwrap();
            assert_eq!(resident_pages(&a), 0, "shared {shared}: a fresh arena is committed lazily");
            a.prefault(7).unwrap();
            assert_eq!(resident_pages(&a), len.div_ceil(4096) as usize, "shared {shared}");
            let mut m = a.try_alloc(len).unwrap();
            assert!(m.bytes_mut().iter().all(|&b| b == 0), "shared {shared}: prefaulting wrote something");
            m.bytes_mut().fill(9);
            assert!(Arc::new(m.freeze()).bytes().iter().all(|&b| b == 9));
        }
    }

    #[test]
    fn prefaulting_more_than_the_host_has_available_is_refused_naming_what_it_has() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:    2097152 kB\n";
        assert!(check_available(2 << 30, meminfo).is_ok());
        let e = check_available((2 << 30) + 1, meminfo).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory);
        assert_eq!(e.to_string(), "the host has only 2 GiB available (MemAvailable in /proc/meminfo)");
        assert!(check_available(u64::MAX, "MemTotal: 1 kB\n").is_ok(), "no MemAvailable line: not checked");
    }

    #[test]
    fn writes_through_a_slot_are_what_the_frozen_slot_reads() {
        let a = Arena::new(4096).unwrap();
        let mut m = a.try_alloc(100).unwrap();
        m.bytes_mut().copy_from_slice(&[7u8; 100]);
        let f = Arc::new(m.freeze());
        assert_eq!(f.bytes(), &[7u8; 100][..]);
        assert_eq!(f.len(), 100);
    }

    #[test]
    fn a_pinned_slot_keeps_its_memory_until_the_last_reader_drops_it() {
        let a = Arena::new(128).unwrap();
        let f = Arc::new(a.try_alloc(128).unwrap().freeze());
        let reader = Arc::clone(&f);
        drop(f);
        assert!(a.try_alloc(64).is_none(), "memory under a reader must not be reused");
        drop(reader);
        assert!(a.try_alloc(128).is_some());
    }

    #[test]
    fn partial_buffers_are_written_in_disjoint_pieces() {
        let a = Arena::new(4096).unwrap();
        let p = a.try_alloc(10).unwrap().into_partial();
        // SAFETY: the two ranges are disjoint and each view is dropped before freezing.
        unsafe {
            p.range_mut(0, 5).copy_from_slice(b"hello");
            p.range_mut(5, 5).copy_from_slice(b"world");
        }
        assert_eq!(p.len(), 10);
        assert_eq!(p.freeze().bytes(), b"helloworld");
    }

    #[test]
    fn a_narrowed_slot_shows_its_window_and_frees_its_whole_allocation() {
        let a = Arena::new(4096).unwrap();
        let mut m = a.try_alloc(1000).unwrap();
        for (i, b) in m.bytes_mut().iter_mut().enumerate() {
            *b = i as u8;
        }
        let f = m.narrow(100, 50).narrow(10, 20).freeze();
        assert_eq!(f.len(), 20);
        assert_eq!(f.bytes(), &(110..130).map(|i| i as u8).collect::<Vec<_>>()[..]);
        assert_eq!(a.used(), 1024);
        drop(f);
        assert_eq!(a.used(), 0);
        assert_eq!(a.largest_free(), 4096);
    }

    #[test]
    fn best_fit_reuses_the_smallest_hole() {
        let mut f = FreeList::new(1000);
        let a = f.alloc(100).unwrap();
        let _b = f.alloc(300).unwrap();
        let c = f.alloc(100).unwrap();
        let _d = f.alloc(500).unwrap();
        f.free(a, 100);
        f.free(c, 100);
        assert_eq!(f.alloc(50), Some(a));
        assert_eq!(f.alloc(100), Some(c));
        assert_eq!(f.alloc(51), None);
        assert_eq!(f.alloc(50), Some(a + 50));
    }
}
