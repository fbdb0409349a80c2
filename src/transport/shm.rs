//! Same-host shared memory: the node's arena is a memfd, handed to an authenticated client over
//! a Unix socket (`SCM_RIGHTS`); the client maps it and a one-sided write or read is a copy
//! into or out of its mapping, with the CRC32C taken in the same pass (`crc_copy`; a write, and a
//! read of 1 MiB or more, streams around the cache with non-temporal stores).
//!
//! The hand-over: on a Unix-socket session the node answers a valid HELLO with one marker byte
//! that carries the memfd as ancillary data, then the usual HELLO answer frame. The client takes
//! the byte with `recvmsg` before reading the answer, and keeps the mapping only if the answer
//! authenticates (so a process that merely owns the socket path cannot feed it a fake arena).
//! Trust model: a client that holds the cluster key can write anywhere in the arena, like an
//! RDMA peer that holds the arena's rkey (see docs/security.md); readers never trust arena bytes
//! without their CRC32C.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

use super::crc_copy::{copy_crc, crc_stream_copy};
use super::onesided::{Completion, Dir, Provider, ProviderError, WorkRequest};
use crate::par;

/// Marker byte: the memfd of the arena rides on it.
pub(crate) const MARKER_ARENA: u8 = 1;
/// Marker byte: no arena follows (the handshake was refused; its answer frame says why).
pub(crate) const MARKER_NONE: u8 = 0;

/// Reads at least this long stream into the caller's memory (see `copy`).
pub(crate) const STREAM_READ: usize = 1 << 20;

/// This host's identity for "is the node on my host?": the kernel's boot id, shared by every
/// container on the host (unlike the hostname).
pub(crate) fn host_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

/// The socket address of `name`: `@name` is a Linux abstract socket (scoped to the network
/// namespace, so `--net=host` containers share it; nothing to clean up), anything else a path.
pub(crate) fn socket_addr(name: &str) -> io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(name),
    }
}

/// Binds the node's shared-memory socket. A stale socket file (nobody listening) is replaced.
pub(crate) fn bind(name: &str) -> io::Result<UnixListener> {
    let addr = socket_addr(name)?;
    if !name.starts_with('@') && std::fs::symlink_metadata(name).is_ok() {
        match std::os::unix::net::UnixStream::connect_addr(&addr) {
            Ok(_) => {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process is listening on it"));
            }
            Err(_) => std::fs::remove_file(name)?,
        }
    }
    let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

/// Connects to a node's shared-memory socket.
pub(crate) fn connect(name: &str) -> io::Result<UnixStream> {
    let s = std::os::unix::net::UnixStream::connect_addr(&socket_addr(name)?)?;
    s.set_nonblocking(true)?;
    UnixStream::from_std(s)
}

/// A memfd of `len` bytes (zero-filled, committed lazily), for the arena.
pub(crate) fn memfd(len: u64) -> io::Result<File> {
    // SAFETY: a valid NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"memkv-arena".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(len)?;
    Ok(f)
}

/// Sends the marker byte on `sock` with `fds` attached (the arena first, then a session's
/// rings); no descriptor means no arena. Waits (bounded by `limit`) while the socket buffer is
/// full.
pub(crate) async fn send_marker(sock: RawFd, fds: &[BorrowedFd<'_>], limit: Duration) -> io::Result<()> {
    let marker = if fds.is_empty() { MARKER_NONE } else { MARKER_ARENA };
    let deadline = Instant::now() + limit;
    loop {
        match sendmsg_fds(sock, marker, fds) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => return other,
        }
    }
}

/// Most descriptors one marker carries: the arena and a session's rings.
const MAX_FDS: usize = 1 + super::ring::RING_FDS;

fn sendmsg_fds(sock: RawFd, marker: u8, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "a marker carries at most {MAX_FDS} descriptors");
    let mut byte = [marker];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // Room for MAX_FDS fds, aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = (fds.len() * std::mem::size_of::<RawFd>()) as u32;
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes (≤ 64 for MAX_FDS fds) of aligned,
        // writable memory, so CMSG_FIRSTHDR is non-null and its data has room for the fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
            }
        }
    }
    // SAFETY: `msg` and everything it points at live across the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    match n {
        1 => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::new(io::ErrorKind::WriteZero, "marker byte not sent")),
    }
}

/// Receives the marker byte and the descriptors attached to it, in order.
pub(crate) async fn recv_marker(s: &UnixStream) -> io::Result<(u8, Vec<OwnedFd>)> {
    s.async_io(Interest::READABLE, || recvmsg_fds(s.as_raw_fd())).await
}

fn recvmsg_fds(sock: RawFd) -> io::Result<(u8, Vec<OwnedFd>)> {
    let mut byte = [0u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` points at live buffers of the stated sizes. MSG_CMSG_CLOEXEC: received fds
    // are not inherited by children.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the node closed the connection during the handshake",
        ));
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* walkers stay inside it,
    // and a header's data holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..count {
                    // Each received fd is ours to close.
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("the node sent more file descriptors than an arena and its rings"));
    }
    Ok((byte[0], fds))
}

/// Arenas mapped by this process, by the memfd's identity (device, inode): every session to a
/// node shares one mapping, so each page of the arena is mapped once per process, not once per
/// session.
static MAPPED: std::sync::Mutex<Vec<Mapped>> = std::sync::Mutex::new(Vec::new());

/// A mapping of the memfd with this (device, inode).
type Mapped = ((u64, u64), std::sync::Weak<ArenaMap>);

/// Page-table fills are tracked in granules of this many bytes (16 pages).
const GRANULE: usize = 64 << 10;

/// A node's arena mapped into this process, with the granules whose pages this process has
/// already mapped.
///
/// The arena is shared memory on 4 KiB pages (the kernel backs shared memory with huge pages
/// only where `shmem_enabled` allows, rarely by default), so a new client process would take one
/// page fault per 4 KiB the first time it touches each page of the arena. On the 2-core test VM,
/// writing one byte per page of 1 GiB through a new mapping took 315 ms by faults and 70 ms with
/// `MADV_POPULATE_WRITE` ahead (840 and 379 ms where the node had not yet used the pages);
/// reads fill with `MADV_POPULATE_READ`. The bitmap keeps the fill to once per granule per
/// process: filling a range already mapped still walks it, at about a tenth of the copy's cost.
struct ArenaMap {
    map: MmapRaw,
    /// One bit per [`GRANULE`]: set once this process's page tables map it.
    mapped: Box<[std::sync::atomic::AtomicU64]>,
}

impl ArenaMap {
    fn new(map: MmapRaw) -> Self {
        let granules = map.len().div_ceil(GRANULE);
        Self { mapped: (0..granules.div_ceil(64)).map(|_| Default::default()).collect(), map }
    }

    fn is_mapped(&self, g: usize) -> bool {
        self.mapped[g / 64].load(std::sync::atomic::Ordering::Relaxed) & (1 << (g % 64)) != 0
    }

    /// Fills this process's page tables for `[off, off + len)` of the arena (within bounds),
    /// granule by granule, skipping granules already filled, one `madvise` per run of missing
    /// ones. A write fill that fails because the node's memory cannot be committed is an error
    /// (the copy would die of `SIGBUS`); any other failure (a kernel older than 5.14 has no
    /// populate advice) leaves the pages to fault in as they are touched.
    fn populate(&self, off: usize, len: usize, dir: Dir) -> Result<(), String> {
        if len == 0 {
            return Ok(());
        }
        let (first, last) = (off / GRANULE, (off + len - 1) / GRANULE);
        let mut g = first;
        while g <= last {
            if self.is_mapped(g) {
                g += 1;
                continue;
            }
            let run = g;
            while g <= last && !self.is_mapped(g) {
                g += 1;
            }
            let (start, end) = (run * GRANULE, (g * GRANULE).min(self.map.len()));
            let advice = match dir {
                Dir::Write => memmap2::Advice::PopulateWrite,
                Dir::Read => memmap2::Advice::PopulateRead,
            };
            if let Err(e) = self.map.advise_range(advice, start, end - start)
                && matches!(e.raw_os_error(), Some(libc::EFAULT | libc::ENOMEM))
            {
                return Err(format!(
                    "the node's shared arena cannot be mapped at {start}+{} ({e}): the host is out of \
                     memory for it; free memory or give the node a smaller MEMKV_MEMORY",
                    end - start
                ));
            }
            for i in run..g {
                self.mapped[i / 64].fetch_or(1 << (i % 64), std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The client's end of shared memory: the node's arena, mapped.
pub(crate) struct ShmProvider {
    map: std::sync::Arc<ArenaMap>,
    done: Vec<Completion>,
}

impl std::fmt::Debug for ShmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmProvider").field("arena_len", &self.map.map.len()).finish()
    }
}

// SAFETY: the mapping is plain shared memory; this value only copies in and out of it.
unsafe impl Send for ShmProvider {}

impl ShmProvider {
    /// Maps the arena memfd received from the node (or shares this process's mapping of it).
    pub(crate) fn map(fd: OwnedFd) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let f = File::from(fd);
        let meta = f.metadata()?;
        if meta.len() == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the node handed over an empty arena"));
        }
        let id = (meta.dev(), meta.ino());
        let mut mapped = MAPPED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        mapped.retain(|(_, w)| w.strong_count() > 0);
        let found = mapped.iter().find(|(k, _)| *k == id).and_then(|(_, w)| w.upgrade());
        let map = match found.filter(|m| m.map.len() as u64 == meta.len()) {
            Some(m) => m,
            None => {
                let m = MmapRaw::map_raw(&f)?;
                // Fewer faults and TLB misses where the kernel backs shared memory with huge
                // pages (`shmem_enabled` = `advise`); only a hint.
                let _ = m.advise(memmap2::Advice::HugePage);
                let m = std::sync::Arc::new(ArenaMap::new(m));
                mapped.push((id, std::sync::Arc::downgrade(&m)));
                m
            }
        };
        Ok(Self { map, done: Vec::new() })
    }

    /// Copies every request (see [`copy`](Self::copy)); the results are in request order. A
    /// large post is copied on up to `workers` threads ([`par::map_by_bytes`]).
    fn copy_all(&self, wrs: &[WorkRequest], workers: usize) -> Vec<Result<u32, String>> {
        par::map_by_bytes(wrs, workers, |w| w.len, |w| self.copy(w))
    }

    fn copy(&self, w: &WorkRequest) -> Result<u32, String> {
        if !w.host {
            return Err("shared memory moves host memory only (GPU memory goes through staging)".into());
        }
        let len = self.map.map.len() as u64;
        if w.remote.checked_add(w.len).is_none_or(|end| end > len) {
            return Err(format!(
                "arena range {}+{} lies outside the node's {len}-byte arena (the node sent a bad address)",
                w.remote, w.len
            ));
        }
        self.map.populate(w.remote as usize, w.len as usize, w.dir)?;
        // SAFETY: in bounds (checked above).
        let arena = unsafe { self.map.map.as_mut_ptr().add(w.remote as usize) };
        let local = w.local as *mut u8;
        let (src, dst) = match w.dir {
            Dir::Write => (local.cast_const(), arena),
            Dir::Read => (arena.cast_const(), local),
        };
        let n = w.len as usize;
        // SAFETY: `post`'s contract makes the local range valid for this copy; the arena range
        // is in bounds; the two do not overlap (the arena mapping is not caller memory).
        let crc = unsafe {
            match w.dir {
                // A write's CRC is what the caller's bytes should be: taken on the source in the
                // same pass that streams them into the arena around the cache. The node checks
                // the arena's bytes against it at COMMIT.
                Dir::Write => crc_stream_copy(0, src, dst, n),
                // A large read streams into the caller's memory too (it would not stay in cache,
                // and a cold destination costs no reads first), its CRC taken on the arena's
                // bytes as they are copied; a smaller one lands in cache, its CRC taken on the
                // delivered bytes.
                Dir::Read if n >= STREAM_READ => crc_stream_copy(0, src, dst, n),
                Dir::Read => copy_crc(0, src, dst, n),
            }
        };
        Ok(crc)
    }
}

impl Provider for ShmProvider {
    fn kind(&self) -> &'static str {
        "shm"
    }

    fn register(&mut self, _addr: u64, _len: u64, _host: bool) -> Result<u32, ProviderError> {
        Ok(0)
    }

    unsafe fn post(&mut self, wrs: &[WorkRequest]) -> Result<(), ProviderError> {
        let results = self.copy_all(wrs, par::runtime_workers());
        for (w, r) in wrs.iter().zip(results) {
            self.done.push(Completion { id: w.id, crc: r.as_ref().ok().copied(), result: r.map(drop) });
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> Result<(), ProviderError> {
        out.append(&mut self.done);
        Ok(())
    }

    fn unregister_all(&mut self) {}

    fn max_outstanding(&self) -> usize {
        crate::wire::MAX_BATCH_ENTRIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::onesided::{Polling, run};

    fn wr(dir: Dir, local: &mut [u8], remote: u64) -> WorkRequest {
        WorkRequest {
            id: 0,
            dir,
            local: local.as_mut_ptr() as u64,
            lkey: 0,
            remote,
            len: local.len() as u64,
            host: true,
        }
    }

    #[tokio::test]
    async fn the_arena_crosses_a_unix_socket_and_copies_carry_their_crc() {
        let name = format!("@memkv-test-{}", std::process::id());
        let l = bind(&name).unwrap();
        let arena = memfd(1 << 20).unwrap();
        let client = tokio::spawn(async move {
            let s = connect(&name).unwrap();
            recv_marker(&s).await.unwrap()
        });
        let (server_side, _) = l.accept().await.unwrap();
        send_marker(server_side.as_raw_fd(), &[std::os::fd::AsFd::as_fd(&arena)], Duration::from_secs(1))
            .await
            .unwrap();
        let (marker, mut fds) = client.await.unwrap();
        assert_eq!(marker, MARKER_ARENA);
        assert_eq!(fds.len(), 1);
        let mut p = ShmProvider::map(fds.remove(0)).unwrap();
        assert_eq!(p.map.map.len(), 1 << 20);

        let mut src: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; src.len()];
        let mut wrs = [wr(Dir::Write, &mut src, 4096), wr(Dir::Read, &mut back, 4096)];
        let polling = Polling { spin: Duration::ZERO, timeout: Duration::from_secs(1) };
        // SAFETY: both buffers outlive the run and are not touched during it.
        let done = unsafe { run(&mut p, &mut wrs, polling) }.await.unwrap();
        assert_eq!(back, src);
        assert_eq!(done[0].crc, Some(crc32c::crc32c(&src)));
        assert_eq!(done[1].crc, Some(crc32c::crc32c(&src)));
        // The node sees the client's write through its own mapping of the memfd.
        let node = MmapRaw::map_raw(&arena).unwrap();
        // SAFETY: in bounds; nothing writes while this reads.
        let seen = unsafe { std::slice::from_raw_parts(node.as_ptr().add(4096), src.len()) };
        assert_eq!(seen, &src[..]);

        let mut past = vec![0u8; 16];
        let mut bad = [wr(Dir::Write, &mut past, (1 << 20) - 8), wr(Dir::Write, &mut past, u64::MAX)];
        // SAFETY: as above.
        let done = unsafe { run(&mut p, &mut bad, polling) }.await.unwrap();
        for c in done {
            assert!(c.result.unwrap_err().contains("outside the node's 1048576-byte arena"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn a_large_post_copied_on_several_threads_keeps_every_byte_crc_and_error_in_order() {
        let arena = memfd(24 << 20).unwrap();
        let mut p = ShmProvider::map(OwnedFd::from(arena.try_clone().unwrap())).unwrap();
        let sizes = [3 << 20, 1 << 20, (4 << 20) + 7, 100, 2 << 20, 5 << 20];
        let mut srcs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(k as u32) as u8).collect())
            .collect();
        let mut at = 0u64;
        let mut offsets = Vec::new();
        for s in &srcs {
            offsets.push(at);
            at += s.len() as u64 + 64;
        }
        let mut outside = vec![0u8; 32];
        let mut wrs: Vec<WorkRequest> = srcs.iter_mut().zip(&offsets).map(|(s, &o)| wr(Dir::Write, s, o)).collect();
        wrs.insert(3, wr(Dir::Write, &mut outside, (24 << 20) - 16));
        let polling = Polling { spin: Duration::ZERO, timeout: Duration::from_secs(5) };
        // SAFETY: every buffer outlives the run and is not touched during it.
        let done = unsafe { run(&mut p, &mut wrs, polling) }.await.unwrap();
        assert!(done[3].result.as_ref().unwrap_err().contains("outside the node's"), "{:?}", done[3].result);
        let written: Vec<_> = done.iter().enumerate().filter(|&(i, _)| i != 3).map(|(_, c)| c).collect();
        for (c, s) in written.iter().zip(&srcs) {
            assert!(c.result.is_ok());
            assert_eq!(c.crc, Some(crc32c::crc32c(s)));
        }
        let mut backs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
        let mut wrs: Vec<WorkRequest> = backs.iter_mut().zip(&offsets).map(|(b, &o)| wr(Dir::Read, b, o)).collect();
        // SAFETY: as above.
        let done = unsafe { run(&mut p, &mut wrs, polling) }.await.unwrap();
        for ((c, b), s) in done.iter().zip(&backs).zip(&srcs) {
            assert_eq!(b, s);
            assert_eq!(c.crc, Some(crc32c::crc32c(s)));
        }
        // The same requests on this thread alone give the same answers.
        let one: Vec<_> = p.copy_all(&wrs, 1).into_iter().map(Result::unwrap).collect();
        let three: Vec<_> = p.copy_all(&wrs, 3).into_iter().map(Result::unwrap).collect();
        assert_eq!(one, three);
    }

    #[test]
    fn page_tables_are_filled_once_per_granule_and_a_vanished_arena_is_an_error() {
        use std::os::unix::fs::MetadataExt;
        let g = GRANULE;
        let arena = memfd(4 * g as u64 + 100).unwrap();
        let m = ArenaMap::new(MmapRaw::map_raw(&arena).unwrap());
        let filled = |m: &ArenaMap| (0..5).filter(|&i| m.is_mapped(i)).collect::<Vec<_>>();
        m.populate(0, 0, Dir::Write).unwrap();
        assert_eq!(filled(&m), Vec::<usize>::new());
        // Two bytes short of two granules, from inside granule 1: granules 1 and 2.
        m.populate(g + 10, g, Dir::Write).unwrap();
        assert_eq!(filled(&m), [1, 2]);
        // A write fill commits the node's memory for those granules.
        assert!(arena.metadata().unwrap().blocks() * 512 >= 2 * g as u64);
        // The last granule is cut short by the end of the arena; a read fill of it.
        m.populate(4 * g, 100, Dir::Read).unwrap();
        assert_eq!(filled(&m), [1, 2, 4]);
        // Granules already filled are skipped: one call across 0..=4 fills 0 and 3.
        m.populate(0, 4 * g + 100, Dir::Write).unwrap();
        assert_eq!(filled(&m), [0, 1, 2, 3, 4]);

        // Pages the arena no longer has (the memfd shrank under the mapping) are a clean error,
        // not a SIGBUS in the copy that follows.
        let arena = memfd(2 * g as u64).unwrap();
        let m = ArenaMap::new(MmapRaw::map_raw(&arena).unwrap());
        arena.set_len(g as u64).unwrap();
        let e = m.populate(g, 16, Dir::Write).unwrap_err();
        assert!(e.contains("cannot be mapped at 65536+65536") && e.contains("MEMKV_MEMORY"), "{e}");
        assert_eq!(filled(&m), Vec::<usize>::new());
        m.populate(0, 16, Dir::Write).unwrap();
        assert_eq!(filled(&m), [0]);
    }

    #[tokio::test]
    async fn a_refused_handshake_sends_no_fd() {
        let (a, b) = UnixStream::pair().unwrap();
        send_marker(a.as_raw_fd(), &[], Duration::from_secs(1)).await.unwrap();
        let (m, fds) = recv_marker(&b).await.unwrap();
        assert_eq!((m, fds.len()), (MARKER_NONE, 0));
        drop(a);
        assert_eq!(recv_marker(&b).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn an_arena_and_its_rings_cross_in_order() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let (a, b) = UnixStream::pair().unwrap();
        let mut sent = vec![OwnedFd::from(memfd(4096).unwrap())];
        sent.extend(crate::transport::ring::create(4096).unwrap());
        assert_eq!(sent.len(), MAX_FDS);
        let borrowed: Vec<_> = sent.iter().map(AsFd::as_fd).collect();
        send_marker(a.as_raw_fd(), &borrowed, Duration::from_secs(1)).await.unwrap();
        let (m, got) = recv_marker(&b).await.unwrap();
        assert_eq!(m, MARKER_ARENA);
        let ino = |fd: &OwnedFd| File::from(fd.try_clone().unwrap()).metadata().unwrap().ino();
        assert_eq!(got.iter().map(ino).collect::<Vec<_>>(), sent.iter().map(ino).collect::<Vec<_>>());
    }
}
