//! Configuration: the one `MEMKV_*` settings chain shared by the node, the CLI and the NIXL plugin.
//!
//! Owns: the table of every setting ([`PARAMS`]), the precedence chain, parsing and validation of
//! every value into [`ClientConfig`] / [`ServerConfig`], the size syntax ([`parse_size`],
//! [`format_size`]) and the generated reference ([`markdown_reference`], the source of
//! `docs/configuration.md`). Never mutates the process environment; reads it only through
//! [`Sources::env`].
//!
//! Precedence, highest first:
//! 1. explicit values ([`Sources::explicit`]: CLI flags, NIXL plugin params), keyed by the param
//!    key (`num_connections`) or the env name (`MEMKV_NUM_CONNECTIONS`), case-insensitive;
//! 2. `MEMKV_*` environment variables;
//! 3. a config file (path from explicit `config` or `MEMKV_CONFIG`): YAML (`.yaml`, `.yml`) or
//!    TOML (`.toml`), a flat map of param keys to scalars (`servers` may also be a list);
//! 4. the defaults in [`PARAMS`] (or a value derived from other settings).
//!
//! Empty (or all-whitespace) values count as unset at every level; values are trimmed. Every
//! rejected value yields one line naming the env var, the value, where it came from, what is
//! accepted and, where there is one, the fix — for example
//! `MEMKV_NUM_CONNECTIONS="abc" (from the environment) is invalid: expected an integer in 1..=64`.
//! The cluster key is never echoed back. Resolution stops at the first error.
//!
//! Decisions worth knowing:
//! - A setting of the other role (a node setting given to a client, in the file or explicitly) is
//!   ignored, so one file and one set of plugin params can serve both; a key that is no setting at
//!   all is an error listing the valid keys, with a "did you mean" for near misses.
//! - Explicit values and config-file entries that are empty count as unset, like empty env vars
//!   (a plugin param left empty falls through to the environment); `servers = []` in a file is
//!   invalid.
//! - When `max_object_size` is unset and `memory` is below its default, it shrinks to `memory`
//!   instead of failing on a value the operator never wrote.
//! - "Printable ASCII" for `namespace` and `node_id` means `!`..=`~`: no spaces, no control bytes.
//! - Size units are binary throughout (`1 KB` = 1024 B); see [`parse_size`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::auth::AuthKey;

/// Port a server entry without an explicit port uses (and the default data port of a node).
pub const DEFAULT_PORT: u16 = 9900;
/// Most entries `servers` may list.
pub const MAX_SERVERS: usize = 1024;
/// Longest `namespace`, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;
/// Longest `node_id`, in bytes.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Smallest `memory` a node accepts.
pub const MIN_MEMORY: u64 = 1 << 20;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

// ---------------------------------------------------------------------------------------------
// The settings table
// ---------------------------------------------------------------------------------------------

/// Which component reads a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client library (and so the CLI's client commands and the NIXL plugin).
    Client,
    /// The node (`memkv-server`).
    Server,
    /// Both of them.
    Both,
}

impl Role {
    /// Whether a setting with role `self` is read by a component with role `reader`.
    fn read_by(self, reader: Role) -> bool {
        self == Role::Both || reader == Role::Both || self == reader
    }
}

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// The key in config files and explicit values, e.g. `"num_connections"`.
    pub key: &'static str,
    /// The environment variable, e.g. `"MEMKV_NUM_CONNECTIONS"`.
    pub env: &'static str,
    /// The default as text; `None` when the setting is required, derived from other settings, or
    /// (for `config`) simply absent when unset.
    pub default: Option<&'static str>,
    /// Accepted values, as human text (`"1..=64"`).
    pub range: &'static str,
    /// What the setting does.
    pub help: &'static str,
    /// Who reads it.
    pub role: Role,
}

impl Param {
    /// Whether resolution fails when the setting is not given anywhere.
    pub fn is_required(&self) -> bool {
        REQUIRED.contains(&self.key)
    }

    /// The command-line flag of `memkv` / `memkv-server` for it: `--num-connections`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    /// Whether an unset value is computed from other settings (`admin_listen`, `node_id`, and
    /// `shm_socket`, whose default `auto` names a socket after `listen`).
    pub fn is_derived(&self) -> bool {
        DERIVED.contains(&self.key)
    }
}

const REQUIRED: &[&str] = &["auth_key", "license", "servers"];
const DERIVED: &[&str] = &["admin_listen", "node_id", "shm_socket"];

const P_AUTH_KEY: Param = Param {
    key: "auth_key",
    env: "MEMKV_AUTH_KEY",
    default: None,
    range: "64 hex characters (32 bytes); generate one with `memkv keygen`",
    help: "Cluster key shared by every node and client; authenticates every connection.",
    role: Role::Both,
};
const P_LICENSE: Param = Param {
    key: "license",
    env: "MEMKV_LICENSE",
    default: None,
    range: "a license file path or an inline license token",
    help: "The MemKV license.",
    role: Role::Both,
};
const P_LICENSE_PUBKEY: Param = Param {
    key: "license_pubkey",
    env: "MEMKV_LICENSE_PUBKEY",
    default: Some(""),
    range: "comma-separated public keys or key files",
    help: "Extra trusted license-signing public keys, besides the built-in ones.",
    role: Role::Both,
};
const P_CONFIG: Param = Param {
    key: "config",
    env: "MEMKV_CONFIG",
    default: None,
    range: "a path ending in .yaml, .yml or .toml",
    help: "Config file read below explicit values and the environment. Cannot be set inside a config file.",
    role: Role::Both,
};
const P_RDMA_GID_INDEX: Param = Param {
    key: "rdma_gid_index",
    env: "MEMKV_RDMA_GID_INDEX",
    default: Some("auto"),
    range: "`auto` (the first RoCE v2 IPv4-mapped GID of the port) or 0..=255",
    help: "Entry of the port's GID table that RDMA queue pairs address RoCE packets from; set it where `auto` picks the wrong one (`show_gids` lists them).",
    role: Role::Both,
};
const P_RDMA_TRAFFIC_CLASS: Param = Param {
    key: "rdma_traffic_class",
    env: "MEMKV_RDMA_TRAFFIC_CLASS",
    default: Some("0"),
    range: "0..=255",
    help: "IP traffic class (DSCP << 2 | ECN) of RoCE packets.",
    role: Role::Both,
};
const P_RDMA_SERVICE_LEVEL: Param = Param {
    key: "rdma_service_level",
    env: "MEMKV_RDMA_SERVICE_LEVEL",
    default: Some("0"),
    range: "0..=15",
    help: "InfiniBand service level of the queue pairs (the fabric maps it to a virtual lane / priority).",
    role: Role::Both,
};
const P_RDMA_TIMEOUT_SECS: Param = Param {
    key: "rdma_timeout_secs",
    env: "MEMKV_RDMA_TIMEOUT_SECS",
    default: Some("10"),
    range: "1..=3600",
    help: "A posted one-sided transfer not complete after this long fails its connection (the next operation reconnects), in seconds.",
    role: Role::Both,
};
const P_RDMA_CQ_POLL_US: Param = Param {
    key: "rdma_cq_poll_us",
    env: "MEMKV_RDMA_CQ_POLL_US",
    default: Some("50"),
    range: "0..=100000",
    help: "Busy-poll time of the completion queue after a post before the polling task yields to others, in microseconds.",
    role: Role::Both,
};
const P_RDMA_QUEUE_DEPTH: Param = Param {
    key: "rdma_queue_depth",
    env: "MEMKV_RDMA_QUEUE_DEPTH",
    default: Some("128"),
    range: "1..=4096",
    help: "One-sided work requests in flight per queue pair.",
    role: Role::Both,
};
const P_SERVERS: Param = Param {
    key: "servers",
    env: "MEMKV_SERVERS",
    default: None,
    range: "1..=1024 comma-separated `host:port` or `host` (port 9900), IPv6 as `[::1]:9900`; no duplicates",
    help: "The nodes to connect to. In a config file it may also be a list of strings.",
    role: Role::Client,
};
const P_TRANSPORT: Param = Param {
    key: "transport",
    env: "MEMKV_TRANSPORT",
    default: Some("auto"),
    range: "`auto`, `rdma`, `shm` or `tcp` (case-insensitive)",
    help: "Data transport. `auto` uses shared memory for a node on this host, RDMA where both ends have a usable device, else TCP, and logs which and why once per node; `rdma` or `shm` that cannot be honoured is an error; `tcp` never touches verbs or shared memory.",
    role: Role::Client,
};
const P_NUM_CONNECTIONS: Param = Param {
    key: "num_connections",
    env: "MEMKV_NUM_CONNECTIONS",
    default: Some("4"),
    range: "1..=64",
    help: "Connections per node.",
    role: Role::Client,
};
const P_CONNECT_TIMEOUT_MS: Param = Param {
    key: "connect_timeout_ms",
    env: "MEMKV_CONNECT_TIMEOUT_MS",
    default: Some("2000"),
    range: "10..=120000",
    help: "Timeout for connecting and the handshake, in milliseconds.",
    role: Role::Client,
};
const P_OP_TIMEOUT_MS: Param = Param {
    key: "op_timeout_ms",
    env: "MEMKV_OP_TIMEOUT_MS",
    default: Some("10000"),
    range: "10..=3600000",
    help: "Timeout for one operation, in milliseconds.",
    role: Role::Client,
};
const P_NAMESPACE: Param = Param {
    key: "namespace",
    env: "MEMKV_NAMESPACE",
    default: Some(""),
    range: "at most 128 bytes of printable ASCII without spaces, no `/`",
    help: "Prefix that isolates this client's keys from other tenants; empty for none.",
    role: Role::Client,
};
const P_PAYLOAD_MAC: Param = Param {
    key: "payload_mac",
    env: "MEMKV_PAYLOAD_MAC",
    default: Some("false"),
    range: "true/false, 1/0, yes/no, on/off",
    help: "Authenticate every payload with a MAC too (untrusted networks; costs CPU).",
    role: Role::Client,
};
const P_IO_THREADS: Param = Param {
    key: "io_threads",
    env: "MEMKV_IO_THREADS",
    default: Some("auto"),
    range: "1..=64, or `auto`: the number of CPUs, at most 4",
    help: "Threads of the client's I/O runtime: the NIXL plugin's (per backend instance) and the `memkv` CLI's.",
    role: Role::Client,
};
const P_RDMA_DEVICES: Param = Param {
    key: "rdma_devices",
    env: "MEMKV_RDMA_DEVICES",
    default: Some(""),
    range: "comma-separated RDMA device names as in /sys/class/infiniband (`mlx5_0,mlx5_1`); empty for every device found",
    help: "The NICs this client registers memory with and sends over; each GPU uses the closest of them on the PCIe tree (`memkv topo` prints the map).",
    role: Role::Client,
};
const P_GPU_NIC_MAP: Param = Param {
    key: "gpu_nic_map",
    env: "MEMKV_GPU_NIC_MAP",
    default: Some(""),
    range: "comma-separated `GPU=NIC[+NIC...]`, GPU a CUDA device index (`0`) or PCI bus id (`0000:17:00.0`), e.g. `0=mlx5_0,1=mlx5_1+mlx5_2`; empty for the computed map",
    help: "Overrides the PCIe-affinity map for the GPUs it names (the others keep the computed choice).",
    role: Role::Client,
};
const P_STAGING_SIZE_MB: Param = Param {
    key: "staging_size_mb",
    env: "MEMKV_STAGING_SIZE_MB",
    default: Some("256"),
    range: "0 (no staging) or 2 × `staging_slot_mb`..=65536",
    help: "Pinned host memory for staging GPU blocks that the NIC cannot reach directly (every VRAM block over TCP or shared memory), in MiB; allocated at the first VRAM_SEG registration.",
    role: Role::Client,
};
const P_STAGING_SLOT_MB: Param = Param {
    key: "staging_slot_mb",
    env: "MEMKV_STAGING_SLOT_MB",
    default: Some("16"),
    range: "1..=1024",
    help: "Size of one staging slot in MiB: the unit copied off the GPU while the previous slot is on the wire; larger blocks span slots.",
    role: Role::Client,
};
const P_MR_CACHE_MAX_ENTRIES: Param = Param {
    key: "mr_cache_max_entries",
    env: "MEMKV_MR_CACHE_MAX_ENTRIES",
    default: Some("65536"),
    range: "1..=16777216",
    help: "Most memory registrations (MRs) the MR cache keeps; past it the least recently used idle one is released (and registered again when next used).",
    role: Role::Client,
};
const P_MR_CACHE_MAX_GB: Param = Param {
    key: "mr_cache_max_gb",
    env: "MEMKV_MR_CACHE_MAX_GB",
    default: Some("1024"),
    range: "1..=1048576",
    help: "Most bytes, in GiB, that the MR cache keeps registered (pinned by the NIC); past it the least recently used idle registrations are released.",
    role: Role::Client,
};
const P_PROMETHEUS_BIND: Param = Param {
    key: "prometheus_bind",
    env: "MEMKV_PROMETHEUS_BIND",
    default: Some(""),
    range: "a socket address `IP:PORT` (port 0 picks a free port), or empty for none",
    help: "Where the client (NIXL plugin) serves its own Prometheus metrics at `/metrics`: MR cache, staging and transfer counters.",
    role: Role::Client,
};
const P_STATS_INTERVAL_S: Param = Param {
    key: "stats_interval_s",
    env: "MEMKV_STATS_INTERVAL_S",
    default: Some("60"),
    range: "0 (off) or 1..=86400",
    help: "How often the client logs one summary line of its MR cache and staging counters, in seconds (only when something changed).",
    role: Role::Client,
};
const P_THREADS: Param = Param {
    key: "threads",
    env: "MEMKV_THREADS",
    default: Some("auto"),
    range: "1..=256, or `auto`: the number of CPUs",
    help: "Worker threads of the node's runtime. Where the node shares a small host with its clients (a benchmark, a test box), fewer threads save cross-thread wake-ups: on 2 cores, one node thread and one client I/O thread (`io_threads`) carry about 1.5x the 4 KiB operations of the defaults (docs/benchmarks.md).",
    role: Role::Server,
};
const P_LISTEN: Param = Param {
    key: "listen",
    env: "MEMKV_LISTEN",
    default: Some("0.0.0.0:9900"),
    range: "a socket address `IP:PORT`, IPv6 as `[::]:9900`; port 0 picks a free port",
    help: "Data-plane listen address.",
    role: Role::Server,
};
const P_ADMIN_LISTEN: Param = Param {
    key: "admin_listen",
    env: "MEMKV_ADMIN_LISTEN",
    default: None,
    range: "a socket address `IP:PORT`; port 0 picks a free port",
    help: "Admin/metrics HTTP listen address. Default: the `listen` IP with the data port + 1 (port 0 if the data port is 0); must be set when the data port is 65535.",
    role: Role::Server,
};
const P_SHM_SOCKET: Param = Param {
    key: "shm_socket",
    env: "MEMKV_SHM_SOCKET",
    default: Some("auto"),
    range: "`auto` (the abstract socket `@memkv-<listen>`), `off`, a filesystem path, or `@name` for a Linux abstract socket",
    help: "Unix socket on which clients on this host get the same-host shared-memory transport (the arena is handed to them as a memfd after the authenticated handshake).",
    role: Role::Server,
};
const P_RDMA_DEVICE: Param = Param {
    key: "rdma_device",
    env: "MEMKV_RDMA_DEVICE",
    default: Some(""),
    range: "an RDMA device name as in /sys/class/infiniband (`mlx5_0`); empty for no RDMA",
    help: "The NIC the node registers its arena with for one-sided RDMA from clients; empty: clients use TCP or shared memory.",
    role: Role::Server,
};
const P_MEMORY: Param = Param {
    key: "memory",
    env: "MEMKV_MEMORY",
    default: Some("1GiB"),
    range: "a size of at least 1 MiB, e.g. `64GiB` (B, K, M, G, T; binary units)",
    help: "Memory the node reserves for stored objects.",
    role: Role::Server,
};
const P_PREFAULT: Param = Param {
    key: "prefault",
    env: "MEMKV_PREFAULT",
    default: Some("false"),
    range: "true/false, 1/0, yes/no, on/off",
    help: "Commit all of `memory` at start-up (start fails if the host cannot back it), so that no PUT pays for the first touch of a page; off: the kernel commits pages as objects first fill them.",
    role: Role::Server,
};
const P_MAX_OBJECT_SIZE: Param = Param {
    key: "max_object_size",
    env: "MEMKV_MAX_OBJECT_SIZE",
    default: Some("256MiB"),
    range: "a size from 1 B up to `memory`, at most 256 GiB - 64 B",
    help: "Largest object the node accepts. When unset and `memory` is smaller than the default, `memory`.",
    role: Role::Server,
};
const P_NODE_ID: Param = Param {
    key: "node_id",
    env: "MEMKV_NODE_ID",
    default: None,
    range: "1..=128 bytes of printable ASCII without spaces",
    help: "Name the node reports in handshakes and metrics. Default: the `listen` address.",
    role: Role::Server,
};
const P_MAX_CLOCK_DRIFT_MS: Param = Param {
    key: "max_clock_drift_ms",
    env: "MEMKV_MAX_CLOCK_DRIFT_MS",
    default: Some("30000"),
    range: "100..=3600000",
    help: "Largest accepted difference between a client's clock and the node's at the handshake, in milliseconds.",
    role: Role::Server,
};
const P_REQUIRE_PAYLOAD_MAC: Param = Param {
    key: "require_payload_mac",
    env: "MEMKV_REQUIRE_PAYLOAD_MAC",
    default: Some("false"),
    range: "true/false, 1/0, yes/no, on/off",
    help: "MAC every payload in every session, whether or not the client asked for it (the node turns it on at the handshake).",
    role: Role::Server,
};
const P_PARTIAL_TIMEOUT_MS: Param = Param {
    key: "partial_timeout_ms",
    env: "MEMKV_PARTIAL_TIMEOUT_MS",
    default: Some("30000"),
    range: "100..=3600000",
    help: "How long a partly written ranged object waits for its other ranges before it is dropped, in milliseconds.",
    role: Role::Server,
};
const P_LEASE_TIMEOUT_MS: Param = Param {
    key: "lease_timeout_ms",
    env: "MEMKV_LEASE_TIMEOUT_MS",
    default: Some("30000"),
    range: "100..=3600000",
    help: "How long a one-sided reservation or pin may stay unfinished before the node drops it (a client that died mid-transfer); a later COMMIT or RELEASE of it gets LeaseExpired.",
    role: Role::Server,
};
const P_SHUTDOWN_GRACE_MS: Param = Param {
    key: "shutdown_grace_ms",
    env: "MEMKV_SHUTDOWN_GRACE_MS",
    default: Some("10000"),
    range: "0..=600000",
    help: "How long a stopping node lets in-flight requests finish, in milliseconds.",
    role: Role::Server,
};

const P_DATA_DIR: Param = Param {
    key: "data_dir",
    env: "MEMKV_DATA_DIR",
    default: None,
    range: "directories, comma-separated (one per drive; `--data-dir` may be repeated); each must exist and be empty or a MemKV drive",
    help: "Drive directories of the durable drive tier (see docs/storage.md). Unset: the node keeps objects in DRAM only.",
    role: Role::Server,
};
const P_DRIVE_CAPACITY: Param = Param {
    key: "drive_capacity",
    env: "MEMKV_DRIVE_CAPACITY",
    default: Some("auto"),
    range: "a size of at least 4 × `segment_size`, or `auto`",
    help: "Bytes MemKV may use on each drive; the oldest segments are reclaimed beyond it. `auto`: 90% of the file system's free space plus what MemKV already stores there.",
    role: Role::Server,
};
const P_DURABILITY: Param = Param {
    key: "durability",
    env: "MEMKV_DURABILITY",
    default: Some("async"),
    range: "`none`, `async` or `sync`",
    help: "When a PUT is on stable storage: `sync` before it is acknowledged (group commit); `async` within `flush_interval_ms` after; `none` never forced (a clean shutdown still flushes). Needs `data_dir` unless `async`.",
    role: Role::Server,
};
const P_FLUSH_INTERVAL_MS: Param = Param {
    key: "flush_interval_ms",
    env: "MEMKV_FLUSH_INTERVAL_MS",
    default: Some("100"),
    range: "1..=60000",
    help: "Under `async` durability, longest time between a write reaching a drive and its fdatasync, in milliseconds.",
    role: Role::Server,
};
const P_DRIVE_QUEUE: Param = Param {
    key: "drive_queue",
    env: "MEMKV_DRIVE_QUEUE",
    default: Some("256MiB"),
    range: "a size of at least 1 MiB; at most a quarter of `memory` is used",
    help: "Bytes of acknowledged writes that may wait for the drives; PUTs wait for room when it is full (backpressure).",
    role: Role::Server,
};
const P_SEGMENT_SIZE: Param = Param {
    key: "segment_size",
    env: "MEMKV_SEGMENT_SIZE",
    default: Some("64MiB"),
    range: "1MiB..=1GiB",
    help: "Size of the append-only segment files on the drives, the unit of eviction and space reuse.",
    role: Role::Server,
};

/// Every setting, shared ones first, then the client's, then the node's.
pub const PARAMS: &[Param] = &[
    P_AUTH_KEY,
    P_LICENSE,
    P_LICENSE_PUBKEY,
    P_CONFIG,
    P_RDMA_GID_INDEX,
    P_RDMA_TRAFFIC_CLASS,
    P_RDMA_SERVICE_LEVEL,
    P_RDMA_TIMEOUT_SECS,
    P_RDMA_CQ_POLL_US,
    P_RDMA_QUEUE_DEPTH,
    P_SERVERS,
    P_TRANSPORT,
    P_NUM_CONNECTIONS,
    P_CONNECT_TIMEOUT_MS,
    P_OP_TIMEOUT_MS,
    P_NAMESPACE,
    P_PAYLOAD_MAC,
    P_IO_THREADS,
    P_RDMA_DEVICES,
    P_GPU_NIC_MAP,
    P_STAGING_SIZE_MB,
    P_STAGING_SLOT_MB,
    P_MR_CACHE_MAX_ENTRIES,
    P_MR_CACHE_MAX_GB,
    P_PROMETHEUS_BIND,
    P_STATS_INTERVAL_S,
    P_THREADS,
    P_LISTEN,
    P_ADMIN_LISTEN,
    P_SHM_SOCKET,
    P_RDMA_DEVICE,
    P_MEMORY,
    P_PREFAULT,
    P_MAX_OBJECT_SIZE,
    P_NODE_ID,
    P_MAX_CLOCK_DRIFT_MS,
    P_REQUIRE_PAYLOAD_MAC,
    P_PARTIAL_TIMEOUT_MS,
    P_LEASE_TIMEOUT_MS,
    P_SHUTDOWN_GRACE_MS,
    P_DATA_DIR,
    P_DRIVE_CAPACITY,
    P_DURABILITY,
    P_FLUSH_INTERVAL_MS,
    P_DRIVE_QUEUE,
    P_SEGMENT_SIZE,
];

/// The settings a component with `role` reads: its own and the shared ([`Role::Both`]) ones.
/// `params_for(Role::Both)` yields every setting.
pub fn params_for(role: Role) -> impl Iterator<Item = &'static Param> {
    PARAMS.iter().filter(move |p| p.role.read_by(role))
}

/// Finds a setting by its key (`num_connections`) or env name (`MEMKV_NUM_CONNECTIONS`),
/// case-insensitive; `-` may stand for `_` (`num-connections`).
pub fn find_param(name: &str) -> Option<&'static Param> {
    let n = name.trim().to_ascii_lowercase().replace('-', "_");
    let n = n.strip_prefix("memkv_").unwrap_or(&n);
    PARAMS.iter().find(|p| p.key == n)
}

/// Markdown tables (`| key | env var | default | accepted values | meaning |`) of every setting,
/// one per role: the shared settings, then the client's, then the node's. This is the generated
/// part of `docs/configuration.md`.
pub fn markdown_reference() -> String {
    let mut out = String::new();
    for (role, title) in [(Role::Both, "Client and server"), (Role::Client, "Client"), (Role::Server, "Server")] {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("### {title}\n\n"));
        out.push_str("| key | env var | flag | default | accepted values | meaning |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for p in PARAMS.iter().filter(|p| p.role == role) {
            let default = match p.default {
                Some("") => "(empty)".to_string(),
                Some(d) => format!("`{d}`"),
                None if p.is_required() => "**required**".to_string(),
                None if p.is_derived() => "derived".to_string(),
                None => "unset".to_string(),
            };
            out.push_str(&format!(
                "| `{}` | `{}` | `{}` | {} | {} | {} |\n",
                p.key,
                p.env,
                p.flag(),
                md_cell(&default),
                md_cell(p.range),
                md_cell(p.help)
            ));
        }
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// CLI flags or NIXL plugin params ([`Sources::explicit`]).
    Explicit,
    /// A `MEMKV_*` environment variable.
    Env,
    /// The config file at this path.
    File(PathBuf),
    /// The default in [`PARAMS`].
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Explicit => f.write_str("from the command line / plugin params"),
            Self::Env => f.write_str("from the environment"),
            Self::File(p) => write!(f, "from {}", p.display()),
            Self::Default => f.write_str("default"),
        }
    }
}

/// Why a configuration could not be resolved. Every message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value was given (or defaulted) but is not acceptable.
    #[error("{env}={value} ({origin}) is invalid: {reason}")]
    Invalid {
        /// The setting's env name.
        env: &'static str,
        /// The setting's key.
        key: &'static str,
        /// The value as shown: quoted, and redacted for the cluster key.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// What is accepted, and the fix where there is one.
        reason: String,
    },
    /// A required setting is given nowhere.
    #[error("{env} is not set: set it (or `{key}` in the config file) to {expected}")]
    Missing {
        /// The setting's env name.
        env: &'static str,
        /// The setting's key.
        key: &'static str,
        /// What to set it to.
        expected: &'static str,
    },
    /// An explicit value or config-file key names no setting.
    #[error("unknown setting `{key}` ({origin}).{hint} Valid keys: {valid}")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// Where it was given.
        origin: Origin,
        /// `" Did you mean ...?"`, or empty.
        hint: String,
        /// Every valid key, comma-separated.
        valid: String,
    },
    /// An explicit value for a setting this component does not read (a node setting given as a
    /// plugin param): almost certainly a mistake, so it is refused rather than ignored.
    #[error(
        "`{key}` ({env}) is {} setting, which {} does not read; remove it from the command line / plugin params",
        if *reader == Role::Client { "a memkv-server" } else { "a client" },
        if *reader == Role::Client { "a client (the memkv CLI, the NIXL plugin)" } else { "memkv-server" }
    )]
    NotRead {
        /// The key as given.
        key: String,
        /// The setting's env name.
        env: &'static str,
        /// The component that resolved the settings.
        reader: Role,
    },
    /// One setting given twice among the explicit values, with different values.
    #[error(
        "{env} is given twice (from the command line / plugin params) with different values: {given}; give it once"
    )]
    Duplicate {
        /// The setting's env name.
        env: &'static str,
        /// Both spellings with their values (the cluster key redacted).
        given: String,
    },
    /// The config file could not be read or parsed, or holds something other than a flat map.
    #[error("config file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, on one line.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Typed values
// ---------------------------------------------------------------------------------------------

/// One node a client connects to. The host is a DNS name (lower-cased) or an IP address (IPv6
/// without brackets, in canonical form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    /// DNS name or IP address.
    pub host: String,
    /// TCP port, 1..=65535.
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for ServerAddr {
    type Err = String;

    /// Parses `host:port`, `host` (port [`DEFAULT_PORT`]), `[v6]:port` or `[v6]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty server address".to_string());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return Err(format!("{s:?} has `[` without `]`; write IPv6 addresses in brackets, e.g. [::1]:9900"));
            };
            let ip: Ipv6Addr = inside.parse().map_err(|_| format!("{inside:?} in brackets is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                a => match a.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return Err(format!("unexpected {a:?} after `]` in {s:?}")),
                },
            };
            (ip.to_string(), port)
        } else {
            match s.matches(':').count() {
                0 => (s.to_string(), None),
                1 => match s.split_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (s.to_string(), None),
                },
                _ => {
                    return Err(format!("{s:?}: write IPv6 addresses in brackets, e.g. [::1]:9900"));
                }
            }
        };
        if !host.contains(':') {
            check_hostname(&host).map_err(|e| format!("{s:?}: {e}"))?;
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(format!("{s:?}: port must be an integer in 1..=65535")),
            },
        };
        Ok(Self { host: host.to_ascii_lowercase(), port })
    }
}

fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("empty host".to_string());
    }
    if h.len() > 253 {
        return Err("host longer than 253 characters".to_string());
    }
    if let Some(c) = h.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        return Err(format!("host has {c:?}; expected a DNS name or an IP address"));
    }
    Ok(())
}

/// Parses a `servers` value: comma-separated entries, none empty, no duplicates, 1..=1024.
fn parse_servers<'a>(entries: impl Iterator<Item = &'a str>) -> Result<Vec<ServerAddr>, String> {
    let mut out: Vec<ServerAddr> = Vec::new();
    for (i, e) in entries.enumerate() {
        let n = i + 1;
        let e = e.trim();
        if e.is_empty() {
            return Err(format!("entry {n} is empty"));
        }
        if e.contains(',') {
            return Err(format!("entry {n} ({e:?}) holds a comma; give one server per list item"));
        }
        let a: ServerAddr = e.parse().map_err(|m| format!("entry {n}: {m}"))?;
        if let Some(j) = out.iter().position(|o| *o == a) {
            return Err(format!("entry {n} ({a}) duplicates entry {}", j + 1));
        }
        out.push(a);
        if out.len() > MAX_SERVERS {
            return Err(format!("more than {MAX_SERVERS} entries"));
        }
    }
    if out.is_empty() {
        return Err("no servers listed".to_string());
    }
    Ok(out)
}

/// The data transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP only: never touches verbs or shared memory.
    Tcp,
    /// One-sided RDMA; an error where it cannot be used.
    Rdma,
    /// Same-host shared memory; an error where it cannot be used.
    Shm,
    /// Shared memory for a node on this host, RDMA where both ends have a usable device, else TCP.
    Auto,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Rdma => "rdma",
            Self::Shm => "shm",
            Self::Auto => "auto",
        })
    }
}

impl FromStr for Transport {
    type Err = String;

    /// `auto`, `rdma`, `shm` or `tcp`, case-insensitive.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "rdma" => Ok(Self::Rdma),
            "shm" => Ok(Self::Shm),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("expected {}", P_TRANSPORT.range)),
        }
    }
}

/// Parses a boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, case-insensitive.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true/false, 1/0, yes/no or on/off".to_string()),
    }
}

/// Parses a size: plain bytes (`4096`), or a number with a unit `B`, `K`/`KB`/`KiB`,
/// `M`/`MB`/`MiB`, `G`/`GB`/`GiB` or `T`/`TB`/`TiB` (case-insensitive, optional space before the
/// unit). **All units are binary**: `1 KB` = `1 KiB` = 1024 bytes, `1 MB` = 1024² bytes. A
/// decimal fraction is accepted when the result is a whole number of bytes (`1.5GiB`). Sizes
/// above `u64::MAX` bytes are rejected.
///
/// ```
/// use memkv::config::{format_size, parse_size};
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert_eq!(parse_size("64 KB"), Ok(64 * 1024));
/// assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
/// assert!(parse_size("10 MBps").is_err());
/// assert_eq!(format_size(3 << 29), "1.5 GiB");
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    const EXPECTED: &str =
        "expected bytes or a number with a unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB (binary: 1K = 1024 B)";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty size; {EXPECTED}"));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => return Err(format!("not a size; {EXPECTED}")),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (num.contains('.') && !digits(frac)) {
        return Err(format!("not a size; {EXPECTED}"));
    }
    if frac.len() > 18 {
        return Err("too many decimal places in size".to_string());
    }
    let too_large = || format!("size too large (at most {} bytes)", u64::MAX);
    let int_v: u128 = int.parse().map_err(|_| too_large())?;
    let scale = 10u128.pow(frac.len() as u32);
    let frac_v: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| too_large())? };
    let frac_bytes = frac_v * u128::from(mult);
    if !frac_bytes.is_multiple_of(scale) {
        return Err("size is not a whole number of bytes".to_string());
    }
    let total =
        int_v.checked_mul(u128::from(mult)).and_then(|v| v.checked_add(frac_bytes / scale)).ok_or_else(too_large)?;
    u64::try_from(total).map_err(|_| too_large())
}

/// Formats a size for people: bytes below 1 MiB (`"4096 B"`), otherwise the largest of MiB,
/// GiB, TiB with up to three decimals (`"2 MiB"`, `"1.5 GiB"`). A value that is not exact at
/// three decimals is shown rounded to two, followed by the exact byte count
/// (`"953.67 MiB (1000000000 B)"`).
pub fn format_size(n: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB")] {
        if n >= unit {
            let (n, unit) = (u128::from(n), u128::from(unit));
            if (n * 1000).is_multiple_of(unit) {
                let milli = n * 1000 / unit;
                let (whole, frac) = (milli / 1000, milli % 1000);
                if frac == 0 {
                    return format!("{whole} {name}");
                }
                let f = format!("{frac:03}");
                return format!("{whole}.{} {name}", f.trim_end_matches('0'));
            }
            let centi = (n * 100 + unit / 2) / unit;
            return format!("{}.{:02} {name} ({n} B)", centi / 100, centi % 100);
        }
    }
    format!("{n} B")
}

// ---------------------------------------------------------------------------------------------
// Resolved configurations
// ---------------------------------------------------------------------------------------------

/// Everything a client (library, CLI client commands, NIXL plugin) needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The nodes, in the order given.
    pub servers: Vec<ServerAddr>,
    /// The cluster key.
    pub auth_key: AuthKey,
    /// License file path or inline token.
    pub license: String,
    /// Extra trusted license public keys (comma-separated keys or files); `None` if unset.
    pub license_pubkey: Option<String>,
    /// Data transport.
    pub transport: Transport,
    /// Connections per node, 1..=64.
    pub num_connections: usize,
    /// Connect-and-handshake timeout.
    pub connect_timeout: Duration,
    /// Per-operation timeout.
    pub op_timeout: Duration,
    /// Key namespace; empty for none.
    pub namespace: String,
    /// MAC every payload.
    pub payload_mac: bool,
    /// Worker threads of the client's I/O runtime (NIXL plugin, CLI), 1..=64.
    pub io_threads: usize,
    /// Local memory: registration, MR cache, staging, NICs and GPUs.
    pub mem: MemConfig,
    /// RDMA queue-pair settings.
    pub rdma: RdmaConfig,
}

/// How a client registers and moves local memory (`src/mem`, `src/topo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemConfig {
    /// NIC names to use; empty for every one found.
    pub rdma_devices: Vec<String>,
    /// Operator overrides of the GPU → NIC map.
    pub gpu_nic_map: Vec<GpuNicRule>,
    /// Bytes of pinned staging memory; 0 for none.
    pub staging_size: u64,
    /// Bytes per staging slot.
    pub staging_slot: u64,
    /// Most registrations the MR cache keeps.
    pub mr_cache_max_entries: usize,
    /// Most registered bytes the MR cache keeps.
    pub mr_cache_max_bytes: u64,
    /// The client's Prometheus endpoint, if any.
    pub prometheus_bind: Option<SocketAddr>,
    /// Period of the summary log line; `None` for off.
    pub stats_interval: Option<Duration>,
}

impl Default for MemConfig {
    /// The defaults of [`PARAMS`].
    fn default() -> Self {
        Self {
            rdma_devices: Vec::new(),
            gpu_nic_map: Vec::new(),
            staging_size: 256 * MIB,
            staging_slot: 16 * MIB,
            mr_cache_max_entries: 65536,
            mr_cache_max_bytes: 1024 * GIB,
            prometheus_bind: None,
            stats_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// RDMA queue-pair settings, shared by clients and nodes (`src/transport/rdma.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaConfig {
    /// GID table index for RoCE; `None` picks the first RoCE v2 IPv4-mapped GID of the port.
    pub gid_index: Option<u8>,
    /// IP traffic class (DSCP << 2 | ECN) of RoCE packets.
    pub traffic_class: u8,
    /// InfiniBand service level, 0..=15.
    pub service_level: u8,
    /// A posted one-sided transfer not complete after this long fails its session.
    pub timeout: Duration,
    /// Busy-poll time of the completion queue before the polling task yields.
    pub cq_poll: Duration,
    /// Work requests in flight per queue pair.
    pub queue_depth: u32,
}

impl Default for RdmaConfig {
    /// The defaults of [`PARAMS`].
    fn default() -> Self {
        Self {
            gid_index: None,
            traffic_class: 0,
            service_level: 0,
            timeout: Duration::from_secs(10),
            cq_poll: Duration::from_micros(50),
            queue_depth: 128,
        }
    }
}

/// The RDMA queue-pair flags of `memkv-server` and of `memkv` (global there), flattened into
/// both command lines; [`pairs`](Self::pairs) gives them as explicit settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RdmaFlags {
    /// RoCE GID table index, or auto [env: MEMKV_RDMA_GID_INDEX] [default: auto]
    #[arg(long, global = true, value_name = "N")]
    pub rdma_gid_index: Option<String>,
    /// IP traffic class of RoCE packets, 0..=255 [env: MEMKV_RDMA_TRAFFIC_CLASS] [default: 0]
    #[arg(long, global = true, value_name = "N")]
    pub rdma_traffic_class: Option<String>,
    /// InfiniBand service level, 0..=15 [env: MEMKV_RDMA_SERVICE_LEVEL] [default: 0]
    #[arg(long, global = true, value_name = "N")]
    pub rdma_service_level: Option<String>,
    /// One-sided transfer timeout, seconds [env: MEMKV_RDMA_TIMEOUT_SECS] [default: 10]
    #[arg(long, global = true, value_name = "S")]
    pub rdma_timeout_secs: Option<String>,
    /// Completion-queue busy-poll time, microseconds [env: MEMKV_RDMA_CQ_POLL_US] [default: 50]
    #[arg(long, global = true, value_name = "US")]
    pub rdma_cq_poll_us: Option<String>,
    /// One-sided work requests in flight per queue pair [env: MEMKV_RDMA_QUEUE_DEPTH] [default: 128]
    #[arg(long, global = true, value_name = "N")]
    pub rdma_queue_depth: Option<String>,
}

impl RdmaFlags {
    /// (setting key, value) of each flag.
    pub fn pairs(&self) -> [(&'static str, &Option<String>); 6] {
        [
            ("rdma_gid_index", &self.rdma_gid_index),
            ("rdma_traffic_class", &self.rdma_traffic_class),
            ("rdma_service_level", &self.rdma_service_level),
            ("rdma_timeout_secs", &self.rdma_timeout_secs),
            ("rdma_cq_poll_us", &self.rdma_cq_poll_us),
            ("rdma_queue_depth", &self.rdma_queue_depth),
        ]
    }
}

/// Which GPU a [`GpuNicRule`] names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GpuRef {
    /// A CUDA device index, as the process sees it (after `CUDA_VISIBLE_DEVICES`).
    Index(u32),
    /// A PCI bus id, normalised by [`normalize_bdf`] (`0000:17:00.0`).
    BusId(String),
}

impl fmt::Display for GpuRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(i) => write!(f, "{i}"),
            Self::BusId(b) => f.write_str(b),
        }
    }
}

/// One `MEMKV_GPU_NIC_MAP` entry: the GPU and the NICs it uses, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuNicRule {
    /// The GPU.
    pub gpu: GpuRef,
    /// Its NICs.
    pub nics: Vec<String>,
}

/// Normalises a PCI address to sysfs form, `dddd:bb:dd.f` in lower case: accepts NVML's 8-digit
/// domain (`00000000:17:00.0`), CUDA's upper case, and a missing domain (`17:00.0`).
///
/// ```
/// use memkv::config::normalize_bdf;
/// assert_eq!(normalize_bdf("00000000:17:00.0").unwrap(), "0000:17:00.0");
/// assert_eq!(normalize_bdf("0000:AB:00.1").unwrap(), "0000:ab:00.1");
/// assert_eq!(normalize_bdf("3b:00.0").unwrap(), "0000:3b:00.0");
/// assert!(normalize_bdf("mlx5_0").is_err());
/// ```
pub fn normalize_bdf(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a PCI address; expected `dddd:bb:dd.f`, e.g. 0000:17:00.0");
    let t = s.trim();
    let parts: Vec<&str> = t.split(':').collect();
    let (dom, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (*d, *b, *df),
        [b, df] => ("0", *b, *df),
        _ => return Err(bad()),
    };
    let (dev, fun) = devfn.split_once('.').ok_or_else(bad)?;
    let hex = |x: &str, max_len: usize| {
        if x.is_empty() || x.len() > max_len {
            return Err(bad());
        }
        u32::from_str_radix(x, 16).map_err(|_| bad())
    };
    let (dom, bus, dev, fun) = (hex(dom, 8)?, hex(bus, 2)?, hex(dev, 2)?, hex(fun, 1)?);
    if dom > 0xffff || dev > 0x1f || fun > 7 {
        return Err(bad());
    }
    Ok(format!("{dom:04x}:{bus:02x}:{dev:02x}.{fun:x}"))
}

/// Checks an RDMA device name as the kernel spells them (`mlx5_0`, `rocep1s0f0`, `irdma-eth0`).
fn check_nic_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(format!(
            "{n:?} is not an RDMA device name (letters, digits, `_`, `-`, `.`; see `ls /sys/class/infiniband`)"
        ));
    }
    Ok(())
}

/// Parses `MEMKV_RDMA_DEVICES`: comma-separated names, no duplicates; empty for none.
pub fn parse_rdma_devices(s: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for n in s.split(',').map(str::trim) {
        if n.is_empty() {
            return Err("an entry is empty; list device names separated by single commas".into());
        }
        check_nic_name(n)?;
        if out.iter().any(|o| o == n) {
            return Err(format!("{n:?} is listed twice"));
        }
        out.push(n.to_string());
    }
    Ok(out)
}

/// Parses `MEMKV_GPU_NIC_MAP` (see its [`Param`]): `0=mlx5_0,0000:3b:00.0=mlx5_1+mlx5_2`.
///
/// ```
/// use memkv::config::{parse_gpu_nic_map, GpuRef};
/// let m = parse_gpu_nic_map("0=mlx5_0, 0000:3B:00.0=mlx5_1+mlx5_2").unwrap();
/// assert_eq!(m[0].gpu, GpuRef::Index(0));
/// assert_eq!(m[1].gpu, GpuRef::BusId("0000:3b:00.0".into()));
/// assert_eq!(m[1].nics, ["mlx5_1", "mlx5_2"]);
/// assert!(parse_gpu_nic_map("0=mlx5_0,0=mlx5_1").is_err());
/// ```
pub fn parse_gpu_nic_map(s: &str) -> Result<Vec<GpuNicRule>, String> {
    let mut out: Vec<GpuNicRule> = Vec::new();
    for entry in s.split(',').map(str::trim) {
        let Some((gpu, nics)) = entry.split_once('=') else {
            return Err(format!("entry {entry:?} has no `=`; write GPU=NIC, e.g. 0=mlx5_0"));
        };
        let gpu = gpu.trim();
        let gpu = if !gpu.is_empty() && gpu.chars().all(|c| c.is_ascii_digit()) {
            GpuRef::Index(gpu.parse().map_err(|_| format!("GPU index {gpu:?} is too large"))?)
        } else {
            GpuRef::BusId(normalize_bdf(gpu).map_err(|e| format!("entry {entry:?}: {e}, or a CUDA device index"))?)
        };
        let nics: Vec<String> = nics.split('+').map(|n| n.trim().to_string()).collect();
        for n in &nics {
            check_nic_name(n).map_err(|e| format!("entry {entry:?}: {e}"))?;
        }
        if out.iter().any(|r| r.gpu == gpu) {
            return Err(format!("GPU {gpu} is mapped twice"));
        }
        out.push(GpuNicRule { gpu, nics });
    }
    Ok(out)
}

/// Everything a node needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads of the node's runtime, 1..=256.
    pub threads: usize,
    /// Data-plane listen address.
    pub listen: SocketAddr,
    /// Admin/metrics listen address.
    pub admin_listen: SocketAddr,
    /// The Unix socket of the same-host shared-memory transport: a filesystem path, or `@name`
    /// for a Linux abstract socket; `None` for off.
    pub shm_socket: Option<String>,
    /// The RDMA device the arena is registered with for one-sided transfers; `None`: no RDMA.
    pub rdma_device: Option<String>,
    /// RDMA queue-pair settings.
    pub rdma: RdmaConfig,
    /// Bytes reserved for objects (≥ 1 MiB).
    pub memory: u64,
    /// Commit all of `memory` at start-up.
    pub prefault: bool,
    /// Largest object in bytes, 1..=`memory`.
    pub max_object_size: u64,
    /// The node's name.
    pub node_id: String,
    /// The cluster key.
    pub auth_key: AuthKey,
    /// License file path or inline token.
    pub license: String,
    /// Extra trusted license public keys (comma-separated keys or files); `None` if unset.
    pub license_pubkey: Option<String>,
    /// Largest accepted client clock difference at the handshake.
    pub max_clock_drift: Duration,
    /// Refuse clients without payload MACs.
    pub require_payload_mac: bool,
    /// How long a partly written ranged object waits for its other ranges.
    pub partial_timeout: Duration,
    /// How long a one-sided reservation or pin may stay unfinished before it is dropped.
    pub lease_timeout: Duration,
    /// How long a stopping node lets in-flight requests finish.
    pub shutdown_grace: Duration,
    /// The drive tier; `data_dirs` empty means DRAM only.
    pub storage: StorageConfig,
}

/// When a PUT is on stable storage (see docs/storage.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Never forced (a clean shutdown still flushes).
    None,
    /// Within the flush interval after the acknowledgement.
    Async,
    /// Before the acknowledgement.
    Sync,
}

impl FromStr for Durability {
    type Err = String;

    /// `none`, `async` or `sync`, case-insensitive.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "async" => Ok(Self::Async),
            "sync" => Ok(Self::Sync),
            _ => Err(format!("expected {}", P_DURABILITY.range)),
        }
    }
}

/// The drive tier's settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// One directory per drive; empty: DRAM only.
    pub data_dirs: Vec<PathBuf>,
    /// Bytes per drive; `None`: measured at start (`auto`).
    pub drive_capacity: Option<u64>,
    /// When a PUT is on stable storage.
    pub durability: Durability,
    /// Longest wait before an `async` write is synced.
    pub flush_interval: Duration,
    /// Bytes of writes that may wait for the drives.
    pub drive_queue: u64,
    /// Segment file size.
    pub segment_size: u64,
}

/// Where values come from. `explicit` keys may be given as the param key (`"num_connections"`)
/// or the env name (`"MEMKV_NUM_CONNECTIONS"`), case-insensitive (`-` may stand for `_`); an
/// unknown explicit key is an error listing the valid keys, and so is an explicit value for a
/// setting the resolving component does not read (a node setting given to a client). In a config
/// file such keys are ignored, so that one file can serve nodes and clients.
pub struct Sources<'a> {
    /// CLI flags / plugin params; highest precedence.
    pub explicit: &'a BTreeMap<String, String>,
    /// Looks up an environment variable by name.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    /// The process environment (`std::env::var(name).ok()`; non-UTF-8 values count as unset).
    pub fn process_env() -> impl Fn(&str) -> Option<String> + use<> {
        |name: &str| std::env::var(name).ok()
    }
}

impl ClientConfig {
    /// Resolves the client settings from `src` (see the module docs for the chain).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use memkv::config::{ClientConfig, ConfigError, Sources, Transport};
    ///
    /// // Plugin params / CLI flags, by key or by env name.
    /// let explicit = BTreeMap::from([("num_connections".to_string(), "8".to_string())]);
    /// // The environment; `Sources::process_env()` reads the real one.
    /// let env = |name: &str| match name {
    ///     "MEMKV_SERVERS" => Some("node-a:9900,node-b,[fd00::1]:9901".to_string()),
    ///     "MEMKV_AUTH_KEY" => Some("ab".repeat(32)),
    ///     "MEMKV_LICENSE" => Some("/etc/memkv/license".to_string()),
    ///     "MEMKV_NUM_CONNECTIONS" => Some("2".to_string()), // below the explicit value
    ///     _ => None,
    /// };
    /// let cfg = ClientConfig::resolve(&Sources { explicit: &explicit, env: &env })?;
    /// assert_eq!(cfg.num_connections, 8);
    /// assert_eq!(cfg.servers[1].to_string(), "node-b:9900");
    /// assert_eq!(cfg.transport, Transport::Auto);
    ///
    /// let bad = BTreeMap::from([("MEMKV_NUM_CONNECTIONS".to_string(), "abc".to_string())]);
    /// let err = ClientConfig::resolve(&Sources { explicit: &bad, env: &env }).unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "MEMKV_NUM_CONNECTIONS=\"abc\" (from the command line / plugin params) is invalid: \
    ///      expected an integer in 1..=64"
    /// );
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn resolve(src: &Sources<'_>) -> Result<Self, ConfigError> {
        let r = Resolver::new(src, Role::Client)?;
        let auth_key = r.auth_key()?;
        let license = r.license()?;
        let license_pubkey = r.license_pubkey()?;
        let servers = {
            let g = r.required(&P_SERVERS)?;
            match &g.value {
                Val::One(s) => parse_servers(s.split(',')),
                Val::List(l) => parse_servers(l.iter().map(String::as_str)),
            }
            .map_err(|e| g.invalid(format!("{e}; expected {}", P_SERVERS.range)))?
        };
        let transport = r.parse_with(&P_TRANSPORT, |s| s.parse::<Transport>())?;
        let num_connections = r.int(&P_NUM_CONNECTIONS, 1, 64)? as usize;
        let connect_timeout = r.millis(&P_CONNECT_TIMEOUT_MS, 10, 120_000)?;
        let op_timeout = r.millis(&P_OP_TIMEOUT_MS, 10, 3_600_000)?;
        let namespace = r.parse_with(&P_NAMESPACE, |s| {
            let checked = if s.contains('/') {
                Err("`/` is not allowed".to_string())
            } else {
                check_printable(s, MAX_NAMESPACE_LEN)
            };
            checked.map(|()| s.to_string()).map_err(|e| format!("{e}; expected {}", P_NAMESPACE.range))
        })?;
        let payload_mac = r.parse_with(&P_PAYLOAD_MAC, parse_bool)?;
        // More threads than cores only makes the runtime compete with the node and the
        // application on small hosts; past 4 a client gains little (docs/benchmarks.md).
        let io_threads = r.threads(&P_IO_THREADS, 4, 64)?;
        let mem = r.mem()?;
        let rdma = r.rdma()?;
        Ok(Self {
            servers,
            auth_key,
            license,
            license_pubkey,
            transport,
            num_connections,
            connect_timeout,
            op_timeout,
            namespace,
            payload_mac,
            io_threads,
            mem,
            rdma,
        })
    }

    /// Resolves from the process environment alone (plus `MEMKV_CONFIG`'s file).
    pub fn from_env() -> Result<Self, ConfigError> {
        let explicit = BTreeMap::new();
        let env = Sources::process_env();
        Self::resolve(&Sources { explicit: &explicit, env: &env })
    }
}

impl ServerConfig {
    /// Resolves the node settings from `src` (see the module docs for the chain).
    pub fn resolve(src: &Sources<'_>) -> Result<Self, ConfigError> {
        let r = Resolver::new(src, Role::Server)?;
        let auth_key = r.auth_key()?;
        let license = r.license()?;
        let license_pubkey = r.license_pubkey()?;

        let listen_g = r.or_default(&P_LISTEN);
        let listen = listen_g.parse(parse_socket_addr)?;
        let admin_listen = match r.get(&P_ADMIN_LISTEN) {
            Some(g) => {
                let a = g.parse(parse_socket_addr)?;
                let same_ip = a.ip() == listen.ip() || a.ip().is_unspecified() || listen.ip().is_unspecified();
                if a.port() != 0 && a.port() == listen.port() && same_ip {
                    return Err(g.invalid(format!("it uses the data port of `listen` ({listen}); choose another port")));
                }
                a
            }
            None => match listen.port() {
                0 => SocketAddr::new(listen.ip(), 0),
                65535 => {
                    return Err(listen_g.invalid(
                        "port 65535 leaves no port for the derived admin address (data port + 1); \
                         set MEMKV_ADMIN_LISTEN or use a lower data port",
                    ));
                }
                p => SocketAddr::new(listen.ip(), p + 1),
            },
        };

        let shm_socket = r.parse_with(&P_SHM_SOCKET, |s| parse_shm_socket(s, listen))?;
        let rdma_device = r.parse_with(&P_RDMA_DEVICE, |s| {
            if s.is_empty() {
                return Ok(None);
            }
            check_nic_name(s).map_err(|e| format!("{e}; expected {}", P_RDMA_DEVICE.range))?;
            Ok(Some(s.to_string()))
        })?;
        let rdma = r.rdma()?;

        let memory_g = r.or_default(&P_MEMORY);
        let memory = memory_g.parse(|s| {
            let v = parse_size(s)?;
            if v < MIN_MEMORY {
                return Err(format!("{} is below the minimum; expected {}", format_size(v), P_MEMORY.range));
            }
            Ok(v)
        })?;
        let max_g = r.or_default(&P_MAX_OBJECT_SIZE);
        let max = max_g.parse(parse_size)?;
        let max_object_size = if max_g.origin == Origin::Default {
            // The default never conflicts with a smaller `memory`: it shrinks to fit.
            max.min(memory)
        } else if max == 0 {
            return Err(max_g.invalid(format!("expected {}", P_MAX_OBJECT_SIZE.range)));
        } else if max > crate::server::arena::MAX_ALLOC {
            return Err(max_g.invalid(format!(
                "{} exceeds the largest object a node can hold (256 GiB - 64 B); expected {}",
                format_size(max),
                P_MAX_OBJECT_SIZE.range
            )));
        } else if max > memory {
            return Err(max_g.invalid(format!(
                "{} exceeds MEMKV_MEMORY={} ({}) = {}; expected a size from 1 B up to it: \
                 lower MEMKV_MAX_OBJECT_SIZE or raise MEMKV_MEMORY",
                format_size(max),
                memory_g.value.shown(&P_MEMORY),
                memory_g.origin,
                format_size(memory)
            )));
        } else {
            max
        };
        let node_id = match r.get(&P_NODE_ID) {
            Some(g) => g.parse(|s| {
                check_printable(s, MAX_NODE_ID_LEN).map_err(|e| format!("{e}; expected {}", P_NODE_ID.range))?;
                Ok(s.to_string())
            })?,
            None => listen.to_string(),
        };
        let max_clock_drift = r.millis(&P_MAX_CLOCK_DRIFT_MS, 100, 3_600_000)?;
        let require_payload_mac = r.parse_with(&P_REQUIRE_PAYLOAD_MAC, parse_bool)?;
        let prefault = r.parse_with(&P_PREFAULT, parse_bool)?;
        let partial_timeout = r.millis(&P_PARTIAL_TIMEOUT_MS, 100, 3_600_000)?;
        let lease_timeout = r.millis(&P_LEASE_TIMEOUT_MS, 100, 3_600_000)?;
        let shutdown_grace = r.millis(&P_SHUTDOWN_GRACE_MS, 0, 600_000)?;
        let storage = storage(&r)?;
        let threads = r.threads(&P_THREADS, usize::MAX, 256)?;
        Ok(Self {
            threads,
            listen,
            admin_listen,
            shm_socket,
            rdma_device,
            rdma,
            memory,
            prefault,
            max_object_size,
            node_id,
            auth_key,
            license,
            license_pubkey,
            max_clock_drift,
            require_payload_mac,
            partial_timeout,
            lease_timeout,
            shutdown_grace,
            storage,
        })
    }
}

fn storage(r: &Resolver<'_>) -> Result<StorageConfig, ConfigError> {
    let data_dirs: Vec<PathBuf> = match r.get(&P_DATA_DIR) {
        None => Vec::new(),
        Some(g) => {
            let items: Vec<String> = match &g.value {
                Val::One(s) => s.split(',').map(|d| d.trim().to_string()).collect(),
                Val::List(l) => l.iter().map(|d| d.trim().to_string()).collect(),
            };
            if items.iter().any(String::is_empty) {
                return Err(g.invalid(format!("an entry is empty; expected {}", P_DATA_DIR.range)));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) =
                items.iter().find(|d| !seen.insert(Path::new(d.as_str()).components().collect::<PathBuf>()))
            {
                return Err(g.invalid(format!("{dup} is listed twice; give each drive once")));
            }
            if items.len() > usize::from(u16::MAX) {
                return Err(g.invalid("too many drives"));
            }
            items.into_iter().map(PathBuf::from).collect()
        }
    };
    let segment_size = r.parse_with(&P_SEGMENT_SIZE, |s| match parse_size(s)? {
        v if (MIB..=GIB).contains(&v) => Ok(v),
        _ => Err(format!("expected {}", P_SEGMENT_SIZE.range)),
    })?;
    let drive_capacity = r.parse_with(&P_DRIVE_CAPACITY, |s| {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        let v = parse_size(s).map_err(|e| format!("{e}; expected {}", P_DRIVE_CAPACITY.range))?;
        if v < 4 * segment_size {
            return Err(format!(
                "{} is below 4 segments of {} (MEMKV_SEGMENT_SIZE); raise it or lower MEMKV_SEGMENT_SIZE",
                format_size(v),
                format_size(segment_size)
            ));
        }
        Ok(Some(v))
    })?;
    let durability_g = r.or_default(&P_DURABILITY);
    let durability = durability_g.parse(str::parse::<Durability>)?;
    if data_dirs.is_empty() && durability != Durability::Async {
        return Err(durability_g.invalid(
            "a DRAM-only node has nothing to make durable; set MEMKV_DATA_DIR (--data-dir) to one directory per drive",
        ));
    }
    let flush_interval = r.millis(&P_FLUSH_INTERVAL_MS, 1, 60_000)?;
    let drive_queue = r.parse_with(&P_DRIVE_QUEUE, |s| match parse_size(s)? {
        v if v >= MIB => Ok(v),
        _ => Err(format!("expected {}", P_DRIVE_QUEUE.range)),
    })?;
    Ok(StorageConfig { data_dirs, drive_capacity, durability, flush_interval, drive_queue, segment_size })
}

/// Longest Unix socket name: `sun_path` holds 108 bytes, including the terminating NUL of a path
/// or the leading NUL of an abstract name.
pub const MAX_UNIX_SOCKET_LEN: usize = 107;

/// The shared-memory socket of a node listening on `listen` (`MEMKV_SHM_SOCKET=auto`). A node
/// that binds port 0 names its socket after the port it got.
pub fn default_shm_socket(listen: SocketAddr) -> String {
    format!("@memkv-{listen}")
}

/// Parses `MEMKV_SHM_SOCKET`: `auto` (`@memkv-<listen>`), `off`, a path or `@name`.
fn parse_shm_socket(s: &str, listen: SocketAddr) -> Result<Option<String>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let name = if s.eq_ignore_ascii_case("auto") { default_shm_socket(listen) } else { s.to_string() };
    if name.contains('\0') {
        return Err(format!("it holds a NUL byte; expected {}", P_SHM_SOCKET.range));
    }
    let (what, body) = match name.strip_prefix('@') {
        Some(n) => ("abstract socket name after `@`", n),
        None => ("socket path", name.as_str()),
    };
    if body.is_empty() {
        return Err(format!("the {what} is empty; expected {}", P_SHM_SOCKET.range));
    }
    if body.len() > MAX_UNIX_SOCKET_LEN {
        return Err(format!(
            "the {what} is {} bytes, longer than the {MAX_UNIX_SOCKET_LEN} a Unix socket address holds (sun_path); \
             use a shorter path or an `@name` abstract socket",
            body.len()
        ));
    }
    Ok(Some(name))
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        if s.parse::<IpAddr>().is_ok() {
            "the port is missing; expected a socket address IP:PORT, e.g. 0.0.0.0:9900 or [::]:9900".to_string()
        } else {
            "expected a socket address IP:PORT (an IP, not a host name), e.g. 0.0.0.0:9900 or [::]:9900".to_string()
        }
    })
}

fn check_printable(s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{} bytes is too long", s.len()));
    }
    match s.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => Err(format!("{c:?} is not allowed")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The chain
// ---------------------------------------------------------------------------------------------

/// A raw value: one scalar, or (from a config file) a list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    One(String),
    List(Vec<String>),
}

impl Val {
    /// The value as error messages show it; the cluster key is never shown.
    fn shown(&self, p: &Param) -> String {
        match self {
            _ if p.key == P_AUTH_KEY.key => {
                let n = match self {
                    Val::One(s) => s.chars().count(),
                    Val::List(l) => l.len(),
                };
                format!("<redacted, {n} characters>")
            }
            Val::One(s) => format!("{s:?}"),
            Val::List(l) => format!("{l:?}"),
        }
    }
}

/// A value found somewhere in the chain.
struct Got {
    param: &'static Param,
    value: Val,
    origin: Origin,
}

impl Got {
    fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        invalid(self.param, &self.value, self.origin.clone(), reason)
    }

    /// Parses the (scalar) value with `f`; its error becomes the reason of an `Invalid`.
    fn parse<T>(&self, f: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        f(self.scalar()?).map_err(|e| self.invalid(e))
    }

    fn scalar(&self) -> Result<&str, ConfigError> {
        match &self.value {
            Val::One(s) => Ok(s),
            Val::List(_) => {
                Err(self.invalid(format!("expected a single value, not a list; expected {}", self.param.range)))
            }
        }
    }
}

fn invalid(p: &'static Param, v: &Val, origin: Origin, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { env: p.env, key: p.key, value: v.shown(p), origin, reason: one_line(&reason.into()) }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Trims; empty counts as unset.
fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn valid_keys() -> String {
    PARAMS.iter().map(|p| p.key).collect::<Vec<_>>().join(", ")
}

fn unknown_key(key: &str, origin: Origin) -> ConfigError {
    let norm = key.trim().to_ascii_lowercase().replace('-', "_");
    let bare = norm.strip_prefix("memkv_").unwrap_or(&norm);
    let hint = if let (Origin::File(_), Some(p)) = (&origin, PARAMS.iter().find(|p| p.key == bare)) {
        format!(" Did you mean `{}`? (File keys are lower-case, without the MEMKV_ prefix.)", p.key)
    } else {
        PARAMS
            .iter()
            .map(|p| (edit_distance(bare, p.key), p.key))
            .filter(|(d, _)| *d <= 2)
            .min()
            .map(|(_, k)| format!(" Did you mean `{k}`?"))
            .unwrap_or_default()
    };
    ConfigError::UnknownKey { key: key.to_string(), origin, hint, valid: valid_keys() }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

struct Resolver<'a> {
    role: Role,
    /// Param key → (key as given, value); empty values already dropped.
    explicit: BTreeMap<&'static str, (String, String)>,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<(PathBuf, BTreeMap<String, Val>)>,
}

impl<'a> Resolver<'a> {
    fn new(src: &Sources<'a>, role: Role) -> Result<Self, ConfigError> {
        let mut explicit: BTreeMap<&'static str, (String, String)> = BTreeMap::new();
        for (k, v) in src.explicit {
            let Some(p) = find_param(k) else {
                return Err(unknown_key(k, Origin::Explicit));
            };
            let Some(v) = non_empty(v) else { continue };
            if !p.role.read_by(role) {
                return Err(ConfigError::NotRead { key: k.clone(), env: p.env, reader: role });
            }
            if let Some((first, first_value)) = explicit.get(p.key) {
                if *first_value != v {
                    let shown = |v: &str| Val::One(v.to_string()).shown(p);
                    return Err(ConfigError::Duplicate {
                        env: p.env,
                        given: format!("`{first}`={} and `{k}`={}", shown(first_value), shown(&v)),
                    });
                }
                continue;
            }
            explicit.insert(p.key, (k.clone(), v));
        }
        let mut r = Self { role, explicit, env: src.env, file: None };
        if let Some(g) = r.get(&P_CONFIG) {
            let path = PathBuf::from(g.scalar()?);
            let values = load_file(&path, role).map_err(|e| match e {
                LoadError::Extension => {
                    g.invalid(format!("expected {}; rename the file to match its format", P_CONFIG.range))
                }
                LoadError::Read(e) => ConfigError::File {
                    path: path.clone(),
                    reason: one_line(&format!("cannot read it (named by {} {}): {e}", P_CONFIG.env, g.origin)),
                },
                LoadError::Other(e) => e,
            })?;
            r.file = Some((path, values));
        }
        Ok(r)
    }

    /// The value from the highest source that has one; `None` if unset everywhere.
    fn get(&self, p: &'static Param) -> Option<Got> {
        debug_assert!(p.role.read_by(self.role));
        let got = |value, origin| Some(Got { param: p, value, origin });
        if let Some((_, v)) = self.explicit.get(p.key) {
            return got(Val::One(v.clone()), Origin::Explicit);
        }
        if let Some(v) = (self.env)(p.env).as_deref().and_then(non_empty) {
            return got(Val::One(v), Origin::Env);
        }
        if let Some((path, values)) = &self.file
            && let Some(v) = values.get(p.key)
        {
            return got(v.clone(), Origin::File(path.clone()));
        }
        None
    }

    /// The value from the chain, or the default (empty for a setting without one).
    fn or_default(&self, p: &'static Param) -> Got {
        self.get(p).unwrap_or_else(|| Got {
            param: p,
            value: Val::One(p.default.unwrap_or_default().to_string()),
            origin: Origin::Default,
        })
    }

    fn required(&self, p: &'static Param) -> Result<Got, ConfigError> {
        self.get(p).ok_or(ConfigError::Missing {
            env: p.env,
            key: p.key,
            expected: if p.key == P_SERVERS.key { "host:port[,host:port...]" } else { p.range },
        })
    }

    /// Parses a scalar setting that has a default.
    fn parse_with<T>(&self, p: &'static Param, f: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        self.or_default(p).parse(f)
    }

    fn int(&self, p: &'static Param, lo: u64, hi: u64) -> Result<u64, ConfigError> {
        self.parse_with(p, |s| match s.parse::<u64>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(format!("expected an integer in {lo}..={hi}")),
        })
    }

    fn millis(&self, p: &'static Param, lo: u64, hi: u64) -> Result<Duration, ConfigError> {
        self.int(p, lo, hi).map(Duration::from_millis)
    }

    /// A thread count in 1..=`hi`, or `auto`: the number of CPUs, at most `auto_max`.
    fn threads(&self, p: &'static Param, auto_max: usize, hi: usize) -> Result<usize, ConfigError> {
        self.parse_with(p, |s| match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(std::thread::available_parallelism().map_or(1, |n| n.get()).min(auto_max)),
            v => match v.parse::<usize>() {
                Ok(n) if (1..=hi).contains(&n) => Ok(n),
                _ => Err(format!("expected {}", p.range)),
            },
        })
    }

    /// The client's memory settings.
    fn mem(&self) -> Result<MemConfig, ConfigError> {
        let rdma_devices =
            self.parse_with(&P_RDMA_DEVICES, |s| if s.is_empty() { Ok(Vec::new()) } else { parse_rdma_devices(s) })?;
        let gpu_nic_map =
            self.parse_with(&P_GPU_NIC_MAP, |s| if s.is_empty() { Ok(Vec::new()) } else { parse_gpu_nic_map(s) })?;
        let staging_slot = self.int(&P_STAGING_SLOT_MB, 1, 1024)? * MIB;
        let slot_mb = staging_slot / MIB;
        let staging_size = self.parse_with(&P_STAGING_SIZE_MB, |s| match s.parse::<u64>() {
            Ok(0) => Ok(0),
            Ok(v) if (2 * slot_mb..=65536).contains(&v) => Ok(v * MIB),
            Ok(v) if v < 2 * slot_mb => Err(format!(
                "{v} MiB holds fewer than two {slot_mb} MiB slots (MEMKV_STAGING_SLOT_MB), so copies could not overlap \
                 the wire; give at least {} or lower MEMKV_STAGING_SLOT_MB (0 turns staging off)",
                2 * slot_mb
            )),
            _ => Err(format!("expected 0 or an integer in {}..=65536", 2 * slot_mb)),
        })?;
        let mr_cache_max_entries = self.int(&P_MR_CACHE_MAX_ENTRIES, 1, 1 << 24)? as usize;
        let mr_cache_max_bytes = self.int(&P_MR_CACHE_MAX_GB, 1, 1 << 20)? * GIB;
        let prometheus_bind = self.parse_with(&P_PROMETHEUS_BIND, |s| {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<SocketAddr>().map(Some).map_err(|_| format!("expected {}", P_PROMETHEUS_BIND.range))
        })?;
        let stats_interval = self.parse_with(&P_STATS_INTERVAL_S, |s| match s.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(v) if v <= 86_400 => Ok(Some(Duration::from_secs(v))),
            _ => Err(format!("expected {}", P_STATS_INTERVAL_S.range)),
        })?;
        Ok(MemConfig {
            rdma_devices,
            gpu_nic_map,
            staging_size,
            staging_slot,
            mr_cache_max_entries,
            mr_cache_max_bytes,
            prometheus_bind,
            stats_interval,
        })
    }

    /// The RDMA queue-pair settings, read by clients and nodes alike.
    fn rdma(&self) -> Result<RdmaConfig, ConfigError> {
        let gid_index = self.parse_with(&P_RDMA_GID_INDEX, |s| {
            if s.eq_ignore_ascii_case("auto") {
                return Ok(None);
            }
            s.parse::<u8>().map(Some).map_err(|_| format!("expected {}", P_RDMA_GID_INDEX.range))
        })?;
        let traffic_class = self.int(&P_RDMA_TRAFFIC_CLASS, 0, 255)? as u8;
        let service_level = self.int(&P_RDMA_SERVICE_LEVEL, 0, 15)? as u8;
        let timeout = Duration::from_secs(self.int(&P_RDMA_TIMEOUT_SECS, 1, 3600)?);
        let cq_poll = Duration::from_micros(self.int(&P_RDMA_CQ_POLL_US, 0, 100_000)?);
        let queue_depth = self.int(&P_RDMA_QUEUE_DEPTH, 1, 4096)? as u32;
        Ok(RdmaConfig { gid_index, traffic_class, service_level, timeout, cq_poll, queue_depth })
    }

    fn auth_key(&self) -> Result<AuthKey, ConfigError> {
        let g = self.required(&P_AUTH_KEY)?;
        g.parse(|s| AuthKey::parse(s).map_err(|e| e.to_string()))
    }

    fn license(&self) -> Result<String, ConfigError> {
        let g = self.required(&P_LICENSE)?;
        Ok(g.scalar()?.to_string())
    }

    fn license_pubkey(&self) -> Result<Option<String>, ConfigError> {
        match self.get(&P_LICENSE_PUBKEY) {
            Some(g) => Ok(Some(g.scalar()?.to_string())),
            None => Ok(None),
        }
    }
}

enum LoadError {
    Extension,
    Read(std::io::Error),
    Other(ConfigError),
}

/// Reads a config file into key → value, keeping only the settings `role` reads.
fn load_file(path: &Path, role: Role) -> Result<BTreeMap<String, Val>, LoadError> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let yaml = match ext.as_deref() {
        Some("yaml" | "yml") => true,
        Some("toml") => false,
        _ => return Err(LoadError::Extension),
    };
    let file_err =
        |reason: String| LoadError::Other(ConfigError::File { path: path.to_path_buf(), reason: one_line(&reason) });
    let text = std::fs::read_to_string(path).map_err(LoadError::Read)?;
    let entries = if yaml { yaml_entries(&text) } else { toml_entries(&text) }.map_err(file_err)?;
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        let Some(p) = PARAMS.iter().find(|p| p.key == key) else {
            return Err(LoadError::Other(unknown_key(&key, Origin::File(path.to_path_buf()))));
        };
        if p.key == P_CONFIG.key {
            return Err(file_err(
                "`config` cannot be set inside a config file; set MEMKV_CONFIG or pass `config` explicitly".to_string(),
            ));
        }
        let value = match value {
            Some(Val::List(_)) if p.key != P_SERVERS.key => {
                return Err(file_err(format!("`{key}` is a list; only `servers` may be a list")));
            }
            Some(Val::One(s)) => non_empty(&s).map(Val::One),
            v => v,
        };
        if let Some(v) = value
            && p.role.read_by(role)
        {
            out.insert(key, v);
        }
    }
    Ok(out)
}

type Entries = Vec<(String, Option<Val>)>;

const FILE_SHAPE: &str =
    "a config file is a flat map of setting keys to strings, integers or booleans (`servers` may be a list of strings)";

fn yaml_entries(text: &str) -> Result<Entries, String> {
    use serde_norway::Value as Y;
    let doc: Y = serde_norway::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let map = match doc {
        Y::Null => return Ok(Vec::new()),
        Y::Mapping(m) => m,
        _ => return Err(format!("the top level is not a mapping; {FILE_SHAPE}")),
    };
    let scalar = |v: &Y| -> Option<String> {
        match v {
            Y::Bool(b) => Some(b.to_string()),
            Y::Number(n) => Some(n.to_string()),
            Y::String(s) => Some(s.clone()),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for (k, v) in &map {
        let Y::String(key) = k else {
            return Err(format!("key {k:?} is not a string; {FILE_SHAPE}"));
        };
        let val = match v {
            Y::Null => None,
            Y::Sequence(items) => Some(Val::List(
                items
                    .iter()
                    .map(|i| {
                        scalar(i).ok_or_else(|| format!("`{key}` has a list item that is not a string; {FILE_SHAPE}"))
                    })
                    .collect::<Result<_, _>>()?,
            )),
            v => Some(Val::One(scalar(v).ok_or_else(|| format!("`{key}` is not a scalar; {FILE_SHAPE}"))?)),
        };
        out.push((key.clone(), val));
    }
    Ok(out)
}

fn toml_entries(text: &str) -> Result<Entries, String> {
    use toml::Value as T;
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!(" at line {}", text[..s.start.min(text.len())].matches('\n').count() + 1))
            .unwrap_or_default();
        format!("invalid TOML{line}: {}", e.message())
    })?;
    let scalar = |v: &T| -> Option<String> {
        match v {
            T::String(s) => Some(s.clone()),
            T::Integer(i) => Some(i.to_string()),
            T::Float(f) => Some(f.to_string()),
            T::Boolean(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for (key, v) in &table {
        let val = match v {
            T::Array(items) => Val::List(
                items
                    .iter()
                    .map(|i| {
                        scalar(i).ok_or_else(|| format!("`{key}` has a list item that is not a string; {FILE_SHAPE}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            v => Val::One(scalar(v).ok_or_else(|| format!("`{key}` is not a scalar; {FILE_SHAPE}"))?),
        };
        out.push((key.clone(), Some(val)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// An env lookup over a map; the process environment is never touched.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| m.get(k).cloned()
    }

    fn map_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const CLIENT_BASE: &[(&str, &str)] =
        &[("MEMKV_AUTH_KEY", KEY), ("MEMKV_LICENSE", "lic-token"), ("MEMKV_SERVERS", "node-a:9900")];
    const SERVER_BASE: &[(&str, &str)] = &[("MEMKV_AUTH_KEY", KEY), ("MEMKV_LICENSE", "lic-token")];

    fn with<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v: Vec<_> = base.iter().filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)).copied().collect();
        v.extend_from_slice(extra);
        v
    }

    fn client(explicit: &[(&str, &str)], env: &[(&str, &str)]) -> Result<ClientConfig, ConfigError> {
        let ex = map_of(explicit);
        let env = env_of(env);
        ClientConfig::resolve(&Sources { explicit: &ex, env: &env })
    }

    fn server(explicit: &[(&str, &str)], env: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let ex = map_of(explicit);
        let env = env_of(env);
        ServerConfig::resolve(&Sources { explicit: &ex, env: &env })
    }

    /// Client from the base env plus `extra` env vars; returns the error message.
    fn client_err(extra: &[(&str, &str)]) -> String {
        let e = client(&[], &with(CLIENT_BASE, extra)).unwrap_err().to_string();
        assert!(!e.contains('\n'), "not one line: {e}");
        e
    }

    fn server_err(extra: &[(&str, &str)]) -> String {
        let e = server(&[], &with(SERVER_BASE, extra)).unwrap_err().to_string();
        assert!(!e.contains('\n'), "not one line: {e}");
        e
    }

    fn write_file(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(body.as_bytes()).unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn precedence_is_explicit_then_env_then_file_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(
            &dir,
            "memkv.yaml",
            "num_connections: 2\nnamespace: from-file\ntransport: tcp\nop_timeout_ms: 500\n",
        );
        let env = with(
            CLIENT_BASE,
            &[("MEMKV_NUM_CONNECTIONS", "3"), ("MEMKV_NAMESPACE", "from-env"), ("MEMKV_OP_TIMEOUT_MS", "600")],
        );
        let env: Vec<(&str, &str)> = env.into_iter().chain([("MEMKV_CONFIG", cfg.as_str())]).collect();
        let c = client(&[("num_connections", "5")], &env).unwrap();
        assert_eq!(c.num_connections, 5, "explicit beats env and file");
        assert_eq!(c.namespace, "from-env", "env beats file");
        assert_eq!(c.op_timeout, Duration::from_millis(600), "env beats file");
        assert_eq!(c.transport, Transport::Tcp, "file beats default");
        assert_eq!(c.connect_timeout, Duration::from_millis(2000), "default when unset everywhere");
        assert!(!c.payload_mac);

        // Without the explicit value the env wins; without the env the file wins.
        let c = client(&[], &env).unwrap();
        assert_eq!(c.num_connections, 3);
        let env_no_nc: Vec<_> = env.iter().copied().filter(|(k, _)| *k != "MEMKV_NUM_CONNECTIONS").collect();
        assert_eq!(client(&[], &env_no_nc).unwrap().num_connections, 2);
    }

    #[test]
    fn server_precedence_covers_sizes_and_listen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            write_file(&dir, "node.toml", "memory = \"2GiB\"\nlisten = \"127.0.0.1:7000\"\nshutdown_grace_ms = 5\n");
        let env = with(SERVER_BASE, &[("MEMKV_MEMORY", "4GiB"), ("MEMKV_CONFIG", "/nonexistent.yaml")]);
        let s = server(&[("config", &cfg), ("MEMKV_MEMORY", "8GiB")], &env).unwrap();
        assert_eq!(s.memory, 8 * GIB, "explicit beats env and file");
        assert_eq!(
            s.listen,
            "127.0.0.1:7000".parse().unwrap(),
            "file beats default; explicit config beats MEMKV_CONFIG"
        );
        assert_eq!(s.shutdown_grace, Duration::from_millis(5));
        assert_eq!(s.max_object_size, 256 * MIB);
        let s = server(&[("config", &cfg)], &env).unwrap();
        assert_eq!(s.memory, 4 * GIB, "env beats file");
    }

    #[test]
    fn explicit_keys_accept_param_or_env_names_case_insensitively() {
        for k in
            ["num_connections", "MEMKV_NUM_CONNECTIONS", "Num_Connections", "memkv_num_connections", "num-connections"]
        {
            let c = client(&[(k, "7")], CLIENT_BASE).unwrap();
            assert_eq!(c.num_connections, 7, "key {k}");
        }
    }

    #[test]
    fn io_threads_is_a_count_or_auto() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(client(&[], CLIENT_BASE).unwrap().io_threads, cpus.min(4));
        assert_eq!(client(&[("io_threads", "AUTO")], CLIENT_BASE).unwrap().io_threads, cpus.min(4));
        assert_eq!(client(&[("io_threads", "12")], CLIENT_BASE).unwrap().io_threads, 12);
        for bad in ["0", "65", "many"] {
            let e = client(&[("io_threads", bad)], CLIENT_BASE).unwrap_err().to_string();
            assert!(e.contains("expected 1..=64, or `auto`"), "{e}");
        }
    }

    #[test]
    fn node_threads_are_a_count_or_auto() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(server(&[], SERVER_BASE).unwrap().threads, cpus);
        assert_eq!(server(&[("threads", "Auto")], SERVER_BASE).unwrap().threads, cpus);
        assert_eq!(server(&[], &[SERVER_BASE, &[("MEMKV_THREADS", "1")]].concat()).unwrap().threads, 1);
        assert_eq!(server(&[("threads", "256")], SERVER_BASE).unwrap().threads, 256);
        for bad in ["0", "257", "two"] {
            let e = server(&[("threads", bad)], SERVER_BASE).unwrap_err().to_string();
            assert!(e.contains("expected 1..=256, or `auto`"), "{e}");
        }
    }

    #[test]
    fn explicit_values_for_the_other_component_are_refused() {
        let e = client(&[("memory", "1GiB")], CLIENT_BASE).unwrap_err();
        assert!(matches!(e, ConfigError::NotRead { reader: Role::Client, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "`memory` (MEMKV_MEMORY) is a memkv-server setting, which a client (the memkv CLI, the NIXL plugin) does \
             not read; remove it from the command line / plugin params"
        );
        assert!(client(&[("MEMKV_NODE_ID", "n1")], CLIENT_BASE).unwrap_err().to_string().contains("MEMKV_NODE_ID"));
        let e = server(&[("servers", "a:1")], SERVER_BASE).unwrap_err();
        assert!(e.to_string().starts_with("`servers` (MEMKV_SERVERS) is a client setting, which memkv-server"), "{e}");
        // An empty value is no value: nothing to refuse.
        assert!(server(&[("servers", "")], SERVER_BASE).is_ok());
    }

    #[test]
    fn unknown_explicit_key_is_rejected_listing_the_valid_keys() {
        let e = client(&[("num_conections", "4")], CLIENT_BASE).unwrap_err();
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e:?}");
        let m = e.to_string();
        assert!(m.contains("num_conections"), "{m}");
        assert!(m.contains("Did you mean `num_connections`?"), "{m}");
        assert!(m.contains("from the command line / plugin params"), "{m}");
        for p in PARAMS {
            assert!(m.contains(p.key), "{m} lacks {}", p.key);
        }
        assert!(server(&[("bogus", "1")], SERVER_BASE).is_err());
    }

    #[test]
    fn the_same_setting_given_twice_explicitly_with_different_values_is_rejected() {
        let e = client(&[("num_connections", "4"), ("MEMKV_NUM_CONNECTIONS", "8")], CLIENT_BASE).unwrap_err();
        assert!(matches!(e, ConfigError::Duplicate { env: "MEMKV_NUM_CONNECTIONS", .. }), "{e:?}");
        let c = client(&[("num_connections", "4"), ("MEMKV_NUM_CONNECTIONS", "4")], CLIENT_BASE).unwrap();
        assert_eq!(c.num_connections, 4);
    }

    #[test]
    fn empty_values_count_as_unset() {
        let env = with(CLIENT_BASE, &[("MEMKV_NUM_CONNECTIONS", ""), ("MEMKV_TRANSPORT", "  ")]);
        let c = client(&[("op_timeout_ms", "")], &env).unwrap();
        assert_eq!(c.num_connections, 4);
        assert_eq!(c.transport, Transport::Auto);
        assert_eq!(c.op_timeout, Duration::from_secs(10));
        let e = client(&[], &with(CLIENT_BASE, &[("MEMKV_SERVERS", "")])).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { env: "MEMKV_SERVERS", .. }), "{e:?}");
    }

    #[test]
    fn values_are_trimmed() {
        let c = client(&[], &with(CLIENT_BASE, &[("MEMKV_NUM_CONNECTIONS", " 9\n"), ("MEMKV_SERVERS", " a:1 , b ")]))
            .unwrap();
        assert_eq!(c.num_connections, 9);
        assert_eq!(c.servers[1], ServerAddr { host: "b".into(), port: 9900 });
    }

    #[test]
    fn yaml_file_is_read_with_servers_as_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(
            &dir,
            "memkv.yml",
            "# shared by node and clients\nservers:\n  - node-a:9901\n  - \"[::1]\"\nauth_key: \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\nlicense: /etc/memkv.lic\npayload_mac: yes\nnum_connections: 8\nmemory: 4GiB\nlisten: \"0.0.0.0:9000\"\n",
        );
        let c = client(&[("config", &cfg)], &[]).unwrap();
        assert_eq!(
            c.servers,
            vec![ServerAddr { host: "node-a".into(), port: 9901 }, ServerAddr { host: "::1".into(), port: 9900 }]
        );
        assert_eq!(c.license, "/etc/memkv.lic");
        assert!(c.payload_mac);
        assert_eq!(c.num_connections, 8);
        // The same file serves the node; `servers` is ignored there.
        let s = server(&[], &[("MEMKV_CONFIG", &cfg)]).unwrap();
        assert_eq!(s.memory, 4 * GIB);
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.admin_listen.port(), 9001);
    }

    #[test]
    fn yaml_servers_may_also_be_a_comma_separated_string() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(&dir, "memkv.yaml", "servers: a:1,b:2\n");
        let env = [("MEMKV_AUTH_KEY", KEY), ("MEMKV_LICENSE", "x"), ("MEMKV_CONFIG", cfg.as_str())];
        assert_eq!(client(&[], &env).unwrap().servers.len(), 2);
    }

    #[test]
    fn toml_file_is_read_with_servers_as_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(
            &dir,
            "memkv.toml",
            "servers = [\"10.0.0.1:9900\", \"10.0.0.2\"]\nlicense = \"tok\"\nauth_key = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\nnum_connections = 16\npayload_mac = true\ntransport = \"RDMA\"\n",
        );
        let c = client(&[("MEMKV_CONFIG", &cfg)], &[]).unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.servers[1].to_string(), "10.0.0.2:9900");
        assert_eq!(c.num_connections, 16);
        assert!(c.payload_mac);
        assert_eq!(c.transport, Transport::Rdma);
    }

    #[test]
    fn empty_yaml_file_is_an_empty_map() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(&dir, "empty.yaml", "# nothing yet\n");
        let env = with(CLIENT_BASE, &[("MEMKV_CONFIG", "")]);
        let mut env = env;
        env.push(("MEMKV_CONFIG", &cfg));
        assert_eq!(client(&[], &env).unwrap().num_connections, 4);
    }

    #[test]
    fn unknown_file_key_is_rejected_naming_it_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [("a.yaml", "num_conections: 4\n"), ("a.toml", "num_conections = 4\n")] {
            let cfg = write_file(&dir, name, body);
            let e = client(&[("config", &cfg)], CLIENT_BASE).unwrap_err();
            assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e:?}");
            let m = e.to_string();
            assert!(m.contains("num_conections") && m.contains(&cfg) && m.contains("num_connections"), "{m}");
        }
        let cfg = write_file(&dir, "b.yaml", "MEMKV_SERVERS: a:1\n");
        let m = client(&[("config", &cfg)], CLIENT_BASE).unwrap_err().to_string();
        assert!(m.contains("Did you mean `servers`?"), "{m}");
    }

    #[test]
    fn file_keys_of_the_other_role_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(&dir, "c.yaml", "memory: not-a-size\nnode_id: \"x y\"\n");
        assert!(client(&[("config", &cfg)], CLIENT_BASE).is_ok());
        assert!(server(&[("config", &cfg)], SERVER_BASE).is_err());
    }

    #[test]
    fn config_key_inside_a_config_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(&dir, "d.yaml", "config: other.yaml\n");
        let e = client(&[("config", &cfg)], CLIENT_BASE).unwrap_err();
        assert!(matches!(e, ConfigError::File { .. }), "{e:?}");
        assert!(e.to_string().contains("MEMKV_CONFIG"), "{e}");
    }

    #[test]
    fn config_file_with_another_extension_is_rejected_naming_the_accepted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(&dir, "memkv.json", "{}");
        let e = client(&[], &with(CLIENT_BASE, &[])).map(|_| ()).and_then(|_| {
            let env = [CLIENT_BASE, &[("MEMKV_CONFIG", cfg.as_str())]].concat();
            client(&[], &env).map(|_| ())
        });
        let m = e.unwrap_err().to_string();
        for ext in [".yaml", ".yml", ".toml", "MEMKV_CONFIG", "from the environment"] {
            assert!(m.contains(ext), "{m} lacks {ext}");
        }
    }

    #[test]
    fn upper_case_extensions_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(&dir, "MEMKV.YAML", "num_connections: 3\n");
        assert_eq!(client(&[("config", &cfg)], CLIENT_BASE).unwrap().num_connections, 3);
    }

    #[test]
    fn unreadable_or_malformed_files_are_one_line_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml").to_str().unwrap().to_string();
        let bad_yaml = write_file(&dir, "bad.yaml", "servers: [a\nnum: {\n");
        let bad_toml = write_file(&dir, "bad.toml", "servers = \nx = [\n");
        let nested = write_file(&dir, "nested.yaml", "listen:\n  ip: 0.0.0.0\n");
        let list = write_file(&dir, "list.toml", "num_connections = [1, 2]\n");
        let top = write_file(&dir, "top.yaml", "- a\n- b\n");
        let m = server(&[], &with(SERVER_BASE, &[("MEMKV_CONFIG", missing.as_str())])).unwrap_err().to_string();
        assert!(m.contains("cannot read it (named by MEMKV_CONFIG from the environment)"), "{m}");
        for path in [&missing, &bad_yaml, &bad_toml, &nested, &list, &top] {
            let e = server(&[("config", path)], SERVER_BASE).unwrap_err();
            assert!(matches!(e, ConfigError::File { .. }), "{path}: {e:?}");
            let m = e.to_string();
            assert!(!m.contains('\n') && m.contains(path.as_str()), "{m}");
        }
    }

    #[test]
    fn invalid_file_values_name_the_env_var_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(&dir, "e.yaml", "num_connections: 100\n");
        let m = client(&[("config", &cfg)], CLIENT_BASE).unwrap_err().to_string();
        assert_eq!(m, format!("MEMKV_NUM_CONNECTIONS=\"100\" (from {cfg}) is invalid: expected an integer in 1..=64"));
    }

    /// Settings parsed as integers in their `range` text `lo..=hi`.
    const NUMERIC: &[(&Param, Role)] = &[
        (&P_NUM_CONNECTIONS, Role::Client),
        (&P_CONNECT_TIMEOUT_MS, Role::Client),
        (&P_OP_TIMEOUT_MS, Role::Client),
        (&P_MAX_CLOCK_DRIFT_MS, Role::Server),
        (&P_PARTIAL_TIMEOUT_MS, Role::Server),
        (&P_SHUTDOWN_GRACE_MS, Role::Server),
        (&P_FLUSH_INTERVAL_MS, Role::Server),
        (&P_LEASE_TIMEOUT_MS, Role::Server),
        (&P_RDMA_TRAFFIC_CLASS, Role::Both),
        (&P_RDMA_SERVICE_LEVEL, Role::Both),
        (&P_RDMA_TIMEOUT_SECS, Role::Both),
        (&P_RDMA_CQ_POLL_US, Role::Both),
        (&P_RDMA_QUEUE_DEPTH, Role::Both),
    ];

    /// The resolved value of an RDMA setting, as the integer it was given as.
    fn rdma_value(key: &str, r: &RdmaConfig) -> u64 {
        match key {
            "rdma_traffic_class" => u64::from(r.traffic_class),
            "rdma_service_level" => u64::from(r.service_level),
            "rdma_timeout_secs" => r.timeout.as_secs(),
            "rdma_cq_poll_us" => r.cq_poll.as_micros() as u64,
            "rdma_queue_depth" => u64::from(r.queue_depth),
            k => panic!("no RDMA setting {k}"),
        }
    }

    #[test]
    fn every_numeric_setting_accepts_its_bounds_and_rejects_out_of_range_and_non_numeric() {
        for (p, role) in NUMERIC {
            let (lo, hi) = p.range.split_once("..=").unwrap();
            let (lo, hi): (u64, u64) = (lo.parse().unwrap(), hi.parse().unwrap());
            let readers: &[Role] = match role {
                Role::Both => &[Role::Client, Role::Server],
                r => std::slice::from_ref(r),
            };
            for reader in readers {
                let run = |v: &str| -> Result<u64, ConfigError> {
                    let extra = [(p.env, v)];
                    match reader {
                        Role::Client => client(&[], &[CLIENT_BASE, &extra].concat()).map(|c| match p.key {
                            "num_connections" => c.num_connections as u64,
                            "connect_timeout_ms" => c.connect_timeout.as_millis() as u64,
                            "op_timeout_ms" => c.op_timeout.as_millis() as u64,
                            k => rdma_value(k, &c.rdma),
                        }),
                        _ => server(&[], &[SERVER_BASE, &extra].concat()).map(|s| match p.key {
                            "max_clock_drift_ms" => s.max_clock_drift.as_millis() as u64,
                            "partial_timeout_ms" => s.partial_timeout.as_millis() as u64,
                            "flush_interval_ms" => s.storage.flush_interval.as_millis() as u64,
                            "shutdown_grace_ms" => s.shutdown_grace.as_millis() as u64,
                            "lease_timeout_ms" => s.lease_timeout.as_millis() as u64,
                            k => rdma_value(k, &s.rdma),
                        }),
                    }
                };
                assert_eq!(run(&lo.to_string()).unwrap(), lo, "{}", p.env);
                assert_eq!(run(&hi.to_string()).unwrap(), hi, "{}", p.env);
                let mut bad = vec![(hi + 1).to_string(), "abc".to_string(), "-1".to_string(), "1.5".to_string()];
                if lo > 0 {
                    bad.push((lo - 1).to_string());
                }
                for v in bad {
                    let m = run(&v).unwrap_err().to_string();
                    assert_eq!(
                        m,
                        format!(
                            "{}={v:?} (from the environment) is invalid: expected an integer in {lo}..={hi}",
                            p.env
                        )
                    );
                }
            }
        }
        assert_eq!(
            client_err(&[("MEMKV_NUM_CONNECTIONS", "abc")]),
            "MEMKV_NUM_CONNECTIONS=\"abc\" (from the environment) is invalid: expected an integer in 1..=64"
        );
    }

    #[test]
    fn numeric_defaults_match_the_table() {
        let c = client(&[], CLIENT_BASE).unwrap();
        let s = server(&[], SERVER_BASE).unwrap();
        let got = [
            c.num_connections as u64,
            c.connect_timeout.as_millis() as u64,
            c.op_timeout.as_millis() as u64,
            s.max_clock_drift.as_millis() as u64,
            s.partial_timeout.as_millis() as u64,
            s.shutdown_grace.as_millis() as u64,
            s.storage.flush_interval.as_millis() as u64,
            s.lease_timeout.as_millis() as u64,
            rdma_value("rdma_traffic_class", &c.rdma),
            rdma_value("rdma_service_level", &c.rdma),
            rdma_value("rdma_timeout_secs", &c.rdma),
            rdma_value("rdma_cq_poll_us", &c.rdma),
            rdma_value("rdma_queue_depth", &c.rdma),
        ];
        assert_eq!(got.len(), NUMERIC.len());
        for ((p, _), v) in NUMERIC.iter().zip(got) {
            assert_eq!(p.default.unwrap().parse::<u64>().unwrap(), v, "{}", p.key);
        }
        assert_eq!(c.transport.to_string(), P_TRANSPORT.default.unwrap());
        assert_eq!(c.namespace, "");
        assert_eq!(c.license_pubkey, None);
        assert_eq!(s.listen.to_string(), P_LISTEN.default.unwrap());
        assert_eq!(s.memory, parse_size(P_MEMORY.default.unwrap()).unwrap());
        assert_eq!(s.max_object_size, parse_size(P_MAX_OBJECT_SIZE.default.unwrap()).unwrap());
        assert!(!s.require_payload_mac);
        assert!(!s.prefault);
    }

    #[test]
    fn servers_parse_with_default_port_ipv6_and_hostnames() {
        let c = client(&[("servers", "Node-A:1234,node-b,[::1]:9901,[0:0::2],10.0.0.1")], CLIENT_BASE).unwrap();
        let shown: Vec<String> = c.servers.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["node-a:1234", "node-b:9900", "[::1]:9901", "[::2]:9900", "10.0.0.1:9900"]);
        assert_eq!(c.servers[2], ServerAddr { host: "::1".into(), port: 9901 });
        for s in &c.servers {
            assert_eq!(&s.to_string().parse::<ServerAddr>().unwrap(), s, "round trip");
        }
    }

    #[test]
    fn servers_reject_duplicates_empty_entries_bad_ports_and_bare_ipv6() {
        for (v, needle) in [
            ("a:1,b:2,a:1", "duplicates entry 1"),
            ("a,a:9900", "duplicates entry 1"),
            ("[::1],[0::1]:9900", "duplicates entry 1"),
            ("a:1,,b:2", "entry 2 is empty"),
            ("a:1,", "entry 2 is empty"),
            ("a:0", "1..=65535"),
            ("a:65536", "1..=65535"),
            ("a:x", "1..=65535"),
            ("a:", "1..=65535"),
            ("::1", "brackets"),
            ("[::1", "brackets"),
            ("[zz]:1", "not an IPv6 address"),
            ("[::1]x", "unexpected"),
            (":9900", "empty host"),
            ("bad host:1", "DNS name"),
        ] {
            let m = client_err(&[("MEMKV_SERVERS", v)]);
            assert!(m.starts_with(&format!("MEMKV_SERVERS={v:?} (from the environment) is invalid:")), "{m}");
            assert!(m.contains(needle), "{v}: {m}");
        }
    }

    #[test]
    fn servers_accept_at_most_1024_entries() {
        let list = |n: usize| (0..n).map(|i| format!("h{i}")).collect::<Vec<_>>().join(",");
        let ok = list(1024);
        assert_eq!(client(&[("servers", &ok)], CLIENT_BASE).unwrap().servers.len(), 1024);
        let m = client(&[("servers", &list(1025))], CLIENT_BASE).unwrap_err().to_string();
        assert!(m.contains("more than 1024"), "{m}");
    }

    #[test]
    fn an_empty_servers_list_in_a_file_is_invalid_not_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(&dir, "s.toml", "servers = []\n");
        let env = [("MEMKV_AUTH_KEY", KEY), ("MEMKV_LICENSE", "x"), ("MEMKV_CONFIG", cfg.as_str())];
        let m = client(&[], &env).unwrap_err().to_string();
        assert!(m.contains("no servers listed") && m.contains("MEMKV_SERVERS=[]"), "{m}");
    }

    #[test]
    fn transport_accepts_tcp_rdma_shm_auto_in_any_case() {
        for (v, t) in [
            ("tcp", Transport::Tcp),
            ("TCP", Transport::Tcp),
            ("Rdma", Transport::Rdma),
            ("shm", Transport::Shm),
            ("SHM", Transport::Shm),
            ("AUTO", Transport::Auto),
            ("auto", Transport::Auto),
        ] {
            assert_eq!(client(&[("transport", v)], CLIENT_BASE).unwrap().transport, t);
        }
        for t in [Transport::Tcp, Transport::Rdma, Transport::Shm, Transport::Auto] {
            assert_eq!(t.to_string().parse::<Transport>().unwrap(), t);
            assert_eq!(t.to_string(), t.to_string().to_lowercase());
        }
        let m = client_err(&[("MEMKV_TRANSPORT", "udp")]);
        assert_eq!(
            m,
            "MEMKV_TRANSPORT=\"udp\" (from the environment) is invalid: \
             expected `auto`, `rdma`, `shm` or `tcp` (case-insensitive)"
        );
    }

    #[test]
    fn rdma_settings_default_to_rdma_config_default_for_client_and_server() {
        let (c, s) = (client(&[], CLIENT_BASE).unwrap(), server(&[], SERVER_BASE).unwrap());
        assert_eq!(c.rdma, RdmaConfig::default());
        assert_eq!(s.rdma, RdmaConfig::default());
        assert_eq!(s.rdma_device, None);
        assert_eq!(s.lease_timeout, Duration::from_secs(30));
        let d = RdmaConfig::default();
        assert_eq!(d.gid_index, None);
        assert_eq!(d.timeout, Duration::from_secs(P_RDMA_TIMEOUT_SECS.default.unwrap().parse().unwrap()));
        assert_eq!(d.cq_poll, Duration::from_micros(P_RDMA_CQ_POLL_US.default.unwrap().parse().unwrap()));
        assert_eq!(u64::from(d.queue_depth), P_RDMA_QUEUE_DEPTH.default.unwrap().parse::<u64>().unwrap());
    }

    #[test]
    fn rdma_settings_are_read_by_both_and_parse() {
        let set = [
            ("rdma_gid_index", "3"),
            ("rdma_traffic_class", "106"),
            ("rdma_service_level", "15"),
            ("rdma_timeout_secs", "2"),
            ("rdma_cq_poll_us", "0"),
            ("rdma_queue_depth", "4096"),
        ];
        let want = RdmaConfig {
            gid_index: Some(3),
            traffic_class: 106,
            service_level: 15,
            timeout: Duration::from_secs(2),
            cq_poll: Duration::ZERO,
            queue_depth: 4096,
        };
        assert_eq!(client(&set, CLIENT_BASE).unwrap().rdma, want);
        assert_eq!(server(&set, SERVER_BASE).unwrap().rdma, want);
        for (v, g) in [("0", Some(0)), ("255", Some(255)), ("AUTO", None), ("auto", None)] {
            assert_eq!(client(&[("rdma_gid_index", v)], CLIENT_BASE).unwrap().rdma.gid_index, g, "{v}");
            assert_eq!(server(&[("MEMKV_RDMA_GID_INDEX", v)], SERVER_BASE).unwrap().rdma.gid_index, g, "{v}");
        }
    }

    #[test]
    fn bad_rdma_settings_name_the_env_var_and_the_range() {
        for v in ["256", "x", "-1", "1.5"] {
            for m in [client_err(&[("MEMKV_RDMA_GID_INDEX", v)]), server_err(&[("MEMKV_RDMA_GID_INDEX", v)])] {
                assert_eq!(
                    m,
                    format!(
                        "MEMKV_RDMA_GID_INDEX={v:?} (from the environment) is invalid: expected `auto` (the first RoCE \
                         v2 IPv4-mapped GID of the port) or 0..=255"
                    )
                );
            }
        }
        let m = client_err(&[("MEMKV_RDMA_SERVICE_LEVEL", "16")]);
        assert_eq!(
            m,
            "MEMKV_RDMA_SERVICE_LEVEL=\"16\" (from the environment) is invalid: expected an integer in 0..=15"
        );
        let m = server_err(&[("MEMKV_RDMA_QUEUE_DEPTH", "0")]);
        assert_eq!(
            m,
            "MEMKV_RDMA_QUEUE_DEPTH=\"0\" (from the environment) is invalid: expected an integer in 1..=4096"
        );
        let m = client(&[("rdma_timeout_secs", "0")], CLIENT_BASE).unwrap_err().to_string();
        assert!(m.starts_with("MEMKV_RDMA_TIMEOUT_SECS=\"0\" (from the command line / plugin params)"), "{m}");
    }

    #[test]
    fn shm_socket_defaults_to_an_abstract_socket_named_after_listen() {
        let s = server(&[("listen", "127.0.0.2:7480")], SERVER_BASE).unwrap();
        assert_eq!(s.shm_socket.as_deref(), Some("@memkv-127.0.0.2:7480"));
        assert_eq!(server(&[], SERVER_BASE).unwrap().shm_socket.as_deref(), Some("@memkv-0.0.0.0:9900"));
        let s = server(&[("listen", "[::1]:9000"), ("shm_socket", "AUTO")], SERVER_BASE).unwrap();
        assert_eq!(s.shm_socket.as_deref(), Some("@memkv-[::1]:9000"));
        assert!(P_SHM_SOCKET.is_derived());
    }

    #[test]
    fn shm_socket_off_a_path_or_an_abstract_name() {
        for v in ["off", "OFF"] {
            assert_eq!(server(&[("shm_socket", v)], SERVER_BASE).unwrap().shm_socket, None, "{v}");
        }
        for v in ["/run/memkv/node.sock", "rel.sock", "@memkv-test"] {
            assert_eq!(server(&[("MEMKV_SHM_SOCKET", v)], SERVER_BASE).unwrap().shm_socket.as_deref(), Some(v));
        }
        let longest = format!("/{}", "p".repeat(MAX_UNIX_SOCKET_LEN - 1));
        assert_eq!(server(&[("shm_socket", &longest)], SERVER_BASE).unwrap().shm_socket, Some(longest.clone()));
        let abstract_longest = format!("@{}", "n".repeat(MAX_UNIX_SOCKET_LEN));
        assert!(server(&[("shm_socket", &abstract_longest)], SERVER_BASE).is_ok());
    }

    #[test]
    fn bad_shm_sockets_name_the_env_var() {
        let long = format!("/{}", "p".repeat(MAX_UNIX_SOCKET_LEN));
        let m = server_err(&[("MEMKV_SHM_SOCKET", &long)]);
        assert!(m.starts_with(&format!("MEMKV_SHM_SOCKET={long:?} (from the environment) is invalid:")), "{m}");
        assert!(m.contains("108 bytes") && m.contains("107") && m.contains("sun_path"), "{m}");
        let m = server_err(&[("MEMKV_SHM_SOCKET", &format!("@{}", "n".repeat(MAX_UNIX_SOCKET_LEN + 1)))]);
        assert!(m.starts_with("MEMKV_SHM_SOCKET=") && m.contains("abstract socket name"), "{m}");
        let m = server_err(&[("MEMKV_SHM_SOCKET", "/tmp/a\0b")]);
        assert!(m.starts_with("MEMKV_SHM_SOCKET=") && m.contains("NUL"), "{m}");
        let m = server_err(&[("MEMKV_SHM_SOCKET", "@")]);
        assert!(m.starts_with("MEMKV_SHM_SOCKET=\"@\"") && m.contains("empty"), "{m}");
        // A listen address too long for `auto` cannot occur: the longest IPv6 one fits.
        let s = server(&[("listen", "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65534")], SERVER_BASE);
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn rdma_device_is_one_nic_name_or_empty() {
        assert_eq!(server(&[("rdma_device", "mlx5_0")], SERVER_BASE).unwrap().rdma_device.as_deref(), Some("mlx5_0"));
        assert_eq!(server(&[("rdma_device", "")], SERVER_BASE).unwrap().rdma_device, None);
        for v in ["mlx5_0,mlx5_1", "a b", "x/y"] {
            let m = server_err(&[("MEMKV_RDMA_DEVICE", v)]);
            assert!(m.starts_with(&format!("MEMKV_RDMA_DEVICE={v:?}")) && m.contains(P_RDMA_DEVICE.range), "{m}");
        }
        let e = client(&[("rdma_device", "mlx5_0")], CLIENT_BASE).unwrap_err();
        assert!(matches!(e, ConfigError::NotRead { reader: Role::Client, .. }), "{e:?}");
    }

    #[test]
    fn lease_timeout_is_in_milliseconds() {
        assert_eq!(
            server(&[("lease_timeout_ms", "250")], SERVER_BASE).unwrap().lease_timeout,
            Duration::from_millis(250)
        );
        let m = server_err(&[("MEMKV_LEASE_TIMEOUT_MS", "99")]);
        assert_eq!(
            m,
            "MEMKV_LEASE_TIMEOUT_MS=\"99\" (from the environment) is invalid: expected an integer in 100..=3600000"
        );
    }

    #[test]
    fn booleans_accept_the_usual_spellings() {
        for (v, b) in [
            ("true", true),
            ("1", true),
            ("YES", true),
            ("On", true),
            ("false", false),
            ("0", false),
            ("no", false),
            ("OFF", false),
        ] {
            assert_eq!(client(&[("payload_mac", v)], CLIENT_BASE).unwrap().payload_mac, b, "{v}");
            assert_eq!(server(&[("require_payload_mac", v)], SERVER_BASE).unwrap().require_payload_mac, b, "{v}");
            assert_eq!(server(&[("prefault", v)], SERVER_BASE).unwrap().prefault, b, "{v}");
        }
        let m = server_err(&[("MEMKV_REQUIRE_PAYLOAD_MAC", "maybe")]);
        assert!(m.contains("MEMKV_REQUIRE_PAYLOAD_MAC") && m.contains("yes/no"), "{m}");
    }

    #[test]
    fn missing_required_values_name_the_env_var() {
        let e = client(&[], &[("MEMKV_AUTH_KEY", KEY), ("MEMKV_LICENSE", "x")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MEMKV_SERVERS is not set: set it (or `servers` in the config file) to host:port[,host:port...]"
        );
        let e = client(&[], &[("MEMKV_SERVERS", "a"), ("MEMKV_LICENSE", "x")]).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { env: "MEMKV_AUTH_KEY", .. }), "{e:?}");
        assert!(e.to_string().contains("memkv keygen"));
        let e = server(&[], &[("MEMKV_AUTH_KEY", KEY)]).unwrap_err();
        assert!(e.to_string().starts_with("MEMKV_LICENSE is not set"), "{e}");
    }

    #[test]
    fn bad_auth_key_names_memkv_keygen_and_never_echoes_the_key() {
        let almost = &KEY[..63];
        let m = client_err(&[("MEMKV_AUTH_KEY", almost)]);
        assert!(
            m.contains("memkv keygen") && m.contains("MEMKV_AUTH_KEY") && m.contains("from the environment"),
            "{m}"
        );
        assert!(!m.contains(almost), "{m}");
        let m = server_err(&[("MEMKV_AUTH_KEY", "zz")]);
        assert!(m.contains("memkv keygen"), "{m}");
        assert_eq!(
            client(&[("auth_key", &format!("  {KEY}  "))], CLIENT_BASE).unwrap().auth_key,
            AuthKey::parse(KEY).unwrap()
        );
    }

    #[test]
    fn license_pubkey_is_kept_as_text() {
        let c = client(&[("license_pubkey", "k1, /etc/k2.pub")], CLIENT_BASE).unwrap();
        assert_eq!(c.license_pubkey.as_deref(), Some("k1, /etc/k2.pub"));
        assert_eq!(client(&[], CLIENT_BASE).unwrap().license, "lic-token");
    }

    #[test]
    fn namespace_is_short_printable_ascii_without_slash() {
        assert_eq!(client(&[("namespace", "tenant-1.prod")], CLIENT_BASE).unwrap().namespace, "tenant-1.prod");
        let long = "n".repeat(128);
        assert_eq!(client(&[("namespace", &long)], CLIENT_BASE).unwrap().namespace.len(), 128);
        for v in ["n".repeat(129), "a/b".to_string(), "a b".to_string(), "é".to_string()] {
            let m = client(&[("namespace", &v)], CLIENT_BASE).unwrap_err().to_string();
            assert!(m.starts_with("MEMKV_NAMESPACE=") && m.contains("from the command line / plugin params"), "{m}");
            assert!(m.contains(P_NAMESPACE.range), "{m}");
        }
    }

    #[test]
    fn admin_listen_defaults_to_the_next_port_on_the_listen_ip() {
        let s = server(&[], SERVER_BASE).unwrap();
        assert_eq!(s.admin_listen, "0.0.0.0:9901".parse().unwrap());
        let s = server(&[("listen", "[::1]:7000")], SERVER_BASE).unwrap();
        assert_eq!(s.admin_listen, "[::1]:7001".parse().unwrap());
        let s = server(&[("listen", "127.0.0.1:0")], SERVER_BASE).unwrap();
        assert_eq!(s.admin_listen, "127.0.0.1:0".parse().unwrap(), "port 0 stays 0");
        let s = server(&[("listen", "127.0.0.1:9000"), ("admin_listen", "127.0.0.1:8080")], SERVER_BASE).unwrap();
        assert_eq!(s.admin_listen.port(), 8080);
    }

    #[test]
    fn data_port_65535_needs_an_explicit_admin_listen() {
        let m = server_err(&[("MEMKV_LISTEN", "0.0.0.0:65535")]);
        assert!(m.starts_with("MEMKV_LISTEN=\"0.0.0.0:65535\" (from the environment) is invalid"), "{m}");
        assert!(m.contains("MEMKV_ADMIN_LISTEN"), "{m}");
        let s = server(&[("admin_listen", "0.0.0.0:9000")], &with(SERVER_BASE, &[("MEMKV_LISTEN", "0.0.0.0:65535")]))
            .unwrap();
        assert_eq!(s.admin_listen.port(), 9000);
    }

    #[test]
    fn admin_listen_on_the_data_port_and_bad_addresses_are_rejected() {
        let m = server_err(&[("MEMKV_LISTEN", "0.0.0.0:9000"), ("MEMKV_ADMIN_LISTEN", "127.0.0.1:9000")]);
        assert!(m.starts_with("MEMKV_ADMIN_LISTEN="), "{m}");
        for v in ["localhost:9000", "0.0.0.0", "0.0.0.0:70000"] {
            let m = server_err(&[("MEMKV_LISTEN", v)]);
            assert!(m.starts_with(&format!("MEMKV_LISTEN={v:?}")) && m.contains("IP:PORT"), "{m}");
        }
    }

    #[test]
    fn max_object_size_above_memory_is_rejected_naming_both() {
        let m = server_err(&[("MEMKV_MEMORY", "64MiB"), ("MEMKV_MAX_OBJECT_SIZE", "128MiB")]);
        assert!(m.starts_with("MEMKV_MAX_OBJECT_SIZE=\"128MiB\" (from the environment) is invalid"), "{m}");
        assert!(m.contains("MEMKV_MEMORY") && m.contains("64 MiB") && m.contains("128 MiB"), "{m}");
        let s =
            server(&[], &with(SERVER_BASE, &[("MEMKV_MEMORY", "64MiB"), ("MEMKV_MAX_OBJECT_SIZE", "64MiB")])).unwrap();
        assert_eq!(s.max_object_size, 64 * MIB);
        let m = server_err(&[("MEMKV_MAX_OBJECT_SIZE", "0")]);
        assert!(m.contains("MEMKV_MAX_OBJECT_SIZE"), "{m}");
        let m = server_err(&[("MEMKV_MEMORY", "1TiB"), ("MEMKV_MAX_OBJECT_SIZE", "512GiB")]);
        assert!(m.contains("largest object a node can hold") && m.contains("256 GiB"), "{m}");
    }

    #[test]
    fn default_max_object_size_shrinks_to_a_small_memory() {
        let s = server(&[("memory", "16MiB")], SERVER_BASE).unwrap();
        assert_eq!((s.memory, s.max_object_size), (16 * MIB, 16 * MIB));
    }

    #[test]
    fn memory_must_be_a_size_of_at_least_1_mib() {
        assert_eq!(server(&[("memory", "1MiB")], SERVER_BASE).unwrap().memory, MIB);
        for v in ["1023KiB", "0", "lots", "-1G"] {
            let m = server_err(&[("MEMKV_MEMORY", v)]);
            assert!(m.starts_with(&format!("MEMKV_MEMORY={v:?} (from the environment) is invalid")), "{m}");
        }
    }

    #[test]
    fn node_id_defaults_to_the_listen_address_and_is_printable_ascii() {
        assert_eq!(server(&[("listen", "10.1.2.3:9900")], SERVER_BASE).unwrap().node_id, "10.1.2.3:9900");
        assert_eq!(server(&[("node_id", "node-7")], SERVER_BASE).unwrap().node_id, "node-7");
        for v in ["a b", &"n".repeat(129)] {
            let m = server_err(&[("MEMKV_NODE_ID", v)]);
            assert!(m.starts_with("MEMKV_NODE_ID=") && m.contains(P_NODE_ID.range), "{m}");
        }
    }

    #[test]
    fn storage_settings_parse_and_refuse_what_cannot_work() {
        let s = server(&[], SERVER_BASE).unwrap();
        assert!(s.storage.data_dirs.is_empty(), "DRAM only by default");
        assert_eq!(s.storage.durability, Durability::Async);
        assert_eq!(
            (s.storage.drive_capacity, s.storage.segment_size, s.storage.drive_queue),
            (None, 64 * MIB, 256 * MIB)
        );
        let s = server(
            &[
                ("data_dir", "/mnt/a, /mnt/b"),
                ("durability", "SYNC"),
                ("drive_capacity", "1GiB"),
                ("segment_size", "8MiB"),
            ],
            SERVER_BASE,
        )
        .unwrap();
        assert_eq!(s.storage.data_dirs, vec![PathBuf::from("/mnt/a"), PathBuf::from("/mnt/b")]);
        assert_eq!((s.storage.durability, s.storage.drive_capacity), (Durability::Sync, Some(GIB)));
        let e = server_err(&[("MEMKV_DURABILITY", "sync")]);
        assert!(e.contains("MEMKV_DURABILITY=\"sync\"") && e.contains("set MEMKV_DATA_DIR"), "{e}");
        let e = server_err(&[("MEMKV_DATA_DIR", "/a,/a/"), ("MEMKV_DURABILITY", "sync")]);
        assert!(e.contains("listed twice"), "{e}");
        let e = server_err(&[("MEMKV_DATA_DIR", "/a,,/b")]);
        assert!(e.contains("an entry is empty"), "{e}");
        let e = server_err(&[("MEMKV_DATA_DIR", "/a"), ("MEMKV_DURABILITY", "fsync")]);
        assert!(e.ends_with("expected `none`, `async` or `sync`"), "{e}");
        let e = server_err(&[("MEMKV_DATA_DIR", "/a"), ("MEMKV_DRIVE_CAPACITY", "100MiB")]);
        assert!(e.contains("below 4 segments of 64 MiB"), "{e}");
        let e = server_err(&[("MEMKV_SEGMENT_SIZE", "512KiB")]);
        assert!(e.ends_with("expected 1MiB..=1GiB"), "{e}");
        let e = server_err(&[("MEMKV_DRIVE_QUEUE", "1KiB")]);
        assert!(e.contains("at least 1 MiB"), "{e}");
    }

    #[test]
    fn defaults_in_errors_are_labelled_default() {
        let m = server_err(&[("MEMKV_LISTEN", "0.0.0.0:65535"), ("MEMKV_MAX_OBJECT_SIZE", "2GiB")]);
        assert!(m.contains("MEMKV_LISTEN"), "listen is checked first: {m}");
        let m = server_err(&[("MEMKV_MAX_OBJECT_SIZE", "2GiB")]);
        assert!(m.contains("MEMKV_MEMORY=\"1GiB\" (default)"), "{m}");
    }

    #[test]
    fn parse_size_accepts_bytes_and_binary_units() {
        for (s, v) in [
            ("4096", 4096u64),
            ("0", 0),
            ("1B", 1),
            ("1 b", 1),
            ("1K", KIB),
            ("1kb", KIB),
            ("1 KiB", KIB),
            ("2M", 2 * MIB),
            ("2 MB", 2 * MIB),
            ("2mib", 2 * MIB),
            ("3G", 3 * GIB),
            ("3GB", 3 * GIB),
            ("3 GiB", 3 * GIB),
            ("1T", TIB),
            ("1tb", TIB),
            ("1TiB", TIB),
            ("1.5GiB", 3 * GIB / 2),
            ("0.5 K", 512),
            (" 8 MiB ", 8 * MIB),
            ("16777215TiB", 16_777_215 * TIB),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
    }

    #[test]
    fn parse_size_rejects_garbage_fractions_of_bytes_and_overflow() {
        for s in [
            "",
            "abc",
            "1X",
            "1 KiBs",
            "-1",
            "+1",
            "1.",
            ".5",
            "1.2.3",
            "1.5",
            "0.1K",
            "16777216TiB",
            "18446744073709551616",
            "99999999999999999999999999999999999999999T",
            "1 1",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} accepted: {:?}", parse_size(s));
        }
        assert!(parse_size("16777216T").unwrap_err().contains("too large"));
        assert!(parse_size("1X").unwrap_err().contains("KiB"));
    }

    #[test]
    fn format_size_uses_bytes_below_a_mib_then_binary_units() {
        for (v, s) in [
            (0u64, "0 B"),
            (4096, "4096 B"),
            (MIB - 1, "1048575 B"),
            (MIB, "1 MiB"),
            (2 * MIB, "2 MiB"),
            (3 * GIB / 2, "1.5 GiB"),
            (GIB + GIB / 8, "1.125 GiB"),
            (256 * MIB, "256 MiB"),
            (TIB, "1 TiB"),
            (1_000_000_000, "953.67 MiB (1000000000 B)"),
            (MIB + 1, "1.00 MiB (1048577 B)"),
        ] {
            assert_eq!(format_size(v), s, "{v}");
        }
        for v in [MIB, 3 * GIB / 2, 5 * TIB, GIB + GIB / 8] {
            assert_eq!(parse_size(&format_size(v)), Ok(v), "round trip {v}");
        }
    }

    #[test]
    fn params_for_includes_shared_params_for_both_roles() {
        let keys = |r| params_for(r).map(|p| p.key).collect::<Vec<_>>();
        let (c, s) = (keys(Role::Client), keys(Role::Server));
        let shared = [
            "auth_key",
            "license",
            "license_pubkey",
            "config",
            "rdma_gid_index",
            "rdma_traffic_class",
            "rdma_service_level",
            "rdma_timeout_secs",
            "rdma_cq_poll_us",
            "rdma_queue_depth",
        ];
        for k in shared {
            assert!(c.contains(&k) && s.contains(&k), "{k}");
        }
        assert!(c.contains(&"servers") && !s.contains(&"servers"));
        assert!(s.contains(&"memory") && !c.contains(&"memory"));
        for k in ["shm_socket", "rdma_device", "lease_timeout_ms"] {
            assert!(s.contains(&k) && !c.contains(&k), "{k}");
        }
        assert_eq!(keys(Role::Both).len(), PARAMS.len());
        assert_eq!(c.len() + s.len(), PARAMS.len() + shared.len());
    }

    #[test]
    fn params_have_unique_well_formed_names() {
        for (i, p) in PARAMS.iter().enumerate() {
            assert_eq!(p.env, format!("MEMKV_{}", p.key.to_uppercase()));
            assert!(PARAMS[..i].iter().all(|q| q.key != p.key));
            assert_eq!(find_param(p.env), Some(p));
            assert_eq!(find_param(p.key), Some(p));
            let optional = ["config", "data_dir"].contains(&p.key);
            assert!(p.default.is_some() || p.is_required() || p.is_derived() || optional, "{}", p.key);
        }
        assert_eq!(find_param("nope"), None);
    }

    #[test]
    fn markdown_reference_has_one_row_per_param_each_naming_its_env_var_once() {
        let md = markdown_reference();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| `")).collect();
        assert_eq!(rows.len(), PARAMS.len());
        let tokens = |s: &str| -> Vec<String> {
            s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|t| t.starts_with("MEMKV_"))
                .map(str::to_string)
                .collect()
        };
        for p in PARAMS {
            let with_env: Vec<&&str> = rows.iter().filter(|r| tokens(r).contains(&p.env.to_string())).collect();
            assert_eq!(with_env.len(), 1, "{} appears in {} rows", p.env, with_env.len());
            assert_eq!(tokens(with_env[0]).iter().filter(|t| *t == p.env).count(), 1, "{}", p.env);
            assert!(with_env[0].starts_with(&format!("| `{}` | `{}` | `{}` |", p.key, p.env, p.flag())));
        }
        for row in &rows {
            // key, env, flag, default, range, meaning: six cells, none with a raw `|`.
            assert_eq!(row.replace("\\|", "").matches('|').count(), 7, "{row}");
        }
        assert!(md.contains("| key | env var | flag | default | accepted values | meaning |"));
        let (both, client, server) = (
            md.find("### Client and server").unwrap(),
            md.find("### Client\n").unwrap(),
            md.find("### Server").unwrap(),
        );
        assert!(both < client && client < server);
        assert!(md[server..].contains("`MEMKV_MEMORY`") && !md[..server].contains("`MEMKV_MEMORY`"));
        assert!(md.contains("| `servers` | `MEMKV_SERVERS` | `--servers` | **required** |"));
    }

    #[test]
    fn process_env_reads_the_real_environment_without_changing_it() {
        let env = Sources::process_env();
        assert_eq!(env("MEMKV_SURELY_UNSET_FOR_THIS_TEST_1234"), None);
        assert_eq!(env("PATH"), std::env::var("PATH").ok());
    }
}
