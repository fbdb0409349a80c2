//! The MemKV node: accepts client connections on the data port, serves the admin HTTP endpoint,
//! and shuts down gracefully on SIGTERM/SIGINT.
//!
//! Owns: start-up (license check, arena allocation, binding), the shared [`Ctx`] every session
//! reads, and shutdown (stop accepting, mark not ready, let in-flight requests finish within the
//! grace period). Never imports `client`.

mod admin;
pub(crate) mod arena;
mod drive;
mod metrics;
mod object;
mod onesided;
mod session;
pub(crate) mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::{AuthKey, NonceCache};
use crate::config::{ServerConfig, default_shm_socket, format_size};
use crate::license::License;
use crate::transport::rdma::NodeRdma;
use crate::transport::shm;
use crate::wire::{Limits, MAX_BATCH_PAYLOAD, MAX_META_LEN};
use drive::{Durable, Persist, Tier};
use metrics::{Snapshot, Stats};
use store::{Object, Store};

/// Everything the sessions and the admin endpoint share.
pub(crate) struct Ctx {
    store: Store,
    /// The drive tier behind the DRAM store, when the node has drives.
    tier: Option<Tier>,
    stats: Stats,
    key: AuthKey,
    node_id: String,
    limits: Limits,
    max_drift: Duration,
    require_payload_mac: bool,
    nonces: Mutex<NonceCache>,
    started: Instant,
    license_summary: String,
    shutdown: watch::Receiver<bool>,
    draining: AtomicBool,
    /// How long a one-sided reservation or pin may stay unfinished.
    lease_timeout: Duration,
    /// The arena registered with the node's RDMA device (named), when it has one.
    rdma: Option<NodeRdma>,
    rdma_device: Option<String>,
    /// The shared-memory socket's name, when same-host clients get the arena.
    shm_socket: Option<String>,
}

impl Ctx {
    /// Makes a received object visible under its key; with drives, returns the write to queue.
    fn publish(&self, obj: Object) -> Option<Persist> {
        match &self.tier {
            Some(t) => Some(t.publish(&self.store, obj)),
            None => {
                self.store.publish(obj);
                None
            }
        }
    }

    /// Queues writes for the drives (waiting while the queue is full); the receivers resolve
    /// when `sync` writes are on stable storage.
    async fn persist(&self, writes: Vec<Persist>) -> Vec<Durable> {
        let mut waits = Vec::new();
        if let Some(t) = &self.tier {
            for p in writes {
                waits.extend(t.persist(p).await);
            }
        }
        waits
    }

    /// The object under `key`: from DRAM, else read through from the drive tier. Counted.
    async fn lookup(&self, key: &[u8]) -> Option<Object> {
        let found = match (self.store.get(key), &self.tier) {
            (Some(o), Some(t)) => {
                t.touch(key);
                Some(o)
            }
            (Some(o), None) => Some(o),
            (None, Some(t)) => t.read_through(&self.store, key).await,
            (None, None) => None,
        };
        self.store.count_lookup(found.is_some());
        found
    }

    /// Whether every key can be answered from DRAM alone (always, on a node without drives).
    fn in_dram<'k>(&self, mut keys: impl Iterator<Item = &'k [u8]>) -> bool {
        self.tier.is_none() || keys.all(|k| self.store.contains(k))
    }

    /// Deletes `key` from every tier. True if it existed.
    async fn delete(&self, key: &[u8]) -> Result<bool, String> {
        let Some(t) = &self.tier else { return Ok(self.store.delete(key)) };
        let (found, tombstone) = t.delete(&self.store, key);
        if let Some(p) = tombstone {
            for w in self.persist(vec![p]).await {
                w.await.map_err(|_| "the drive writer stopped".to_string())??;
            }
        }
        Ok(found)
    }

    /// Sizes of `keys` in any tier, without promoting them.
    fn sizes(&self, keys: &[&[u8]]) -> Vec<Option<u64>> {
        let mut sizes = self.store.sizes(keys.iter().copied());
        if let Some(t) = &self.tier {
            for (s, k) in sizes.iter_mut().zip(keys) {
                if s.is_none() {
                    *s = t.size(k);
                }
            }
        }
        sizes
    }

    /// `"ok"`, `"degraded"` (a drive is offline) or `"shutting_down"`.
    fn health_state(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) {
            "shutting_down"
        } else if self.tier.as_ref().is_some_and(Tier::degraded) {
            "degraded"
        } else {
            "ok"
        }
    }

    /// The `/v1/status` document (also the NODE_INFO answer).
    fn status(&self) -> serde_json::Value {
        let c = self.store.counters();
        let arena = self.store.arena();
        let storage = match &self.tier {
            Some(t) => t.status_json(),
            None => serde_json::json!({ "mode": "memory" }),
        };
        serde_json::json!({
            "node_id": self.node_id,
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": crate::wire::VERSION,
            "uptime_secs": self.started.elapsed().as_secs(),
            "state": match self.health_state() { "ok" => "serving", other => other },
            "capacity_bytes": arena.capacity(),
            "used_bytes": arena.used(),
            "largest_free_bytes": arena.largest_free(),
            "max_object_bytes": self.store.max_object(),
            "objects": self.store.object_count(),
            "hits": c.hits,
            "misses": c.misses,
            "evictions": c.evictions,
            "evicted_bytes": c.evicted_bytes,
            "connections": Stats::load(&self.stats.connections),
            "connections_total": Stats::load(&self.stats.connections_total),
            "leases": Stats::load(&self.stats.leases),
            "bytes_received": Stats::load(&self.stats.bytes_in),
            "bytes_sent": Stats::load(&self.stats.bytes_out),
            "auth_failures": self.stats.auth_failures_total(),
            "auth_failures_by_reason": self.stats.auth_failures_by_reason().collect::<std::collections::BTreeMap<_, _>>(),
            "invalid_frames": Stats::load(&self.stats.invalid_frames),
            "license": self.license_summary,
            "storage": storage,
            "transports": {
                "tcp": true,
                "shm": self.shm_socket.as_ref().map(|s| serde_json::json!({ "socket": s, "host": shm::host_id() })),
                "rdma": self.rdma_device.as_ref().map(|d| serde_json::json!({ "device": d })),
            },
        })
    }

    fn metrics_text(&self) -> String {
        let arena = self.store.arena();
        metrics::render(
            &self.stats,
            &Snapshot {
                uptime_secs: self.started.elapsed().as_secs_f64(),
                capacity: arena.capacity(),
                used: arena.used(),
                objects: self.store.object_count() as u64,
                store: self.store.counters(),
                tier: self.tier.as_ref().map(Tier::snapshot),
            },
        )
    }
}

#[cfg(test)]
impl Ctx {
    /// A DRAM-only node's context over a `capacity`-byte arena, for unit tests of the op handlers.
    pub(crate) fn for_tests(capacity: u64, lease_timeout: Duration) -> Self {
        Self {
            store: Store::new(arena::Arena::new(capacity).expect("arena"), capacity, Duration::from_secs(30)),
            tier: None,
            stats: Stats::default(),
            key: AuthKey::generate().expect("key"),
            node_id: "test".into(),
            limits: Limits::default(),
            max_drift: Duration::from_secs(30),
            require_payload_mac: false,
            nonces: Mutex::new(NonceCache::new(Duration::from_secs(60), 16)),
            started: Instant::now(),
            license_summary: String::new(),
            shutdown: watch::channel(false).1,
            draining: AtomicBool::new(false),
            lease_timeout,
            rdma: None,
            rdma_device: None,
            shm_socket: None,
        }
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// License missing, malformed, tampered, expired or too small for this node.
    #[error("{0}")]
    License(#[from] crate::license::LicenseError),
    /// The arena could not be allocated.
    #[error(
        "cannot allocate the {size} DRAM arena (--memory / MEMKV_MEMORY): {source}; lower the size or raise the memory limit"
    )]
    Arena {
        /// Requested size, human readable.
        size: String,
        /// OS error.
        source: std::io::Error,
    },
    /// `--prefault`: the host could not back the whole arena at start-up.
    #[error(
        "cannot commit the {size} DRAM arena at start-up (--prefault / MEMKV_PREFAULT): {source}; free memory on \
         the host, lower --memory / MEMKV_MEMORY, or leave MEMKV_PREFAULT off (pages are then committed as objects \
         first fill them)"
    )]
    Prefault {
        /// Requested size, human readable.
        size: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A drive directory cannot be used (wrong path, foreign data, newer format, in use).
    #[error("{0}")]
    Storage(String),
    /// The RDMA device named by --rdma-device cannot be used.
    #[error("cannot use the RDMA device for one-sided transfers (--rdma-device / MEMKV_RDMA_DEVICE): {0}")]
    Rdma(String),
    /// The shared-memory socket could not be bound.
    #[error(
        "cannot bind the shared-memory socket {name}: {source}; choose another with --shm-socket / MEMKV_SHM_SOCKET, or turn it off with `off`"
    )]
    Shm {
        /// The socket's name.
        name: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A port could not be bound.
    #[error("cannot bind the {what} address {addr}: {source}; choose another address with {flag}")]
    Bind {
        /// "data" or "admin".
        what: &'static str,
        /// Address tried.
        addr: SocketAddr,
        /// Flag that sets it.
        flag: &'static str,
        /// OS error.
        source: std::io::Error,
    },
}

/// Out of file descriptors and similar: logs and backs off instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The next same-host connection; never resolves when the node has no shared-memory socket.
async fn accept_unix(l: Option<&tokio::net::UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// A started node: bound sockets, ready to serve.
pub struct Server {
    ctx: Arc<Ctx>,
    data: TcpListener,
    admin: TcpListener,
    shm: Option<tokio::net::UnixListener>,
    shutdown_tx: watch::Sender<bool>,
    grace: Duration,
    partial_timeout: Duration,
}

impl Server {
    /// Verifies the license, allocates the arena and binds both ports.
    pub async fn bind(mut cfg: ServerConfig, license: License) -> Result<Self, StartError> {
        license.check_capacity(cfg.memory)?;
        if cfg.require_payload_mac && (cfg.shm_socket.is_some() || cfg.rdma_device.is_some()) {
            // One-sided bytes travel outside frames, so they carry no payload MAC.
            tracing::warn!(
                "--require-payload-mac: shared memory and RDMA are off (one-sided transfers carry no payload MAC)"
            );
            (cfg.shm_socket, cfg.rdma_device) = (None, None);
        }
        // Same-host clients map the arena: it lives in a memfd then.
        let arena = match cfg.shm_socket {
            Some(_) => arena::Arena::shared(cfg.memory),
            None => arena::Arena::new(cfg.memory),
        }
        .map_err(|source| StartError::Arena { size: format_size(cfg.memory), source })?;
        if cfg.prefault {
            let t = Instant::now();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
            arena.prefault(threads).map_err(|source| StartError::Prefault { size: format_size(cfg.memory), source })?;
            tracing::info!(memory = %format_size(cfg.memory), secs = t.elapsed().as_secs_f64(), "arena committed (--prefault)");
        }
        let rdma = match &cfg.rdma_device {
            Some(dev) => Some(NodeRdma::open(dev, arena.base(), cfg.memory, cfg.rdma).map_err(StartError::Rdma)?),
            None => None,
        };
        // Queued drive writes pin arena memory: a quarter of it at most, so PUTs keep room.
        let tier = match cfg.storage.data_dirs.is_empty() {
            true => None,
            false => Some(Tier::open(&cfg.storage, cfg.memory / 4).map_err(StartError::Storage)?),
        };
        let data = TcpListener::bind(cfg.listen).await.map_err(|source| StartError::Bind {
            what: "data",
            addr: cfg.listen,
            flag: "--listen / MEMKV_LISTEN",
            source,
        })?;
        let admin = TcpListener::bind(cfg.admin_listen).await.map_err(|source| StartError::Bind {
            what: "admin",
            addr: cfg.admin_listen,
            flag: "--admin-listen / MEMKV_ADMIN_LISTEN",
            source,
        })?;
        // `auto` on port 0: the socket is named after the port the data listener got.
        let mut shm_socket = cfg.shm_socket;
        if cfg.listen.port() == 0
            && shm_socket.as_deref() == Some(default_shm_socket(cfg.listen).as_str())
            && let Ok(bound) = data.local_addr()
        {
            shm_socket = Some(default_shm_socket(bound));
        }
        let shm = match &shm_socket {
            Some(name) => Some(shm::bind(name).map_err(|source| StartError::Shm { name: name.clone(), source })?),
            None => None,
        };
        let (shutdown_tx, shutdown) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            store: Store::new(arena, cfg.max_object_size, cfg.partial_timeout),
            tier,
            stats: Stats::default(),
            key: cfg.auth_key,
            node_id: cfg.node_id,
            limits: Limits { max_meta: MAX_META_LEN as u32, max_payload: cfg.max_object_size.max(MAX_BATCH_PAYLOAD) },
            max_drift: cfg.max_clock_drift,
            require_payload_mac: cfg.require_payload_mac,
            nonces: Mutex::new(NonceCache::new(cfg.max_clock_drift * 2, 1 << 20)),
            started: Instant::now(),
            license_summary: license.summary(),
            shutdown,
            draining: AtomicBool::new(false),
            lease_timeout: cfg.lease_timeout,
            rdma,
            rdma_device: cfg.rdma_device,
            shm_socket,
        });
        Ok(Self { ctx, data, admin, shm, shutdown_tx, grace: cfg.shutdown_grace, partial_timeout: cfg.partial_timeout })
    }

    /// The bound data address.
    pub fn data_addr(&self) -> std::io::Result<SocketAddr> {
        self.data.local_addr()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until `stop` resolves, then drains: stops accepting, reports not ready, and waits up
    /// to the grace period for open connections to finish their current requests.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let Self { ctx, data, admin, shm, shutdown_tx, grace, partial_timeout } = self;
        let mut admin_stop = ctx.shutdown.clone();
        let app = admin::router(Arc::clone(&ctx));
        let admin_task = tokio::spawn(async move {
            let stopped = async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(admin, app).with_graceful_shutdown(stopped).await {
                tracing::error!(error = %e, "admin endpoint failed");
            }
        });
        let sweeper_ctx = Arc::clone(&ctx);
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(partial_timeout.max(Duration::from_millis(100)) / 2);
            loop {
                tick.tick().await;
                sweeper_ctx.store.expire_partials(Instant::now());
            }
        });
        let mut conns = JoinSet::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = data.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let c = Arc::clone(&ctx);
                        c.stats.connections.fetch_add(1, Ordering::Relaxed);
                        c.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                        conns.spawn(async move {
                            session::serve(stream, peer.to_string(), None, Arc::clone(&c)).await;
                            c.stats.connections.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) => accept_failed(e).await,
                },
                accepted = accept_unix(shm.as_ref()) => match accepted {
                    Ok(stream) => {
                        let c = Arc::clone(&ctx);
                        c.stats.connections.fetch_add(1, Ordering::Relaxed);
                        c.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                        let sock = std::os::fd::AsRawFd::as_raw_fd(&stream);
                        let peer = format!("shm:{}", c.shm_socket.as_deref().unwrap_or_default());
                        conns.spawn(async move {
                            session::serve(stream, peer, Some(sock), Arc::clone(&c)).await;
                            c.stats.connections.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        tracing::info!(
            open_connections = conns.len(),
            grace_ms = grace.as_millis() as u64,
            "shutting down: no longer accepting"
        );
        ctx.draining.store(true, Ordering::Relaxed);
        drop(data);
        drop(shm);
        let _ = shutdown_tx.send(true);
        let drained = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(open_connections = conns.len(), "grace period over; closing remaining connections");
            conns.shutdown().await;
        }
        sweeper.abort();
        if ctx.tier.is_some() {
            let c = Arc::clone(&ctx);
            let _ = tokio::task::spawn_blocking(move || c.tier.as_ref().map(Tier::shutdown)).await;
            tracing::info!("drive tier flushed and sealed");
        }
        let _ = admin_task.await;
        tracing::info!("memkv-server stopped");
    }
}
