//! TCP framing edge: reads whole frame heads from a buffered stream, payloads straight into the
//! caller's buffer, and writes frames with vectored writes (one `writev` for many headers and
//! payloads).
//!
//! Never interprets ops: decoding is `wire`'s job, authentication is `auth`'s. Every length is
//! bounded by [`Limits`] inside `Header::decode` before any buffer is sized from it.

use std::io::{self, IoSlice};
use std::pin::Pin;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::crc_copy::{CopyFn, copy_crc, crc_stream_copy};
use super::ring::Inbound;
use crate::auth::DirectionMac;
use crate::wire::{Flags, HEADER_LEN, Header, Limits, MAC_LEN, WireError};

/// Read buffer: large enough to batch many small frames per syscall, small enough that a large
/// payload goes mostly straight from the socket into its destination.
const READ_BUF: usize = 64 * 1024;
/// Payload reads at least this long go straight into their destination once the read buffer is
/// drained: copying a 64 KiB payload through the buffer cost the node 8% of its CPU at 64 KiB PUTs.
const DIRECT_READ: usize = 16 * 1024;
/// Read buffer of a [`FrameReader::for_ring`]: room for the heads of a few frames. The socket's
/// 64 KiB buffer, filled from a ring, took in the payloads behind each head, which then cost a
/// second copy out of it. With this one, 16 x 4 KiB per request over shared memory went 14%
/// faster for PUT and 10% for GET (six alternated pairs), single 4 KiB requests 3% and 5% slower
/// (five pairs: the large buffer gathered several small frames per ring read); 4 KiB is between
/// (16 KiB gained less for batches and lost as much for single blocks).
const RING_READ_BUF: usize = 4096;
/// Linux `IOV_MAX`: the most slices one `writev` takes.
const IOV_MAX: usize = 1024;

/// Largest piece read before its CRC is taken (stays within L2 cache).
const CRC_CHUNK: usize = 256 * 1024;

/// CRC32C of consecutive segments of a payload (one per batch entry, or one for the whole
/// payload), fed in arbitrary pieces as they arrive.
#[derive(Debug)]
pub(crate) struct SegmentCrcs<'a> {
    lens: &'a [u64],
    next: usize,
    left: u64,
    crc: u32,
    open: bool,
    out: Vec<u32>,
}

impl<'a> SegmentCrcs<'a> {
    pub(crate) fn new(lens: &'a [u64]) -> Self {
        let mut s = Self { lens, next: 0, left: 0, crc: 0, open: false, out: Vec::with_capacity(lens.len()) };
        s.roll();
        s
    }

    /// Closes finished segments (zero-length ones included) and opens the next one.
    fn roll(&mut self) {
        while self.left == 0 {
            if self.open {
                self.out.push(self.crc);
                self.open = false;
            }
            let Some(&len) = self.lens.get(self.next) else { return };
            self.next += 1;
            self.left = len;
            self.crc = 0;
            self.open = true;
        }
    }

    pub(crate) fn update(&mut self, mut b: &[u8]) {
        while !b.is_empty() && self.open {
            let n = self.left.min(b.len() as u64) as usize;
            self.crc = crc32c::crc32c_append(self.crc, &b[..n]);
            self.left -= n as u64;
            b = &b[n..];
            self.roll();
        }
    }

    /// Copies `src` to `dst` and feeds the bytes as [`update`](Self::update) would, in the same
    /// pass ([`copy_crc`]: the CRC of each line as it lands, read back from L1).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `src.len()` bytes and not overlap `src`.
    unsafe fn copy(&mut self, src: &[u8], dst: *mut u8) {
        let mut at = 0;
        while at < src.len() {
            let rest = src.len() - at;
            // SAFETY: `at + n <= src.len()`; the caller's contract for `dst`.
            unsafe {
                if !self.open {
                    std::ptr::copy_nonoverlapping(src.as_ptr().add(at), dst.add(at), rest);
                    return;
                }
                let n = self.left.min(rest as u64) as usize;
                self.crc = copy_crc(self.crc, src.as_ptr().add(at), dst.add(at), n);
                self.left -= n as u64;
                at += n;
            }
            self.roll();
        }
    }

    /// The CRC of every segment fed completely, in order.
    pub(crate) fn finish(self) -> Vec<u32> {
        self.out
    }
}

/// A frame head: header, meta section and header MAC. The payload is still on the stream.
#[derive(Debug)]
pub(crate) struct FrameHead {
    /// The header exactly as received (the MAC covers these bytes).
    pub(crate) raw: [u8; HEADER_LEN],
    /// Decoded, bounds-checked header.
    pub(crate) header: Header,
    /// Meta section (key or batch descriptors).
    pub(crate) meta: Vec<u8>,
    /// Header MAC.
    pub(crate) mac: [u8; MAC_LEN],
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed by peer")]
    Closed,
    /// Socket error, or the peer closed mid-frame.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The header is invalid.
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Reads frames from one direction of a connection.
pub(crate) struct FrameReader<R> {
    inner: BufReader<R>,
    limits: Limits,
    /// Payload reads at least this long skip the drained buffer ([`DIRECT_READ`] on a socket).
    direct: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(r: R, limits: Limits) -> Self {
        Self { inner: BufReader::with_capacity(READ_BUF, r), limits, direct: DIRECT_READ }
    }

    /// A reader of frames through a shared-memory ring ([`super::ring`]): reading the ring costs
    /// a copy, not a system call, so the buffer only gathers heads ([`RING_READ_BUF`]), and
    /// every payload read that finds it drained copies straight from the ring into its
    /// destination instead of through the buffer.
    pub(crate) fn for_ring(r: R, limits: Limits) -> Self {
        Self { inner: BufReader::with_capacity(RING_READ_BUF, r), limits, direct: 1 }
    }

    /// Whether the next frame head is already in the read buffer (reading it needs no system
    /// call).
    pub(crate) fn head_buffered(&self) -> bool {
        let b = self.inner.buffer();
        Header::peek_meta_len(b).is_some_and(|m| b.len() as u64 >= (HEADER_LEN + MAC_LEN) as u64 + u64::from(m))
    }

    /// Bytes in the read buffer (received, not yet consumed).
    pub(crate) fn buffered_len(&self) -> usize {
        self.inner.buffer().len()
    }

    /// Reads the next frame head. A clean close before the first byte is [`FrameError::Closed`].
    pub(crate) async fn read_head(&mut self) -> Result<FrameHead, FrameError> {
        let mut raw = [0u8; HEADER_LEN];
        let n = self.inner.read(&mut raw).await?;
        if n == 0 {
            return Err(FrameError::Closed);
        }
        self.inner.read_exact(&mut raw[n..]).await?;
        let header = Header::decode(&raw, &self.limits)?;
        let mut meta = vec![0u8; header.meta_len as usize];
        self.inner.read_exact(&mut meta).await?;
        let mut mac = [0u8; MAC_LEN];
        self.inner.read_exact(&mut mac).await?;
        Ok(FrameHead { raw, header, meta, mac })
    }

    /// Reads some payload bytes into `dst`: from the read buffer while it holds any; once it is
    /// drained, straight from the stream when `dst` has room for `direct` bytes or more
    /// ([`DIRECT_READ`] on a socket, any on a ring; else through the buffer, so that small frames
    /// behind it arrive in the same read).
    async fn read_payload(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let n = if self.inner.buffer().is_empty() && dst.len() >= self.direct {
            self.inner.get_mut().read(dst).await?
        } else {
            self.inner.read(dst).await?
        };
        if n == 0 && !dst.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }

    /// Reads exactly `dst.len()` payload bytes into `dst`: what the read buffer already holds is
    /// copied, the rest is read from the socket directly into `dst`.
    pub(crate) async fn read_into(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let mut pos = 0;
        while pos < dst.len() {
            pos += self.read_payload(&mut dst[pos..]).await?;
        }
        Ok(())
    }

    /// Appends exactly `len` payload bytes to `buf` (reading into its spare capacity, so the
    /// buffer is never zeroed first), feeding them to `crcs` as they arrive.
    pub(crate) async fn read_append(
        &mut self,
        buf: &mut Vec<u8>,
        len: u64,
        crcs: &mut SegmentCrcs<'_>,
    ) -> io::Result<()> {
        use bytes::BufMut;
        let len = usize::try_from(len).map_err(|_| io::Error::other("payload does not fit in memory"))?;
        let end = buf.len() + len;
        buf.reserve(len);
        while buf.len() < end {
            let start = buf.len();
            let want = (end - start).min(CRC_CHUNK);
            let held = self.inner.buffer();
            if !held.is_empty() {
                let n = held.len().min(want);
                // SAFETY: `buf` has room for `want >= n` more bytes (reserved above), which the
                // copy initialises before `set_len` counts them.
                unsafe {
                    crcs.copy(&held[..n], buf.as_mut_ptr().add(start));
                    buf.set_len(start + n);
                }
                Pin::new(&mut self.inner).consume(n);
                continue;
            }
            // As in `read_payload`: large reads skip the drained buffer, small ones refill it.
            if want < self.direct {
                self.fill().await?;
                continue;
            }
            if self.inner.get_mut().read_buf(&mut buf.limit(want)).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            crcs.update(&buf[start..]);
        }
        Ok(())
    }

    /// Refills the drained read buffer with one read; the peer closing first is an error.
    async fn fill(&mut self) -> io::Result<()> {
        if self.inner.fill_buf().await?.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Copies what the read buffer holds, up to `room` bytes, to `dst` with `copy`, which takes
    /// the CRC in the same pass (`crc` extended); returns how many bytes and the CRC.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `room` bytes.
    unsafe fn take_buffered(&mut self, dst: *mut u8, room: usize, crc: u32, copy: CopyFn) -> (usize, u32) {
        let held = self.inner.buffer();
        let n = held.len().min(room);
        // SAFETY: the read buffer is this reader's own memory, apart from `dst`; the caller's
        // contract.
        let crc = unsafe { copy(crc, held.as_ptr(), dst, n) };
        Pin::new(&mut self.inner).consume(n);
        (n, crc)
    }

    /// Reads and discards everything until the peer closes.
    pub(crate) async fn discard_to_eof(&mut self) -> io::Result<u64> {
        tokio::io::copy(&mut self.inner, &mut tokio::io::sink()).await
    }

    /// Discards `n` payload bytes (a refused request's payload), keeping the stream in sync.
    pub(crate) async fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = tokio::io::copy(&mut (&mut self.inner).take(n), &mut tokio::io::sink()).await?;
        if copied == n { Ok(()) } else { Err(io::ErrorKind::UnexpectedEof.into()) }
    }
}

impl<R: Inbound> FrameReader<R> {
    /// Like [`read_into`](Self::read_into), and returns the bytes' CRC32C. Bytes already in the
    /// read buffer, and bytes out of a ring, are checksummed in the copy itself, which goes
    /// `around_cache` or through it (as [`RingReader::read_crc`](super::ring::RingReader::read_crc)).
    /// Bytes read off a socket straight into `dst` are checksummed piece by piece right after
    /// each piece arrives, while it is still in cache (over a whole cold block the CRC costs
    /// about as much as the socket copy; measured in docs/benchmarks.md).
    pub(crate) async fn read_into_crc(&mut self, dst: &mut [u8], around_cache: bool) -> io::Result<u32> {
        let copy: CopyFn = if around_cache { crc_stream_copy } else { copy_crc };
        let mut crc = 0;
        let mut pos = 0;
        while pos < dst.len() {
            if !self.inner.buffer().is_empty() {
                // SAFETY: `dst[pos..]` is valid for writes of its length.
                (pos, crc) = unsafe {
                    let (n, c) = self.take_buffered(dst[pos..].as_mut_ptr(), dst.len() - pos, crc, copy);
                    (pos + n, c)
                };
                continue;
            }
            if let Some(ring) = self.inner.get_mut().ring() {
                let (n, c) = ring.read_crc(&mut dst[pos..], crc, around_cache).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                (pos, crc) = (pos + n, c);
                continue;
            }
            if dst.len() - pos < self.direct {
                self.fill().await?;
                continue;
            }
            let end = (pos + CRC_CHUNK).min(dst.len());
            let n = self.read_payload(&mut dst[pos..end]).await?;
            crc = crc32c::crc32c_append(crc, &dst[pos..pos + n]);
            pos += n;
        }
        Ok(crc)
    }
}

/// Writes all of `bufs`, at most `IOV_MAX` slices per `writev`, resuming after partial writes.
pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let end = bufs.len().min(IOV_MAX);
        let n = w.write_vectored(&bufs[..end]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// One outgoing frame for [`write_frames`]: its header's `length`, `meta_len`, `flags` and `seq`
/// are filled in when it is sealed.
pub(crate) struct FrameOut<'a> {
    pub(crate) header: &'a mut Header,
    pub(crate) meta: &'a [u8],
    pub(crate) payload: Vec<&'a [u8]>,
}

/// Seals `frames` in order (sequence numbers, header MACs, and payload MAC trailers when the
/// session negotiated them) and writes them all with as few `writev` calls as the kernel allows:
/// header, meta and MAC of a frame in one slice, its payload pieces straight from where they
/// are. Returns the payload bytes written.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    mac: &mut DirectionMac,
    payload_mac: bool,
    frames: &mut [FrameOut<'_>],
) -> io::Result<u64> {
    let mut prefixes = Vec::with_capacity(frames.len());
    let mut trailers = Vec::with_capacity(frames.len());
    let mut total = 0;
    for f in frames.iter_mut() {
        let len: u64 = f.payload.iter().map(|p| p.len() as u64).sum();
        total += len;
        let (prefix, m) = seal_frame(mac, payload_mac, f.header, f.meta, len);
        prefixes.push(prefix);
        trailers.push((payload_mac && len > 0).then(|| {
            let mut p = mac.payload_mac(&m);
            for piece in &f.payload {
                p.update(piece);
            }
            p.finish()
        }));
    }
    let mut slices = Vec::with_capacity(frames.iter().map(|f| f.payload.len() + 2).sum());
    for ((prefix, f), trailer) in prefixes.iter().zip(frames.iter()).zip(&trailers) {
        slices.push(IoSlice::new(prefix));
        slices.extend(f.payload.iter().map(|p| IoSlice::new(p)));
        if let Some(t) = trailer {
            slices.push(IoSlice::new(t));
        }
    }
    write_all_vectored(w, &mut slices).await?;
    Ok(total)
}

/// Completes and seals the header of an outgoing frame of `meta` and `len` payload bytes (its
/// sequence number and MAC; the payload MAC flag when the session negotiated one): returns the
/// frame's prefix ([`frame_prefix`]) and the header MAC, which a payload MAC continues from.
pub(crate) fn seal_frame(
    mac: &mut DirectionMac,
    payload_mac: bool,
    header: &mut Header,
    meta: &[u8],
    len: u64,
) -> (Vec<u8>, [u8; MAC_LEN]) {
    header.length = len;
    header.meta_len = meta.len() as u32;
    header.flags = Flags(if payload_mac && len > 0 { Flags::PAYLOAD_MAC } else { 0 });
    let (raw, m) = mac.seal(header, meta);
    (frame_prefix(&raw, meta, &m), m)
}

/// Header, meta and MAC of one outgoing frame, contiguous (the first slice of its `writev`).
pub(crate) fn frame_prefix(raw: &[u8; HEADER_LEN], meta: &[u8], mac: &[u8; MAC_LEN]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER_LEN + meta.len() + MAC_LEN);
    p.extend_from_slice(raw);
    p.extend_from_slice(meta);
    p.extend_from_slice(mac);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Op;

    #[tokio::test]
    async fn frames_written_vectored_read_back_with_payload_in_place() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut h = Header::request(Op::Put, 9);
        h.meta_len = 3;
        h.length = 5;
        let prefix = frame_prefix(&h.encode(), b"key", &[7u8; MAC_LEN]);
        let writer = tokio::spawn(async move {
            let mut a = a;
            let mut slices = [IoSlice::new(&prefix), IoSlice::new(b"he"), IoSlice::new(b"llo")];
            write_all_vectored(&mut a, &mut slices).await.unwrap();
        });
        let mut r = FrameReader::new(b, Limits::default());
        let head = r.read_head().await.unwrap();
        assert_eq!(head.header, h);
        assert_eq!(head.meta, b"key");
        assert_eq!(head.mac, [7u8; MAC_LEN]);
        let mut dst = [0u8; 5];
        r.read_into(&mut dst).await.unwrap();
        assert_eq!(&dst, b"hello");
        writer.await.unwrap();
        assert!(matches!(r.read_head().await, Err(FrameError::Closed)));
    }

    /// The node sends its answers once no whole request is left in the read buffer: this is
    /// how it tells.
    #[tokio::test]
    async fn a_head_counts_as_buffered_only_once_all_of_it_has_arrived() {
        let mut h = Header::request(Op::Get, 1);
        h.meta_len = 4;
        let one = frame_prefix(&h.encode(), b"key1", &[1u8; MAC_LEN]);
        // What arrives after the first head: nothing, part of a header, a header without all of
        // its meta and MAC, a whole head.
        for (then, whole) in [(0, false), (10, false), (HEADER_LEN + 2, false), (one.len(), true)] {
            let (mut a, b) = tokio::io::duplex(1 << 16);
            let mut r = FrameReader::new(b, Limits::default());
            assert!(!r.head_buffered() && r.buffered_len() == 0);
            a.write_all(&[one.as_slice(), &one[..then]].concat()).await.unwrap();
            r.read_head().await.unwrap();
            assert_eq!(r.buffered_len(), then, "the bytes after the first head came in the same read");
            assert_eq!(r.head_buffered(), whole, "{then} bytes after the first head");
        }
    }

    #[test]
    fn segment_crcs_match_whole_segment_crcs_whatever_the_piece_sizes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let lens = [0u64, 3000, 0, 1, 6999, 0];
        let mut want = Vec::new();
        let mut at = 0;
        for &l in &lens {
            want.push(crc32c::crc32c(&data[at..at + l as usize]));
            at += l as usize;
        }
        for piece in [1usize, 7, 999, 4096, 10_000] {
            let mut c = SegmentCrcs::new(&lens);
            for chunk in data.chunks(piece) {
                c.update(chunk);
            }
            assert_eq!(c.finish(), want, "piece size {piece}");
        }
        assert_eq!(SegmentCrcs::new(&[]).finish(), Vec::<u32>::new());
    }

    /// The copying feed: the same CRCs as `update`, every byte copied, those past the last
    /// segment too.
    #[test]
    fn segment_crcs_copy_checksums_as_update_does_and_copies_every_byte() {
        let data: Vec<u8> = (0..30_000u32).map(|i| (i * 13 + i / 7) as u8).collect();
        let lens = [0u64, 13_000, 0, 1, 12_999, 0];
        let covered: usize = lens.iter().sum::<u64>() as usize;
        for piece in [1usize, 64, 4096, 12_345, 30_000] {
            let (mut by_update, mut by_copy) = (SegmentCrcs::new(&lens), SegmentCrcs::new(&lens));
            let mut dst = vec![0u8; data.len()];
            for (i, chunk) in data.chunks(piece).enumerate() {
                by_update.update(chunk);
                // SAFETY: `dst` has room for this chunk at its offset and is a separate vector.
                unsafe { by_copy.copy(chunk, dst.as_mut_ptr().add(i * piece)) };
            }
            let want = by_update.finish();
            assert_eq!(want.len(), lens.len());
            assert_eq!(want[1], crc32c::crc32c(&data[..13_000]));
            assert_eq!(by_copy.finish(), want, "piece size {piece}");
            assert_eq!(dst, data, "piece size {piece}: bytes, {} of them past the segments", data.len() - covered);
        }
    }

    #[tokio::test]
    async fn read_into_crc_returns_the_crc_of_what_it_read() {
        let (mut a, b) = tokio::io::duplex(1 << 12);
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let expect = crc32c::crc32c(&data);
        let w = tokio::spawn(async move { a.write_all(&data).await.unwrap() });
        let mut r = FrameReader::new(b, Limits::default());
        let mut dst = vec![0u8; 300_000];
        assert_eq!(r.read_into_crc(&mut dst, false).await.unwrap(), expect);
        w.await.unwrap();
    }

    /// Payloads of every size around the direct-read threshold, back to back in one stream with
    /// small reads between them: the bytes the read buffer holds are never skipped or reordered
    /// when a read goes straight to the socket.
    #[tokio::test]
    async fn reads_that_skip_the_buffer_keep_the_stream_in_order() {
        // A socket's reader (64 KiB buffer, direct from 16 KiB) and a ring's (4 KiB buffer,
        // direct whenever it is drained), over the same mix of sizes.
        for ring in [false, true] {
            read_mixed_sizes(ring).await;
        }
    }

    async fn read_mixed_sizes(ring: bool) {
        let sizes = [7, DIRECT_READ - 1, 3, DIRECT_READ, 1, DIRECT_READ + 1, 64 * 1024, 2, 300_000, 5, RING_READ_BUF];
        let total: usize = sizes.iter().sum();
        let data: Vec<u8> = (0..total as u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let (mut a, b) = tokio::io::duplex(1 << 14);
        let w = tokio::spawn(async move { a.write_all(&sent).await.unwrap() });
        let mut r =
            if ring { FrameReader::for_ring(b, Limits::default()) } else { FrameReader::new(b, Limits::default()) };
        let mut pos = 0;
        for (i, &n) in sizes.iter().enumerate() {
            let want = &data[pos..pos + n];
            match i % 3 {
                0 => {
                    let mut dst = vec![0u8; n];
                    r.read_into(&mut dst).await.unwrap();
                    assert_eq!(dst, want, "read_into of {n} bytes at {pos} (ring: {ring})");
                }
                1 => {
                    let mut dst = vec![0u8; n];
                    let around_cache = i % 2 == 0;
                    assert_eq!(r.read_into_crc(&mut dst, around_cache).await.unwrap(), crc32c::crc32c(want));
                    assert_eq!(dst, want, "read_into_crc of {n} bytes at {pos} (ring: {ring}, around: {around_cache})");
                }
                _ => {
                    // Three segments, one of them empty, as a GET_BATCH answer's.
                    let mut buf = b"prefix".to_vec();
                    let cut = n / 3;
                    let lens = [cut as u64, 0, (n - cut) as u64];
                    let mut crcs = SegmentCrcs::new(&lens);
                    r.read_append(&mut buf, n as u64, &mut crcs).await.unwrap();
                    assert_eq!(&buf[6..], want, "read_append of {n} bytes at {pos} (ring: {ring})");
                    let (head, tail) = want.split_at(cut);
                    assert_eq!(crcs.finish(), vec![crc32c::crc32c(head), 0, crc32c::crc32c(tail)]);
                }
            }
            pos += n;
        }
        w.await.unwrap();
    }

    #[tokio::test]
    async fn truncated_frame_is_an_io_error_not_a_clean_close() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&Header::request(Op::Get, 1).encode()[..20]).await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b, Limits::default());
        assert!(matches!(r.read_head().await, Err(FrameError::Io(_))));
    }

    #[tokio::test]
    async fn huge_meta_length_is_refused_without_allocating_it() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut h = Header::request(Op::Get, 1);
        h.meta_len = u32::MAX;
        a.write_all(&h.encode()).await.unwrap();
        let mut r = FrameReader::new(b, Limits::default());
        assert!(matches!(r.read_head().await, Err(FrameError::Wire(WireError::MetaTooLarge { .. }))));
    }

    #[tokio::test]
    async fn skip_discards_exactly_the_payload() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.write_all(&[1u8; 1000]).await.unwrap();
        a.write_all(b"next").await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b, Limits::default());
        r.skip(1000).await.unwrap();
        let mut v = Vec::new();
        let mut crcs = SegmentCrcs::new(&[2]);
        r.read_append(&mut v, 2, &mut crcs).await.unwrap();
        assert_eq!(v, b"ne");
        assert_eq!(crcs.finish(), vec![crc32c::crc32c(b"ne")]);
        let mut d = [0u8; 2];
        r.read_into(&mut d).await.unwrap();
        assert_eq!(&d, b"xt");
        assert!(
            r.read_append(&mut v, 1, &mut SegmentCrcs::new(&[1])).await.is_err(),
            "EOF inside a payload is an error"
        );
    }
}
