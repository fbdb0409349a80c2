//! One drive directory: its lock, superblock and segment files; appending, sealing, checkpointing
//! and deleting segments; the recovery scan; and verified reads.
//!
//! Owns: file I/O. Never touches the object index: the tier (`super`) decides what is live, what
//! to evict and what a read means. Only the drive's writer thread appends, seals and deletes; any
//! thread may read, through an `Arc<File>` that stays valid after its segment is deleted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use super::format::{
    self, HEADER_LEN, IndexEntry, LOCK_FILE, RecordHeader, SUPERBLOCK, Superblock, parse_segment_name, segment_name,
};
use crate::server::metrics::add;
use crate::transport::crc_copy::crc_bulk;

/// Per-drive counters.
#[derive(Debug, Default)]
pub(crate) struct DriveCounters {
    pub(crate) write_errors: AtomicU64,
    pub(crate) read_errors: AtomicU64,
    pub(crate) corrupt_records: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
}

/// Why a read from the drive produced nothing.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The segment is gone (evicted between the lookup and the read).
    Gone,
    /// The record is not what the index says or fails its checksum: never served.
    Corrupt(String),
    /// The drive failed the read.
    Io(std::io::Error),
}

/// The segment being appended to; owned by the drive's writer thread.
pub(crate) struct Head {
    pub(crate) id: u32,
    file: Arc<File>,
    /// Bytes written.
    pub(crate) len: u64,
    /// Bytes known to be on stable storage.
    synced: u64,
    /// Bytes handed to writeback ([`Drive::start_writeback`]).
    kicked: u64,
    /// Bytes dropped from the page cache.
    dropped: u64,
    /// Every record written, for the checkpoint written when the segment is sealed.
    entries: Vec<IndexEntry>,
}

/// What the recovery scan of one drive found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Every record of every segment, with its segment id.
    pub(crate) records: Vec<(u32, IndexEntry)>,
    pub(crate) segments: usize,
    /// Segments read from their checkpoint.
    pub(crate) from_checkpoint: usize,
    /// Segments whose headers were scanned (no valid checkpoint: the segment open at a crash).
    pub(crate) scanned: usize,
    /// Bytes of torn or unreadable records cut from segment tails.
    pub(crate) torn_bytes: u64,
}

/// One drive.
pub(crate) struct Drive {
    pub(crate) no: u16,
    pub(crate) path: PathBuf,
    pub(crate) drive_id: String,
    pub(crate) capacity: u64,
    /// Whether writes fsync (any durability other than `none`).
    fsync: bool,
    segments: RwLock<BTreeMap<u32, Arc<SegmentFiles>>>,
    used: AtomicU64,
    online: AtomicBool,
    error: Mutex<Option<String>>,
    pub(crate) counters: DriveCounters,
    _lock: File,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive").field("path", &self.path).field("used", &self.used()).finish()
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Drops clean cached pages of `[off, off+len)`: the DRAM arena is the cache, and a page cache
/// copy of every written block would double the node's memory use.
fn drop_cached(file: &File, off: u64, len: u64) {
    // SAFETY: posix_fadvise only reads its integer arguments; an invalid range is an error code.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), off as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED);
    }
}

/// Most buffers one `pwritev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// `sync_file_range` over `[off, off+len)` with `flags`: starts (and with the WAIT flags, waits
/// for) writeback of those bytes. No durability point: it flushes no device cache.
fn write_back(file: &File, off: u64, len: u64, flags: libc::c_uint) {
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned by `file`.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off as libc::off64_t, len as libc::off64_t, flags);
    }
}

/// Writes all of `bufs` at `off` (pwritev, at most [`IOV_MAX`] buffers a call, continuing
/// after short writes).
fn write_all_vectored_at(file: &File, bufs: &[&[u8]], mut off: u64) -> std::io::Result<()> {
    let mut bufs: std::collections::VecDeque<&[u8]> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
    while !bufs.is_empty() {
        let iov: Vec<libc::iovec> = bufs
            .iter()
            .take(IOV_MAX)
            .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() })
            .collect();
        // SAFETY: every iovec points into a live slice borrowed for the duration of the call, and
        // pwritev only reads from them.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, off as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        let mut n = n as usize;
        off += n as u64;
        while n > 0 {
            if n >= bufs[0].len() {
                n -= bufs[0].len();
                bufs.pop_front();
            } else {
                bufs[0] = &bufs[0][n..];
                n = 0;
            }
        }
    }
    Ok(())
}

/// One segment's open files: buffered (appends, scans, small reads) and, where the file system
/// supports it, O_DIRECT for large reads. Readers hold an `Arc` of it, which stays valid after
/// the segment is deleted.
struct SegmentFiles {
    file: Arc<File>,
    direct: Option<File>,
}

impl SegmentFiles {
    fn new(dir: &Path, id: u32, file: Arc<File>) -> Arc<Self> {
        // Not every file system takes O_DIRECT (tmpfs does not): then every read is buffered.
        let direct =
            OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(dir.join(segment_name(id, "log"))).ok();
        Arc::new(Self { file, direct })
    }
}

/// Values at least this large are read with O_DIRECT, straight into the caller's (arena)
/// buffer: a cold buffered read goes through the page cache and its read-ahead, which on some
/// virtual disks reaches a quarter of the direct rate, and costs a copy.
const DIRECT_MIN: u64 = 64 << 10;
/// O_DIRECT alignment of offsets, lengths and buffers (covers 512 B and 4 KiB logical blocks).
const DIRECT_ALIGN: usize = 4096;

/// Where an O_DIRECT read of the record `[off, off + rec_len)` starts in the file, and how many
/// bytes it reads (whole aligned blocks around the record).
fn direct_span(off: u64, rec_len: u64) -> (u64, usize) {
    let a = DIRECT_ALIGN as u64;
    let start = off / a * a;
    (start, ((off + rec_len).div_ceil(a) * a - start) as usize)
}

/// Reads `[start, start + buf.len())` of `file` (opened O_DIRECT; `buf` aligned); returns the
/// bytes read, fewer at the end of the file.
fn read_direct(file: &File, start: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], start + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Opens (creating when `create`) a segment log for reading and writing.
fn open_segment(dir: &Path, id: u32, create: bool) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create_new(create).open(dir.join(segment_name(id, "log")))
}

impl Head {
    /// Whether bytes were written since the last sync (or, without syncs, since they were last
    /// handed to writeback and dropped from the page cache).
    pub(crate) fn dirty(&self) -> bool {
        self.synced < self.len && self.dropped < self.len
    }
}

impl Drive {
    /// Opens `path` as drive number `no`: takes its lock, checks or writes its superblock and
    /// scans its segments. An error here refuses the start (a wrong path, somebody else's data, a
    /// newer format, a drive another node holds); I/O errors while scanning segments surface as a
    /// drive that is offline.
    pub(crate) fn open(no: u16, path: &Path, capacity: Option<u64>, fsync: bool) -> Result<(Self, Recovered), String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                format!("data directory {shown} does not exist: create it (mkdir -p {shown}) or fix --data-dir / MEMKV_DATA_DIR")
            } else {
                format!("cannot open data directory {shown}: {e}")
            }
        })?;
        if !meta.is_dir() {
            return Err(format!("data directory {shown} is not a directory; --data-dir takes a directory per drive"));
        }
        // Status and logs name the drive by its absolute path.
        let path = &std::fs::canonicalize(path).map_err(|e| format!("cannot resolve data directory {shown}: {e}"))?;
        let shown = path.display();
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK_FILE))
            .map_err(|e| format!("cannot create {}: {e}", path.join(LOCK_FILE).display()))?;
        // SAFETY: flock only takes the descriptor and a flag; the descriptor is owned by `lock`.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "data directory {shown} is in use by another memkv-server (its {LOCK_FILE} file is locked); \
                 give every node its own directory"
            ));
        }
        let sb = match Superblock::read(path)? {
            Some(sb) => sb,
            None => {
                let foreign: Vec<String> = std::fs::read_dir(path)
                    .map_err(|e| format!("cannot list {shown}: {e}"))?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .filter(|n| n != LOCK_FILE && n != "lost+found")
                    .collect();
                if !foreign.is_empty() {
                    return Err(format!(
                        "data directory {shown} is not empty and is not a MemKV drive (no {SUPERBLOCK}; found {}); \
                         point --data-dir at an empty directory",
                        foreign.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                let id = hex::encode(crate::auth::random_bytes().map_err(|e| e.to_string())?)[..16].to_string();
                let sb = Superblock::new(id, unix_secs());
                let tmp = path.join(format!("{SUPERBLOCK}.tmp"));
                let text = serde_json::to_string_pretty(&sb).map_err(|e| e.to_string())?;
                std::fs::write(&tmp, text + "\n")
                    .and_then(|()| File::open(&tmp)?.sync_all())
                    .and_then(|()| std::fs::rename(&tmp, path.join(SUPERBLOCK)))
                    .and_then(|()| sync_dir(path))
                    .map_err(|e| format!("cannot write the superblock in {shown}: {e}"))?;
                sb
            }
        };
        let capacity = match capacity {
            Some(c) => c,
            None => auto_capacity(path)?,
        };
        let drive = Self {
            no,
            path: path.to_path_buf(),
            drive_id: sb.drive_id,
            capacity,
            fsync,
            segments: RwLock::new(BTreeMap::new()),
            used: AtomicU64::new(0),
            online: AtomicBool::new(true),
            error: Mutex::new(None),
            counters: DriveCounters::default(),
            _lock: lock,
        };
        let recovered = match drive.recover() {
            Ok(r) => r,
            Err(e) => {
                drive.fail(&format!("recovery failed: {e}"));
                Recovered::default()
            }
        };
        Ok((drive, recovered))
    }

    /// Scans every segment: its checkpoint when valid, else its headers (cutting a torn tail).
    /// Every segment is sealed afterwards: new writes always start a new segment.
    fn recover(&self) -> std::io::Result<Recovered> {
        let names: Vec<String> = std::fs::read_dir(&self.path)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        // Checkpoints (and a superblock) a crash interrupted before their rename.
        for tmp in names.iter().filter(|n| n.ends_with(".tmp")) {
            std::fs::remove_file(self.path.join(tmp))?;
        }
        let mut ids: Vec<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        ids.sort_unstable();
        let mut out = Recovered::default();
        let mut used = 0;
        for id in ids {
            let file = open_segment(&self.path, id, false)?;
            let idx_path = self.path.join(segment_name(id, "idx"));
            let checkpoint = match std::fs::read(&idx_path) {
                Ok(b) => match format::decode_index(&b) {
                    Ok(e) => Some(e),
                    Err(why) => {
                        tracing::warn!(drive = %self.path.display(), segment = id, %why, "checkpoint unusable; scanning the segment");
                        None
                    }
                },
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let entries = match checkpoint {
                Some(e) => {
                    out.from_checkpoint += 1;
                    e
                }
                None => {
                    let (entries, valid_len) = scan(&file)?;
                    let len = file.metadata()?.len();
                    if valid_len < len {
                        tracing::warn!(
                            drive = %self.path.display(),
                            segment = id,
                            offset = valid_len,
                            discarded_bytes = len - valid_len,
                            "torn or damaged segment tail discarded"
                        );
                        out.torn_bytes += len - valid_len;
                        file.set_len(valid_len)?;
                    }
                    self.write_checkpoint(id, &entries, &file)?;
                    out.scanned += 1;
                    entries
                }
            };
            used += file.metadata()?.len() + std::fs::metadata(&idx_path).map_or(0, |m| m.len());
            out.records.extend(entries.into_iter().map(|e| (id, e)));
            out.segments += 1;
            self.segments.write().insert(id, SegmentFiles::new(&self.path, id, Arc::new(file)));
        }
        self.used.store(used, Ordering::Relaxed);
        Ok(out)
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    pub(crate) fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// The error that took the drive offline.
    pub(crate) fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }

    /// Takes the drive offline (logged once): the node goes on without it, degraded.
    pub(crate) fn fail(&self, why: &str) {
        if self.online.swap(false, Ordering::Relaxed) {
            tracing::error!(drive = %self.path.display(), error = why, "drive offline; the node is degraded and serves the other drives and DRAM");
            *self.error.lock() = Some(why.to_string());
        }
    }

    /// The next free segment id.
    pub(crate) fn next_segment_id(&self) -> u32 {
        self.segments.read().keys().next_back().map_or(1, |&id| id + 1)
    }

    /// The oldest segment other than `except`.
    pub(crate) fn oldest_segment(&self, except: Option<u32>) -> Option<u32> {
        self.segments.read().keys().copied().find(|&id| Some(id) != except)
    }

    /// Starts segment `id`.
    pub(crate) fn create_head(&self, id: u32) -> std::io::Result<Head> {
        let file = Arc::new(open_segment(&self.path, id, true)?);
        if self.fsync {
            sync_dir(&self.path)?;
        }
        self.segments.write().insert(id, SegmentFiles::new(&self.path, id, Arc::clone(&file)));
        Ok(Head { id, file, len: 0, synced: 0, kicked: 0, dropped: 0, entries: Vec::new() })
    }

    /// Appends records (key, value, header) to `head` with as few `pwritev` calls as the
    /// kernel allows; values go from their memory straight to the file. Returns each offset.
    pub(crate) fn append(&self, head: &mut Head, recs: &[(&[u8], &[u8], RecordHeader)]) -> std::io::Result<Vec<u64>> {
        let hks: Vec<Vec<u8>> = recs.iter().map(|(k, _, h)| h.encode(k)).collect();
        let bufs: Vec<&[u8]> = hks.iter().zip(recs).flat_map(|(hk, (_, v, _))| [hk.as_slice(), v]).collect();
        write_all_vectored_at(&head.file, &bufs, head.len)?;
        let mut offs = Vec::with_capacity(recs.len());
        for (k, _, h) in recs {
            offs.push(head.len);
            head.entries.push(IndexEntry {
                key: (*k).into(),
                version: h.version,
                offset: head.len,
                value_len: h.value_len,
                flags: h.flags,
            });
            head.len += h.record_len();
        }
        let n = recs.iter().map(|(_, _, h)| h.record_len()).sum();
        self.used.fetch_add(n, Ordering::Relaxed);
        add(&self.counters.bytes_written, n);
        Ok(offs)
    }

    /// Hands the bytes appended since the last call to writeback without waiting
    /// (`sync_file_range`). With `drop_clean`, first waits until the bytes handed over earlier
    /// are written and drops them from the page cache, so that dirty pages never pile up (the
    /// kernel would throttle the writer hard). This is no durability point: it issues no device
    /// cache flush; [`Drive::sync`] does.
    pub(crate) fn start_writeback(&self, head: &mut Head, drop_clean: bool) {
        if drop_clean && head.dropped < head.kicked {
            let wait =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            write_back(&head.file, head.dropped, head.kicked - head.dropped, wait);
            drop_cached(&head.file, head.dropped, head.kicked - head.dropped);
            head.dropped = head.kicked;
        }
        if head.kicked < head.len {
            write_back(&head.file, head.kicked, head.len - head.kicked, libc::SYNC_FILE_RANGE_WRITE);
            head.kicked = head.len;
        }
    }

    /// Makes everything appended to `head` durable (fdatasync) and drops it from the page cache.
    pub(crate) fn sync(&self, head: &mut Head) -> std::io::Result<()> {
        if head.synced == head.len {
            return Ok(());
        }
        head.file.sync_data()?;
        drop_cached(&head.file, head.dropped, head.len - head.dropped);
        head.synced = head.len;
        head.kicked = head.len;
        head.dropped = head.len;
        Ok(())
    }

    /// Seals `head`: syncs it (unless durability is `none`: then it is only written back) and
    /// writes its checkpoint.
    pub(crate) fn seal(&self, mut head: Head) -> std::io::Result<()> {
        if self.fsync {
            self.sync(&mut head)?;
        } else {
            // No durability point, but no dirty pages left behind either.
            self.start_writeback(&mut head, false);
            self.start_writeback(&mut head, true);
        }
        self.write_checkpoint(head.id, &head.entries, &head.file)?;
        Ok(())
    }

    fn write_checkpoint(&self, id: u32, entries: &[IndexEntry], log: &File) -> std::io::Result<()> {
        let bytes = format::encode_index(entries);
        let tmp = self.path.join(format!("{}.tmp", segment_name(id, "idx")));
        std::fs::write(&tmp, &bytes)?;
        if self.fsync {
            log.sync_data()?;
            File::open(&tmp)?.sync_all()?;
        }
        std::fs::rename(&tmp, self.path.join(segment_name(id, "idx")))?;
        if self.fsync {
            sync_dir(&self.path)?;
        }
        self.used.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The records of a sealed segment: from its checkpoint, or from a scan when the checkpoint
    /// has been damaged since the segment was sealed.
    pub(crate) fn entries(&self, id: u32) -> std::io::Result<Vec<IndexEntry>> {
        let checkpoint = std::fs::read(self.path.join(segment_name(id, "idx")))
            .map_err(|e| e.to_string())
            .and_then(|b| format::decode_index(&b));
        match checkpoint {
            Ok(e) => Ok(e),
            Err(why) => {
                tracing::warn!(drive = %self.path.display(), segment = id, %why, "checkpoint unusable; scanning the segment");
                let Some(files) = self.segments.read().get(&id).cloned() else { return Ok(Vec::new()) };
                Ok(scan(&files.file)?.0)
            }
        }
    }

    /// Deletes segment `id` (log and checkpoint). Readers holding its file finish their reads.
    pub(crate) fn remove_segment(&self, id: u32) -> std::io::Result<()> {
        self.segments.write().remove(&id);
        let mut freed = 0;
        for ext in ["log", "idx"] {
            let p = self.path.join(segment_name(id, ext));
            freed += std::fs::metadata(&p).map_or(0, |m| m.len());
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.used.fetch_sub(freed.min(self.used()), Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of buffer [`Drive::read_value`] needs for a record: the value itself, or, for a
    /// value read with O_DIRECT, the aligned blocks around the record plus alignment room.
    pub(crate) fn read_room(off: u64, key_len: usize, value_len: u64) -> u64 {
        if value_len < DIRECT_MIN {
            return value_len;
        }
        let (_, span) = direct_span(off, (HEADER_LEN + key_len) as u64 + value_len);
        span as u64 + DIRECT_ALIGN as u64
    }

    /// Reads the record at `off` of segment `seg` into `buf` (at least [`Drive::read_room`]
    /// bytes) and verifies it: magic, header CRC, key, version, length and value CRC. Returns
    /// where in `buf` the value lies, and its CRC.
    pub(crate) fn read_value(
        &self,
        seg: u32,
        off: u64,
        key: &[u8],
        version: u64,
        value_len: u64,
        buf: &mut [u8],
    ) -> Result<(std::ops::Range<usize>, u32), ReadError> {
        let Some(files) = self.segments.read().get(&seg).cloned() else { return Err(ReadError::Gone) };
        let cut_short = || ReadError::Corrupt(format!("record at offset {off} of segment {seg} is cut short"));
        let corrupt = |what: &str| ReadError::Corrupt(format!("record at offset {off} of segment {seg}: {what}"));
        // Header and key as the index says they must be; then the value CRC.
        let check_head = |head: &[u8]| -> Result<RecordHeader, ReadError> {
            let fixed: &[u8; HEADER_LEN] = head[..HEADER_LEN].try_into().expect("header length");
            let h = RecordHeader::decode(fixed).ok_or_else(|| corrupt("bad magic"))?;
            if !RecordHeader::verify(fixed, &head[HEADER_LEN..]) || h.key_len as usize != key.len() {
                return Err(corrupt("header checksum mismatch"));
            }
            if &head[HEADER_LEN..] != key || h.version != version || h.value_len != value_len || h.is_tombstone() {
                return Err(corrupt("it is not the record the index names"));
            }
            Ok(h)
        };
        let check_value = |h: RecordHeader, value: &[u8]| {
            let crc = crc_bulk(0, value);
            if crc == h.value_crc { Ok(crc) } else { Err(corrupt("value checksum mismatch")) }
        };
        let head_len = HEADER_LEN + key.len();
        let rec_len = head_len as u64 + value_len;
        let (start, span) = direct_span(off, rec_len);
        let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
        if let Some(direct) = files.direct.as_ref().filter(|_| value_len >= DIRECT_MIN && at + span <= buf.len()) {
            match read_direct(direct, start, &mut buf[at..at + span]) {
                Ok(got) => {
                    let rel = at + (off - start) as usize;
                    if got < rel - at + rec_len as usize {
                        return Err(cut_short());
                    }
                    let h = check_head(&buf[rel..rel + head_len])?;
                    let value = rel + head_len..rel + rec_len as usize;
                    add(&self.counters.bytes_read, value_len);
                    let crc = check_value(h, &buf[value.clone()])?;
                    return Ok((value, crc));
                }
                // An alignment this file system does not take: read buffered instead.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        let io = |e: std::io::Error| if e.kind() == ErrorKind::UnexpectedEof { cut_short() } else { ReadError::Io(e) };
        let mut head = vec![0u8; head_len];
        files.file.read_exact_at(&mut head, off).map_err(io)?;
        let h = check_head(&head)?;
        let value = 0..value_len as usize;
        files.file.read_exact_at(&mut buf[value.clone()], off + head_len as u64).map_err(io)?;
        add(&self.counters.bytes_read, value_len);
        let crc = check_value(h, &buf[value.clone()])?;
        Ok((value, crc))
    }
}

/// Scans a segment's records header by header. Returns the records and the end of the last
/// valid record. A damaged header does not end the scan: it resumes at the next offset that holds
/// a valid header (magic, bounds and header CRC), so one bad record costs only itself; only a
/// tail with no valid record after it (a torn write) is cut.
fn scan(file: &File) -> std::io::Result<(Vec<IndexEntry>, u64)> {
    let len = file.metadata()?.len();
    let mut entries = Vec::new();
    let mut off = 0u64;
    let mut valid_end = 0u64;
    while off + HEADER_LEN as u64 <= len {
        if let Some(e) = record_at(file, off, len)? {
            off += e.record_len();
            valid_end = off;
            entries.push(e);
            continue;
        }
        match next_candidate(file, off + 1, len)? {
            Some(next) => {
                tracing::warn!(offset = off, skipped_bytes = next - off, "damaged record header skipped");
                off = next;
            }
            None => break,
        }
    }
    Ok((entries, valid_end))
}

/// The record at `off` if its header is valid and it fits in the file.
fn record_at(file: &File, off: u64, len: u64) -> std::io::Result<Option<IndexEntry>> {
    let mut fixed = [0u8; HEADER_LEN];
    file.read_exact_at(&mut fixed, off)?;
    let Some(h) = RecordHeader::decode(&fixed) else { return Ok(None) };
    if h.record_len() > len - off {
        return Ok(None);
    }
    let mut key = vec![0u8; h.key_len as usize];
    file.read_exact_at(&mut key, off + HEADER_LEN as u64)?;
    if !RecordHeader::verify(&fixed, &key) {
        return Ok(None);
    }
    Ok(Some(IndexEntry { key: key.into(), version: h.version, offset: off, value_len: h.value_len, flags: h.flags }))
}

/// The first offset at or after `from` holding a valid record.
fn next_candidate(file: &File, from: u64, len: u64) -> std::io::Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let magic = format::RECORD_MAGIC;
    let mut buf = vec![0u8; CHUNK as usize + magic.len()];
    let mut at = from;
    while at + HEADER_LEN as u64 <= len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        for i in memchr_all(&buf[..n], magic) {
            let cand = at + i as u64;
            if cand + HEADER_LEN as u64 <= len && record_at(file, cand, len)?.is_some() {
                return Ok(Some(cand));
            }
        }
        at += CHUNK;
    }
    Ok(None)
}

/// Offsets of `needle` in `hay`.
fn memchr_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len()).enumerate().filter(move |(_, w)| *w == needle).map(|(i, _)| i)
}

/// 90% of what the file system holding `path` can give us: its free space plus what our segments
/// already use there.
fn auto_capacity(path: &Path) -> Result<u64, String> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "cannot measure the file system of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let ours: u64 = std::fs::read_dir(path)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    Ok((free + ours) / 10 * 9)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads and verifies a record's value the way the tier does.
    fn read(d: &Drive, seg: u32, off: u64, key: &[u8], version: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0u8; Drive::read_room(off, key.len(), len as u64) as usize];
        let (value, crc) = d.read_value(seg, off, key, version, len as u64, &mut buf)?;
        assert_eq!(crc, crc32c::crc32c(&buf[value.clone()]));
        Ok(buf[value].to_vec())
    }

    fn rec(version: u64, key: &[u8], value: &[u8]) -> RecordHeader {
        RecordHeader {
            version,
            value_len: value.len() as u64,
            value_crc: crc32c::crc32c(value),
            key_len: key.len() as u16,
            flags: 0,
        }
    }

    #[test]
    fn records_written_are_read_back_verified_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (d, r) = Drive::open(0, dir.path(), Some(1 << 20), true).unwrap();
        assert_eq!(r.segments, 0);
        let mut head = d.create_head(d.next_segment_id()).unwrap();
        let a = d.append(&mut head, &[(b"a", b"hello", rec(1, b"a", b"hello"))]).unwrap()[0];
        let b = d.append(&mut head, &[(b"b", b"world!", rec(2, b"b", b"world!"))]).unwrap()[0];
        d.sync(&mut head).unwrap();
        assert_eq!(read(&d, 1, b, b"b", 2, 6).unwrap(), b"world!");
        assert!(matches!(read(&d, 1, a, b"b", 1, 5), Err(ReadError::Corrupt(_))));
        assert!(matches!(read(&d, 1, b, b"b", 3, 6), Err(ReadError::Corrupt(_))), "wrong version");
        assert!(matches!(read(&d, 9, b, b"b", 2, 6), Err(ReadError::Gone)));
        drop(head); // a crash: no checkpoint
        drop(d);
        let (d, r) = Drive::open(0, dir.path(), Some(1 << 20), true).unwrap();
        assert_eq!((r.segments, r.scanned, r.from_checkpoint, r.torn_bytes), (1, 1, 0, 0));
        assert_eq!(r.records.iter().map(|(_, e)| e.version).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(d.next_segment_id(), 2);
        drop(d);
        let (_d, r) = Drive::open(0, dir.path(), Some(1 << 20), true).unwrap();
        assert_eq!((r.scanned, r.from_checkpoint), (0, 1), "the scan wrote a checkpoint");
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_flipped_value_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = Drive::open(0, dir.path(), Some(1 << 20), false).unwrap();
        let mut head = d.create_head(1).unwrap();
        let value = vec![7u8; 1000];
        let off = d.append(&mut head, &[(b"k", &value, rec(1, b"k", &value))]).unwrap()[0];
        d.append(&mut head, &[(b"torn", &value, rec(2, b"torn", &value))]).unwrap();
        let full = head.len;
        drop(head);
        drop(d);
        let log = dir.path().join("seg-00000001.log");
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(full - 10).unwrap();
        f.write_all_at(&[0xff], off + 32 + 1 + 500).unwrap();
        let (d, r) = Drive::open(0, dir.path(), Some(1 << 20), false).unwrap();
        assert_eq!(r.records.len(), 1, "the cut record is gone");
        assert_eq!(r.torn_bytes, full - 10 - (32 + 1 + 1000));
        let e = read(&d, 1, off, b"k", 1, 1000).unwrap_err();
        assert!(matches!(&e, ReadError::Corrupt(m) if m.contains("value checksum")), "{e:?}");
    }

    #[test]
    fn a_damaged_header_without_a_checkpoint_costs_only_its_own_record() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = Drive::open(0, dir.path(), Some(1 << 20), false).unwrap();
        let mut head = d.create_head(1).unwrap();
        let v = vec![5u8; 300];
        let keys: Vec<[u8; 2]> = (0..5u8).map(|i| [b'k', i]).collect();
        let recs: Vec<(&[u8], &[u8], RecordHeader)> =
            keys.iter().zip(1u64..).map(|(k, ver)| (&k[..], &v[..], rec(ver, k, &v))).collect();
        let offs = d.append(&mut head, &recs).unwrap();
        drop(head);
        drop(d);
        let log = dir.path().join("seg-00000001.log");
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.write_all_at(b"X", offs[2] + 33).unwrap(); // a key byte of the third record
        let (_d, r) = Drive::open(0, dir.path(), Some(1 << 20), false).unwrap();
        let keys: Vec<u8> = r.records.iter().map(|(_, e)| e.key[1]).collect();
        assert_eq!(keys, vec![0, 1, 3, 4], "the records after the damaged one are kept");
        assert_eq!(r.torn_bytes, 0, "nothing is cut: valid records follow the damage");
    }

    #[test]
    fn wrong_paths_foreign_directories_and_double_use_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(Drive::open(0, &missing, None, true).unwrap_err().contains("does not exist"));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(Drive::open(0, &file, None, true).unwrap_err().contains("not a directory"));
        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("photos.tar"), b"x").unwrap();
        let e = Drive::open(0, &foreign, None, true).unwrap_err();
        assert!(e.contains("not a MemKV drive") && e.contains("photos.tar"), "{e}");
        let ours = dir.path().join("ours");
        std::fs::create_dir(&ours).unwrap();
        let (d, _) = Drive::open(0, &ours, None, true).unwrap();
        assert!(d.capacity > 0, "auto capacity measures the file system");
        assert!(Drive::open(1, &ours, None, true).unwrap_err().contains("in use by another memkv-server"));
    }

    #[test]
    fn large_values_read_with_o_direct_match_and_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = Drive::open(0, dir.path(), Some(64 << 20), false).unwrap();
        let mut head = d.create_head(1).unwrap();
        // Unaligned offsets: a small record first, then large ones of odd lengths.
        let small = vec![1u8; 100];
        let big: Vec<Vec<u8>> =
            [DIRECT_MIN, DIRECT_MIN + 13, 3 << 20].iter().map(|&n| (0..n).map(|i| (i % 253) as u8).collect()).collect();
        let mut recs: Vec<(&[u8], &[u8], RecordHeader)> = vec![(b"s", &small, rec(1, b"s", &small))];
        let keys = [b"big0", b"big1", b"big2"];
        for (k, v) in keys.iter().zip(&big) {
            recs.push((&k[..], v, rec(2, &k[..], v)));
        }
        let offs = d.append(&mut head, &recs).unwrap();
        if d.segments.read()[&1].direct.is_none() {
            eprintln!("this file system refuses O_DIRECT: only the buffered read path was tested");
        }
        for (i, v) in big.iter().enumerate() {
            assert_eq!(&read(&d, 1, offs[i + 1], keys[i], 2, v.len()).unwrap(), v);
            // Any buffer works: an unaligned one with the room asked for, or an exact one.
            let room = Drive::read_room(offs[i + 1], 4, v.len() as u64) as usize;
            let mut odd = vec![0u8; room + 1];
            let (value, _) = d.read_value(1, offs[i + 1], keys[i], 2, v.len() as u64, &mut odd[1..]).unwrap();
            assert_eq!(&odd[1..][value], &v[..]);
            let mut exact = vec![0u8; v.len()];
            let (value, _) = d.read_value(1, offs[i + 1], keys[i], 2, v.len() as u64, &mut exact).unwrap();
            assert_eq!((value.start, &exact[..]), (0, &v[..]), "too small for O_DIRECT: buffered");
        }
        // A flipped byte is caught on the direct path too.
        head.file.write_all_at(&[0xee], offs[2] + 40 + 1000).unwrap();
        let e = read(&d, 1, offs[2], b"big1", 2, big[1].len()).unwrap_err();
        assert!(matches!(&e, ReadError::Corrupt(m) if m.contains("value checksum")), "{e:?}");
        // A record cut short at the end of the file.
        head.file.set_len(offs[3] + 5000).unwrap();
        let e = read(&d, 1, offs[3], b"big2", 2, big[2].len()).unwrap_err();
        assert!(matches!(&e, ReadError::Corrupt(m) if m.contains("cut short")), "{e:?}");
    }

    #[test]
    fn one_append_of_many_records_spans_several_pwritev_calls() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = Drive::open(0, dir.path(), Some(64 << 20), false).unwrap();
        let mut head = d.create_head(1).unwrap();
        let keys: Vec<String> = (0..1500).map(|i| format!("key-{i}")).collect();
        let vals: Vec<Vec<u8>> = (0..1500).map(|i| vec![(i % 251) as u8; 10 + i % 7]).collect();
        let recs: Vec<(&[u8], &[u8], RecordHeader)> =
            keys.iter().zip(&vals).map(|(k, v)| (k.as_bytes(), &v[..], rec(1, k.as_bytes(), v))).collect();
        let offs = d.append(&mut head, &recs).unwrap();
        for ((k, v), off) in keys.iter().zip(&vals).zip(offs) {
            assert_eq!(&read(&d, 1, off, k.as_bytes(), 1, v.len()).unwrap(), v);
        }
        assert_eq!(d.used(), head.len);
    }

    #[test]
    fn short_pwritev_results_are_continued() {
        let dir = tempfile::tempdir().unwrap();
        let f =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.path().join("x")).unwrap();
        let big = vec![3u8; 3 << 20];
        write_all_vectored_at(&f, &[b"ab", &[], &big, b"z"], 5).unwrap();
        let mut back = vec![0u8; 3 + (3 << 20)];
        f.read_exact_at(&mut back, 5).unwrap();
        assert_eq!(&back[..2], b"ab");
        assert_eq!(back[back.len() - 1], b'z');
    }
}
