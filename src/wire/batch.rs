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

/// The node's answer for one RESERVE entry: where in its arena the entry's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Outcome for this entry; the other fields are 0 unless `Ok`.
    pub status: Status,
    /// Offset of the reserved range inside the node's arena.
    pub addr: u64,
    /// Lease token that COMMIT (or RELEASE) names the reservation by.
    pub token: u64,
}

/// One COMMIT entry: a reservation whose bytes were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitEntry {
    /// Lease token from the RESERVE answer.
    pub token: u64,
    /// CRC32C of the written bytes, when the client could compute it (it cannot for bytes it
    /// wrote straight from GPU memory); the node checks it before the object becomes visible.
    pub crc: Option<u32>,
}

/// The node's answer for one LOOKUP entry: where a pinned object's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    /// Outcome for this entry; the other fields are 0 unless `Ok` (`total` is also set for
    /// `InvalidRequest`, a range outside the object).
    pub status: Status,
    /// Offset of the wanted bytes inside the node's arena.
    pub addr: u64,
    /// Bytes to read.
    pub length: u64,
    /// Size of the whole object.
    pub total: u64,
    /// CRC32C of the wanted bytes.
    pub crc: u32,
    /// Lease token that RELEASE names the pin by.
    pub token: u64,
}

const PUT_FIXED: usize = 2 + 8 + 8 + 8 + 4;
const GET_FIXED: usize = 2 + 8 + 8;
const ANSWER_LEN: usize = 2 + 8 + 8 + 4;
const GRANT_LEN: usize = 2 + 8 + 8;
const COMMIT_LEN: usize = 8 + 4 + 1;
const PINNED_LEN: usize = 2 + 8 + 8 + 8 + 4 + 8;

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
    fn status(&mut self) -> Result<Status, WireError> {
        Ok(Status::from_u16(self.u16()?).unwrap_or(Status::ServerError))
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

/// Decodes `n` items with `f` into a vector allocated once (the count was checked against the
/// meta's length, so it is bounded by what the peer actually sent).
fn decode_n<T>(n: usize, mut f: impl FnMut() -> Result<T, WireError>) -> Result<Vec<T>, WireError> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(f()?);
    }
    Ok(v)
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
    let keys = decode_n(n, || c.key())?;
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
    let v = decode_n(n, || c.u64())?;
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
    let (v, sum) = decode_put_like(meta, count)?;
    if sum != payload_len {
        return Err(WireError::BadMeta("entry lengths do not add up to the payload length"));
    }
    Ok(v)
}

/// Decodes RESERVE entries: PUT_BATCH entries whose bytes travel one-sidedly (their `crc` is
/// unused; COMMIT carries it).
pub fn decode_reserve_entries(meta: &[u8], count: u32) -> Result<Vec<BatchPutEntry<'_>>, WireError> {
    decode_put_like(meta, count).map(|(v, _)| v)
}

fn decode_put_like(meta: &[u8], count: u32) -> Result<(Vec<BatchPutEntry<'_>>, u64), WireError> {
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
    Ok((v, sum))
}

/// Encodes RESERVE answers.
pub fn encode_grants(grants: &[Grant], out: &mut Vec<u8>) {
    for g in grants {
        out.extend_from_slice(&(g.status as u16).to_le_bytes());
        out.extend_from_slice(&g.addr.to_le_bytes());
        out.extend_from_slice(&g.token.to_le_bytes());
    }
}

/// Decodes `count` RESERVE answers; unknown status codes become `ServerError`.
pub fn decode_grants(meta: &[u8], count: u32) -> Result<Vec<Grant>, WireError> {
    let n = check_count(count, meta, GRANT_LEN)?;
    let mut c = Cursor { b: meta };
    let v = decode_n(n, || Ok(Grant { status: c.status()?, addr: c.u64()?, token: c.u64()? }))?;
    c.finish()?;
    Ok(v)
}

/// Encodes COMMIT entries.
pub fn encode_commits(entries: &[CommitEntry], out: &mut Vec<u8>) {
    for e in entries {
        out.extend_from_slice(&e.token.to_le_bytes());
        out.extend_from_slice(&e.crc.unwrap_or(0).to_le_bytes());
        out.push(u8::from(e.crc.is_some()));
    }
}

/// Decodes `count` COMMIT entries.
pub fn decode_commits(meta: &[u8], count: u32) -> Result<Vec<CommitEntry>, WireError> {
    let n = check_count(count, meta, COMMIT_LEN)?;
    let mut c = Cursor { b: meta };
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let (token, crc) = (c.u64()?, c.u32()?);
        let crc = match c.take(1)?[0] {
            0 => None,
            1 => Some(crc),
            _ => return Err(WireError::BadMeta("COMMIT entry flag must be 0 or 1")),
        };
        v.push(CommitEntry { token, crc });
    }
    c.finish()?;
    Ok(v)
}

/// Encodes LOOKUP answers.
pub fn encode_pins(pins: &[Pinned], out: &mut Vec<u8>) {
    for p in pins {
        out.extend_from_slice(&(p.status as u16).to_le_bytes());
        out.extend_from_slice(&p.addr.to_le_bytes());
        out.extend_from_slice(&p.length.to_le_bytes());
        out.extend_from_slice(&p.total.to_le_bytes());
        out.extend_from_slice(&p.crc.to_le_bytes());
        out.extend_from_slice(&p.token.to_le_bytes());
    }
}

/// Decodes `count` LOOKUP answers; unknown status codes become `ServerError`.
pub fn decode_pins(meta: &[u8], count: u32) -> Result<Vec<Pinned>, WireError> {
    let n = check_count(count, meta, PINNED_LEN)?;
    let mut c = Cursor { b: meta };
    let v = decode_n(n, || {
        Ok(Pinned {
            status: c.status()?,
            addr: c.u64()?,
            length: c.u64()?,
            total: c.u64()?,
            crc: c.u32()?,
            token: c.u64()?,
        })
    })?;
    c.finish()?;
    Ok(v)
}

/// Encodes lease tokens (RELEASE request).
pub fn encode_tokens(tokens: impl IntoIterator<Item = u64>, out: &mut Vec<u8>) {
    encode_exists_answer(tokens, out);
}

/// Decodes `count` lease tokens.
pub fn decode_tokens(meta: &[u8], count: u32) -> Result<Vec<u64>, WireError> {
    decode_exists_answer(meta, count)
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
    let v = decode_n(n, || c.status())?;
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
    let v = decode_n(n, || Ok(BatchGetEntry { key: c.key()?, offset: c.u64()?, length: c.u64()? }))?;
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
        let a = BatchGetAnswer { status: c.status()?, length: c.u64()?, total: c.u64()?, crc: c.u32()? };
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
            let _ = decode_reserve_entries(&meta, count);
            let _ = decode_grants(&meta, count);
            let _ = decode_commits(&meta, count);
            let _ = decode_pins(&meta, count);
            let _ = decode_tokens(&meta, count);
        }

        #[test]
        fn one_sided_answers_and_commits_round_trip(raw in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u32>(), any::<bool>()), 0..30)) {
            let grants: Vec<_> = raw.iter().map(|&(a, t, _, ok)| Grant { status: if ok { Status::Ok } else { Status::NoSpace }, addr: a, token: t }).collect();
            let mut m = Vec::new();
            encode_grants(&grants, &mut m);
            prop_assert_eq!(decode_grants(&m, grants.len() as u32).unwrap(), grants);
            let commits: Vec<_> = raw.iter().map(|&(_, t, c, has)| CommitEntry { token: t, crc: has.then_some(c) }).collect();
            let mut m = Vec::new();
            encode_commits(&commits, &mut m);
            prop_assert_eq!(decode_commits(&m, commits.len() as u32).unwrap(), commits);
            let pins: Vec<_> = raw.iter().map(|&(a, t, c, ok)| Pinned { status: if ok { Status::Ok } else { Status::NotFound }, addr: a, length: a / 3, total: a / 2, crc: c, token: t }).collect();
            let mut m = Vec::new();
            encode_pins(&pins, &mut m);
            prop_assert_eq!(decode_pins(&m, pins.len() as u32).unwrap(), pins);
            let tokens: Vec<u64> = raw.iter().map(|r| r.1).collect();
            let mut m = Vec::new();
            encode_tokens(tokens.iter().copied(), &mut m);
            prop_assert_eq!(decode_tokens(&m, tokens.len() as u32).unwrap(), tokens);
        }
    }

    #[test]
    fn reserve_entries_carry_no_payload_and_commit_flags_are_strict() {
        let e = [BatchPutEntry { key: b"k", offset: 0, length: 10, total: 10, crc: 0 }];
        let mut m = Vec::new();
        encode_put_entries(&e, &mut m);
        assert_eq!(decode_reserve_entries(&m, 1).unwrap(), e);
        let mut m = Vec::new();
        encode_commits(&[CommitEntry { token: 1, crc: None }], &mut m);
        *m.last_mut().unwrap() = 2;
        assert!(decode_commits(&m, 1).is_err());
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
