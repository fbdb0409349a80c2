//! Zero-copy access to memory the caller owns (the NIXL plugin's registered host memory).
//!
//! A PUT payload can be a view of caller memory ([`Loans::bytes`]) instead of a copy, and a GET
//! answer can be read from the socket straight into caller memory ([`Loans::target`],
//! [`Client::get_batch_into`](super::Client::get_batch_into)). Every such view is a *loan*
//! counted by its [`Loans`]: frames queued in a session, a reader task writing an answer, and
//! requests abandoned by a timed-out or cancelled caller all hold their loans until they no longer
//! touch the memory. The caller may reuse or free the memory once [`Loans::outstanding`] is 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

/// A counter of the client's live references to one caller's memory. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Loans {
    live: Arc<AtomicUsize>,
}

/// One live reference; returned to its [`Loans`] on drop.
#[derive(Debug)]
struct Loan {
    live: Arc<AtomicUsize>,
}

impl Drop for Loan {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Caller memory lent as a PUT payload.
struct Lent {
    ptr: *const u8,
    len: usize,
    _loan: Loan,
}

// SAFETY: `Loans::bytes`'s contract keeps the memory valid and unchanged while the loan lives, and
// it is only read.
unsafe impl Send for Lent {}
// SAFETY: as above; shared reads only.
unsafe impl Sync for Lent {}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see `Loans::bytes`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Caller memory an answer may be written into (see [`Client::get_batch_into`](super::Client::get_batch_into)).
#[derive(Debug)]
pub struct ReadTarget {
    ptr: *mut u8,
    len: usize,
    _loan: Loan,
}

// SAFETY: `Loans::target`'s contract gives the client exclusive use of the memory while the loan
// lives; only the one reader task that receives the answer writes to it.
unsafe impl Send for ReadTarget {}
// SAFETY: as above.
unsafe impl Sync for ReadTarget {}

impl ReadTarget {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory, for the one task that fills it.
    ///
    /// # Safety
    /// No other reference to the memory may be live (the client hands each target's answer to
    /// exactly one reader).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self) -> &mut [u8] {
        // SAFETY: see `Loans::target` and this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Loans {
    /// A new counter with nothing lent.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many views of the caller's memory are still alive.
    pub fn outstanding(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn loan(&self) -> Loan {
        self.live.fetch_add(1, Ordering::AcqRel);
        Loan { live: Arc::clone(&self.live) }
    }

    /// A PUT payload that is a view of `len` bytes at `ptr`, not a copy.
    ///
    /// # Safety
    /// The bytes must stay valid and unchanged until [`outstanding`](Self::outstanding) is 0.
    pub unsafe fn bytes(&self, ptr: *const u8, len: usize) -> Bytes {
        Bytes::from_owner(Lent { ptr, len, _loan: self.loan() })
    }

    /// `len` bytes at `ptr` that an answer may be written into.
    ///
    /// # Safety
    /// The bytes must stay valid, and must not be read or written by anyone else, until
    /// [`outstanding`](Self::outstanding) is 0.
    pub unsafe fn target(&self, ptr: *mut u8, len: usize) -> ReadTarget {
        ReadTarget { ptr, len, _loan: self.loan() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loans_are_counted_until_every_view_is_dropped() {
        let loans = Loans::new();
        let mut mem = vec![7u8; 64];
        // SAFETY: `mem` outlives every view and is not touched while they live.
        let (b, t) = unsafe { (loans.bytes(mem.as_ptr(), 16), loans.target(mem.as_mut_ptr().wrapping_add(32), 8)) };
        assert_eq!(loans.outstanding(), 2);
        let b2 = b.slice(4..8);
        drop(b);
        assert_eq!(loans.outstanding(), 2, "a slice of the payload keeps the loan");
        assert_eq!(&b2[..], &[7; 4]);
        drop(b2);
        assert_eq!(loans.outstanding(), 1);
        // SAFETY: the only reference to that memory.
        unsafe { t.slice() }.fill(1);
        assert_eq!(t.len(), 8);
        drop(t);
        assert_eq!(loans.outstanding(), 0);
        assert_eq!(mem[32..40], [1; 8]);
    }
}
