//! The cluster client: routes each key to its node, keeps a pool of pipelined sessions per node,
//! batches, times out, and turns a down node into fast misses (reads) and errors (writes).
//!
//! Owns: placement ([`routing`]), per-node session pools and health (backoff between reconnect
//! attempts), and the mapping of wire answers to results. Never returns bytes whose CRC32C does
//! not match what the node stored.
//!
//! ```no_run
//! # async fn demo() -> Result<(), memkv::client::ClientError> {
//! let client = memkv::Client::from_env()?;          // MEMKV_SERVERS, MEMKV_AUTH_KEY, MEMKV_LICENSE, …
//! client.put(b"block-1", bytes::Bytes::from(vec![7u8; 4096])).await?;
//! let back = client.get(b"block-1").await?;        // Some(bytes) or None (miss)
//! assert_eq!(back.as_deref(), Some(&[7u8; 4096][..]));
//! let sizes = client.exists(&[b"block-1".as_slice(), b"nope"]).await?; // [Some(4096), None]
//! # let _ = sizes; Ok(()) }
//! ```

mod bufpool;
mod loans;
mod onesided;
mod routing;
mod session;
mod staged;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;

use crate::config::{ClientConfig, ConfigError, ServerAddr, Sources, Transport};
use crate::license::{License, LicenseError, TrustedKeys};
use crate::transport::crc_copy::crc_bulk;
use crate::transport::rdma::ClientRdma;
use crate::wire::{
    self, ABSENT, BatchGetEntry, BatchPutEntry, Header, MAX_BATCH_ENTRIES, MAX_BATCH_PAYLOAD, MAX_KEY_LEN,
    MAX_META_LEN, Op, Status,
};
use bufpool::BufPool;
pub use loans::{Loans, ReadTarget};
use routing::Rendezvous;
use session::{Incoming, Outgoing, Session, SessionError, SessionParams, Targets};
pub use staged::{StagedError, StagedPart};

/// Idle receive buffers a client keeps for reuse (see `bufpool`).
const RECV_POOL_BYTES: usize = 256 << 20;
/// The smallest payload a batch is striped into (see [`Client::group`]): a node's share of at
/// most this many bytes stays one frame.
const STRIPE_MIN: u64 = 4 << 20;
/// First wait before reconnecting to a node that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Errors of the client library. Messages name the node, what failed and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// License missing, invalid or too small for this cluster.
    #[error(transparent)]
    License(#[from] LicenseError),
    /// A requested feature is not in this build.
    #[error("{0}")]
    Unsupported(String),
    /// Key (with namespace) longer than the protocol allows.
    #[error("key of {len} bytes (namespace included) exceeds the {max}-byte limit")]
    KeyTooLong {
        /// Length with namespace.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The node is marked down after a failure; the next attempt happens after the backoff.
    #[error("node {node} is unavailable ({reason}); retrying in {retry_in_ms} ms")]
    Unavailable {
        /// Node address.
        node: String,
        /// Last failure.
        reason: String,
        /// Time until the next reconnect attempt.
        retry_in_ms: u64,
    },
    /// The node refused our handshake: a different cluster key, clock drift, or an older
    /// protocol. Not a transient failure, so reads fail too instead of turning into misses.
    #[error("node {node} refused the connection with {status}: {message}")]
    Refused {
        /// Node address.
        node: String,
        /// The node's status code.
        status: Status,
        /// The node's explanation.
        message: String,
    },
    /// The node did not answer within the op timeout.
    #[error("{op} on node {node} timed out after {after_ms} ms (MEMKV_OP_TIMEOUT_MS)")]
    Timeout {
        /// Node address.
        node: String,
        /// Operation.
        op: &'static str,
        /// Timeout.
        after_ms: u64,
    },
    /// The connection failed or the node refused the handshake.
    #[error("node {node}: {reason}")]
    Connection {
        /// Node address.
        node: String,
        /// What happened.
        reason: String,
    },
    /// The node answered with an error status.
    #[error("node {node} answered {op} with {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Server {
        /// Node address.
        node: String,
        /// Operation.
        op: &'static str,
        /// Status code.
        status: Status,
        /// Node's explanation.
        message: String,
    },
    /// Bytes received did not match their CRC32C: never handed to the caller.
    #[error("node {node} sent bytes for key {key:?} whose CRC32C does not match; the block was discarded")]
    Checksum {
        /// Node address.
        node: String,
        /// Key (lossy UTF-8).
        key: String,
    },
    /// The node's answer was malformed.
    #[error("node {node} sent a malformed answer: {why}")]
    Protocol {
        /// Node address.
        node: String,
        /// What was wrong.
        why: String,
    },
}

impl ClientError {
    /// True when the error means "the node could not be reached or answered in time" — the
    /// cases a read turns into a miss.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. } | Self::Connection { .. })
    }
}

struct Health {
    down_until: Option<Instant>,
    backoff: Duration,
    reason: String,
    /// Set when the last failure was a refused handshake.
    refused: Option<Status>,
}

/// How a client reaches one node, chosen at its first connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Path {
    /// Frames and bytes over TCP.
    Tcp,
    /// Control over the node's Unix socket, bytes through its mapped arena.
    Shm(String),
    /// Control over TCP, bytes by RDMA WRITE/READ on a queue pair per session.
    Rdma,
}

struct Node {
    addr: ServerAddr,
    name: String,
    /// How this client reaches the node; chosen at the first connection, again after a failed
    /// one.
    path: tokio::sync::Mutex<Option<Path>>,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Session>>>>,
    next_slot: AtomicUsize,
    health: Mutex<Health>,
}

impl Node {
    /// Records a failure. Failures while the node is already marked down (the other requests
    /// of a broken connection) do not extend the backoff: one outage, one step.
    fn mark_down(&self, reason: &str, refused: Option<Status>) {
        let mut h = self.health.lock();
        let now = Instant::now();
        if h.down_until.is_some_and(|t| t > now) {
            return;
        }
        let was_up = h.down_until.is_none();
        h.backoff = if was_up { BACKOFF_MIN } else { (h.backoff * 2).min(BACKOFF_MAX) };
        h.down_until = Some(now + h.backoff);
        h.reason = reason.to_string();
        h.refused = refused;
        if was_up {
            tracing::warn!(node = %self.name, reason, "node unavailable; reads become misses, writes fail until it is back");
        }
    }

    fn mark_up(&self) {
        let mut h = self.health.lock();
        if h.down_until.take().is_some() {
            tracing::info!(node = %self.name, "node reachable again");
        }
        h.refused = None;
        h.backoff = BACKOFF_MIN;
    }

    fn check_down(&self) -> Result<(), ClientError> {
        let h = self.health.lock();
        match h.down_until {
            Some(t) if t > Instant::now() && h.refused.is_some() => Err(ClientError::Refused {
                node: self.name.clone(),
                status: h.refused.unwrap_or(Status::ServerError),
                message: h.reason.clone(),
            }),
            Some(t) if t > Instant::now() => Err(ClientError::Unavailable {
                node: self.name.clone(),
                reason: h.reason.clone(),
                retry_in_ms: t.saturating_duration_since(Instant::now()).as_millis() as u64,
            }),
            _ => Ok(()),
        }
    }
}

struct Inner {
    nodes: Vec<Node>,
    placement: Rendezvous,
    cfg: ClientConfig,
    license: License,
    pool: BufPool,
    /// This host's RDMA devices, or why there are none usable (`MEMKV_TRANSPORT=auto`).
    rdma: Result<ClientRdma, String>,
}

/// A handle on a MemKV cluster. Cheap to clone; all clones share sessions.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("servers", &self.servers()).finish_non_exhaustive()
    }
}

/// One entry of [`Client::put_batch`]: `data` goes to `[offset, offset + data.len())` of the
/// `total`-byte object `key` (a whole object when offset is 0 and total is `data.len()`).
#[derive(Debug, Clone)]
pub struct PutItem {
    /// Object key (the namespace is added by the client).
    pub key: Vec<u8>,
    /// Offset inside the object.
    pub offset: u64,
    /// Final object size.
    pub total: u64,
    /// The bytes.
    pub data: Bytes,
}

impl PutItem {
    /// A whole object.
    pub fn whole(key: impl Into<Vec<u8>>, data: Bytes) -> Self {
        Self { key: key.into(), offset: 0, total: data.len() as u64, data }
    }
}

/// One entry of [`Client::get_batch`]: `length` bytes from `offset` (0 = to the end).
#[derive(Debug, Clone)]
pub struct GetItem {
    /// Object key (the namespace is added by the client).
    pub key: Vec<u8>,
    /// First byte wanted.
    pub offset: u64,
    /// Bytes wanted; 0 means to the end of the object.
    pub length: u64,
}

impl GetItem {
    /// A whole object.
    pub fn whole(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), offset: 0, length: 0 }
    }
}

/// One entry of [`Client::prepare_put`]: `len` bytes for `[offset, offset + len)` of the
/// `total`-byte object `key`.
#[derive(Debug, Clone, Copy)]
pub struct PutSpec<'a> {
    /// Object key (the namespace is added by the client).
    pub key: &'a [u8],
    /// Offset inside the object.
    pub offset: u64,
    /// Payload bytes of the entry.
    pub len: u64,
    /// Final object size.
    pub total: u64,
}

/// A PUT batch planned once by [`Client::prepare_put`].
#[derive(Debug, Clone)]
pub struct PreparedPut {
    /// The caller's keys, for error messages.
    keys: Vec<Vec<u8>>,
    /// Payload length of each entry.
    lens: Vec<u64>,
    groups: Vec<PutGroup>,
}

impl PreparedPut {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }
}

/// One PUT_BATCH of a prepared batch: the node, its entries, their encoded table and where each
/// entry's CRC goes in it.
#[derive(Debug, Clone)]
struct PutGroup {
    idx: usize,
    members: Vec<usize>,
    meta: Vec<u8>,
    crc_at: Vec<usize>,
}

/// A GET batch planned once by [`Client::prepare_get`].
#[derive(Debug, Clone)]
pub struct PreparedGet {
    items: Vec<GetItem>,
    groups: Vec<GetGroup>,
}

impl PreparedGet {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One GET_BATCH of a prepared batch.
#[derive(Debug, Clone)]
struct GetGroup {
    idx: usize,
    members: Vec<usize>,
    meta: Vec<u8>,
}

impl Client {
    /// Builds a client from the full config chain (MEMKV_* env vars, MEMKV_CONFIG file, defaults).
    pub fn from_env() -> Result<Self, ClientError> {
        Self::new(ClientConfig::from_env()?)
    }

    /// Builds a client with explicit values on top of the environment (e.g. plugin params).
    pub fn with_params(explicit: &BTreeMap<String, String>) -> Result<Self, ClientError> {
        let env = Sources::process_env();
        let cfg = ClientConfig::resolve(&Sources { explicit, env: &env })?;
        Self::new(cfg)
    }

    /// Builds a client: verifies the license and the transport choice. Connections are made
    /// lazily by the first operation on each node.
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientError> {
        let trusted = TrustedKeys::with_extra(cfg.license_pubkey.as_deref())?;
        let license = License::load(Some(&cfg.license), &trusted, SystemTime::now())?;
        license.check_nodes(cfg.servers.len())?;
        let rdma = match cfg.transport {
            Transport::Tcp | Transport::Shm => Err(format!("MEMKV_TRANSPORT={}", cfg.transport)),
            Transport::Auto | Transport::Rdma => ClientRdma::open(&cfg.mem.rdma_devices, cfg.rdma).map(|mut r| {
                // The process's GPU is CUDA ordinal 0 (a TP rank sees its own GPU first): its
                // connections go to the NIC closest to it on the PCIe tree (MEMKV_GPU_NIC_MAP
                // overrides), else round-robin over every NIC.
                let closest = crate::topo::chooser(std::path::Path::new("/"), &r.device_names(), &cfg.mem.gpu_nic_map);
                if let Some(nic) = closest(0) {
                    tracing::info!(nic = %nic, "RDMA connections use the NIC closest to GPU 0");
                    r.prefer(&nic);
                }
                r
            }),
        };
        if cfg.payload_mac && matches!(cfg.transport, Transport::Rdma | Transport::Shm) {
            return Err(ClientError::Unsupported(format!(
                "MEMKV_TRANSPORT={} cannot be honoured with MEMKV_PAYLOAD_MAC=true: one-sided transfers carry no payload MAC; set MEMKV_TRANSPORT=tcp (or auto, which then uses TCP)",
                cfg.transport
            )));
        }
        match (&rdma, cfg.transport) {
            (Err(why), Transport::Rdma) => {
                return Err(ClientError::Unsupported(format!(
                    "MEMKV_TRANSPORT=rdma cannot be honoured: {why}; set MEMKV_TRANSPORT=auto to fall back to TCP"
                )));
            }
            (_, Transport::Shm) => onesided::check_local(&cfg.servers)?,
            _ => {}
        }
        let names: Vec<String> = cfg.servers.iter().map(|s| s.to_string()).collect();
        let nodes = cfg
            .servers
            .iter()
            .zip(&names)
            .map(|(addr, name)| Node {
                addr: addr.clone(),
                name: name.clone(),
                path: tokio::sync::Mutex::new(None),
                slots: (0..cfg.num_connections).map(|_| tokio::sync::Mutex::new(None)).collect(),
                next_slot: AtomicUsize::new(0),
                health: Mutex::new(Health {
                    down_until: None,
                    backoff: BACKOFF_MIN,
                    reason: String::new(),
                    refused: None,
                }),
            })
            .collect();
        let pool = BufPool::new(RECV_POOL_BYTES);
        Ok(Self { inner: Arc::new(Inner { nodes, placement: Rendezvous::new(&names), cfg, license, pool, rdma }) })
    }

    /// The configured servers, in order.
    pub fn servers(&self) -> Vec<ServerAddr> {
        self.inner.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The verified license.
    pub fn license(&self) -> &License {
        &self.inner.license
    }

    /// The server that owns `key` (namespace applied).
    pub fn owner_of(&self, key: &[u8]) -> Result<ServerAddr, ClientError> {
        let k = self.wire_key(key)?;
        Ok(self.inner.nodes[self.inner.placement.owner(&k)].addr.clone())
    }

    /// Servers currently marked down (inside their reconnect backoff).
    pub fn unavailable_servers(&self) -> Vec<ServerAddr> {
        self.inner.nodes.iter().filter(|n| n.check_down().is_err()).map(|n| n.addr.clone()).collect()
    }

    /// The key namespace (empty for none).
    pub fn namespace(&self) -> &str {
        &self.inner.cfg.namespace
    }

    /// Checks that `key` can be stored (non-empty, within the key limit with the namespace)
    /// without any I/O.
    pub fn check_key(&self, key: &[u8]) -> Result<(), ClientError> {
        self.wire_key(key).map(drop)
    }

    fn wire_key(&self, key: &[u8]) -> Result<Vec<u8>, ClientError> {
        let ns = self.inner.cfg.namespace.as_bytes();
        let len = if ns.is_empty() { key.len() } else { ns.len() + 1 + key.len() };
        if len > MAX_KEY_LEN {
            return Err(ClientError::KeyTooLong { len, max: MAX_KEY_LEN });
        }
        if key.is_empty() {
            return Err(ClientError::Unsupported("empty keys are not allowed".into()));
        }
        let mut k = Vec::with_capacity(len);
        if !ns.is_empty() {
            k.extend_from_slice(ns);
            k.push(b'/');
        }
        k.extend_from_slice(key);
        Ok(k)
    }

    async fn session(&self, node: &Node) -> Result<Arc<Session>, ClientError> {
        node.check_down()?;
        let i = node.next_slot.fetch_add(1, Ordering::Relaxed) % node.slots.len();
        let mut slot = node.slots[i].lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.is_alive()) {
            return Ok(Arc::clone(s));
        }
        node.check_down()?;
        let mut first = None;
        let path = {
            let mut chosen = node.path.lock().await;
            match chosen.as_ref() {
                Some(p) => p.clone(),
                None => {
                    let (p, opened) = self.choose_path(node).await?;
                    first = opened;
                    chosen.insert(p).clone()
                }
            }
        };
        let opened = match first {
            Some(s) => Ok(s),
            None => self.open(node, &path, i).await,
        };
        if opened.is_err() {
            // The node may have restarted with other transports: choose again next time.
            *node.path.lock().await = None;
        }
        match opened {
            Ok(s) => {
                tracing::debug!(node = %node.name, node_id = %s.node_id, slot = i, "session established");
                node.mark_up();
                *slot = Some(Arc::clone(&s));
                Ok(s)
            }
            Err(e) => {
                *slot = None;
                Err(self.session_failed(node, e))
            }
        }
    }

    fn session_params(&self) -> SessionParams<'_> {
        SessionParams {
            key: &self.inner.cfg.auth_key,
            payload_mac: self.inner.cfg.payload_mac,
            connect_timeout: self.inner.cfg.connect_timeout,
            pool: &self.inner.pool,
        }
    }

    /// A new session to `node` along `path`; `slot` spreads RDMA sessions over the NICs.
    async fn open(&self, node: &Node, path: &Path, slot: usize) -> Result<Arc<Session>, SessionError> {
        let params = self.session_params();
        match path {
            Path::Tcp => Session::connect(&node.name, &params).await,
            Path::Shm(socket) => Session::connect_shm(socket, &params).await,
            Path::Rdma => {
                let s = Session::connect(&node.name, &params).await?;
                self.rdma_connect(node, &s, slot).await?;
                Ok(s)
            }
        }
    }

    /// Records a failed connection on `node` and says why.
    fn session_failed(&self, node: &Node, e: SessionError) -> ClientError {
        match e {
            SessionError::Refused { status, message } => {
                // A refused handshake (wrong key, clock drift) will not heal by retrying fast.
                tracing::error!(node = %node.name, status = status.name(), %message, "handshake refused");
                node.mark_down(&message, Some(status));
                ClientError::Refused { node: node.name.clone(), status, message }
            }
            e => {
                let reason = e.to_string();
                node.mark_down(&reason, None);
                ClientError::Connection { node: node.name.clone(), reason }
            }
        }
    }

    /// Sends one request to node `idx` and returns its answer, with the op timeout applied.
    async fn call(
        &self,
        idx: usize,
        op: Op,
        header: Header,
        meta: Vec<u8>,
        payload: Vec<Bytes>,
    ) -> Result<Incoming, ClientError> {
        let session = self.session(&self.inner.nodes[idx]).await?;
        self.call_on(idx, &session, op, header, meta, payload, None).await
    }

    /// Sends one request on `session` (one of node `idx`'s) and returns its answer, with the op
    /// timeout applied. The one-sided ops use it: their lease tokens belong to one session.
    #[allow(clippy::too_many_arguments, reason = "one request's parts")]
    async fn call_on(
        &self,
        idx: usize,
        session: &Session,
        op: Op,
        header: Header,
        meta: Vec<u8>,
        payload: Vec<Bytes>,
        targets: Option<Targets>,
    ) -> Result<Incoming, ClientError> {
        self.send_on(idx, session, op, Outgoing { header, meta, payload, crc_at: Vec::new() }, targets).await
    }

    /// [`call_on`](Self::call_on) with the request whole.
    async fn send_on(
        &self,
        idx: usize,
        session: &Session,
        op: Op,
        req: Outgoing,
        targets: Option<Targets>,
    ) -> Result<Incoming, ClientError> {
        let node = &self.inner.nodes[idx];
        // Refuse locally what the node would refuse only by closing the connection (a frame over
        // its limit) or after the bytes crossed the wire (an object over its max_object_size).
        let payload_len: u64 = req.payload.iter().map(|b| b.len() as u64).sum();
        let frame_limit = session.max_object.max(MAX_BATCH_PAYLOAD);
        let size = if op == Op::Put { req.header.total.max(payload_len) } else { payload_len };
        let limit = if op == Op::Put { session.max_object } else { frame_limit };
        if size > limit {
            return Err(ClientError::Server {
                node: node.name.clone(),
                op: op.name(),
                status: Status::PayloadTooLarge,
                message: format!("{size} bytes exceed the node's limit of {limit} bytes (max_object_size); not sent"),
            });
        }
        let timeout = self.inner.cfg.op_timeout;
        match tokio::time::timeout(timeout, session.call(req, targets)).await {
            Err(_) => {
                // A node that accepts but does not answer is treated like a down one, so that the
                // next operations fail fast instead of each waiting for the timeout.
                let e = ClientError::Timeout {
                    node: node.name.clone(),
                    op: op.name(),
                    after_ms: timeout.as_millis() as u64,
                };
                // Its connection is stuck too: close it, so that frames still queued behind a full
                // socket are dropped instead of being sent (and read from the caller's buffers) later.
                session.abort(&e.to_string());
                node.mark_down(&e.to_string(), None);
                Err(e)
            }
            Ok(Err(e)) => {
                let reason = e.to_string();
                node.mark_down(&reason, None);
                Err(ClientError::Connection { node: node.name.clone(), reason })
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    fn server_error(&self, idx: usize, op: Op, r: &Incoming) -> ClientError {
        ClientError::Server {
            node: self.inner.nodes[idx].name.clone(),
            op: op.name(),
            status: r.header.status(),
            message: String::from_utf8_lossy(&r.meta).into_owned(),
        }
    }

    /// Stores `value` as the whole object `key` (replacing any previous one atomically).
    pub async fn put(&self, key: &[u8], value: Bytes) -> Result<(), ClientError> {
        let total = value.len() as u64;
        self.put_range(key, 0, total, value).await
    }

    /// Stores `value` at `offset` of the `total`-byte object `key`. The object becomes visible
    /// when all of its ranges have arrived (within the node's partial timeout).
    pub async fn put_range(&self, key: &[u8], offset: u64, total: u64, value: Bytes) -> Result<(), ClientError> {
        let k = self.wire_key(key)?;
        let idx = self.inner.placement.owner(&k);
        let session = self.session(&self.inner.nodes[idx]).await?;
        // Small writes go inline: a round trip costs more than their bytes.
        if session.is_one_sided() && value.len() as u64 > session.put_inline_max() {
            let meta = Self::one_entry(&k, offset, &value, total);
            let s = self.put_one_sided(idx, &session, meta, &[&value]).await?;
            return match s.first() {
                Some(Status::Ok) => Ok(()),
                s => Err(ClientError::Server {
                    node: self.inner.nodes[idx].name.clone(),
                    op: Op::Put.name(),
                    status: s.copied().unwrap_or(Status::ServerError),
                    message: format!("entry for key {:?}", String::from_utf8_lossy(key)),
                }),
            };
        }
        let mut h = Header::request(Op::Put, 0);
        h.offset = offset;
        h.total = total;
        h.crc = crc_bulk(0, &value);
        let r = self.call_on(idx, &session, Op::Put, h, k, vec![value], None).await?;
        match r.header.status() {
            Status::Ok => Ok(()),
            _ => Err(self.server_error(idx, Op::Put, &r)),
        }
    }

    /// The whole object `key`, or `None` when it is absent or its node is unavailable.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, ClientError> {
        self.get_range(key, 0, 0).await
    }

    /// `length` bytes of `key` from `offset` (0 = to the end); `None` when absent or the node is
    /// unavailable.
    pub async fn get_range(&self, key: &[u8], offset: u64, length: u64) -> Result<Option<Bytes>, ClientError> {
        let k = self.wire_key(key)?;
        let idx = self.inner.placement.owner(&k);
        let miss = |e: ClientError| {
            if e.is_unavailable() {
                tracing::debug!(error = %e, "read turned into a miss");
                Ok(None)
            } else {
                Err(e)
            }
        };
        let session = match self.session(&self.inner.nodes[idx]).await {
            Ok(s) => s,
            Err(e) => return miss(e),
        };
        if session.is_one_sided() {
            let mut meta = Vec::new();
            wire::encode_get_entries(&[BatchGetEntry { key: &k, offset, length }], &mut meta);
            let name = || String::from_utf8_lossy(key).into_owned();
            let got = self.get_one_sided(idx, &session, meta, 1, None, &|_| name()).await;
            return match got {
                Ok(mut v) => Ok(v.pop().flatten().and_then(|g| if let Got::Bytes(b) = g { Some(b) } else { None })),
                Err(e) => miss(e),
            };
        }
        let mut h = Header::request(Op::Get, 0);
        h.offset = offset;
        h.length = 0;
        h.total = length;
        // The wanted length travels in `total` of the request: `length` is the payload size.
        let r = match self.call_on(idx, &session, Op::Get, h, k, Vec::new(), None).await {
            Ok(r) => r,
            Err(e) => return miss(e),
        };
        match r.header.status() {
            Status::Ok if r.crcs.first().copied().unwrap_or(0) == r.header.crc => Ok(Some(r.payload)),
            Status::Ok => Err(ClientError::Checksum {
                node: self.inner.nodes[idx].name.clone(),
                key: String::from_utf8_lossy(key).into_owned(),
            }),
            Status::NotFound => Ok(None),
            _ => Err(self.server_error(idx, Op::Get, &r)),
        }
    }

    /// Removes `key`. True when an object was removed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        let k = self.wire_key(key)?;
        let idx = self.inner.placement.owner(&k);
        let r = self.call(idx, Op::Delete, Header::request(Op::Delete, 0), k, Vec::new()).await?;
        match r.header.status() {
            Status::Ok => Ok(true),
            Status::NotFound => Ok(false),
            _ => Err(self.server_error(idx, Op::Delete, &r)),
        }
    }

    /// Object sizes for many keys: one EXISTS round trip per node (per 4096 keys), all nodes in
    /// parallel. Absent keys and keys on unavailable nodes are `None`.
    pub async fn exists<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<u64>>, ClientError> {
        let wire: Vec<Vec<u8>> = keys.iter().map(|k| self.wire_key(k.as_ref())).collect::<Result<_, _>>()?;
        let groups = self.group(&wire, |i| (wire[i].len() + 2, 0));
        let wire = &wire;
        let calls = groups.into_iter().map(|(idx, members)| async move {
            let mut meta = Vec::new();
            wire::encode_keys(members.iter().map(|&i| wire[i].as_slice()), &mut meta);
            let mut h = Header::request(Op::Exists, 0);
            h.count = members.len() as u32;
            let r = match self.call(idx, Op::Exists, h, meta, Vec::new()).await {
                Ok(r) => r,
                Err(e) if e.is_unavailable() => return Ok((members, None)),
                Err(e) => return Err(e),
            };
            if r.header.status() != Status::Ok {
                return Err(self.server_error(idx, Op::Exists, &r));
            }
            let sizes = wire::decode_exists_answer(&r.meta, r.header.count)
                .map_err(|e| ClientError::Protocol { node: self.inner.nodes[idx].name.clone(), why: e.to_string() })?;
            if sizes.len() != members.len() {
                return Err(ClientError::Protocol {
                    node: self.inner.nodes[idx].name.clone(),
                    why: "EXISTS answer count differs from the question".into(),
                });
            }
            Ok((members, Some(sizes)))
        });
        let mut out = vec![None; keys.len()];
        for res in join_all(calls).await {
            let (members, sizes) = res?;
            if let Some(sizes) = sizes {
                for (i, s) in members.into_iter().zip(sizes) {
                    out[i] = (s != ABSENT).then_some(s);
                }
            }
        }
        Ok(out)
    }

    /// Stores many objects or ranges: one PUT_BATCH per node (split at 4096 entries / 64 MiB,
    /// and striped over the node's connections), all in parallel. Fails with the first entry a
    /// node refused.
    pub async fn put_batch(&self, items: &[PutItem]) -> Result<(), ClientError> {
        let prepared = self.prepare_put(items.iter().map(|it| PutSpec {
            key: &it.key,
            offset: it.offset,
            len: it.data.len() as u64,
            total: it.total,
        }))?;
        let data: Vec<Bytes> = items.iter().map(|it| it.data.clone()).collect();
        self.put_prepared(&prepared, &data).await
    }

    /// Plans a batch of PUT entries once, for [`put_prepared`](Self::put_prepared) to send any
    /// number of times: keys namespaced and checked, entries grouped by node, each group's entry
    /// table encoded (its CRCs are filled in per send). This is the descriptor pool of a NIXL
    /// request: a send then allocates per node, never per entry.
    pub fn prepare_put<'a>(&self, specs: impl IntoIterator<Item = PutSpec<'a>>) -> Result<PreparedPut, ClientError> {
        let mut wire = Vec::new();
        let mut entries = Vec::new();
        for s in specs {
            wire.push(self.wire_key(s.key)?);
            entries.push(s);
        }
        let groups = self.group(&wire, |i| (wire[i].len() + 30, entries[i].len));
        let groups = groups
            .into_iter()
            .map(|(idx, members)| {
                let mut meta = Vec::new();
                let mut crc_at = Vec::with_capacity(members.len());
                for &i in &members {
                    let e = &entries[i];
                    let entry =
                        BatchPutEntry { key: &wire[i], offset: e.offset, length: e.len, total: e.total, crc: 0 };
                    wire::encode_put_entries(std::slice::from_ref(&entry), &mut meta);
                    // The CRC is the last field of an entry.
                    crc_at.push(meta.len() - 4);
                }
                PutGroup { idx, members, meta, crc_at }
            })
            .collect();
        let keys = entries.iter().map(|e| e.key.to_vec()).collect();
        let lens = entries.iter().map(|e| e.len).collect();
        Ok(PreparedPut { keys, lens, groups })
    }

    /// Sends a prepared PUT batch: entry `i` takes `data[i]`, which must be exactly as long as
    /// the entry's `len`. Fails with the first entry a node refused.
    pub async fn put_prepared(&self, prepared: &PreparedPut, data: &[Bytes]) -> Result<(), ClientError> {
        if data.len() != prepared.lens.len() {
            return Err(ClientError::Unsupported(format!(
                "{} payloads for a batch of {} entries",
                data.len(),
                prepared.lens.len()
            )));
        }
        if let Some((d, want)) = data.iter().zip(&prepared.lens).find(|(d, want)| d.len() as u64 != **want) {
            return Err(ClientError::Unsupported(format!(
                "a {}-byte payload for an entry prepared with {want} bytes",
                d.len()
            )));
        }
        let calls = prepared.groups.iter().map(|g| async move {
            let statuses = self.put_group(g, data).await?;
            let node = || self.inner.nodes[g.idx].name.clone();
            for (&i, s) in g.members.iter().zip(statuses) {
                if s != Status::Ok {
                    let message = format!("entry for key {:?}", String::from_utf8_lossy(&prepared.keys[i]));
                    return Err(ClientError::Server { node: node(), op: Op::PutBatch.name(), status: s, message });
                }
            }
            Ok(())
        });
        join_all(calls).await.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
    }

    /// Sends one group of a prepared PUT batch: one-sidedly on a session with a provider (unless
    /// the group is small: [`Session::put_inline_max`]), else as one PUT_BATCH. Returns each
    /// entry's status.
    async fn put_group(&self, g: &PutGroup, data: &[Bytes]) -> Result<Vec<Status>, ClientError> {
        let session = self.session(&self.inner.nodes[g.idx]).await?;
        let total: u64 = g.members.iter().map(|&i| data[i].len() as u64).sum();
        if session.is_one_sided() && total > session.put_inline_max() {
            let bytes: Vec<&[u8]> = g.members.iter().map(|&i| &data[i][..]).collect();
            return self.put_one_sided(g.idx, &session, g.meta.clone(), &bytes).await;
        }
        let payload: Vec<Bytes> = g.members.iter().map(|&i| data[i].clone()).collect();
        let mut header = Header::request(Op::PutBatch, 0);
        header.count = g.members.len() as u32;
        // Through rings the session's writer takes the CRCs in its copy of the values.
        let mut req = Outgoing { header, meta: g.meta.clone(), payload, crc_at: g.crc_at.clone() };
        if !session.rings {
            req.fill_crcs();
        }
        let r = self.send_on(g.idx, &session, Op::PutBatch, req, None).await?;
        if r.header.status() != Status::Ok {
            return Err(self.server_error(g.idx, Op::PutBatch, &r));
        }
        let statuses = wire::decode_statuses(&r.meta, r.header.count)
            .map_err(|e| ClientError::Protocol { node: self.inner.nodes[g.idx].name.clone(), why: e.to_string() })?;
        if statuses.len() != g.members.len() {
            return Err(ClientError::Protocol {
                node: self.inner.nodes[g.idx].name.clone(),
                why: "PUT_BATCH answer count differs from the request".into(),
            });
        }
        Ok(statuses)
    }

    /// Reads many objects or ranges: one GET_BATCH per node (split at 4096 entries / 64 MiB of
    /// known lengths, and striped over the node's connections), all in parallel. Absent keys and
    /// keys on unavailable nodes are `None`; other failures are errors.
    pub async fn get_batch(&self, items: &[GetItem]) -> Result<Vec<Option<Bytes>>, ClientError> {
        let got = self.fetch_batch(items, &self.plan_get(items)?, None).await?;
        Ok(got.into_iter().map(|g| g.and_then(|g| if let Got::Bytes(b) = g { Some(b) } else { None })).collect())
    }

    /// Like [`get_batch`](Self::get_batch), but entry `i`'s bytes are read from the socket
    /// straight into `targets[i]` (no copy), which must be exactly `items[i].length` bytes.
    /// Returns, per entry, whether it was found (and its target filled). The targets' loans end
    /// when no task writes to them any more, also when this future is dropped early.
    pub async fn get_batch_into(&self, items: &[GetItem], targets: Vec<ReadTarget>) -> Result<Vec<bool>, ClientError> {
        self.get_prepared_into(&self.prepare_get(items)?, targets).await
    }

    /// Plans a batch of GET entries once, for [`get_prepared_into`](Self::get_prepared_into) to
    /// run any number of times (keys namespaced, grouped by node, entry tables encoded).
    pub fn prepare_get(&self, items: &[GetItem]) -> Result<PreparedGet, ClientError> {
        Ok(PreparedGet { items: items.to_vec(), groups: self.plan_get(items)? })
    }

    /// The GET_BATCHes of `items`: keys namespaced, grouped by node, entry tables encoded.
    fn plan_get(&self, items: &[GetItem]) -> Result<Vec<GetGroup>, ClientError> {
        let wire: Vec<Vec<u8>> = items.iter().map(|it| self.wire_key(&it.key)).collect::<Result<_, _>>()?;
        // Entries of known length are grouped by the bytes they answer too, so that each
        // GET_BATCH fits the node's answer budget (MAX_BATCH_PAYLOAD) and the groups of a large
        // request run side by side on the node's connections; a whole-object entry (length 0)
        // counts nothing, and past the budget it is fetched on its own.
        let groups = self.group(&wire, |i| (wire[i].len() + 18, items[i].length));
        Ok(groups
            .into_iter()
            .map(|(idx, members)| {
                let entries: Vec<BatchGetEntry<'_>> = members
                    .iter()
                    .map(|&i| BatchGetEntry { key: &wire[i], offset: items[i].offset, length: items[i].length })
                    .collect();
                let mut meta = Vec::new();
                wire::encode_get_entries(&entries, &mut meta);
                GetGroup { idx, members, meta }
            })
            .collect())
    }

    /// Runs a prepared GET batch into `targets` (see [`get_batch_into`](Self::get_batch_into)).
    pub async fn get_prepared_into(
        &self,
        prepared: &PreparedGet,
        targets: Vec<ReadTarget>,
    ) -> Result<Vec<bool>, ClientError> {
        let items = &prepared.items;
        if targets.len() != items.len() {
            return Err(ClientError::Unsupported(format!("{} targets for {} entries", targets.len(), items.len())));
        }
        if let Some((it, t)) = items.iter().zip(&targets).find(|(it, t)| it.length == 0 || it.length != t.len() as u64)
        {
            return Err(ClientError::Unsupported(format!(
                "a {}-byte read target for an entry of {} bytes (lengths must be equal and non-zero)",
                t.len(),
                it.length
            )));
        }
        let got = self.fetch_batch(items, &prepared.groups, Some(targets)).await?;
        Ok(got.into_iter().map(|g| g.is_some()).collect())
    }

    async fn fetch_batch(
        &self,
        items: &[GetItem],
        groups: &[GetGroup],
        targets: Option<Vec<ReadTarget>>,
    ) -> Result<Vec<Option<Got>>, ClientError> {
        let mut targets: Vec<Option<ReadTarget>> = targets.into_iter().flatten().map(Some).collect();
        let calls = groups.iter().map(|g| {
            // The group's targets, in the order of its entries.
            let group_targets: Option<Targets> = (!targets.is_empty())
                .then(|| g.members.iter().map(|&i| targets[i].take().expect("each entry is in one group")).collect());
            async move {
                let (idx, members) = (g.idx, &g.members);
                let unavailable = || Ok(members.iter().map(|&i| (i, None)).collect::<Vec<_>>());
                let session = match self.session(&self.inner.nodes[idx]).await {
                    Ok(s) => s,
                    Err(e) if e.is_unavailable() => return unavailable(),
                    Err(e) => return Err(e),
                };
                if session.is_one_sided() {
                    let key = |j: usize| String::from_utf8_lossy(&items[members[j]].key).into_owned();
                    let meta = g.meta.clone();
                    let got =
                        self.get_one_sided(idx, &session, meta, members.len(), group_targets.as_ref(), &key).await;
                    return match got {
                        Ok(v) => Ok(members.iter().copied().zip(v).collect()),
                        Err(e) if e.is_unavailable() => unavailable(),
                        Err(e) => Err(e),
                    };
                }
                let mut h = Header::request(Op::GetBatch, 0);
                h.count = members.len() as u32;
                let targets = group_targets.clone();
                let r = match self.call_on(idx, &session, Op::GetBatch, h, g.meta.clone(), Vec::new(), targets).await {
                    Ok(r) => r,
                    Err(e) if e.is_unavailable() => return unavailable(),
                    Err(e) => return Err(e),
                };
                if r.header.status() != Status::Ok {
                    return Err(self.server_error(idx, Op::GetBatch, &r));
                }
                let node = || self.inner.nodes[idx].name.clone();
                let answers = wire::decode_get_answers(&r.meta, r.header.count, r.header.length)
                    .map_err(|e| ClientError::Protocol { node: node(), why: e.to_string() })?;
                if answers.len() != members.len() {
                    return Err(ClientError::Protocol {
                        node: node(),
                        why: "GET_BATCH answer count differs from the request".into(),
                    });
                }
                let mut out = Vec::with_capacity(members.len());
                let mut at = 0usize;
                let mut received = r.crcs.iter();
                for (pos, (&i, a)) in members.iter().zip(answers).enumerate() {
                    let key = || String::from_utf8_lossy(&items[i].key).into_owned();
                    let target = group_targets.as_ref().map(|t| &t[pos]);
                    let got = match a.status {
                        Status::Ok => {
                            // The session took one CRC per Ok entry while receiving.
                            if received.next() != Some(&a.crc) {
                                return Err(ClientError::Checksum { node: node(), key: key() });
                            }
                            if r.placed {
                                Some(Got::Placed)
                            } else {
                                let part = r.payload.slice(at..at + a.length as usize);
                                at += a.length as usize;
                                Some(deliver(part, target, &node)?)
                            }
                        }
                        Status::NotFound => None,
                        // Past the answer's payload budget: fetch on its own.
                        Status::PayloadTooLarge => {
                            match self.get_range(&items[i].key, items[i].offset, items[i].length).await? {
                                Some(part) => Some(deliver(part, target, &node)?),
                                None => None,
                            }
                        }
                        s => {
                            return Err(ClientError::Server {
                                node: node(),
                                op: Op::GetBatch.name(),
                                status: s,
                                message: format!("entry for key {:?}", key()),
                            });
                        }
                    };
                    out.push((i, got));
                }
                Ok(out)
            }
        });
        let calls: Vec<_> = calls.collect();
        let mut out: Vec<Option<Got>> = (0..items.len()).map(|_| None).collect();
        for res in join_all(calls).await {
            for (i, v) in res? {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// The node's status document (the same JSON as its `/v1/status`).
    pub async fn node_info(&self, server: &ServerAddr) -> Result<serde_json::Value, ClientError> {
        let idx = self
            .inner
            .nodes
            .iter()
            .position(|n| &n.addr == server)
            .ok_or_else(|| ClientError::Unsupported(format!("{server} is not one of this client's servers")))?;
        let r = self.call(idx, Op::NodeInfo, Header::request(Op::NodeInfo, 0), Vec::new(), Vec::new()).await?;
        let node = || self.inner.nodes[idx].name.clone();
        if r.header.status() != Status::Ok {
            return Err(self.server_error(idx, Op::NodeInfo, &r));
        }
        if r.crcs.first().copied().unwrap_or(0) != r.header.crc {
            return Err(ClientError::Checksum { node: node(), key: "<node info>".into() });
        }
        serde_json::from_slice(&r.payload).map_err(|e| ClientError::Protocol { node: node(), why: e.to_string() })
    }

    /// Groups key indices by owning node, split so that each group fits one batch frame: at most
    /// `MAX_BATCH_ENTRIES` entries, `MAX_META_LEN` bytes of meta and about `MAX_BATCH_PAYLOAD`
    /// payload bytes. `cost(i)` is entry `i`'s (meta bytes, payload bytes). A node's share of a
    /// large batch is also striped over its connections: groups of about its payload divided by
    /// `num_connections`, none below [`STRIPE_MIN`], so that one request (a NIXL transfer) moves
    /// its bytes over every connection at once.
    fn group(&self, wire: &[Vec<u8>], cost: impl Fn(usize) -> (usize, u64)) -> Vec<(usize, Vec<usize>)> {
        let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); self.inner.nodes.len()];
        for (i, k) in wire.iter().enumerate() {
            by_node[self.inner.placement.owner(k)].push(i);
        }
        let mut out = Vec::new();
        for (idx, members) in by_node.into_iter().enumerate() {
            let bytes: u64 = members.iter().map(|&i| cost(i).1).sum();
            let lanes = self.inner.nodes[idx].slots.len() as u64;
            let stripe = bytes.div_ceil(lanes).clamp(STRIPE_MIN, MAX_BATCH_PAYLOAD);
            let mut chunk = Vec::new();
            let (mut meta, mut payload) = (0usize, 0u64);
            for i in members {
                let (m, p) = cost(i);
                let full = chunk.len() == MAX_BATCH_ENTRIES || meta + m > MAX_META_LEN || payload + p > stripe;
                if !chunk.is_empty() && full {
                    out.push((idx, std::mem::take(&mut chunk)));
                    (meta, payload) = (0, 0);
                }
                meta += m;
                payload += p;
                chunk.push(i);
            }
            if !chunk.is_empty() {
                out.push((idx, chunk));
            }
        }
        out
    }
}

/// One entry fetched by [`Client::fetch_batch`].
enum Got {
    /// The bytes, in a buffer of the client's.
    Bytes(Bytes),
    /// The bytes are in the caller's read target.
    Placed,
}

/// Hands fetched bytes over: as they are, or copied into the entry's read target (the rare
/// answers that could not be received in place).
fn deliver(part: Bytes, target: Option<&ReadTarget>, node: &dyn Fn() -> String) -> Result<Got, ClientError> {
    let Some(t) = target else { return Ok(Got::Bytes(part)) };
    if part.len() != t.len() {
        return Err(ClientError::Protocol {
            node: node(),
            why: format!("{} bytes answered for a {}-byte read", part.len(), t.len()),
        });
    }
    // SAFETY: the target is lent to this request; its answer was not placed by the session, so
    // nothing else writes to it.
    unsafe { t.slice() }.copy_from_slice(&part);
    Ok(Got::Placed)
}
