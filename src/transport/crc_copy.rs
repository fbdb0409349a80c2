//! Copies that take the CRC32C of the bytes they move in the same pass: each 64-byte line is
//! loaded once, stored, and checksummed from L1 right away. The CRC runs in three lanes (three
//! consecutive [`LANE`]-byte stretches at a time, so the `crc32` instruction's latency is hidden)
//! joined by a shift table, the scheme of the `crc32c` crate's own three-way loop. What is left
//! under a step goes in steps of [`SHORT_LANE`]s, so that blocks of 4 KiB up to 12 KiB (and such
//! remainders) are copied and checksummed in one pass too; the last bytes under a short step go
//! by `memcpy` and the crate.
//!
//! - [`crc_stream_copy`] stores around the cache (non-temporal stores; through it at the page
//!   offsets where those would stall) and checksums the source: same-host writes, and reads of
//!   1 MiB or more.
//! - [`copy_crc`] stores through the cache and checksums the destination: smaller same-host reads.
//! - [`copy_crc_src`] stores through the cache and checksums the source: a frame's payload into a
//!   ring, which its reader takes from the cache right away.
//! - [`crc_bulk`] only checksums, with the same lanes: bulk bytes likely cold in cache (the
//!   node's check at COMMIT of what a client wrote around the cache, a caller's value before it
//!   is sent, a stored range).
//!
//! Taking the CRC in a second pass read the (usually cold) source twice, or the destination once
//! more. The loop prefetches each line one step (three lanes) ahead: the hardware prefetchers
//! stop at 4 KiB page boundaries, so without it every lane started on a cold page. A streaming
//! copy stores whole lines (a head up to a 64-byte aligned destination goes by `memcpy`), in the
//! way that keeps its loads off the page offsets of its pending stores (see `stores_for`).
//! Where the CPU lacks AVX2 or SSE 4.2 the copies fall back to the two steps, piece by piece, and
//! the check to the `crc32c` crate.

/// Bytes per CRC lane; a step covers three of them.
const LANE: usize = 4096;
/// Bytes per lane of the short steps: 21 lines, so that a 4 KiB block is one short step and a
/// line.
const SHORT_LANE: usize = 1344;
/// The fallbacks' piece: checksummed and copied in turn while it is in L2.
const PIECE: usize = 256 * 1024;

/// The copies' shape: `(crc, src, dst, n)`, returning `crc` extended by the bytes moved.
pub(crate) type CopyFn = unsafe fn(u32, *const u8, *mut u8, usize) -> u32;

/// Copies `n` bytes from `src` to `dst` around the cache (non-temporal stores, fenced before
/// it returns; ordinary stores where `dst`'s page offset would stall them, see `stores_for`)
/// and returns `crc` extended by the source bytes as they were copied (as
/// `crc32c::crc32c_append(crc, src[..n])` when nothing writes `src` meanwhile).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes, and the two must not overlap.
pub(crate) unsafe fn crc_stream_copy(crc: u32, src: *const u8, dst: *mut u8, n: usize) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has the features; the caller's contract.
        return unsafe {
            match stores_for(src, dst) {
                Stores::Lagged => x86::lanes::<{ x86::STREAM_LAGGED }>(crc, src, dst, n),
                Stores::Cached => x86::lanes::<{ x86::CACHED_SRC }>(crc, src, dst, n),
                Stores::AtOnce => x86::lanes::<{ x86::STREAM }>(crc, src, dst, n),
            }
        };
    }
    // SAFETY: the caller's contract.
    unsafe { pieces::<false>(crc, src, dst, n) }
}

/// How the streaming copy stores.
#[derive(Debug, PartialEq)]
enum Stores {
    /// Each line as soon as it is loaded, around the cache.
    AtOnce,
    /// Around the cache, a round of lines from all three lanes loaded before the previous round
    /// is stored.
    Lagged,
    /// Through the cache.
    Cached,
}

/// How to store so that the copy's loads stay off its pending stores' page offsets, by where
/// `dst` lies against `src` modulo 4 KiB ("4K aliasing": the CPU matches a load against earlier
/// stores by the low 12 address bits, and a load that meets a store still in flight waits for
/// it; a non-temporal store stays in flight for long).
///
/// The three lanes are 4 KiB apart, so every lane's loads meet the page offsets of every lane's
/// stores. Storing each line as soon as it is loaded, the stores of the last few rounds are in
/// flight, `dst - src` past the lines they came from: a load meets one where `dst` lies from
/// part of a line below `src` to three lines above it. Stores a round behind the loads, and
/// after them, clear that up to a line above. From there to three lines above, those still meet
/// the loads of the rounds after them; ordinary stores, which do not wait in flight, are the
/// fastest there (stores four rounds behind, held on the stack, were no faster). 16 MiB copies on
/// the 2-core test VM, GiB/s (docs/benchmarks.md, "The streaming copy at every page offset"):
/// 1.0-1.2 within a line and 1.1-3.6 from one to three lines above, storing at once; 6.2-9.1
/// lagged within a line, 4.2-5.9 through the cache above it; 6-9 elsewhere.
fn stores_for(src: *const u8, dst: *const u8) -> Stores {
    match (dst as usize).wrapping_sub(src as usize).wrapping_add(64) % 4096 {
        0..=128 => Stores::Lagged,
        129..256 => Stores::Cached,
        _ => Stores::AtOnce,
    }
}

/// Copies `n` bytes from `src` to `dst` through the cache (the destination stays warm for its
/// reader) and returns `crc` extended by the bytes as they landed in `dst`, read back from L1.
///
/// # Safety
/// As [`crc_stream_copy`].
pub(crate) unsafe fn copy_crc(crc: u32, src: *const u8, dst: *mut u8, n: usize) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has the features; the caller's contract.
        return unsafe { x86::lanes::<{ x86::CACHED }>(crc, src, dst, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { pieces::<true>(crc, src, dst, n) }
}

/// Copies `n` bytes from `src` to `dst` through the cache and returns `crc` extended by the
/// source bytes as they were copied (what the sender meant to send, also should the destination
/// be shared memory another process writes).
///
/// # Safety
/// As [`crc_stream_copy`].
pub(crate) unsafe fn copy_crc_src(crc: u32, src: *const u8, dst: *mut u8, n: usize) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has the features; the caller's contract.
        return unsafe { x86::lanes::<{ x86::CACHED_SRC }>(crc, src, dst, n) };
    }
    // SAFETY: the caller's contract.
    unsafe { pieces::<false>(crc, src, dst, n) }
}

/// Asks the CPU to bring `bytes` into cache (a hint, for the next piece a loop will copy).
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is a hint and never faults.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
}

/// Returns `crc` extended by `bytes` (as `crc32c::crc32c_append`), read with the copies' lanes
/// and prefetch: for bytes likely cold in cache.
pub(crate) fn crc_bulk(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has the features; `bytes` is valid for reads, and CHECK writes nothing.
        return unsafe { x86::lanes::<{ x86::CHECK }>(crc, bytes.as_ptr(), std::ptr::null_mut(), bytes.len()) };
    }
    crc32c::crc32c_append(crc, bytes)
}

/// The fallback of both copies: piece by piece, `memcpy` and the CRC of the source (before the
/// copy) or of the destination (after it, `CRC_OF_DST`).
///
/// # Safety
/// As [`crc_stream_copy`].
unsafe fn pieces<const CRC_OF_DST: bool>(mut crc: u32, src: *const u8, dst: *mut u8, n: usize) -> u32 {
    let mut at = 0;
    while at < n {
        let k = PIECE.min(n - at);
        // SAFETY: `at + k <= n`; the caller's contract.
        unsafe {
            if !CRC_OF_DST {
                crc = crc32c::crc32c_append(crc, std::slice::from_raw_parts(src.add(at), k));
            }
            std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), k);
            if CRC_OF_DST {
                crc = crc32c::crc32c_append(crc, std::slice::from_raw_parts(dst.add(at), k));
            }
        }
        at += k;
    }
    crc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        _MM_HINT_T0, _mm_crc32_u64, _mm_prefetch, _mm_sfence, _mm256_loadu_si256, _mm256_setzero_si256,
        _mm256_storeu_si256, _mm256_stream_si256,
    };
    use std::sync::OnceLock;

    use super::{LANE, SHORT_LANE};

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("sse4.2")
    }

    /// `T[j][v]`: the raw CRC32C register (no pre- or post-inversion) that `v << 8j` becomes
    /// after a lane of zero bytes. CRC is linear, so four lookups shift any register by a lane.
    type ShiftTable = [[u32; 256]; 4];

    /// The shift table of a lane of `lane` bytes ([`LANE`] or [`SHORT_LANE`]).
    fn shift_table(lane: usize) -> &'static ShiftTable {
        static LONG: OnceLock<Box<ShiftTable>> = OnceLock::new();
        static SHORT: OnceLock<Box<ShiftTable>> = OnceLock::new();
        debug_assert!(lane == LANE || lane == SHORT_LANE);
        let table = if lane == LANE { &LONG } else { &SHORT };
        table.get_or_init(|| {
            let zeros = vec![0u8; lane];
            // `crc32c_append` inverts on the way in and out; undo both to get the raw register.
            let basis: Vec<u32> = (0..32).map(|i| !crc32c::crc32c_append(!(1u32 << i), &zeros)).collect();
            let mut t = Box::new([[0u32; 256]; 4]);
            for (j, row) in t.iter_mut().enumerate() {
                for (v, cell) in row.iter_mut().enumerate() {
                    *cell = (0..8).filter(|b| v >> b & 1 == 1).fold(0, |acc, b| acc ^ basis[8 * j + b]);
                }
            }
            t
        })
    }

    fn shift(t: &ShiftTable, x: u64) -> u64 {
        let x = x as u32;
        u64::from(
            t[0][(x & 0xff) as usize]
                ^ t[1][(x >> 8 & 0xff) as usize]
                ^ t[2][(x >> 16 & 0xff) as usize]
                ^ t[3][(x >> 24) as usize],
        )
    }

    /// [`lanes`]' modes: non-temporal stores and the CRC of the source lines just loaded.
    pub(super) const STREAM: u8 = 0;
    /// [`STREAM`] with each lane's stores one line behind its loads: a step's loads all come
    /// before the stores, which land 64 bytes below them (see `super::stores_for`).
    pub(super) const STREAM_LAGGED: u8 = 3;
    /// Ordinary stores and the CRC of the destination lines just stored.
    pub(super) const CACHED: u8 = 1;
    /// Ordinary stores and the CRC of the source lines just loaded.
    pub(super) const CACHED_SRC: u8 = 4;
    /// No copy (`dst` unused): the CRC of the source.
    pub(super) const CHECK: u8 = 2;

    /// The copy (or, with [`CHECK`], the read) in three lanes, long steps then short ones; see
    /// the modes. With the streaming modes the head up to a 64-byte aligned destination goes by
    /// `memcpy`, so that every non-temporal store fills whole lines.
    ///
    /// # Safety
    /// AVX2 and SSE 4.2 are present; otherwise as [`super::crc_stream_copy`], except that with
    /// [`CHECK`] `dst` is never used.
    #[target_feature(enable = "avx2,sse4.2")]
    pub(super) unsafe fn lanes<const MODE: u8>(crc: u32, src: *const u8, dst: *mut u8, n: usize) -> u32 {
        let streams = MODE == STREAM || MODE == STREAM_LAGGED;
        let head = if streams { ((64 - (dst as usize & 63)) & 63).min(n) } else { 0 };
        // SAFETY: every access below lies in the caller's ranges (`at + 3 * lane <= n` in the
        // loop; prefetches are hints and never fault); with the streaming modes, `dst + at + off`
        // (and `off - 64`) is 64-byte aligned there (both lanes and `off` are multiples of 64);
        // with CHECK nothing touches `dst`.
        unsafe {
            if streams {
                std::ptr::copy_nonoverlapping(src, dst, head);
            }
            let mut reg = u64::from(!crc32c::crc32c_append(crc, std::slice::from_raw_parts(src, head)));
            let mut at = head;
            for lane in [LANE, SHORT_LANE] {
                let t = shift_table(lane);
                while at + 3 * lane <= n {
                    let s = [src.add(at), src.add(at + lane), src.add(at + 2 * lane)];
                    let d = if MODE == CHECK {
                        [dst; 3]
                    } else {
                        [dst.add(at), dst.add(at + lane), dst.add(at + 2 * lane)]
                    };
                    let checked = if MODE == CACHED { d.map(|p| p.cast_const()) } else { s };
                    let mut c = [reg, 0, 0];
                    // STREAM_LAGGED: each lane's line loaded in the previous round, stored in this one.
                    let mut held = [_mm256_setzero_si256(); 6];
                    let mut off = 0;
                    while off < lane {
                        let mut now = held;
                        for l in 0..3 {
                            let p = s[l].add(off);
                            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(3 * lane).cast());
                            if MODE == CHECK {
                                continue;
                            }
                            let (lo, hi) = (_mm256_loadu_si256(p.cast()), _mm256_loadu_si256(p.add(32).cast()));
                            if MODE == STREAM_LAGGED {
                                (now[2 * l], now[2 * l + 1]) = (lo, hi);
                                continue;
                            }
                            let q = d[l].add(off);
                            if MODE == STREAM {
                                _mm256_stream_si256(q.cast(), lo);
                                _mm256_stream_si256(q.add(32).cast(), hi);
                            } else {
                                _mm256_storeu_si256(q.cast(), lo);
                                _mm256_storeu_si256(q.add(32).cast(), hi);
                            }
                        }
                        for k in 0..8 {
                            for l in 0..3 {
                                c[l] = _mm_crc32_u64(c[l], checked[l].add(off + 8 * k).cast::<u64>().read_unaligned());
                            }
                        }
                        if MODE == STREAM_LAGGED {
                            if off > 0 {
                                for l in 0..3 {
                                    let q = d[l].add(off - 64);
                                    _mm256_stream_si256(q.cast(), held[2 * l]);
                                    _mm256_stream_si256(q.add(32).cast(), held[2 * l + 1]);
                                }
                            }
                            held = now;
                        }
                        off += 64;
                    }
                    if MODE == STREAM_LAGGED {
                        for l in 0..3 {
                            let q = d[l].add(lane - 64);
                            _mm256_stream_si256(q.cast(), held[2 * l]);
                            _mm256_stream_si256(q.add(32).cast(), held[2 * l + 1]);
                        }
                    }
                    reg = shift(t, shift(t, c[0]) ^ c[1]) ^ c[2];
                    at += 3 * lane;
                }
            }
            if streams {
                // Streaming stores are weakly ordered: fence them before anything announces the
                // bytes.
                _mm_sfence();
            }
            if MODE != CHECK {
                std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), n - at);
            }
            let tail = if MODE == CACHED { dst.add(at).cast_const() } else { src.add(at) };
            crc32c::crc32c_append(!(reg as u32), std::slice::from_raw_parts(tail, n - at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path (and [`crc_bulk`]) against `crc32c` and `memcpy`: every destination alignment
    /// around the 32-byte stores, lengths around the 3-lane step, a non-zero starting CRC;
    /// nothing outside the destination range is touched.
    #[test]
    fn copies_exactly_and_returns_the_crc_of_the_bytes_at_every_alignment_and_length() {
        copies_exactly_at(&[]);
    }

    /// The streaming copy at destinations near the source's page offset, in each way of storing
    /// (see `stores_for`) and at the edges between them.
    #[test]
    fn the_streaming_copy_is_exact_in_every_way_of_storing() {
        let rel: Vec<isize> =
            vec![-65, -64, -63, -32, -1, 0, 1, 16, 31, 32, 63, 64, 65, 80, 128, 191, 192, 193, 4095, 4096 + 17];
        copies_exactly_at(&rel);
    }

    /// With `rel` empty: destinations in a vector of their own, at offsets 0..40. Otherwise the
    /// destination lies `rel[i]` bytes (modulo 4 KiB) past the source's page offset.
    fn copies_exactly_at(rel: &[isize]) {
        let src: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let lens: Vec<usize> = (0..300)
            .chain([511, 3 * SHORT_LANE - 1, 3 * SHORT_LANE, 4095, 4096, 8192 + 7, 3 * LANE - 1, 3 * LANE])
            .chain([3 * LANE + 1, 3 * LANE + 3 * SHORT_LANE, 6 * LANE + 33, 65_536, 150_001])
            .collect();
        let paths: [(&str, CopyFn); 5] = [
            ("crc_stream_copy", crc_stream_copy),
            ("copy_crc", copy_crc),
            ("copy_crc_src", copy_crc_src),
            ("pieces, CRC of the source", pieces::<false>),
            ("pieces, CRC of the destination", pieces::<true>),
        ];
        let cases = if rel.is_empty() { 40 } else { rel.len() };
        for i in 0..cases {
            for &len in &lens {
                let from = (i * 5) % 13;
                let data = &src[from..from + len];
                let want = crc32c::crc32c_append(0x1234_5678, data);
                assert_eq!(crc_bulk(0x1234_5678, data), want, "crc_bulk, from {from} len {len}");
                for (name, f) in paths {
                    let mut dst = vec![0xEEu8; len + 128 + 8192];
                    let offset = match rel.get(i) {
                        // Where dst + offset ≡ data + rel (mod 4096).
                        Some(&r) => {
                            let want_mod = (data.as_ptr() as isize + r).rem_euclid(4096) as usize;
                            (want_mod + 4096 - dst.as_ptr() as usize % 4096) % 4096
                        }
                        None => i,
                    };
                    dst.truncate(offset + len + 128);
                    if let Some(&r) = rel.get(i) {
                        let stores = match r.rem_euclid(4096) {
                            4032.. | 0..=64 => Stores::Lagged,
                            65..192 => Stores::Cached,
                            _ => Stores::AtOnce,
                        };
                        // SAFETY: in bounds.
                        let d = unsafe { dst.as_ptr().add(offset) };
                        assert_eq!(stores_for(data.as_ptr(), d), stores, "rel {r}");
                    }
                    // SAFETY: both ranges are in bounds of distinct vectors.
                    let got = unsafe { f(0x1234_5678, data.as_ptr(), dst.as_mut_ptr().add(offset), len) };
                    assert_eq!(got, want, "{name}: CRC, offset {offset} len {len}");
                    assert!(dst[..offset].iter().all(|&b| b == 0xEE), "{name}: before, offset {offset} len {len}");
                    assert!(dst[offset..offset + len] == *data, "{name}: bytes, offset {offset} len {len}");
                    assert!(dst[offset + len..].iter().all(|&b| b == 0xEE), "{name}: after, offset {offset} len {len}");
                }
            }
        }
    }
}
