//! An in-process node for tests and benchmarks in other crates of the workspace (the GPU tests,
//! the plugin's benchmarks): a real [`Server`] on a loopback address with a key and a license made
//! for it, and the client settings that reach it. Not part of the supported API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::auth::AuthKey;
use crate::config::{ClientConfig, ServerConfig, Sources};
use crate::license::{License, SigningKey, TrustedKeys};
use crate::server::Server;

/// One in-process node, stopped on drop, and the client settings that reach it.
pub struct LocalNode {
    /// The node's data address.
    pub addr: SocketAddr,
    /// Client settings (plugin params) for it.
    pub params: BTreeMap<String, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Runs the node; dropped (with the node) last.
    _rt: tokio::runtime::Runtime,
}

impl LocalNode {
    /// Starts a node with 1 GiB of memory on `ip` (a free port).
    pub fn start(ip: &str) -> Self {
        Self::with_memory(ip, "1GiB")
    }

    /// Starts a node with `memory` (e.g. `4GiB`) on `ip` (a free port).
    pub fn with_memory(ip: &str, memory: &str) -> Self {
        let signing = SigningKey::generate().expect("signing key");
        let now = SystemTime::now();
        let token = signing.issue("memkv-local-node", now, now + Duration::from_secs(86_400), 0, 0).expect("license");
        let key = AuthKey::generate().expect("key").to_hex();
        let pubkey = signing.public_key().to_string();
        let common = |m: &mut BTreeMap<String, String>| {
            m.insert("auth_key".into(), key.clone());
            m.insert("license".into(), token.clone());
            m.insert("license_pubkey".into(), pubkey.clone());
        };
        let mut server = BTreeMap::new();
        common(&mut server);
        server.insert("listen".into(), format!("{ip}:0"));
        server.insert("admin_listen".into(), format!("{ip}:0"));
        server.insert("memory".into(), memory.into());
        let no_env = |_: &str| None;
        let cfg = ServerConfig::resolve(&Sources { explicit: &server, env: &no_env }).expect("server config");
        let trusted = TrustedKeys::with_extra(Some(&pubkey)).expect("trusted keys");
        let lic = License::load(Some(&cfg.license), &trusted, now).expect("license loads");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let srv = rt.block_on(Server::bind(cfg, lic)).expect("node starts");
        let addr = srv.data_addr().expect("data address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(srv.run(async move {
            let _ = rx.await;
        }));
        let mut params = BTreeMap::new();
        common(&mut params);
        params.insert("servers".into(), addr.to_string());
        params.insert("transport".into(), "tcp".into());
        Self { addr, params, stop: Some(tx), _rt: rt }
    }

    /// A client config for this node with `extra` params on top.
    pub fn client_config(&self, extra: &[(&str, &str)]) -> ClientConfig {
        let mut p = self.params.clone();
        for (k, v) in extra {
            p.insert(k.to_string(), v.to_string());
        }
        let no_env = |_: &str| None;
        ClientConfig::resolve(&Sources { explicit: &p, env: &no_env }).expect("client config")
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The node's DRAM index and arena alone, without sessions or sockets: what the index
/// benchmark (benches/index.rs) measures.
pub struct IndexProbe {
    store: crate::server::store::Store,
}

impl IndexProbe {
    /// An empty index over an arena of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        let arena = crate::server::arena::Arena::new(capacity).expect("arena");
        Self { store: crate::server::store::Store::new(arena, capacity, Duration::from_secs(30)) }
    }

    /// Stores a `len`-byte object (zeros) under `key`, as a PUT does once its bytes arrived.
    pub fn put(&self, key: &[u8], len: u64) {
        let slot = self.store.reserve(len).expect("room in the arena").freeze();
        let crc = crc32c::crc32c(slot.bytes());
        self.store.publish(crate::server::store::Object::new(key, slot, crc));
    }

    /// The size of the object under `key`, looked up as a GET does (promoted, pinned, released).
    pub fn get(&self, key: &[u8]) -> Option<u64> {
        self.store.get(key).map(|o| o.len())
    }

    /// Objects stored.
    pub fn len(&self) -> usize {
        self.store.object_count()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The same-host data path's copies, each taking the CRC32C of the bytes in the same pass
/// (`transport::crc_copy`), for the benchmarks: around the cache (`stream`: writes, and reads of
/// 1 MiB or more) or through it (smaller reads). Returns the CRC32C of `src`.
///
/// # Panics
/// When `src` and `dst` differ in length.
pub fn copy_with_crc(src: &[u8], dst: &mut [u8], stream: bool) -> u32 {
    assert_eq!(src.len(), dst.len(), "source and destination lengths differ");
    let (s, d, n) = (src.as_ptr(), dst.as_mut_ptr(), src.len());
    // SAFETY: both slices are `n` bytes long, and a shared and a mutable borrow never overlap.
    unsafe {
        if stream {
            crate::transport::crc_copy::crc_stream_copy(0, s, d, n)
        } else {
            crate::transport::crc_copy::copy_crc(0, s, d, n)
        }
    }
}

/// The CRC32C that the data paths take of bulk bytes likely cold in cache
/// (`transport::crc_copy::crc_bulk`: three lanes, prefetching one step ahead), for the benchmarks.
pub fn crc_bulk(bytes: &[u8]) -> u32 {
    crate::transport::crc_copy::crc_bulk(0, bytes)
}

/// Whether this host has an RDMA device, for tests that run only with or only without one. The
/// class directory alone does not say so: a host with the RDMA core loaded and no NIC (an H200
/// cloud VM, say) has `/sys/class/infiniband`, empty.
pub fn rdma_host() -> bool {
    std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}
