//! Same-host rings: once a shared-memory handshake has agreed to them, a session's frames travel
//! through two single-producer, single-consumer byte rings in a memfd (one per direction)
//! instead of through the Unix socket, so a request costs a copy into the ring and no system
//! call while the other side is busy. A side that finds its ring empty (or full) says so in the
//! ring and sleeps on an eventfd, which the other side writes only then (an eventcount: flag,
//! full fence, check again, sleep). The Unix socket stays open and carries nothing more: it
//! becoming readable means the peer has gone (a process that dies cannot set its ring's closed
//! flag).
//!
//! A payload can also cross with its CRC32C taken in the copy itself, one pass over its bytes
//! instead of a copy and a CRC: the writer places a frame's payload first and its head (header,
//! entry table with the CRCs, MAC) last, in the gap it left, before it publishes the frame
//! ([`RingWriter::put_frame`], for inline PUTs); the reader takes a payload's CRC as it copies it
//! out ([`RingReader::read_crc`]).
//!
//! Layout of the memfd: two header pages (client → node, then node → client), then the two data
//! areas of equal size. In each header the producer's position, the consumer's position, the two
//! waiting flags and the closed flag sit on their own cache lines; a waiting producer's flag is
//! the consumer position at which it has the room it waits for (any non-zero value that the
//! consumer's position has passed means "wake me"). Positions only grow; a
//! position is taken modulo the data size. Neither side trusts what the other writes there: a
//! position that claims more bytes than the ring holds fails the session ("the peer corrupted
//! the ring"), and frames out of the ring are checked like frames off a socket (MACs, limits).

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::task::{Context, Poll, ready};

use memmap2::MmapRaw;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::crc_copy::{CopyFn, copy_crc, copy_crc_src, crc_stream_copy, prefetch};

/// Bytes of each direction's data area.
pub(crate) const RING_BYTES: u64 = 256 << 10;
/// Bytes of each direction's header.
const HEADER: u64 = 4096;
/// Offsets in a header, a cache line each.
const TAIL: usize = 0;
const HEAD: usize = 64;
const CONSUMER_WAITING: usize = 128;
const PRODUCER_WAITING: usize = 192;
const CLOSED: usize = 256;

/// What the node hands over for a session's rings, in this order after the arena: the memfd,
/// then for each direction (client → node, node → client) the "data" eventfd (written by the
/// producer) and the "space" eventfd (written by the consumer).
pub(crate) const RING_FDS: usize = 5;

/// Which end of the session this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Node,
    Client,
}

/// Creates a session's rings of `data` bytes per direction: the memfd and the four eventfds,
/// in the order of [`RING_FDS`].
pub(crate) fn create(data: u64) -> io::Result<Vec<OwnedFd>> {
    // SAFETY: a valid NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"memkv-ring".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mem = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    mem.set_len(2 * HEADER + 2 * data)?;
    let mut fds = vec![OwnedFd::from(mem)];
    for _ in 0..4 {
        // SAFETY: plain flags; the result is checked.
        let e = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if e < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `e` was just created and is owned by nobody else.
        fds.push(unsafe { OwnedFd::from_raw_fd(e) });
    }
    Ok(fds)
}

/// Opens this side's reader and writer on the rings described by `fds` ([`RING_FDS`] of them,
/// as [`create`] made them). `sock` is the session's Unix socket: it is duplicated (twice, so
/// that reader and writer each watch it) and may be dropped afterwards. Must run inside a Tokio
/// runtime.
pub(crate) fn open(fds: Vec<OwnedFd>, sock: RawFd, side: Side) -> io::Result<(RingReader, RingWriter)> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let [mem, c2n_data, c2n_space, n2c_data, n2c_space]: [OwnedFd; RING_FDS] =
        fds.try_into().map_err(|v: Vec<_>| bad(format!("{} ring descriptors, expected {RING_FDS}", v.len())))?;
    let mem = File::from(mem);
    let len = mem.metadata()?.len();
    let data = len.checked_sub(2 * HEADER).map(|d| d / 2).filter(|&d| d > 0 && 2 * HEADER + 2 * d == len);
    let data = data.ok_or_else(|| bad(format!("a ring memfd of {len} bytes has no room for two rings")))?;
    let map = Arc::new(MmapRaw::map_raw(&mem)?);
    let c2n = Dir::new(&map, 0, data);
    let n2c = Dir::new(&map, 1, data);
    let ((inbound, in_data, in_space), (outbound, out_data, out_space)) = match side {
        Side::Node => ((c2n, c2n_data, c2n_space), (n2c, n2c_data, n2c_space)),
        Side::Client => ((n2c, n2c_data, n2c_space), (c2n, c2n_data, c2n_space)),
    };
    let watch = |fd: OwnedFd| {
        // Readable only: an eventfd is always writable, and a socket's writability is no news.
        // SAFETY: each descriptor is owned by its AsyncFd, which never replaces or closes it
        // while registered.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
    };
    let reader = RingReader {
        head: inbound.at(HEAD).load(Ordering::Acquire),
        dir: inbound,
        wait: watch(in_data)?,
        wake: in_space,
        peer: watch(dup(sock)?)?,
    };
    let writer = RingWriter {
        tail: outbound.at(TAIL).load(Ordering::Acquire),
        dir: outbound,
        wait: watch(out_space)?,
        wake: out_data,
        peer: watch(dup(sock)?)?,
        closed: false,
    };
    Ok((reader, writer))
}

fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller holds open; the result is checked.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if d < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `d` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// One direction's ring inside the mapping.
struct Dir {
    /// Keeps the mapping (shared by both directions) alive while the pointers are in use.
    _map: Arc<MmapRaw>,
    header: *mut u8,
    data: *mut u8,
    len: u64,
}

// SAFETY: the pointers point into `map`, which lives as long as this value; all shared state is
// accessed through atomics or copied out, never referenced across an await.
unsafe impl Send for Dir {}
// SAFETY: as above.
unsafe impl Sync for Dir {}

impl Dir {
    fn new(map: &Arc<MmapRaw>, index: u64, len: u64) -> Self {
        let base = map.as_mut_ptr();
        // SAFETY: `open` checked that the mapping holds both headers and both data areas.
        let (header, data) =
            unsafe { (base.add((index * HEADER) as usize), base.add((2 * HEADER + index * len) as usize)) };
        Self { _map: Arc::clone(map), header, data, len }
    }

    fn at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset < HEADER as usize);
        // SAFETY: inside the header page, 8-byte aligned (the mapping is page-aligned), and the
        // memory is only ever accessed atomically.
        unsafe { &*self.header.add(offset).cast::<AtomicU64>() }
    }

    /// The bytes a position spans for `n` bytes: up to two pieces (the second after the wrap).
    fn pieces(&self, pos: u64, n: usize) -> [(usize, usize); 2] {
        let start = (pos % self.len) as usize;
        let first = n.min(self.len as usize - start);
        [(start, first), (0, n - first)]
    }

    /// How many bytes lie between the two positions, or the error that the peer moved one where
    /// it cannot be.
    fn span(&self, from: u64, to: u64) -> io::Result<u64> {
        let n = to.wrapping_sub(from);
        if n > self.len {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the peer corrupted the shared-memory ring"));
        }
        Ok(n)
    }
}

/// A copy that takes no CRC (and returns the one it was given).
///
/// # Safety
/// `src` valid for reads and `dst` for writes of `n` bytes, not overlapping.
unsafe fn plain_copy(crc: u32, src: *const u8, dst: *mut u8, n: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
    crc
}

/// Wakes the other side through an eventfd.
fn signal(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write from a live buffer. A full counter (EAGAIN) already wakes the
    // reader, so the result does not matter.
    let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

/// Polls `fd` (an eventfd) for a wake-up: Ready once one arrived (and was consumed).
fn poll_woken(fd: &AsyncFd<OwnedFd>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        let mut guard = ready!(fd.poll_read_ready(cx))?;
        let mut count = [0u8; 8];
        // SAFETY: an 8-byte read into a live buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        if n == 8 {
            return Poll::Ready(Ok(()));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Poll::Ready(Err(e));
        }
        guard.clear_ready();
    }
}

/// Whether the peer has gone: its Unix socket became readable (end of file, or bytes it should
/// never have sent).
fn poll_gone(sock: &AsyncFd<OwnedFd>, cx: &mut Context<'_>) -> bool {
    loop {
        let Poll::Ready(r) = sock.poll_read_ready(cx) else { return false };
        let Ok(mut guard) = r else { return true };
        let mut b = [0u8; 1];
        // SAFETY: a 1-byte peek into a live buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return true;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
            return true;
        }
        guard.clear_ready();
    }
}

/// This side's consuming end of the inbound ring.
pub(crate) struct RingReader {
    dir: Dir,
    /// Our position (the shared copy is for the producer; ours is the truth).
    head: u64,
    /// Woken when the producer published while we waited.
    wait: AsyncFd<OwnedFd>,
    /// Wakes the producer when it waits for space.
    wake: OwnedFd,
    peer: AsyncFd<OwnedFd>,
}

impl RingReader {
    /// Copies the bytes that follow into `dst` (up to its length; at least one, waiting for
    /// them, or none at the end of the stream) and returns how many and their CRC32C, `crc`
    /// extended, taken in the same pass: through the cache and of the bytes as they landed
    /// (`crc_copy::copy_crc`), or around it (`crc_copy::crc_stream_copy`).
    pub(crate) async fn read_crc(&mut self, dst: &mut [u8], crc: u32, around_cache: bool) -> io::Result<(usize, u32)> {
        let copy: CopyFn = if around_cache { crc_stream_copy } else { copy_crc };
        std::future::poll_fn(|cx| self.poll_take(cx, dst.as_mut_ptr(), dst.len(), copy, crc)).await
    }

    /// Copies up to `len` bytes into `dst` with `copy` (see [`read_crc`](Self::read_crc)).
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        dst: *mut u8,
        len: usize,
        copy: CopyFn,
        mut crc: u32,
    ) -> Poll<io::Result<(usize, u32)>> {
        if len == 0 {
            return Poll::Ready(Ok((0, crc)));
        }
        loop {
            let avail = self.dir.span(self.head, self.dir.at(TAIL).load(Ordering::Acquire))?;
            if avail > 0 {
                let n = (avail as usize).min(len);
                let mut to = 0;
                for (start, k) in self.dir.pieces(self.head, n) {
                    // SAFETY: `start + k` lies inside the data area (`pieces`), published by the
                    // producer; `dst` has room for `len >= n` bytes (the callers' slices).
                    crc = unsafe { copy(crc, self.dir.data.add(start), dst.add(to), k) };
                    to += k;
                }
                self.head += n as u64;
                self.dir.at(HEAD).store(self.head, Ordering::Release);
                fence(Ordering::SeqCst);
                // The producer waits for our position to reach the one it left there (where it
                // has room for what it wants to write): not woken before, only to find too
                // little room and sleep again.
                let waits_for = self.dir.at(PRODUCER_WAITING).load(Ordering::SeqCst);
                if waits_for != 0
                    && self.head >= waits_for
                    && self.dir.at(PRODUCER_WAITING).swap(0, Ordering::SeqCst) != 0
                {
                    signal(&self.wake);
                }
                return Poll::Ready(Ok((n, crc)));
            }
            if self.dir.at(CLOSED).load(Ordering::Acquire) != 0 {
                // The producer's last bytes were published before its closed flag.
                if self.dir.at(TAIL).load(Ordering::Acquire) == self.head {
                    return Poll::Ready(Ok((0, crc)));
                }
                continue;
            }
            self.dir.at(CONSUMER_WAITING).store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.dir.at(TAIL).load(Ordering::SeqCst) != self.head {
                continue;
            }
            if poll_woken(&self.wait, cx)?.is_ready() {
                continue;
            }
            if poll_gone(&self.peer, cx) {
                fence(Ordering::SeqCst);
                if self.dir.at(TAIL).load(Ordering::Acquire) == self.head {
                    return Poll::Ready(Ok((0, crc)));
                }
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl AsyncRead for RingReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // SAFETY: only ever written with initialized bytes (a copy out of the ring).
        let dst = unsafe { buf.unfilled_mut() };
        let (n, _) = ready!(self.poll_take(cx, dst.as_mut_ptr().cast(), dst.len(), plain_copy, 0))?;
        // SAFETY: `poll_take` wrote the first `n` bytes of the unfilled part.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// This side's producing end of the outbound ring.
pub(crate) struct RingWriter {
    dir: Dir,
    /// Our position (the shared copy is for the consumer; ours is the truth).
    tail: u64,
    /// Woken when the consumer made room while we waited.
    wait: AsyncFd<OwnedFd>,
    /// Wakes the consumer when it waits for bytes.
    wake: OwnedFd,
    peer: AsyncFd<OwnedFd>,
    closed: bool,
}

impl RingWriter {
    /// Copies as much of `bufs` as fits, waiting while the ring is full.
    fn poll_put(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        // A full ring takes more once a quarter of it is free (or all of `bufs` fits), not at
        // its consumer's first read: fewer wake-ups, each writing more.
        let free = ready!(self.poll_room(cx, want.min(self.capacity() / 4)))?;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(free - n);
            self.stage(n, &b[..take], plain_copy);
            n += take;
            if n == free {
                break;
            }
        }
        self.publish(n);
        Poll::Ready(Ok(n))
    }

    /// Writes one frame whose payload pieces' CRC32Cs are taken as the pieces are copied in
    /// (one pass over each instead of a CRC and then a copy): waits for room for the whole
    /// frame, copies the pieces in behind a gap of `head_len` bytes, has `head` make the frame's
    /// head from their CRCs (header, entry table and MAC: `head_len` bytes), copies it into the
    /// gap and only then publishes the frame. The frame must fit the ring ([`capacity`](Self::capacity)).
    pub(crate) async fn put_frame(
        &mut self,
        head_len: usize,
        payload: &[impl AsRef<[u8]>],
        head: impl FnOnce(&[u32]) -> Vec<u8>,
    ) -> io::Result<()> {
        let len = head_len + payload.iter().map(|p| p.as_ref().len()).sum::<usize>();
        if len > self.capacity() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a frame larger than the ring"));
        }
        std::future::poll_fn(|cx| self.poll_room(cx, len)).await?;
        let mut at = head_len;
        let mut crcs = Vec::with_capacity(payload.len());
        for (i, p) in payload.iter().enumerate() {
            if let Some(next) = payload.get(i + 1) {
                prefetch(next.as_ref());
            }
            crcs.push(self.stage(at, p.as_ref(), copy_crc_src));
            at += p.as_ref().len();
        }
        let h = head(&crcs);
        if h.len() != head_len {
            return Err(io::Error::other(format!("a frame head of {} bytes for a gap of {head_len}", h.len())));
        }
        self.stage(0, &h, plain_copy);
        self.publish(len);
        Ok(())
    }

    /// Bytes the ring holds when empty: the largest frame [`put_frame`](Self::put_frame) takes.
    pub(crate) fn capacity(&self) -> usize {
        self.dir.len as usize
    }

    /// Waits until the ring has room for `want` bytes (1 up to its size) and returns how many
    /// bytes are free. While it waits, the consumer position at which there is room is left for
    /// the consumer, which wakes us once it gets there.
    fn poll_room(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let head = self.dir.at(HEAD).load(Ordering::Acquire);
            let used = self.dir.span(head, self.tail)?;
            let free = (self.dir.len - used) as usize;
            if free >= want {
                return Poll::Ready(Ok(free));
            }
            if poll_gone(&self.peer, cx) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the peer closed the session")));
            }
            // `want <= len`, so the position lies past `head`: never 0 (not waiting).
            let room_at = self.tail + want as u64 - self.dir.len;
            self.dir.at(PRODUCER_WAITING).store(room_at, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.dir.at(HEAD).load(Ordering::SeqCst) != head {
                continue;
            }
            if poll_woken(&self.wait, cx)?.is_ready() {
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Copies `bytes` into the ring `at` bytes past our position, where the consumer does not
    /// look yet (the caller made sure of the room: `at + bytes.len()` free bytes), with `copy`
    /// (around the wrap, in two calls), and returns the CRC32C `copy` took of them (0 for
    /// [`plain_copy`]).
    fn stage(&self, at: usize, bytes: &[u8], copy: CopyFn) -> u32 {
        let mut crc = 0;
        let mut from = 0;
        for (start, len) in self.dir.pieces(self.tail + at as u64, bytes.len()) {
            // SAFETY: `start + len` lies inside the data area (`pieces`), in free space that only
            // this producer writes; the source is `len` bytes of a live slice.
            crc = unsafe { copy(crc, bytes.as_ptr().add(from), self.dir.data.add(start), len) };
            from += len;
        }
        crc
    }

    /// Publishes the `n` bytes staged past our position and wakes the consumer if it waits.
    fn publish(&mut self, n: usize) {
        self.tail += n as u64;
        self.dir.at(TAIL).store(self.tail, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.dir.at(CONSUMER_WAITING).swap(0, Ordering::SeqCst) != 0 {
            signal(&self.wake);
        }
    }

    /// Marks our direction closed (the peer reads to its end, then end of file) and wakes the
    /// consumer.
    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.dir.at(CLOSED).store(1, Ordering::Release);
            fence(Ordering::SeqCst);
            signal(&self.wake);
        }
    }
}

impl AsyncWrite for RingWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_put(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_put(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close();
        Poll::Ready(Ok(()))
    }
}

/// A session's inbound stream: a socket's read half, or a ring, whose reader can also take the
/// CRC of a payload in its copy out ([`RingReader::read_crc`]).
pub(crate) trait Inbound: AsyncRead + Unpin {
    /// The ring behind this stream, if it is one.
    fn ring(&mut self) -> Option<&mut RingReader> {
        None
    }
}

impl Inbound for RingReader {
    fn ring(&mut self) -> Option<&mut RingReader> {
        Some(self)
    }
}

impl<S: AsyncRead> Inbound for tokio::io::ReadHalf<S> {}

#[cfg(test)]
impl Inbound for tokio::io::DuplexStream {}

/// A session's outbound stream: a socket's write half, or a ring, whose writer can also take a
/// frame's payload CRCs in its copy ([`RingWriter::put_frame`]).
pub(crate) trait Outbound: AsyncWrite + Unpin {
    /// The ring behind this stream, if it is one.
    fn ring(&mut self) -> Option<&mut RingWriter> {
        None
    }
}

impl Outbound for RingWriter {
    fn ring(&mut self) -> Option<&mut RingWriter> {
        Some(self)
    }
}

impl<S: AsyncWrite> Outbound for tokio::io::WriteHalf<S> {}

impl Drop for RingWriter {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Both sides of one session's rings of `data` bytes each, in this process; the two socket
    /// ends are returned so that a test can close one.
    fn pair(data: u64) -> ((RingReader, RingWriter), (RingReader, RingWriter), [std::os::unix::net::UnixStream; 2]) {
        let fds = create(data).unwrap();
        let copy: Vec<OwnedFd> = fds.iter().map(|f| dup(f.as_raw_fd()).unwrap()).collect();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let node = open(fds, a.as_raw_fd(), Side::Node).unwrap();
        let client = open(copy, b.as_raw_fd(), Side::Client).unwrap();
        (node, client, [a, b])
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes()[1]).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_cross_both_rings_in_order_through_wraps_and_full_rings() {
        // A 4 KiB ring and 3 MiB each way: the writers fill it many times over and wait for
        // room, the readers wait for bytes, and writes of odd sizes straddle the wrap.
        let ((mut nr, mut nw), (mut cr, mut cw), _socks) = pair(4096);
        let up = pattern(3 << 20, 1);
        let down = pattern(3 << 20, 2);
        let (u, d) = (up.clone(), down.clone());
        let client_writes = tokio::spawn(async move {
            for piece in u.chunks(1000) {
                let (a, b) = piece.split_at(piece.len() / 3);
                cw.write_all_buf(&mut bytes::Buf::chain(a, b)).await.unwrap();
            }
            cw.shutdown().await.unwrap();
        });
        let node_writes = tokio::spawn(async move {
            for piece in d.chunks(7777) {
                nw.write_all(piece).await.unwrap();
            }
            drop(nw);
        });
        let node_reads = tokio::spawn(async move {
            let mut got = Vec::new();
            nr.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), cr.read_to_end(&mut got)).await.unwrap().unwrap();
        assert!(got == down, "node → client bytes differ");
        assert!(node_reads.await.unwrap() == up, "client → node bytes differ");
        client_writes.await.unwrap();
        node_writes.await.unwrap();
    }

    /// Frames placed with their payload CRCs taken in the copy, through a ring smaller than a
    /// few of them (the writer waits for room, pieces and heads straddle the wrap), read back
    /// with the CRCs taken in the copy out, both ways out: every head carries the CRCs of its
    /// pieces, and every byte arrives in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_placed_with_their_crcs_read_back_with_the_crcs_through_wraps() {
        let ((nr, _nw), (_cr, mut cw), _socks) = pair(16 << 10);
        let sizes: Vec<Vec<usize>> =
            (0..300).map(|i| (0..1 + i % 5).map(|j| (i * 977 + j * 4093) % 3200 + 1).collect()).collect();
        let data: Vec<Vec<Vec<u8>>> = sizes
            .iter()
            .enumerate()
            .map(|(i, f)| f.iter().enumerate().map(|(j, &n)| pattern(n, (i * 8 + j) as u32)).collect())
            .collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for frame in &sent {
                let pieces: Vec<&[u8]> = frame.iter().map(|p| &p[..]).collect();
                // The head: the piece count, then their CRCs.
                let head_len = 4 + 4 * pieces.len();
                cw.put_frame(head_len, &pieces, |crcs| {
                    let mut h = (crcs.len() as u32).to_le_bytes().to_vec();
                    crcs.iter().for_each(|c| h.extend_from_slice(&c.to_le_bytes()));
                    h
                })
                .await
                .unwrap();
            }
            cw
        });
        let mut rd = super::super::tcp::FrameReader::for_ring(nr, crate::wire::Limits::default());
        for (i, frame) in data.iter().enumerate() {
            let mut head = vec![0u8; 4 + 4 * frame.len()];
            rd.read_into(&mut head).await.unwrap();
            assert_eq!(head[..4], (frame.len() as u32).to_le_bytes(), "frame {i}: piece count");
            for (j, piece) in frame.iter().enumerate() {
                assert_eq!(head[4 + 4 * j..8 + 4 * j], crc32c::crc32c(piece).to_le_bytes(), "frame {i} piece {j}: CRC");
                let mut got = vec![0u8; piece.len()];
                let crc = rd.read_into_crc(&mut got, (i + j) % 2 == 0).await.unwrap();
                assert!(got == *piece, "frame {i} piece {j}: bytes");
                assert_eq!(crc, crc32c::crc32c(piece), "frame {i} piece {j}: CRC read");
            }
        }
        let mut cw = writer.await.unwrap();
        // A frame larger than the ring, or a head that does not fill its gap, is refused.
        let big = vec![0u8; 16 << 10];
        let e = cw.put_frame(1, &[&big], |_| vec![0]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = cw.put_frame(8, &[b"abc"], |_| vec![0; 7]).await.unwrap_err();
        assert!(e.to_string().contains("a frame head of 7 bytes for a gap of 8"), "{e}");
    }

    /// A producer waiting for room for a whole frame is woken once the consumer has freed that
    /// much, not at the consumer's first read: the position it waits for stays in its flag
    /// until the consumer passes it.
    #[tokio::test]
    async fn a_waiting_producer_is_woken_once_there_is_room_for_what_it_waits_for() {
        let ((mut nr, _nw), (_cr, mut cw), _socks) = pair(4096);
        cw.write_all(&[7u8; 4000]).await.unwrap();
        let value = pattern(1996, 3);
        let put = async {
            cw.put_frame(4, &[&value], |crcs| crcs[0].to_le_bytes().to_vec()).await.unwrap();
        };
        let read = async {
            // Let the producer find too little room and wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(nr.dir.at(PRODUCER_WAITING).load(Ordering::SeqCst), 4000 + 2000 - 4096);
            let mut got = vec![0u8; 1000];
            nr.read_exact(&mut got).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(nr.dir.at(PRODUCER_WAITING).load(Ordering::SeqCst), 1904, "woken before there was room");
            nr.read_exact(&mut got).await.unwrap();
            assert_eq!(nr.dir.at(PRODUCER_WAITING).load(Ordering::SeqCst), 0, "not woken once there was room");
            let mut rest = vec![0u8; 2000 + 2000];
            nr.read_exact(&mut rest).await.unwrap();
            assert_eq!(rest[2000..2004], crc32c::crc32c(&value).to_le_bytes());
            assert!(rest[2004..] == value[..]);
        };
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(put, read) }).await.unwrap();
    }

    #[tokio::test]
    async fn vectored_writes_fill_the_ring_and_stop_at_its_end() {
        let ((_nr, _nw), (_cr, mut cw), _socks) = pair(100);
        let (a, b) = ([1u8; 60], [2u8; 60]);
        let n =
            std::future::poll_fn(|cx| Pin::new(&mut cw).poll_write_vectored(cx, &[IoSlice::new(&a), IoSlice::new(&b)]))
                .await
                .unwrap();
        assert_eq!(n, 100);
        // Full: the next write waits.
        let more = tokio::time::timeout(Duration::from_millis(50), cw.write_all(&[3])).await;
        assert!(more.is_err(), "a write into a full ring must wait");
    }

    #[tokio::test]
    async fn a_peer_that_dies_ends_the_stream_and_fails_a_waiting_writer() {
        let ((mut nr, mut nw), (cr, mut cw), [a, b]) = pair(64);
        cw.write_all(b"last words").await.unwrap();
        // The client process "dies": its socket closes, and its ring is left without the closed
        // flag (a killed process sets none).
        drop((cw, cr, b));
        nr.dir.at(CLOSED).store(0, Ordering::SeqCst);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), nr.read_to_end(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, b"last words");
        // The node's writer fills the ring nobody reads, then sees the peer is gone.
        let r = tokio::time::timeout(Duration::from_secs(5), nw.write_all(&[0u8; 1000])).await.unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        drop(a);
    }

    #[tokio::test]
    async fn positions_the_peer_corrupted_fail_the_stream() {
        let ((mut nr, mut nw), (_cr, _cw), _socks) = pair(4096);
        // The client claims to have published more than the ring holds.
        nr.dir.at(TAIL).store(nr.head + 4097, Ordering::SeqCst);
        let e = nr.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("corrupted"), "{e}");
        // Or to have consumed bytes the node never wrote.
        nw.dir.at(HEAD).store(nw.tail + 1, Ordering::SeqCst);
        let e = nw.write(b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_ring_memfd_of_the_wrong_size_is_refused() {
        let mut fds = create(4096).unwrap();
        File::from(fds.remove(0)).set_len(2 * HEADER + 1).map(drop).unwrap_or(());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fresh = create(4096).unwrap();
        let mut wrong = vec![fds.pop().unwrap()];
        wrong.extend(fresh.into_iter().skip(1));
        let e = open(wrong, a.as_raw_fd(), Side::Client).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let e = open(create(4096).unwrap().into_iter().take(3).collect(), a.as_raw_fd(), Side::Client).err().unwrap();
        assert!(e.to_string().contains("3 ring descriptors, expected 5"), "{e}");
    }
}
