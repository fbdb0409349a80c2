//! The on-drive format, version 1: the superblock, segment records and segment checkpoints.
//!
//! Owns: byte layouts and their validation; nothing here does I/O beyond the whole-file helpers
//! for the superblock and checkpoint files.
//!
//! A drive directory holds:
//! - `memkv-drive.json`, the superblock: `{"format": "memkv-drive", "format_version": 1, ...}`;
//! - `seg-NNNNNNNN.log`, append-only segments of records;
//! - `seg-NNNNNNNN.idx`, the checkpoint of a sealed segment: every record's key, version, offset
//!   and length, so that a restart reads one small file per segment instead of every header;
//! - `LOCK`, held (flock) by the node using the directory.
//!
//! A record is a 32-byte little-endian header, the key, then the value:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `MKVR` |
//! | 4..8 | CRC32C of bytes 8..32 and the key |
//! | 8..16 | version (node-wide write sequence; the highest version of a key wins) |
//! | 16..24 | value length |
//! | 24..28 | CRC32C of the value |
//! | 28..30 | key length |
//! | 30..32 | flags (bit 0: tombstone, a DELETE) |
//!
//! A checkpoint is `MKVI`, format version (u32), entry count (u32), 4 reserved bytes, then per
//! entry version (u64), offset (u64), value length (u64), flags (u16), key length (u16) and the
//! key, then a CRC32C of everything before it.

use std::path::Path;

/// Current format version, written into the superblock and every checkpoint.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The superblock file name.
pub(crate) const SUPERBLOCK: &str = "memkv-drive.json";
/// The lock file name.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// The first bytes of every record.
pub(crate) const RECORD_MAGIC: &[u8; 4] = b"MKVR";
const INDEX_MAGIC: &[u8; 4] = b"MKVI";
/// Record header length.
pub(crate) const HEADER_LEN: usize = 32;
/// Flag: the record deletes its key.
pub(crate) const FLAG_TOMBSTONE: u16 = 1;

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) version: u64,
    pub(crate) value_len: u64,
    pub(crate) value_crc: u32,
    pub(crate) key_len: u16,
    pub(crate) flags: u16,
}

impl RecordHeader {
    /// Header plus key, ready to be written before the value.
    pub(crate) fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + key.len());
        b.extend_from_slice(RECORD_MAGIC);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.value_len.to_le_bytes());
        b.extend_from_slice(&self.value_crc.to_le_bytes());
        b.extend_from_slice(&self.key_len.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(key);
        let crc = header_crc(&b[8..HEADER_LEN], key);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a header; `None` when the magic is wrong (not a record: garbage or a torn write).
    /// The header CRC is checked by [`RecordHeader::verify`] once the key has been read.
    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> Option<Self> {
        if &b[0..4] != RECORD_MAGIC {
            return None;
        }
        Some(Self {
            version: u64_at(b, 8),
            value_len: u64_at(b, 16),
            value_crc: u32_at(b, 24),
            key_len: u16::from_le_bytes([b[28], b[29]]),
            flags: u16::from_le_bytes([b[30], b[31]]),
        })
    }

    /// Whether the header CRC stored in `b` matches `b` and `key`.
    pub(crate) fn verify(b: &[u8; HEADER_LEN], key: &[u8]) -> bool {
        u32_at(b, 4) == header_crc(&b[8..HEADER_LEN], key)
    }

    /// Header, key and value.
    pub(crate) fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.key_len) + self.value_len
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }
}

fn header_crc(fixed: &[u8], key: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(fixed), key)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// One record as a checkpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) key: Box<[u8]>,
    pub(crate) version: u64,
    /// Offset of the record (its header) in the segment.
    pub(crate) offset: u64,
    pub(crate) value_len: u64,
    pub(crate) flags: u16,
}

impl IndexEntry {
    pub(crate) fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    /// Bytes the record occupies in its segment.
    pub(crate) fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + self.key.len() as u64 + self.value_len
    }
}

/// Serialises a checkpoint.
pub(crate) fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + entries.iter().map(|e| 28 + e.key.len()).sum::<usize>() + 4);
    b.extend_from_slice(INDEX_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    for e in entries {
        b.extend_from_slice(&e.version.to_le_bytes());
        b.extend_from_slice(&e.offset.to_le_bytes());
        b.extend_from_slice(&e.value_len.to_le_bytes());
        b.extend_from_slice(&e.flags.to_le_bytes());
        b.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
        b.extend_from_slice(&e.key);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Parses a checkpoint; an error says why it cannot be trusted (the caller then scans the
/// segment itself).
pub(crate) fn decode_index(b: &[u8]) -> Result<Vec<IndexEntry>, String> {
    if b.len() < 20 || &b[0..4] != INDEX_MAGIC {
        return Err("not a checkpoint (bad magic or truncated)".into());
    }
    let (body, tail) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32_at(tail, 0) {
        return Err("checkpoint checksum mismatch".into());
    }
    let version = u32_at(b, 4);
    if version != FORMAT_VERSION {
        return Err(format!("checkpoint format version {version}, this node reads version {FORMAT_VERSION}"));
    }
    let count = u32_at(b, 8) as usize;
    let mut entries = Vec::with_capacity(count.min(body.len() / 28));
    let mut at = 16;
    for _ in 0..count {
        if at + 28 > body.len() {
            return Err("checkpoint entry count exceeds its length".into());
        }
        let key_len = u16::from_le_bytes([body[at + 26], body[at + 27]]) as usize;
        let key_end = at + 28 + key_len;
        if key_end > body.len() {
            return Err("checkpoint entry runs past its end".into());
        }
        entries.push(IndexEntry {
            version: u64_at(body, at),
            offset: u64_at(body, at + 8),
            value_len: u64_at(body, at + 16),
            flags: u16::from_le_bytes([body[at + 24], body[at + 25]]),
            key: body[at + 28..key_end].into(),
        });
        at = key_end;
    }
    if at != body.len() {
        return Err("checkpoint has trailing bytes".into());
    }
    Ok(entries)
}

/// The superblock's content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Superblock {
    pub(crate) format: String,
    pub(crate) format_version: u32,
    /// Random id of this drive, reported in status.
    pub(crate) drive_id: String,
    pub(crate) created_unix_secs: u64,
}

impl Superblock {
    pub(crate) fn new(drive_id: String, created_unix_secs: u64) -> Self {
        Self { format: "memkv-drive".into(), format_version: FORMAT_VERSION, drive_id, created_unix_secs }
    }

    /// Reads and checks `dir/memkv-drive.json`. `Ok(None)` when it does not exist.
    pub(crate) fn read(dir: &Path) -> Result<Option<Self>, String> {
        let path = dir.join(SUPERBLOCK);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let sb: Self = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a MemKV superblock ({e}); move the file away if this is not a MemKV drive",
                path.display()
            )
        })?;
        if sb.format != "memkv-drive" {
            return Err(format!("{} names format {:?}, not \"memkv-drive\"", path.display(), sb.format));
        }
        if sb.format_version != FORMAT_VERSION {
            return Err(format!(
                "{} was written in on-drive format version {}; this memkv-server reads version {FORMAT_VERSION} \
                 (run the memkv-server release that wrote it, or point --data-dir at an empty directory)",
                path.display(),
                sb.format_version
            ));
        }
        Ok(Some(sb))
    }
}

/// `seg-00000042.log` / `seg-00000042.idx`.
pub(crate) fn segment_name(id: u32, ext: &str) -> String {
    format!("seg-{id:08}.{ext}")
}

/// The id of a segment log file name, `None` for any other name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(version: u64, value: &[u8], key: &[u8], flags: u16) -> RecordHeader {
        RecordHeader {
            version,
            value_len: value.len() as u64,
            value_crc: crc32c::crc32c(value),
            key_len: key.len() as u16,
            flags,
        }
    }

    #[test]
    fn a_record_header_round_trips_and_detects_damage() {
        let h = header(7, b"value", b"key", 0);
        let enc = h.encode(b"key");
        assert_eq!(enc.len(), HEADER_LEN + 3);
        let fixed: &[u8; HEADER_LEN] = enc[..HEADER_LEN].try_into().unwrap();
        assert_eq!(RecordHeader::decode(fixed), Some(h));
        assert!(RecordHeader::verify(fixed, b"key"));
        assert!(!RecordHeader::verify(fixed, b"kez"), "a damaged key fails the header CRC");
        let mut bad = *fixed;
        bad[9] ^= 1;
        assert!(!RecordHeader::verify(&bad, b"key"), "a damaged version fails the header CRC");
        bad[0] = b'X';
        assert_eq!(RecordHeader::decode(&bad), None);
        assert_eq!(h.record_len(), 32 + 3 + 5);
        assert!(header(1, b"", b"k", FLAG_TOMBSTONE).is_tombstone());
    }

    #[test]
    fn checkpoints_refuse_truncation_damage_and_other_versions() {
        let e = vec![
            IndexEntry { key: b"a".as_slice().into(), version: 1, offset: 0, value_len: 10, flags: 0 },
            IndexEntry { key: b"bb".as_slice().into(), version: 2, offset: 43, value_len: 0, flags: FLAG_TOMBSTONE },
        ];
        let enc = encode_index(&e);
        assert_eq!(decode_index(&enc).unwrap(), e);
        assert!(decode_index(&enc[..enc.len() - 1]).is_err());
        let mut flipped = enc.clone();
        flipped[20] ^= 0x40;
        assert!(decode_index(&flipped).unwrap_err().contains("checksum"));
        let mut newer = enc.clone();
        newer[4] = 2;
        let n = newer.len();
        let crc = crc32c::crc32c(&newer[..n - 4]);
        newer[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_index(&newer).unwrap_err().contains("version 2"));
        assert!(decode_index(&encode_index(&[])).unwrap().is_empty());
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(42, "log"), "seg-00000042.log");
        assert_eq!(parse_segment_name("seg-00000042.log"), Some(42));
        assert_eq!(parse_segment_name("seg-00000042.idx"), None);
        assert_eq!(parse_segment_name("seg-42.log"), None);
        assert_eq!(parse_segment_name("seg-0000004x.log"), None);
    }

    #[test]
    fn superblock_versions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Superblock::read(dir.path()).unwrap(), None);
        let sb = Superblock::new("abcd".into(), 1);
        std::fs::write(dir.path().join(SUPERBLOCK), serde_json::to_string(&sb).unwrap()).unwrap();
        assert_eq!(Superblock::read(dir.path()).unwrap(), Some(sb.clone()));
        let newer = Superblock { format_version: 9, ..sb };
        std::fs::write(dir.path().join(SUPERBLOCK), serde_json::to_string(&newer).unwrap()).unwrap();
        let err = Superblock::read(dir.path()).unwrap_err();
        assert!(err.contains("format version 9") && err.contains("reads version 1"), "{err}");
        std::fs::write(dir.path().join(SUPERBLOCK), "{").unwrap();
        assert!(Superblock::read(dir.path()).unwrap_err().contains("not a MemKV superblock"));
    }

    proptest! {
        #[test]
        fn checkpoints_round_trip(entries in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..40), any::<u64>(), any::<u64>(), any::<u64>(), 0u16..2),
            0..20,
        )) {
            let e: Vec<IndexEntry> = entries
                .into_iter()
                .map(|(k, v, o, l, f)| IndexEntry { key: k.into(), version: v, offset: o, value_len: l, flags: f })
                .collect();
            prop_assert_eq!(decode_index(&encode_index(&e)).unwrap(), e);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_checkpoint_parser(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_index(&b);
        }
    }
}
