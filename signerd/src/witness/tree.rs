//! The part of the audit log's Merkle tree that the witness sender needs: the perfect
//! subtrees that make up the first `base` records (the frontier at `base`), and the leaf
//! hashes of every record after it. From these it computes the tree head at any size from
//! `base` on, and the RFC 6962 §2.1.2 consistency proof from any size `m >= base` to any
//! later size: every node such a proof names either lies after `base` or is a union of the
//! frontier's subtrees. Memory is O(log base + records after base).
//!
//! The log is read from its segment files (the exact lines, hashed as leaves), incrementally.
//! This module must never hand out a hash for a range it cannot compute exactly, or count a
//! line that has no newline yet (a write in progress).

use std::path::{Path, PathBuf};

use signerd_auditor::merkle::{self, Hash};
use signerd_auditor::segments::{self, LineReader, Next};

/// A perfect subtree: leaves `lo .. hi` and their hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    lo: u64,
    hi: u64,
    hash: Hash,
}

/// The frontier at `base` and the leaves after it.
#[derive(Debug, Clone, Default)]
pub struct PartialTree {
    base: u64,
    /// The maximal perfect subtrees of leaves `0 .. base`, left to right.
    frontier: Vec<Node>,
    /// Leaf hashes of `base ..`.
    leaves: Vec<Hash>,
}

impl PartialTree {
    /// The empty tree.
    pub fn new() -> PartialTree {
        PartialTree::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.base + self.leaves.len() as u64
    }

    /// The first size this tree can prove from.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.leaves.push(leaf);
    }

    /// The hash of leaves `lo .. hi` as the RFC 6962 tree splits them, if it can be computed
    /// from what is kept.
    fn range(&self, lo: u64, hi: u64) -> Option<Hash> {
        if lo >= hi || hi > self.size() {
            return None;
        }
        if lo >= self.base {
            let a = usize::try_from(lo - self.base).ok()?;
            let b = usize::try_from(hi - self.base).ok()?;
            return Some(merkle::root(&self.leaves[a..b]));
        }
        if let Some(n) = self.frontier.iter().find(|n| n.lo == lo && n.hi == hi) {
            return Some(n.hash);
        }
        let n = hi - lo;
        if n < 2 {
            return None;
        }
        let k = split(n);
        Some(merkle::node_hash(
            &self.range(lo, lo + k)?,
            &self.range(lo + k, hi)?,
        ))
    }

    /// The tree head of the first `size` leaves (`size >= base`, `size <= self.size()`).
    pub fn root(&self, size: u64) -> Option<Hash> {
        if size == 0 {
            return Some(merkle::EMPTY_ROOT);
        }
        self.range(0, size)
    }

    /// The consistency proof from `old` to `new` leaves (RFC 6962 §2.1.2 `PROOF(m, D[n])`),
    /// or `None` if `old` is below the base or the sizes do not fit.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old > new || new > self.size() || (old != 0 && old < self.base) {
            return None;
        }
        let mut proof = Vec::new();
        if old == 0 || old == new {
            return Some(proof);
        }
        self.subproof(old, 0, new, true, &mut proof)?;
        Some(proof)
    }

    /// `SUBPROOF(m, D[start : start + n], b)`.
    fn subproof(&self, m: u64, start: u64, n: u64, whole: bool, out: &mut Vec<Hash>) -> Option<()> {
        if m == n {
            if !whole {
                out.push(self.range(start, start + n)?);
            }
            return Some(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, whole, out)?;
            out.push(self.range(start + k, start + n)?);
        } else {
            self.subproof(m - k, start + k, n - k, false, out)?;
            out.push(self.range(start, start + k)?);
        }
        Some(())
    }

    /// Forgets the leaves before `base` (which must be between the current base and the
    /// size), keeping the frontier at `base`.
    pub fn rebase(&mut self, base: u64) {
        if base <= self.base || base > self.size() {
            return;
        }
        let mut frontier = Vec::new();
        let mut lo = 0u64;
        for bit in (0..64).rev() {
            let width = 1u64 << bit;
            if base & width != 0 {
                let Some(hash) = self.range(lo, lo + width) else {
                    return;
                };
                frontier.push(Node {
                    lo,
                    hi: lo + width,
                    hash,
                });
                lo += width;
            }
        }
        let drop = usize::try_from(base - self.base).unwrap_or(self.leaves.len());
        self.leaves.drain(..drop);
        self.frontier = frontier;
        self.base = base;
    }
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Reads the log's segments incrementally and feeds their leaves to a [`PartialTree`].
#[derive(Debug)]
pub struct LogTail {
    dir: PathBuf,
    /// The segment being read (1-based) and the byte offset after the last whole line.
    segment: u64,
    offset: u64,
}

impl LogTail {
    /// Reads `dir` from its first record.
    pub fn new(dir: &Path) -> LogTail {
        LogTail {
            dir: dir.to_owned(),
            segment: 1,
            offset: 0,
        }
    }

    /// Appends to `tree` the leaves of the records written since the last call, until the
    /// tree holds `until` leaves or no whole line is left. Returns an error when a segment
    /// cannot be read or a line is too long to be a record.
    pub fn read(&mut self, tree: &mut PartialTree, until: u64) -> Result<(), String> {
        use std::io::{Seek, SeekFrom};
        while tree.size() < until {
            let path = self.dir.join(segments::segment_name(self.segment));
            let mut file = match segments::open_regular(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            file.seek(SeekFrom::Start(self.offset))
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut reader = LineReader::new(file);
            let mut at_end = false;
            while tree.size() < until {
                match reader
                    .next_line()
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                {
                    Next::Line {
                        bytes,
                        terminated: true,
                        ..
                    } => {
                        tree.push(merkle::leaf_hash(bytes));
                        self.offset += bytes.len() as u64 + 1;
                    }
                    Next::Line {
                        terminated: false, ..
                    } => return Ok(()),
                    Next::TooLong { .. } => {
                        return Err(format!(
                            "{} holds a line longer than a record at byte {}",
                            path.display(),
                            self.offset
                        ));
                    }
                    Next::Eof => {
                        at_end = true;
                        break;
                    }
                }
            }
            if !at_end {
                return Ok(());
            }
            // The segment is read to its end: go on with the next one if it exists (a
            // segment is sealed before the next is created).
            let next = self.dir.join(segments::segment_name(self.segment + 1));
            if std::fs::symlink_metadata(&next).is_err() {
                return Ok(());
            }
            self.segment += 1;
            self.offset = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
            .collect()
    }

    /// The proofs and roots match the auditor's full-tree implementation for every pair of
    /// sizes up to 40, whatever the base the tree was cut to.
    #[test]
    fn proofs_from_a_partial_tree_match_the_full_tree() {
        let all = leaves(40);
        for base in 0..=40u64 {
            let mut tree = PartialTree::new();
            for l in &all {
                tree.push(*l);
            }
            tree.rebase(base);
            assert_eq!(tree.base(), base);
            assert_eq!(tree.size(), 40);
            for new in base.max(1)..=40 {
                assert_eq!(
                    tree.root(new).unwrap(),
                    merkle::root(&all[..new as usize]),
                    "root base {base} size {new}"
                );
                for old in base..=new {
                    let want = merkle::consistency_proof(&all[..new as usize], old).unwrap();
                    let got = tree.consistency_proof(old, new).unwrap();
                    assert_eq!(got, want, "base {base} old {old} new {new}");
                    if old > 0 {
                        merkle::verify_consistency(
                            old,
                            new,
                            &merkle::root(&all[..old as usize]),
                            &merkle::root(&all[..new as usize]),
                            &got,
                        )
                        .unwrap();
                    }
                }
            }
            if base > 1 {
                assert!(tree.consistency_proof(base - 1, 40).is_none());
            }
        }
    }

    #[test]
    fn rebasing_twice_and_growing_after_keeps_proofs_right() {
        let all = leaves(100);
        let mut tree = PartialTree::new();
        for l in &all[..30] {
            tree.push(*l);
        }
        tree.rebase(13);
        tree.rebase(27);
        for l in &all[30..] {
            tree.push(*l);
        }
        tree.rebase(29);
        for old in [29u64, 30, 64, 99] {
            assert_eq!(
                tree.consistency_proof(old, 100).unwrap(),
                merkle::consistency_proof(&all, old).unwrap()
            );
        }
        assert_eq!(tree.root(100).unwrap(), merkle::root(&all));
    }

    #[test]
    fn the_tail_reads_whole_lines_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let seg = |n: u64| dir.path().join(segments::segment_name(n));
        std::fs::write(seg(1), b"a\nb\nc").unwrap();
        let mut tail = LogTail::new(dir.path());
        let mut tree = PartialTree::new();
        tail.read(&mut tree, 10).unwrap();
        assert_eq!(tree.size(), 2, "the unterminated line is not a record yet");
        std::fs::write(seg(1), b"a\nb\nc\n").unwrap();
        std::fs::write(seg(2), b"d\ne\n").unwrap();
        tail.read(&mut tree, 4).unwrap();
        assert_eq!(tree.size(), 4);
        tail.read(&mut tree, 10).unwrap();
        assert_eq!(tree.size(), 5);
        let want: Vec<Hash> = [b"a", b"b", b"c", b"d", b"e"]
            .iter()
            .map(|l| merkle::leaf_hash(*l))
            .collect();
        assert_eq!(tree.root(5).unwrap(), merkle::root(&want));
    }
}
