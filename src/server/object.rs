//! A complete, visible object: its frozen arena slot, CRC32C, key and LRU links, in one heap
//! allocation behind a reference-counted pointer.
//!
//! Why not `Arc<(Box<[u8]>, Slot, …)>`: the node keeps one of these per stored object, and with
//! millions of small objects the index's overhead is the node's memory bill. One allocation of
//! 56 bytes plus the key (a separate key allocation, the weak count and a 64-bit key length
//! would add 24–40 bytes and a pointer chase per lookup) keeps the index under 100 bytes per
//! object beyond the key (benches/index.rs).
//!
//! Holding an [`Object`] pins its arena memory: the slot returns to the arena when the last
//! clone drops, so eviction never frees bytes that a reader is still sending.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering, fence};

use super::arena::Slot;

/// The fixed part of the allocation; the key's bytes follow it.
#[repr(C)]
struct Header {
    refs: AtomicUsize,
    slot: Slot,
    crc: u32,
    key_len: u16,
    /// Read since the eviction scan last passed it (the index's second-chance bit).
    referenced: AtomicBool,
    /// LRU neighbours (slab indices of the store's index), used only under its lock.
    prev: AtomicU32,
    next: AtomicU32,
}

/// A shared handle to a complete object (cloning is a reference-count increment).
pub(crate) struct Object {
    ptr: NonNull<Header>,
}

// SAFETY: the header's fields are Send + Sync (the slot is never written, the counters and links
// are atomics) and the key bytes are immutable after construction; the reference count is atomic.
unsafe impl Send for Object {}
// SAFETY: as above.
unsafe impl Sync for Object {}

fn layout(key_len: usize) -> Layout {
    let (l, _) = Layout::new::<Header>().extend(Layout::array::<u8>(key_len).expect("key length")).expect("layout");
    l.pad_to_align()
}

impl Object {
    /// A complete object named `key` over `slot`, whose bytes have CRC32C `crc`.
    ///
    /// Keys are at most `wire::MAX_KEY_LEN` (512) bytes; anything longer is a bug upstream.
    pub(crate) fn new(key: &[u8], slot: Slot, crc: u32) -> Self {
        let key_len =
            u16::try_from(key.len()).expect("keys are checked against MAX_KEY_LEN before they reach the store");
        let layout = layout(key.len());
        // SAFETY: the layout has a non-zero size (the header alone is 56 bytes).
        let raw = unsafe { alloc(layout) }.cast::<Header>();
        let Some(ptr) = NonNull::new(raw) else { handle_alloc_error(layout) };
        let header = Header {
            refs: AtomicUsize::new(1),
            slot,
            crc,
            key_len,
            referenced: AtomicBool::new(false),
            prev: AtomicU32::new(u32::MAX),
            next: AtomicU32::new(u32::MAX),
        };
        // SAFETY: `raw` is a fresh allocation of `layout`, which holds a Header at offset 0 and
        // `key.len()` bytes right after it (Layout::extend with u8 alignment adds no padding).
        unsafe {
            raw.write(header);
            std::ptr::copy_nonoverlapping(key.as_ptr(), raw.add(1).cast::<u8>(), key.len());
        }
        Self { ptr }
    }

    fn header(&self) -> &Header {
        // SAFETY: the allocation lives while any handle does (reference counted).
        unsafe { self.ptr.as_ref() }
    }

    /// The key the object is stored under (namespace included).
    pub(crate) fn key(&self) -> &[u8] {
        let h = self.header();
        // SAFETY: `key_len` bytes were copied right after the header at construction and are
        // never written again; the allocation lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(1).cast::<u8>(), h.key_len as usize) }
    }

    /// All bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.header().slot.bytes()
    }

    /// CRC32C of all bytes.
    pub(crate) fn crc(&self) -> u32 {
        self.header().crc
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.header().slot.len()
    }

    /// Offset of the first byte inside the arena.
    pub(crate) fn arena_offset(&self) -> u64 {
        self.header().slot.offset()
    }

    /// The second-chance bit that the store's index keeps in the object.
    pub(super) fn referenced(&self) -> &AtomicBool {
        &self.header().referenced
    }

    /// The LRU links (previous, next) that the store's index keeps in the object.
    pub(super) fn links(&self) -> (&AtomicU32, &AtomicU32) {
        let h = self.header();
        (&h.prev, &h.next)
    }
}

impl Clone for Object {
    fn clone(&self) -> Self {
        // Relaxed suffices for an increment from a live handle (as in `Arc`); a count that
        // would overflow means leaked handles, and wrapping would free live memory: abort.
        if self.header().refs.fetch_add(1, Ordering::Relaxed) > isize::MAX as usize {
            std::process::abort();
        }
        Self { ptr: self.ptr }
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        if self.header().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every other handle's uses happen before this free (the Release/Acquire pair of `Arc`).
        fence(Ordering::Acquire);
        let layout = layout(self.header().key_len as usize);
        // SAFETY: this was the last handle, so nothing else reads the allocation; the header is
        // dropped once (returning the slot to the arena) and the memory freed with its layout.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            dealloc(self.ptr.as_ptr().cast::<u8>(), layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::arena::Arena;
    use super::*;

    fn object(arena: &std::sync::Arc<Arena>, key: &[u8], fill: u8, len: u64) -> Object {
        let mut s = arena.try_alloc(len).unwrap();
        s.bytes_mut().fill(fill);
        let crc = crc32c::crc32c(s.bytes_mut());
        Object::new(key, s.freeze(), crc)
    }

    #[test]
    fn an_object_carries_its_key_bytes_and_crc() {
        let a = Arena::new(4096).unwrap();
        for key in [&b""[..], b"k", b"dynamo/00000000000000000042", &[0xAB; 512]] {
            let o = object(&a, key, 5, 100);
            assert_eq!(o.key(), key);
            assert_eq!(o.bytes(), &[5u8; 100][..]);
            assert_eq!((o.len(), o.crc()), (100, crc32c::crc32c(&[5u8; 100])));
        }
        assert_eq!(a.used(), 0, "each object returned its slot when dropped");
    }

    #[test]
    fn the_memory_returns_when_the_last_clone_drops_on_any_thread() {
        let a = Arena::new(128).unwrap();
        let o = object(&a, b"k", 1, 128);
        let clones: Vec<Object> = (0..8).map(|_| o.clone()).collect();
        drop(o);
        assert!(a.try_alloc(64).is_none(), "the clones pin the memory");
        let handles: Vec<_> = clones
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    assert_eq!(c.bytes()[127], 1);
                    assert_eq!(c.key(), b"k");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(a.used(), 0);
        assert!(a.try_alloc(128).is_some());
    }

    #[test]
    fn the_fixed_part_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Header>(), 56);
        assert_eq!(layout(27).size(), 88);
        assert_eq!(std::mem::size_of::<Object>(), 8);
    }
}
