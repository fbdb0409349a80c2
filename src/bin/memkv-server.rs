//! `memkv-server`: one MemKV node.
//!
//! Settings come from flags, then `MEMKV_*` variables, then the `MEMKV_CONFIG` file, then
//! defaults (see `docs/configuration.md`). Prints one `ready` line on stdout once both ports
//! are bound; logs go to stderr. SIGTERM or SIGINT drain gracefully.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Parser;
use memkv::config::{RdmaFlags, ServerConfig, Sources, format_size};
use memkv::license::{License, TrustedKeys};
use memkv::logging::{self, LogFormat};
use memkv::server::Server;

/// A MemKV storage node: holds KV-cache blocks in a DRAM arena and serves them to clients over
/// the authenticated MemKV protocol (data port) and an HTTP admin endpoint (data port + 1).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Data-port address [env: MEMKV_LISTEN] [default: 0.0.0.0:9900]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin HTTP address [env: MEMKV_ADMIN_LISTEN] [default: data port + 1]
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Unix socket for same-host shared memory: auto (@memkv-LISTEN), off, a path or @name [env: MEMKV_SHM_SOCKET] [default: auto]
    #[arg(long, value_name = "PATH|@NAME")]
    shm_socket: Option<String>,
    /// RDMA device for one-sided transfers, e.g. mlx5_0 [env: MEMKV_RDMA_DEVICE] [default: none]
    #[arg(long, value_name = "DEV")]
    rdma_device: Option<String>,
    #[command(flatten)]
    rdma: RdmaFlags,
    /// DRAM arena size, e.g. 64GiB [env: MEMKV_MEMORY] [default: 1GiB]
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Commit all of the arena at start-up [env: MEMKV_PREFAULT]
    #[arg(long)]
    prefault: bool,
    /// Largest object accepted [env: MEMKV_MAX_OBJECT_SIZE] [default: 256MiB]
    #[arg(long, value_name = "SIZE")]
    max_object_size: Option<String>,
    /// Node name in status and logs [env: MEMKV_NODE_ID] [default: the listen address]
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// Cluster key, 64 hex chars; prefer the env var, flags show in `ps` [env: MEMKV_AUTH_KEY]
    #[arg(long, value_name = "HEX")]
    auth_key: Option<String>,
    /// License file or inline token [env: MEMKV_LICENSE]
    #[arg(long, value_name = "PATH|TOKEN")]
    license: Option<String>,
    /// Extra trusted license public keys [env: MEMKV_LICENSE_PUBKEY]
    #[arg(long, value_name = "KEYS")]
    license_pubkey: Option<String>,
    /// YAML or TOML config file [env: MEMKV_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Largest accepted client clock difference [env: MEMKV_MAX_CLOCK_DRIFT_MS] [default: 30000]
    #[arg(long, value_name = "MS")]
    max_clock_drift_ms: Option<String>,
    /// Require a MAC over every payload [env: MEMKV_REQUIRE_PAYLOAD_MAC]
    #[arg(long)]
    require_payload_mac: bool,
    /// How long a partly written object waits for its other ranges [env: MEMKV_PARTIAL_TIMEOUT_MS] [default: 30000]
    #[arg(long, value_name = "MS")]
    partial_timeout_ms: Option<String>,
    /// How long an unfinished one-sided reservation or pin is kept [env: MEMKV_LEASE_TIMEOUT_MS] [default: 30000]
    #[arg(long, value_name = "MS")]
    lease_timeout_ms: Option<String>,
    /// How long shutdown waits for in-flight requests [env: MEMKV_SHUTDOWN_GRACE_MS] [default: 10000]
    #[arg(long, value_name = "MS")]
    shutdown_grace_ms: Option<String>,
    /// A drive directory of the durable tier; repeat once per drive [env: MEMKV_DATA_DIR, comma-separated] [default: none, DRAM only]
    #[arg(long, value_name = "DIR")]
    data_dir: Vec<String>,
    /// Bytes MemKV may use on each drive, or auto [env: MEMKV_DRIVE_CAPACITY] [default: auto]
    #[arg(long, value_name = "SIZE")]
    drive_capacity: Option<String>,
    /// none, async or sync: when a PUT is on stable storage [env: MEMKV_DURABILITY] [default: async]
    #[arg(long, value_name = "LEVEL")]
    durability: Option<String>,
    /// Longest wait before an async write is synced [env: MEMKV_FLUSH_INTERVAL_MS] [default: 100]
    #[arg(long, value_name = "MS")]
    flush_interval_ms: Option<String>,
    /// Bytes of writes that may wait for the drives [env: MEMKV_DRIVE_QUEUE] [default: 256MiB]
    #[arg(long, value_name = "SIZE")]
    drive_queue: Option<String>,
    /// Segment file size on the drives [env: MEMKV_SEGMENT_SIZE] [default: 64MiB]
    #[arg(long, value_name = "SIZE")]
    segment_size: Option<String>,
    /// Worker threads of the node's runtime, or auto: the number of CPUs [env: MEMKV_THREADS] [default: auto]
    #[arg(long, value_name = "N")]
    threads: Option<String>,
    /// Log format (level via MEMKV_LOG, e.g. `debug`)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Args {
    fn explicit(&self) -> BTreeMap<String, String> {
        let pairs = [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
            ("shm_socket", &self.shm_socket),
            ("rdma_device", &self.rdma_device),
            ("memory", &self.memory),
            ("max_object_size", &self.max_object_size),
            ("node_id", &self.node_id),
            ("auth_key", &self.auth_key),
            ("license", &self.license),
            ("license_pubkey", &self.license_pubkey),
            ("config", &self.config),
            ("max_clock_drift_ms", &self.max_clock_drift_ms),
            ("partial_timeout_ms", &self.partial_timeout_ms),
            ("lease_timeout_ms", &self.lease_timeout_ms),
            ("shutdown_grace_ms", &self.shutdown_grace_ms),
            ("drive_capacity", &self.drive_capacity),
            ("durability", &self.durability),
            ("flush_interval_ms", &self.flush_interval_ms),
            ("drive_queue", &self.drive_queue),
            ("segment_size", &self.segment_size),
            ("threads", &self.threads),
        ];
        let mut m: BTreeMap<String, String> = pairs
            .into_iter()
            .chain(self.rdma.pairs())
            .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
            .collect();
        if !self.data_dir.is_empty() {
            m.insert("data_dir".into(), self.data_dir.join(","));
        }
        if self.require_payload_mac {
            m.insert("require_payload_mac".into(), "true".into());
        }
        if self.prefault {
            m.insert("prefault".into(), "true".into());
        }
        m
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("memkv-server: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, "info");
    let explicit = args.explicit();
    let env = Sources::process_env();
    let cfg = match ServerConfig::resolve(&Sources { explicit: &explicit, env: &env }) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let license = match TrustedKeys::with_extra(cfg.license_pubkey.as_deref())
        .and_then(|t| License::load(Some(&cfg.license), &t, SystemTime::now()))
    {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .thread_name("memkv-server")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        let memory = cfg.memory;
        let node_id = cfg.node_id.clone();
        let server = match Server::bind(cfg, license.clone()).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let (data, admin) = match (server.data_addr(), server.admin_addr()) {
            (Ok(d), Ok(a)) => (d, a),
            (Err(e), _) | (_, Err(e)) => return fail(e),
        };
        tracing::info!(node = %node_id, %data, %admin, memory = %format_size(memory), license = %license.summary(), "memkv-server ready");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "memkv-server ready data={data} admin={admin} node={node_id}");
        let _ = out.flush();
        drop(out);
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
