//! `memkv`: the MemKV command line — keys, licenses, object commands, cluster status and the
//! benchmark. Client settings come from flags, `MEMKV_*` variables, the `MEMKV_CONFIG` file and
//! defaults, in that order (see `docs/configuration.md`).

mod bench;
mod bench_gpu;
mod bench_nixl;
mod license_cmd;
mod plot;
mod topo;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use memkv::Client;
use memkv::auth::AuthKey;
use memkv::config::{ClientConfig, RdmaFlags, Sources};
use memkv::logging::{self, LogFormat};

/// MemKV: a zero-copy KV-cache block store. Store and fetch blocks, check a cluster, run the
/// benchmark, and manage keys and licenses.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Cluster connection settings (each also read from its MEMKV_* variable).
#[derive(Args, Debug, Default, Clone)]
struct ConnArgs {
    /// Nodes, host:port[,host:port…] [env: MEMKV_SERVERS]
    #[arg(long, global = true, value_name = "LIST")]
    servers: Option<String>,
    /// Cluster key, 64 hex chars; prefer the env var [env: MEMKV_AUTH_KEY]
    #[arg(long, global = true, value_name = "HEX")]
    auth_key: Option<String>,
    /// License file or inline token [env: MEMKV_LICENSE]
    #[arg(long, global = true, value_name = "PATH|TOKEN")]
    license: Option<String>,
    /// Extra trusted license public keys [env: MEMKV_LICENSE_PUBKEY]
    #[arg(long, global = true, value_name = "KEYS")]
    license_pubkey: Option<String>,
    /// Key namespace [env: MEMKV_NAMESPACE]
    #[arg(long, global = true, value_name = "NS")]
    namespace: Option<String>,
    /// auto | rdma | shm | tcp [env: MEMKV_TRANSPORT] [default: auto]
    #[arg(long, global = true, value_name = "KIND")]
    transport: Option<String>,
    /// Connections per node [env: MEMKV_NUM_CONNECTIONS] [default: 4]
    #[arg(long, global = true, value_name = "N")]
    num_connections: Option<String>,
    /// Connect and handshake timeout [env: MEMKV_CONNECT_TIMEOUT_MS] [default: 2000]
    #[arg(long, global = true, value_name = "MS")]
    connect_timeout_ms: Option<String>,
    /// MAC every payload too (untrusted networks) [env: MEMKV_PAYLOAD_MAC]
    #[arg(long, global = true)]
    payload_mac: bool,
    /// Per-operation timeout [env: MEMKV_OP_TIMEOUT_MS] [default: 10000]
    #[arg(long, global = true, value_name = "MS")]
    op_timeout_ms: Option<String>,
    /// Threads of this command's I/O runtime, or auto [env: MEMKV_IO_THREADS] [default: auto]
    #[arg(long, global = true, value_name = "N")]
    io_threads: Option<String>,
    /// RDMA devices to use, e.g. mlx5_0,mlx5_1 [env: MEMKV_RDMA_DEVICES]
    #[arg(long, global = true, value_name = "LIST")]
    rdma_devices: Option<String>,
    /// GPU→NIC overrides, e.g. 0=mlx5_0,1=mlx5_1 [env: MEMKV_GPU_NIC_MAP]
    #[arg(long, global = true, value_name = "MAP")]
    gpu_nic_map: Option<String>,
    /// Pinned staging memory for GPU blocks, MiB [env: MEMKV_STAGING_SIZE_MB] [default: 256]
    #[arg(long, global = true, value_name = "MB")]
    staging_size_mb: Option<String>,
    /// One staging slot, MiB [env: MEMKV_STAGING_SLOT_MB] [default: 16]
    #[arg(long, global = true, value_name = "MB")]
    staging_slot_mb: Option<String>,
    /// Most MR cache entries [env: MEMKV_MR_CACHE_MAX_ENTRIES] [default: 65536]
    #[arg(long, global = true, value_name = "N")]
    mr_cache_max_entries: Option<String>,
    /// Most MR cache bytes, GiB [env: MEMKV_MR_CACHE_MAX_GB] [default: 1024]
    #[arg(long, global = true, value_name = "GB")]
    mr_cache_max_gb: Option<String>,
    #[command(flatten)]
    rdma: RdmaFlags,
    /// Serve client metrics at IP:PORT/metrics [env: MEMKV_PROMETHEUS_BIND]
    #[arg(long, global = true, value_name = "ADDR")]
    prometheus_bind: Option<String>,
    /// Seconds between client summary log lines, 0 = off [env: MEMKV_STATS_INTERVAL_S] [default: 60]
    #[arg(long, global = true, value_name = "S")]
    stats_interval_s: Option<String>,
    /// YAML or TOML config file [env: MEMKV_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<String>,
    /// Log level filter for this command (e.g. debug) [env: MEMKV_LOG]
    #[arg(long, global = true, value_name = "FILTER", default_value = "warn")]
    log: String,
}

impl ConnArgs {
    fn explicit(&self) -> BTreeMap<String, String> {
        [
            ("servers", &self.servers),
            ("auth_key", &self.auth_key),
            ("license", &self.license),
            ("license_pubkey", &self.license_pubkey),
            ("namespace", &self.namespace),
            ("transport", &self.transport),
            ("op_timeout_ms", &self.op_timeout_ms),
            ("num_connections", &self.num_connections),
            ("connect_timeout_ms", &self.connect_timeout_ms),
            ("payload_mac", &self.payload_mac.then(|| "true".to_string())),
            ("io_threads", &self.io_threads),
            ("rdma_devices", &self.rdma_devices),
            ("gpu_nic_map", &self.gpu_nic_map),
            ("staging_size_mb", &self.staging_size_mb),
            ("staging_slot_mb", &self.staging_slot_mb),
            ("mr_cache_max_entries", &self.mr_cache_max_entries),
            ("mr_cache_max_gb", &self.mr_cache_max_gb),
            ("prometheus_bind", &self.prometheus_bind),
            ("stats_interval_s", &self.stats_interval_s),
            ("config", &self.config),
        ]
        .into_iter()
        .chain(self.rdma.pairs())
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
        .collect()
    }

    fn client_config(&self, extra: &[(&str, String)]) -> Result<ClientConfig> {
        let mut explicit = self.explicit();
        for (k, v) in extra {
            explicit.insert(k.to_string(), v.clone());
        }
        let env = Sources::process_env();
        Ok(ClientConfig::resolve(&Sources { explicit: &explicit, env: &env })?)
    }

    fn client(&self) -> Result<Client> {
        Ok(Client::new(self.client_config(&[])?)?)
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a new random cluster key (64 hex chars) for MEMKV_AUTH_KEY
    Keygen,
    /// Create signing keys, issue and verify licenses
    #[command(subcommand)]
    License(license_cmd::LicenseCmd),
    /// Store a file (or stdin) as KEY
    Put {
        /// Object key
        key: String,
        /// File to read; `-` or nothing for stdin
        file: Option<String>,
    },
    /// Fetch KEY into a file (or stdout); exits 1 when absent
    Get {
        /// Object key
        key: String,
        /// File to write; `-` or nothing for stdout
        file: Option<String>,
    },
    /// Show which keys exist and their sizes; exits 1 unless all exist
    Exists {
        /// Keys to check (one batched round trip per node)
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Remove keys
    Rm {
        /// Keys to remove
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Show each node's status (capacity, objects, hit rate, connections, auth failures, drives)
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Measure PUT/GET throughput and latency against the cluster, through the client library
    /// or (--via nixl) the NIXL agent and plugin; --plot draws GiB/s by block size as an SVG
    Bench(bench::BenchArgs),
    /// Show which RDMA NIC each GPU uses, the PCIe path between them and whether GPUDirect pays off
    Topo(topo::TopoArgs),
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`memkv get key | head -c 10`) instead of panicking on a broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if std::env::var_os("MEMKV_LOG").is_none() {
        logging::init(LogFormat::Text, &cli.conn.log);
    } else {
        logging::init(LogFormat::Text, "warn");
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    // Commands that talk to a cluster run on MEMKV_IO_THREADS threads; an invalid value is
    // reported by the command itself.
    if let Ok(cfg) = cli.conn.client_config(&[]) {
        rt.worker_threads(cfg.io_threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("memkv: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memkv: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let conn = cli.conn;
    match cli.cmd {
        Cmd::Keygen => {
            println!("{}", AuthKey::generate().context("generating a key")?.to_hex());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::License(cmd) => license_cmd::run(cmd),
        Cmd::Put { key, file } => {
            let data = read_input(file.as_deref())?;
            let client = conn.client()?;
            let n = data.len();
            client.put(key.as_bytes(), Bytes::from(data)).await?;
            eprintln!("stored {n} bytes as {key:?} on {}", client.owner_of(key.as_bytes())?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get { key, file } => {
            let client = conn.client()?;
            match client.get(key.as_bytes()).await? {
                Some(v) => {
                    write_output(file.as_deref(), &v)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    let owner = client.owner_of(key.as_bytes())?;
                    if client.unavailable_servers().contains(&owner) {
                        eprintln!("memkv get: {key:?} lives on {owner}, which is unreachable (see the warning above)");
                    } else {
                        eprintln!("memkv get: key {key:?} not found (on {owner})");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Exists { keys } => {
            let client = conn.client()?;
            let sizes = client.exists(&keys.iter().map(|k| k.as_bytes()).collect::<Vec<_>>()).await?;
            let mut all = true;
            for (k, s) in keys.iter().zip(&sizes) {
                match s {
                    Some(n) => println!("{k}\t{n}"),
                    None => {
                        all = false;
                        println!("{k}\tabsent");
                    }
                }
            }
            Ok(if all { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Rm { keys } => {
            let client = conn.client()?;
            for k in &keys {
                let removed = client.delete(k.as_bytes()).await?;
                println!("{k}\t{}", if removed { "removed" } else { "absent" });
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => status(&conn, json).await,
        Cmd::Bench(args) => bench::run(&conn, args).await,
        Cmd::Topo(args) => topo::run(args, conn.rdma_devices.clone(), conn.gpu_nic_map.clone()),
    }
}

fn read_input(file: Option<&str>) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    match file {
        None | Some("-") => {
            std::io::stdin().read_to_end(&mut data).context("reading stdin")?;
        }
        Some(path) => data = std::fs::read(path).with_context(|| format!("reading {path}"))?,
    }
    Ok(data)
}

fn write_output(file: Option<&str>, data: &[u8]) -> Result<()> {
    match file {
        None | Some("-") => {
            let mut out = std::io::stdout().lock();
            out.write_all(data).context("writing stdout")?;
            out.flush().context("writing stdout")?;
        }
        Some(path) => std::fs::write(path, data).with_context(|| format!("writing {path}"))?,
    }
    Ok(())
}

/// The DRIVES column: `-` for a DRAM-only node, else online/total drives, used/capacity, the
/// durability level and the objects in the drive tier.
fn drives_summary(storage: &serde_json::Value) -> String {
    let Some(drives) = storage["drives"].as_array() else { return "-".to_string() };
    let sum = |k: &str| drives.iter().map(|d| d[k].as_u64().unwrap_or(0)).sum::<u64>();
    let online = drives.iter().filter(|d| d["state"] == "online").count();
    format!(
        "{online}/{} online, {}/{}, {}, {} objects",
        drives.len(),
        memkv::config::format_size(sum("used_bytes")),
        memkv::config::format_size(sum("capacity_bytes")),
        storage["durability"].as_str().unwrap_or("?"),
        storage["objects"].as_u64().unwrap_or(0)
    )
}

async fn status(conn: &ConnArgs, json: bool) -> Result<ExitCode> {
    let client = conn.client()?;
    let mut docs = Vec::new();
    let mut healthy = true;
    let mut degraded = Vec::new();
    for s in client.servers() {
        match client.node_info(&s).await {
            Ok(v) => docs.push(serde_json::json!({"server": s.to_string(), "reachable": true, "status": v})),
            Err(e) => {
                healthy = false;
                docs.push(serde_json::json!({"server": s.to_string(), "reachable": false, "error": e.to_string()}));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    } else {
        println!(
            "{:<22} {:<14} {:>21} {:>9} {:>8} {:>6} {:>5} {:>9}  DRIVES",
            "SERVER", "NODE", "USED/CAPACITY", "OBJECTS", "HIT%", "CONNS", "AUTH!", "UPTIME"
        );
        for d in &docs {
            let server = d["server"].as_str().unwrap_or("?");
            if d["reachable"] == true {
                let s = &d["status"];
                let n = |k: &str| s[k].as_u64().unwrap_or(0);
                let (hits, misses) = (n("hits"), n("misses"));
                let hit = if hits + misses == 0 {
                    "-".to_string()
                } else {
                    format!("{:.1}", 100.0 * hits as f64 / (hits + misses) as f64)
                };
                let used = format!(
                    "{}/{}",
                    memkv::config::format_size(n("used_bytes")),
                    memkv::config::format_size(n("capacity_bytes"))
                );
                let drives = drives_summary(&s["storage"]);
                for d in s["storage"]["drives"].as_array().into_iter().flatten().filter(|d| d["state"] != "online") {
                    degraded.push(format!(
                        "{server}: drive {} is {}: {}",
                        d["path"].as_str().unwrap_or("?"),
                        d["state"].as_str().unwrap_or("?"),
                        d["error"].as_str().unwrap_or("?")
                    ));
                }
                println!(
                    "{:<22} {:<14} {:>21} {:>9} {:>8} {:>6} {:>5} {:>8}s  {}",
                    server,
                    s["node_id"].as_str().unwrap_or("?"),
                    used,
                    n("objects"),
                    hit,
                    n("connections"),
                    n("auth_failures"),
                    n("uptime_secs"),
                    drives
                );
            } else {
                println!("{:<22} unreachable: {}", server, d["error"].as_str().unwrap_or("?"));
            }
        }
    }
    if !healthy && !json {
        eprintln!("memkv status: some nodes are unreachable");
    }
    if !json {
        for d in &degraded {
            eprintln!("memkv status: degraded: {d}");
        }
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
