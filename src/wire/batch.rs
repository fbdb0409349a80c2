//! Codecs for the meta sections of batch frames. Every decoder checks the entry count against
//! [`MAX_BATCH_ENTRIES`], every length against the bytes actually present, and rejects trailing
//! bytes, so a decoded batch describes exactly the meta it came from.

use super::MAX_BATCH_ENTRIES;
use super::header::{Status, WireError, check_key};

/// One entry of a PUT_BATCH request: a whole object or one range of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPutEntry<'a> {
    /// Object key (namespace already applied).
    pub key: &'a [u8],
    /// Offset of these bytes inside the object.
    pub offset: u64,
    /// Number of payload bytes for this entry.
    pub length: u64,
    /// Final object size.
    pub total: u64,
    /// CRC32C of this entry's bytes.
    pub crc: u32,
}

/// One entry of a GET_BATCH request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchGetEntry<'a> {
    /// Object key (namespace already applied).
    pub key: &'a [u8],
    /// First byte wanted.
    pub offset: u64,
    /// Bytes wanted; 0 means "to the end of the object".
    pub length: u64,
}

/// The node's answer for one GET_BATCH entry. Entries with `Status::Ok` have `length` bytes in
/// the response payload, in entry order; others have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchGetAnswer {
    /// Outcome for this entry.
    pub status: Status,
    /// Payload bytes for this entry.
    pub length: u64,
    /// Size of the whole object.
    pub total: u64,
    /// CRC32C of this entry's payload bytes.
    pub crc: u32,
}

const PUT_FIXED: usize = 2 + 8 + 8 + 8 + 4;
const GET_FIXED: usize = 2 + 8 + 8;
const ANSWER_LEN: usize = 2 + 8 + 8 + 4;

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::BadMeta("truncated batch entry"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn key(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        let k = self.take(n)?;
        check_key(k)?;
        Ok(k)
    }
    fn finish(&self) -> Result<(), WireError> {
        if self.b.is_empty() { Ok(()) } else { Err(WireError::BadMeta("trailing bytes after the last batch entry")) }
    }
}

fn check_count(count: u32, meta: &[u8], min_entry: usize) -> Result<usize, WireError> {
    let n = count as usize;
    if n > MAX_BATCH_ENTRIES {
        return Err(WireError::TooManyEntries(count));
    }
    if n.saturating_mul(min_entry) > meta.len() {
        return Err(WireError::BadMeta("entry count larger than the meta section holds"));
    }
    Ok(n)
}

fn put_key(out: &mut Vec<u8>, key: &[u8]) {
    // Keys are bounded by MAX_KEY_LEN (512), far below u16::MAX; callers check before encoding.
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
}

/// Encodes a list of keys (EXISTS request).
pub fn encode_keys<'k>(keys: impl IntoIterator<Item = &'k [u8]>, out: &mut Vec<u8>) {
    for k in keys {
        put_key(out, k);
    }
}

/// Decodes `count` keys.
pub fn decode_keys(meta: &[u8], count: u32) -> Result<Vec<&[u8]>, WireError> {
    let n = check_count(count, meta, 3)?;
    let mut c = Cursor { b: meta };
    let keys = (0..n).map(|_| c.key()).collect::<Result<Vec<_>, _>>()?;
    c.finish()?;
    Ok(keys)
}

/// Encodes an EXISTS answer: one u64 per key, the object size or [`ABSENT`](super::ABSENT).
pub fn encode_exists_answer(sizes: impl IntoIterator<Item = u64>, out: &mut Vec<u8>) {
    for s in sizes {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Decodes an EXISTS answer of `count` sizes.
pub fn decode_exists_answer(meta: &[u8], count: u32) -> Result<Vec<u64>, WireError> {
    let n = check_count(count, meta, 8)?;
    let mut c = Cursor { b: meta };
    let v = (0..n).map(|_| c.u64()).collect::<Result<Vec<_>, _>>()?;
    c.finish()?;
    Ok(v)
}

/// Encodes PUT_BATCH entries.
pub fn encode_put_entries(entries: &[BatchPutEntry<'_>], out: &mut Vec<u8>) {
    for e in entries {
        put_key(out, e.key);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.total.to_le_bytes());
        out.extend_from_slice(&e.crc.to_le_bytes());
    }
}

/// Decodes PUT_BATCH entries and checks that their lengths add up to `payload_len`.
pub fn decode_put_entries(meta: &[u8], count: u32, payload_len: u64) -> Result<Vec<BatchPutEntry<'_>>, WireError> {
    let n = check_count(count, meta, PUT_FIXED + 1)?;
    let mut c = Cursor { b: meta };
    let mut sum: u64 = 0;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let e = BatchPutEntry { key: c.key()?, offset: c.u64()?, length: c.u64()?, total: c.u64()?, crc: c.u32()? };
        sum = sum.checked_add(e.length).ok_or(WireError::BadMeta("entry lengths overflow"))?;
        v.push(e);
    }
    c.finish()?;
    if sum != payload_len {
        return Err(WireError::BadMeta("entry lengths do not add up to the payload length"));
    }
    Ok(v)
}

/// Encodes per-entry statuses (PUT_BATCH answer).
pub fn encode_statuses(statuses: impl IntoIterator<Item = Status>, out: &mut Vec<u8>) {
    for s in statuses {
        out.extend_from_slice(&(s as u16).to_le_bytes());
    }
}

/// Decodes `count` per-entry statuses; unknown codes become `ServerError`.
pub fn decode_statuses(meta: &[u8], count: u32) -> Result<Vec<Status>, WireError> {
    let n = check_count(count, meta, 2)?;
    let mut c = Cursor { b: meta };
    let v = (0..n)
        .map(|_| c.u16().map(|s| Status::from_u16(s).unwrap_or(Status::ServerError)))
        .collect::<Result<Vec<_>, _>>()?;
    c.finish()?;
    Ok(v)
}

/// Encodes GET_BATCH entries.
pub fn encode_get_entries(entries: &[BatchGetEntry<'_>], out: &mut Vec<u8>) {
    for e in entries {
        put_key(out, e.key);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
    }
}

/// Decodes GET_BATCH entries.
pub fn decode_get_entries(meta: &[u8], count: u32) -> Result<Vec<BatchGetEntry<'_>>, WireError> {
    let n = check_count(count, meta, GET_FIXED + 1)?;
    let mut c = Cursor { b: meta };
    let v = (0..n)
        .map(|_| Ok(BatchGetEntry { key: c.key()?, offset: c.u64()?, length: c.u64()? }))
        .collect::<Result<Vec<_>, WireError>>()?;
    c.finish()?;
    Ok(v)
}

/// Encodes GET_BATCH answers.
pub fn encode_get_answers(answers: &[BatchGetAnswer], out: &mut Vec<u8>) {
    for a in answers {
        out.extend_from_slice(&(a.status as u16).to_le_bytes());
        out.extend_from_slice(&a.length.to_le_bytes());
        out.extend_from_slice(&a.total.to_le_bytes());
        out.extend_from_slice(&a.crc.to_le_bytes());
    }
}

/// Decodes GET_BATCH answers and checks that the Ok entries' lengths add up to `payload_len`.
pub fn decode_get_answers(meta: &[u8], count: u32, payload_len: u64) -> Result<Vec<BatchGetAnswer>, WireError> {
    let n = check_count(count, meta, ANSWER_LEN)?;
    let mut c = Cursor { b: meta };
    let mut sum: u64 = 0;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let status = Status::from_u16(c.u16()?).unwrap_or(Status::ServerError);
        let a = BatchGetAnswer { status, length: c.u64()?, total: c.u64()?, crc: c.u32()? };
        if a.status == Status::Ok {
            sum = sum.checked_add(a.length).ok_or(WireError::BadMeta("answer lengths overflow"))?;
        } else if a.length != 0 {
            return Err(WireError::BadMeta("a failed answer carries payload bytes"));
        }
        v.push(a);
    }
    c.finish()?;
    if sum != payload_len {
        return Err(WireError::BadMeta("answer lengths do not add up to the payload length"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..=64)
    }

    proptest! {
        #[test]
        fn keys_round_trip(keys in proptest::collection::vec(arb_key(), 0..50)) {
            let mut m = Vec::new();
            encode_keys(keys.iter().map(|k| k.as_slice()), &mut m);
            let d = decode_keys(&m, keys.len() as u32).unwrap();
            prop_assert_eq!(d, keys.iter().map(|k| k.as_slice()).collect::<Vec<_>>());
        }

        #[test]
        fn put_entries_round_trip(raw in proptest::collection::vec((arb_key(), any::<u64>(), 0u64..1 << 20, any::<u64>(), any::<u32>()), 0..20)) {
            let entries: Vec<_> = raw.iter().map(|(k, o, l, t, c)| BatchPutEntry { key: k, offset: *o, length: *l, total: *t, crc: *c }).collect();
            let mut m = Vec::new();
            encode_put_entries(&entries, &mut m);
            let sum = entries.iter().map(|e| e.length).sum();
            prop_assert_eq!(decode_put_entries(&m, entries.len() as u32, sum).unwrap(), entries);
        }

        #[test]
        fn get_entries_and_answers_round_trip(raw in proptest::collection::vec((arb_key(), any::<u64>(), any::<u64>()), 0..20), ok in proptest::collection::vec(any::<bool>(), 20)) {
            let entries: Vec<_> = raw.iter().map(|(k, o, l)| BatchGetEntry { key: k, offset: *o, length: *l }).collect();
            let mut m = Vec::new();
            encode_get_entries(&entries, &mut m);
            prop_assert_eq!(decode_get_entries(&m, entries.len() as u32).unwrap(), entries.clone());
            let answers: Vec<_> = entries.iter().zip(&ok).map(|(e, ok)| if *ok {
                BatchGetAnswer { status: Status::Ok, length: e.offset % 1000, total: e.length, crc: 7 }
            } else {
                BatchGetAnswer { status: Status::NotFound, length: 0, total: 0, crc: 0 }
            }).collect();
            let mut m = Vec::new();
            encode_get_answers(&answers, &mut m);
            let sum = answers.iter().map(|a| a.length).sum();
            prop_assert_eq!(decode_get_answers(&m, answers.len() as u32, sum).unwrap(), answers);
        }

        #[test]
        fn decoders_never_panic_on_garbage(meta in proptest::collection::vec(any::<u8>(), 0..300), count in any::<u32>(), len in any::<u64>()) {
            let _ = decode_keys(&meta, count);
            let _ = decode_put_entries(&meta, count, len);
            let _ = decode_get_entries(&meta, count);
            let _ = decode_get_answers(&meta, count, len);
            let _ = decode_exists_answer(&meta, count);
            let _ = decode_statuses(&meta, count);
        }
    }

    #[test]
    fn counts_beyond_the_meta_or_the_limit_are_rejected() {
        let mut m = Vec::new();
        encode_keys([b"a".as_slice(), b"b"], &mut m);
        assert!(decode_keys(&m, 3).is_err());
        assert!(decode_keys(&m, 1).is_err(), "trailing bytes must be rejected");
        assert_eq!(decode_keys(&m, u32::MAX), Err(WireError::TooManyEntries(u32::MAX)));
    }

    #[test]
    fn put_entries_must_add_up_to_the_payload() {
        let e = [BatchPutEntry { key: b"k", offset: 0, length: 10, total: 10, crc: 0 }];
        let mut m = Vec::new();
        encode_put_entries(&e, &mut m);
        assert!(decode_put_entries(&m, 1, 10).is_ok());
        assert!(decode_put_entries(&m, 1, 11).is_err());
    }

    #[test]
    fn over_long_and_empty_keys_in_a_batch_are_rejected() {
        let mut m = Vec::new();
        let long = vec![b'x'; super::super::MAX_KEY_LEN + 1];
        encode_keys([long.as_slice()], &mut m);
        assert_eq!(decode_keys(&m, 1), Err(WireError::KeyTooLong(long.len())));
        let mut m = Vec::new();
        encode_keys([b"".as_slice()], &mut m);
        assert!(decode_keys(&m, 1).is_err());
    }

    #[test]
    fn failed_get_answers_carry_no_bytes() {
        let a = [BatchGetAnswer { status: Status::NotFound, length: 5, total: 0, crc: 0 }];
        let mut m = Vec::new();
        encode_get_answers(&a, &mut m);
        assert!(decode_get_answers(&m, 1, 5).is_err());
    }
}
