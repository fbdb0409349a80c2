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
        server.insert("memory".into(), "1GiB".into());
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
