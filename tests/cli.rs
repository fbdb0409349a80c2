//! The binaries' user-facing behaviour: `memkv` key and license commands, object commands,
//! status and bench against a real node, clear failures for bad settings, and `memkv-server`
//! refusing to start with one line that names the problem and the variable to fix.
//!
//! Every process runs with a cleared environment plus exactly what its case needs, and is waited
//! for with a deadline (killed and failed past it).
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::{Creds, Node, cli_bin, runtime, server_bin};
use memkv::auth::AuthKey;
use memkv::config::{Role, params_for};
use memkv::license::{Claims, SigningKey};

/// Deadline for a CLI command that talks to at most one local node.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// How fast `memkv-server` must refuse a bad configuration.
const REFUSE_WITHIN: Duration = Duration::from_secs(5);
const DAY: Duration = Duration::from_secs(86_400);

// ---------------------------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------------------------

/// What a finished process left behind.
struct Out {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout(), self.stderr)
    }
}

/// Runs `bin args` with exactly `env`, feeding `stdin`; kills it and fails past `timeout`.
fn run(bin: &str, args: &[&str], env: &[(&str, String)], stdin: Option<&[u8]>, timeout: Duration) -> Out {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_clear()
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin} {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    Out { code: status.code(), stdout, stderr }
}

fn memkv(args: &[&str], env: &[(&str, String)]) -> Out {
    run(cli_bin(), args, env, None, CMD_TIMEOUT)
}

/// Environment of a client command against `servers`.
fn client_env(creds: &Creds, servers: &str) -> Vec<(&'static str, String)> {
    let mut env = creds.env();
    env.push(("MEMKV_SERVERS", servers.to_string()));
    env.push(("MEMKV_CONNECT_TIMEOUT_MS", "1000".to_string()));
    env.push(("MEMKV_OP_TIMEOUT_MS", "5000".to_string()));
    env
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The public key `memkv license keygen` printed on stderr.
fn printed_pubkey(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap_or_else(|| panic!("no `public key:` line on stderr: {stderr}"))
        .trim()
        .to_string()
}

/// A token with exactly one character of its claims part changed, such that the claims are
/// still valid license claims naming the same key id: only the signature can tell.
fn tamper_claims(token: &str) -> String {
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "token {token}");
    let original: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let chars: Vec<char> = parts[1].chars().collect();
    for i in 0..chars.len() {
        for c in ['A', 'B', 'Q', 'g', 'w'] {
            if chars[i] == c {
                continue;
            }
            let mut changed = chars.clone();
            changed[i] = c;
            let claims: String = changed.into_iter().collect();
            let Ok(json) = URL_SAFE_NO_PAD.decode(&claims) else { continue };
            let Ok(c) = serde_json::from_slice::<Claims>(&json) else { continue };
            if c.key_id == original.key_id && c != original {
                return format!("{}.{claims}.{}", parts[0], parts[2]);
            }
        }
    }
    panic!("no one-character change of the claims keeps them valid: {token}");
}

// ---------------------------------------------------------------------------------------------
// memkv keygen / license
// ---------------------------------------------------------------------------------------------

#[test]
fn keygen_prints_64_hex_chars_and_a_newline_different_each_run() {
    let a = memkv(&["keygen"], &[]);
    let b = memkv(&["keygen"], &[]);
    for out in [&a, &b] {
        assert!(out.ok(), "{out:?}");
        let text = out.stdout();
        assert_eq!(text.len(), 65, "{text:?}");
        assert!(text.ends_with('\n'), "{text:?}");
        assert!(text[..64].bytes().all(|c| c.is_ascii_hexdigit()), "{text:?}");
        AuthKey::parse(&text).expect("keygen output is a usable MEMKV_AUTH_KEY");
    }
    assert_ne!(a.stdout, b.stdout, "two keygen runs printed the same key");
}

#[test]
fn license_keygen_writes_a_0600_file_prints_the_public_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = path_str(&dir.path().join("signing.key"));
    let out = memkv(&["license", "keygen", "--out", &file], &[]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.is_empty(), "the secret must not go to stdout with --out: {out:?}");
    let mode = std::fs::metadata(&file).expect("key file created").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "signing key file mode {mode:o}");
    let pubkey = printed_pubkey(&out.stderr);
    assert!(pubkey.starts_with("ed25519:") && pubkey.len() == 8 + 64, "{pubkey}");
    let secret = std::fs::read_to_string(&file).unwrap();
    let key = SigningKey::parse(&secret).expect("file holds a signing key");
    assert_eq!(key.public_key().to_string(), pubkey, "printed public key matches the file");
    assert!(!out.stderr.contains(&key.to_string()), "the secret must never be printed");
    let again = memkv(&["license", "keygen", "--out", &file], &[]);
    assert!(!again.ok(), "a second keygen to the same file must refuse: {again:?}");
    assert!(again.stderr.contains(&file), "the refusal names the file: {again:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret, "the existing key was overwritten");
}

/// A signing key file and its public key, made through the CLI.
fn cli_signing_key(dir: &Path) -> (String, String) {
    let file = path_str(&dir.join("signing.key"));
    let out = memkv(&["license", "keygen", "--out", &file], &[]);
    assert!(out.ok(), "{out:?}");
    (file, printed_pubkey(&out.stderr))
}

#[test]
fn license_issued_for_a_day_verifies_and_names_the_licensee() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pubkey) = cli_signing_key(dir.path());
    let lic = path_str(&dir.path().join("acme.license"));
    let out = memkv(
        &["license", "issue", "--signing-key", &key, "--licensee", "acme-corp", "--days", "1", "--out", &lic],
        &[],
    );
    assert!(out.ok(), "{out:?}");
    let out = memkv(&["license", "verify", "--file", &lic, "--pubkey", &pubkey], &[]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout().contains("valid") && out.stdout().contains("\"acme-corp\""), "{out:?}");
}

#[test]
fn license_issue_refuses_an_expiry_in_the_past() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = cli_signing_key(dir.path());
    let lic = dir.path().join("old.license");
    let args = ["license", "issue", "--signing-key", &key, "--licensee", "late", "--expires", "2020-01-01"];
    let out = memkv(&[&args[..], &["--out", &path_str(&lic)]].concat(), &[]);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("in the past"), "{out:?}");
    assert!(!lic.exists(), "no license may be written for a past expiry");
    let out = memkv(&args, &[]);
    assert!(!out.ok() && !out.stdout().contains("memkv-license-v1"), "no token on stdout either: {out:?}");
}

#[test]
fn license_verify_rejects_a_token_with_one_claims_character_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pubkey) = cli_signing_key(dir.path());
    let out = memkv(&["license", "issue", "--signing-key", &key, "--licensee", "acme-corp", "--days", "1"], &[]);
    assert!(out.ok(), "{out:?}");
    let token = out.stdout().trim().to_string();
    let ok = memkv(&["license", "verify", "--file", &token, "--pubkey", &pubkey], &[]);
    assert!(ok.ok(), "the untouched token verifies: {ok:?}");
    let tampered = tamper_claims(&token);
    let out = memkv(&["license", "verify", "--file", &tampered, "--pubkey", &pubkey], &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("tampered") && out.stderr.contains("signature"), "{out:?}");
}

#[test]
fn license_verify_rejects_an_untrusted_key_naming_memkv_license_pubkey() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = cli_signing_key(dir.path());
    let lic = path_str(&dir.path().join("acme.license"));
    let out = memkv(&["license", "issue", "--signing-key", &key, "--licensee", "acme-corp", "--out", &lic], &[]);
    assert!(out.ok(), "{out:?}");
    let stranger = SigningKey::generate().unwrap().public_key().to_string();
    for pubkey_args in [&["--pubkey", stranger.as_str()][..], &[]] {
        let out = memkv(&[&["license", "verify", "--file", &lic][..], pubkey_args].concat(), &[]);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("not trusted") && out.stderr.contains("MEMKV_LICENSE_PUBKEY"), "{out:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// memkv-server refuses bad configurations
// ---------------------------------------------------------------------------------------------

/// Runs `memkv-server` expecting it to refuse: non-zero exit within [`REFUSE_WITHIN`], no ready
/// line, and exactly one non-blank line on stderr, which is returned.
fn server_refusal(args: &[&str], env: &[(&str, String)]) -> String {
    let started = Instant::now();
    let out = run(server_bin(), args, env, None, REFUSE_WITHIN);
    assert!(started.elapsed() < REFUSE_WITHIN);
    assert!(!out.ok() && out.code.is_some(), "memkv-server must exit non-zero: {out:?}");
    assert!(!out.stdout().contains("ready"), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {out:?}");
    lines[0].to_string()
}

fn server_args(ip: &str) -> Vec<String> {
    ["--listen", &format!("{ip}:0"), "--admin-listen", &format!("{ip}:0")].map(String::from).to_vec()
}

fn with_memory(mut args: Vec<String>, memory: &str) -> Vec<String> {
    args.extend(["--memory".to_string(), memory.to_string()]);
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `creds.env()` with `name` replaced by `value` (or removed when `None`).
fn env_with(creds: &Creds, name: &str, value: Option<String>) -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = creds.env().into_iter().filter(|(k, _)| *k != name).collect();
    if let Some(v) = value {
        let key = ["MEMKV_AUTH_KEY", "MEMKV_LICENSE", "MEMKV_LICENSE_PUBKEY", "MEMKV_MEMORY"]
            .into_iter()
            .find(|k| *k == name)
            .expect("known variable");
        env.push((key, v));
    }
    env
}

fn write_license(dir: &Path, name: &str, token: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    path_str(&p)
}

#[test]
fn server_refuses_to_start_without_a_license() {
    let creds = Creds::new();
    let line = server_refusal(
        &strs(&with_memory(server_args("127.0.0.49"), "64MiB")),
        &env_with(&creds, "MEMKV_LICENSE", None),
    );
    assert!(line.contains("MEMKV_LICENSE is not set"), "{line}");
}

#[test]
fn server_refuses_an_expired_license() {
    let creds = Creds::new();
    let now = SystemTime::now();
    let token = creds.signing.issue("expired-co", now - 2 * DAY, now - DAY, 0, 0).unwrap();
    let lic = write_license(creds.dir.path(), "expired.license", &token);
    let line = server_refusal(
        &strs(&with_memory(server_args("127.0.0.50"), "64MiB")),
        &env_with(&creds, "MEMKV_LICENSE", Some(lic)),
    );
    assert!(line.contains("expired") && line.contains("expired-co"), "{line}");
    assert!(line.contains("MEMKV_LICENSE"), "{line}");
}

#[test]
fn server_refuses_a_tampered_license() {
    let creds = Creds::new();
    let token = std::fs::read_to_string(&creds.license_path).unwrap();
    let lic = write_license(creds.dir.path(), "tampered.license", &tamper_claims(&token));
    let line = server_refusal(
        &strs(&with_memory(server_args("127.0.0.51"), "64MiB")),
        &env_with(&creds, "MEMKV_LICENSE", Some(lic)),
    );
    assert!(line.contains("tampered") && line.contains("signature"), "{line}");
    assert!(line.contains("MEMKV_LICENSE"), "{line}");
}

#[test]
fn server_refuses_a_malformed_auth_key_pointing_at_memkv_keygen() {
    let creds = Creds::new();
    let bad = format!("{}zz", &creds.auth_key[..62]);
    let line = server_refusal(
        &strs(&with_memory(server_args("127.0.0.52"), "64MiB")),
        &env_with(&creds, "MEMKV_AUTH_KEY", Some(bad)),
    );
    assert!(line.contains("MEMKV_AUTH_KEY") && line.contains("memkv keygen"), "{line}");
    assert!(!line.contains(&creds.auth_key[..62]), "the key must not be echoed: {line}");
}

#[test]
fn server_refuses_a_memory_size_that_is_not_a_size() {
    let creds = Creds::new();
    let line = server_refusal(&strs(&server_args("127.0.0.53")), &env_with(&creds, "MEMKV_MEMORY", Some("abc".into())));
    assert!(line.contains("MEMKV_MEMORY=\"abc\"") && line.contains("not a size"), "{line}");
}

#[test]
fn server_refuses_a_listen_value_that_is_not_an_address() {
    let creds = Creds::new();
    let args = ["--listen", "not-an-address", "--admin-listen", "127.0.0.54:0", "--memory", "64MiB"];
    let line = server_refusal(&args, &creds.env());
    assert!(line.contains("MEMKV_LISTEN=\"not-an-address\"") && line.contains("IP:PORT"), "{line}");
}

/// A license allowing 1 MiB per node, for a node asked to hold 64 MiB.
fn small_capacity_env(creds: &Creds) -> Vec<(&'static str, String)> {
    let now = SystemTime::now();
    let token = creds.signing.issue("small-co", now, now + DAY, 0, 1 << 20).unwrap();
    let lic = write_license(creds.dir.path(), "small.license", &token);
    env_with(creds, "MEMKV_LICENSE", Some(lic))
}

#[test]
fn server_refuses_a_memory_size_above_the_licensed_capacity() {
    let creds = Creds::new();
    let line = server_refusal(&strs(&with_memory(server_args("127.0.0.55"), "64MiB")), &small_capacity_env(&creds));
    assert!(line.contains("exceeds the licensed 1048576 bytes") && line.contains("67108864"), "{line}");
    assert!(line.contains("capacity_bytes"), "{line}");
}

#[test]
fn server_over_capacity_refusal_names_the_memory_setting() {
    let creds = Creds::new();
    let line = server_refusal(&strs(&with_memory(server_args("127.0.0.59"), "64MiB")), &small_capacity_env(&creds));
    assert!(line.contains("MEMKV_MEMORY") || line.contains("--memory"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// memkv client commands fail clearly on bad settings
// ---------------------------------------------------------------------------------------------

#[test]
fn client_rejects_a_non_numeric_num_connections_naming_variable_and_range() {
    let creds = Creds::new();
    let mut env = client_env(&creds, "127.0.0.56:9900");
    env.push(("MEMKV_NUM_CONNECTIONS", "abc".into()));
    let out = memkv(&["get", "k"], &env);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("MEMKV_NUM_CONNECTIONS=\"abc\"") && out.stderr.contains("1..=64"), "{out:?}");
}

#[test]
fn rdma_transport_on_a_host_without_rdma_fails_at_start_naming_the_fallback() {
    if memkv::testing::rdma_host() {
        return; // an RDMA host: `rdma` can be honoured there
    }
    let creds = Creds::new();
    let mut env = client_env(&creds, "127.0.0.57:9900");
    env.push(("MEMKV_TRANSPORT", "rdma".into()));
    let out = memkv(&["get", "k"], &env);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("MEMKV_TRANSPORT=rdma cannot be honoured"), "{out:?}");
    assert!(out.stderr.contains("RDMA is unavailable on this host"), "{out:?}");
    assert!(out.stderr.contains("set MEMKV_TRANSPORT=auto"), "{out:?}");
}

#[test]
fn shm_transport_to_a_node_on_another_host_fails_at_start() {
    let creds = Creds::new();
    // 192.0.2.0/24 is TEST-NET-1: never an address of this host.
    let env = [client_env(&creds, "192.0.2.1:9900"), vec![("MEMKV_TRANSPORT", "shm".into())]].concat();
    let out = memkv(&["get", "k"], &env);
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("MEMKV_TRANSPORT=shm cannot be honoured: server 192.0.2.1:9900 is not on this host"),
        "{out:?}"
    );
}

#[test]
fn a_one_sided_transport_with_payload_macs_is_refused_at_start() {
    let creds = Creds::new();
    let env = [
        client_env(&creds, "127.0.0.58:9900"),
        vec![("MEMKV_TRANSPORT", "shm".into()), ("MEMKV_PAYLOAD_MAC", "true".into())],
    ]
    .concat();
    let out = memkv(&["get", "k"], &env);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("MEMKV_TRANSPORT=shm cannot be honoured with MEMKV_PAYLOAD_MAC=true"), "{out:?}");
}

#[test]
fn client_without_servers_names_memkv_servers() {
    let creds = Creds::new();
    let out = memkv(&["exists", "k"], &creds.env());
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("MEMKV_SERVERS is not set"), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// memkv against a running node
// ---------------------------------------------------------------------------------------------

#[test]
fn object_commands_store_fetch_check_and_remove_blocks() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.45", &[]);
    let env = client_env(&creds, &node.data.to_string());
    let dir = tempfile::tempdir().unwrap();
    // Binary data with every byte value, NULs and newlines included.
    let blob: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(7) ^ (i >> 8)) as u8).collect();
    let file = path_str(&dir.path().join("blob.bin"));
    std::fs::write(&file, &blob).unwrap();

    let out = memkv(&["put", "blob", &file], &env);
    assert!(out.ok(), "{out:?}");
    assert!(out.stderr.contains("stored 70000 bytes"), "{out:?}");
    let out = memkv(&["get", "blob", "-"], &env);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout == blob, "stdout differs from the stored bytes ({} vs {} bytes)", out.stdout.len(), blob.len());
    let copy = dir.path().join("copy.bin");
    assert!(memkv(&["get", "blob", &path_str(&copy)], &env).ok());
    assert_eq!(std::fs::read(&copy).unwrap(), blob);

    let out = run(cli_bin(), &["put", "from-stdin"], &env, Some(b"data\n"), CMD_TIMEOUT);
    assert!(out.ok(), "{out:?}");
    assert_eq!(memkv(&["get", "from-stdin"], &env).stdout, b"data\n");

    let out = memkv(&["get", "missing"], &env);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("not found") && out.stdout.is_empty(), "{out:?}");

    let out = memkv(&["exists", "blob", "missing"], &env);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout(), "blob\t70000\nmissing\tabsent\n");
    let out = memkv(&["exists", "blob", "from-stdin"], &env);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout(), "blob\t70000\nfrom-stdin\t5\n");

    let out = memkv(&["rm", "blob"], &env);
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout(), "blob\tremoved\n");
    assert_eq!(memkv(&["get", "blob"], &env).code, Some(1), "removed blocks are gone");
    assert_eq!(memkv(&["rm", "blob"], &env).stdout(), "blob\tabsent\n");
    assert_eq!(node.status()["objects"], 1);
}

#[test]
fn status_json_reports_the_nodes_own_status() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.46", &["--node-id", "cli-status-node"]);
    let client = creds.client(&[&node], &[]);
    runtime().block_on(client.put(b"one", Bytes::from_static(b"block"))).unwrap();
    let out = memkv(&["status", "--json"], &client_env(&creds, &node.data.to_string()));
    assert!(out.ok(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    let nodes = doc.as_array().expect("a JSON array of nodes");
    assert_eq!(nodes.len(), 1, "{doc}");
    assert_eq!(nodes[0]["server"], node.data.to_string());
    assert_eq!(nodes[0]["reachable"], true);
    let status = &nodes[0]["status"];
    assert_eq!(status["node_id"], "cli-status-node");
    assert_eq!(status["node_id"], node.status()["node_id"]);
    assert_eq!(status["objects"], 1);
    assert_eq!(status["state"], "serving");
}

#[test]
fn status_table_shows_each_nodes_drives_and_warns_about_a_degraded_one() {
    let creds = Creds::new();
    let memory_only = Node::start(&creds, "127.0.0.61", &[]);
    let dir = tempfile::tempdir().unwrap();
    let drive = dir.path().join("d");
    std::fs::create_dir(&drive).unwrap();
    let d = drive.display().to_string();
    let node = Node::start(&creds, "127.0.0.62", &["--data-dir", &d, "--segment-size", "1MiB", "--durability", "sync"]);
    let servers = format!("{},{}", memory_only.data, node.data);
    let out = memkv(&["status"], &client_env(&creds, &servers));
    assert!(out.ok(), "{out:?}");
    let stdout = out.stdout();
    let rows: Vec<&str> = stdout.lines().collect();
    assert!(rows[0].ends_with("DRIVES"), "{stdout}");
    let row = |n: &Node| rows.iter().find(|r| r.starts_with(&n.data.to_string())).copied().unwrap_or_default();
    assert!(row(&memory_only).ends_with(" -"), "{stdout}");
    assert!(row(&node).contains("1/1 online") && row(&node).contains("sync, 0 objects"), "{stdout}");
    // The drive disappears and the next segment cannot be created: degraded, still serving.
    std::fs::remove_dir_all(&drive).unwrap();
    let client = creds.client(&[&node], &[]);
    for i in 0..30 {
        let _ = runtime().block_on(client.put(format!("k{i}").as_bytes(), Bytes::from(vec![1u8; 100 << 10])));
    }
    let out = memkv(&["status"], &client_env(&creds, &servers));
    assert!(out.ok(), "a degraded node is reachable: {out:?}");
    assert!(out.stdout().contains("0/1 online"), "{out:?}");
    let stderr = &out.stderr;
    assert!(stderr.contains(&format!("memkv status: degraded: {}: drive {d} is offline:", node.data)), "{stderr}");
}

#[test]
fn status_with_an_unreachable_server_exits_non_zero_and_says_unreachable() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.47", &[]);
    let dead = {
        let l = TcpListener::bind("127.0.0.47:0").unwrap();
        l.local_addr().unwrap()
    };
    let env = client_env(&creds, &format!("{},{dead}", node.data));
    let out = memkv(&["status"], &env);
    assert!(!out.ok() && out.code.is_some(), "{out:?}");
    let text = out.stdout();
    let dead_row = text.lines().find(|l| l.starts_with(&dead.to_string())).unwrap_or_else(|| panic!("{out:?}"));
    assert!(dead_row.contains("unreachable"), "{out:?}");
    let live_row = text.lines().find(|l| l.starts_with(&node.data.to_string())).unwrap_or_else(|| panic!("{out:?}"));
    assert!(!live_row.contains("unreachable"), "{out:?}");
    assert!(out.stderr.contains("unreachable"), "{out:?}");
    let out = memkv(&["status", "--json"], &env);
    assert_eq!(out.code, Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc[0]["reachable"], true, "{doc}");
    assert_eq!(doc[1]["reachable"], false, "{doc}");
}

#[test]
fn bench_both_runs_every_op_of_both_phases_without_errors_or_misses() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.48", &[]);
    let args =
        ["bench", "--op", "both", "--size", "64KiB", "--count", "200", "--duration", "5", "--no-progress", "--json"];
    let out = run(cli_bin(), &args, &client_env(&creds, &node.data.to_string()), None, Duration::from_secs(40));
    assert!(out.ok(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    let phases = doc.as_array().expect("an array of phases");
    assert_eq!(phases.len(), 2, "{doc}");
    for (p, op) in phases.iter().zip(["put", "get"]) {
        assert_eq!(p["op"], op, "{doc}");
        assert_eq!(p["size_bytes"], 65536, "{doc}");
        assert_eq!(p["ops"], 200, "{doc}");
        assert_eq!(p["errors"], 0, "{doc}");
        assert_eq!(p["misses"], 0, "{doc}");
    }
    assert_eq!(node.status()["objects"], 200);

    // The same as CSV, with the JSON field names as the header.
    let args =
        ["bench", "--op", "get", "--size", "4KiB,64KiB", "--keys", "8", "--count", "50", "--no-progress", "--csv"];
    let out = run(cli_bin(), &args, &client_env(&creds, &node.data.to_string()), None, Duration::from_secs(40));
    assert!(out.ok(), "{out:?}");
    let text = out.stdout();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let first = phases[0].as_object().unwrap();
    assert_eq!(header.len(), first.len(), "{text}");
    assert!(header.iter().all(|h| first.contains_key(*h)), "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[1].starts_with("get,4096,50,") && lines[2].starts_with("get,65536,50,"), "{text}");

    // Batched requests: every block counted once, the last request short (100 = 14 x 7 + 2),
    // every GET compared.
    let args = [
        "bench",
        "--op",
        "both",
        "--size",
        "4KiB",
        "--batch",
        "7",
        "--inflight",
        "21",
        "--count",
        "100",
        "--prefix",
        "batched",
        "--no-progress",
        "--json",
    ];
    let out = run(cli_bin(), &args, &client_env(&creds, &node.data.to_string()), None, Duration::from_secs(40));
    assert!(out.ok(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    for (p, op) in doc.as_array().expect("phases").iter().zip(["put", "get"]) {
        assert_eq!(p["op"], op, "{doc}");
        assert_eq!((p["ops"].as_u64(), p["batch"].as_u64(), p["inflight"].as_u64()), (Some(100), Some(7), Some(21)));
        assert_eq!((p["errors"].as_u64(), p["misses"].as_u64()), (Some(0), Some(0)), "{doc}");
    }
}

#[test]
fn bench_pool_reads_into_the_pool_and_compares_every_block() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.66", &[]);
    let env = client_env(&creds, &node.data.to_string());
    let json = |out: &Out| -> Vec<serde_json::Value> {
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
        doc.as_array().expect("an array of phases").clone()
    };
    // Requests of 3 into 2 requests' pools, every GET compared with what was written; 40 blocks
    // end with a request of 1. One block size below the inline limit, one above.
    let args = [
        "bench",
        "--op",
        "both",
        "--size",
        "4KiB,64KiB",
        "--keys",
        "10",
        "--batch",
        "3",
        "--inflight",
        "6",
        "--count",
        "40",
        "--verify-every",
        "1",
        "--pool",
        "--prefix",
        "pooled",
        "--no-progress",
        "--json",
    ];
    let out = run(cli_bin(), &args, &env, None, Duration::from_secs(40));
    assert!(out.ok(), "{out:?}");
    let phases = json(&out);
    assert_eq!(phases.len(), 4, "{phases:?}");
    for p in &phases {
        assert_eq!(
            (p["ops"].as_u64(), p["errors"].as_u64(), p["misses"].as_u64()),
            (Some(40), Some(0), Some(0)),
            "{p}"
        );
    }
    // Keys nobody wrote: every block a miss, none an error (a miss leaves its pool block unread).
    let args = [
        "bench",
        "--op",
        "get",
        "--no-fill",
        "--size",
        "4KiB",
        "--keys",
        "5",
        "--count",
        "20",
        "--pool",
        "--prefix",
        "never-written",
        "--no-progress",
        "--json",
    ];
    let out = run(cli_bin(), &args, &env, None, Duration::from_secs(40));
    assert_eq!(out.code, Some(1), "misses make bench exit 1: {out:?}");
    let phases = json(&out);
    assert_eq!((phases[0]["ops"].as_u64(), phases[0]["misses"].as_u64()), (Some(20), Some(20)), "{phases:?}");
    assert_eq!(phases[0]["errors"], 0, "{phases:?}");
}

#[test]
fn bench_plot_writes_an_svg_with_one_line_per_op_through_the_measured_sizes() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.63", &[]);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let svg_arg = path_str(&svg);
    let args = [
        "bench",
        "--size",
        "4KiB,64KiB",
        "--duration",
        "0.3",
        "--count",
        "400",
        "--no-progress",
        "--json",
        "--plot",
        &svg_arg,
    ];
    let out = run(cli_bin(), &args, &client_env(&creds, &node.data.to_string()), None, Duration::from_secs(40));
    assert!(out.ok(), "{out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{rows:?}");
    let doc = std::fs::read_to_string(&svg).expect("--plot wrote the file");
    assert!(doc.starts_with("<?xml") && doc.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{doc}");
    assert!(doc.trim_end().ends_with("</svg>"), "{doc}");
    for text in ["--via raw", ">4 KiB<", ">64 KiB<", "block size", "GiB/s", ">put<", ">get<"] {
        assert!(doc.contains(text), "{text} missing:\n{doc}");
    }
    let lines = common::svg::polylines(&doc);
    assert_eq!(lines.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["put", "get"], "{doc}");
    for (op, pts) in &lines {
        assert_eq!(pts.len(), 2, "{op}: {doc}");
        assert!(pts[0].0 < pts[1].0, "{op}: 4 KiB left of 64 KiB: {pts:?}");
        // Each point's height follows the row's GiB/s: the faster size is higher (smaller y).
        let gib = |size: u64| {
            rows.iter()
                .find(|r| r["op"] == op.as_str() && r["size_bytes"] == size)
                .and_then(|r| r["gib_per_s"].as_f64())
                .unwrap_or_else(|| panic!("no {op} {size} row"))
        };
        let (small, large) = (gib(4096), gib(65536));
        assert!(small != large, "{rows:?}");
        assert_eq!(small > large, pts[0].1 < pts[1].1, "{op}: GiB/s {small} vs {large}, y {pts:?}");
    }
}

#[test]
fn bench_refuses_flags_it_cannot_honour_before_measuring() {
    // Nothing listens: each refusal must come before any connection is tried.
    let env = [("MEMKV_SERVERS", "127.0.0.1:9".to_string())];
    let dir = tempfile::tempdir().unwrap();
    let nowhere = path_str(&dir.path().join("missing").join("bench.svg"));
    let cases: &[(&[&str], &str)] = &[
        (&["--via", "nixl", "--op", "mixed"], "--op mixed"),
        (&["--via", "nixl", "--keys", "8"], "--keys"),
        (&["--via", "nixl", "--no-fill", "--op", "get"], "--no-fill"),
        (&["--via", "nixl", "--prefix", "mine"], "--prefix"),
        (&["--via", "nixl", "--gpu"], "--gpu"),
        (&["--via", "nixl", "--batch", "4"], "--batch"),
        (&["--via", "nixl", "--pool"], "--pool"),
        (&["--gpu", "--pool"], "--pool"),
        (&["--python", "/usr/bin/python3"], "--via nixl"),
        (&["--nixl-plugin-dir", "/tmp"], "--via nixl"),
        (&["--gpu", "--plot", "gpu.svg"], "--plot"),
        (&["--plot", &nowhere], "does not exist"),
    ];
    for (flags, needle) in cases {
        let args: Vec<&str> = ["bench", "--no-progress"].iter().chain(flags.iter()).copied().collect();
        let out = memkv(&args, &env);
        assert_eq!(out.code, Some(2), "{flags:?}: {out:?}");
        let line = out.stderr.trim();
        assert!(line.contains(needle) && !line.contains('\n'), "{flags:?} must be refused naming {needle}: {out:?}");
    }
}

#[test]
fn bench_via_nixl_without_a_python_with_nixl_names_the_venv_script() {
    let plugin = tempfile::tempdir().unwrap();
    std::fs::write(plugin.path().join("libplugin_MEMKV.so"), b"").unwrap();
    let plugin_arg = path_str(plugin.path());
    let base = ["bench", "--via", "nixl", "--size", "64KiB", "--duration", "0.3", "--nixl-plugin-dir", &plugin_arg];
    let env = [("MEMKV_SERVERS", "127.0.0.1:9".to_string())];
    let by_flag = |py: &str| {
        let mut args = base.to_vec();
        args.extend(["--python", py]);
        memkv(&args, &env)
    };
    let by_env = |py: &str| memkv(&base, &[env[0].clone(), ("MEMKV_PYTHON", py.to_string())]);
    for (out, py) in [
        (by_flag("/bin/false"), "/bin/false"),
        (by_flag("/nonexistent/python3"), "/nonexistent/python3"),
        (by_env("/bin/false"), "/bin/false"),
    ] {
        assert_eq!(out.code, Some(2), "{out:?}");
        let err = out.stderr.trim();
        for text in [
            "memkv bench --via nixl needs Python with the nixl-cu12 wheel",
            "run scripts/nixl-venv.sh 1.5.1 and pass --python .venv/nixl-1.5.1/bin/python (or set MEMKV_PYTHON)",
            py,
        ] {
            assert!(err.contains(text), "{text:?} missing: {out:?}");
        }
        assert_eq!(err.lines().count(), 1, "one line: {out:?}");
    }
}

#[test]
fn bench_via_nixl_without_the_plugin_names_nixl_plugin_dir_and_the_build_command() {
    let empty = tempfile::tempdir().unwrap();
    let empty_arg = path_str(empty.path());
    let env = [("MEMKV_SERVERS", "127.0.0.1:9".to_string()), ("MEMKV_PYTHON", "/bin/false".to_string())];
    let by_flag = memkv(&["bench", "--via", "nixl", "--nixl-plugin-dir", &empty_arg], &env);
    let mut with_var = env.to_vec();
    with_var.push(("NIXL_PLUGIN_DIR", empty_arg.clone()));
    let by_env = memkv(&["bench", "--via", "nixl"], &with_var);
    for (out, from) in [(by_flag, "--nixl-plugin-dir"), (by_env, "NIXL_PLUGIN_DIR")] {
        assert_eq!(out.code, Some(2), "{out:?}");
        let err = out.stderr.trim();
        for text in [
            &format!("{empty_arg} (from {from}) holds no libplugin_MEMKV.so"),
            "cargo build --release -p memkv-nixl",
            "NIXL_PLUGIN_DIR",
        ] {
            assert!(err.contains(text), "{text:?} missing: {out:?}");
        }
    }
}

/// A stand-in for a Python with nixl-cu12, speaking the driver's side of the contract that
/// `memkv bench --via nixl` relies on (benches/nixl_kv.py): `--check` prints the version; a run
/// prints NIXL log noise, then one JSON line per size, and exits 1 when a block differed. It
/// records its arguments and the variables it was given. The real driver runs in
/// tests/nixl/test_bench.py (scripts/test-nixl.sh).
const FAKE_DRIVER: &str = r#"#!/bin/sh
for a in "$@"; do
  if [ "$a" = --check ]; then echo '{"nixl": "0.0-fake", "python": "sh"}'; exit 0; fi
done
here=$(dirname "$0")
shift 2
echo "$@" > "$here/args.txt"
env | grep -E '^(MEMKV_|NIXL_PLUGIN_DIR=)' | sort > "$here/env.txt"
echo '2026-01-01 NIXL INFO    _api.py:281 Initialized NIXL agent: fake'
echo '{"block_bytes": 65536, "batch": 16, "handles": 2, "obj_register_us": 1.0, "phases": [{"op": "put", "blocks": 320, "seconds": 0.5, "gib_per_s": 0.04, "blocks_per_s": 640, "requests": 20, "p50_us": 900.5, "p99_us": 1500.0, "p999_us": 1600.0, "errors": 0, "first_error": null}, {"op": "get", "blocks": 160, "seconds": 0.5, "gib_per_s": 0.02, "blocks_per_s": 320, "requests": 10, "p50_us": 800.0, "p99_us": 1200.0, "p999_us": 1300.0, "errors": 1, "first_error": null}]}'
exit 1
"#;

#[test]
fn bench_via_nixl_turns_the_drivers_lines_into_rows_and_exits_1_on_a_mismatched_block() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("python");
    std::fs::write(&fake, FAKE_DRIVER).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin = tempfile::tempdir().unwrap();
    std::fs::write(plugin.path().join("libplugin_MEMKV.so"), b"").unwrap();
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.64", &[]);
    let svg = path_str(&dir.path().join("nixl.svg"));
    let (fake_arg, plugin_arg) = (path_str(&fake), path_str(plugin.path()));
    let args = [
        "bench",
        "--via",
        "nixl",
        "--size",
        "64KiB",
        "--duration",
        "0.5",
        "--connections",
        "2",
        "--transport",
        "tcp",
        "--json",
        "--plot",
        &svg,
        "--python",
        &fake_arg,
        "--nixl-plugin-dir",
        &plugin_arg,
    ];
    let out = run(cli_bin(), &args, &client_env(&creds, &node.data.to_string()), None, Duration::from_secs(40));
    assert_eq!(out.code, Some(1), "a differing block fails the run: {out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows even on failure");
    let rows = rows.as_array().expect("rows");
    let brief: Vec<(String, u64, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
            (r["op"].as_str().unwrap().to_string(), n("size_bytes"), n("ops"), n("errors"), n("inflight"))
        })
        .collect();
    assert_eq!(brief, [("put".into(), 65536, 320, 0, 32), ("get".into(), 65536, 160, 1, 32)], "{rows:?}");
    assert_eq!(rows[0]["p50_us"], 900.5);
    assert_eq!(rows[0]["connections"], 2);
    assert_eq!(rows[0]["ops_per_s"], 640.0);

    let given = std::fs::read_to_string(dir.path().join("args.txt")).expect("the driver ran");
    assert_eq!(
        given.trim(),
        "--json --size 65536 --batch 16 --handles 2 --duration 0.5 --op both --max-blocks 1000000",
        "--inflight 32 is 2 requests of 16 blocks"
    );
    let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    for line in [
        format!("MEMKV_SERVERS={}", node.data),
        "MEMKV_NUM_CONNECTIONS=2".to_string(),
        "MEMKV_TRANSPORT=tcp".to_string(),
        format!("MEMKV_AUTH_KEY={}", creds.auth_key),
        format!("NIXL_PLUGIN_DIR={plugin_arg}"),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not passed to the driver:\n{env}");
    }
    let doc = std::fs::read_to_string(&svg).expect("--plot is written on a failed run too");
    assert!(doc.contains("--via nixl (NIXL 0.0-fake)") && doc.contains("transport tcp"), "{doc}");
    assert_eq!(common::svg::polylines(&doc).len(), 2, "{doc}");
}

// ---------------------------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------------------------

const SUBCOMMANDS: &[&str] = &["keygen", "license", "put", "get", "exists", "rm", "status", "bench"];
/// The variables `memkv --help` documents through its global flags.
const CLI_FLAG_VARS: &[&str] = &[
    "MEMKV_SERVERS",
    "MEMKV_AUTH_KEY",
    "MEMKV_LICENSE",
    "MEMKV_LICENSE_PUBKEY",
    "MEMKV_NAMESPACE",
    "MEMKV_TRANSPORT",
    "MEMKV_OP_TIMEOUT_MS",
    "MEMKV_CONFIG",
    "MEMKV_LOG",
];

#[test]
fn memkv_help_lists_every_subcommand_and_the_variables_of_its_flags() {
    let out = memkv(&["--help"], &[]);
    assert!(out.ok(), "{out:?}");
    let text = out.stdout();
    for cmd in SUBCOMMANDS {
        assert!(text.lines().any(|l| l.trim_start().starts_with(&format!("{cmd} "))), "`{cmd}` missing:\n{text}");
    }
    for var in CLI_FLAG_VARS {
        assert!(text.contains(var), "{var} missing:\n{text}");
    }
    let out = memkv(&["license", "--help"], &[]);
    assert!(out.ok(), "{out:?}");
    for cmd in ["keygen", "pubkey", "issue", "verify"] {
        assert!(out.stdout().lines().any(|l| l.trim_start().starts_with(&format!("{cmd} "))), "{out:?}");
    }
}

#[test]
fn memkv_help_mentions_every_client_setting_the_cli_reads() {
    let text = memkv(&["--help"], &[]).stdout();
    let missing: Vec<String> = params_for(Role::Client)
        .flat_map(|p| [p.env.to_string(), p.flag()])
        .filter(|v| !text.contains(v.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in `memkv --help`: {missing:?}");
}

#[test]
fn memkv_server_help_mentions_every_server_setting() {
    let out = run(server_bin(), &["--help"], &[], None, CMD_TIMEOUT);
    assert!(out.ok(), "{out:?}");
    let text = out.stdout();
    let vars: Vec<String> =
        params_for(Role::Server).flat_map(|p| [p.env.to_string(), p.flag()]).chain(["MEMKV_LOG".to_string()]).collect();
    assert!(vars.len() > 10, "{vars:?}");
    for var in vars {
        assert!(text.contains(&var), "{var} missing from memkv-server --help:\n{text}");
    }
}

#[test]
fn get_into_a_pipe_closed_early_ends_quietly() {
    let creds = Creds::new();
    let node = Node::start(&creds, "127.0.0.60", &[]);
    let env = client_env(&creds, &node.data.to_string());
    let big = vec![7u8; 8 << 20];
    assert!(run(cli_bin(), &["put", "big"], &env, Some(&big), CMD_TIMEOUT).ok());
    let mut cmd = std::process::Command::new(cli_bin());
    cmd.args(["get", "big"]).env_clear().stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take()); // the reader goes away, like `| head -c 10`
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // Killed by SIGPIPE, as `cat` would be.
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(libc::SIGPIPE), "{out:?}");
    assert_eq!(first, [7; 10]);
}
