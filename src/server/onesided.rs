//! The node's half of the one-sided protocol: RESERVE, COMMIT, LOOKUP and RELEASE, and the
//! lease table of one session.
//!
//! PUT: RESERVE hands out an arena range per entry (a lease), the client writes the bytes
//! one-sidedly (RDMA WRITE, or a `memcpy` into the shared arena), COMMIT checks their CRC32C and
//! makes them visible exactly as a PUT_BATCH would. GET: LOOKUP pins each object (a lease) and
//! answers where its bytes are; the client reads them one-sidedly and RELEASEs the pins. Entries
//! of at most `INLINE_MAX` bytes are answered inline in LOOKUP's payload instead, unpinned.
//!
//! Invariants:
//! - a leased range is never handed to anyone else: a reservation is an unpublished `SlotMut`
//!   (or an in-flight range of a partial object), a pin an `Object` (eviction only drops the
//!   index's reference);
//! - a lease lives until it is committed or released, the session ends (the client died: the
//!   socket closed), or it expires (`lease_timeout`). An expired lease's token is forgotten
//!   (COMMIT/RELEASE get `LeaseExpired`), but its memory stays allocated for one more lease
//!   period (or until the session ends, if sooner), because the peer may still be writing or
//!   reading it one-sidedly: a client gives up on a transfer after `MEMKV_RDMA_TIMEOUT_SECS`
//!   and destroys its queue pair, so a second period leaves no access in flight;
//! - tokens are per session, so one session can never name another's leases.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Ctx;
use super::arena::SlotMut;
use super::drive::Persist;
use super::store::{Object, PartWrite};
use crate::par;
use crate::transport::crc_copy::crc_bulk;
use crate::wire::{self, Grant, Pinned, Status, WireError};

enum Lease {
    Whole(Box<[u8]>, SlotMut),
    Part(PartWrite),
    /// Held for its drop: the object's memory stays allocated while a reader may read it.
    Pin {
        _object: Object,
    },
}

/// The leases of one session.
pub(crate) struct Leases {
    next: u64,
    live: HashMap<u64, (Instant, Lease)>,
    /// Expired leases, by expiry time: their memory is freed one lease period later.
    quarantine: Vec<(Instant, Lease)>,
    timeout: Duration,
}

/// A LOOKUP's answer: an entry per key, and the bytes of the entries answered inline.
pub(crate) struct Looked {
    pub(crate) pins: Vec<Pinned>,
    pub(crate) inline: Vec<(Object, std::ops::Range<usize>)>,
}

/// Outcome of one COMMIT entry.
pub(crate) struct Committed {
    pub(crate) statuses: Vec<Status>,
    /// Drive writes of the published objects.
    pub(crate) writes: Vec<Persist>,
    /// Bytes made visible.
    pub(crate) bytes: u64,
}

impl Leases {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { next: 1, live: HashMap::new(), quarantine: Vec::new(), timeout }
    }

    fn grant(&mut self, ctx: &Ctx, l: Lease) -> u64 {
        ctx.stats.leases.fetch_add(1, Ordering::Relaxed);
        let t = self.next;
        self.next += 1;
        self.live.insert(t, (Instant::now(), l));
        t
    }

    /// Removes a live lease (committed, released or given back).
    fn take(&mut self, ctx: &Ctx, token: u64) -> Option<(Instant, Lease)> {
        let l = self.live.remove(&token)?;
        ctx.stats.leases.fetch_sub(1, Ordering::Relaxed);
        Some(l)
    }

    /// Leases granted and not yet committed or released, expired ones included until their
    /// memory is freed.
    pub(crate) fn held(&self) -> usize {
        self.live.len() + self.quarantine.len()
    }

    /// Revokes leases older than the timeout (returns how many), and frees the memory of those
    /// revoked a lease period ago.
    pub(crate) fn expire(&mut self, ctx: &Ctx, now: Instant) -> usize {
        let timeout = self.timeout;
        let before = self.quarantine.len();
        self.quarantine.retain(|(at, _)| now.saturating_duration_since(*at) < timeout);
        ctx.stats.leases.fetch_sub((before - self.quarantine.len()) as u64, Ordering::Relaxed);
        let old: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, (at, _))| now.saturating_duration_since(*at) >= timeout)
            .map(|(t, _)| *t)
            .collect();
        for t in &old {
            let Some((_, l)) = self.live.remove(t) else { continue };
            match l {
                // A range of a partial object: give it back to the object (another writer may
                // send it again); its buffer belongs to the object, not to this lease.
                Lease::Part(w) => {
                    ctx.stats.leases.fetch_sub(1, Ordering::Relaxed);
                    drop(ctx.store.finish_part(w, false));
                }
                other => self.quarantine.push((now, other)),
            }
        }
        old.len()
    }

    /// RESERVE: an arena range per entry.
    pub(crate) fn reserve(&mut self, ctx: &Ctx, meta: &[u8], count: u32) -> Result<Vec<Grant>, WireError> {
        let entries = wire::decode_reserve_entries(meta, count)?;
        let refused = |status| Grant { status, addr: 0, token: 0 };
        Ok(entries
            .iter()
            .map(|e| {
                let lease = if e.offset == 0 && e.length == e.total {
                    ctx.store.reserve(e.total).map(|s| Lease::Whole(e.key.into(), s))
                } else {
                    ctx.store.begin_part(e.key, e.offset, e.length, e.total).map(Lease::Part)
                };
                match lease {
                    Ok(l) => {
                        let addr = match &l {
                            Lease::Whole(_, s) => s.offset(),
                            Lease::Part(w) => w.arena_offset(),
                            Lease::Pin { .. } => unreachable!("RESERVE grants reservations only"),
                        };
                        Grant { status: Status::Ok, addr, token: self.grant(ctx, l) }
                    }
                    Err(err) => refused(err.status()),
                }
            })
            .collect())
    }

    /// COMMIT: checks each reservation's CRC32C and publishes it.
    ///
    /// Every entry's lease is taken first, then the CRCs are checked, on up to as many threads
    /// as the node's runtime has for a large COMMIT (a NIXL request of 16 × 16 MiB is one;
    /// [`par::map_by_bytes`]), then the objects are published in entry order.
    pub(crate) fn commit(&mut self, ctx: &Ctx, meta: &[u8], count: u32) -> Result<Committed, WireError> {
        enum Taken {
            Whole(Box<[u8]>, SlotMut),
            Part(PartWrite),
            Refused(Status),
        }
        let entries = wire::decode_commits(meta, count)?;
        let mut taken: Vec<Taken> = entries
            .iter()
            .map(|e| match self.live.get(&e.token) {
                None => Taken::Refused(Status::LeaseExpired),
                Some((_, Lease::Pin { .. })) => Taken::Refused(Status::InvalidRequest),
                Some(_) => match self.take(ctx, e.token) {
                    Some((_, Lease::Whole(key, slot))) => Taken::Whole(key, slot),
                    Some((_, Lease::Part(w))) => Taken::Part(w),
                    _ => Taken::Refused(Status::LeaseExpired),
                },
            })
            .collect();
        // The bytes to check: a whole object's always (its CRC is stored with it), a part's
        // when the client sent one.
        let views: Vec<&[u8]> = taken
            .iter_mut()
            .zip(&entries)
            .map(|(t, e)| match t {
                Taken::Whole(_, slot) => &*slot.bytes_mut(),
                Taken::Part(w) if e.crc.is_some() => &*w.bytes_mut(),
                _ => &[],
            })
            .collect();
        let crcs = par::map_by_bytes(&views, par::runtime_workers(), |v| v.len() as u64, |v| crc_bulk(0, v));
        let mut out = Committed { statuses: Vec::with_capacity(entries.len()), writes: Vec::new(), bytes: 0 };
        for ((t, e), crc) in taken.into_iter().zip(&entries).zip(crcs) {
            let status = match t {
                Taken::Refused(status) => status,
                Taken::Whole(_, _) if e.crc.is_some_and(|c| c != crc) => Status::ChecksumMismatch,
                Taken::Whole(key, slot) => {
                    let obj = Object::new(&key, slot.freeze(), crc);
                    out.bytes += obj.len();
                    out.writes.extend(ctx.publish(obj));
                    Status::Ok
                }
                Taken::Part(mut w) => {
                    let len = w.bytes_mut().len() as u64;
                    let ok = e.crc.is_none_or(|c| c == crc);
                    if let Some(obj) = ctx.store.finish_part(w, ok) {
                        out.writes.extend(ctx.publish(obj));
                    }
                    if ok {
                        out.bytes += len;
                        Status::Ok
                    } else {
                        Status::ChecksumMismatch
                    }
                }
            };
            out.statuses.push(status);
        }
        Ok(out)
    }

    /// LOOKUP: pins each object and answers where its wanted bytes are; small ones
    /// ([`INLINE_MAX`](wire::INLINE_MAX)) are answered inline instead: their ranges are returned
    /// for the answer's payload, in entry order.
    pub(crate) async fn lookup(&mut self, ctx: &Ctx, meta: &[u8], count: u32) -> Result<Looked, WireError> {
        let entries = wire::decode_get_entries(meta, count)?;
        let found = futures_util::future::join_all(entries.iter().map(|e| ctx.lookup(e.key))).await;
        let none = |status| Pinned { status, addr: 0, length: 0, total: 0, crc: 0, token: 0 };
        let mut inline = Vec::new();
        let pins = entries
            .iter()
            .zip(found)
            .map(|(e, obj)| {
                let Some(obj) = obj else { return none(Status::NotFound) };
                let Ok(range) = super::session::object_range(&obj, e.offset, e.length) else {
                    return Pinned { total: obj.len(), ..none(Status::InvalidRequest) };
                };
                let length = range.len() as u64;
                let crc = if length == obj.len() { obj.crc() } else { crc_bulk(0, &obj.bytes()[range.clone()]) };
                let total = obj.len();
                if length <= wire::INLINE_MAX {
                    inline.push((obj, range));
                    return Pinned { status: Status::Ok, addr: wire::INLINE_ADDR, length, total, crc, token: 0 };
                }
                let addr = obj.arena_offset() + range.start as u64;
                Pinned {
                    status: Status::Ok,
                    addr,
                    length,
                    total,
                    crc,
                    token: self.grant(ctx, Lease::Pin { _object: obj }),
                }
            })
            .collect();
        Ok(Looked { pins, inline })
    }

    /// RELEASE: drops pins (and abandoned reservations).
    pub(crate) fn release(&mut self, ctx: &Ctx, meta: &[u8], count: u32) -> Result<Vec<Status>, WireError> {
        let tokens = wire::decode_tokens(meta, count)?;
        Ok(tokens
            .into_iter()
            .map(|t| match self.take(ctx, t) {
                None => Status::LeaseExpired,
                Some((_, Lease::Part(w))) => {
                    drop(ctx.store.finish_part(w, false));
                    Status::Ok
                }
                Some(_) => Status::Ok,
            })
            .collect())
    }

    /// Ends the session: every lease is dropped (the peer is gone), partial ranges given back.
    pub(crate) fn close(&mut self, ctx: &Ctx) {
        let held = self.live.len() + self.quarantine.len();
        ctx.stats.leases.fetch_sub(held as u64, Ordering::Relaxed);
        for (_, (_, l)) in self.live.drain() {
            if let Lease::Part(w) = l {
                drop(ctx.store.finish_part(w, false));
            }
        }
        self.quarantine.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{BatchGetEntry, BatchPutEntry, CommitEntry};

    fn reserve_meta(entries: &[(&[u8], u64, u64, u64)]) -> Vec<u8> {
        let e: Vec<BatchPutEntry<'_>> = entries
            .iter()
            .map(|&(key, offset, length, total)| BatchPutEntry { key, offset, length, total, crc: 0 })
            .collect();
        let mut m = Vec::new();
        wire::encode_put_entries(&e, &mut m);
        m
    }

    fn commit_meta(c: &[CommitEntry]) -> Vec<u8> {
        let mut m = Vec::new();
        wire::encode_commits(c, &mut m);
        m
    }

    fn lookup_meta(keys: &[&[u8]]) -> Vec<u8> {
        let e: Vec<BatchGetEntry<'_>> = keys.iter().map(|&key| BatchGetEntry { key, offset: 0, length: 0 }).collect();
        let mut m = Vec::new();
        wire::encode_get_entries(&e, &mut m);
        m
    }

    /// Writes `bytes` at arena offset `addr`, as a one-sided peer would.
    fn write(ctx: &Ctx, addr: u64, bytes: &[u8]) {
        // SAFETY: the range was reserved for this writer and is inside the arena.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ctx.store.arena().base().add(addr as usize), bytes.len())
        }
    }

    fn read(ctx: &Ctx, addr: u64, len: u64) -> Vec<u8> {
        // SAFETY: the range is pinned and inside the arena.
        unsafe { std::slice::from_raw_parts(ctx.store.arena().base().add(addr as usize), len as usize) }.to_vec()
    }

    fn leases(ctx: &Ctx) -> u64 {
        ctx.stats.leases.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn reserve_write_commit_then_lookup_read_release() {
        let ctx = Ctx::for_tests(1 << 20, Duration::from_secs(30));
        let mut l = Leases::new(ctx.lease_timeout);
        let big = vec![7u8; 20_000];
        let g = l
            .reserve(&ctx, &reserve_meta(&[(b"a", 0, 20_000, 20_000), (b"b", 0, 5, 10), (b"b", 5, 5, 10)]), 3)
            .unwrap();
        assert!(g.iter().all(|g| g.status == Status::Ok), "{g:?}");
        assert_eq!(leases(&ctx), 3);
        write(&ctx, g[0].addr, &big);
        write(&ctx, g[1].addr, b"hello");
        write(&ctx, g[2].addr, b"world");
        assert!(ctx.store.get(b"a").is_none(), "nothing is visible before COMMIT");
        let commits = [
            CommitEntry { token: g[0].token, crc: Some(crc32c::crc32c(&big)) },
            CommitEntry { token: g[1].token, crc: Some(crc32c::crc32c(b"hello")) },
            CommitEntry { token: g[2].token, crc: None },
        ];
        let c = l.commit(&ctx, &commit_meta(&commits), 3).unwrap();
        assert_eq!(c.statuses, vec![Status::Ok; 3]);
        assert_eq!(c.bytes, 20_010);
        assert_eq!(leases(&ctx), 0);
        assert_eq!(ctx.store.get(b"b").unwrap().bytes(), b"helloworld");

        let looked = l.lookup(&ctx, &lookup_meta(&[b"a", b"b", b"nope"]), 3).await.unwrap();
        let p = &looked.pins;
        assert_eq!((p[0].status, p[1].status, p[2].status), (Status::Ok, Status::Ok, Status::NotFound));
        assert_eq!(read(&ctx, p[0].addr, p[0].length), big, "a large object is pinned in place");
        assert_eq!(p[0].crc, crc32c::crc32c(&big));
        // A small one comes inline, with no lease.
        assert_eq!((p[1].addr, p[1].token, p[1].crc), (wire::INLINE_ADDR, 0, crc32c::crc32c(b"helloworld")));
        assert_eq!(looked.inline.len(), 1);
        assert_eq!(&looked.inline[0].0.bytes()[looked.inline[0].1.clone()], b"helloworld");
        assert_eq!(leases(&ctx), 1);
        let mut m = Vec::new();
        wire::encode_tokens([p[0].token, 999], &mut m);
        assert_eq!(l.release(&ctx, &m, 2).unwrap(), vec![Status::Ok, Status::LeaseExpired]);
        assert_eq!(leases(&ctx), 0);
    }

    #[test]
    fn a_bad_crc_an_unknown_token_and_out_of_bounds_ranges_are_refused_and_nothing_becomes_visible() {
        let ctx = Ctx::for_tests(1 << 20, Duration::from_secs(30));
        let mut l = Leases::new(ctx.lease_timeout);
        let g = l.reserve(&ctx, &reserve_meta(&[(b"k", 0, 4, 4)]), 1).unwrap();
        write(&ctx, g[0].addr, b"abcd");
        let bad = [
            CommitEntry { token: g[0].token, crc: Some(crc32c::crc32c(b"abcX")) },
            CommitEntry { token: 42, crc: None },
        ];
        let c = l.commit(&ctx, &commit_meta(&bad), 2).unwrap();
        assert_eq!(c.statuses, vec![Status::ChecksumMismatch, Status::LeaseExpired]);
        assert!(ctx.store.get(b"k").is_none());
        assert_eq!(ctx.store.arena().used(), 0, "the refused reservation's memory is free again");
        // Bounds: a range outside its object is refused at RESERVE.
        let g = l.reserve(&ctx, &reserve_meta(&[(b"k", 8, 4, 10), (b"big", 0, 2 << 20, 2 << 20)]), 2).unwrap();
        assert_eq!((g[0].status, g[1].status), (Status::InvalidRequest, Status::PayloadTooLarge));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn a_large_commit_checked_on_several_threads_answers_each_entry_in_order() {
        let ctx = Ctx::for_tests(64 << 20, Duration::from_secs(30));
        let mut l = Leases::new(ctx.lease_timeout);
        const M: u64 = 3 << 20;
        let keys: [&[u8]; 6] = [b"w0", b"w1", b"w2", b"w3", b"w4", b"w5"];
        let mut wanted: Vec<_> = keys.iter().map(|&k| (k, 0, M, M)).collect();
        wanted.extend([(&b"p"[..], 0, M, 2 * M), (&b"p"[..], M, M, 2 * M)]);
        let g = l.reserve(&ctx, &reserve_meta(&wanted), 8).unwrap();
        assert!(g.iter().all(|g| g.status == Status::Ok), "{g:?}");
        let data: Vec<Vec<u8>> = (0..8u32)
            .map(|k| (0..M as u32).map(|i| i.wrapping_mul(2654435761).rotate_left(k) as u8).collect())
            .collect();
        for (g, d) in g.iter().zip(&data) {
            write(&ctx, g.addr, d);
        }
        let crc = |k: usize| Some(crc32c::crc32c(&data[k]));
        let mut commits: Vec<CommitEntry> = (0..8).map(|k| CommitEntry { token: g[k].token, crc: crc(k) }).collect();
        commits[2].crc = crc(1); // the wrong block's CRC
        commits[4].crc = None; // a whole object's bytes are checked anyway (its CRC is stored)
        commits[7].crc = None; // a part's only when the client sent one
        commits.insert(5, CommitEntry { token: 4242, crc: None });
        let c = l.commit(&ctx, &commit_meta(&commits), 9).unwrap();
        use Status::{ChecksumMismatch as Bad, LeaseExpired as Gone, Ok as Fine};
        assert_eq!(c.statuses, [Fine, Fine, Bad, Fine, Fine, Gone, Fine, Fine, Fine]);
        assert_eq!(c.bytes, 7 * M);
        for k in [0, 1, 3, 4, 5] {
            let obj = ctx.store.get(keys[k]).unwrap();
            assert_eq!((obj.bytes(), obj.crc()), (&data[k][..], crc32c::crc32c(&data[k])), "object {k}");
        }
        assert!(ctx.store.get(b"w2").is_none(), "the mismatched block is not published");
        assert_eq!(ctx.store.get(b"p").unwrap().bytes(), [&data[6][..], &data[7][..]].concat());
        assert_eq!(ctx.store.arena().used(), 7 * M, "the mismatched reservation's memory is free again");
    }

    #[tokio::test]
    async fn expired_leases_are_forgotten_and_their_memory_is_freed_one_lease_period_later() {
        let ctx = Ctx::for_tests(256, Duration::from_millis(10));
        let mut l = Leases::new(ctx.lease_timeout);
        let g = l.reserve(&ctx, &reserve_meta(&[(b"k", 0, 128, 128)]), 1).unwrap();
        let later = Instant::now() + Duration::from_millis(20);
        assert_eq!(l.expire(&ctx, later), 1);
        let c = l.commit(&ctx, &commit_meta(&[CommitEntry { token: g[0].token, crc: None }]), 1).unwrap();
        assert_eq!(c.statuses, vec![Status::LeaseExpired]);
        assert_eq!(ctx.store.arena().used(), 128, "a late one-sided write may still land there");
        assert_eq!(leases(&ctx), 1);
        assert_eq!(l.expire(&ctx, later + Duration::from_millis(5)), 0);
        assert_eq!(ctx.store.arena().used(), 128, "held for a whole lease period");
        assert_eq!(l.expire(&ctx, later + Duration::from_millis(20)), 0);
        assert_eq!((ctx.store.arena().used(), leases(&ctx), l.held()), (0, 0, 0), "freed one period later");
        // At the end of the session everything goes at once.
        let g = l.reserve(&ctx, &reserve_meta(&[(b"k", 0, 128, 128)]), 1).unwrap();
        assert_eq!(g[0].status, Status::Ok);
        l.expire(&ctx, Instant::now() + Duration::from_millis(20));
        l.close(&ctx);
        assert_eq!((ctx.store.arena().used(), leases(&ctx)), (0, 0));
    }

    #[tokio::test]
    async fn eviction_never_frees_a_pinned_or_reserved_range() {
        const N: u64 = 32 << 10; // above INLINE_MAX: LOOKUP pins it
        let ctx = Ctx::for_tests(2 * N, Duration::from_secs(30));
        let mut l = Leases::new(ctx.lease_timeout);
        let g = l.reserve(&ctx, &reserve_meta(&[(b"a", 0, N, N)]), 1).unwrap();
        write(&ctx, g[0].addr, &[1u8; N as usize]);
        l.commit(&ctx, &commit_meta(&[CommitEntry { token: g[0].token, crc: None }]), 1).unwrap();
        let p = l.lookup(&ctx, &lookup_meta(&[b"a"]), 1).await.unwrap().pins;
        assert_ne!(p[0].addr, wire::INLINE_ADDR);
        let r = l.reserve(&ctx, &reserve_meta(&[(b"b", 0, N, N)]), 1).unwrap();
        assert_eq!(r[0].status, Status::Ok);
        // The arena is full: a third object can only evict "a", whose memory the pin holds.
        assert_eq!(ctx.store.reserve(N).err().map(|e| e.status()), Some(Status::NoSpace));
        assert!(ctx.store.get(b"a").is_none(), "evicted from the index");
        assert_eq!(read(&ctx, p[0].addr, N), vec![1u8; N as usize], "the pinned bytes are intact");
        assert_ne!(r[0].addr, p[0].addr);
        l.close(&ctx);
        assert_eq!(ctx.store.arena().used(), 0);
    }
}
