//! Working through a large batch on several threads: the client's same-host copies of a large
//! request (`transport::shm`), the node's CRC check of a large COMMIT (`server::onesided`) and
//! the committing of its arena at start (`server::arena`, `--prefault`).

/// A batch of at least this many bytes is worked on several threads; below it, starting a
/// thread would cost more than it saves.
pub(crate) const PARALLEL_MIN: u64 = 8 << 20;

/// The threads the caller may keep busy: the workers of the tokio runtime it runs on (the
/// client's or the node's I/O threads, `MEMKV_IO_THREADS`), or 1 outside a runtime.
pub(crate) fn runtime_workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())
}

/// `f` of every item, in item order.
///
/// A batch of several items and [`PARALLEL_MIN`] bytes or more (`bytes` of each item) is split
/// into up to `workers` runs of about equal bytes, worked side by side on scoped threads named
/// `name` (this one takes the first run). A run whose thread cannot be started is worked here.
/// One item is one thread's work: without the split, the blocks of a large batch (a NIXL request
/// of 16 × 16 MiB, say) went one after the other on the one thread that took the request, while
/// single-block requests spread over the runtime's threads.
pub(crate) fn map_by_bytes<T, R>(
    items: &[T],
    workers: usize,
    name: &str,
    bytes: impl Fn(&T) -> u64,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let total: u64 = items.iter().map(&bytes).sum();
    let parts = if total >= PARALLEL_MIN { workers.min(items.len()) } else { 1 };
    if parts <= 1 {
        return items.iter().map(&f).collect();
    }
    let f = &f;
    let runs = split_by_bytes(items, parts, total, bytes);
    std::thread::scope(|s| {
        let helpers: Vec<_> = runs[1..]
            .iter()
            .map(|&run| {
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn_scoped(s, move || run.iter().map(f).collect::<Vec<_>>())
                    .map_err(|_| run)
            })
            .collect();
        let mut out: Vec<R> = runs[0].iter().map(f).collect();
        for h in helpers {
            match h {
                Ok(h) => out.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
                Err(run) => out.extend(run.iter().map(f)),
            }
        }
        out
    })
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
    fn every_item_is_mapped_once_in_order_on_as_many_threads_as_asked() {
        let items: Vec<u64> = (0..37).map(|i| (i % 5 + 1) << 20).collect();
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let out = map_by_bytes(
            &items,
            4,
            "memkv-par-test",
            |&n| n,
            |&n| {
                threads.lock().unwrap().insert(std::thread::current().id());
                n * 3
            },
        );
        assert_eq!(out, items.iter().map(|n| n * 3).collect::<Vec<_>>());
        assert_eq!(threads.lock().unwrap().len(), 4, "a batch of 111 MiB goes to 4 threads");
        // Below PARALLEL_MIN, or with one worker, everything runs on this thread.
        for (items, workers) in [(&items[..2], 4), (&items[..], 1)] {
            let here = std::thread::current().id();
            let out = map_by_bytes(items, workers, "memkv-par-test", |&n| n, |&n| (n, std::thread::current().id()));
            assert!(out.iter().zip(items).all(|(&(m, t), &n)| m == n && t == here));
        }
    }
}
