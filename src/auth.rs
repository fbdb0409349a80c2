//! Authentication: the cluster key, the session handshake and the per-frame MAC.
//!
//! Owns: parsing the 32-byte cluster key, the HELLO exchange that proves both sides hold it and
//! derives per-direction session keys, the per-frame HMAC-SHA256 with strictly increasing
//! sequence numbers, the optional payload MAC, and the server's nonce cache against replayed
//! handshakes. Never does I/O and never logs key material; every comparison of a MAC is
//! constant-time (`hmac`'s `verify_slice`, built on `subtle`).
//!
//! Handshake (see `docs/security.md`):
//! 1. client → node: HELLO, meta = client nonce (32) | unix ms (8) | features (4),
//!    MAC = HMAC(K, "memkv-hello-v1" | header | meta).
//! 2. node → client: HELLO response, meta = node nonce (32) | unix ms (8) | features (4) | node id,
//!    MAC = HMAC(K, "memkv-hello-v1" | header | meta | client nonce).
//! 3. Both derive `k_c2s = HMAC(K, "memkv-c2s-v1" | cn | sn)` and `k_s2c = HMAC(K, "memkv-s2c-v1" | cn | sn)`.
//!    Every later frame carries seq = 1, 2, 3, … per direction, and MAC = HMAC(k_dir, header | meta).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::wire::{HEADER_LEN, Header, MAC_LEN, Status};

type HmacSha256 = Hmac<Sha256>;

/// Environment variable holding the cluster key.
pub const AUTH_KEY_ENV: &str = "MEMKV_AUTH_KEY";
/// Length of the HELLO meta before the node id.
pub const HELLO_META_LEN: usize = 32 + 8 + 4;
/// Feature bit: the client asks for a MAC over every payload (untrusted networks).
pub const FEATURE_PAYLOAD_MAC: u32 = 1;
/// Feature bit: on a same-host (Unix-socket) session, frames go through shared-memory rings
/// after the handshake. A client asks; a node that agrees sends the rings with the arena and
/// sets the bit in its answer.
pub const FEATURE_SHM_RING: u32 = 2;

/// The 32-byte cluster key shared by every node and client. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey([u8; 32]);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

/// Why a key could not be parsed, or a frame did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The key text has the wrong length.
    #[error(
        "{AUTH_KEY_ENV} must be 64 hex characters (32 bytes); got {0} characters. Generate one with `memkv keygen`."
    )]
    KeyLength(usize),
    /// The key text has a non-hex character.
    #[error(
        "{AUTH_KEY_ENV} must be 64 hex characters (32 bytes); character {0} is not a hex digit. Generate one with `memkv keygen`."
    )]
    KeyNotHex(usize),
    /// MAC mismatch: a different cluster key, or a tampered frame.
    #[error(
        "MAC check failed: the peer uses a different cluster key ({AUTH_KEY_ENV}) or the frame was altered in transit"
    )]
    BadMac,
    /// The frame's sequence number is not the next one.
    #[error("replayed or reordered frame: sequence number {got}, expected {expected}")]
    Replay {
        /// Sequence number in the frame.
        got: u64,
        /// The one expected.
        expected: u64,
    },
    /// A HELLO nonce was seen before.
    #[error("replayed handshake: this client nonce was already used")]
    ReplayedHello,
    /// Handshake timestamp too far from our clock.
    #[error(
        "clock drift of {drift_ms} ms between client and node exceeds the {max_ms} ms limit; synchronise clocks (NTP/chrony)"
    )]
    ClockDrift {
        /// Observed difference.
        drift_ms: u64,
        /// Allowed difference.
        max_ms: u64,
    },
    /// HELLO meta too short.
    #[error("malformed handshake ({0} bytes of meta)")]
    MalformedHello(usize),
}

impl AuthError {
    /// The wire status a node answers with for this failure.
    pub fn status(&self) -> Status {
        match self {
            Self::BadMac | Self::KeyLength(_) | Self::KeyNotHex(_) => Status::BadMac,
            Self::Replay { .. } | Self::ReplayedHello => Status::Replay,
            Self::ClockDrift { .. } => Status::ClockDrift,
            Self::MalformedHello(_) => Status::InvalidRequest,
        }
    }
}

impl AuthKey {
    /// Parses 64 hex characters (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let t = text.trim();
        if t.len() != 64 {
            return Err(AuthError::KeyLength(t.chars().count()));
        }
        if let Some(pos) = t.chars().position(|c| !c.is_ascii_hexdigit()) {
            return Err(AuthError::KeyNotHex(pos + 1));
        }
        let mut k = [0u8; 32];
        hex::decode_to_slice(t, &mut k).map_err(|_| AuthError::KeyLength(t.len()))?;
        Ok(Self(k))
    }

    /// A fresh random key from the OS generator.
    pub fn generate() -> std::io::Result<Self> {
        Ok(Self(random_bytes()?))
    }

    /// The key as 64 lower-case hex characters (for `memkv keygen` only).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self) -> HmacSha256 {
        keyed(&self.0)
    }
}

/// 32 random bytes from the OS.
pub fn random_bytes() -> std::io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(format!("OS random generator failed: {e}")))?;
    Ok(b)
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The fixed part of a HELLO (either direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Fresh random nonce.
    pub nonce: [u8; 32],
    /// Sender's clock, Unix milliseconds.
    pub unix_ms: u64,
    /// Feature bits ([`FEATURE_PAYLOAD_MAC`]).
    pub features: u32,
}

impl Hello {
    /// Encodes the fixed HELLO meta, followed by `tail` (the node id in responses).
    pub fn encode(&self, tail: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(HELLO_META_LEN + tail.len());
        m.extend_from_slice(&self.nonce);
        m.extend_from_slice(&self.unix_ms.to_le_bytes());
        m.extend_from_slice(&self.features.to_le_bytes());
        m.extend_from_slice(tail);
        m
    }

    /// Decodes the fixed part; returns it and the tail.
    pub fn decode(meta: &[u8]) -> Result<(Self, &[u8]), AuthError> {
        if meta.len() < HELLO_META_LEN {
            return Err(AuthError::MalformedHello(meta.len()));
        }
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(&meta[..32]);
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&meta[32..40]);
        let mut f = [0u8; 4];
        f.copy_from_slice(&meta[40..44]);
        Ok((Self { nonce, unix_ms: u64::from_le_bytes(ms), features: u32::from_le_bytes(f) }, &meta[44..]))
    }
}

const HELLO_LABEL: &[u8] = b"memkv-hello-v1";

/// MAC of a HELLO request (client → node), keyed with the cluster key.
pub fn hello_request_mac(key: &AuthKey, header: &[u8; HEADER_LEN], meta: &[u8]) -> [u8; MAC_LEN] {
    let mut m = key.mac();
    m.update(HELLO_LABEL);
    m.update(header);
    m.update(meta);
    m.finalize().into_bytes().into()
}

/// MAC of a HELLO response (node → client), bound to the client's nonce.
pub fn hello_response_mac(
    key: &AuthKey,
    header: &[u8; HEADER_LEN],
    meta: &[u8],
    client_nonce: &[u8; 32],
) -> [u8; MAC_LEN] {
    let mut m = key.mac();
    m.update(HELLO_LABEL);
    m.update(header);
    m.update(meta);
    m.update(client_nonce);
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two MACs.
pub fn macs_equal(a: &[u8; MAC_LEN], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    b.len() == MAC_LEN && bool::from(a.ct_eq(b))
}

/// Checks a HELLO timestamp against our clock.
pub fn check_drift(their_ms: u64, our_ms: u64, max: Duration) -> Result<(), AuthError> {
    let drift = their_ms.abs_diff(our_ms);
    let max_ms = max.as_millis() as u64;
    if drift > max_ms { Err(AuthError::ClockDrift { drift_ms: drift, max_ms }) } else { Ok(()) }
}

/// Which side of the session we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client library.
    Client,
    /// The node.
    Node,
}

/// The MAC state of one direction of an established session.
#[derive(Clone)]
pub struct DirectionMac {
    mac: HmacSha256,
    next_seq: u64,
}

impl std::fmt::Debug for DirectionMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectionMac").field("next_seq", &self.next_seq).finish_non_exhaustive()
    }
}

impl DirectionMac {
    /// Assigns the next sequence number to `h` and returns the encoded header and its MAC.
    pub fn seal(&mut self, h: &mut Header, meta: &[u8]) -> ([u8; HEADER_LEN], [u8; MAC_LEN]) {
        h.seq = self.next_seq;
        self.next_seq += 1;
        let hb = h.encode();
        let mut m = self.mac.clone();
        m.update(&hb);
        m.update(meta);
        (hb, m.finalize().into_bytes().into())
    }

    /// Verifies a received frame's MAC (constant time), then its sequence number.
    pub fn open(&mut self, hb: &[u8; HEADER_LEN], h: &Header, meta: &[u8], mac: &[u8]) -> Result<(), AuthError> {
        let mut m = self.mac.clone();
        m.update(hb);
        m.update(meta);
        m.verify_slice(mac).map_err(|_| AuthError::BadMac)?;
        if h.seq != self.next_seq {
            return Err(AuthError::Replay { got: h.seq, expected: self.next_seq });
        }
        self.next_seq += 1;
        Ok(())
    }

    /// Starts the payload MAC of a frame whose header MAC is `header_mac`.
    pub fn payload_mac(&self, header_mac: &[u8; MAC_LEN]) -> PayloadMac {
        let mut m = self.mac.clone();
        m.update(b"payload");
        m.update(header_mac);
        PayloadMac(m)
    }
}

/// An in-progress HMAC over a payload (opt-in, see `docs/security.md`).
pub struct PayloadMac(HmacSha256);

impl PayloadMac {
    /// Feeds payload bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }
    /// The final tag.
    pub fn finish(self) -> [u8; MAC_LEN] {
        self.0.finalize().into_bytes().into()
    }
    /// Verifies the tag in constant time.
    pub fn verify(self, tag: &[u8]) -> Result<(), AuthError> {
        self.0.verify_slice(tag).map_err(|_| AuthError::BadMac)
    }
}

/// The two directions of an established session, from one side's point of view.
#[derive(Debug, Clone)]
pub struct SessionKeys {
    /// For frames we send.
    pub send: DirectionMac,
    /// For frames we receive.
    pub recv: DirectionMac,
}

impl SessionKeys {
    /// Derives the per-direction keys from the cluster key and both nonces.
    pub fn derive(key: &AuthKey, client_nonce: &[u8; 32], node_nonce: &[u8; 32], role: Role) -> Self {
        let dir = |label: &[u8]| {
            let mut m = key.mac();
            m.update(label);
            m.update(client_nonce);
            m.update(node_nonce);
            let k: [u8; 32] = m.finalize().into_bytes().into();
            DirectionMac { mac: keyed(&k), next_seq: 1 }
        };
        let c2s = dir(b"memkv-c2s-v1");
        let s2c = dir(b"memkv-s2c-v1");
        match role {
            Role::Client => Self { send: c2s, recv: s2c },
            Role::Node => Self { send: s2c, recv: c2s },
        }
    }
}

/// Remembers recent HELLO nonces so that a captured handshake cannot be replayed inside the
/// clock-drift window (outside it, the timestamp check rejects it). Bounded: entries older than
/// the window are pruned, and at `max_entries` the oldest half is dropped.
#[derive(Debug)]
pub struct NonceCache {
    window: Duration,
    max_entries: usize,
    seen: HashMap<[u8; 32], Instant>,
}

impl NonceCache {
    /// A cache covering `window` (twice the allowed drift is right).
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Self { window, max_entries: max_entries.max(2), seen: HashMap::new() }
    }

    /// Records `nonce`; errors if it was already seen within the window.
    pub fn check_and_insert(&mut self, nonce: [u8; 32], now: Instant) -> Result<(), AuthError> {
        if let Some(t) = self.seen.get(&nonce)
            && now.saturating_duration_since(*t) <= self.window
        {
            return Err(AuthError::ReplayedHello);
        }
        if self.seen.len() >= self.max_entries {
            let window = self.window;
            self.seen.retain(|_, t| now.saturating_duration_since(*t) <= window);
            if self.seen.len() >= self.max_entries {
                let mut times: Vec<Instant> = self.seen.values().copied().collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                self.seen.retain(|_, t| *t > cut);
            }
        }
        self.seen.insert(nonce, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Op;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn pair() -> (SessionKeys, SessionKeys) {
        let k = AuthKey::parse(KEY).unwrap();
        let (cn, sn) = ([1u8; 32], [2u8; 32]);
        (SessionKeys::derive(&k, &cn, &sn, Role::Client), SessionKeys::derive(&k, &cn, &sn, Role::Node))
    }

    #[test]
    fn key_must_be_64_hex_chars_with_a_message_naming_the_fix() {
        assert!(AuthKey::parse(KEY).is_ok());
        assert!(AuthKey::parse(&format!("  {KEY}\n")).is_ok());
        let e = AuthKey::parse("abc").unwrap_err();
        assert_eq!(e, AuthError::KeyLength(3));
        assert!(e.to_string().contains("memkv keygen"));
        let bad = format!("{}g", &KEY[..63]);
        assert_eq!(AuthKey::parse(&bad).unwrap_err(), AuthError::KeyNotHex(64));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let k = AuthKey::parse(KEY).unwrap();
        assert!(!format!("{k:?}").contains("0011"));
    }

    #[test]
    fn generated_keys_round_trip_through_hex_and_differ() {
        let a = AuthKey::generate().unwrap();
        let b = AuthKey::generate().unwrap();
        assert_eq!(AuthKey::parse(&a.to_hex()).unwrap(), a);
        assert_ne!(a, b);
    }

    #[test]
    fn sealed_frames_open_in_order_on_the_other_side() {
        let (mut c, mut n) = pair();
        for i in 0..3u64 {
            let mut h = Header::request(Op::Get, i);
            let (hb, mac) = c.send.seal(&mut h, b"key");
            assert_eq!(h.seq, i + 1);
            n.recv.open(&hb, &h, b"key", &mac).unwrap();
        }
    }

    #[test]
    fn tampered_header_or_meta_is_rejected_as_bad_mac() {
        let (mut c, mut n) = pair();
        let mut h = Header::request(Op::Get, 1);
        let (mut hb, mac) = c.send.seal(&mut h, b"key");
        assert_eq!(n.recv.clone().open(&hb, &h, b"kez", &mac), Err(AuthError::BadMac));
        hb[33] ^= 1; // offset field
        assert_eq!(n.recv.open(&hb, &h, b"key", &mac), Err(AuthError::BadMac));
    }

    #[test]
    fn replayed_frame_is_rejected_as_replay() {
        let (mut c, mut n) = pair();
        let mut h = Header::request(Op::Get, 1);
        let (hb, mac) = c.send.seal(&mut h, b"key");
        n.recv.open(&hb, &h, b"key", &mac).unwrap();
        let e = n.recv.open(&hb, &h, b"key", &mac).unwrap_err();
        assert_eq!(e, AuthError::Replay { got: 1, expected: 2 });
        assert_eq!(e.status(), Status::Replay);
    }

    #[test]
    fn frames_cannot_be_reflected_or_moved_between_sessions() {
        let (mut c, _) = pair();
        let (_, mut other_node) = {
            let k = AuthKey::parse(KEY).unwrap();
            let (cn, sn) = ([9u8; 32], [2u8; 32]);
            (SessionKeys::derive(&k, &cn, &sn, Role::Client), SessionKeys::derive(&k, &cn, &sn, Role::Node))
        };
        let mut h = Header::request(Op::Get, 1);
        let (hb, mac) = c.send.seal(&mut h, b"k");
        assert_eq!(other_node.recv.open(&hb, &h, b"k", &mac), Err(AuthError::BadMac));
        // The client's own frame reflected back to it does not verify either.
        assert_eq!(c.recv.open(&hb, &h, b"k", &mac), Err(AuthError::BadMac));
    }

    #[test]
    fn hello_macs_depend_on_the_key_and_the_client_nonce() {
        let k = AuthKey::parse(KEY).unwrap();
        let other = AuthKey::generate().unwrap();
        let hb = Header::request(Op::Hello, 0).encode();
        let meta = Hello { nonce: [3; 32], unix_ms: 5, features: 0 }.encode(b"");
        let a = hello_request_mac(&k, &hb, &meta);
        assert!(macs_equal(&a, &hello_request_mac(&k, &hb, &meta)));
        assert!(!macs_equal(&a, &hello_request_mac(&other, &hb, &meta)));
        let r1 = hello_response_mac(&k, &hb, &meta, &[1; 32]);
        assert!(!macs_equal(&r1, &hello_response_mac(&k, &hb, &meta, &[2; 32])));
        assert!(!macs_equal(&r1, &r1[..31]));
    }

    #[test]
    fn hello_meta_round_trips_and_short_meta_is_malformed() {
        let h = Hello { nonce: [7; 32], unix_ms: 123, features: FEATURE_PAYLOAD_MAC };
        let m = h.encode(b"node-a");
        assert_eq!(Hello::decode(&m).unwrap(), (h, b"node-a".as_slice()));
        assert_eq!(Hello::decode(&m[..10]), Err(AuthError::MalformedHello(10)));
    }

    #[test]
    fn stale_handshake_is_clock_drift() {
        assert!(check_drift(1_000, 20_000, Duration::from_secs(30)).is_ok());
        let e = check_drift(1_000, 100_000, Duration::from_secs(30)).unwrap_err();
        assert_eq!(e, AuthError::ClockDrift { drift_ms: 99_000, max_ms: 30_000 });
        assert_eq!(e.status(), Status::ClockDrift);
    }

    #[test]
    fn replayed_hello_nonce_is_rejected_within_the_window_and_cache_stays_bounded() {
        let mut c = NonceCache::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        c.check_and_insert([1; 32], t0).unwrap();
        assert_eq!(c.check_and_insert([1; 32], t0 + Duration::from_secs(1)), Err(AuthError::ReplayedHello));
        for i in 0..100u8 {
            c.check_and_insert([i.wrapping_add(2); 32], t0 + Duration::from_millis(i as u64)).unwrap();
        }
        assert!(c.seen.len() <= 8);
    }

    #[test]
    fn payload_mac_detects_a_flipped_byte() {
        let (mut c, n) = pair();
        let mut h = Header::request(Op::Put, 1);
        let (_, hmac) = c.send.seal(&mut h, b"k");
        let mut pm = c.send.payload_mac(&hmac);
        pm.update(b"hello world");
        let tag = pm.finish();
        let mut ok = n.recv.payload_mac(&hmac);
        ok.update(b"hello world");
        assert!(ok.verify(&tag).is_ok());
        let mut bad = n.recv.payload_mac(&hmac);
        bad.update(b"hello worle");
        assert_eq!(bad.verify(&tag), Err(AuthError::BadMac));
    }
}
