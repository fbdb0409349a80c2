//! Same-host rings: once a shared-memory handshake has agreed to them, a session's frames travel
//! through two single-producer, single-consumer byte rings in a memfd (one per direction)
//! instead of through the Unix socket, so a request costs a copy into the ring and no system
//! call while the other side is busy. A side that finds its ring empty (or full) says so in the
//! ring and sleeps on an eventfd, which the other side writes only then (an eventcount: flag,
//! full fence, check again, sleep). The Unix socket stays open and carries nothing more: it
//! becoming readable means the peer has gone (a process that dies cannot set its ring's closed
//! flag).
//!
//! Layout of the memfd: two header pages (client → node, then node → client), then the two data
//! areas of equal size. In each header the producer's position, the consumer's position, the two
//! waiting flags and the closed flag sit on their own cache lines. Positions only grow; a
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

impl AsyncRead for RingReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let avail = me.dir.span(me.head, me.dir.at(TAIL).load(Ordering::Acquire))?;
            if avail > 0 {
                let n = (avail as usize).min(buf.remaining());
                for (start, len) in me.dir.pieces(me.head, n) {
                    // SAFETY: `start + len` lies inside the data area (`pieces`).
                    buf.put_slice(unsafe { std::slice::from_raw_parts(me.dir.data.add(start), len) });
                }
                me.head += n as u64;
                me.dir.at(HEAD).store(me.head, Ordering::Release);
                fence(Ordering::SeqCst);
                if me.dir.at(PRODUCER_WAITING).swap(0, Ordering::SeqCst) != 0 {
                    signal(&me.wake);
                }
                return Poll::Ready(Ok(()));
            }
            if me.dir.at(CLOSED).load(Ordering::Acquire) != 0 {
                // The producer's last bytes were published before its closed flag.
                if me.dir.at(TAIL).load(Ordering::Acquire) == me.head {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            me.dir.at(CONSUMER_WAITING).store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if me.dir.at(TAIL).load(Ordering::SeqCst) != me.head {
                continue;
            }
            if poll_woken(&me.wait, cx)?.is_ready() {
                continue;
            }
            if poll_gone(&me.peer, cx) {
                fence(Ordering::SeqCst);
                if me.dir.at(TAIL).load(Ordering::Acquire) == me.head {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            return Poll::Pending;
        }
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
        loop {
            let head = self.dir.at(HEAD).load(Ordering::Acquire);
            let used = self.dir.span(head, self.tail)?;
            let free = (self.dir.len - used) as usize;
            if free > 0 {
                let mut n = 0;
                for b in bufs {
                    let take = b.len().min(free - n);
                    let mut from = 0;
                    for (start, len) in self.dir.pieces(self.tail + n as u64, take) {
                        // SAFETY: `start + len` lies inside the data area (`pieces`), and the
                        // source is `take` bytes of a live slice.
                        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr().add(from), self.dir.data.add(start), len) };
                        from += len;
                    }
                    n += take;
                    if n == free {
                        break;
                    }
                }
                self.tail += n as u64;
                self.dir.at(TAIL).store(self.tail, Ordering::Release);
                fence(Ordering::SeqCst);
                if self.dir.at(CONSUMER_WAITING).swap(0, Ordering::SeqCst) != 0 {
                    signal(&self.wake);
                }
                return Poll::Ready(Ok(n));
            }
            if poll_gone(&self.peer, cx) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the peer closed the session")));
            }
            self.dir.at(PRODUCER_WAITING).store(1, Ordering::SeqCst);
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
