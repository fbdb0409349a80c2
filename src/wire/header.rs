//! The fixed 64-byte frame header and its checked decoder.

use super::{HEADER_LEN, MAGIC, MAX_KEY_LEN, MAX_META_LEN, VERSION};

/// Operation codes. A response carries the request's op with [`Op::RESPONSE_BIT`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Session handshake (nonces, timestamp); MAC keyed with the cluster key.
    Hello = 0x01,
    /// Store a whole object, or one range of an object being assembled.
    Put = 0x02,
    /// Read a whole object or a range of it.
    Get = 0x03,
    /// Batched existence check: sizes of many keys in one round trip.
    Exists = 0x04,
    /// Remove an object.
    Delete = 0x05,
    /// Node information and counters (JSON).
    NodeInfo = 0x06,
    /// Several PUTs (whole or ranged) in one frame.
    PutBatch = 0x07,
    /// Several GETs (whole or ranged) in one frame.
    GetBatch = 0x08,
    /// One-sided PUT, step 1: reserve arena ranges for several entries (no payload).
    Reserve = 0x09,
    /// One-sided PUT, step 3: check the CRC32C of reserved ranges written one-sidedly and make
    /// them visible.
    Commit = 0x0a,
    /// One-sided GET, step 1: find and pin several objects, answering where their bytes are.
    Lookup = 0x0b,
    /// One-sided GET, step 3: unpin objects (or drop reservations) by lease token.
    Release = 0x0c,
    /// Bootstrap of a one-sided provider over the authenticated session (RDMA queue pairs).
    Connect = 0x0d,
}

impl Op {
    /// Set on the op byte of every response.
    pub const RESPONSE_BIT: u8 = 0x80;

    /// Decodes a request op byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Hello,
            0x02 => Self::Put,
            0x03 => Self::Get,
            0x04 => Self::Exists,
            0x05 => Self::Delete,
            0x06 => Self::NodeInfo,
            0x07 => Self::PutBatch,
            0x08 => Self::GetBatch,
            0x09 => Self::Reserve,
            0x0a => Self::Commit,
            0x0b => Self::Lookup,
            0x0c => Self::Release,
            0x0d => Self::Connect,
            _ => return None,
        })
    }

    /// Lower-case name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Put => "put",
            Self::Get => "get",
            Self::Exists => "exists",
            Self::Delete => "delete",
            Self::NodeInfo => "node_info",
            Self::PutBatch => "put_batch",
            Self::GetBatch => "get_batch",
            Self::Reserve => "reserve",
            Self::Commit => "commit",
            Self::Lookup => "lookup",
            Self::Release => "release",
            Self::Connect => "connect",
        }
    }
}

/// Status codes carried by responses (and by per-entry batch answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The key has no complete object.
    NotFound = 1,
    /// The node cannot make room (everything left is pinned or in flight).
    NoSpace = 2,
    /// Key longer than [`MAX_KEY_LEN`](super::MAX_KEY_LEN).
    KeyTooLong = 3,
    /// Object or meta larger than the node accepts.
    PayloadTooLarge = 4,
    /// The MAC did not verify: wrong cluster key or a tampered frame.
    BadMac = 5,
    /// Handshake timestamp too far from the node's clock.
    ClockDrift = 6,
    /// A frame or handshake was seen before (sequence number or nonce reused).
    Replay = 7,
    /// The frame's version is newer than the node speaks.
    UnsupportedVersion = 8,
    /// Malformed or meaningless request (bad range, unknown op, bad batch entry).
    InvalidRequest = 9,
    /// The node failed internally; the request may be retried.
    ServerError = 10,
    /// Payload bytes did not match the CRC32C of the header.
    ChecksumMismatch = 11,
    /// A one-sided lease token is unknown: never granted, already committed or released, or
    /// expired (the node's lease timeout).
    LeaseExpired = 12,
}

impl Status {
    /// Decodes a status; unknown codes map to `None`.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0 => Self::Ok,
            1 => Self::NotFound,
            2 => Self::NoSpace,
            3 => Self::KeyTooLong,
            4 => Self::PayloadTooLarge,
            5 => Self::BadMac,
            6 => Self::ClockDrift,
            7 => Self::Replay,
            8 => Self::UnsupportedVersion,
            9 => Self::InvalidRequest,
            10 => Self::ServerError,
            11 => Self::ChecksumMismatch,
            12 => Self::LeaseExpired,
            _ => return None,
        })
    }

    /// Name used in logs, metrics and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "Ok",
            Self::NotFound => "NotFound",
            Self::NoSpace => "NoSpace",
            Self::KeyTooLong => "KeyTooLong",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::BadMac => "BadMac",
            Self::ClockDrift => "ClockDrift",
            Self::Replay => "Replay",
            Self::UnsupportedVersion => "UnsupportedVersion",
            Self::InvalidRequest => "InvalidRequest",
            Self::ServerError => "ServerError",
            Self::ChecksumMismatch => "ChecksumMismatch",
            Self::LeaseExpired => "LeaseExpired",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Header flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// A 32-byte HMAC of the payload follows the payload.
    pub const PAYLOAD_MAC: u16 = 1 << 0;
    /// All bits this version defines; a frame with any other bit set is rejected.
    pub const KNOWN: u16 = Self::PAYLOAD_MAC;

    /// Whether `bit` is set.
    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// A decoded frame header. All lengths are already bounded by [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of the sender.
    pub version: u8,
    /// Raw op byte (request op, or op | RESPONSE_BIT).
    pub op: u8,
    /// Flag bits.
    pub flags: Flags,
    /// Chosen by the client; echoed by the response.
    pub request_id: u64,
    /// Per-direction sequence number (1, 2, 3, … within a session; 0 for HELLO).
    pub seq: u64,
    /// Response status (0 in requests).
    pub status: u16,
    /// Number of entries for batch frames; 0 otherwise.
    pub count: u32,
    /// Length of the meta section that follows the header.
    pub meta_len: u32,
    /// Byte offset inside the object (PUT/GET ranges).
    pub offset: u64,
    /// Length of the payload section.
    pub length: u64,
    /// Whole object size (PUT: final size; GET request: bytes wanted, 0 = to the end; GET answer:
    /// object size).
    pub total: u64,
    /// CRC32C of the payload section.
    pub crc: u32,
}

/// Bounds applied while decoding, before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest meta section accepted.
    pub max_meta: u32,
    /// Largest payload section accepted.
    pub max_payload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_meta: MAX_META_LEN as u32, max_payload: 1 << 30 }
    }
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// First four bytes are not the magic: not a MemKV peer, or the stream lost sync.
    #[error(
        "bad frame magic {0:02x?}: the peer does not speak the MemKV protocol (is this the data port, :9900 by default?)"
    )]
    BadMagic([u8; 4]),
    /// Version newer than ours.
    #[error("protocol version {got} is newer than this node's version {ours}; upgrade the node or use an older client")]
    UnsupportedVersion {
        /// Version in the frame.
        got: u8,
        /// Version this build speaks.
        ours: u8,
    },
    /// Version 0 is never valid.
    #[error("protocol version 0 is invalid")]
    ZeroVersion,
    /// Unknown flag bits.
    #[error("unknown header flags {0:#06x}")]
    UnknownFlags(u16),
    /// Reserved bytes are not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// Meta section too large.
    #[error("meta section of {got} bytes exceeds the limit of {max} bytes")]
    MetaTooLarge {
        /// Length in the header.
        got: u32,
        /// Limit.
        max: u32,
    },
    /// Payload too large.
    #[error("payload of {got} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Length in the header.
        got: u64,
        /// Limit.
        max: u64,
    },
    /// A meta section is truncated or has trailing garbage.
    #[error("malformed meta section: {0}")]
    BadMeta(&'static str),
    /// A key is longer than allowed.
    #[error("key of {0} bytes exceeds the {MAX_KEY_LEN}-byte limit")]
    KeyTooLong(usize),
    /// Too many batch entries.
    #[error("batch of {0} entries exceeds the limit")]
    TooManyEntries(u32),
}

impl WireError {
    /// The status a node answers with when it rejects a request for this reason.
    pub fn status(&self) -> Status {
        match self {
            Self::UnsupportedVersion { .. } => Status::UnsupportedVersion,
            Self::MetaTooLarge { .. } | Self::PayloadTooLarge { .. } => Status::PayloadTooLarge,
            Self::KeyTooLong(_) => Status::KeyTooLong,
            _ => Status::InvalidRequest,
        }
    }
}

impl Header {
    /// A request header with everything but op and request id zeroed.
    pub fn request(op: Op, request_id: u64) -> Self {
        Self {
            version: VERSION,
            op: op as u8,
            flags: Flags::default(),
            request_id,
            seq: 0,
            status: 0,
            count: 0,
            meta_len: 0,
            offset: 0,
            length: 0,
            total: 0,
            crc: 0,
        }
    }

    /// The response header for `req`, with the given status.
    pub fn response_to(req: &Header, status: Status) -> Self {
        Self {
            version: VERSION.min(req.version.max(1)),
            op: req.op | Op::RESPONSE_BIT,
            status: status as u16,
            ..Self::request(Op::Hello, req.request_id)
        }
    }

    /// The request op, if the op byte (without the response bit) is known.
    pub fn op(&self) -> Option<Op> {
        Op::from_u8(self.op & !Op::RESPONSE_BIT)
    }

    /// Whether this is a response.
    pub fn is_response(&self) -> bool {
        self.op & Op::RESPONSE_BIT != 0
    }

    /// Decoded status (unknown codes become `ServerError`).
    pub fn status(&self) -> Status {
        Status::from_u16(self.status).unwrap_or(Status::ServerError)
    }

    /// Serialises the header (little endian).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.version;
        b[5] = self.op;
        b[6..8].copy_from_slice(&self.flags.0.to_le_bytes());
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..26].copy_from_slice(&self.status.to_le_bytes());
        // 26..28 reserved
        b[28..32].copy_from_slice(&self.meta_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.length.to_le_bytes());
        b[48..56].copy_from_slice(&self.total.to_le_bytes());
        b[56..60].copy_from_slice(&self.crc.to_le_bytes());
        b[60..64].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    /// The meta length of the header at the start of `b`, without checking anything else; `None`
    /// while `b` holds less than a header. Lets a reader tell whether a whole frame head is
    /// already buffered.
    pub fn peek_meta_len(b: &[u8]) -> Option<u32> {
        b.get(28..32).filter(|_| b.len() >= HEADER_LEN).map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
    }

    /// Decodes and bounds-checks a header. Magic and version are checked first so that a
    /// stream from a newer peer is answered with [`WireError::UnsupportedVersion`].
    pub fn decode(b: &[u8; HEADER_LEN], limits: &Limits) -> Result<Self, WireError> {
        let magic: [u8; 4] = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = b[4];
        if version == 0 {
            return Err(WireError::ZeroVersion);
        }
        if version > VERSION {
            return Err(WireError::UnsupportedVersion { got: version, ours: VERSION });
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let flags = u16_at(6);
        if flags & !Flags::KNOWN != 0 {
            return Err(WireError::UnknownFlags(flags));
        }
        if u16_at(26) != 0 {
            return Err(WireError::Reserved);
        }
        let h = Self {
            version,
            op: b[5],
            flags: Flags(flags),
            request_id: u64_at(8),
            seq: u64_at(16),
            status: u16_at(24),
            meta_len: u32_at(28),
            offset: u64_at(32),
            length: u64_at(40),
            total: u64_at(48),
            crc: u32_at(56),
            count: u32_at(60),
        };
        if h.meta_len > limits.max_meta {
            return Err(WireError::MetaTooLarge { got: h.meta_len, max: limits.max_meta });
        }
        if h.length > limits.max_payload {
            return Err(WireError::PayloadTooLarge { got: h.length, max: limits.max_payload });
        }
        Ok(h)
    }
}

/// Checks a key: 1 to [`MAX_KEY_LEN`] bytes.
pub fn check_key(key: &[u8]) -> Result<(), WireError> {
    if key.len() > MAX_KEY_LEN {
        return Err(WireError::KeyTooLong(key.len()));
    }
    if key.is_empty() {
        return Err(WireError::BadMeta("empty key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn peek_meta_len_reads_the_meta_length_of_a_whole_header_only() {
        let mut h = Header::request(Op::Put, 3);
        h.meta_len = 1234;
        let raw = h.encode();
        assert_eq!(Header::peek_meta_len(&raw), Some(1234));
        assert_eq!(Header::peek_meta_len(&[raw.as_slice(), b"more"].concat()), Some(1234));
        assert_eq!(Header::peek_meta_len(&raw[..HEADER_LEN - 1]), None);
        assert_eq!(Header::peek_meta_len(&[]), None);
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            (1u8..=VERSION, any::<u8>(), 0u16..=Flags::KNOWN, any::<u64>(), any::<u64>()),
            (any::<u16>(), any::<u32>(), 0u32..=MAX_META_LEN as u32),
            (any::<u64>(), 0u64..=1 << 30, any::<u64>(), any::<u32>()),
        )
            .prop_map(
                |((version, op, flags, request_id, seq), (status, count, meta_len), (offset, length, total, crc))| {
                    Header {
                        version,
                        op,
                        flags: Flags(flags),
                        request_id,
                        seq,
                        status,
                        count,
                        meta_len,
                        offset,
                        length,
                        total,
                        crc,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn header_round_trips(h in arb_header()) {
            let enc = h.encode();
            prop_assert_eq!(Header::decode(&enc, &Limits::default()).unwrap(), h);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::array::uniform32(any::<u8>()), tail in proptest::array::uniform32(any::<u8>())) {
            let mut b = [0u8; HEADER_LEN];
            b[..32].copy_from_slice(&bytes);
            b[32..].copy_from_slice(&tail);
            let _ = Header::decode(&b, &Limits::default());
            b[0..4].copy_from_slice(&MAGIC);
            b[4] = 1;
            if let Ok(h) = Header::decode(&b, &Limits::default()) {
                prop_assert!(h.meta_len as usize <= MAX_META_LEN);
                prop_assert!(h.length <= 1 << 30);
            }
        }
    }

    #[test]
    fn newer_version_is_reported_as_unsupported() {
        let mut h = Header::request(Op::Get, 7).encode();
        h[4] = VERSION + 1;
        let e = Header::decode(&h, &Limits::default()).unwrap_err();
        assert_eq!(e, WireError::UnsupportedVersion { got: VERSION + 1, ours: VERSION });
        assert_eq!(e.status(), Status::UnsupportedVersion);
    }

    #[test]
    fn huge_length_fields_are_rejected_before_allocation() {
        let mut h = Header::request(Op::Put, 1);
        h.length = u64::MAX;
        let e = Header::decode(&h.encode(), &Limits::default()).unwrap_err();
        assert!(matches!(e, WireError::PayloadTooLarge { got: u64::MAX, .. }));
        let mut h = Header::request(Op::Put, 1);
        h.meta_len = u32::MAX;
        let e = Header::decode(&h.encode(), &Limits::default()).unwrap_err();
        assert!(matches!(e, WireError::MetaTooLarge { got: u32::MAX, .. }));
        assert_eq!(e.status(), Status::PayloadTooLarge);
    }

    #[test]
    fn garbage_magic_unknown_flags_and_reserved_bytes_are_rejected() {
        let good = Header::request(Op::Get, 1).encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(Header::decode(&b, &Limits::default()), Err(WireError::BadMagic(_))));
        let mut b = good;
        b[6] = 0x80;
        assert_eq!(Header::decode(&b, &Limits::default()), Err(WireError::UnknownFlags(0x80)));
        let mut b = good;
        b[27] = 1;
        assert_eq!(Header::decode(&b, &Limits::default()), Err(WireError::Reserved));
        let mut b = good;
        b[4] = 0;
        assert_eq!(Header::decode(&b, &Limits::default()), Err(WireError::ZeroVersion));
    }

    #[test]
    fn every_op_and_status_round_trips_through_its_byte() {
        for v in 0..=255u8 {
            if let Some(op) = Op::from_u8(v) {
                assert_eq!(op as u8, v);
            }
        }
        for v in 0..=20u16 {
            if let Some(s) = Status::from_u16(v) {
                assert_eq!(s as u16, v);
            }
        }
        assert_eq!(Op::from_u8(0x7f), None);
    }

    #[test]
    fn response_echoes_request_id_and_sets_response_bit() {
        let req = Header::request(Op::Exists, 42);
        let resp = Header::response_to(&req, Status::NotFound);
        assert!(resp.is_response());
        assert_eq!(resp.op(), Some(Op::Exists));
        assert_eq!(resp.request_id, 42);
        assert_eq!(resp.status(), Status::NotFound);
    }

    #[test]
    fn keys_are_bounded() {
        assert!(check_key(&[0u8; MAX_KEY_LEN]).is_ok());
        assert_eq!(check_key(&[0u8; MAX_KEY_LEN + 1]), Err(WireError::KeyTooLong(MAX_KEY_LEN + 1)));
        assert!(check_key(b"").is_err());
    }
}
