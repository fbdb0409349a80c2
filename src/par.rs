//! Working through a large batch on several threads of one pool: the client's same-host copies
//! of a large request (`transport::shm`), the node's CRC check of a large COMMIT
//! (`server::onesided`) and the committing of its arena at start (`server::arena`, `--prefault`).

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
/// A batch of several items and [`PARALLEL_MIN`] bytes or more (`bytes` of each item) is split
/// into up to `workers` runs of about equal bytes. This thread works the first run; the others
/// go to the process's [`pool`] and this thread waits for them. Without a pool (its threads could
/// not be started) everything is worked here.
/// One item is one thread's work: without the split, the blocks of a large batch (a NIXL request
/// of 16 × 16 MiB, say) went one after the other on the one thread that took the request, while
/// single-block requests spread over the runtime's threads.
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
    let total: u64 = items.iter().map(&bytes).sum();
    let parts = if total >= PARALLEL_MIN { workers.min(items.len()) } else { 1 };
    let Some(pool) = pool().filter(|_| parts > 1) else {
        return items.iter().map(&f).collect();
    };
    let f = &f;
    let runs = split_by_bytes(items, parts, total, bytes);
    let mut outs: Vec<Vec<R>> = runs.iter().map(|_| Vec::new()).collect();
    pool.in_place_scope(|s| {
        let (here, helpers) = outs.split_first_mut().expect("split_by_bytes returns at least one run");
        for (&run, out) in runs[1..].iter().zip(helpers) {
            s.spawn(move |_| *out = run.iter().map(f).collect());
        }
        *here = runs[0].iter().map(f).collect();
    });
    outs.into_iter().flatten().collect()
}

/// The threads that work the runs of [`map_by_bytes`]: one per CPU, named `memkv-par-N`, started
/// on first use and kept for the life of the process. Starting a thread for each large request
/// instead (a scoped thread per run) cost 7% of both cores of a 2-core VM at 2 MiB × 16 per NIXL
/// request: about 600 thread starts and exits a second (docs/benchmarks.md).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        rayon::ThreadPoolBuilder::new().num_threads(cpus).thread_name(|i| format!("memkv-par-{i}")).build().ok()
    })
    .as_ref()
}

/// Splits `items` (of `bytes` each, `total` in all) into at most `parts` non-empty consecutive
/// runs of about `total / parts` bytes each (a run ends once it holds its share; an item is never
/// split).
fn split_by_bytes<T>(items: &[T], parts: usize, total: u64, bytes: impl Fn(&T) -> u64) -> Vec<&[T]> {
    let share = total.div_ceil(parts as u64).max(1);
    let mut runs = Vec::with_capacity(parts);
    let (mut start, mut held) = (0, 0u64);
    for (i, item) in items.iter().enumerate() {
        held += bytes(item);
        if held >= share && runs.len() + 1 < parts {
            runs.push(&items[start..=i]);
            (start, held) = (i + 1, 0);
        }
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_batches_are_split_into_runs_of_about_equal_bytes() {
        let lens = |sizes: &[u64], parts, total| -> Vec<Vec<u64>> {
            split_by_bytes(sizes, parts, total, |&n| n).iter().map(|r| r.to_vec()).collect()
        };
        let sizes = [4u64, 4, 4, 4, 1, 7];
        assert_eq!(lens(&sizes, 2, 24), [vec![4, 4, 4], vec![4, 1, 7]]);
        assert_eq!(lens(&sizes, 3, 24), [vec![4, 4], vec![4, 4], vec![1, 7]]);
        // Never more runs than asked, never an empty one; a big item ends its run alone.
        assert_eq!(lens(&sizes[4..], 2, 8), [vec![1, 7]]);
        assert_eq!(lens(&sizes, 6, 24), [vec![4], vec![4], vec![4], vec![4], vec![1, 7]]);
        assert_eq!(lens(&sizes[..1], 4, 4), [vec![4]]);
    }

    #[test]
    fn every_item_is_mapped_once_in_order_the_first_run_here_the_others_on_the_pool() {
        let items: Vec<u64> = (0..37).map(|i| (i % 5 + 1) << 20).collect();
        let total = items.iter().sum();
        let first_run = split_by_bytes(&items, 4, total, |&n| n)[0].len();
        let here = std::thread::current().id();
        let mut pool_threads = std::collections::HashSet::new();
        for _ in 0..3 {
            let out = map_by_bytes(
                &items,
                4,
                |&n| n,
                |&n| (n * 3, std::thread::current().id(), std::thread::current().name().map(str::to_owned)),
            );
            assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), items.iter().map(|n| n * 3).collect::<Vec<_>>());
            assert!(out[..first_run].iter().all(|o| o.1 == here), "the first run is worked by the caller");
            for (_, id, name) in &out[first_run..] {
                assert!(name.as_deref().is_some_and(|n| n.starts_with("memkv-par-")), "{name:?}");
                pool_threads.insert(*id);
            }
        }
        // The pool's threads are kept: three calls used no more of them than there are CPUs.
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert!((1..=cpus).contains(&pool_threads.len()), "{} pool threads", pool_threads.len());
        // Below PARALLEL_MIN, or with one worker, everything runs on this thread.
        for (items, workers) in [(&items[..2], 4), (&items[..], 1)] {
            let out = map_by_bytes(items, workers, |&n| n, |&n| (n, std::thread::current().id()));
            assert!(out.iter().zip(items).all(|(&(m, t), &n)| m == n && t == here));
        }
    }
}
