//! Test harness: real `memkv-server` processes on 127.0.0.x with a dev key and dev license made
//! for the test, and clients configured for them. Every process is killed when its handle drops.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod svg;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use memkv::auth::AuthKey;
use memkv::config::{ClientConfig, Sources};
use memkv::license::SigningKey;

/// How long a server may take to print its ready line.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Credentials shared by the nodes and clients of one test.
pub struct Creds {
    pub dir: tempfile::TempDir,
    pub auth_key: String,
    pub license_path: PathBuf,
    pub pubkey: String,
    pub signing: SigningKey,
}

impl Creds {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let signing = SigningKey::generate().expect("signing key");
        let pubkey = signing.public_key().to_string();
        let now = SystemTime::now();
        let token = signing.issue("memkv-tests", now, now + Duration::from_secs(86_400), 0, 0).expect("issue license");
        let license_path = dir.path().join("dev.license");
        std::fs::write(&license_path, format!("{token}\n")).expect("write license");
        Self { auth_key: AuthKey::generate().expect("key").to_hex(), license_path, pubkey, signing, dir }
    }

    /// Environment for a server or CLI process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MEMKV_AUTH_KEY", self.auth_key.clone()),
            ("MEMKV_LICENSE", self.license_path.display().to_string()),
            ("MEMKV_LICENSE_PUBKEY", self.pubkey.clone()),
        ]
    }

    /// A client for `servers`, with `extra` settings (param keys) on top.
    pub fn client(&self, servers: &[&Node], extra: &[(&str, &str)]) -> memkv::Client {
        memkv::Client::new(self.client_config(servers, extra)).expect("client")
    }

    pub fn client_config(&self, servers: &[&Node], extra: &[(&str, &str)]) -> ClientConfig {
        let mut explicit = BTreeMap::new();
        let list: Vec<String> = servers.iter().map(|n| n.data.to_string()).collect();
        explicit.insert("servers".to_string(), list.join(","));
        explicit.insert("auth_key".to_string(), self.auth_key.clone());
        explicit.insert("license".to_string(), self.license_path.display().to_string());
        explicit.insert("license_pubkey".to_string(), self.pubkey.clone());
        explicit.insert("connect_timeout_ms".to_string(), "1000".to_string());
        explicit.insert("op_timeout_ms".to_string(), "5000".to_string());
        for (k, v) in extra {
            explicit.insert(k.to_string(), v.to_string());
        }
        let no_env = |_: &str| None;
        ClientConfig::resolve(&Sources { explicit: &explicit, env: &no_env }).expect("client config")
    }
}

/// A running node.
pub struct Node {
    pub child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub ip: String,
    pub stderr: mpsc::Receiver<String>,
}

/// `memkv-server` binary path.
pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_memkv-server")
}

/// `memkv` CLI binary path.
pub fn cli_bin() -> &'static str {
    env!("CARGO_BIN_EXE_memkv")
}

impl Node {
    /// Starts a node on `ip` (ephemeral ports) with the given extra flags.
    pub fn start(creds: &Creds, ip: &str, flags: &[&str]) -> Self {
        Self::start_on(creds, ip, "0", flags)
    }

    /// Starts a node on `ip:port` (admin on an ephemeral port unless `flags` set
    /// `--admin-listen`), with 256 MiB of memory unless `flags` set `--memory`.
    pub fn start_on(creds: &Creds, ip: &str, port: &str, flags: &[&str]) -> Self {
        let mut cmd = Command::new(server_bin());
        cmd.args(["--listen", &format!("{ip}:{port}")]);
        if !flags.contains(&"--admin-listen") {
            cmd.args(["--admin-listen", &format!("{ip}:0")]);
        }
        if !flags.contains(&"--memory") {
            cmd.args(["--memory", "256MiB"]);
        }
        cmd.args(flags)
            .env_clear()
            .env("MEMKV_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in creds.env() {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn memkv-server");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(START_DEADLINE) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let err: Vec<String> = erx.try_iter().collect();
                panic!("memkv-server on {ip} did not become ready: {}", err.join("\n"));
            }
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name}= in ready line {line:?}"))
        };
        let (data, admin) = (field("data"), field("admin"));
        Self { child, data, admin, ip: ip.to_string(), stderr: erx }
    }

    /// GET on the admin endpoint: (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// `/v1/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/v1/status");
        assert_eq!(code, 200, "status endpoint: {body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("memkv-server did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the node (SIGSTOP): its connections stay open, nothing answers. Returns once every
    /// thread of it has stopped: kill(2) only queues the signal, and a thread not yet stopped
    /// could still answer a request sent right after.
    pub fn freeze(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
        let task = format!("/proc/{}/task", self.child.id());
        let stopped = || {
            std::fs::read_dir(&task).expect("the node's /proc entry").flatten().all(|t| {
                // The state follows the ")" that ends the command name: "T" once stopped. A
                // thread that exited meanwhile has no stat to read.
                std::fs::read_to_string(t.path().join("stat"))
                    .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T')))
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !stopped() {
            assert!(std::time::Instant::now() < deadline, "memkv-server did not stop within 10 s of SIGSTOP");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets a frozen node run again (SIGCONT).
    pub fn thaw(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }

    /// Kills the process at once (crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.1 GET (the admin endpoint is plain HTTP on loopback).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path)
}

/// Minimal HTTP/1.1 request without a body: (status code, body). Panics on any failure.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    try_http_request(addr, method, path).unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http_request`] that reports failures (a node that may be gone).
pub fn try_http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {resp:?}")))?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, dechunk(&body)))
}

fn dechunk(body: &str) -> String {
    // axum answers small bodies with content-length; decode chunked ones just in case.
    if !body.contains("\r\n") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_string() };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A multi-thread runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Deterministic bytes that differ per `seed` and per position (never a constant fill, so a
/// misplaced or shifted range shows).
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        // xorshift64: eight bytes per step.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - v.len()).min(8);
        v.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    Bytes::from(v)
}
