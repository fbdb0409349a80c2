//! Key → node placement by rendezvous (highest-random-weight) hashing.
//!
//! Every client computes the same owner for a key from the server list alone (shared nothing).
//! Adding a node moves only the keys that the new node now wins (about 1/(n+1) of them); removing
//! one moves only its own keys. A node's identity is its address text as configured.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Precomputed per-node seeds.
#[derive(Debug, Clone)]
pub(crate) struct Rendezvous {
    seeds: Vec<u64>,
}

impl Rendezvous {
    pub(crate) fn new<S: AsRef<str>>(nodes: &[S]) -> Self {
        Self { seeds: nodes.iter().map(|n| xxh3_64(n.as_ref().as_bytes())).collect() }
    }

    /// Index of the node that owns `key`. Panics never; returns 0 for an empty list.
    pub(crate) fn owner(&self, key: &[u8]) -> usize {
        let mut best = (0u64, 0usize);
        for (i, &seed) in self.seeds.iter().enumerate() {
            let score = xxh3_64_with_seed(key, seed);
            if score > best.0 || i == 0 {
                best = (score, i);
            }
        }
        best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:9900")).collect()
    }

    #[test]
    fn placement_is_deterministic_and_spread_evenly() {
        let r = Rendezvous::new(&names(4));
        let mut counts = [0usize; 4];
        for k in 0..40_000u32 {
            let key = k.to_le_bytes();
            let o = r.owner(&key);
            assert_eq!(o, Rendezvous::new(&names(4)).owner(&key));
            counts[o] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn adding_a_node_moves_only_the_keys_it_wins() {
        let before = Rendezvous::new(&names(4));
        let after = Rendezvous::new(&names(5));
        let mut moved = 0;
        for k in 0..20_000u32 {
            let key = k.to_le_bytes();
            let (a, b) = (before.owner(&key), after.owner(&key));
            if a != b {
                assert_eq!(b, 4, "a key may only move to the new node");
                moved += 1;
            }
        }
        assert!((3_000..5_000).contains(&moved), "expected ~1/5 of keys to move, moved {moved}");
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let all = names(3);
        let before = Rendezvous::new(&all);
        let after = Rendezvous::new(&[all[0].clone(), all[2].clone()]);
        for k in 0..5_000u32 {
            let key = k.to_le_bytes();
            let a = before.owner(&key);
            if a != 1 {
                let expect = if a == 0 { 0 } else { 1 };
                assert_eq!(after.owner(&key), expect);
            }
        }
    }

    #[test]
    fn single_node_owns_everything() {
        let r = Rendezvous::new(&names(1));
        assert_eq!(r.owner(b"anything"), 0);
        assert_eq!(Rendezvous::new::<String>(&[]).owner(b"x"), 0);
    }
}
