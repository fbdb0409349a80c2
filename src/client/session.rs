//! One authenticated, pipelined session to a node: over TCP, or over a same-host Unix socket
//! whose frames then go through shared-memory rings (`transport/ring.rs`) where the node agrees.
//!
//! A writer task owns the socket's write half: callers queue owned frames (header, meta,
//! payload `Bytes`), so a caller that times out or is cancelled never leaves half a frame on the
//! wire. The writer seals queued frames in order (sequence numbers, MACs) and sends many per
//! `writev`. A reader task matches answers to callers by request id and reads each payload into
//! one buffer of exactly its size. Answers to callers that gave up are read and dropped, so the
//! stream stays in sync.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};

use super::bufpool::BufPool;
use super::loans::ReadTarget;
use crate::auth::{self, AuthKey, DirectionMac, FEATURE_PAYLOAD_MAC, FEATURE_SHM_RING, Hello, Role, SessionKeys};
use crate::transport::crc_copy::crc_bulk;
use crate::transport::onesided::Provider;
use crate::transport::ring;
use crate::transport::ring::{Inbound, Outbound};
use crate::transport::shm::{self, ShmProvider};
use crate::transport::tcp::{FrameError, FrameOut, FrameReader, SegmentCrcs, frame_prefix, seal_frame, write_frames};
use crate::wire::{self, Flags, HEADER_LEN, Header, Limits, MAC_LEN, MAX_META_LEN, Op, Status};

/// Frames queued per session before callers wait (backpressure).
const SEND_QUEUE: usize = 1024;
/// Most frames sealed into one `writev`.
const WRITE_BATCH: usize = 64;

/// A request as queued by a caller.
pub(crate) struct Outgoing {
    pub(crate) header: Header,
    pub(crate) meta: Vec<u8>,
    pub(crate) payload: Vec<Bytes>,
    /// CRC32Cs left for the writer to fill in: that of `payload[i]` goes at `meta[crc_at[i]..][..4]`
    /// (little-endian). Through a ring the writer takes them in its copy of the payload
    /// ([`ring::RingWriter::put_frame`]), else in a pass before the frame is sealed. Empty when the
    /// caller filled them.
    pub(crate) crc_at: Vec<usize>,
}

impl Outgoing {
    /// Takes the CRCs left to the writer (`crc_at`) in a pass of their own.
    pub(crate) fn fill_crcs(&mut self) {
        for (p, &at) in self.payload.iter().zip(&self.crc_at) {
            self.meta[at..at + 4].copy_from_slice(&crc_bulk(0, p).to_le_bytes());
        }
        self.crc_at.clear();
    }
}

/// A verified answer.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) header: Header,
    pub(crate) meta: Vec<u8>,
    pub(crate) payload: Bytes,
    /// CRC32C of the payload's segments, taken while receiving: one per Ok entry of a GET_BATCH
    /// answer, else one for the whole payload.
    pub(crate) crcs: Vec<u32>,
    /// The payload went straight into the caller's [`ReadTarget`]s (and `payload` is empty).
    pub(crate) placed: bool,
}

/// Caller memory for the answer to one request: one target per request entry (GET_BATCH) or
/// one for a GET. Used only when every Ok entry's length equals its target's.
pub(crate) type Targets = Arc<[ReadTarget]>;

/// Why a session failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SessionError {
    /// The connection is gone (peer closed, I/O error, authentication failure).
    #[error("{0}")]
    Closed(Arc<str>),
    /// The node refused the handshake.
    #[error("node refused the handshake with {status}: {message}")]
    Refused { status: Status, message: String },
}

type Waiter = oneshot::Sender<Result<Incoming, SessionError>>;

/// A caller waiting for its answer.
struct Pending {
    tx: Waiter,
    targets: Option<Targets>,
}

struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    alive: AtomicBool,
    closed: Notify,
    reason: Mutex<Option<Arc<str>>>,
}

impl Shared {
    fn fail_all(&self, reason: &str) {
        let reason: Arc<str> = Arc::from(reason);
        self.alive.store(false, Ordering::Release);
        self.reason.lock().get_or_insert_with(|| Arc::clone(&reason));
        self.closed.notify_waiters();
        let waiters: Vec<Pending> = self.pending.lock().drain().map(|(_, w)| w).collect();
        for w in waiters {
            let _ = w.tx.send(Err(SessionError::Closed(Arc::clone(&reason))));
        }
    }

    fn closed_error(&self) -> SessionError {
        SessionError::Closed(self.reason.lock().clone().unwrap_or_else(|| Arc::from("connection closed")))
    }
}

/// Removes a waiter whose caller stopped waiting (timeout or cancellation).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending.lock().remove(&self.id);
    }
}

/// One session.
pub(crate) struct Session {
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// The node's id from its handshake.
    pub(crate) node_id: String,
    /// The largest object the node accepts (from its handshake).
    pub(crate) max_object: u64,
    /// The writer and reader tasks.
    tasks: [tokio::task::AbortHandle; 2],
    /// One-sided data path (shared memory, RDMA), if the session has one.
    provider: tokio::sync::Mutex<Option<Box<dyn Provider>>>,
    /// Whether a provider was attached (it is dropped, and the session closed, on failure).
    one_sided: AtomicBool,
    /// Frames go through shared-memory rings, not the socket.
    pub(crate) rings: bool,
}

/// [`Session::put_inline_max`] of a session whose frames go through shared-memory rings.
const SHM_PUT_INLINE_MAX: u64 = 64 << 10;

/// What a session needs to start.
pub(crate) struct SessionParams<'a> {
    pub(crate) key: &'a AuthKey,
    pub(crate) payload_mac: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) pool: &'a BufPool,
}

impl Session {
    /// Connects, authenticates and starts the reader and writer tasks.
    pub(crate) async fn connect(addr: &str, p: &SessionParams<'_>) -> Result<Arc<Self>, SessionError> {
        let closed = |why: String| SessionError::Closed(Arc::from(why));
        let stream = tokio::time::timeout(p.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| closed(format!("connect timed out after {} ms", p.connect_timeout.as_millis())))?
            .map_err(|e| closed(format!("connect failed: {e}")))?;
        let _ = stream.set_nodelay(true);
        tokio::time::timeout(p.connect_timeout, Self::start(stream, p))
            .await
            .map_err(|_| closed(format!("handshake timed out after {} ms", p.connect_timeout.as_millis())))?
    }

    /// Runs the handshake on an established stream and starts the tasks.
    pub(crate) async fn start<S>(mut stream: S, p: &SessionParams<'_>) -> Result<Arc<Self>, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let nonce = send_hello(&mut stream, p, 0).await?;
        let (rd, wr) = tokio::io::split(stream);
        let mut rd = FrameReader::new(rd, answer_limits());
        let agreed = answer(&mut rd, nonce, p, 0).await?;
        Ok(Self::launch(rd, wr, agreed, p, None))
    }

    /// Connects to a node's shared-memory socket (a node on this host), authenticates, and maps
    /// the arena it hands over: the session's one-sided transfers are `memcpy`s. Where the node
    /// agrees, the session's frames then go through shared-memory rings (transport/ring.rs).
    pub(crate) async fn connect_shm(socket: &str, p: &SessionParams<'_>) -> Result<Arc<Self>, SessionError> {
        Self::connect_unix(socket, p, FEATURE_SHM_RING).await
    }

    /// [`connect_shm`](Self::connect_shm), asking for `features` (rings or not).
    async fn connect_unix(socket: &str, p: &SessionParams<'_>, features: u32) -> Result<Arc<Self>, SessionError> {
        let closed = |why: String| SessionError::Closed(Arc::from(why));
        let run = async {
            let mut stream = shm::connect(socket)
                .map_err(|e| closed(format!("cannot connect to shared-memory socket {socket}: {e}")))?;
            let nonce = send_hello(&mut stream, p, features).await?;
            let (_, mut fds) =
                shm::recv_marker(&stream).await.map_err(|e| closed(format!("shared-memory handshake failed: {e}")))?;
            // Stays open while `rd` and `wr` live; the rings watch it (duplicated) afterwards.
            let sock = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let (rd, wr) = tokio::io::split(stream);
            let mut rd = FrameReader::new(rd, answer_limits());
            let agreed = answer(&mut rd, nonce, p, features).await?;
            // Mapped only once the node's answer authenticated.
            let provider: Option<Box<dyn Provider>> = match fds.is_empty() {
                true => None,
                false => Some(Box::new(
                    ShmProvider::map(fds.remove(0))
                        .map_err(|e| closed(format!("cannot map the node's shared arena: {e}")))?,
                )),
            };
            if !agreed.rings {
                return Ok(Self::launch(rd, wr, agreed, p, provider));
            }
            if rd.buffered_len() != 0 {
                return Err(closed("the node agreed to shared-memory rings but went on writing to the socket".into()));
            }
            let (rr, rw) = ring::open(fds, sock, ring::Side::Client)
                .map_err(|e| closed(format!("cannot open the session's shared-memory rings: {e}")))?;
            drop((rd, wr));
            Ok(Self::launch(FrameReader::for_ring(rr, answer_limits()), rw, agreed, p, provider))
        };
        tokio::time::timeout(p.connect_timeout, run).await.map_err(|_| {
            closed(format!("shared-memory handshake timed out after {} ms", p.connect_timeout.as_millis()))
        })?
    }

    /// Starts the reader and writer tasks of an authenticated session.
    fn launch<R, W>(
        rd: FrameReader<R>,
        wr: W,
        agreed: Agreed,
        p: &SessionParams<'_>,
        provider: Option<Box<dyn Provider>>,
    ) -> Arc<Self>
    where
        R: Inbound + Send + 'static,
        W: Outbound + Send + 'static,
    {
        let Agreed { keys, payload_mac, max_object, node_id, rings } = agreed;
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            closed: Notify::new(),
            reason: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let writer = tokio::spawn(write_loop(wr, keys.send, rx, payload_mac, Arc::clone(&shared)));
        let reader = tokio::spawn(read_loop(rd, keys.recv, payload_mac, Arc::clone(&shared), p.pool.clone()));
        let tasks = [writer.abort_handle(), reader.abort_handle()];
        let one_sided = AtomicBool::new(provider.is_some());
        let provider = tokio::sync::Mutex::new(provider);
        let next_id = AtomicU64::new(1);
        Arc::new(Self { tx, shared, next_id, node_id, max_object, tasks, provider, one_sided, rings })
    }

    /// Attaches a one-sided provider (an RDMA queue pair bootstrapped over this session).
    pub(crate) async fn attach(&self, p: Box<dyn Provider>) {
        *self.provider.lock().await = Some(p);
        self.one_sided.store(true, Ordering::Release);
    }

    /// Whether the session moves bytes one-sidedly (its control ops then carry no payload).
    pub(crate) fn is_one_sided(&self) -> bool {
        self.one_sided.load(Ordering::Acquire)
    }

    /// The largest PUT (one value, or the values of one batch group together) that goes inline
    /// as frames even when the session moves bytes one-sidedly: up to it, the second round trip
    /// of a one-sided PUT (RESERVE, copy, COMMIT) costs more than the node's copy of the
    /// payload out of the frame. Through shared-memory rings that holds up to 64 KiB (PUTs of
    /// 16 x 4 KiB, 4 x 16 KiB, 1 x 32 KiB and 1 x 64 KiB went faster inline; 16 x 16 KiB and
    /// 16 x 64 KiB went slower: docs/benchmarks.md). RDMA, not measured, keeps the node's inline
    /// answer limit.
    pub(crate) fn put_inline_max(&self) -> u64 {
        if self.rings { SHM_PUT_INLINE_MAX } else { wire::INLINE_MAX }
    }

    /// The session's one-sided provider, locked for one transfer (the control steps around it
    /// run unlocked, many at a time); `None` inside once a failure dropped it.
    pub(crate) async fn provider(&self) -> tokio::sync::MutexGuard<'_, Option<Box<dyn Provider>>> {
        self.provider.lock().await
    }

    /// Whether the session can still carry requests.
    pub(crate) fn is_alive(&self) -> bool {
        // A closed queue means the writer task is gone, also when the runtime that ran it was
        // dropped without the session noticing.
        self.shared.alive.load(Ordering::Acquire) && !self.tx.is_closed()
    }

    /// Closes the session at once: frames still queued are dropped unsent (so no payload is read
    /// from its buffers afterwards) and every waiting caller gets `reason`.
    pub(crate) fn abort(&self, reason: &str) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.fail_all(reason);
    }

    /// Queues one request whose answer nobody waits for (the reader reads and drops it).
    pub(crate) async fn post(&self, mut req: Outgoing) {
        req.header.request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(req).await;
    }

    /// Sends one request and waits for its answer, whose payload goes into `targets` when given
    /// and their lengths match. Cancellation-safe: dropping the future abandons the answer
    /// without disturbing the stream, and the targets are released once no task writes to them.
    pub(crate) async fn call(&self, mut req: Outgoing, targets: Option<Targets>) -> Result<Incoming, SessionError> {
        if !self.is_alive() {
            return Err(self.shared.closed_error());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        req.header.request_id = id;
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().insert(id, Pending { tx, targets });
        let _guard = PendingGuard { shared: &self.shared, id };
        if self.tx.send(req).await.is_err() {
            return Err(self.shared.closed_error());
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.shared.closed_error()),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The writer ends when the queue's sender (ours) is gone; wake the reader too.
        self.shared.alive.store(false, Ordering::Release);
        self.shared.closed.notify_waiters();
    }
}

/// What the node's handshake answer agreed to.
struct Agreed {
    keys: SessionKeys,
    payload_mac: bool,
    max_object: u64,
    node_id: String,
    /// The node handed over shared-memory rings for this session's frames.
    rings: bool,
}

/// Limits on the frames a node sends.
fn answer_limits() -> Limits {
    Limits { max_meta: MAX_META_LEN as u32, max_payload: 1 << 40 }
}

/// Reads and checks the node's HELLO answer to a HELLO that asked for `asked` (feature bits).
async fn answer<R: AsyncRead + Unpin>(
    rd: &mut FrameReader<R>,
    nonce: [u8; 32],
    p: &SessionParams<'_>,
    asked: u32,
) -> Result<Agreed, SessionError> {
    let closed = |why: String| SessionError::Closed(Arc::from(why));
    let f = match rd.read_head().await {
        Ok(f) => f,
        Err(FrameError::Closed) => return Err(closed("node closed the connection during the handshake".into())),
        Err(e) => return Err(closed(format!("handshake failed: {e}"))),
    };
    let expected = auth::hello_response_mac(p.key, &f.raw, &f.meta, &nonce);
    let authentic = auth::macs_equal(&expected, &f.mac);
    let status = f.header.status();
    if status != Status::Ok {
        let text = String::from_utf8_lossy(&f.meta).into_owned();
        let message = if authentic {
            text
        } else {
            format!("{text} (this answer could not be authenticated: the node's MEMKV_AUTH_KEY differs from ours)")
        };
        return Err(SessionError::Refused { status, message });
    }
    if !authentic {
        return Err(SessionError::Refused {
            status: Status::BadMac,
            message: "the node's handshake answer did not authenticate: it uses a different MEMKV_AUTH_KEY".into(),
        });
    }
    let (theirs, tail) = Hello::decode(&f.meta).map_err(|e| closed(e.to_string()))?;
    if tail.len() < 8 {
        return Err(closed("malformed handshake answer: no max object size".into()));
    }
    let (max, id) = tail.split_at(8);
    let max_object = u64::from_le_bytes(max.try_into().unwrap_or([0; 8]));
    let node_id = String::from_utf8_lossy(id).into_owned();
    let payload_mac = theirs.features & FEATURE_PAYLOAD_MAC != 0;
    if p.payload_mac && !payload_mac {
        // Fail closed: MEMKV_PAYLOAD_MAC=true must never silently downgrade.
        return Err(SessionError::Refused {
            status: Status::InvalidRequest,
            message: "the node did not agree to payload MACs (MEMKV_PAYLOAD_MAC=true); upgrade the node".into(),
        });
    }
    let keys = SessionKeys::derive(p.key, &nonce, &theirs.nonce, Role::Client);
    // Rings only where we asked for them: a node's bit alone does not switch a session over.
    let rings = theirs.features & asked & FEATURE_SHM_RING != 0;
    Ok(Agreed { keys, payload_mac, max_object, node_id, rings })
}

/// Sends our HELLO, asking for `features` beyond the payload MAC; returns its nonce.
async fn send_hello<S: AsyncWrite + Unpin>(
    stream: &mut S,
    p: &SessionParams<'_>,
    features: u32,
) -> Result<[u8; 32], SessionError> {
    let closed = |why: String| SessionError::Closed(Arc::from(why));
    let nonce = auth::random_bytes().map_err(|e| closed(e.to_string()))?;
    let mac = if p.payload_mac { FEATURE_PAYLOAD_MAC } else { 0 };
    let hello = Hello { nonce, unix_ms: auth::unix_ms(SystemTime::now()), features: features | mac };
    let meta = hello.encode(b"");
    let mut h = Header::request(Op::Hello, 0);
    h.meta_len = meta.len() as u32;
    let raw = h.encode();
    let mac = auth::hello_request_mac(p.key, &raw, &meta);
    stream
        .write_all(&frame_prefix(&raw, &meta, &mac))
        .await
        .map_err(|e| closed(format!("handshake write failed: {e}")))?;
    Ok(nonce)
}

/// Waits for the next frames to send and takes up to `max` of them into `batch`; 0 once the
/// queue is closed and empty. After the first frame arrives the task yields once, so that the
/// tasks already runnable on this worker (the callers answered by the same read) queue theirs
/// first and they all leave in one `writev`. Without it the writer, woken into the worker's
/// next-task slot by the first caller, wrote each request alone: one send system call per
/// request, and on loopback every send also runs the peer's receive path.
async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) -> usize {
    if rx.recv_many(batch, max).await == 0 {
        return 0;
    }
    if batch.len() < max {
        tokio::task::yield_now().await;
        while batch.len() < max {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
    }
    batch.len()
}

async fn write_loop<W: Outbound>(
    mut wr: W,
    mut mac: DirectionMac,
    mut rx: mpsc::Receiver<Outgoing>,
    payload_mac: bool,
    shared: Arc<Shared>,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(WRITE_BATCH);
    let mut failure = None;
    // Everything queued so far (up to WRITE_BATCH) goes out together: in one writev, except the
    // requests a ring takes on their own (`write_batch`).
    while next_batch(&mut rx, &mut batch, WRITE_BATCH).await > 0 {
        if let Err(e) = write_batch(&mut wr, &mut mac, payload_mac, &mut batch).await {
            failure = Some(format!("write failed: {e}"));
            break;
        }
        batch.clear();
    }
    let _ = wr.shutdown().await;
    shared.fail_all(failure.as_deref().unwrap_or("session closed"));
}

/// Writes queued requests in order. Into a ring, a request whose payload CRCs are left to the
/// writer (`crc_at`) goes on its own, the CRCs taken in the copy; the requests between such ones
/// go out together, their left CRCs taken first.
async fn write_batch<W: Outbound>(
    wr: &mut W,
    mac: &mut DirectionMac,
    payload_mac: bool,
    batch: &mut [Outgoing],
) -> io::Result<()> {
    // Rings are agreed only without payload MACs; a trailer would need the payload again anyway.
    let fits = match wr.ring() {
        Some(r) if !payload_mac => r.capacity(),
        _ => 0,
    };
    let fused = |o: &Outgoing| {
        !o.crc_at.is_empty()
            && HEADER_LEN + o.meta.len() + MAC_LEN + o.payload.iter().map(|p| p.len()).sum::<usize>() <= fits
    };
    let mut rest = batch;
    while !rest.is_empty() {
        let cut = rest.iter().position(fused).unwrap_or(rest.len());
        let (together, after) = std::mem::take(&mut rest).split_at_mut(cut);
        if !together.is_empty() {
            together.iter_mut().for_each(Outgoing::fill_crcs);
            let mut frames: Vec<FrameOut<'_>> = together
                .iter_mut()
                .map(|o| FrameOut {
                    header: &mut o.header,
                    meta: &o.meta,
                    payload: o.payload.iter().map(|b| &b[..]).collect(),
                })
                .collect();
            write_frames(wr, mac, payload_mac, &mut frames).await?;
        }
        let Some((o, after)) = after.split_first_mut() else { break };
        let ring = wr.ring().expect("only a ring takes a frame on its own");
        let len = o.payload.iter().map(|p| p.len() as u64).sum();
        let (header, meta, crc_at) = (&mut o.header, &mut o.meta, &o.crc_at);
        ring.put_frame(HEADER_LEN + meta.len() + MAC_LEN, &o.payload, |crcs| {
            for (c, &at) in crcs.iter().zip(crc_at) {
                meta[at..at + 4].copy_from_slice(&c.to_le_bytes());
            }
            seal_frame(mac, false, header, meta, len).0
        })
        .await?;
        rest = after;
    }
    Ok(())
}

async fn read_loop<R: Inbound>(
    mut rd: FrameReader<R>,
    mut mac: DirectionMac,
    payload_mac: bool,
    shared: Arc<Shared>,
    pool: BufPool,
) {
    let reason = loop {
        let head = tokio::select! {
            h = rd.read_head() => h,
            _ = shared.closed.notified() => break "session closed".to_string(),
        };
        let f = match head {
            Ok(f) => f,
            Err(FrameError::Closed) => break "node closed the connection".to_string(),
            Err(e) => break format!("connection lost: {e}"),
        };
        if let Err(e) = mac.open(&f.raw, &f.header, &f.meta, &f.mac) {
            break format!("answer failed authentication ({e}); closing the session");
        }
        let h = f.header;
        let with_trailer = payload_mac && h.length > 0;
        if !h.is_response() || h.flags.has(Flags::PAYLOAD_MAC) != with_trailer {
            break "node sent a frame that is not a valid answer".to_string();
        }
        // CRCs are taken as the bytes arrive: one per GET_BATCH entry, else one for the payload.
        let answers = match (h.op(), h.status()) {
            (Some(Op::GetBatch), Status::Ok) => wire::decode_get_answers(&f.meta, h.count, h.length).ok(),
            _ => None,
        };
        let segments: Vec<u64> = match &answers {
            Some(a) => {
                let mut v = Vec::with_capacity(a.len());
                v.extend(a.iter().filter(|a| a.status == Status::Ok).map(|a| a.length));
                v
            }
            None => vec![h.length],
        };
        let targets = shared.pending.lock().get(&h.request_id).and_then(|p| p.targets.clone());
        let placement = targets.and_then(|t| place(&h, answers.as_deref(), t));
        let mut buf = Vec::new();
        let received = match &placement {
            Some((targets, order)) => read_placed(&mut rd, targets, order).await,
            None => {
                let mut crcs = SegmentCrcs::new(&segments);
                buf = pool.take(h.length as usize);
                rd.read_append(&mut buf, h.length, &mut crcs).await.map(|()| crcs.finish())
            }
        };
        let crcs = match received {
            Ok(c) => c,
            Err(e) => break format!("connection lost while reading an answer: {e}"),
        };
        let payload = pool.freeze(buf);
        if with_trailer {
            let mut tag = [0u8; MAC_LEN];
            if let Err(e) = rd.read_into(&mut tag).await {
                break format!("connection lost while reading an answer: {e}");
            }
            let mut p = mac.payload_mac(&f.mac);
            match &placement {
                // SAFETY: this task is the only one that touches the targets of this answer.
                Some((targets, order)) => order.iter().for_each(|&j| p.update(unsafe { targets[j].slice() })),
                None => p.update(&payload),
            }
            if p.verify(&tag).is_err() {
                break "answer payload failed its MAC: altered in transit; closing the session".to_string();
            }
        }
        if h.request_id == 0 {
            // A connection-level error from the node (e.g. it could not parse our frame).
            break format!("node closed the session: {} {}", h.status(), String::from_utf8_lossy(&f.meta));
        }
        let waiter = shared.pending.lock().remove(&h.request_id);
        if let Some(w) = waiter {
            let placed = placement.is_some();
            let _ = w.tx.send(Ok(Incoming { header: h, meta: f.meta, payload, crcs, placed }));
        }
    };
    shared.fail_all(&reason);
}

/// Which targets an Ok answer's payload segments go to, in payload order: every segment must
/// exactly fill the target of its request entry. None: read into a pooled buffer instead.
fn place(h: &Header, answers: Option<&[wire::BatchGetAnswer]>, targets: Targets) -> Option<(Targets, Vec<usize>)> {
    if h.status() != Status::Ok {
        return None;
    }
    let order: Vec<usize> = match (h.op(), answers) {
        (Some(Op::Get), _) if targets.len() == 1 && targets[0].len() as u64 == h.length => vec![0],
        (Some(Op::GetBatch), Some(a)) if a.len() == targets.len() => {
            let mut ok = Vec::with_capacity(a.len());
            ok.extend((0..a.len()).filter(|&j| a[j].status == Status::Ok));
            ok.iter().all(|&j| targets[j].len() as u64 == a[j].length).then_some(ok)?
        }
        _ => return None,
    };
    Some((targets, order))
}

/// Reads an answer's payload segments into their targets; returns their CRC32Cs.
async fn read_placed<R: Inbound>(
    rd: &mut FrameReader<R>,
    targets: &Targets,
    order: &[usize],
) -> std::io::Result<Vec<u32>> {
    let mut crcs = Vec::with_capacity(order.len());
    for &j in order {
        // SAFETY: the targets are lent to this request alone, and this reader task is the only
        // code that writes answers into them.
        let target = unsafe { targets[j].slice() };
        // Out of a ring, large answers go around the cache, as same-host one-sided reads do.
        let around_cache = target.len() >= shm::STREAM_READ;
        crcs.push(rd.read_into_crc(target, around_cache).await?);
    }
    Ok(crcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a pipelined client: one read answers several callers at once, each queues
    /// its next request, and the writer must send them together.
    #[test]
    fn requests_queued_by_callers_woken_together_leave_in_one_batch() {
        const CALLERS: usize = 5;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("runtime");
        let batches = rt.block_on(async {
            let (tx, mut rx) = mpsc::channel::<usize>(SEND_QUEUE);
            let writer = tokio::spawn(async move {
                let mut sizes = Vec::new();
                let mut batch = Vec::new();
                while next_batch(&mut rx, &mut batch, WRITE_BATCH).await > 0 {
                    sizes.push(batch.len());
                    batch.clear();
                }
                sizes
            });
            let mut answers = Vec::new();
            for i in 0..CALLERS {
                let (answer, wait) = oneshot::channel::<()>();
                answers.push(answer);
                let tx = tx.clone();
                tokio::spawn(async move {
                    if wait.await.is_ok() {
                        let _ = tx.send(i).await;
                    }
                });
            }
            drop(tx);
            // The "reader": one task answers every caller, as one socket read would.
            tokio::spawn(async move {
                for a in answers {
                    let _ = a.send(());
                }
            })
            .await
            .expect("reader");
            writer.await.expect("writer")
        });
        assert_eq!(batches, vec![CALLERS], "every request queued by the woken callers goes in the first batch");
    }

    #[tokio::test]
    async fn a_batch_takes_at_most_max_and_ends_when_the_queue_closes() {
        let (tx, mut rx) = mpsc::channel::<u32>(16);
        for i in 0..10 {
            tx.send(i).await.expect("queued");
        }
        drop(tx);
        let mut batch = Vec::new();
        assert_eq!(next_batch(&mut rx, &mut batch, 4).await, 4);
        assert_eq!(batch, [0, 1, 2, 3]);
        batch.clear();
        assert_eq!(next_batch(&mut rx, &mut batch, 8).await, 6);
        assert_eq!(batch, [4, 5, 6, 7, 8, 9]);
        batch.clear();
        assert_eq!(next_batch(&mut rx, &mut batch, 8).await, 0);
    }

    /// A NODE_INFO round trip on a same-host session that asks for `features`; returns whether
    /// the session moved its frames through rings.
    async fn node_info_over_shm(node: &crate::testing::LocalNode, features: u32) -> bool {
        let key = AuthKey::parse(&node.params["auth_key"]).expect("key");
        let pool = BufPool::new(1 << 20);
        let p = SessionParams { key: &key, payload_mac: false, connect_timeout: Duration::from_secs(5), pool: &pool };
        let socket = crate::config::default_shm_socket(node.addr);
        let s = Session::connect_unix(&socket, &p, features).await.expect("same-host session");
        for _ in 0..3 {
            let req = Outgoing {
                header: Header::request(Op::NodeInfo, 0),
                meta: Vec::new(),
                payload: Vec::new(),
                crc_at: Vec::new(),
            };
            let r = s.call(req, None).await.expect("answer");
            assert_eq!(r.header.status(), Status::Ok);
            let info: serde_json::Value = serde_json::from_slice(&r.payload).expect("json");
            assert_eq!(info["transports"]["shm"]["socket"], socket.as_str());
        }
        assert!(s.is_one_sided(), "the arena is mapped either way");
        s.rings
    }

    #[test]
    fn a_same_host_session_that_asks_gets_rings_and_one_that_does_not_keeps_the_socket() {
        let node = crate::testing::LocalNode::start("127.0.9.1");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        rt.block_on(async {
            assert!(node_info_over_shm(&node, FEATURE_SHM_RING).await, "asked for rings: frames go through them");
            // A client from before rings (it does not ask) is served over the socket.
            assert!(!node_info_over_shm(&node, 0).await, "did not ask: frames stay on the socket");
        });
    }
}
