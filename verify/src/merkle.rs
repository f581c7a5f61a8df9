//! The Merkle tree hash of RFC 6962 §2.1 over the event log in global
//! order, so one 32-byte root commits to every event up to a position and a
//! signed root kept outside the database (`checkpoint`) shows whether the
//! log's beginning was rewritten since. Pure: the leaves are the events'
//! chain hashes, fed one at a time.
//!
//! MTH({}) = SHA-256(), MTH({d}) = SHA-256(0x00 || d), and for n > 1 with k
//! the largest power of two below n: MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k])
//! || MTH(D[k:n])). A leaf's data is the event's hash as 32 bytes.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The root of a tree without leaves: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The leaf data of an event: its chain hash as bytes. A stored hash that is
/// not 64 hex digits (a tampered row) enters as its text, so it still
/// changes the root.
pub fn event_leaf(event_hash: &str) -> Hash {
    let mut bytes = [0u8; 32];
    match hex::decode_to_slice(event_hash, &mut bytes) {
        Ok(()) => leaf_hash(&bytes),
        Err(_) => leaf_hash(event_hash.as_bytes()),
    }
}

/// A tree grown one leaf at a time, keeping only the roots of its perfect
/// subtrees (at most one per power of two, so O(log n) memory): the root of
/// the first n leaves can be read at any n, as one pass over the log
/// checks several checkpoints.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// (height, root) of each perfect subtree, largest first.
    subtrees: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf (already hashed with `leaf_hash`).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut height = 0;
        while let Some(&(top_height, top)) = self.subtrees.last() {
            if top_height != height {
                break;
            }
            self.subtrees.pop();
            node = node_hash(&top, &node);
            height += 1;
        }
        self.subtrees.push((height, node));
        self.size += 1;
    }

    /// MTH of the leaves so far. Folding the perfect subtrees from the right
    /// is the §2.1 split: the largest subtree covers exactly the first k
    /// leaves, k the largest power of two below n.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(&(_, mut acc)) = subtrees.next() else {
            return empty_root();
        };
        for (_, left) in subtrees {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// MTH over all of `leaves` (already hashed), at once.
pub fn root(leaves: &[Hash]) -> Hash {
    let mut frontier = Frontier::new();
    leaves.iter().for_each(|leaf| frontier.push(*leaf));
    frontier.root()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 §2.1 written out as the recursion, over leaf data.
    fn reference(data: &[Vec<u8>]) -> Hash {
        match data.len() {
            0 => Sha256::digest([]).into(),
            1 => leaf_hash(&data[0]),
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&reference(&data[..k]), &reference(&data[k..]))
            }
        }
    }

    fn data(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| Sha256::digest(i.to_string()).to_vec()).collect()
    }

    fn incremental(data: &[Vec<u8>]) -> Hash {
        root(&data.iter().map(|d| leaf_hash(d)).collect::<Vec<_>>())
    }

    /// Fixed vectors, computed independently (Python's hashlib) for leaves
    /// whose data is SHA-256 of "0", "1", ...
    #[test]
    fn fixed_vectors() {
        let cases: [(usize, &str); 4] = [
            (0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            (1, "13a77175e35eb1d9da91ee14df0d7772cea71289800206e2b45c882ecb06efbf"),
            (3, "8be871f13785b4c81a1700459c76ac2b3ae2caebb7876c376e223c6adff98c47"),
            (7, "5653c4ab2514ccd6ea4f0159702d2aba901f2562aa75abcff5a19e344bee038f"),
        ];
        for (n, expected) in cases {
            assert_eq!(hex::encode(incremental(&data(n))), expected, "{n} leaves");
        }
    }

    #[test]
    fn incremental_matches_the_recursion_for_every_size_up_to_70() {
        let all = data(70);
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), reference(&[]));
        for n in 1..=all.len() {
            frontier.push(leaf_hash(&all[n - 1]));
            assert_eq!(frontier.size(), n as u64);
            assert_eq!(frontier.root(), reference(&all[..n]), "{n} leaves");
        }
    }

    #[test]
    fn the_empty_tree_is_the_hash_of_nothing() {
        assert_eq!(hex::encode(empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn a_leaf_is_domain_separated_from_its_data() {
        let d = data(1);
        assert_ne!(root(&[leaf_hash(&d[0])]).to_vec(), d[0]);
        assert_eq!(root(&[leaf_hash(&d[0])]), leaf_hash(&d[0]));
    }

    #[test]
    fn an_event_leaf_is_its_hash_as_bytes() {
        let h = "ab".repeat(32);
        assert_eq!(event_leaf(&h), leaf_hash(&[0xab; 32]));
        assert_eq!(event_leaf("not hex"), leaf_hash(b"not hex"));
    }
}
