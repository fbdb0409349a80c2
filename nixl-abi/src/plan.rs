//! Turns the descriptor pairs of one NIXL request into the fewest MemKV operations. Pure: no I/O.
//!
//! The OBJ_SEG contract: a remote descriptor's devId picks a registered object, its `addr` is the
//! byte offset inside that object, `len` the byte count; the local descriptor is the host memory.
//!
//! * WRITE stores whole objects. The descriptors of one object must cover `[0, size)` without
//!   gaps or overlaps (one descriptor per block, or one per layer of a block); the object becomes
//!   visible atomically once every part has arrived. Parts adjacent both in the object and in
//!   local memory are merged into one.
//! * READ fetches ranges, received straight into local memory. Descriptors adjacent both in the
//!   object and in local memory are merged into one ranged read.

use std::collections::BTreeMap;

/// One descriptor pair: `len` bytes at local address `local` and at `offset` of object `object`
/// (an index into the request's object table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// Local (host) address.
    pub local: u64,
    /// Byte count.
    pub len: u64,
    /// Which object of the request.
    pub object: usize,
    /// Offset inside the object.
    pub offset: u64,
}

/// One write: `len` bytes from local address `src` to `offset` of the `total`-byte `object`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePart {
    /// Which object of the request.
    pub object: usize,
    /// Offset inside the object.
    pub offset: u64,
    /// Size of the whole object.
    pub total: u64,
    /// Local source address.
    pub src: u64,
    /// Byte count.
    pub len: u64,
}

/// One ranged read: `len` bytes from `offset` of `object` to local address `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPart {
    /// Which object of the request.
    pub object: usize,
    /// First byte inside the object.
    pub offset: u64,
    /// Byte count.
    pub len: u64,
    /// Local destination address.
    pub dst: u64,
}

/// Why a request cannot be planned; the text names the object (by the caller's label) and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError(pub String);

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn by_object(pairs: &[Pair]) -> Result<BTreeMap<usize, Vec<Pair>>, PlanError> {
    let mut groups: BTreeMap<usize, Vec<Pair>> = BTreeMap::new();
    for p in pairs {
        if p.len == 0 {
            return Err(PlanError("a descriptor has length 0; every descriptor must move at least one byte".into()));
        }
        if p.offset.checked_add(p.len).is_none() || p.local.checked_add(p.len).is_none() {
            return Err(PlanError(format!("descriptor {}+{} overflows the address space", p.offset, p.len)));
        }
        groups.entry(p.object).or_default().push(*p);
    }
    for g in groups.values_mut() {
        g.sort_by_key(|p| p.offset);
    }
    Ok(groups)
}

/// Plans a WRITE. `label(object)` names an object in error messages.
pub fn plan_write(pairs: &[Pair], label: impl Fn(usize) -> String) -> Result<Vec<WritePart>, PlanError> {
    let mut out: Vec<WritePart> = Vec::new();
    for (object, parts) in by_object(pairs)? {
        let mut end = 0u64;
        for p in &parts {
            if p.offset < end {
                return Err(PlanError(format!(
                    "two descriptors write overlapping bytes of object {} (at offset {}); each byte of an object is \
                     written once per request",
                    label(object),
                    p.offset
                )));
            }
            if p.offset > end {
                return Err(PlanError(format!(
                    "the descriptors for object {} leave bytes {end}..{} unwritten; MemKV stores whole objects, so a \
                     WRITE must cover the object from offset 0 without gaps",
                    label(object),
                    p.offset
                )));
            }
            end = p.offset + p.len;
        }
        let first = out.len();
        for p in parts {
            let same_object = out.len() > first;
            match out.last_mut() {
                Some(w) if same_object && w.src + w.len == p.local && w.offset + w.len == p.offset => {
                    w.len += p.len;
                }
                _ => out.push(WritePart { object, offset: p.offset, total: end, src: p.local, len: p.len }),
            }
        }
    }
    Ok(out)
}

/// Plans a READ.
pub fn plan_read(pairs: &[Pair]) -> Result<Vec<ReadPart>, PlanError> {
    let mut out: Vec<ReadPart> = Vec::new();
    for (object, parts) in by_object(pairs)? {
        let first = out.len();
        for p in parts {
            let same_object = out.len() > first;
            match out.last_mut() {
                Some(r) if same_object && r.offset + r.len == p.offset && r.dst + r.len == p.local => r.len += p.len,
                _ => out.push(ReadPart { object, offset: p.offset, len: p.len, dst: p.local }),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn label(i: usize) -> String {
        format!("#{i}")
    }

    #[test]
    fn kvbm_blocks_from_one_pool_are_one_write_each() {
        // 16 blocks of 2 MiB, one object each, from one contiguous pool.
        let pairs: Vec<Pair> = (0..16)
            .map(|i| Pair { local: 0x1000_0000 + i * 2 * MIB, len: 2 * MIB, object: i as usize, offset: 0 })
            .collect();
        let w = plan_write(&pairs, label).unwrap();
        assert_eq!(w.len(), 16);
        assert!(w.iter().all(|p| p.offset == 0 && p.total == 2 * MIB && p.len == 2 * MIB));
        assert_eq!(w[3].src, 0x1000_0000 + 6 * MIB);
        // Different objects are never merged, even when adjacent in memory.
        let r = plan_read(&pairs).unwrap();
        assert_eq!(r.len(), 16);
    }

    #[test]
    fn layer_separate_object_merges_when_memory_is_contiguous() {
        // One 64-layer object written as 64 descriptors, given in reverse order.
        let chunk = 32 * 1024;
        let pairs: Vec<Pair> = (0..64u64)
            .rev()
            .map(|l| Pair { local: 0x5000 + l * chunk, len: chunk, object: 0, offset: l * chunk })
            .collect();
        let w = plan_write(&pairs, label).unwrap();
        assert_eq!(w, vec![WritePart { object: 0, offset: 0, total: 64 * chunk, src: 0x5000, len: 64 * chunk }]);
        let r = plan_read(&pairs).unwrap();
        assert_eq!(r, vec![ReadPart { object: 0, offset: 0, len: 64 * chunk, dst: 0x5000 }]);
    }

    #[test]
    fn layer_separate_object_with_scattered_memory() {
        // Layers live in separate per-layer buffers: one part (and one read) per layer.
        let chunk = 4096;
        let pairs: Vec<Pair> =
            (0..4u64).map(|l| Pair { local: 0x10_0000 * (l + 1), len: chunk, object: 2, offset: l * chunk }).collect();
        let w = plan_write(&pairs, label).unwrap();
        assert_eq!(w.len(), 4);
        assert!(w.iter().all(|p| p.total == 4 * chunk));
        let r = plan_read(&pairs).unwrap();
        assert_eq!(r.len(), 4);
        assert!(r.iter().zip(&pairs).all(|(r, p)| r.dst == p.local && r.offset == p.offset && r.len == chunk));
    }

    #[test]
    fn writes_must_cover_the_object_once() {
        let gap =
            [Pair { local: 0, len: 10, object: 0, offset: 0 }, Pair { local: 10, len: 10, object: 0, offset: 20 }];
        let e = plan_write(&gap, label).unwrap_err();
        assert!(e.0.contains("object #0 leave bytes 10..20 unwritten"), "{e}");
        let late = [Pair { local: 0, len: 10, object: 1, offset: 5 }];
        assert!(plan_write(&late, label).unwrap_err().0.contains("bytes 0..5 unwritten"));
        let overlap =
            [Pair { local: 0, len: 10, object: 0, offset: 0 }, Pair { local: 0, len: 10, object: 0, offset: 5 }];
        assert!(plan_write(&overlap, label).unwrap_err().0.contains("overlapping bytes of object #0"));
        let empty = [Pair { local: 0, len: 0, object: 0, offset: 0 }];
        assert!(plan_write(&empty, label).unwrap_err().0.contains("length 0"));
        assert!(plan_read(&empty).is_err());
        let wrap = [Pair { local: 0, len: 10, object: 0, offset: u64::MAX - 3 }];
        assert!(plan_read(&wrap).unwrap_err().0.contains("overflows"));
    }

    #[test]
    fn reads_may_overlap_and_start_anywhere() {
        let pairs =
            [Pair { local: 100, len: 10, object: 0, offset: 50 }, Pair { local: 200, len: 10, object: 0, offset: 55 }];
        let r = plan_read(&pairs).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].offset, r[1].offset), (50, 55));
    }

    fn pairs_strategy() -> impl Strategy<Value = Vec<Pair>> {
        // Up to 4 objects, each cut into 1..8 pieces of 1..64 bytes; pieces shuffled, with local
        // addresses either contiguous or spread out.
        (prop::collection::vec(prop::collection::vec(1u64..64, 1..8), 1..4), any::<bool>(), any::<u64>()).prop_map(
            |(objects, contiguous, seed)| {
                let mut pairs = Vec::new();
                let mut local = 0u64;
                for (o, pieces) in objects.iter().enumerate() {
                    let mut offset = 0;
                    for &len in pieces {
                        pairs.push(Pair { local, len, object: o, offset });
                        offset += len;
                        local += if contiguous { len } else { len + 7 };
                    }
                }
                let n = pairs.len();
                for i in 0..n {
                    let j = (seed.wrapping_mul(i as u64 + 1) % n as u64) as usize;
                    pairs.swap(i, j);
                }
                pairs
            },
        )
    }

    fn bytes_of(pairs: &[Pair]) -> BTreeMap<(usize, u64), u64> {
        // (object, offset) -> local address, byte by byte.
        let mut m = BTreeMap::new();
        for p in pairs {
            for k in 0..p.len {
                m.insert((p.object, p.offset + k), p.local + k);
            }
        }
        m
    }

    proptest! {
        #[test]
        fn plans_move_exactly_the_described_bytes(pairs in pairs_strategy()) {
            let expected = bytes_of(&pairs);
            let w = plan_write(&pairs, label).unwrap();
            let mut got = BTreeMap::new();
            for p in &w {
                let size: u64 = pairs.iter().filter(|q| q.object == p.object).map(|q| q.len).sum();
                prop_assert_eq!(p.total, size);
                for k in 0..p.len {
                    prop_assert!(got.insert((p.object, p.offset + k), p.src + k).is_none());
                }
            }
            prop_assert_eq!(&got, &expected);
            prop_assert!(w.len() <= pairs.len());

            let r = plan_read(&pairs).unwrap();
            let mut got = BTreeMap::new();
            for p in &r {
                for k in 0..p.len {
                    prop_assert!(got.insert((p.object, p.offset + k), p.dst + k).is_none());
                }
            }
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(r.len(), w.len(), "reads merge exactly like writes");
        }
    }
}
