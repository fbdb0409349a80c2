//! Staging slots: pinned host bounce buffers for GPU memory that the NIC cannot reach, and the
//! double-buffered copy/transfer pipeline that moves blocks through them.
//!
//! # What this module owns
//!
//! * [`SlotPool`]: a fixed set of equal-sized slots carved out of one backing allocation
//!   ([`SlotMemory`]: [`PageAlignedHost`] here, pinned CUDA host memory in the CUDA adapter).
//!   Slots are leased as RAII [`Slot`]s; running out of slots *is* the back-pressure (a fair, FIFO
//!   semaphore). A slot can be frozen into a zero-copy [`Bytes`] view that gives the slot back
//!   exactly when the last clone of those bytes is dropped, i.e. when the wire is done with it.
//! * [`CopyEngine`]: the narrow provider trait for an asynchronous copy engine (start a copy, poll
//!   whether it finished). [`HostCopy`] is the real second implementation: a worker thread doing
//!   the copies concurrently with the caller, as a DMA engine would. A CUDA adapter implements it
//!   with `cuMemcpyDtoHAsync`/`cuMemcpyHtoDAsync` on a stream, `cuEventRecord` after the copy, and
//!   `cuEventQuery` in [`CopyEngine::poll_done`].
//! * The pipeline: [`stage_out`] (device → slot → `send`) and [`stage_in`] (`fetch` → slot →
//!   device). Each segment is cut into slot-sized chunks (a chunk never spans two segments); every
//!   chunk gets a slot, so at most [`SlotPool::slots`] chunks are in flight, and the copy of chunk
//!   `i + 1` runs while chunk `i` is on the wire (double buffering with two slots, deeper with
//!   more). Sends/fetches run concurrently and may complete out of order.
//!
//! # What it must never do
//!
//! * Block the async runtime while copies run. Completion is learnt by polling
//!   ([`CopyEngine::poll_done`] is non-blocking). Copies finish in the order they started, so only
//!   the oldest copy in flight is polled: it yields to the scheduler for the first [`SPIN_FOR`]
//!   after it became the oldest (a 2–16 MiB copy finishes within that), then sleeps with a
//!   doubling back-off capped at [`MAX_NAP`] (Tokio's timer rounds sub-millisecond sleeps up to
//!   its 1 ms tick, so the spin phase is what keeps the copy engine busy). The one exception is
//!   cancellation, see below.
//! * Let a slot go back to the pool while a copy may still touch it. A transfer whose future is
//!   dropped mid-flight waits (blocking, with a 2 µs → 100 µs back-off) in `Drop` for the copies it
//!   started; these are bounded by one slot each, i.e. microseconds to a millisecond. If a copy is
//!   still running after [`DRAIN_LIMIT`] (a hung device), its slot is leaked, never reused, and an
//!   error is logged.
//! * Copy block bytes itself: the only copy is the one the engine makes between device and slot;
//!   the slot bytes go to the wire as a [`Bytes`] view.
//!
//! # Invariants
//!
//! * Free-list length == available semaphore permits; a [`Slot`] exists for each busy index and
//!   only one.
//! * A slot is handed to at most one copy at a time, and a copy's ticket is settled (done, or a
//!   terminal error) before its slot is released.
//! * On return from [`stage_out`]/[`stage_in`], success or failure, every chunk the call started has
//!   settled and every slot it leased is back in the pool (unless the caller still holds a clone
//!   of a chunk's [`Bytes`]). The first error wins; after it no new chunk is started.
//!
//! The pipeline allocates one small `FuturesUnordered` node per send or fetch (tens of bytes per
//! 2–8 MiB chunk) and keeps its copies in a queue that grows to the pool's slot count; slots and
//! their memory are allocated once, when the pool is built.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Semaphore;

/// How long a waiting chunk keeps yielding to the scheduler before it starts sleeping between
/// completion polls.
pub const SPIN_FOR: Duration = Duration::from_micros(500);
/// First sleep between completion polls once [`SPIN_FOR`] has passed (doubles on every poll).
const FIRST_NAP: Duration = Duration::from_micros(50);
/// Longest sleep between completion polls.
pub const MAX_NAP: Duration = Duration::from_millis(1);
/// How long a dropped transfer waits for a copy it started before it gives up and leaks the slot.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// An error from a transfer source or sink (`send` / `fetch` closures).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the staging layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StagingError {
    /// The slot size is zero.
    #[error("staging slot size is 0; choose a slot size of at least one page (2–8 MiB is typical)")]
    ZeroSlotSize,
    /// The backing memory holds fewer than two slots.
    #[error(
        "staging memory of {len} bytes holds {slots} slot(s) of {slot_size} bytes, but double buffering needs \
         at least 2; give the pool at least 2 × {slot_size} bytes or use smaller slots"
    )]
    PoolTooSmall {
        /// Bytes of backing memory.
        len: usize,
        /// Requested slot size in bytes.
        slot_size: usize,
        /// Slots that fit.
        slots: usize,
    },
    /// Mapping the host memory for the slots failed.
    #[error("could not map {len} bytes of page-aligned host memory for staging slots: {source}")]
    HostAlloc {
        /// Requested bytes.
        len: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The host copy worker thread could not be started.
    #[error("could not start the host copy worker thread: {0}")]
    Worker(#[source] io::Error),
    /// A segment's address range wraps past the end of the address space.
    #[error(
        "segment {index} (address {addr:#x}, {len} bytes) runs past the end of the 64-bit address space; \
         check the descriptor that produced it"
    )]
    InvalidSegment {
        /// Index of the segment in the slice given to the pipeline.
        index: usize,
        /// Its device address.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The copy engine could not start or complete a copy.
    #[error("{direction} copy of {len} bytes failed: {message}")]
    Copy {
        /// Which way the copy went.
        direction: Direction,
        /// Bytes in the copy.
        len: usize,
        /// The engine's description of the failure.
        message: String,
    },
    /// The `send` future of [`stage_out`] failed.
    #[error("sending staged chunk of block {block} (segment {segment}, offset {offset}, {len} bytes) failed: {source}")]
    Send {
        /// Block of the chunk.
        block: usize,
        /// Segment index of the chunk.
        segment: usize,
        /// Offset of the chunk in its segment.
        offset: u64,
        /// Chunk length.
        len: usize,
        /// The sender's error.
        #[source]
        source: BoxError,
    },
    /// The `fetch` future of [`stage_in`] failed.
    #[error(
        "fetching chunk of block {block} (segment {segment}, offset {offset}, {len} bytes) into a staging slot \
         failed: {source}"
    )]
    Fetch {
        /// Block of the chunk.
        block: usize,
        /// Segment index of the chunk.
        segment: usize,
        /// Offset of the chunk in its segment.
        offset: u64,
        /// Chunk length.
        len: usize,
        /// The fetcher's error.
        #[source]
        source: BoxError,
    },
    /// The `fetch` future of [`stage_in`] returned a slot that cannot hold the chunk.
    #[error(
        "fetch for block {block} (segment {segment}, offset {offset}) returned a slot of {capacity} bytes but the \
         chunk is {len} bytes; return the slot that the pipeline passed in"
    )]
    SlotTooSmall {
        /// Block of the chunk.
        block: usize,
        /// Segment index of the chunk.
        segment: usize,
        /// Offset of the chunk in its segment.
        offset: u64,
        /// Chunk length.
        len: usize,
        /// Capacity of the returned slot.
        capacity: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Backing memory
// ---------------------------------------------------------------------------------------------

/// The backing allocation of a [`SlotPool`].
///
/// # Safety
///
/// Implementors guarantee, for as long as the value lives:
/// * [`as_ptr`](SlotMemory::as_ptr) always returns the same non-null pointer, valid for reads and
///   writes of [`len`](SlotMemory::len) bytes, and `len` always returns the same value;
/// * nothing but the owner of the value (the pool, and the copy engines it directs) reads or
///   writes the region.
///
/// For a copy engine that DMAs into the slots (CUDA), the memory must also be what the engine
/// needs (page-locked and registered with the driver).
pub unsafe trait SlotMemory: Send + Sync {
    /// Start of the region.
    fn as_ptr(&self) -> *mut u8;
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Page-aligned anonymous host memory (`mmap`), unmapped on drop: the slot backing without CUDA.
#[derive(Debug)]
pub struct PageAlignedHost {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned exclusively by this value; no thread affinity.
unsafe impl Send for PageAlignedHost {}
// SAFETY: `&PageAlignedHost` only exposes the pointer and length; access through the pointer is
// governed by the `SlotMemory` contract (one owner).
unsafe impl Sync for PageAlignedHost {}

impl PageAlignedHost {
    /// Maps `len` bytes of zeroed, page-aligned, private anonymous memory.
    pub fn new(len: usize) -> Result<Self, StagingError> {
        if len == 0 {
            return Err(StagingError::HostAlloc {
                len,
                source: io::Error::new(io::ErrorKind::InvalidInput, "a mapping of 0 bytes is not possible"),
            });
        }
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
        // existing memory; the result is checked against MAP_FAILED below.
        let raw = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(StagingError::HostAlloc { len, source: io::Error::last_os_error() });
        }
        let ptr = NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| StagingError::HostAlloc { len, source: io::Error::other("mmap returned a null mapping") })?;
        Ok(Self { ptr, len })
    }
}

impl Drop for PageAlignedHost {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `new`, unmapped only here; the
        // pool that owned this value no longer hands out pointers into it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

// SAFETY: the pointer is fixed for the mapping's life, valid for `len` bytes of reads and writes,
// and the mapping is private to this value.
unsafe impl SlotMemory for PageAlignedHost {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn len(&self) -> usize {
        self.len
    }
}

// ---------------------------------------------------------------------------------------------
// Slot pool
// ---------------------------------------------------------------------------------------------

/// A fixed pool of equal-sized staging slots. See the [module documentation](self).
pub struct SlotPool {
    shared: Arc<Shared>,
}

struct Shared {
    memory: Box<dyn SlotMemory>,
    slot_size: usize,
    slots: usize,
    /// Free slot indices; its length equals the semaphore's available permits.
    free: Mutex<Vec<usize>>,
    permits: Semaphore,
    busy: AtomicUsize,
    peak_busy: AtomicUsize,
    acquires: AtomicU64,
    waits: AtomicU64,
    wait_ns: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

/// A snapshot of a [`SlotPool`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Number of slots.
    pub slots: usize,
    /// Bytes per slot.
    pub slot_size: usize,
    /// Slots leased right now.
    pub busy: usize,
    /// Most slots ever leased at once.
    pub peak_busy: usize,
    /// Slot leases granted.
    pub acquires: u64,
    /// Leases that had to wait for a slot (back-pressure).
    pub waits: u64,
    /// Total time spent waiting for slots, in nanoseconds.
    pub wait_ns_total: u64,
    /// Bytes copied device → slot by [`stage_out`].
    pub bytes_staged_out: u64,
    /// Bytes copied slot → device by [`stage_in`].
    pub bytes_staged_in: u64,
}

impl SlotPool {
    /// Carves `memory` into `memory.len() / slot_size` slots (at least 2) and zeroes them.
    pub fn new(memory: Box<dyn SlotMemory>, slot_size: usize) -> Result<Arc<SlotPool>, StagingError> {
        if slot_size == 0 {
            return Err(StagingError::ZeroSlotSize);
        }
        let len = memory.len();
        let slots = (len / slot_size).min(Semaphore::MAX_PERMITS);
        if slots < 2 {
            return Err(StagingError::PoolTooSmall { len, slot_size, slots });
        }
        // SAFETY: by the `SlotMemory` contract the region is valid for writes of `len` bytes and
        // ours alone; `slots * slot_size <= len`. Zeroing makes every slot byte initialised (pinned
        // driver memory need not be) and faults the pages in now rather than on the hot path.
        unsafe { ptr::write_bytes(memory.as_ptr(), 0, slots * slot_size) };
        tracing::info!(slots, slot_size, bytes = slots * slot_size, "staging slot pool ready");
        let shared = Shared {
            memory,
            slot_size,
            slots,
            free: Mutex::new((0..slots).rev().collect()),
            permits: Semaphore::new(slots),
            busy: AtomicUsize::new(0),
            peak_busy: AtomicUsize::new(0),
            acquires: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
        };
        Ok(Arc::new(SlotPool { shared: Arc::new(shared) }))
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.shared.slots
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.shared.slot_size
    }

    /// Leases a slot, waiting (FIFO among waiters) while all are busy. Cancel-safe: dropping the
    /// future before it completes leases nothing.
    pub async fn acquire(&self) -> Slot {
        if let Some(slot) = self.try_acquire() {
            return slot;
        }
        let started = Instant::now();
        match self.shared.permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => unreachable!("the staging semaphore is never closed"),
        }
        let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.waits.fetch_add(1, Ordering::Relaxed);
        self.shared.wait_ns.fetch_add(waited, Ordering::Relaxed);
        self.shared.take_slot()
    }

    /// Leases a slot if one is free now (never jumps ahead of waiting [`acquire`](Self::acquire)s).
    pub fn try_acquire(&self) -> Option<Slot> {
        self.shared.permits.try_acquire().ok()?.forget();
        Some(self.shared.take_slot())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        PoolStats {
            slots: s.slots,
            slot_size: s.slot_size,
            busy: s.busy.load(Ordering::Relaxed),
            peak_busy: s.peak_busy.load(Ordering::Relaxed),
            acquires: s.acquires.load(Ordering::Relaxed),
            waits: s.waits.load(Ordering::Relaxed),
            wait_ns_total: s.wait_ns.load(Ordering::Relaxed),
            bytes_staged_out: s.bytes_out.load(Ordering::Relaxed),
            bytes_staged_in: s.bytes_in.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotPool").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Shared {
    /// Pops a free index; the caller holds a (forgotten) permit, so one is there.
    fn take_slot(self: &Arc<Self>) -> Slot {
        let index = self.free.lock().pop().expect("a semaphore permit guarantees a free staging slot");
        let busy = self.busy.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_busy.fetch_max(busy, Ordering::Relaxed);
        self.acquires.fetch_add(1, Ordering::Relaxed);
        Slot { shared: Arc::clone(self), index }
    }
}

/// A leased staging slot; goes back to its pool when dropped.
pub struct Slot {
    shared: Arc<Shared>,
    index: usize,
}

impl Slot {
    /// Index of the slot in its pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Size of the slot in bytes.
    pub fn capacity(&self) -> usize {
        self.shared.slot_size
    }

    /// Start of the slot.
    pub fn as_ptr(&self) -> *const u8 {
        self.raw()
    }

    /// Start of the slot, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.raw()
    }

    /// The slot's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the slot's range lies inside the pool memory (index < slots), which the `Shared`
        // behind our `Arc` keeps alive; the range is leased to this `Slot` alone, was initialised
        // when the pool was built, and no copy runs on it while a `Slot` is reachable by the user.
        unsafe { std::slice::from_raw_parts(self.raw(), self.capacity()) }
    }

    /// The slot's bytes, for writing (e.g. a socket read in a [`stage_in`] fetch).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference to the range.
        unsafe { std::slice::from_raw_parts_mut(self.raw(), self.capacity()) }
    }

    /// A zero-copy view of the first `len` bytes. The slot goes back to the pool when the last
    /// clone of the returned [`Bytes`] is dropped.
    ///
    /// # Panics
    ///
    /// If `len` is larger than the slot.
    pub fn freeze(self, len: usize) -> Bytes {
        assert!(len <= self.capacity(), "cannot freeze {len} bytes of a {}-byte staging slot", self.capacity());
        Bytes::from_owner(FrozenSlot { slot: self, len })
    }

    fn raw(&self) -> *mut u8 {
        self.shared.memory.as_ptr().wrapping_add(self.index * self.shared.slot_size)
    }

    /// The slot's address as the copy engines take it.
    fn addr(&self) -> u64 {
        self.raw().expose_provenance() as u64
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let s = &self.shared;
        s.free.lock().push(self.index);
        s.busy.fetch_sub(1, Ordering::Relaxed);
        s.permits.add_permits(1);
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").field("index", &self.index).field("capacity", &self.capacity()).finish()
    }
}

/// The owner behind a frozen slot's [`Bytes`].
struct FrozenSlot {
    slot: Slot,
    len: usize,
}

impl AsRef<[u8]> for FrozenSlot {
    fn as_ref(&self) -> &[u8] {
        &self.slot.as_slice()[..self.len]
    }
}

// ---------------------------------------------------------------------------------------------
// Copy engines
// ---------------------------------------------------------------------------------------------

/// Which way a staging copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Direction {
    /// Device memory → staging slot (the sending side).
    DeviceToHost,
    /// Staging slot → device memory (the receiving side).
    HostToDevice,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::DeviceToHost => "device-to-host",
            Direction::HostToDevice => "host-to-device",
        })
    }
}

/// An asynchronous copy engine: starts a copy, and says without blocking whether it finished.
///
/// Shaped for CUDA: `start` enqueues `cuMemcpyDtoHAsync`/`cuMemcpyHtoDAsync` on the engine's
/// stream and records an event after it (the event is the ticket); `poll_done` is `cuEventQuery`
/// (`CUDA_SUCCESS` → `Ok(true)`, `CUDA_ERROR_NOT_READY` → `Ok(false)`, anything else → `Err`).
/// Host addresses are staging-slot addresses; device addresses are whatever the engine's device
/// address space is (`CUdeviceptr` for CUDA, plain host addresses for [`HostCopy`]).
///
/// # Safety
///
/// The pipeline trusts these promises to keep slot memory sound; implementors must keep them:
/// * `poll_done` returns quickly (no waiting on the device);
/// * `poll_done` returns `Ok(true)` only once the copy has completed and its writes are visible to
///   the calling thread;
/// * `poll_done` returns `Err` only when the copy will not access either range any more (it never
///   ran, or the engine failed terminally). An engine that cannot tell must keep answering
///   `Ok(false)` until it can;
/// * `start` returning `Err` means no copy was started.
///
/// Copies should finish in the order they were started (one stream): the pipeline waits for the
/// oldest copy first. An engine that finishes out of order stays correct, only slower.
pub unsafe trait CopyEngine: Send + Sync {
    /// Identifies one started copy.
    type Ticket: Send + Sync;

    /// Starts copying `len` bytes from `src` to `dst`; `dir` says which side is the device.
    ///
    /// # Safety
    ///
    /// `src` must be readable and `dst` writable for `len` bytes in the address space that `dir`
    /// gives each side, and both must stay so — `dst` neither read nor written and `src` not written
    /// by anyone else — until `poll_done` for the returned ticket has returned `Ok(true)` or `Err`.
    /// Dropping the ticket earlier does not stop the copy.
    unsafe fn start(&self, dir: Direction, dst: u64, src: u64, len: usize) -> Result<Self::Ticket, StagingError>;

    /// Whether the copy of `ticket` has finished. Never blocks.
    fn poll_done(&self, ticket: &Self::Ticket) -> Result<bool, StagingError>;
}

/// A [`CopyEngine`] over host memory: a worker thread runs the copies in order (like one CUDA
/// stream), concurrently with the caller. Both "device" and host addresses are host addresses.
pub struct HostCopy {
    jobs: Option<mpsc::Sender<HostJob>>,
    worker: Option<thread::JoinHandle<()>>,
}

const PENDING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// Ticket of a [`HostCopy`] copy.
#[derive(Debug)]
pub struct HostTicket {
    state: Arc<AtomicU8>,
    dir: Direction,
    len: usize,
}

struct HostJob {
    dst: u64,
    src: u64,
    len: usize,
    state: Arc<AtomicU8>,
}

impl Drop for HostJob {
    fn drop(&mut self) {
        // A job dropped without running (worker gone) must not leave its ticket pending forever.
        let _ = self.state.compare_exchange(PENDING, ABANDONED, Ordering::Release, Ordering::Relaxed);
    }
}

impl HostCopy {
    /// Starts the worker thread.
    pub fn new() -> Result<Self, StagingError> {
        let (tx, rx) = mpsc::channel::<HostJob>();
        let worker = thread::Builder::new()
            .name("memkv-hostcopy".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let src = ptr::with_exposed_provenance::<u8>(job.src as usize);
                    let dst = ptr::with_exposed_provenance_mut::<u8>(job.dst as usize);
                    // SAFETY: the caller of `CopyEngine::start` guaranteed both ranges valid and
                    // unshared for `len` bytes until completion is observed, which is only after
                    // the `DONE` store below.
                    unsafe { ptr::copy(src, dst, job.len) };
                    job.state.store(DONE, Ordering::Release);
                }
            })
            .map_err(StagingError::Worker)?;
        Ok(Self { jobs: Some(tx), worker: Some(worker) })
    }
}

impl fmt::Debug for HostCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCopy").finish_non_exhaustive()
    }
}

impl Drop for HostCopy {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

// SAFETY: `poll_done` is one atomic load; `DONE` is stored with Release after the copy and loaded
// with Acquire, so the copied bytes are visible; `ABANDONED` is only set on jobs that never ran;
// `start` returns `Err` only when the job was not queued.
unsafe impl CopyEngine for HostCopy {
    type Ticket = HostTicket;

    unsafe fn start(&self, dir: Direction, dst: u64, src: u64, len: usize) -> Result<HostTicket, StagingError> {
        let state = Arc::new(AtomicU8::new(PENDING));
        let job = HostJob { dst, src, len, state: Arc::clone(&state) };
        let stopped =
            || StagingError::Copy { direction: dir, len, message: "the host copy worker thread has stopped".into() };
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())?;
        Ok(HostTicket { state, dir, len })
    }

    fn poll_done(&self, ticket: &HostTicket) -> Result<bool, StagingError> {
        match ticket.state.load(Ordering::Acquire) {
            PENDING => Ok(false),
            DONE => Ok(true),
            _ => Err(StagingError::Copy {
                direction: ticket.dir,
                len: ticket.len,
                message: "the host copy worker thread stopped before running the copy".into(),
            }),
        }
    }
}

/// Waits for a started copy without blocking the runtime (see the module docs for the back-off);
/// the spin phase counts from `since`, when the copy became the oldest one in flight.
async fn wait_done<E: CopyEngine>(engine: &E, ticket: &E::Ticket, since: Instant) -> Result<(), StagingError> {
    let mut nap = FIRST_NAP;
    loop {
        if engine.poll_done(ticket)? {
            return Ok(());
        }
        if since.elapsed() < SPIN_FOR {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(nap).await;
            nap = (nap * 2).min(MAX_NAP);
        }
    }
}

/// Blocks until a copy has settled; `false` if it was still running after [`DRAIN_LIMIT`].
fn drain_blocking<E: CopyEngine>(engine: &E, ticket: &E::Ticket) -> bool {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut nap = Duration::from_micros(2);
    loop {
        match engine.poll_done(ticket) {
            Ok(true) | Err(_) => return true,
            Ok(false) if Instant::now() >= deadline => return false,
            Ok(false) => {}
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_micros(100));
    }
}

/// A copy in flight and the slot it uses. Dropping it before it settled waits for the copy, so the
/// slot (and the caller's device range) is never released under a running copy.
struct InFlight<'e, E: CopyEngine> {
    engine: &'e E,
    ticket: Option<E::Ticket>,
    slot: Option<Slot>,
    direction: Direction,
    len: usize,
}

impl<'e, E: CopyEngine> InFlight<'e, E> {
    /// Starts copying `len` bytes between `slot` and `device`.
    ///
    /// # Safety
    ///
    /// `len <= slot.capacity()`, and `device` satisfies [`CopyEngine::start`]'s contract for the
    /// device side until the returned value is finished or dropped.
    unsafe fn start(
        engine: &'e E,
        direction: Direction,
        slot: Slot,
        device: u64,
        len: usize,
    ) -> Result<Self, StagingError> {
        debug_assert!(len <= slot.capacity());
        let host = slot.addr();
        let (dst, src) = match direction {
            Direction::DeviceToHost => (host, device),
            Direction::HostToDevice => (device, host),
        };
        // SAFETY: the host side is `slot`'s range, leased to us alone and at least `len` bytes
        // long; `Self` keeps it leased and unused until the copy settles (`Copies::next` waits for
        // it, `Drop` drains it). The device side is our caller's promise.
        let ticket = unsafe { engine.start(direction, dst, src, len) }?;
        Ok(Self { engine, ticket: Some(ticket), slot: Some(slot), direction, len })
    }

    /// Waits for the copy, spinning from `since`; cancel-safe (nothing is settled until it returns).
    async fn wait(&self, since: Instant) -> Result<(), StagingError> {
        match &self.ticket {
            Some(ticket) => wait_done(self.engine, ticket, since).await,
            None => Ok(()),
        }
    }

    /// Marks the copy settled with the outcome of [`Self::wait`]: the slot comes back on success
    /// and is released on failure (an error after which the engine no longer touches the memory).
    fn settled(mut self, outcome: Result<(), StagingError>) -> Result<Slot, StagingError> {
        self.ticket = None;
        outcome?;
        Ok(self.slot.take().expect("an in-flight copy owns its slot until it is settled"))
    }
}

/// The copies of one transfer in flight, oldest first.
///
/// An engine runs its copies in the order they were started (one CUDA stream, one worker
/// thread), so only the oldest is polled, and its spin phase ([`SPIN_FOR`]) counts from when it
/// became the oldest. With a deep pool, a copy that waited its turn behind fifteen others has
/// spent that time queued, not running: measured from its start it would be put to sleep on
/// Tokio's 1 ms timer and its completion seen late, leaving the stream idle (on an H200, 2 MiB
/// chunks through 16 slots ran at 65% of the plain pinned copy that way). Polling one copy
/// instead of every copy in flight also keeps the driver calls per chunk to a few.
struct Copies<'e, E: CopyEngine> {
    queue: VecDeque<(InFlight<'e, E>, PlannedChunk)>,
    head_since: Instant,
}

impl<'e, E: CopyEngine> Copies<'e, E> {
    fn new() -> Self {
        Self { queue: VecDeque::new(), head_since: Instant::now() }
    }

    fn push(&mut self, copy: InFlight<'e, E>, chunk: PlannedChunk) {
        if self.queue.is_empty() {
            self.head_since = Instant::now();
        }
        self.queue.push_back((copy, chunk));
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Waits for the oldest copy to settle and takes it out; `None` at once when none is in
    /// flight. Cancel-safe: dropped while waiting, the copy stays queued.
    async fn next(&mut self) -> Option<(PlannedChunk, Result<Slot, StagingError>)> {
        let (copy, _) = self.queue.front()?;
        let outcome = copy.wait(self.head_since).await;
        let (copy, chunk) = self.queue.pop_front()?;
        self.head_since = Instant::now();
        Some((chunk, copy.settled(outcome)))
    }
}

impl<E: CopyEngine> Drop for InFlight<'_, E> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else { return };
        if drain_blocking(self.engine, &ticket) {
            return;
        }
        tracing::error!(
            direction = %self.direction,
            bytes = self.len,
            slot = ?self.slot.as_ref().map(Slot::index),
            limit_s = DRAIN_LIMIT.as_secs(),
            "staging copy still running after its transfer was dropped; leaking its slot so the copy cannot \
             write into reused memory"
        );
        std::mem::forget(self.slot.take());
        std::mem::forget(ticket);
    }
}

// ---------------------------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------------------------

/// One contiguous device range of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Device address: the source for [`stage_out`], the destination for [`stage_in`].
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Caller's block number, echoed in every chunk of the segment.
    pub block: usize,
}

impl Segment {
    /// A segment of `len` bytes at device address `addr`, belonging to `block`.
    pub fn new(addr: u64, len: u64, block: usize) -> Self {
        Self { addr, len, block }
    }
}

/// A staged chunk handed to [`stage_out`]'s `send`.
#[non_exhaustive]
pub struct Chunk {
    /// Block of the chunk.
    pub block: usize,
    /// Index of the chunk's segment in the slice given to [`stage_out`].
    pub segment: usize,
    /// Offset of the chunk in its segment.
    pub offset_in_segment: u64,
    /// Length of the chunk (`== data.len()`, at most the slot size).
    pub len: usize,
    /// The chunk's bytes: a view of the staging slot, which is released when the last clone drops.
    pub data: Bytes,
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("block", &self.block)
            .field("segment", &self.segment)
            .field("offset_in_segment", &self.offset_in_segment)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// What [`stage_in`]'s `fetch` must put into the slot it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChunkReq {
    /// Block of the chunk.
    pub block: usize,
    /// Index of the chunk's segment in the slice given to [`stage_in`].
    pub segment: usize,
    /// Offset of the chunk in its segment.
    pub offset_in_segment: u64,
    /// Bytes to write at the start of the slot.
    pub len: usize,
}

/// One slot-sized piece of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlannedChunk {
    pub(crate) segment: usize,
    pub(crate) block: usize,
    pub(crate) offset: u64,
    pub(crate) addr: u64,
    pub(crate) len: usize,
}

/// Cuts segments into chunks of at most `slot_size` bytes, in order; empty segments yield none.
/// The segments must have passed [`validate`].
pub(crate) struct ChunkPlan<'a> {
    segments: &'a [Segment],
    slot_size: u64,
    segment: usize,
    offset: u64,
}

impl<'a> ChunkPlan<'a> {
    pub(crate) fn new(segments: &'a [Segment], slot_size: usize) -> Self {
        Self { segments, slot_size: slot_size as u64, segment: 0, offset: 0 }
    }
}

impl Iterator for ChunkPlan<'_> {
    type Item = PlannedChunk;

    fn next(&mut self) -> Option<PlannedChunk> {
        while let Some(seg) = self.segments.get(self.segment) {
            if self.offset < seg.len {
                let len = (seg.len - self.offset).min(self.slot_size);
                let chunk = PlannedChunk {
                    segment: self.segment,
                    block: seg.block,
                    offset: self.offset,
                    addr: seg.addr + self.offset,
                    // At most `slot_size`, which came from a usize.
                    len: len as usize,
                };
                self.offset += len;
                return Some(chunk);
            }
            self.segment += 1;
            self.offset = 0;
        }
        None
    }
}

fn validate(segments: &[Segment]) -> Result<(), StagingError> {
    for (index, s) in segments.iter().enumerate() {
        if s.addr.checked_add(s.len).is_none() {
            return Err(StagingError::InvalidSegment { index, addr: s.addr, len: s.len });
        }
    }
    Ok(())
}

/// Keeps the first error; later ones are only logged.
fn note(failure: &mut Option<StagingError>, err: StagingError) {
    match failure {
        None => {
            tracing::debug!(error = %err, "staged transfer failed; settling the chunks in flight");
            *failure = Some(err);
        }
        Some(_) => tracing::debug!(error = %err, "further error while settling a failed staged transfer"),
    }
}

/// Polls a pinned optional future; pending forever when empty.
fn poll_some<F: Future>(mut fut: Pin<&mut Option<F>>) -> impl Future<Output = F::Output> + '_ {
    std::future::poll_fn(move |cx| match fut.as_mut().as_pin_mut() {
        Some(f) => f.poll(cx),
        None => Poll::Pending,
    })
}

async fn sent<Fut>(send: Fut, chunk: PlannedChunk) -> Result<(), StagingError>
where
    Fut: Future<Output = Result<(), BoxError>>,
{
    send.await.map_err(|source| StagingError::Send {
        block: chunk.block,
        segment: chunk.segment,
        offset: chunk.offset,
        len: chunk.len,
        source,
    })
}

async fn fetched<Fut>(fetch: Fut, chunk: PlannedChunk) -> (PlannedChunk, Result<Slot, StagingError>)
where
    Fut: Future<Output = Result<Slot, BoxError>>,
{
    let result = fetch.await.map_err(|source| StagingError::Fetch {
        block: chunk.block,
        segment: chunk.segment,
        offset: chunk.offset,
        len: chunk.len,
        source,
    });
    (chunk, result)
}

/// Sends device memory through staging slots: for each slot-sized chunk of `segments`, lease a
/// slot (waiting while all are busy), copy device → slot with `engine`, and when the copy is done
/// call `send` with the chunk. Copies of later chunks run while earlier chunks are sent; sends run
/// concurrently and may finish in any order.
///
/// On the first error (copy, send, or an invalid segment) no new chunk is started, the chunks in
/// flight are settled (copies awaited, sends awaited but their errors only logged), and that
/// error is returned. Every slot is back in the pool when this returns, unless `send` kept a
/// clone of a chunk's bytes.
///
/// Needs a Tokio runtime with the time driver.
///
/// # Safety
///
/// Every segment must be readable device memory for `engine` (for [`HostCopy`], live host memory)
/// and must not be written until the returned future has completed or been dropped.
///
/// # Example
///
/// ```
/// use memkv::mem::staging::{HostCopy, PageAlignedHost, Segment, SlotPool, stage_out};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SlotPool::new(Box::new(PageAlignedHost::new(4 * 4096)?), 4096)?;
/// let engine = HostCopy::new()?;
/// let block = vec![7u8; 10_000]; // stands in for device memory
/// let segments = [Segment::new(block.as_ptr().expose_provenance() as u64, block.len() as u64, 0)];
/// let mut sent = 0;
/// let rt = tokio::runtime::Runtime::new()?;
/// // SAFETY: `block` is live host memory (HostCopy's device address space) and is not written
/// // until `stage_out` has returned.
/// rt.block_on(unsafe {
///     stage_out(&pool, &engine, &segments, |chunk| {
///         sent += chunk.data.len(); // a real sender writes `chunk.data` to the wire
///         async move { Ok(()) }
///     })
/// })?;
/// assert_eq!(sent, block.len());
/// assert_eq!(pool.stats().busy, 0);
/// # Ok(()) }
/// ```
pub async unsafe fn stage_out<E, F, Fut>(
    pool: &SlotPool,
    engine: &E,
    segments: &[Segment],
    mut send: F,
) -> Result<(), StagingError>
where
    E: CopyEngine,
    F: FnMut(Chunk) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    validate(segments)?;
    let mut plan = ChunkPlan::new(segments, pool.slot_size());
    let mut next = plan.next();
    let mut acquire = pin!(None);
    let mut copies = Copies::new();
    let mut sends = FuturesUnordered::new();
    let mut failure: Option<StagingError> = None;

    loop {
        if failure.is_some() {
            next = None;
            acquire.set(None);
        } else if next.is_some() && acquire.is_none() {
            acquire.set(Some(pool.acquire()));
        }
        if acquire.is_none() && copies.is_empty() && sends.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            slot = poll_some(acquire.as_mut()), if acquire.is_some() => {
                acquire.set(None);
                let Some(chunk) = next.take() else { continue };
                next = plan.next();
                // SAFETY: `chunk.len <= slot_size` by the plan; the caller promised the segment
                // stays valid until this future completes or is dropped, and the in-flight copy is
                // settled before either (awaited below, or drained by `InFlight::drop`).
                match unsafe { InFlight::start(engine, Direction::DeviceToHost, slot, chunk.addr, chunk.len) } {
                    Ok(copy) => copies.push(copy, chunk),
                    Err(err) => note(&mut failure, err),
                }
            }
            Some((chunk, result)) = copies.next() => match result {
                Ok(slot) if failure.is_none() => {
                    pool.shared.bytes_out.fetch_add(chunk.len as u64, Ordering::Relaxed);
                    let data = slot.freeze(chunk.len);
                    let fut = send(Chunk {
                        block: chunk.block,
                        segment: chunk.segment,
                        offset_in_segment: chunk.offset,
                        len: chunk.len,
                        data,
                    });
                    sends.push(sent(fut, chunk));
                }
                Ok(_slot) => {}
                Err(err) => note(&mut failure, err),
            },
            Some(result) = sends.next() => {
                if let Err(err) = result {
                    note(&mut failure, err);
                }
            }
            else => break,
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Receives into device memory through staging slots: for each slot-sized chunk of `segments`,
/// lease a slot (waiting while all are busy), hand it to `fetch` to fill its first
/// [`ChunkReq::len`] bytes (e.g. from the wire) and give it back, then copy slot → device with
/// `engine` and release the slot. Fetches of later chunks run while earlier chunks are copied;
/// fetches run concurrently and may finish in any order.
///
/// Errors are handled as in [`stage_out`]; on error the device ranges may be partly written.
///
/// Needs a Tokio runtime with the time driver.
///
/// # Safety
///
/// Every segment must be writable device memory for `engine` (for [`HostCopy`], live host memory)
/// and must be neither read nor written by anyone else until the returned future has completed or
/// been dropped.
pub async unsafe fn stage_in<E, F, Fut>(
    pool: &SlotPool,
    engine: &E,
    segments: &[Segment],
    mut fetch: F,
) -> Result<(), StagingError>
where
    E: CopyEngine,
    F: FnMut(ChunkReq, Slot) -> Fut,
    Fut: Future<Output = Result<Slot, BoxError>>,
{
    validate(segments)?;
    let mut plan = ChunkPlan::new(segments, pool.slot_size());
    let mut next = plan.next();
    let mut acquire = pin!(None);
    let mut fetches = FuturesUnordered::new();
    let mut copies = Copies::new();
    let mut failure: Option<StagingError> = None;

    loop {
        if failure.is_some() {
            next = None;
            acquire.set(None);
        } else if next.is_some() && acquire.is_none() {
            acquire.set(Some(pool.acquire()));
        }
        if acquire.is_none() && fetches.is_empty() && copies.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            slot = poll_some(acquire.as_mut()), if acquire.is_some() => {
                acquire.set(None);
                let Some(chunk) = next.take() else { continue };
                next = plan.next();
                let req = ChunkReq {
                    block: chunk.block,
                    segment: chunk.segment,
                    offset_in_segment: chunk.offset,
                    len: chunk.len,
                };
                fetches.push(fetched(fetch(req, slot), chunk));
            }
            Some((chunk, result)) = fetches.next() => match result {
                Ok(slot) if failure.is_none() => {
                    if slot.capacity() < chunk.len {
                        note(&mut failure, StagingError::SlotTooSmall {
                            block: chunk.block,
                            segment: chunk.segment,
                            offset: chunk.offset,
                            len: chunk.len,
                            capacity: slot.capacity(),
                        });
                        continue;
                    }
                    // SAFETY: `chunk.len <= slot.capacity()` was checked above; the caller promised
                    // the segment stays valid and unshared until this future completes or is
                    // dropped, and the copy is settled before either (awaited below, or drained by
                    // `InFlight::drop`).
                    match unsafe { InFlight::start(engine, Direction::HostToDevice, slot, chunk.addr, chunk.len) } {
                        Ok(copy) => copies.push(copy, chunk),
                        Err(err) => note(&mut failure, err),
                    }
                }
                Ok(_slot) => {}
                Err(err) => note(&mut failure, err),
            },
            Some((chunk, result)) = copies.next() => match result {
                Ok(_slot) => {
                    pool.shared.bytes_in.fetch_add(chunk.len as u64, Ordering::Relaxed);
                }
                Err(err) => note(&mut failure, err),
            },
            else => break,
        }
    }
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;

    use proptest::prelude::*;

    const TEST_DEADLINE: Duration = Duration::from_secs(2);

    /// Runs a test body with a deadline so a deadlock fails instead of hanging.
    async fn bounded<T>(fut: impl Future<Output = T>) -> T {
        match tokio::time::timeout(TEST_DEADLINE, fut).await {
            Ok(v) => v,
            Err(_) => panic!("test did not finish within {TEST_DEADLINE:?}"),
        }
    }

    fn pool(slots: usize, slot_size: usize) -> Arc<SlotPool> {
        SlotPool::new(Box::new(PageAlignedHost::new(slots * slot_size).unwrap()), slot_size).unwrap()
    }

    fn addr(v: &[u8]) -> u64 {
        v.as_ptr().expose_provenance() as u64
    }

    fn addr_mut(v: &mut [u8]) -> u64 {
        v.as_mut_ptr().expose_provenance() as u64
    }

    /// Deterministic pseudo-random bytes (xorshift64).
    fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Ev {
        CopyStart(usize),
        CopyDone(usize),
        CopyFailed(usize),
        SendStart(usize),
        SendEnd(usize),
        SendFailed(usize),
    }

    #[derive(Default, Clone)]
    struct Timeline(Arc<Mutex<Vec<Ev>>>);

    impl Timeline {
        fn push(&self, ev: Ev) {
            self.0.lock().push(ev);
        }
        fn events(&self) -> Vec<Ev> {
            self.0.lock().clone()
        }
        fn pos(&self, ev: Ev) -> usize {
            self.events().iter().position(|e| *e == ev).unwrap_or_else(|| panic!("{ev:?} never happened"))
        }
    }

    /// A copy engine modelling one CUDA stream: copies run back to back, each taking `copy_time`;
    /// the bytes move at `start`, completion is reported once the modelled time has passed.
    struct FakeEngine {
        timeline: Timeline,
        copy_time: Duration,
        started: AtomicUsize,
        stream_free_at: Mutex<Instant>,
        fail_start: Option<usize>,
        fail_poll: Option<usize>,
        /// Ids of the copies reported done, and how many polls asked about a copy while an older
        /// one had not been reported done yet.
        done: Mutex<Vec<usize>>,
        polled_out_of_turn: AtomicUsize,
    }

    struct FakeTicket {
        id: usize,
        ready_at: Instant,
        reported: AtomicBool,
    }

    impl FakeEngine {
        fn new(timeline: &Timeline, copy_time: Duration) -> Self {
            Self {
                timeline: timeline.clone(),
                copy_time,
                started: AtomicUsize::new(0),
                stream_free_at: Mutex::new(Instant::now()),
                fail_start: None,
                fail_poll: None,
                done: Mutex::default(),
                polled_out_of_turn: AtomicUsize::new(0),
            }
        }

        fn started(&self) -> usize {
            self.started.load(Ordering::SeqCst)
        }
    }

    // SAFETY: `poll_done` only compares clocks; the bytes are copied before `start` returns, so
    // `Ok(true)` is never early; `Err` is returned only for a copy that already finished moving
    // bytes; a failed `start` copies nothing.
    unsafe impl CopyEngine for FakeEngine {
        type Ticket = FakeTicket;

        unsafe fn start(&self, dir: Direction, dst: u64, src: u64, len: usize) -> Result<FakeTicket, StagingError> {
            let id = self.started.fetch_add(1, Ordering::SeqCst);
            if self.fail_start == Some(id) {
                return Err(StagingError::Copy {
                    direction: dir,
                    len,
                    message: format!("injected start failure {id}"),
                });
            }
            // SAFETY: forwarded from our caller's `start` contract.
            unsafe {
                ptr::copy(
                    ptr::with_exposed_provenance::<u8>(src as usize),
                    ptr::with_exposed_provenance_mut::<u8>(dst as usize),
                    len,
                )
            };
            let ready_at = {
                let mut free = self.stream_free_at.lock();
                *free = (*free).max(Instant::now()) + self.copy_time;
                *free
            };
            self.timeline.push(Ev::CopyStart(id));
            Ok(FakeTicket { id, ready_at, reported: AtomicBool::new(false) })
        }

        fn poll_done(&self, t: &FakeTicket) -> Result<bool, StagingError> {
            if self.done.lock().len() < t.id {
                self.polled_out_of_turn.fetch_add(1, Ordering::SeqCst);
            }
            if Instant::now() < t.ready_at {
                return Ok(false);
            }
            if self.fail_poll == Some(t.id) {
                if !t.reported.swap(true, Ordering::SeqCst) {
                    self.timeline.push(Ev::CopyFailed(t.id));
                }
                return Err(StagingError::Copy {
                    direction: Direction::DeviceToHost,
                    len: 0,
                    message: format!("injected completion failure {}", t.id),
                });
            }
            if !t.reported.swap(true, Ordering::SeqCst) {
                self.timeline.push(Ev::CopyDone(t.id));
                self.done.lock().push(t.id);
            }
            Ok(true)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_is_byte_exact_across_slot_boundaries() {
        const SLOT: usize = 4096;
        let pool = pool(4, SLOT);
        let engine = HostCopy::new().unwrap();
        // Smaller than, equal to, a multiple of, and a non-multiple of a slot; the last block has
        // two separate segments.
        let sizes = [1, 100, SLOT - 1, SLOT, SLOT + 1, 3 * SLOT, 3 * SLOT + 123, 10_000, 700, 5_000];
        let blocks = [0, 1, 2, 3, 4, 5, 6, 7, 8, 8];
        let gap = 64;
        let total: usize = sizes.iter().map(|s| s + gap).sum();
        let src = pattern(total, 0x9e37_79b9_7f4a_7c15);
        let mut segments = Vec::new();
        let mut at = 0;
        for (size, block) in sizes.iter().zip(blocks) {
            segments.push(Segment::new(addr(&src) + at as u64, *size as u64, block));
            at += size + gap;
        }

        type Store = Arc<Mutex<HashMap<(usize, u64), Vec<u8>>>>;
        let store: Store = Arc::default();
        let wrong_block = Arc::new(AtomicBool::new(false));
        let send = |chunk: Chunk| {
            let store = store.clone();
            let wrong_block = wrong_block.clone();
            let expected_block = segments[chunk.segment].block;
            async move {
                if chunk.block != expected_block || chunk.len != chunk.data.len() || chunk.len > SLOT {
                    wrong_block.store(true, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
                store.lock().insert((chunk.segment, chunk.offset_in_segment), chunk.data.to_vec());
                Ok(())
            }
        };
        // SAFETY: `src` outlives the call and is not written during it.
        bounded(unsafe { stage_out(&pool, &engine, &segments, send) }).await.unwrap();
        assert!(!wrong_block.load(Ordering::SeqCst), "a chunk carried the wrong block, length or size");
        let expected_chunks: usize = sizes.iter().map(|s| s.div_ceil(SLOT)).sum();
        assert_eq!(store.lock().len(), expected_chunks);

        let mut dst = vec![0u8; total];
        let dst_base = addr_mut(&mut dst);
        let in_segments: Vec<Segment> =
            segments.iter().map(|s| Segment::new(dst_base + (s.addr - addr(&src)), s.len, s.block)).collect();
        let fetch = |req: ChunkReq, mut slot: Slot| {
            let store = store.clone();
            async move {
                let data = store.lock().get(&(req.segment, req.offset_in_segment)).cloned().ok_or("chunk missing")?;
                if data.len() != req.len {
                    return Err(format!("stored {} bytes, asked for {}", data.len(), req.len).into());
                }
                tokio::task::yield_now().await;
                slot.as_mut_slice()[..req.len].copy_from_slice(&data);
                Ok(slot)
            }
        };
        // SAFETY: `dst` outlives the call and nothing else touches it during it.
        bounded(unsafe { stage_in(&pool, &engine, &in_segments, fetch) }).await.unwrap();

        let mut at = 0;
        for size in sizes {
            assert_eq!(dst[at..at + size], src[at..at + size], "block bytes differ at {at}");
            assert!(dst[at + size..at + size + gap].iter().all(|b| *b == 0), "gap after {at} was written");
            at += size + gap;
        }
        let stats = pool.stats();
        let payload: usize = sizes.iter().sum();
        assert_eq!(stats.bytes_staged_out, payload as u64);
        assert_eq!(stats.bytes_staged_in, payload as u64);
        assert_eq!(stats.busy, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pool_of_two_slots_applies_backpressure() {
        const SLOT: usize = 1024;
        let pool = pool(2, SLOT);
        let engine = HostCopy::new().unwrap();
        let src = pattern(20 * SLOT, 7);
        let segments = [Segment::new(addr(&src), src.len() as u64, 0)];
        let sending = Arc::new(AtomicUsize::new(0));
        let max_sending = Arc::new(AtomicUsize::new(0));
        let send = |chunk: Chunk| {
            let (sending, max_sending) = (sending.clone(), max_sending.clone());
            async move {
                let now = sending.fetch_add(1, Ordering::SeqCst) + 1;
                max_sending.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                sending.fetch_sub(1, Ordering::SeqCst);
                drop(chunk);
                Ok(())
            }
        };
        // SAFETY: `src` outlives the call and is not written during it.
        bounded(unsafe { stage_out(&pool, &engine, &segments, send) }).await.unwrap();
        let stats = pool.stats();
        assert_eq!(stats.acquires, 20);
        assert!(stats.peak_busy <= 2, "{stats:?}");
        assert_eq!(stats.peak_busy, 2, "both slots should be used (double buffering): {stats:?}");
        assert!(stats.waits > 0, "20 chunks through 2 slots must wait: {stats:?}");
        assert!(stats.wait_ns_total > 0, "{stats:?}");
        assert_eq!(stats.busy, 0);
        assert!(max_sending.load(Ordering::SeqCst) <= 2);
        assert_eq!(stats.bytes_staged_out, 20 * SLOT as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copy_of_next_chunk_overlaps_send_of_previous() {
        const SLOT: usize = 64;
        const CHUNKS: usize = 6;
        let pool = pool(2, SLOT);
        let timeline = Timeline::default();
        let engine = FakeEngine::new(&timeline, Duration::from_millis(3));
        let src = pattern(CHUNKS * SLOT, 3);
        let segments = [Segment::new(addr(&src), src.len() as u64, 0)];
        let send = |chunk: Chunk| {
            let timeline = timeline.clone();
            let i = chunk.offset_in_segment as usize / SLOT;
            timeline.push(Ev::SendStart(i));
            async move {
                tokio::time::sleep(Duration::from_millis(8)).await;
                timeline.push(Ev::SendEnd(i));
                drop(chunk);
                Ok(())
            }
        };
        // SAFETY: `src` outlives the call and is not written during it.
        bounded(unsafe { stage_out(&pool, &engine, &segments, send) }).await.unwrap();
        // Double buffering: some copy starts while an earlier chunk is still on the wire. A serial
        // pipeline (copy, send, copy, send…) or a batched one (copy 2, send 2, copy 2…) never does.
        let events = timeline.events();
        let overlapped: Vec<(usize, usize)> = (0..CHUNKS)
            .flat_map(|i| (i + 1..CHUNKS).map(move |j| (i, j)))
            .filter(|&(i, j)| {
                let copy = timeline.pos(Ev::CopyStart(j));
                timeline.pos(Ev::SendStart(i)) < copy && copy < timeline.pos(Ev::SendEnd(i))
            })
            .collect();
        assert!(!overlapped.is_empty(), "no copy ran while a send was in progress: {events:?}");
        assert!(
            (0..CHUNKS - 1).any(|i| timeline.pos(Ev::CopyStart(i + 1)) < timeline.pos(Ev::SendEnd(i))),
            "every copy waited for the previous send: {events:?}"
        );
        for i in 0..CHUNKS {
            assert!(timeline.pos(Ev::CopyDone(i)) < timeline.pos(Ev::SendStart(i)), "sent before copied");
        }
        assert_eq!(pool.stats().busy, 0);
        assert_eq!(pool.stats().peak_busy, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_oldest_copy_in_flight_is_polled_and_completions_are_seen_in_order() {
        const SLOT: usize = 64;
        const CHUNKS: usize = 40;
        let pool = pool(8, SLOT);
        let timeline = Timeline::default();
        // Eight copies queued on the modelled stream: the newest waits 8 × 200 µs for its turn,
        // longer than SPIN_FOR.
        let engine = FakeEngine::new(&timeline, Duration::from_micros(200));
        let src = pattern(CHUNKS * SLOT, 11);
        let mut dst = vec![0u8; src.len()];
        let segments = [Segment::new(addr(&src), src.len() as u64, 0)];
        let sent = AtomicUsize::new(0);
        let send = |chunk: Chunk| {
            sent.fetch_add(chunk.len, Ordering::SeqCst);
            async move { Ok(()) }
        };
        // SAFETY: `src` outlives the call and is not written during it.
        bounded(unsafe { stage_out(&pool, &engine, &segments, send) }).await.unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), src.len());
        assert_eq!(pool.stats().peak_busy, 8, "the pool was not kept full");

        let back = pool.clone();
        let fetch = |req: ChunkReq, mut slot: Slot| {
            let at = (req.offset_in_segment as usize) % src.len();
            slot.as_mut_slice()[..req.len].copy_from_slice(&src[at..at + req.len]);
            async move { Ok::<_, BoxError>(slot) }
        };
        let segments_in = [Segment::new(addr_mut(&mut dst), src.len() as u64, 0)];
        // SAFETY: `dst` outlives the call and nobody else touches it during it.
        bounded(unsafe { stage_in(&back, &engine, &segments_in, fetch) }).await.unwrap();
        assert_eq!(dst, src);

        let done = engine.done.lock().clone();
        assert_eq!(done, (0..2 * CHUNKS).collect::<Vec<_>>(), "completions seen out of order");
        assert_eq!(
            engine.polled_out_of_turn.load(Ordering::SeqCst),
            0,
            "a copy was polled while an older one was still running"
        );
        assert_eq!(pool.stats().busy, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_send_stops_new_copies_and_returns_every_slot() {
        const SLOT: usize = 64;
        const SLOTS: usize = 3;
        const CHUNKS: usize = 16;
        let pool = pool(SLOTS, SLOT);
        let timeline = Timeline::default();
        let engine = FakeEngine::new(&timeline, Duration::from_millis(1));
        let src = pattern(CHUNKS * SLOT, 5);
        let segments = [Segment::new(addr(&src), src.len() as u64, 42)];
        let send = |chunk: Chunk| {
            let timeline = timeline.clone();
            let i = chunk.offset_in_segment as usize / SLOT;
            timeline.push(Ev::SendStart(i));
            async move {
                if i == 3 {
                    drop(chunk);
                    timeline.push(Ev::SendFailed(i));
                    return Err("peer reset the connection".into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                drop(chunk);
                timeline.push(Ev::SendEnd(i));
                Ok(())
            }
        };
        // SAFETY: `src` outlives the call and is not written during it.
        let err = bounded(unsafe { stage_out(&pool, &engine, &segments, send) }).await.unwrap_err();
        match &err {
            StagingError::Send { block: 42, segment: 0, offset, len: SLOT, .. } if *offset == 3 * SLOT as u64 => {}
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("peer reset the connection"), "{err}");
        assert_eq!(pool.stats().busy, 0);
        let failed_at = timeline.pos(Ev::SendFailed(3));
        let late: Vec<_> =
            timeline.events()[failed_at..].iter().filter(|e| matches!(e, Ev::CopyStart(_))).copied().collect();
        assert!(late.is_empty(), "copies started after the failure was seen: {late:?}");
        // When the failure was seen, the chunks in flight (started, send not finished) fit in the
        // slots, and nothing started afterwards.
        let finished = timeline.events()[..failed_at].iter().filter(|e| matches!(e, Ev::SendEnd(_))).count();
        assert!(
            engine.started() - finished <= SLOTS,
            "{} copies started, {finished} sends finished: {:?}",
            engine.started(),
            timeline.events()
        );
        assert!(engine.started() < CHUNKS, "the transfer ran to the end despite the failure");
        // Sends already under way were awaited, not abandoned.
        let events = timeline.events();
        for i in events.iter().filter_map(|e| if let Ev::SendStart(i) = e { Some(*i) } else { None }) {
            assert!(
                events.contains(&Ev::SendEnd(i)) || events.contains(&Ev::SendFailed(i)),
                "send {i} was abandoned: {events:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copy_engine_completion_error_surfaces_and_returns_every_slot() {
        const SLOT: usize = 64;
        let pool = pool(2, SLOT);
        let timeline = Timeline::default();
        let mut engine = FakeEngine::new(&timeline, Duration::from_micros(200));
        engine.fail_poll = Some(2);
        let src = pattern(8 * SLOT, 11);
        let segments = [Segment::new(addr(&src), src.len() as u64, 0)];
        let send = |chunk: Chunk| {
            let timeline = timeline.clone();
            let i = chunk.offset_in_segment as usize / SLOT;
            timeline.push(Ev::SendStart(i));
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(chunk);
                Ok(())
            }
        };
        // SAFETY: `src` outlives the call and is not written during it.
        let err = bounded(unsafe { stage_out(&pool, &engine, &segments, send) }).await.unwrap_err();
        assert!(
            matches!(&err, StagingError::Copy { message, .. } if message.contains("injected completion failure 2")),
            "{err:?}"
        );
        assert!(!timeline.events().contains(&Ev::SendStart(2)), "the failed chunk was sent");
        assert!(engine.started() < 8, "the transfer ran to the end despite the failure");
        assert_eq!(pool.stats().busy, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copy_engine_start_error_surfaces_in_stage_in() {
        const SLOT: usize = 64;
        let pool = pool(2, SLOT);
        let timeline = Timeline::default();
        let mut engine = FakeEngine::new(&timeline, Duration::from_micros(100));
        engine.fail_start = Some(1);
        let mut dst = vec![0u8; 6 * SLOT];
        let segments = [Segment::new(addr_mut(&mut dst), dst.len() as u64, 0)];
        let fetch = |_req: ChunkReq, slot: Slot| async move { Ok(slot) };
        // SAFETY: `dst` outlives the call and nothing else touches it during it.
        let err = bounded(unsafe { stage_in(&pool, &engine, &segments, fetch) }).await.unwrap_err();
        assert!(
            matches!(&err, StagingError::Copy { direction: Direction::HostToDevice, message, .. }
                if message.contains("injected start failure 1")),
            "{err:?}"
        );
        assert!(engine.started() <= 2 + 2, "{} copies started", engine.started());
        assert_eq!(pool.stats().busy, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_fetch_surfaces_and_returns_every_slot() {
        const SLOT: usize = 64;
        let pool = pool(3, SLOT);
        let engine = HostCopy::new().unwrap();
        let mut dst = vec![0u8; 10 * SLOT];
        let segments = [Segment::new(addr_mut(&mut dst), dst.len() as u64, 9)];
        // Chunk 2 fails at once, the others take a while, so the failure is seen early under any load.
        let fetch = |req: ChunkReq, slot: Slot| async move {
            if req.offset_in_segment == 2 * SLOT as u64 {
                return Err("object vanished".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(slot)
        };
        // SAFETY: `dst` outlives the call and nothing else touches it during it.
        let err = bounded(unsafe { stage_in(&pool, &engine, &segments, fetch) }).await.unwrap_err();
        assert!(matches!(&err, StagingError::Fetch { block: 9, .. }), "{err:?}");
        assert!(err.to_string().contains("object vanished"), "{err}");
        let stats = pool.stats();
        assert_eq!(stats.busy, 0);
        assert!(stats.acquires < 10, "the transfer ran to the end despite the failure: {stats:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_returning_a_smaller_slot_is_rejected() {
        let pool = pool(2, 256);
        let small = self::pool(2, 64);
        let engine = HostCopy::new().unwrap();
        let mut dst = vec![0u8; 200];
        let segments = [Segment::new(addr_mut(&mut dst), 200, 0)];
        let fetch = |_req: ChunkReq, slot: Slot| {
            let small = small.clone();
            async move {
                drop(slot);
                Ok(small.acquire().await)
            }
        };
        // SAFETY: `dst` outlives the call and nothing else touches it during it.
        let err = bounded(unsafe { stage_in(&pool, &engine, &segments, fetch) }).await.unwrap_err();
        assert!(matches!(err, StagingError::SlotTooSmall { capacity: 64, len: 200, .. }), "{err:?}");
        assert!(dst.iter().all(|b| *b == 0));
        assert_eq!(pool.stats().busy, 0);
        assert_eq!(small.stats().busy, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_stage_out_returns_every_slot() {
        let pool = pool(2, 128);
        let engine = HostCopy::new().unwrap();
        let src = pattern(10 * 128, 13);
        let segments = [Segment::new(addr(&src), src.len() as u64, 0)];
        let send = |chunk: Chunk| async move {
            let _hold = chunk;
            std::future::pending::<Result<(), BoxError>>().await
        };
        // SAFETY: `src` outlives the future (dropped by the timeout) and is not written.
        let fut = unsafe { stage_out(&pool, &engine, &segments, send) };
        assert!(tokio::time::timeout(Duration::from_millis(30), fut).await.is_err());
        let stats = pool.stats();
        assert_eq!(stats.busy, 0, "{stats:?}");
        assert_eq!(stats.peak_busy, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_stage_in_waits_for_running_copies_before_releasing_slots() {
        let pool = pool(2, 64);
        let timeline = Timeline::default();
        let engine = FakeEngine::new(&timeline, Duration::from_millis(20));
        let mut dst = vec![0u8; 4 * 64];
        let segments = [Segment::new(addr_mut(&mut dst), dst.len() as u64, 0)];
        let fetch = |_req: ChunkReq, slot: Slot| async move { Ok(slot) };
        // SAFETY: `dst` outlives the future (dropped by the timeout) and nothing else touches it.
        let fut = unsafe { stage_in(&pool, &engine, &segments, fetch) };
        assert!(tokio::time::timeout(Duration::from_millis(5), fut).await.is_err());
        assert!(engine.started() >= 1, "no copy was started before the drop");
        assert!(
            Instant::now() >= *engine.stream_free_at.lock(),
            "the dropped transfer released its slots while a copy was still running"
        );
        assert_eq!(pool.stats().busy, 0);
    }

    #[test]
    fn frozen_slot_returns_to_pool_when_last_bytes_clone_drops() {
        let pool = pool(2, 4096);
        let mut slot = pool.try_acquire().unwrap();
        slot.as_mut_slice()[..5].copy_from_slice(b"hello");
        let bytes = slot.freeze(5);
        let clone = bytes.slice(1..3);
        assert_eq!(&bytes[..], b"hello");
        drop(bytes);
        assert_eq!(pool.stats().busy, 1, "slot released while a clone is alive");
        assert_eq!(&clone[..], b"el");
        drop(clone);
        assert_eq!(pool.stats().busy, 0);
    }

    #[test]
    fn pool_needs_two_slots_and_a_nonzero_slot_size() {
        let err = SlotPool::new(Box::new(PageAlignedHost::new(8191).unwrap()), 4096).unwrap_err();
        assert!(matches!(err, StagingError::PoolTooSmall { slots: 1, slot_size: 4096, len: 8191 }), "{err:?}");
        assert!(err.to_string().contains("at least 2"), "{err}");
        let err = SlotPool::new(Box::new(PageAlignedHost::new(4096).unwrap()), 0).unwrap_err();
        assert!(matches!(err, StagingError::ZeroSlotSize));
        let pool = SlotPool::new(Box::new(PageAlignedHost::new(3 * 4096 + 5).unwrap()), 4096).unwrap();
        assert_eq!(pool.slots(), 3);
    }

    #[test]
    fn try_acquire_returns_none_when_all_slots_are_busy() {
        let pool = pool(2, 64);
        let a = pool.try_acquire().unwrap();
        let b = pool.try_acquire().unwrap();
        assert_ne!(a.index(), b.index());
        assert!(pool.try_acquire().is_none());
        drop(a);
        let c = pool.try_acquire().unwrap();
        assert_eq!(c.capacity(), 64);
        assert_eq!(pool.stats().acquires, 3);
        assert_eq!(pool.stats().waits, 0);
    }

    #[test]
    fn waiting_acquires_are_served_in_fifo_order() {
        let pool = pool(2, 64);
        let first = pool.try_acquire().unwrap();
        let second = pool.try_acquire().unwrap();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut a = pin!(pool.acquire());
        let mut b = pin!(pool.acquire());
        // Polling once queues each waiter, `a` before `b`.
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert!(pool.try_acquire().is_none(), "try_acquire jumped the queue");
        thread::sleep(Duration::from_millis(2));
        drop(first);
        assert!(b.as_mut().poll(&mut cx).is_pending(), "the later waiter was served first");
        let Poll::Ready(slot_a) = a.as_mut().poll(&mut cx) else { panic!("the first waiter was not served") };
        drop(second);
        let Poll::Ready(slot_b) = b.as_mut().poll(&mut cx) else { panic!("the second waiter was not served") };
        assert_ne!(slot_a.index(), slot_b.index());
        let stats = pool.stats();
        assert_eq!(stats.waits, 2);
        assert_eq!(stats.acquires, 4);
        assert!(stats.wait_ns_total >= 2 * 2_000_000, "{stats:?}");
        assert_eq!(stats.busy, 2);
        drop((slot_a, slot_b));
        assert_eq!(pool.stats().busy, 0);
    }

    #[test]
    fn page_aligned_host_memory_is_page_aligned() {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mem = PageAlignedHost::new(3 * page + 1).unwrap();
        assert_eq!(mem.as_ptr() as usize % page, 0);
        assert_eq!(mem.len(), 3 * page + 1);
        assert!(PageAlignedHost::new(0).is_err());
    }

    #[test]
    fn pool_stats_serialize_to_json() {
        let pool = pool(2, 64);
        let json = serde_json::to_value(pool.stats()).unwrap();
        assert_eq!(json["slots"], 2);
        assert_eq!(json["slot_size"], 64);
        assert_eq!(json["busy"], 0);
        assert_eq!(json["bytes_staged_out"], 0);
    }

    #[tokio::test]
    async fn segment_past_end_of_address_space_is_rejected() {
        let pool = pool(2, 64);
        let engine = HostCopy::new().unwrap();
        let segments = [Segment::new(u64::MAX - 10, 64, 0)];
        let send = |_chunk: Chunk| async { Ok(()) };
        // SAFETY: validation rejects the segment before any copy starts.
        let err = unsafe { stage_out(&pool, &engine, &segments, send) }.await.unwrap_err();
        assert!(matches!(err, StagingError::InvalidSegment { index: 0, len: 64, .. }), "{err:?}");
        assert_eq!(pool.stats().acquires, 0);
    }

    #[test]
    fn stage_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let pool = pool(2, 64);
        let engine = HostCopy::new().unwrap();
        let out = |_chunk: Chunk| async { Ok(()) };
        let inn = |_req: ChunkReq, slot: Slot| async move { Ok(slot) };
        // SAFETY: the futures are never polled, so no copy is started.
        let (a, b) = unsafe { (stage_out(&pool, &engine, &[], out), stage_in(&pool, &engine, &[], inn)) };
        assert_send(&a);
        assert_send(&b);
    }

    proptest! {
        #[test]
        fn chunk_plan_covers_every_byte_once(
            lens in proptest::collection::vec(0u64..20_000, 0..8),
            slot_size in 1usize..5_000,
        ) {
            let segments: Vec<Segment> = lens
                .iter()
                .enumerate()
                .map(|(i, len)| Segment::new(0x1000_0000 * (i as u64 + 1), *len, i * 3))
                .collect();
            let mut covered = vec![0u64; segments.len()];
            let mut count = 0usize;
            for c in ChunkPlan::new(&segments, slot_size) {
                let seg = segments[c.segment];
                prop_assert!(c.len > 0 && c.len <= slot_size);
                prop_assert_eq!(c.block, seg.block);
                prop_assert_eq!(c.offset, covered[c.segment], "chunks are contiguous, in order, no overlap");
                prop_assert_eq!(c.addr, seg.addr + c.offset);
                prop_assert!(c.offset + c.len as u64 <= seg.len, "a chunk spans past its segment");
                covered[c.segment] += c.len as u64;
                count += 1;
            }
            prop_assert_eq!(&covered, &lens);
            let expected: u64 = lens.iter().map(|l| l.div_ceil(slot_size as u64)).sum();
            prop_assert_eq!(count as u64, expected);
        }
    }
}
