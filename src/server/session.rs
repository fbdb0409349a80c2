//! One client connection on the node: handshake, then a read loop that executes requests in
//! order and a write task that seals and sends answers, many frames per `writev`.
//!
//! Owns: per-connection protocol state (session keys, sequence numbers) and the decision of what
//! a bad frame costs — an op-level error (unknown key, bad range, no space) is answered and the
//! connection goes on; an authentication or framing error is answered, counted and the connection
//! is closed, because the stream can no longer be trusted. Nothing here can stop the node or touch
//! another connection.
//!
//! Payload bytes of a PUT go from the socket straight into their arena slot; GET answers are sent
//! straight from the pinned object. The index lock is never held across a socket operation.

use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Ctx;
use super::drive::Durable;
use super::metrics::AuthFailure;
use super::onesided::Leases;
use super::store::{Object, PartWrite, Store};
use crate::auth::{
    self, AuthError, DirectionMac, FEATURE_PAYLOAD_MAC, FEATURE_SHM_RING, Hello, PayloadMac, Role, SessionKeys,
    hello_request_mac, hello_response_mac, macs_equal,
};
use crate::transport::crc_copy::crc_bulk;
use crate::transport::rdma::{NodeQp, QpInfo};
use crate::transport::ring::Inbound;
use crate::transport::tcp::{FrameError, FrameHead, FrameOut, FrameReader, frame_prefix, write_frames};
use crate::transport::{ring, shm};
use crate::wire::{
    self, ABSENT, BatchGetAnswer, BatchPutEntry, Flags, Header, MAC_LEN, MAX_BATCH_PAYLOAD, Op, Status, WireError,
};

/// Batches of answers queued between the read loop and the write task (at most
/// [`WRITE_BATCH`] answers each).
const REPLY_QUEUE: usize = 8;
/// A connection that has not completed its HELLO by then is closed (it holds a task and a socket).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a peer to close after we closed our side.
const LINGER: Duration = Duration::from_secs(1);
/// Most answers handed to the write task at once, and sealed into one `writev`.
const WRITE_BATCH: usize = 64;

/// What an answer carries after its meta.
enum Body {
    Empty,
    Object(Object, Range<usize>),
    Objects(Vec<(Object, Range<usize>)>),
    Owned(Vec<u8>),
}

impl Body {
    fn slices(&self) -> Vec<&[u8]> {
        match self {
            Self::Empty => Vec::new(),
            Self::Object(o, r) => vec![&o.bytes()[r.clone()]],
            Self::Objects(v) => v.iter().map(|(o, r)| &o.bytes()[r.clone()]).collect(),
            Self::Owned(v) => vec![v.as_slice()],
        }
    }
}

struct Reply {
    header: Header,
    meta: Vec<u8>,
    body: Body,
    /// Drive writes (`sync` durability) that must be on stable storage before this answer goes.
    durable: Vec<Durable>,
    /// A read still running (from a drive): its answer replaces this placeholder.
    deferred: Option<tokio::task::JoinHandle<Reply>>,
}

impl Reply {
    fn new(req: &Header, status: Status) -> Self {
        Self {
            header: Header::response_to(req, status),
            meta: Vec::new(),
            body: Body::Empty,
            durable: Vec::new(),
            deferred: None,
        }
    }

    fn error(req: &Header, status: Status, message: impl Into<String>) -> Self {
        Self { meta: message.into().into_bytes(), ..Self::new(req, status) }
    }

    /// Completes the answer: waits for a deferred read, and for the drive writes of a PUT (a
    /// failed one turns the answer into an error, so that a PUT is never acknowledged as durable
    /// when it is not). True when the status was decided here (the caller counts errors).
    async fn settle(&mut self) -> bool {
        let decided_here = self.deferred.is_some() || !self.durable.is_empty();
        if let Some(task) = self.deferred.take() {
            match task.await {
                Ok(r) => *self = r,
                Err(_) => {
                    self.header.status = Status::ServerError as u16;
                    self.meta = b"the read failed inside the node".to_vec();
                }
            }
        }
        for w in self.durable.drain(..) {
            let why = match w.await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => "the drive writer stopped".to_string(),
            };
            let msg = format!("the object is in memory but not on stable storage (sync durability): {why}");
            self.header.status = Status::ServerError as u16;
            self.header.count = 0;
            self.meta = msg.into_bytes();
            self.body = Body::Empty;
        }
        decided_here
    }
}

/// Serves one accepted connection until the peer leaves, a fatal error, or shutdown. `unix` is
/// the socket of a same-host (Unix-socket) connection: its handshake hands over the arena.
pub(crate) async fn serve<S>(stream: S, peer: String, unix: Option<RawFd>, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = FrameReader::new(rd, ctx.limits);
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut rd, &mut wr, &ctx, &peer, unix)).await;
    let Ok(Some(agreed)) = hello else {
        if hello.is_err() {
            ctx.stats.invalid_frame();
            tracing::debug!(%peer, "no handshake within {HANDSHAKE_TIMEOUT:?}; closing");
        }
        let _ = wr.shutdown().await;
        linger(&mut rd).await;
        return;
    };
    let Agreed { keys, payload_mac, rings } = agreed;
    match (rings, unix) {
        (Some(fds), Some(sock)) => {
            // From here on the socket only tells that the client has gone (see transport/ring.rs).
            let halves = ring::open(fds, sock, ring::Side::Node);
            drop((rd, wr));
            match halves {
                Ok((rr, rw)) => run(FrameReader::for_ring(rr, ctx.limits), rw, keys, payload_mac, ctx, peer).await,
                Err(e) => tracing::warn!(%peer, error = %e, "cannot open the session's shared-memory rings; closing"),
            }
        }
        _ => run(rd, wr, keys, payload_mac, ctx, peer).await,
    }
}

/// Runs an authenticated session until the peer leaves, a fatal error, or shutdown.
async fn run<R, W>(rd: FrameReader<R>, wr: W, keys: SessionKeys, payload_mac: bool, ctx: Arc<Ctx>, peer: String)
where
    R: Inbound + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let writer = tokio::spawn(write_loop(wr, keys.send, rx, payload_mac, Arc::clone(&ctx)));
    let reads = Arc::new(tokio::sync::RwLock::new(()));
    let leases = Leases::new(ctx.lease_timeout);
    let mut conn =
        Conn { rd, recv: keys.recv, tx, out: Vec::new(), ctx, peer, payload_mac, reads, leases, qps: Vec::new() };
    conn.read_loop().await;
    // The answers of the last requests read, and the error that ended the loop, if any.
    conn.flush().await;
    let Conn { mut rd, tx, mut leases, ctx, qps, .. } = conn;
    // The peer is gone or going: nothing of its leases can be committed any more. Its queue
    // pairs go first, so that no RDMA access reaches the memory the leases free.
    drop(qps);
    leases.close(&ctx);
    drop(tx);
    let _ = writer.await;
    linger(&mut rd).await;
}

/// What a successful handshake agreed to.
struct Agreed {
    keys: SessionKeys,
    payload_mac: bool,
    /// The session's shared-memory rings (handed to the client with the arena).
    rings: Option<Vec<std::os::fd::OwnedFd>>,
}

/// After our side is flushed and half-closed, reads and discards what the peer still sends
/// until it closes (bounded by [`LINGER`]). Closing a socket with unread bytes in it sends a
/// reset, which can destroy answers the peer has not read yet (the last answers before a
/// shutdown, or the error that explains why we are closing).
async fn linger<R: AsyncRead + Unpin>(rd: &mut FrameReader<R>) {
    let _ = tokio::time::timeout(LINGER, rd.discard_to_eof()).await;
}

/// Answers a handshake failure (MAC'd with the cluster key) and logs it.
#[allow(clippy::too_many_arguments, reason = "the handshake's state, passed down once")]
async fn refuse<W: AsyncWrite + Unpin>(
    wr: &mut W,
    ctx: &Ctx,
    req: &Header,
    nonce: &[u8; 32],
    status: Status,
    msg: String,
    peer: &str,
    unix: Option<RawFd>,
) {
    tracing::warn!(%peer, status = status.name(), reason = %msg, "handshake refused");
    // A same-host client reads the marker byte first: say that no arena follows.
    if let Some(sock) = unix
        && shm::send_marker(sock, &[], HANDSHAKE_TIMEOUT).await.is_err()
    {
        return;
    }
    let mut h = Header::response_to(req, status);
    h.meta_len = msg.len() as u32;
    let raw = h.encode();
    let mac = hello_response_mac(&ctx.key, &raw, msg.as_bytes(), nonce);
    let _ = wr.write_all(&frame_prefix(&raw, msg.as_bytes(), &mac)).await;
}

async fn handshake<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut W,
    ctx: &Ctx,
    peer: &str,
    unix: Option<RawFd>,
) -> Option<Agreed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let f = match rd.read_head().await {
        Ok(f) => f,
        Err(FrameError::Wire(WireError::UnsupportedVersion { got, ours })) => {
            ctx.stats.invalid_frame();
            ctx.stats.error(Status::UnsupportedVersion);
            let req = Header::request(Op::Hello, 0);
            let msg = format!(
                "client speaks protocol version {got}, this node speaks up to version {ours}; upgrade the node or use a client of version {ours}"
            );
            refuse(wr, ctx, &req, &[0; 32], Status::UnsupportedVersion, msg, peer, unix).await;
            return None;
        }
        Err(e) => {
            ctx.stats.invalid_frame();
            tracing::debug!(%peer, error = %e, "connection dropped before a valid handshake");
            return None;
        }
    };
    let h = f.header;
    if h.op() != Some(Op::Hello) || h.is_response() || h.length != 0 {
        ctx.stats.invalid_frame();
        ctx.stats.error(Status::InvalidRequest);
        let msg =
            "the first frame of a connection must be a HELLO without payload (is this a MemKV client?)".to_string();
        refuse(wr, ctx, &h, &[0; 32], Status::InvalidRequest, msg, peer, unix).await;
        return None;
    }
    let expected = hello_request_mac(&ctx.key, &f.raw, &f.meta);
    let hello = Hello::decode(&f.meta);
    let nonce = hello.as_ref().map(|(hl, _)| hl.nonce).unwrap_or([0; 32]);
    if !macs_equal(&expected, &f.mac) {
        ctx.stats.auth_failure(AuthFailure::BadMac);
        ctx.stats.error(Status::BadMac);
        refuse(wr, ctx, &h, &nonce, Status::BadMac, AuthError::BadMac.to_string(), peer, unix).await;
        return None;
    }
    let checked = hello.and_then(|(hello, _)| {
        auth::check_drift(hello.unix_ms, auth::unix_ms(SystemTime::now()), ctx.max_drift)?;
        ctx.nonces.lock().check_and_insert(hello.nonce, Instant::now())?;
        Ok(hello)
    });
    let hello = match checked {
        Ok(hl) => hl,
        Err(e) => {
            match e {
                AuthError::ClockDrift { .. } => ctx.stats.auth_failure(AuthFailure::ClockDrift),
                AuthError::ReplayedHello => ctx.stats.auth_failure(AuthFailure::Replay),
                _ => {}
            }
            ctx.stats.error(e.status());
            refuse(wr, ctx, &h, &nonce, e.status(), e.to_string(), peer, unix).await;
            return None;
        }
    };
    let payload_mac = ctx.require_payload_mac || hello.features & FEATURE_PAYLOAD_MAC != 0;
    let node_nonce = match auth::random_bytes() {
        Ok(n) => n,
        Err(e) => {
            refuse(wr, ctx, &h, &nonce, Status::ServerError, e.to_string(), peer, unix).await;
            return None;
        }
    };
    // Rings for a same-host client that asks, handed over with the arena (so never without it,
    // nor with payload MACs: a same-host session has no payload on a wire to protect). A node
    // that cannot make them says no.
    let arena = ctx.store.arena().fd();
    let asked = hello.features & FEATURE_SHM_RING != 0;
    let rings = match unix {
        Some(_) if asked && arena.is_some() && !payload_mac => ring::create(ring::RING_BYTES)
            .inspect_err(
                |e| tracing::warn!(%peer, error = %e, "cannot create shared-memory rings; frames use the socket"),
            )
            .ok(),
        _ => None,
    };
    let mut features = if payload_mac { FEATURE_PAYLOAD_MAC } else { 0 };
    if rings.is_some() {
        features |= FEATURE_SHM_RING;
    }
    let ours = Hello { nonce: node_nonce, unix_ms: auth::unix_ms(SystemTime::now()), features };
    // The answer's tail: the node's max object size, then its id (see docs/protocol.md).
    let mut tail = ctx.store.max_object().to_le_bytes().to_vec();
    tail.extend_from_slice(ctx.node_id.as_bytes());
    let meta = ours.encode(&tail);
    let mut resp = Header::response_to(&h, Status::Ok);
    resp.meta_len = meta.len() as u32;
    let raw = resp.encode();
    let mac = hello_response_mac(&ctx.key, &raw, &meta, &hello.nonce);
    // A same-host client gets the arena (the client authenticated itself with its HELLO; it
    // keeps the mapping only if this answer authenticates the node).
    if let Some(sock) = unix {
        let mut fds: Vec<_> = arena.into_iter().collect();
        fds.extend(rings.iter().flatten().map(std::os::fd::AsFd::as_fd));
        if let Err(e) = shm::send_marker(sock, &fds, HANDSHAKE_TIMEOUT).await {
            tracing::debug!(%peer, error = %e, "could not hand over the arena");
            return None;
        }
    }
    if wr.write_all(&frame_prefix(&raw, &meta, &mac)).await.is_err() {
        return None;
    }
    ctx.stats.request(Op::Hello);
    tracing::debug!(%peer, payload_mac, "session established");
    let keys = SessionKeys::derive(&ctx.key, &hello.nonce, &node_nonce, Role::Node);
    Some(Agreed { keys, payload_mac, rings })
}

struct Conn<R> {
    rd: FrameReader<R>,
    recv: DirectionMac,
    tx: mpsc::Sender<Vec<Reply>>,
    /// Answers not yet handed to the write task: they go together once the read buffer holds no
    /// further whole request, so that a burst of pipelined requests costs one wake-up of the
    /// write task and one `writev`, not one of each per request.
    out: Vec<Reply>,
    ctx: Arc<Ctx>,
    peer: String,
    /// Reservations and pins of the one-sided ops.
    leases: Leases,
    /// The RDMA queue pairs this session's CONNECTs created.
    qps: Vec<NodeQp>,
    payload_mac: bool,
    /// Held (shared) by every deferred read; a write op takes it exclusively first, so that a
    /// read never sees a write the client sent after it.
    reads: Arc<tokio::sync::RwLock<()>>,
}

/// A received PUT entry whose bytes are in memory, waiting for the payload MAC (if any) before
/// it becomes visible.
enum Received {
    Whole(Box<[u8]>, super::arena::SlotMut, u32),
    Part(PartWrite, bool),
}

/// Outcome of one PUT entry.
#[derive(Debug)]
struct EntryOutcome {
    status: Status,
    message: String,
}

impl<R: Inbound> Conn<R> {
    /// Queues an answer (sent at the next [`flush`](Self::flush)). False when the write task is
    /// gone.
    async fn send(&mut self, r: Reply) -> bool {
        if r.header.status != 0 {
            self.ctx.stats.error(r.header.status());
        }
        self.out.push(r);
        self.out.len() < WRITE_BATCH || self.flush().await
    }

    /// Hands the queued answers to the write task. False when it is gone.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return !self.tx.is_closed();
        }
        // The next burst is likely the size of this one.
        let next = Vec::with_capacity(self.out.len());
        let batch = std::mem::replace(&mut self.out, next);
        self.tx.send(batch).await.is_ok()
    }

    async fn read_loop(&mut self) {
        let mut shutdown = self.ctx.shutdown.clone();
        let mut sweep = tokio::time::interval((self.ctx.lease_timeout / 2).max(Duration::from_millis(50)));
        loop {
            // Before waiting on the socket, send what the requests read so far answered.
            if !self.rd.head_buffered() && !self.flush().await {
                return;
            }
            let next = tokio::select! {
                f = self.rd.read_head() => f,
                _ = shutdown.wait_for(|s| *s) => return,
                _ = sweep.tick(), if self.leases.held() > 0 => {
                    let n = self.leases.expire(&self.ctx, Instant::now());
                    if n > 0 {
                        tracing::warn!(peer = %self.peer, leases = n, "one-sided leases expired (MEMKV_LEASE_TIMEOUT_MS); their memory is freed one lease period later");
                    }
                    continue;
                }
            };
            let f = match next {
                Ok(f) => f,
                Err(FrameError::Closed) => return,
                Err(FrameError::Io(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "connection lost");
                    return;
                }
                Err(FrameError::Wire(e)) => {
                    // The stream cannot be trusted past a bad header: answer, count, close.
                    self.ctx.stats.invalid_frame();
                    tracing::warn!(peer = %self.peer, error = %e, "invalid frame; closing connection");
                    let req = Header::request(Op::Hello, 0);
                    self.send(Reply::error(&req, e.status(), e.to_string())).await;
                    return;
                }
            };
            if let Err(e) = self.recv.open(&f.raw, &f.header, &f.meta, &f.mac) {
                let why = if matches!(e, AuthError::Replay { .. }) { AuthFailure::Replay } else { AuthFailure::BadMac };
                self.ctx.stats.auth_failure(why);
                tracing::warn!(peer = %self.peer, error = %e, "frame failed authentication; closing connection");
                self.send(Reply::error(&f.header, e.status(), e.to_string())).await;
                return;
            }
            // The same before waiting on the socket for a payload.
            let payload = f.header.length + if f.header.length > 0 && self.payload_mac { MAC_LEN as u64 } else { 0 };
            if (self.rd.buffered_len() as u64) < payload && !self.flush().await {
                return;
            }
            if !self.dispatch(f).await {
                return;
            }
        }
    }

    /// Executes one authenticated request. False when the connection must close.
    async fn dispatch(&mut self, f: FrameHead) -> bool {
        let h = f.header;
        let with_trailer = h.length > 0 && self.payload_mac;
        if h.is_response() || h.flags.has(Flags::PAYLOAD_MAC) != with_trailer {
            let msg = if h.is_response() {
                "a client sent a response frame"
            } else {
                "payload MAC flag does not match the session's negotiation"
            };
            self.send(Reply::error(&h, Status::InvalidRequest, msg)).await;
            return false;
        }
        let Some(op) = h.op() else {
            let ok = self.skip_payload(&h).await;
            let msg = format!("unknown op {:#04x}; this node speaks protocol version {}", h.op, wire::VERSION);
            return self.send(Reply::error(&h, Status::InvalidRequest, msg)).await && ok;
        };
        self.ctx.stats.request(op);
        match op {
            Op::Put => {
                self.after_reads().await;
                self.put(&h, &f).await
            }
            Op::PutBatch => {
                self.after_reads().await;
                self.put_batch(&h, &f).await
            }
            Op::Get => {
                let ok = self.skip_payload(&h).await;
                let hot = self.ctx.in_dram(std::iter::once(f.meta.as_slice()));
                let r = self.read(&h, hot, get(Arc::clone(&self.ctx), h, f.meta)).await;
                ok && self.send(r).await
            }
            Op::GetBatch => {
                let ok = self.skip_payload(&h).await;
                // Without drives every read is answered at once: no need to look at the keys.
                let hot = self.ctx.tier.is_none()
                    || wire::decode_get_entries(&f.meta, h.count)
                        .map_or(true, |e| self.ctx.in_dram(e.iter().map(|e| e.key)));
                let r = self.read(&h, hot, get_batch(Arc::clone(&self.ctx), h, f.meta)).await;
                ok && self.send(r).await
            }
            Op::Exists => {
                let ok = self.skip_payload(&h).await;
                ok && self.send(self.exists(&h, &f.meta)).await
            }
            Op::Delete => {
                let ok = self.skip_payload(&h).await;
                self.after_reads().await;
                let r = match wire::check_key(&f.meta) {
                    Err(e) => Reply::error(&h, e.status(), e.to_string()),
                    Ok(()) => match self.ctx.delete(&f.meta).await {
                        Ok(true) => Reply::new(&h, Status::Ok),
                        Ok(false) => Reply::new(&h, Status::NotFound),
                        Err(e) => Reply::error(&h, Status::ServerError, format!("the delete is not durable: {e}")),
                    },
                };
                ok && self.send(r).await
            }
            Op::NodeInfo => {
                let ok = self.skip_payload(&h).await;
                let body = serde_json::to_vec(&self.ctx.status()).unwrap_or_default();
                let mut r = Reply::new(&h, Status::Ok);
                r.header.crc = crc32c::crc32c(&body);
                r.body = Body::Owned(body);
                ok && self.send(r).await
            }
            Op::Hello => {
                self.send(Reply::error(&h, Status::InvalidRequest, "HELLO inside an established session")).await;
                false
            }
            Op::Reserve | Op::Commit | Op::Lookup | Op::Release | Op::Connect => {
                let ok = self.skip_payload(&h).await;
                let r = self.one_sided(op, &h, &f.meta).await;
                ok && self.send(r).await
            }
        }
    }

    /// The one-sided ops (see `server::onesided`): control steps around transfers that move no
    /// bytes through this connection.
    async fn one_sided(&mut self, op: Op, h: &Header, meta: &[u8]) -> Reply {
        let ctx = Arc::clone(&self.ctx);
        let mut r = Reply::new(h, Status::Ok);
        let counted = match op {
            Op::Reserve => self.leases.reserve(&ctx, meta, h.count).map(|g| {
                wire::encode_grants(&g, &mut r.meta);
                g.len()
            }),
            Op::Commit => {
                self.after_reads().await;
                // The check below reads every committed byte (2 ms for 16 MiB) on this thread.
                // Answers queued before it (a RESERVE read in the same burst) go out first, and
                // the other connections' tasks run their cheap steps, so that their clients have
                // bytes to copy meanwhile instead of waiting on this check.
                self.flush().await;
                tokio::task::yield_now().await;
                match self.leases.commit(&ctx, meta, h.count) {
                    Ok(c) => {
                        ctx.stats.add_in(c.bytes);
                        r.durable = ctx.persist(c.writes).await;
                        wire::encode_statuses(c.statuses.iter().copied(), &mut r.meta);
                        Ok(c.statuses.len())
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Lookup => self.leases.lookup(&ctx, meta, h.count).await.map(|l| {
                ctx.stats.add_out(l.pins.iter().map(|p| p.length).sum());
                wire::encode_pins(&l.pins, &mut r.meta);
                r.body = Body::Objects(l.inline);
                l.pins.len()
            }),
            Op::Release => self.leases.release(&ctx, meta, h.count).map(|s| {
                wire::encode_statuses(s.iter().copied(), &mut r.meta);
                s.len()
            }),
            _ => return self.connect(h, meta),
        };
        match counted {
            Ok(n) => {
                r.header.count = n as u32;
                r
            }
            Err(e) => Reply::error(h, e.status(), e.to_string()),
        }
    }

    /// CONNECT: a queue pair towards the client's, on the node's RDMA device.
    fn connect(&mut self, h: &Header, meta: &[u8]) -> Reply {
        let Some(rdma) = &self.ctx.rdma else {
            return Reply::error(
                h,
                Status::InvalidRequest,
                "this node has no RDMA device (start it with --rdma-device / MEMKV_RDMA_DEVICE); use TCP or, on the node's host, shared memory",
            );
        };
        let theirs = match QpInfo::decode(meta) {
            Ok(t) => t,
            Err(e) => return Reply::error(h, Status::InvalidRequest, format!("bad CONNECT: {e}")),
        };
        match rdma.accept(&theirs) {
            Ok((ours, qp)) => {
                self.qps.push(qp);
                Reply { meta: ours.encode(), ..Reply::new(h, Status::Ok) }
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "RDMA connect failed");
                Reply::error(h, Status::ServerError, format!("RDMA connect failed on the node: {e}"))
            }
        }
    }

    /// Skips a payload (and its MAC trailer) that a request should not carry or that is refused.
    async fn skip_payload(&mut self, h: &Header) -> bool {
        let n = h.length + if h.length > 0 && self.payload_mac { MAC_LEN as u64 } else { 0 };
        n == 0 || self.rd.skip(n).await.is_ok()
    }

    /// Answers a read: at once when every key is in DRAM, else from a task (drive reads take
    /// a while), so that the connection goes on reading requests while the write task waits for
    /// the answer in its turn.
    async fn read(&self, h: &Header, hot: bool, answer: impl Future<Output = Reply> + Send + 'static) -> Reply {
        if hot {
            return answer.await;
        }
        let running = Arc::clone(&self.reads).read_owned().await;
        let task = tokio::spawn(async move {
            let r = answer.await;
            drop(running);
            r
        });
        Reply { deferred: Some(task), ..Reply::new(h, Status::Ok) }
    }

    /// Waits until every deferred read of this connection has found its object.
    async fn after_reads(&self) {
        if self.ctx.tier.is_some() {
            drop(self.reads.write().await);
        }
    }

    fn exists(&self, h: &Header, meta: &[u8]) -> Reply {
        let keys = match wire::decode_keys(meta, h.count) {
            Ok(k) => k,
            Err(e) => return Reply::error(h, e.status(), e.to_string()),
        };
        let sizes = self.ctx.sizes(&keys);
        let mut r = Reply::new(h, Status::Ok);
        r.header.count = sizes.len() as u32;
        wire::encode_exists_answer(sizes.into_iter().map(|s| s.unwrap_or(ABSENT)), &mut r.meta);
        r
    }

    async fn put(&mut self, h: &Header, f: &FrameHead) -> bool {
        let entry = BatchPutEntry { key: &f.meta, offset: h.offset, length: h.length, total: h.total, crc: h.crc };
        let Some((mut outcomes, durable)) = self.receive_entries(h, &f.mac, &[entry]).await else { return false };
        let o = outcomes.pop().unwrap_or(EntryOutcome { status: Status::ServerError, message: String::new() });
        self.send(Reply { durable, ..Reply::error(h, o.status, o.message) }).await
    }

    async fn put_batch(&mut self, h: &Header, f: &FrameHead) -> bool {
        let entries = match wire::decode_put_entries(&f.meta, h.count, h.length) {
            Ok(e) => e,
            Err(e) => {
                let ok = self.skip_payload(h).await;
                return self.send(Reply::error(h, e.status(), e.to_string())).await && ok;
            }
        };
        let Some((outcomes, durable)) = self.receive_entries(h, &f.mac, &entries).await else { return false };
        let mut r = Reply { durable, ..Reply::new(h, Status::Ok) };
        r.header.count = outcomes.len() as u32;
        wire::encode_statuses(outcomes.iter().map(|o| o.status), &mut r.meta);
        self.send(r).await
    }

    /// Receives the payload of a PUT or PUT_BATCH entry by entry, each straight into its arena
    /// range; verifies CRCs (and the payload MAC); then makes the good entries visible and
    /// queues them for the drives (waiting while the drive queue is full). Returns the outcomes
    /// and, under `sync` durability, what the answer must wait for. `None` when the connection
    /// must close.
    async fn receive_entries(
        &mut self,
        h: &Header,
        header_mac: &[u8; MAC_LEN],
        entries: &[BatchPutEntry<'_>],
    ) -> Option<(Vec<EntryOutcome>, Vec<Durable>)> {
        let ctx = Arc::clone(&self.ctx);
        let store: &Store = &ctx.store;
        // Frames without payload carry no payload MAC trailer, in either direction.
        let mut pmac: Option<PayloadMac> =
            (self.payload_mac && h.length > 0).then(|| self.recv.payload_mac(header_mac));
        let mut received = Vec::with_capacity(entries.len());
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut io_failed = false;
        for e in entries {
            let refused = |status: Status, message: String| EntryOutcome { status, message };
            let prepared: Result<Received, EntryOutcome> = match wire::check_key(e.key) {
                Err(err) => Err(refused(err.status(), err.to_string())),
                Ok(()) if e.offset == 0 && e.length == e.total => store
                    .reserve(e.total)
                    .map(|s| Received::Whole(e.key.into(), s, 0))
                    .map_err(|err| refused(err.status(), err.to_string())),
                Ok(()) => store
                    .begin_part(e.key, e.offset, e.length, e.total)
                    .map(|w| Received::Part(w, false))
                    .map_err(|err| refused(err.status(), err.to_string())),
            };
            let mut item = match prepared {
                Ok(item) => item,
                Err(outcome) => {
                    outcomes.push(outcome);
                    if self.skip_entry(e.length, pmac.as_mut()).await.is_err() {
                        io_failed = true;
                        break;
                    }
                    continue;
                }
            };
            let buf = match &mut item {
                Received::Whole(_, s, _) => s.bytes_mut(),
                Received::Part(w, _) => w.bytes_mut(),
            };
            let Ok(crc) = self.rd.read_into_crc(buf, true).await else {
                io_failed = true;
                if let Received::Part(w, _) = item {
                    drop(store.finish_part(w, false));
                }
                break;
            };
            if let Some(p) = pmac.as_mut() {
                p.update(buf);
            }
            let crc_ok = crc == e.crc;
            self.ctx.stats.add_in(e.length);
            match &mut item {
                Received::Whole(_, _, crc) => *crc = e.crc,
                Received::Part(_, ok) => *ok = crc_ok,
            }
            if crc_ok {
                outcomes.push(EntryOutcome { status: Status::Ok, message: String::new() });
                received.push(item);
            } else {
                outcomes.push(refused(Status::ChecksumMismatch, format!("payload CRC32C mismatch (expected {:#010x}); the bytes were damaged in transit and were not stored", e.crc)));
                if let Received::Part(w, _) = item {
                    drop(store.finish_part(w, false));
                }
            }
        }
        let mut mac_ok = true;
        if let Some(p) = pmac {
            let mut tag = [0u8; MAC_LEN];
            if io_failed || self.rd.read_into(&mut tag).await.is_err() {
                io_failed = true;
            }
            mac_ok = !io_failed && p.verify(&tag).is_ok();
        }
        let commit = !io_failed && mac_ok;
        let mut writes = Vec::new();
        for item in received {
            let done = match item {
                Received::Whole(key, slot, crc) if commit => Some(Object::new(&key, slot.freeze(), crc)),
                Received::Whole(..) => None,
                Received::Part(w, ok) => store.finish_part(w, ok && commit),
            };
            if let Some(obj) = done {
                writes.extend(ctx.publish(obj));
            }
        }
        let durable = ctx.persist(writes).await;
        if io_failed {
            return None;
        }
        if !mac_ok {
            self.ctx.stats.auth_failure(AuthFailure::BadMac);
            tracing::warn!(peer = %self.peer, "payload MAC mismatch; nothing from this frame was stored; closing connection");
            self.send(Reply::error(
                h,
                Status::BadMac,
                "payload MAC mismatch: the payload was altered in transit; nothing was stored",
            ))
            .await;
            return None;
        }
        Some((outcomes, durable))
    }

    async fn skip_entry(&mut self, len: u64, pmac: Option<&mut PayloadMac>) -> std::io::Result<()> {
        let Some(p) = pmac else { return self.rd.skip(len).await };
        // The payload MAC covers skipped bytes too, so they must be read rather than discarded.
        let mut buf = vec![0u8; len.min(64 * 1024) as usize];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.rd.read_into(&mut buf[..n]).await?;
            p.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(())
    }
}

/// The answer to a GET.
async fn get(ctx: Arc<Ctx>, h: Header, key: Vec<u8>) -> Reply {
    let h = &h;
    if let Err(e) = wire::check_key(&key) {
        return Reply::error(h, e.status(), e.to_string());
    }
    let Some(obj) = ctx.lookup(&key).await else { return Reply::new(h, Status::NotFound) };
    // A GET request carries no payload; the wanted length travels in `total` (0 = to the end).
    let range = match object_range(&obj, h.offset, h.total) {
        Ok(r) => r,
        Err(msg) => return Reply::error(h, Status::InvalidRequest, msg),
    };
    let mut r = Reply::new(h, Status::Ok);
    r.header.offset = h.offset;
    r.header.total = obj.len();
    r.header.crc = if range.len() as u64 == obj.len() { obj.crc() } else { crc_bulk(0, &obj.bytes()[range.clone()]) };
    r.body = Body::Object(obj, range);
    r
}

/// The answer to a GET_BATCH.
async fn get_batch(ctx: Arc<Ctx>, h: Header, meta: Vec<u8>) -> Reply {
    let h = &h;
    let entries = match wire::decode_get_entries(&meta, h.count) {
        Ok(e) => e,
        Err(e) => return Reply::error(h, e.status(), e.to_string()),
    };
    // Drive reads of one batch run side by side.
    let found = futures_util::future::join_all(entries.iter().map(|e| ctx.lookup(e.key))).await;
    let mut answers = Vec::with_capacity(entries.len());
    let mut parts = Vec::new();
    let mut budget = MAX_BATCH_PAYLOAD;
    for (e, obj) in entries.iter().zip(found) {
        let none = |status| BatchGetAnswer { status, length: 0, total: 0, crc: 0 };
        let Some(obj) = obj else {
            answers.push(none(Status::NotFound));
            continue;
        };
        let Ok(range) = object_range(&obj, e.offset, e.length) else {
            answers.push(BatchGetAnswer { total: obj.len(), ..none(Status::InvalidRequest) });
            continue;
        };
        let len = range.len() as u64;
        if len > budget {
            answers.push(BatchGetAnswer { total: obj.len(), ..none(Status::PayloadTooLarge) });
            continue;
        }
        budget -= len;
        let crc = if len == obj.len() { obj.crc() } else { crc_bulk(0, &obj.bytes()[range.clone()]) };
        answers.push(BatchGetAnswer { status: Status::Ok, length: len, total: obj.len(), crc });
        parts.push((obj, range));
    }
    let mut r = Reply::new(h, Status::Ok);
    r.header.count = answers.len() as u32;
    wire::encode_get_answers(&answers, &mut r.meta);
    r.body = Body::Objects(parts);
    r
}

/// The byte range `[offset, offset + length)` of `obj`; `length` 0 means "to the end".
pub(super) fn object_range(obj: &Object, offset: u64, length: u64) -> Result<Range<usize>, String> {
    let size = obj.len();
    let end = if length == 0 { Some(size) } else { offset.checked_add(length) };
    match end {
        Some(end) if offset <= size && end <= size => Ok(offset as usize..end as usize),
        _ => Err(format!("range offset {offset} length {length} lies outside the object of {size} bytes")),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut mac: DirectionMac,
    mut rx: mpsc::Receiver<Vec<Reply>>,
    payload_mac: bool,
    ctx: Arc<Ctx>,
) {
    let mut queued: Vec<Vec<Reply>> = Vec::with_capacity(REPLY_QUEUE);
    // Everything queued so far goes out in one writev (or as few as IOV_MAX allows).
    while rx.recv_many(&mut queued, REPLY_QUEUE).await > 0 {
        let mut batch: Vec<Reply> =
            if queued.len() == 1 { queued.remove(0) } else { queued.drain(..).flatten().collect() };
        for r in batch.iter_mut() {
            if r.settle().await && r.header.status != 0 {
                ctx.stats.error(r.header.status());
            }
        }
        let mut frames: Vec<FrameOut<'_>> = batch
            .iter_mut()
            .map(|r| FrameOut { header: &mut r.header, meta: &r.meta, payload: r.body.slices() })
            .collect();
        match write_frames(&mut wr, &mut mac, payload_mac, &mut frames).await {
            Ok(bytes) => ctx.stats.add_out(bytes),
            Err(_) => break,
        }
    }
    let _ = wr.shutdown().await;
}
