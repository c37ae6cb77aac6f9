//! RFC 6962 / RFC 9162 §2.1 Merkle tree hashing: tree heads, inclusion proofs and consistency
//! proofs over the audit log's leaf hashes.
//!
//! Written here rather than taken from a crate: `ct-merkle` keeps every leaf's data in memory
//! and hashes its own leaf encoding (we need a streaming frontier over leaf hashes that the
//! writer already computed) and pulls a second `sha2`/`digest` generation; `tlog_tiles` is built
//! around tile storage and brings `url`, an older `base64` and `thiserror` 1. What the log needs
//! is small: a frontier for the writer (O(log n) memory), a root over a slice of leaf hashes,
//! and the two proof algorithms with their verifiers, each exactly as the RFC states them and
//! tested against the RFC 6962 definitions for every size up to 64.
//!
//! This module must never hash anything but `0x00 || data` for leaves and
//! `0x01 || left || right` for interior nodes (the domain separation that stops a leaf from
//! being passed off as a node), and never accept a proof whose length or indices do not fit the
//! tree size.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// RFC 6962 leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(data)
        .finalize()
        .into()
}

/// RFC 6962 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two strictly smaller than `n` (`n` >= 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash (MTH) of `leaves` (leaf hashes, already `SHA-256(0x00 || d)`).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The right edge of a growing tree: the roots of its maximal perfect subtrees, largest first.
/// Appending a leaf and computing the root both cost O(log n) hashes at most, so the writer
/// can keep the tree head current without keeping the leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, hash) of each perfect subtree, heights strictly decreasing.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut height = 0u32;
        let mut hash = leaf;
        while let Some(&(h, left)) = self.nodes.last() {
            if h != height {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&left, &hash);
            height += 1;
        }
        self.nodes.push((height, hash));
        self.size += 1;
    }

    /// (height, hash) of each maximal perfect subtree, largest first: with [`Frontier::size`],
    /// everything needed to continue the tree.
    pub fn nodes(&self) -> &[(u32, Hash)] {
        &self.nodes
    }

    /// The frontier of a tree of `size` leaves whose maximal perfect subtrees are `nodes`
    /// (largest first). Refuses nodes that cannot be the frontier of `size` leaves: their
    /// heights must be the set bits of `size`, highest first.
    pub fn from_nodes(size: u64, nodes: Vec<(u32, Hash)>) -> Result<Frontier, String> {
        let heights: Vec<u32> = (0..64).rev().filter(|h| size >> h & 1 == 1).collect();
        if nodes.iter().map(|(h, _)| *h).ne(heights.iter().copied()) {
            return Err(format!(
                "a tree of {size} leaves has perfect subtrees of heights {heights:?}"
            ));
        }
        Ok(Frontier { size, nodes })
    }

    /// The tree head over every leaf pushed so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return EMPTY_ROOT;
        };
        for (_, left) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod frontier_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_frontier_rebuilt_from_its_nodes_continues_the_same_tree() {
        let mut a = Frontier::new();
        for i in 0..13u8 {
            a.push(leaf_hash(&[i]));
        }
        let mut b = Frontier::from_nodes(a.size(), a.nodes().to_vec()).unwrap();
        for i in 13..40u8 {
            a.push(leaf_hash(&[i]));
            b.push(leaf_hash(&[i]));
        }
        assert_eq!(a, b);
        assert!(Frontier::from_nodes(12, a.nodes().to_vec()).is_err());
        assert!(Frontier::from_nodes(3, vec![(0, [0; 32]), (1, [0; 32])]).is_err());
    }
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The index or sizes do not describe a valid proof request.
    #[error("{0}")]
    Range(String),
    /// The proof has the wrong number of hashes for its index and size.
    #[error("the proof has {got} hashes; a proof for these sizes has {want}")]
    Length {
        /// Hashes in the proof.
        got: usize,
        /// Hashes a proof for these parameters must have.
        want: usize,
    },
    /// The hashes do not lead to the expected root(s).
    #[error("the proof does not lead to the expected root")]
    Mismatch,
}

/// The inclusion proof of leaf `index` in the tree of the first `leaves.len()` leaves
/// (RFC 6962 §2.1.1 `PATH(m, D[n])`), nearest sibling first.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let n = leaves.len() as u64;
    if index >= n {
        return Err(ProofError::Range(format!(
            "leaf index {index} is not below the tree size {n}"
        )));
    }
    let mut proof = Vec::new();
    path(index as usize, leaves, &mut proof);
    Ok(proof)
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n as u64) as usize;
    if m < k {
        path(m, &leaves[..k], out);
        out.push(root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(root(&leaves[..k]));
    }
}

/// The consistency proof between the tree of the first `old_size` leaves and the tree of all
/// `leaves` (RFC 6962 §2.1.2 `PROOF(m, D[n])`). Empty when `old_size` is 0 or equals the size.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, ProofError> {
    let n = leaves.len() as u64;
    if old_size > n {
        return Err(ProofError::Range(format!(
            "old size {old_size} is larger than the tree size {n}"
        )));
    }
    let mut proof = Vec::new();
    if old_size > 0 && old_size < n {
        subproof(old_size as usize, leaves, true, &mut proof);
    }
    Ok(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n as u64) as usize;
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2): `leaf` is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf index {index} is not below the tree size {size}"
        )));
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Length {
                got: proof.len(),
                want: inclusion_len(index, size),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Length {
            got: proof.len(),
            want: inclusion_len(index, size),
        });
    }
    if &r != root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// How many hashes the inclusion proof of `index` in a tree of `size` has.
fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut m, mut n, mut len) = (index, size, 0usize);
    while n > 1 {
        let k = split(n);
        if m < k {
            n = k;
        } else {
            m -= k;
            n -= k;
        }
        len += 1;
    }
    len
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): the tree of `old_size` leaves with root
/// `old_root` is a prefix of the tree of `new_size` leaves with root `new_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::Range(format!(
            "old size {old_size} is larger than the new size {new_size}"
        )));
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::Length {
                got: proof.len(),
                want: 0,
            });
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if old_size == 0 {
        // Every tree extends the empty tree; there is nothing to prove.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Length {
                got: proof.len(),
                want: 0,
            })
        };
    }
    if proof.is_empty() {
        return Err(ProofError::Length { got: 0, want: 1 });
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::Mismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 || &fr != old_root || &sr != new_root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// SHA-256 with ring, independent of the code under test.
    fn sha(parts: &[&[u8]]) -> Hash {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().try_into().unwrap()
    }
    fn l(d: &[u8]) -> Hash {
        sha(&[&[0], d])
    }
    fn n(a: Hash, b: Hash) -> Hash {
        sha(&[&[1], &a, &b])
    }

    /// The leaf inputs of the Certificate Transparency reference test vectors.
    const INPUTS: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Their roots for sizes 1..=8, as published with the reference implementation.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves(count: usize) -> Vec<Hash> {
        (0..count)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect()
    }

    /// MTH straight from the RFC's recursive definition, with ring.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => sha(&[]),
            1 => d[0],
            len => {
                let mut k = 1;
                while k * 2 < len {
                    k *= 2;
                }
                n(mth(&d[..k]), mth(&d[k..]))
            }
        }
    }

    #[test]
    fn small_trees_by_hand() {
        let d: Vec<Hash> = INPUTS.iter().map(|x| l(x)).collect();
        assert_eq!(leaf_hash(INPUTS[3]), d[3]);
        assert_eq!(node_hash(&d[0], &d[1]), n(d[0], d[1]));
        let by_hand = [
            d[0],
            n(d[0], d[1]),
            n(n(d[0], d[1]), d[2]),
            n(n(d[0], d[1]), n(d[2], d[3])),
            n(n(n(d[0], d[1]), n(d[2], d[3])), d[4]),
            n(n(n(d[0], d[1]), n(d[2], d[3])), n(d[4], d[5])),
            n(n(n(d[0], d[1]), n(d[2], d[3])), n(n(d[4], d[5]), d[6])),
            n(
                n(n(d[0], d[1]), n(d[2], d[3])),
                n(n(d[4], d[5]), n(d[6], d[7])),
            ),
        ];
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), sha(&[]));
        assert_eq!(root(&[]), EMPTY_ROOT);
        for size in 1..=8 {
            frontier.push(d[size - 1]);
            assert_eq!(root(&d[..size]), by_hand[size - 1], "size {size}");
            assert_eq!(frontier.root(), by_hand[size - 1], "frontier size {size}");
            assert_eq!(
                hex::encode(by_hand[size - 1]),
                ROOTS[size - 1],
                "size {size}"
            );
        }
    }

    #[test]
    fn reference_inclusion_and_consistency_vectors() {
        let d: Vec<Hash> = INPUTS.iter().map(|x| l(x)).collect();
        let hexes = |v: Vec<Hash>| v.into_iter().map(hex::encode).collect::<Vec<_>>();
        assert_eq!(
            hexes(inclusion_proof(&d, 0).unwrap()),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        // PATH(5, D[8]) by hand: sibling leaf 4, then node(6,7), then the left half.
        assert_eq!(
            inclusion_proof(&d, 5).unwrap(),
            [d[4], n(d[6], d[7]), n(n(d[0], d[1]), n(d[2], d[3]))]
        );
        // PROOF(3, D[7]) by hand (RFC 6962 §2.1.3's example tree): c, d, g, l.
        assert_eq!(
            consistency_proof(&d[..7], 3).unwrap(),
            [d[2], d[3], n(d[0], d[1]), n(n(d[4], d[5]), d[6])]
        );
        // PROOF(4, D[7]): l only, since the old tree is a complete subtree.
        assert_eq!(
            consistency_proof(&d[..7], 4).unwrap(),
            [n(n(d[4], d[5]), d[6])]
        );
        // PROOF(6, D[7]): i, j, k.
        assert_eq!(
            consistency_proof(&d[..7], 6).unwrap(),
            [n(d[4], d[5]), d[6], n(n(d[0], d[1]), n(d[2], d[3]))]
        );
    }

    #[test]
    fn inclusion_proofs_all_sizes_to_64() {
        let all = leaves(64);
        for size in 1..=64usize {
            let tree = &all[..size];
            let r = mth(tree);
            assert_eq!(root(tree), r);
            let mut f = Frontier::new();
            tree.iter().for_each(|x| f.push(*x));
            assert_eq!(f.root(), r);
            assert_eq!(f.size(), size as u64);
            for i in 0..size {
                let proof = inclusion_proof(tree, i as u64).unwrap();
                assert_eq!(proof.len(), inclusion_len(i as u64, size as u64));
                verify_inclusion(&tree[i], i as u64, size as u64, &proof, &r).unwrap();
                // Wrong leaf, index, size, root or proof length: refused.
                let other = (i + 1) % size;
                if other != i {
                    assert!(
                        verify_inclusion(&tree[other], i as u64, size as u64, &proof, &r).is_err()
                    );
                    assert!(
                        verify_inclusion(&tree[i], other as u64, size as u64, &proof, &r).is_err()
                    );
                }
                // The size is bound to the root by the signed checkpoint; against the next
                // tree's root, this tree's proof fails.
                let next_root = mth(&all[..(size + 1).min(64)]);
                if size < 64 {
                    assert!(
                        verify_inclusion(&tree[i], i as u64, size as u64 + 1, &proof, &next_root)
                            .is_err(),
                        "index {i}: size {size} proof accepted for size {}",
                        size + 1
                    );
                }
                assert!(
                    verify_inclusion(&tree[i], i as u64, size as u64, &proof, &[7; 32]).is_err()
                );
                let mut longer = proof.clone();
                longer.push([0; 32]);
                assert!(verify_inclusion(&tree[i], i as u64, size as u64, &longer, &r).is_err());
                if !proof.is_empty() {
                    let mut flipped = proof.clone();
                    flipped[0][0] ^= 1;
                    assert!(
                        verify_inclusion(&tree[i], i as u64, size as u64, &flipped, &r).is_err()
                    );
                    assert!(
                        verify_inclusion(
                            &tree[i],
                            i as u64,
                            size as u64,
                            &proof[..proof.len() - 1],
                            &r
                        )
                        .is_err()
                    );
                }
            }
            assert!(inclusion_proof(tree, size as u64).is_err());
            assert!(verify_inclusion(&tree[0], size as u64, size as u64, &[], &r).is_err());
        }
    }

    #[test]
    fn consistency_proofs_all_sizes_to_64() {
        let all = leaves(64);
        for new in 1..=64usize {
            let new_root = mth(&all[..new]);
            for old in 0..=new {
                let old_root = mth(&all[..old]);
                let proof = consistency_proof(&all[..new], old as u64).unwrap();
                verify_consistency(old as u64, new as u64, &old_root, &new_root, &proof)
                    .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
                if old > 0 && old < new {
                    assert!(!proof.is_empty());
                    let wrong_old = mth(&all[1..=old]);
                    assert!(
                        verify_consistency(old as u64, new as u64, &wrong_old, &new_root, &proof)
                            .is_err(),
                        "{old} -> {new}: wrong old root accepted"
                    );
                    assert!(
                        verify_consistency(old as u64, new as u64, &old_root, &old_root, &proof)
                            .is_err()
                    );
                    let mut flipped = proof.clone();
                    let last = flipped.len() - 1;
                    flipped[last][5] ^= 0x20;
                    assert!(
                        verify_consistency(old as u64, new as u64, &old_root, &new_root, &flipped)
                            .is_err()
                    );
                    let mut longer = proof.clone();
                    longer.push(new_root);
                    assert!(
                        verify_consistency(old as u64, new as u64, &old_root, &new_root, &longer)
                            .is_err()
                    );
                    assert!(
                        verify_consistency(
                            old as u64,
                            new as u64,
                            &old_root,
                            &new_root,
                            &proof[..proof.len() - 1]
                        )
                        .is_err()
                    );
                    if new > old + 1 {
                        assert!(
                            verify_consistency(
                                old as u64 + 1,
                                new as u64,
                                &old_root,
                                &new_root,
                                &proof
                            )
                            .is_err()
                        );
                    }
                }
            }
            assert!(consistency_proof(&all[..new], new as u64 + 1).is_err());
            assert!(
                verify_consistency(new as u64 + 1, new as u64, &new_root, &new_root, &[]).is_err()
            );
        }
    }
}
