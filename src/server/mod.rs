//! The MemKV node: accepts client connections on the data port, serves the admin HTTP endpoint,
//! and shuts down gracefully on SIGTERM/SIGINT.
//!
//! Owns: start-up (license check, arena allocation, binding), the shared [`Ctx`] every session
//! reads, and shutdown (stop accepting, mark not ready, let in-flight requests finish within the
//! grace period). Never imports `client`.

mod admin;
mod arena;
mod metrics;
mod session;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::{AuthKey, NonceCache};
use crate::config::{ServerConfig, format_size};
use crate::license::License;
use crate::wire::{Limits, MAX_BATCH_PAYLOAD, MAX_META_LEN};
use metrics::{Snapshot, Stats};
use store::Store;

/// Everything the sessions and the admin endpoint share.
pub(crate) struct Ctx {
    store: Store,
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
}

impl Ctx {
    /// The `/v1/status` document (also the NODE_INFO answer).
    fn status(&self) -> serde_json::Value {
        let c = self.store.counters();
        let arena = self.store.arena();
        serde_json::json!({
            "node_id": self.node_id,
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": crate::wire::VERSION,
            "uptime_secs": self.started.elapsed().as_secs(),
            "state": if self.draining.load(Ordering::Relaxed) { "shutting_down" } else { "serving" },
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
            "bytes_received": Stats::load(&self.stats.bytes_in),
            "bytes_sent": Stats::load(&self.stats.bytes_out),
            "auth_failures": self.stats.auth_failures_total(),
            "auth_failures_by_reason": self.stats.auth_failures_by_reason().collect::<std::collections::BTreeMap<_, _>>(),
            "invalid_frames": Stats::load(&self.stats.invalid_frames),
            "license": self.license_summary,
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
            },
        )
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

/// A started node: bound sockets, ready to serve.
pub struct Server {
    ctx: Arc<Ctx>,
    data: TcpListener,
    admin: TcpListener,
    shutdown_tx: watch::Sender<bool>,
    grace: Duration,
    partial_timeout: Duration,
}

impl Server {
    /// Verifies the license, allocates the arena and binds both ports.
    pub async fn bind(cfg: ServerConfig, license: License) -> Result<Self, StartError> {
        license.check_capacity(cfg.memory)?;
        let arena = arena::Arena::new(cfg.memory)
            .map_err(|source| StartError::Arena { size: format_size(cfg.memory), source })?;
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
        let (shutdown_tx, shutdown) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            store: Store::new(arena, cfg.max_object_size, cfg.partial_timeout),
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
        });
        Ok(Self { ctx, data, admin, shutdown_tx, grace: cfg.shutdown_grace, partial_timeout: cfg.partial_timeout })
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
        let Self { ctx, data, admin, shutdown_tx, grace, partial_timeout } = self;
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
                            session::serve(stream, peer, Arc::clone(&c)).await;
                            c.stats.connections.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
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
        let _ = shutdown_tx.send(true);
        let drained = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(open_connections = conns.len(), "grace period over; closing remaining connections");
            conns.shutdown().await;
        }
        sweeper.abort();
        let _ = admin_task.await;
        tracing::info!("memkv-server stopped");
    }
}
