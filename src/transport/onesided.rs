//! The one-sided provider interface, and the transfer loop written once against it.
//!
//! A provider moves bytes between this process's memory and a node's arena without the node's
//! CPU: RDMA WRITE/READ on a queue pair (`rdma`), or a `memcpy` into the node's arena mapped
//! from a memfd (`shm`). The control steps around a transfer (RESERVE → write → COMMIT, LOOKUP →
//! read → RELEASE) run over the authenticated session and are the client's
//! (`client::onesided`); this module only knows addresses, lengths and completions.
//!
//! The interface is deliberately narrow — register, post, poll — so that the state machines
//! above it are the same for every provider, and a provider is small enough to be reviewed
//! against its hardware's rules on its own.

use std::fmt;
use std::time::{Duration, Instant};

/// Which way a work request moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Local memory → the node's arena.
    Write,
    /// The node's arena → local memory.
    Read,
}

/// One one-sided transfer: `len` bytes between local address `local` and arena offset `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkRequest {
    /// Chosen by the caller; its completion carries it back.
    pub(crate) id: u64,
    /// Direction.
    pub(crate) dir: Dir,
    /// Local address (host memory for `shm`; any registered memory for `rdma`).
    pub(crate) local: u64,
    /// Local key from [`Provider::register`].
    pub(crate) lkey: u32,
    /// Offset inside the node's arena.
    pub(crate) remote: u64,
    /// Bytes.
    pub(crate) len: u64,
    /// Whether the local memory is host memory the CPU may read (its CRC32C can then be taken).
    pub(crate) host: bool,
}

/// A finished work request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completion {
    /// The request's id.
    pub(crate) id: u64,
    /// `Err` names what failed (a verbs completion status, a bounds violation).
    pub(crate) result: Result<(), String>,
    /// CRC32C of the bytes moved, when the provider took it on the way (`shm` copies through
    /// the CPU and takes it for free; `rdma` never does).
    pub(crate) crc: Option<u32>,
}

/// Why a provider call failed. Every failure leaves the provider unusable: the session that owns
/// it is closed and the next operation connects anew.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ProviderError(pub(crate) String);

/// A connected one-sided endpoint: one queue pair (or one mapping) towards one node.
///
/// Not shared: the session that owns it runs one transfer at a time on it, so completions never
/// have to be routed between callers.
pub(crate) trait Provider: Send + fmt::Debug {
    /// `"shm"` or `"rdma"`, for logs and metrics.
    fn kind(&self) -> &'static str;
    /// The local key for `[addr, addr + len)`, registering the range if needed (cached).
    fn register(&mut self, addr: u64, len: u64, host: bool) -> Result<u32, ProviderError>;
    /// Starts the transfers. At most [`max_outstanding`](Self::max_outstanding) may be
    /// unfinished at a time.
    ///
    /// # Safety
    /// Every request's local range must stay valid until its completion has been polled:
    /// readable for [`Dir::Write`], writable and used by nobody else for [`Dir::Read`].
    unsafe fn post(&mut self, wrs: &[WorkRequest]) -> Result<(), ProviderError>;
    /// Appends finished transfers to `out` without waiting.
    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), ProviderError>;
    /// Drops the registrations [`register`](Self::register) made: the transfer that used them
    /// has ended, and its memory may be freed and its addresses reused by other buffers.
    fn unregister_all(&mut self);
    /// Most work requests in flight at once.
    fn max_outstanding(&self) -> usize;
}

/// How [`run`] waits for completions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Polling {
    /// Busy-polls this long after a post before yielding between polls.
    pub(crate) spin: Duration,
    /// A transfer not complete after this long fails (the node or the fabric is gone).
    pub(crate) timeout: Duration,
}

/// Runs `wrs` to completion on `p`: posts them in windows of the provider's depth and polls.
/// Each request's id is set to its index. Returns one completion per request, in request order.
///
/// # Safety
/// As for [`Provider::post`], for every request, until this future completes — and if it is
/// dropped early, the provider must be dropped (its queue pair destroyed) before the memory is
/// reused.
pub(crate) async unsafe fn run(
    p: &mut dyn Provider,
    wrs: &mut [WorkRequest],
    polling: Polling,
) -> Result<Vec<Completion>, ProviderError> {
    for (i, w) in wrs.iter_mut().enumerate() {
        w.id = i as u64;
    }
    let depth = p.max_outstanding().max(1);
    let started = Instant::now();
    let mut done: Vec<Option<Completion>> = vec![None; wrs.len()];
    let mut got = Vec::with_capacity(depth);
    let (mut posted, mut finished) = (0usize, 0usize);
    let mut last_progress = Instant::now();
    while finished < wrs.len() {
        let room = depth - (posted - finished);
        if room > 0 && posted < wrs.len() {
            let end = (posted + room).min(wrs.len());
            // SAFETY: the caller's contract covers every request.
            unsafe { p.post(&wrs[posted..end])? };
            posted = end;
            last_progress = Instant::now();
        }
        got.clear();
        p.poll(&mut got)?;
        for c in got.drain(..) {
            let Some(i) = usize::try_from(c.id).ok().filter(|&i| i < posted && done[i].is_none()) else {
                return Err(ProviderError(format!("completion for unknown work request {}", c.id)));
            };
            done[i] = Some(c);
            finished += 1;
            last_progress = Instant::now();
        }
        if finished == wrs.len() {
            break;
        }
        if last_progress.elapsed() > polling.timeout {
            return Err(ProviderError(format!(
                "{} of {} one-sided transfers not complete after {:?} (MEMKV_RDMA_TIMEOUT_SECS)",
                wrs.len() - finished,
                wrs.len(),
                started.elapsed()
            )));
        }
        if last_progress.elapsed() >= polling.spin {
            tokio::task::yield_now().await;
        }
    }
    Ok(done.into_iter().map(|c| c.expect("every request completed")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Completes requests one poll after their post, in reverse order, with a bounded depth.
    #[derive(Debug)]
    struct Lagging {
        depth: usize,
        pending: VecDeque<u64>,
        max_seen: usize,
        fail_id: Option<u64>,
    }

    impl Provider for Lagging {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn register(&mut self, _: u64, _: u64, _: bool) -> Result<u32, ProviderError> {
            Ok(1)
        }
        unsafe fn post(&mut self, wrs: &[WorkRequest]) -> Result<(), ProviderError> {
            for w in wrs {
                self.pending.push_front(w.id);
            }
            self.max_seen = self.max_seen.max(self.pending.len());
            assert!(self.pending.len() <= self.depth, "posted past the provider's depth");
            Ok(())
        }
        fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), ProviderError> {
            if let Some(id) = self.pending.pop_front() {
                let result = if Some(id) == self.fail_id { Err("remote access error".into()) } else { Ok(()) };
                out.push(Completion { id, result, crc: None });
            }
            Ok(())
        }
        fn unregister_all(&mut self) {}
        fn max_outstanding(&self) -> usize {
            self.depth
        }
    }

    fn wrs(n: u64) -> Vec<WorkRequest> {
        (0..n)
            .map(|i| WorkRequest { id: 0, dir: Dir::Write, local: 0, lkey: 1, remote: i * 64, len: 64, host: true })
            .collect()
    }

    const POLL: Polling = Polling { spin: Duration::from_micros(10), timeout: Duration::from_secs(5) };

    #[tokio::test]
    async fn completions_come_back_in_request_order_and_the_depth_is_respected() {
        let mut p = Lagging { depth: 4, pending: VecDeque::new(), max_seen: 0, fail_id: Some(5) };
        let mut w = wrs(10);
        // SAFETY: the test provider never touches memory.
        let out = unsafe { run(&mut p, &mut w, POLL) }.await.unwrap();
        assert_eq!(out.iter().map(|c| c.id).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        assert_eq!(p.max_seen, 4);
        assert!(out[5].result.is_err() && out.iter().filter(|c| c.result.is_err()).count() == 1);
    }

    #[tokio::test]
    async fn a_provider_that_never_completes_times_out_with_the_setting_named() {
        #[derive(Debug)]
        struct Silent;
        impl Provider for Silent {
            fn kind(&self) -> &'static str {
                "test"
            }
            fn register(&mut self, _: u64, _: u64, _: bool) -> Result<u32, ProviderError> {
                Ok(0)
            }
            unsafe fn post(&mut self, _: &[WorkRequest]) -> Result<(), ProviderError> {
                Ok(())
            }
            fn poll(&mut self, _: &mut Vec<Completion>) -> Result<(), ProviderError> {
                Ok(())
            }
            fn unregister_all(&mut self) {}
            fn max_outstanding(&self) -> usize {
                8
            }
        }
        let polling = Polling { spin: Duration::ZERO, timeout: Duration::from_millis(50) };
        let (mut silent, mut w) = (Silent, wrs(3));
        // SAFETY: the test provider never touches memory.
        let e = unsafe { run(&mut silent, &mut w, polling) }.await.unwrap_err();
        assert!(e.0.contains("3 of 3") && e.0.contains("MEMKV_RDMA_TIMEOUT_SECS"), "{e}");
    }
}
