//! Recycled receive buffers for large answers.
//!
//! A fresh multi-megabyte buffer per GET costs a page fault per 4 KiB page (the kernel zeroes
//! each one) — measured at a quarter of the client's CPU on 2 MiB GETs. Buffers of 64 KiB and up
//! are therefore taken from per-size-class free lists and handed to the caller as `Bytes` whose
//! owner returns the buffer to its list when the last clone is dropped. The pool holds at most
//! `max_bytes` of idle buffers; anything beyond is freed normally.
//!
//! A pooled buffer has a page of room past its size class, so that a same-host read can put its
//! bytes at the page offset its copy runs fastest at ([`BufPool::take_placed`]): half a page
//! from the source's, where the streaming copy's loads never meet its pending stores (see
//! `transport::crc_copy`). Where the heap happened to put a buffer one to three lines past the
//! source's page offset, 16 MiB reads into it had copied at 1.0-1.1 GiB/s against 7-9 elsewhere.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

/// Smallest pooled buffer; smaller answers use the allocator directly.
const MIN_POOLED: usize = 64 * 1024;
/// Size classes: powers of two from 64 KiB to 1 GiB.
const CLASSES: usize = 15;
/// Room past a pooled buffer's size class for [`BufPool::take_placed`].
const ROOM: usize = 4096;

struct Inner {
    free: Mutex<(Vec<Vec<Vec<u8>>>, usize)>,
    max_bytes: usize,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub(crate) struct BufPool {
    inner: Arc<Inner>,
}

/// The size class of a pooled buffer's capacity (its class's size and the room past it).
fn class_of_capacity(cap: usize) -> Option<usize> {
    cap.checked_sub(ROOM).and_then(class_of).filter(|&c| cap == (MIN_POOLED << c) + ROOM)
}

fn class_of(len: usize) -> Option<usize> {
    if len < MIN_POOLED {
        return None;
    }
    let c = len.next_power_of_two().trailing_zeros() as usize - MIN_POOLED.trailing_zeros() as usize;
    (c < CLASSES).then_some(c)
}

/// A buffer on loan; returns to its pool on drop.
struct Loan {
    buf: Vec<u8>,
    pool: Weak<Inner>,
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let (Some(pool), Some(c)) = (self.pool.upgrade(), class_of_capacity(self.buf.capacity())) else { return };
        let cap = self.buf.capacity();
        let mut free = pool.free.lock();
        if free.1 + cap <= pool.max_bytes {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            free.0[c].push(buf);
            free.1 += cap;
        }
    }
}

impl BufPool {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self { inner: Arc::new(Inner { free: Mutex::new((vec![Vec::new(); CLASSES], 0)), max_bytes }) }
    }

    /// An empty buffer with capacity for at least `len` bytes.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let Some(c) = class_of(len) else { return Vec::with_capacity(len) };
        let mut free = self.inner.free.lock();
        match free.0[c].pop() {
            Some(b) => {
                free.1 -= b.capacity();
                b
            }
            None => Vec::with_capacity((MIN_POOLED << c) + ROOM),
        }
    }

    /// A buffer for `len` bytes to be copied from `src`, and where in it to put them: the offset
    /// whose page offset lies half a page from `src`'s where the buffer has the room (a pooled
    /// one), else 0. The buffer holds `at` zeroes; the bytes go to `buf[at..at + len]`, and
    /// [`freeze_at`](Self::freeze_at) hands them over.
    pub(crate) fn take_placed(&self, len: usize, src: u64) -> (Vec<u8>, usize) {
        let mut buf = self.take(len);
        let at = if buf.capacity() >= len + ROOM {
            let want = (src as usize).wrapping_add(ROOM / 2);
            want.wrapping_sub(buf.as_ptr() as usize) % ROOM
        } else {
            0
        };
        buf.resize(at, 0);
        (buf, at)
    }

    /// The bytes from `at` on of a filled buffer from [`take_placed`](Self::take_placed).
    pub(crate) fn freeze_at(&self, buf: Vec<u8>, at: usize) -> Bytes {
        self.freeze(buf).slice(at..)
    }

    /// Wraps a filled buffer; pooled sizes go back to the pool when the `Bytes` is dropped.
    pub(crate) fn freeze(&self, buf: Vec<u8>) -> Bytes {
        if class_of_capacity(buf.capacity()).is_some() {
            Bytes::from_owner(Loan { buf, pool: Arc::downgrade(&self.inner) })
        } else {
            Bytes::from(buf)
        }
    }

    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.inner.free.lock().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused_after_the_caller_drops_them() {
        let p = BufPool::new(16 << 20);
        let mut b = p.take(2 << 20);
        b.extend_from_slice(&vec![3u8; 2 << 20]);
        let ptr = b.as_ptr();
        let bytes = p.freeze(b);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(p.idle_bytes(), 0, "a clone still holds the buffer");
        assert_eq!(clone[0], 3);
        drop(clone);
        assert_eq!(p.idle_bytes(), (2 << 20) + ROOM);
        let again = p.take((2 << 20) - 5);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
    }

    #[test]
    fn small_buffers_bypass_the_pool_and_the_pool_is_bounded() {
        let p = BufPool::new((1 << 20) + ROOM);
        drop(p.freeze(p.take(100)));
        assert_eq!(p.idle_bytes(), 0);
        let a = p.freeze(p.take(1 << 20));
        let b = p.freeze(p.take(1 << 20));
        drop(a);
        drop(b);
        assert_eq!(p.idle_bytes(), (1 << 20) + ROOM, "idle bytes must stay within the bound");
    }

    #[test]
    fn placed_bytes_lie_half_a_page_from_the_source_and_the_buffer_returns_to_the_pool() {
        let p = BufPool::new(64 << 20);
        for (len, src) in [(16usize << 20, 0u64), (16 << 20, 0x1050), (100_000, 4095), (64 * 1024, 7 << 30)] {
            let (mut buf, at) = p.take_placed(len, src);
            assert!(at + len <= buf.capacity(), "len {len} src {src:#x}: {at} + {len} past the buffer");
            assert_eq!((buf.as_ptr() as usize + at) % 4096, (src as usize + 2048) % 4096, "len {len} src {src:#x}");
            assert_eq!(buf.len(), at);
            buf.resize(at + len, 0);
            buf[at..].fill(7);
            let ptr = buf.as_ptr();
            let bytes = p.freeze_at(buf, at);
            assert_eq!(bytes.len(), len);
            assert!(bytes.iter().all(|&b| b == 7));
            drop(bytes);
            let again = p.take(len);
            assert_eq!(again.as_ptr(), ptr, "len {len}: the buffer went back to the pool");
        }
        let (small, at) = p.take_placed(1000, 5);
        assert_eq!(at, 0, "a buffer too small to pool has no room to place the bytes in");
        assert!(small.capacity() >= 1000);
    }

    #[test]
    fn size_classes_cover_powers_of_two() {
        assert_eq!(class_of(1000), None);
        assert_eq!(class_of(64 * 1024), Some(0));
        assert_eq!(class_of(64 * 1024 + 1), Some(1));
        assert_eq!(class_of(2 << 20), Some(5));
        assert_eq!(class_of(usize::MAX / 2), None);
        assert_eq!(class_of_capacity((2 << 20) + ROOM), Some(5));
        assert_eq!(class_of_capacity(2 << 20), None, "a capacity without the room is not the pool's");
        assert_eq!(class_of_capacity(100), None);
    }
}
