//! The MemKV wire protocol, version 1: frame layout, opcodes, status codes and the codecs for
//! the small metadata sections (keys, batch entries, EXISTS answers).
//!
//! This module is **pure**: it never does I/O, never allocates a buffer whose size came from the
//! peer before that size was checked against [`Limits`], and never trusts a length it has not
//! bounded. The byte layout is specified in `docs/protocol.md`; the constants here are the source
//! of truth, and `tests/docs.rs` checks that the doc lists every op, status and limit with the
//! values defined here.
//!
//! A frame is `header (64 B) | meta (meta_len B) | mac (32 B) | payload (length B) | [payload mac (32 B)]`.
//! The header MAC covers header and meta; the payload is covered by the CRC32C in the header (and
//! by the optional payload MAC, see `docs/security.md`).

mod batch;
mod header;

pub use batch::{
    BatchGetAnswer, BatchGetEntry, BatchPutEntry, CommitEntry, Grant, Pinned, decode_commits, decode_exists_answer,
    decode_get_answers, decode_get_entries, decode_grants, decode_keys, decode_pins, decode_put_entries,
    decode_reserve_entries, decode_statuses, decode_tokens, encode_commits, encode_exists_answer, encode_get_answers,
    encode_get_entries, encode_grants, encode_keys, encode_pins, encode_put_entries, encode_statuses, encode_tokens,
};
pub use header::{Flags, Header, Limits, Op, Status, WireError, check_key};

/// Frame magic: the first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"MKVW";
/// The protocol version this build speaks (and the highest it accepts).
pub const VERSION: u8 = 1;
/// Fixed header length in bytes.
pub const HEADER_LEN: usize = 64;
/// Length of a MAC (HMAC-SHA256) in bytes.
pub const MAC_LEN: usize = 32;
/// Longest key, in bytes, after the namespace prefix is applied.
pub const MAX_KEY_LEN: usize = 512;
/// Largest meta section (keys and batch descriptors) a peer may send.
pub const MAX_META_LEN: usize = 1 << 20;
/// Most entries in one batch frame (EXISTS, PUT_BATCH, GET_BATCH and the one-sided ops).
pub const MAX_BATCH_ENTRIES: usize = 4096;
/// Most payload bytes one GET_BATCH answer carries; entries past it are answered with
/// `PayloadTooLarge` and the client fetches them one by one.
pub const MAX_BATCH_PAYLOAD: u64 = 64 << 20;
/// LOOKUP answers objects (or ranges) of at most this many bytes inline, in the answer's payload,
/// instead of pinning them: at that size a round trip costs more than the bytes. Clients send
/// PUTs of such sizes inline too.
pub const INLINE_MAX: u64 = 16 << 10;
/// `addr` of a LOOKUP answer entry whose bytes are in the answer's payload (no lease).
pub const INLINE_ADDR: u64 = u64::MAX;
/// EXISTS answer for an absent key.
pub const ABSENT: u64 = u64::MAX;
