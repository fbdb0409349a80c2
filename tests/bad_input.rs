//! The node survives hostile input and says why: garbage, truncated and oversized frames, unknown
//! ops, newer versions, wrong keys, tampered and replayed frames, stale handshakes, bad keys and
//! checksums, lying batch counts, and a storm of garbage connections beside a real client.
//! The same raw client also checks that a burst of pipelined requests is answered in one send.
//!
//! A tiny raw client (std `TcpStream` with read timeouts) speaks the wire protocol directly, the
//! same way `src/client/session.rs` does, so that each test can send exactly the bytes it wants.
//! After every case a normal `memkv::Client` must still do a put/get round trip on the same node.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{Creds, Node, runtime};
use memkv::auth::{self, AuthKey, Hello, Role, SessionKeys};
use memkv::wire::{self, HEADER_LEN, Header, Limits, MAC_LEN, MAX_META_LEN, Op, Status, VERSION};

/// Bound on every socket read and write of the raw client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Raw protocol client
// ---------------------------------------------------------------------------------------------

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the data port");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// One frame as received from the node.
struct Answer {
    raw: [u8; HEADER_LEN],
    header: Header,
    meta: Vec<u8>,
    mac: [u8; MAC_LEN],
    payload: Vec<u8>,
}

impl Answer {
    fn status(&self) -> Status {
        self.header.status()
    }

    /// The meta section as text (error answers carry their message there).
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.meta).into_owned()
    }
}

/// Reads and decodes one frame (header, meta, MAC, payload; no payload MAC is ever negotiated).
fn read_answer(s: &mut TcpStream) -> Answer {
    let mut raw = [0u8; HEADER_LEN];
    s.read_exact(&mut raw).expect("read the answer's header");
    let limits = Limits { max_meta: MAX_META_LEN as u32, max_payload: 1 << 30 };
    let header = Header::decode(&raw, &limits).expect("the answer's header decodes");
    assert!(header.is_response(), "the node sent a non-response frame: {header:?}");
    let mut meta = vec![0u8; header.meta_len as usize];
    s.read_exact(&mut meta).expect("read the answer's meta");
    let mut mac = [0u8; MAC_LEN];
    s.read_exact(&mut mac).expect("read the answer's MAC");
    let mut payload = vec![0u8; header.length as usize];
    s.read_exact(&mut payload).expect("read the answer's payload");
    Answer { raw, header, meta, mac, payload }
}

/// Asserts that the node closes the connection (EOF or reset) within the read timeout.
fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {}
        Ok(n) => panic!("the node sent {n} more byte(s) instead of closing the connection"),
        Err(e) => panic!("the node did not close the connection within {IO_TIMEOUT:?}: {e}"),
    }
}

/// The bytes of a HELLO request.
fn hello_bytes(key: &AuthKey, version: u8, unix_ms: u64, nonce: [u8; 32]) -> Vec<u8> {
    let meta = Hello { nonce, unix_ms, features: 0 }.encode(b"");
    let mut h = Header::request(Op::Hello, 0);
    h.version = version;
    h.meta_len = meta.len() as u32;
    let raw = h.encode();
    let mac = auth::hello_request_mac(key, &raw, &meta);
    [&raw[..], &meta[..], &mac[..]].concat()
}

fn now_ms() -> u64 {
    auth::unix_ms(SystemTime::now())
}

/// An authenticated session over a raw socket.
struct Raw {
    s: TcpStream,
    keys: SessionKeys,
    next_id: u64,
}

impl Raw {
    /// Connects and runs the handshake the way the real client does; panics unless it succeeds.
    fn open(addr: SocketAddr, key: &AuthKey) -> Self {
        let mut s = connect(addr);
        let nonce = auth::random_bytes().expect("nonce");
        s.write_all(&hello_bytes(key, VERSION, now_ms(), nonce)).expect("send HELLO");
        let a = read_answer(&mut s);
        assert_eq!(a.status(), Status::Ok, "handshake refused: {}", a.text());
        let expected = auth::hello_response_mac(key, &a.raw, &a.meta, &nonce);
        assert!(auth::macs_equal(&expected, &a.mac), "the node's HELLO answer does not authenticate");
        let (theirs, _node_id) = Hello::decode(&a.meta).expect("HELLO answer meta");
        let keys = SessionKeys::derive(key, &nonce, &theirs.nonce, Role::Client);
        Self { s, keys, next_id: 1 }
    }

    /// A request header with a fresh request id.
    fn request(&mut self, op: Op) -> Header {
        let id = self.next_id;
        self.next_id += 1;
        Header::request(op, id)
    }

    /// Seals a frame (next sequence number, header MAC) and returns its bytes.
    fn seal(&mut self, mut h: Header, meta: &[u8], payload: &[u8]) -> Vec<u8> {
        h.meta_len = meta.len() as u32;
        h.length = payload.len() as u64;
        let (raw, mac) = self.keys.send.seal(&mut h, meta);
        [&raw[..], meta, &mac[..], payload].concat()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send a frame");
    }

    /// Reads one answer and checks its MAC and sequence number.
    fn recv(&mut self) -> Answer {
        let a = read_answer(&mut self.s);
        self.keys.recv.open(&a.raw, &a.header, &a.meta, &a.mac).expect("the node's answer authenticates");
        a
    }

    fn call(&mut self, h: Header, meta: &[u8], payload: &[u8]) -> Answer {
        let frame = self.seal(h, meta, payload);
        self.send(&frame);
        let a = self.recv();
        assert_eq!(a.header.request_id, h.request_id, "answer for another request");
        a
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Answer {
        let mut h = self.request(Op::Put);
        h.total = value.len() as u64;
        h.crc = crc32c::crc32c(value);
        self.call(h, key, value)
    }

    fn get(&mut self, key: &[u8]) -> Answer {
        let h = self.request(Op::Get);
        self.call(h, key, b"")
    }
}

// ---------------------------------------------------------------------------------------------
// Node-side checks
// ---------------------------------------------------------------------------------------------

/// A normal client still works: a put/get round trip with bytes unique to `tag`.
fn assert_round_trip(creds: &Creds, node: &Node, tag: &str) {
    let client = creds.client(&[node], &[]);
    let key = format!("round-trip/{tag}");
    let value = Bytes::from(format!("value of {tag}: ").repeat(50));
    runtime().block_on(async {
        client.put(key.as_bytes(), value.clone()).await.expect("put after hostile input");
        assert_eq!(client.get(key.as_bytes()).await.expect("get after hostile input"), Some(value));
    });
}

/// A counter of `/v1/status`, addressed by a path of object keys.
fn counter(node: &Node, path: &[&str]) -> u64 {
    let doc = node.status();
    let mut v = &doc;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or_else(|| panic!("/v1/status has no counter {path:?}: {doc}"))
}

/// Waits (bounded) until a counter reaches `want`; returns the last value seen.
fn await_counter(node: &Node, path: &[&str], want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = counter(node, path);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_alive(node: &mut Node) {
    assert!(node.child.try_wait().expect("try_wait").is_none(), "memkv-server exited");
}

/// Resident set size of a process, in bytes, from /proc/<pid>/status.
fn rss_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

fn key_of(creds: &Creds) -> AuthKey {
    AuthKey::parse(&creds.auth_key).expect("cluster key")
}

// ---------------------------------------------------------------------------------------------
// Framing: garbage, truncation, oversized fields
// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_bytes_close_the_connection_and_count_an_invalid_frame() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.31", &[]);
    let before = counter(&node, &["invalid_frames"]);
    let mut s = connect(node.data);
    let garbage: Vec<u8> = b"GET / HTTP/1.1\r\nHost: memkv\r\n\r\n".iter().copied().cycle().take(128).collect();
    s.write_all(&garbage).expect("send garbage");
    assert_closed(&mut s);
    assert_eq!(await_counter(&node, &["invalid_frames"], before + 1), before + 1);
    assert_eq!(counter(&node, &["auth_failures"]), 0, "garbage is not an authentication attempt");
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "garbage");
}

#[test]
fn truncated_frames_then_close_leave_the_node_serving() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.32", &[]);
    let key = key_of(&creds);
    let before = counter(&node, &["invalid_frames"]);
    // Half a HELLO header, then close.
    {
        let mut s = connect(node.data);
        let hello = hello_bytes(&key, VERSION, now_ms(), auth::random_bytes().unwrap());
        s.write_all(&hello[..HEADER_LEN / 2]).expect("send half a header");
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        assert_closed(&mut s);
    }
    assert_eq!(await_counter(&node, &["invalid_frames"], before + 1), before + 1);
    // Inside a session: half a sealed GET header, then close.
    {
        let mut raw = Raw::open(node.data, &key);
        let h = raw.request(Op::Get);
        let frame = raw.seal(h, b"some-key", b"");
        raw.send(&frame[..HEADER_LEN / 2]);
        raw.s.shutdown(std::net::Shutdown::Write).expect("half-close");
        assert_closed(&mut raw.s);
    }
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "truncated");
}

#[test]
fn oversized_length_fields_are_refused_payload_too_large_without_allocating() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.33", &[]);
    let key = key_of(&creds);
    let pid = node.child.id();
    let rss_before = rss_bytes(pid);
    let invalid_before = counter(&node, &["invalid_frames"]);
    // length = u64::MAX on a PUT.
    {
        let mut raw = Raw::open(node.data, &key);
        let mut h = raw.request(Op::Put);
        h.meta_len = 3;
        h.length = u64::MAX;
        let (hb, mac) = raw.keys.send.seal(&mut h, b"big");
        raw.send(&[&hb[..], &b"big"[..], &mac[..]].concat());
        let a = raw.recv();
        assert_eq!(a.status(), Status::PayloadTooLarge, "{}", a.text());
        assert!(a.text().contains(&u64::MAX.to_string()), "message names the claimed size: {}", a.text());
        assert_closed(&mut raw.s);
    }
    // meta_len = u32::MAX on a GET.
    {
        let mut raw = Raw::open(node.data, &key);
        let mut h = raw.request(Op::Get);
        h.meta_len = u32::MAX;
        let (hb, _mac) = raw.keys.send.seal(&mut h, b"");
        raw.send(&hb);
        let a = raw.recv();
        assert_eq!(a.status(), Status::PayloadTooLarge, "{}", a.text());
        assert!(a.text().contains(&u32::MAX.to_string()), "message names the claimed size: {}", a.text());
        assert_closed(&mut raw.s);
    }
    assert_eq!(await_counter(&node, &["invalid_frames"], invalid_before + 2), invalid_before + 2);
    let rss_after = rss_bytes(pid);
    assert!(rss_after < 1 << 30, "node RSS {rss_after} B: far below the claimed 4 GiB / 16 EiB expected");
    assert!(
        rss_after < rss_before + (64 << 20),
        "node RSS grew from {rss_before} B to {rss_after} B after two oversized headers"
    );
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "oversized");
}

// ---------------------------------------------------------------------------------------------
// Ops and versions
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_op_is_answered_invalid_request_naming_it_and_the_connection_goes_on() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.34", &[]);
    let mut raw = Raw::open(node.data, &key_of(&creds));
    let mut h = raw.request(Op::Get);
    h.op = 0x7f;
    let a = raw.call(h, b"k", b"");
    assert_eq!(a.status(), Status::InvalidRequest, "{}", a.text());
    assert_eq!(a.header.op, 0x7f | Op::RESPONSE_BIT);
    assert!(a.text().contains("0x7f"), "message names the op: {}", a.text());
    // The same connection still serves valid requests.
    let a = raw.put(b"after-unknown-op", b"still here");
    assert_eq!(a.status(), Status::Ok, "{}", a.text());
    let a = raw.get(b"after-unknown-op");
    assert_eq!(a.status(), Status::Ok, "{}", a.text());
    assert_eq!(a.payload, b"still here");
    assert_eq!(a.header.crc, crc32c::crc32c(b"still here"));
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "unknown-op");
}

#[test]
fn hello_with_a_newer_version_is_refused_naming_both_versions() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.35", &[]);
    let invalid_before = counter(&node, &["invalid_frames"]);
    let mut s = connect(node.data);
    let newer = VERSION + 1;
    s.write_all(&hello_bytes(&key_of(&creds), newer, now_ms(), auth::random_bytes().unwrap())).unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.status(), Status::UnsupportedVersion, "{}", a.text());
    let text = a.text();
    assert!(text.contains(&format!("version {newer}")), "names the client's version: {text}");
    assert!(text.contains(&format!("version {VERSION}")), "names the node's version: {text}");
    assert_closed(&mut s);
    assert_eq!(await_counter(&node, &["invalid_frames"], invalid_before + 1), invalid_before + 1);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "newer-version");
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn hello_with_a_wrong_cluster_key_is_refused_bad_mac_and_counted() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.36", &[]);
    let before = counter(&node, &["auth_failures_by_reason", "bad_mac"]);
    let total_before = counter(&node, &["auth_failures"]);
    let wrong = AuthKey::generate().unwrap();
    let nonce = auth::random_bytes().unwrap();
    let mut s = connect(node.data);
    s.write_all(&hello_bytes(&wrong, VERSION, now_ms(), nonce)).unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.status(), Status::BadMac, "{}", a.text());
    assert!(a.text().contains("MEMKV_AUTH_KEY"), "message points at the key: {}", a.text());
    let with_wrong = auth::hello_response_mac(&wrong, &a.raw, &a.meta, &nonce);
    assert!(!auth::macs_equal(&with_wrong, &a.mac), "the refusal must not authenticate under the wrong key");
    assert_closed(&mut s);
    assert_eq!(await_counter(&node, &["auth_failures_by_reason", "bad_mac"], before + 1), before + 1);
    assert_eq!(counter(&node, &["auth_failures"]), total_before + 1);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "wrong-key");
}

#[test]
fn tampered_frame_is_refused_bad_mac_closes_the_connection_and_is_counted() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.37", &[]);
    let before = counter(&node, &["auth_failures_by_reason", "bad_mac"]);
    let mut raw = Raw::open(node.data, &key_of(&creds));
    let h = raw.request(Op::Get);
    let mut frame = raw.seal(h, b"some-key", b"");
    frame[33] ^= 0x01; // the offset field, covered by the header MAC
    raw.send(&frame);
    let a = raw.recv();
    assert_eq!(a.status(), Status::BadMac, "{}", a.text());
    assert_eq!(a.header.request_id, h.request_id);
    assert_closed(&mut raw.s);
    assert_eq!(await_counter(&node, &["auth_failures_by_reason", "bad_mac"], before + 1), before + 1);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "tampered");
}

#[test]
fn replayed_frame_is_refused_replay_and_counted() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.38", &[]);
    let before = counter(&node, &["auth_failures_by_reason", "replay"]);
    let mut raw = Raw::open(node.data, &key_of(&creds));
    let h = raw.request(Op::Get);
    let frame = raw.seal(h, b"never-stored", b"");
    raw.send(&frame);
    let first = raw.recv();
    assert_eq!(first.status(), Status::NotFound, "{}", first.text());
    raw.send(&frame);
    let second = raw.recv();
    assert_eq!(second.status(), Status::Replay, "{}", second.text());
    assert!(second.text().contains("sequence"), "message says why: {}", second.text());
    assert_closed(&mut raw.s);
    assert_eq!(await_counter(&node, &["auth_failures_by_reason", "replay"], before + 1), before + 1);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "replayed-frame");
}

#[test]
fn replayed_hello_on_a_new_connection_is_refused_replay_and_counted() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.39", &[]);
    let before = counter(&node, &["auth_failures_by_reason", "replay"]);
    let hello = hello_bytes(&key_of(&creds), VERSION, now_ms(), auth::random_bytes().unwrap());
    let mut first = connect(node.data);
    first.write_all(&hello).unwrap();
    assert_eq!(read_answer(&mut first).status(), Status::Ok);
    let mut second = connect(node.data);
    second.write_all(&hello).unwrap();
    let a = read_answer(&mut second);
    assert_eq!(a.status(), Status::Replay, "{}", a.text());
    assert!(a.text().contains("replayed"), "message says why: {}", a.text());
    assert_closed(&mut second);
    assert_eq!(await_counter(&node, &["auth_failures_by_reason", "replay"], before + 1), before + 1);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "replayed-hello");
}

#[test]
fn hello_ten_minutes_old_is_refused_clock_drift_and_counted() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.40", &[]);
    let before = counter(&node, &["auth_failures_by_reason", "clock_drift"]);
    let mut s = connect(node.data);
    let stale = now_ms() - 10 * 60 * 1000;
    s.write_all(&hello_bytes(&key_of(&creds), VERSION, stale, auth::random_bytes().unwrap())).unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.status(), Status::ClockDrift, "{}", a.text());
    assert!(a.text().contains("clock"), "message says why: {}", a.text());
    assert_closed(&mut s);
    assert_eq!(await_counter(&node, &["auth_failures_by_reason", "clock_drift"], before + 1), before + 1);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "clock-drift");
}

// ---------------------------------------------------------------------------------------------
// Op-level refusals: keys, checksums, batch counts
// ---------------------------------------------------------------------------------------------

#[test]
fn over_long_and_empty_keys_are_refused_and_the_connection_goes_on() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.41", &[]);
    let mut raw = Raw::open(node.data, &key_of(&creds));
    let long = vec![b'k'; wire::MAX_KEY_LEN + 1];
    let a = raw.get(&long);
    assert_eq!(a.status(), Status::KeyTooLong, "GET: {}", a.text());
    assert!(a.text().contains("513"), "message names the length: {}", a.text());
    let a = raw.put(&long, b"value");
    assert_eq!(a.status(), Status::KeyTooLong, "PUT: {}", a.text());
    let a = raw.get(b"");
    assert_eq!(a.status(), Status::InvalidRequest, "GET: {}", a.text());
    assert!(a.text().contains("empty key"), "message says why: {}", a.text());
    let a = raw.put(b"", b"value");
    assert_eq!(a.status(), Status::InvalidRequest, "PUT: {}", a.text());
    // A 512-byte key is fine, on the same connection.
    let max = vec![b'k'; wire::MAX_KEY_LEN];
    assert_eq!(raw.put(&max, b"value").status(), Status::Ok);
    let a = raw.get(&max);
    assert_eq!((a.status(), a.payload.as_slice()), (Status::Ok, &b"value"[..]));
    assert_eq!(counter(&node, &["objects"]), 1, "only the valid key was stored");
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "keys");
}

#[test]
fn put_whose_payload_does_not_match_its_crc_is_refused_and_not_stored() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.42", &[]);
    let mut raw = Raw::open(node.data, &key_of(&creds));
    let value = vec![0xa5u8; 4096];
    let mut h = raw.request(Op::Put);
    h.total = value.len() as u64;
    h.crc = crc32c::crc32c(&value) ^ 1;
    let a = raw.call(h, b"damaged", &value);
    assert_eq!(a.status(), Status::ChecksumMismatch, "{}", a.text());
    assert!(a.text().contains("not stored"), "message says nothing was stored: {}", a.text());
    let a = raw.get(b"damaged");
    assert_eq!(a.status(), Status::NotFound, "a damaged PUT must not be stored");
    assert_eq!(counter(&node, &["objects"]), 0);
    let client = creds.client(&[&node], &[]);
    assert_eq!(runtime().block_on(client.get(b"damaged")).unwrap(), None);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "crc");
}

#[test]
fn batch_counts_larger_than_the_meta_holds_are_refused_invalid_request() {
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.43", &[]);
    let mut raw = Raw::open(node.data, &key_of(&creds));
    assert_eq!(raw.put(b"present", b"x").status(), Status::Ok);
    // GET_BATCH: one entry in the meta, a count of 10.
    let mut meta = Vec::new();
    wire::encode_get_entries(&[wire::BatchGetEntry { key: b"present", offset: 0, length: 0 }], &mut meta);
    let mut h = raw.request(Op::GetBatch);
    h.count = 10;
    let a = raw.call(h, &meta, b"");
    assert_eq!(a.status(), Status::InvalidRequest, "GET_BATCH: {}", a.text());
    assert!(a.text().contains("count"), "message says why: {}", a.text());
    // EXISTS: one key in the meta, a count of 100, then a count past the batch limit.
    let mut meta = Vec::new();
    wire::encode_keys([&b"present"[..]], &mut meta);
    for count in [100, wire::MAX_BATCH_ENTRIES as u32 + 1] {
        let mut h = raw.request(Op::Exists);
        h.count = count;
        let a = raw.call(h, &meta, b"");
        assert_eq!(a.status(), Status::InvalidRequest, "EXISTS count {count}: {}", a.text());
    }
    // The connection goes on: the honest EXISTS answers.
    let mut h = raw.request(Op::Exists);
    h.count = 1;
    let a = raw.call(h, &meta, b"");
    assert_eq!(a.status(), Status::Ok, "{}", a.text());
    assert_eq!(wire::decode_exists_answer(&a.meta, a.header.count).unwrap(), vec![1]);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "batch-count");
}

// ---------------------------------------------------------------------------------------------
// Load: garbage storm beside a real client
// ---------------------------------------------------------------------------------------------

#[test]
fn fifty_garbage_connections_do_not_disturb_a_real_clients_round_trips() {
    const ATTACKERS: usize = 50;
    const MAX_ROUNDS_PER_ATTACKER: usize = 100;
    const ROUND_TRIPS: usize = 200;
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.44", &[]);
    let invalid_before = counter(&node, &["invalid_frames"]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let attacking = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let (stop, sent, attacking, addr) =
                (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&attacking), node.data);
            std::thread::spawn(move || {
                // Never the magic: the first byte is below 50, b'M' is 77.
                let garbage: Vec<u8> = (0..256u32).map(|b| (b as u8).wrapping_mul(31).wrapping_add(i as u8)).collect();
                for round in 0..MAX_ROUNDS_PER_ATTACKER {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let Ok(mut s) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else { continue };
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    if s.write_all(&garbage).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    if round == 0 {
                        attacking.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut b = [0u8; 64];
                    let _ = s.read(&mut b);
                }
            })
        })
        .collect();
    // Start the real client once every attacker is at work (bounded wait).
    let wait_until = Instant::now() + Duration::from_secs(10);
    while attacking.load(Ordering::Relaxed) < ATTACKERS as u64 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let client = creds.client(&[&node], &[]);
    let sent_at_start = sent.load(Ordering::Relaxed);
    let verified = runtime().block_on(async {
        let mut verified = 0;
        for i in 0..ROUND_TRIPS {
            let key = format!("storm/{i}");
            let value = Bytes::from(format!("block {i} ").repeat(64 + i));
            client.put(key.as_bytes(), value.clone()).await.unwrap_or_else(|e| panic!("put {i}: {e}"));
            let got = client.get(key.as_bytes()).await.unwrap_or_else(|e| panic!("get {i}: {e}"));
            assert_eq!(got, Some(value), "round trip {i}");
            verified += 1;
        }
        verified
    });
    let sent_during = sent.load(Ordering::Relaxed) - sent_at_start;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().expect("attacker thread");
    }
    assert_eq!(verified, ROUND_TRIPS);
    assert_eq!(attacking.load(Ordering::Relaxed), ATTACKERS as u64, "every attacker connected");
    assert!(sent_during > 0, "garbage kept arriving while the client worked");
    let sent = sent.load(Ordering::Relaxed);
    let invalid = await_counter(&node, &["invalid_frames"], invalid_before + sent);
    assert!(invalid >= invalid_before + sent, "every garbage connection counted: {invalid} (sent {sent})");
    assert_eq!(counter(&node, &["objects"]), ROUND_TRIPS as u64);
    assert_alive(&mut node);
    assert_round_trip(&creds, &node, "storm");
}

/// Data segments this end of a TCP connection has received (Linux `TCP_INFO`).
fn data_segments_in(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is a plain C struct; all zeroes is a valid value of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is that large.
    let rc =
        unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockopt(TCP_INFO): {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

/// 32 GETs sent in one write reach the node in one read; their answers must leave in one send
/// too. Handed to the write task one at a time they leave in 4 to 8 sends (measured by turning the
/// batching off): a system call, and on loopback a run of the peer's receive path, per few
/// requests.
#[test]
fn a_burst_of_pipelined_requests_is_answered_in_one_send() {
    const BURST: usize = 32;
    let creds = Creds::new();
    let mut node = Node::start(&creds, "127.0.0.65", &[]);
    let mut raw = Raw::open(node.data, &key_of(&creds));
    let a = raw.put(b"burst", b"one value");
    assert_eq!(a.status(), Status::Ok, "{}", a.text());
    let mut frames = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..BURST {
        let h = raw.request(Op::Get);
        ids.push(h.request_id);
        frames.extend(raw.seal(h, b"burst", b""));
    }
    let before = data_segments_in(&raw.s);
    raw.send(&frames);
    for id in ids {
        let a = raw.recv();
        assert_eq!((a.header.request_id, a.status()), (id, Status::Ok), "{}", a.text());
        assert_eq!(a.payload, b"one value");
    }
    let segments = data_segments_in(&raw.s) - before;
    assert!(segments <= 2, "the {BURST} answers came in {segments} TCP segments");
    assert_alive(&mut node);
}
