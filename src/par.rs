//! Working through a large batch on several threads of one pool: the client's same-host copies
//! of a large request (`transport::shm`), the node's CRC check of a large COMMIT
//! (`server::onesided`) and the committing of its arena at start (`server::arena`, `--prefault`).

use std::any::Any;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};

/// A batch of at least this many bytes is worked on several threads; below it, handing runs to
/// other threads and waiting for them would cost more than it saves.
pub(crate) const PARALLEL_MIN: u64 = 8 << 20;

/// The threads the caller may keep busy: the workers of the tokio runtime it runs on (the
/// client's or the node's I/O threads, `MEMKV_IO_THREADS`), or 1 outside a runtime.
pub(crate) fn runtime_workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())
}

/// `f` of every item, in item order.
///
/// A batch of several items and [`PARALLEL_MIN`] bytes or more (`bytes` of each item) is worked
/// by this thread and by up to `workers - 1` helpers from the process's [`pool`], each taking the
/// next item not yet taken until none is left. Helpers come only from CPUs no batch is using: a
/// batch counts its own thread and its helpers against the process's CPUs, so a lone large
/// request spreads over the idle cores while two at once on a 2-core host run side by side, one
/// thread each, as single blocks do. (Helpers there as well only took turns on the same cores,
/// and each batch then waited for its slowest run: 5% less PUT throughput for 16-block
/// requests at 16 MiB.) Taking items one at a time keeps a helper that its core runs late from
/// holding up the batch: this thread takes the items it has not reached.
/// Without a pool (its threads could not be started) everything is worked here.
pub(crate) fn map_by_bytes<T, R>(
    items: &[T],
    workers: usize,
    bytes: impl Fn(&T) -> u64,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let wanted = if items.iter().map(&bytes).sum::<u64>() >= PARALLEL_MIN { workers.min(items.len()) } else { 1 };
    let Some(pool) = pool().filter(|_| wanted > 1) else {
        return items.iter().map(&f).collect();
    };
    let cpus = pool.reserve(wanted);
    let helpers = cpus.0.saturating_sub(1);
    if helpers == 0 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    // One list per thread, each sized for every item so that it never grows: allocations per
    // batch, not per item. A list is locked once, by the one thread that fills it.
    let outs: Vec<Mutex<Vec<(usize, R)>>> =
        (0..=helpers).map(|_| Mutex::new(Vec::with_capacity(items.len()))).collect();
    let work = |k: usize| {
        let mut out = outs[k].lock();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            out.push((i, f(item)));
        }
    };
    pool.run(helpers, &work);
    drop(cpus);
    let mut slots: Vec<Option<R>> = items.iter().map(|_| None).collect();
    for (i, r) in outs.into_iter().flat_map(Mutex::into_inner) {
        slots[i] = Some(r);
    }
    slots.into_iter().map(|r| r.expect("every item is taken exactly once")).collect()
}

/// The threads that help [`map_by_bytes`]: one per CPU, named `memkv-par-N`, started on first use
/// and kept for the life of the process, with a count of the CPUs no batch is using. Starting a
/// thread for each large request instead (a scoped thread per run) cost 7% of both cores of a
/// 2-core VM at 2 MiB × 16 per NIXL request: about 600 thread starts and exits a second
/// (docs/benchmarks.md).
///
/// An idle helper sleeps at once on the queue's condition variable. (Rayon's pool, used before,
/// has idle workers spin on `sched_yield` first: with the node and a NIXL client putting 16 MiB
/// blocks on the same 2 cores, 3,500 context switches a second on the helpers of the two
/// processes, of 4,850 in all, against 700 in all for the raw client's single blocks.) And a
/// batch never waits for a helper that has not started: once the items are all taken, the
/// helpers still queued are called off.
struct Pool {
    queue: Mutex<VecDeque<Help>>,
    ready: Condvar,
    free: AtomicUsize,
}

/// One helper's share of a batch, queued for a pool thread.
struct Help {
    batch: Arc<Batch>,
    /// Which of the batch's lists this helper fills.
    k: usize,
}

/// A batch as its helpers see it.
struct Batch {
    /// The owner's work, its lifetime erased: called only while `state` is not `called_off`,
    /// and the owner does not return before every call that started has finished.
    work: *const (dyn Fn(usize) + Sync),
    state: Mutex<Progress>,
    finished: Condvar,
}

// SAFETY: `work` is `Sync` and only called under the protocol above; the rest is thread-safe.
unsafe impl Send for Batch {}
// SAFETY: as above.
unsafe impl Sync for Batch {}

#[derive(Default)]
struct Progress {
    started: usize,
    finished: usize,
    called_off: bool,
    /// The first panic of a helper's call, raised again on the owner's thread.
    panic: Option<Box<dyn Any + Send>>,
}

/// CPUs taken by one batch (its own thread and its helpers); handed back when dropped (also when
/// the batch panicked).
struct Reserved<'a>(usize, &'a Pool);

impl Pool {
    /// Takes up to `n` of the CPUs no batch is using.
    fn reserve(&self, n: usize) -> Reserved<'_> {
        let mut got = 0;
        let _ = self.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
            got = free.min(n);
            Some(free - got)
        });
        Reserved(got, self)
    }

    /// Calls `work(0)` here and `work(1..=helpers)` on pool threads, and returns when every
    /// call that started has finished; helpers not started by the time `work(0)` returns are
    /// called off. A panic of any call reaches the caller.
    fn run(&self, helpers: usize, work: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the lifetime changes; `Done` below keeps this frame (and so `work`) alive
        // until no helper can call it any more, also when `work(0)` panics.
        let erased: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(work) };
        let batch = Arc::new(Batch { work: erased, state: Mutex::new(Progress::default()), finished: Condvar::new() });
        self.queue.lock().extend((1..=helpers).map(|k| Help { batch: Arc::clone(&batch), k }));
        for _ in 0..helpers {
            self.ready.notify_one();
        }
        /// Calls off the helpers not started and waits for the others.
        struct Done<'a>(&'a Batch);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let mut p = self.0.state.lock();
                p.called_off = true;
                while p.finished < p.started {
                    self.0.finished.wait(&mut p);
                }
            }
        }
        let done = Done(&batch);
        work(0);
        drop(done);
        if let Some(panic) = batch.state.lock().panic.take() {
            std::panic::resume_unwind(panic);
        }
    }

    /// A pool thread: takes the next helper's share off the queue, or sleeps until there is one.
    fn serve(&self) {
        loop {
            let help = {
                let mut q = self.queue.lock();
                loop {
                    match q.pop_front() {
                        Some(h) => break h,
                        None => self.ready.wait(&mut q),
                    }
                }
            };
            let batch = &help.batch;
            {
                let mut p = batch.state.lock();
                if p.called_off {
                    continue;
                }
                p.started += 1;
            }
            // SAFETY: the batch was not called off when this call started, so its owner waits
            // for it to finish before `work` goes away.
            let work = unsafe { &*batch.work };
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(help.k)));
            let mut p = batch.state.lock();
            p.finished += 1;
            if let Err(panic) = result {
                p.panic.get_or_insert(panic);
            }
            batch.finished.notify_all();
        }
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.1.free.fetch_add(self.0, Ordering::AcqRel);
    }
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            free: AtomicUsize::new(cpus),
        }));
        let started = (0..cpus)
            .filter(|i| std::thread::Builder::new().name(format!("memkv-par-{i}")).spawn(|| pool.serve()).is_ok())
            .count();
        (started > 0).then_some(pool)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The two tests below count on the pool's free CPUs: one at a time.
    static POOL_TESTS: Mutex<()> = Mutex::new(());

    fn name() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }

    #[test]
    fn every_item_is_mapped_once_in_order_here_and_on_the_pool_for_a_lone_batch() {
        let _one = POOL_TESTS.lock();
        let items: Vec<u64> = (0..37).map(|i| (i % 5 + 1) << 20).collect();
        let here = std::thread::current().id();
        let mut pool_threads = std::collections::HashSet::new();
        for _ in 0..3 {
            // Slow enough that a helper starts while items are left.
            let out = map_by_bytes(
                &items,
                4,
                |&n| n,
                |&n| {
                    std::thread::sleep(Duration::from_millis(2));
                    (n * 3, std::thread::current().id(), name())
                },
            );
            assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), items.iter().map(|n| n * 3).collect::<Vec<_>>());
            for (_, id, name) in out.iter().filter(|o| o.1 != here) {
                assert!(name.as_deref().is_some_and(|n| n.starts_with("memkv-par-")), "{name:?}");
                pool_threads.insert(*id);
            }
        }
        // With a CPU to spare the pool helped, and its threads are kept: three calls used no more
        // of them than there are CPUs.
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let least = usize::from(cpus > 1);
        assert!((least..=cpus).contains(&pool_threads.len()), "{} pool threads", pool_threads.len());
        // Below PARALLEL_MIN, or with one worker, everything runs on this thread.
        for (items, workers) in [(&items[..2], 4), (&items[..], 1)] {
            let out = map_by_bytes(items, workers, |&n| n, |&n| (n, std::thread::current().id()));
            assert!(out.iter().zip(items).all(|(&(m, t), &n)| m == n && t == here));
        }
    }

    #[test]
    fn helpers_no_thread_started_are_called_off_and_the_caller_works_every_item() {
        // A pool none of whose threads runs: the batch must not wait for them.
        let idle = Pool { queue: Mutex::new(VecDeque::new()), ready: Condvar::new(), free: AtomicUsize::new(4) };
        let items: Vec<u64> = (1..=9).collect();
        let next = AtomicUsize::new(0);
        let done = Mutex::new(Vec::new());
        let shares = Mutex::new(Vec::new());
        idle.run(3, &|k| {
            shares.lock().push(k);
            while let Some(&n) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                done.lock().push(n);
            }
        });
        assert_eq!(*shares.lock(), [0], "only the caller's share ran");
        assert_eq!(*done.lock(), items, "the caller took every item, in order");
        let queued = idle.queue.lock();
        assert_eq!(queued.len(), 3, "the three helpers stay queued");
        assert!(queued.iter().all(|h| h.batch.state.lock().called_off), "and are called off");
    }

    #[test]
    fn with_one_cpu_left_the_caller_works_the_batch_alone_and_a_panic_hands_the_cpus_back() {
        let _one = POOL_TESTS.lock();
        let pool = pool().expect("the pool starts");
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        // Another batch holds every CPU but one (other users hand theirs back within their call).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut held = Vec::new();
        while held.iter().map(|r: &Reserved<'_>| r.0).sum::<usize>() < cpus - 1 {
            assert!(Instant::now() < deadline, "CPUs were not handed back");
            held.push(pool.reserve(cpus - 1 - held.iter().map(|r| r.0).sum::<usize>()));
            std::thread::sleep(Duration::from_millis(1));
        }
        let items: Vec<u64> = vec![4 << 20; 8];
        let here = std::thread::current().id();
        let out = map_by_bytes(&items, 4, |&n| n, |_| std::thread::current().id());
        assert!(out.iter().all(|&t| t == here), "one CPU left, for this thread: no helper");
        drop(held);
        // A panicking item: the panic reaches the caller, whichever thread took the item, and
        // the CPUs are handed back.
        let r = std::panic::catch_unwind(|| {
            map_by_bytes(
                &(0..8u64).collect::<Vec<_>>(),
                4,
                |_| 4 << 20,
                |&i| {
                    std::thread::sleep(Duration::from_millis(2));
                    assert_ne!(i, 5, "item 5 fails");
                },
            )
        });
        assert!(r.is_err(), "the panic propagates");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.free.load(Ordering::Acquire) < cpus {
            assert!(Instant::now() < deadline, "CPUs were not handed back after the panic");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
