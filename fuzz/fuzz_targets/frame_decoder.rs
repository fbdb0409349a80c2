//! Fuzzes everything the node parses from untrusted bytes before authentication: the frame
//! header and every batch meta decoder. Properties: never panics, and every accepted header's
//! lengths are within the limits (so nothing is allocated from an unchecked length).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memkv::wire::{self, HEADER_LEN, Header, Limits};

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&data[..HEADER_LEN]);
    let limits = Limits::default();
    let Ok(h) = Header::decode(&raw, &limits) else { return };
    assert!(h.meta_len <= limits.max_meta);
    assert!(h.length <= limits.max_payload);
    assert_eq!(Header::decode(&h.encode(), &limits), Ok(h));
    let meta = &data[HEADER_LEN..];
    let _ = wire::decode_keys(meta, h.count);
    let _ = wire::decode_exists_answer(meta, h.count);
    let _ = wire::decode_put_entries(meta, h.count, h.length);
    let _ = wire::decode_get_entries(meta, h.count);
    let _ = wire::decode_get_answers(meta, h.count, h.length);
    let _ = wire::decode_statuses(meta, h.count);
    let _ = memkv::auth::Hello::decode(meta);
});
