//! Inclusion proofs: that the record with a given `seq` (a client's receipt) is in the tree
//! that a signed checkpoint commits to (RFC 6962 §2.1.1), and checking such a proof; and
//! consistency proofs: that the tree of a newer checkpoint extends the tree of an older one
//! (RFC 6962 §2.1.2), so that nothing the older one covered was changed or removed.
//!
//! The proof is built against the latest `audit.checkpoint` in the log and checked before it
//! is printed. It must never be built from leaves that are not the log's lines in `seq`
//! order, or against a tree head that no checkpoint signs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::envelope;
use crate::events::{self, AuditCheckpoint, Kind};
use crate::merkle::{self, Hash};
use crate::note::{self, Checkpoint, VerifierKey};
use crate::segments::{self, LineReader, Next};

/// An inclusion proof in the JSON form `signerctl audit prove` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The record's `seq` (its leaf index).
    pub seq: u64,
    /// Its leaf hash, hex.
    pub leaf_hash: String,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// That tree's root, hex.
    pub root: String,
    /// The proof's hashes, hex, nearest sibling first.
    pub proof: Vec<String>,
    /// The signed checkpoint note for `tree_size` and `root`.
    pub checkpoint: String,
}

fn decode_hash(what: &str, s: &str) -> Result<Hash, String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| format!("{what} is not 32 bytes of hex"))?;
    Ok(out)
}

/// The `seq` and note of an `audit.checkpoint` record.
type CheckpointRecord = (u64, String);

/// The leaf hashes of every complete record in `dir`, in `seq` order, and the latest
/// `audit.checkpoint` record.
fn read_leaves(dir: &Path) -> Result<(Vec<Hash>, Option<CheckpointRecord>), String> {
    let mut leaves: Vec<Hash> = Vec::new();
    let mut latest: Option<(u64, String)> = None;
    for seg in segments::list(dir)? {
        let mut reader = LineReader::open(&seg.path)?;
        loop {
            let next = reader
                .next_line()
                .map_err(|e| format!("cannot read {}: {e}", seg.path.display()))?;
            match next {
                Next::Eof => break,
                Next::TooLong { lineno, .. } => {
                    return Err(format!("{}:{lineno} is not a record (too long)", seg.name));
                }
                Next::Line {
                    bytes, terminated, ..
                } if !terminated => {
                    let _ = bytes;
                    break;
                }
                Next::Line { bytes, lineno, .. } => {
                    let env = envelope::parse(bytes).map_err(|e| {
                        format!(
                            "{}:{lineno} is not a valid record ({e}); run `signerctl audit verify`",
                            seg.name
                        )
                    })?;
                    if env.seq != leaves.len() as u64 {
                        return Err(format!(
                            "{}:{lineno} has seq {}, expected {}; run `signerctl audit verify`",
                            seg.name,
                            env.seq,
                            leaves.len()
                        ));
                    }
                    if env.kind == Some(Kind::AuditCheckpoint) {
                        let b: AuditCheckpoint = events::read(bytes)
                            .map_err(|e| format!("{}:{lineno}: {e}", seg.name))?;
                        latest = Some((env.seq, b.note));
                    }
                    leaves.push(merkle::leaf_hash(bytes));
                }
            }
        }
    }
    Ok((leaves, latest))
}

/// Builds the inclusion proof of record `seq` against the latest checkpoint in `dir`.
pub fn prove(dir: &Path, seq: u64) -> Result<InclusionProof, String> {
    let (leaves, latest) = read_leaves(dir)?;
    let Some((size, note_text)) = latest else {
        return Err("the log has no checkpoint yet".to_owned());
    };
    if seq >= size {
        return Err(format!(
            "record {seq} is not covered by a checkpoint yet: the latest one covers {size} records (seq 0 to {}); a new checkpoint comes after at most checkpoint_every_records records or checkpoint_every_seconds seconds",
            size.saturating_sub(1)
        ));
    }
    let tree = &leaves[..size as usize];
    let path = merkle::inclusion_proof(tree, seq).map_err(|e| e.to_string())?;
    let root = merkle::root(tree);
    let proof = InclusionProof {
        seq,
        leaf_hash: hex::encode(leaves[seq as usize]),
        tree_size: size,
        root: hex::encode(root),
        proof: path.iter().map(hex::encode).collect(),
        checkpoint: note_text,
    };
    check(&proof, None)?;
    Ok(proof)
}

/// Checks a proof: the checkpoint parses (and is signed by `key`, if given) and names the
/// proof's size and root, and the proof leads from the leaf hash to that root.
pub fn check(proof: &InclusionProof, key: Option<&VerifierKey>) -> Result<Checkpoint, String> {
    let checkpoint = match key {
        Some(k) => note::verify_note(&proof.checkpoint, k),
        None => note::parse_note(&proof.checkpoint).map(|(c, _)| c),
    }
    .map_err(|e| format!("checkpoint: {e}"))?;
    let root = decode_hash("root", &proof.root)?;
    if checkpoint.size != proof.tree_size || checkpoint.root != root {
        return Err(format!(
            "the checkpoint is for {} records with root {}, not the proof's {} and {}",
            checkpoint.size,
            hex::encode(checkpoint.root),
            proof.tree_size,
            proof.root
        ));
    }
    let leaf = decode_hash("leaf_hash", &proof.leaf_hash)?;
    let path = proof
        .proof
        .iter()
        .map(|h| decode_hash("a proof hash", h))
        .collect::<Result<Vec<_>, _>>()?;
    merkle::verify_inclusion(&leaf, proof.seq, proof.tree_size, &path, &root)
        .map_err(|e| format!("inclusion proof: {e}"))?;
    Ok(checkpoint)
}

/// A consistency proof in the JSON form `signerctl audit consistency` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The older signed checkpoint note.
    pub old: String,
    /// The newer signed checkpoint note.
    pub new: String,
    /// The proof's hashes, hex, in RFC 6962 order.
    pub proof: Vec<String>,
}

/// Builds the consistency proof from the checkpoint `old` to `new` (both note texts; `None`:
/// the latest checkpoint in the log), after checking that the log holds both trees.
pub fn prove_consistency(
    dir: &Path,
    old: &str,
    new: Option<&str>,
) -> Result<ConsistencyProof, String> {
    let (leaves, latest) = read_leaves(dir)?;
    let new = match new {
        Some(n) => n.to_owned(),
        None => latest.ok_or("the log has no checkpoint yet")?.1,
    };
    let (old_cp, _) = note::parse_note(old).map_err(|e| format!("old checkpoint: {e}"))?;
    let (new_cp, _) = note::parse_note(&new).map_err(|e| format!("new checkpoint: {e}"))?;
    for (what, cp) in [("old", &old_cp), ("new", &new_cp)] {
        let size = usize::try_from(cp.size).unwrap_or(usize::MAX);
        if size > leaves.len() {
            return Err(format!(
                "the {what} checkpoint covers {} records, but the log holds {}: records at the end were removed (the log was cut or rolled back)",
                cp.size,
                leaves.len()
            ));
        }
        if merkle::root(&leaves[..size]) != cp.root {
            return Err(format!(
                "the {what} checkpoint's tree of {} records is not the log's: the log was rewritten, or the checkpoint is of another log",
                cp.size
            ));
        }
    }
    if old_cp.size > new_cp.size {
        return Err(format!(
            "the old checkpoint covers {} records, more than the new one's {}",
            old_cp.size, new_cp.size
        ));
    }
    let size = usize::try_from(new_cp.size).map_err(|e| e.to_string())?;
    let path =
        merkle::consistency_proof(&leaves[..size], old_cp.size).map_err(|e| e.to_string())?;
    let proof = ConsistencyProof {
        old: old.to_owned(),
        new,
        proof: path.iter().map(hex::encode).collect(),
    };
    check_consistency(&proof, None)?;
    Ok(proof)
}

/// Checks a consistency proof: both checkpoints parse (and are signed by `key`, if given),
/// name the same origin, and the proof shows the newer tree extends the older one. Returns
/// (old, new).
pub fn check_consistency(
    proof: &ConsistencyProof,
    key: Option<&VerifierKey>,
) -> Result<(Checkpoint, Checkpoint), String> {
    let read = |what: &str, text: &str| {
        match key {
            Some(k) => note::verify_note(text, k),
            None => note::parse_note(text).map(|(c, _)| c),
        }
        .map_err(|e| format!("{what} checkpoint: {e}"))
    };
    let old = read("old", &proof.old)?;
    let new = read("new", &proof.new)?;
    if old.origin != new.origin {
        return Err(format!(
            "the checkpoints are of two logs: {:?} and {:?}",
            old.origin, new.origin
        ));
    }
    let path = proof
        .proof
        .iter()
        .map(|h| decode_hash("a proof hash", h))
        .collect::<Result<Vec<_>, _>>()?;
    merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &path).map_err(|e| {
        format!(
            "consistency proof from {} to {} records: {e} (the newer tree does not extend the older one: a fork or a rewrite)",
            old.size, new.size
        )
    })?;
    Ok((old, new))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::Record;
    use crate::events::AuditStop;
    use crate::testlog::{TestLog, vkey};

    #[test]
    fn proves_every_record_against_the_latest_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = TestLog::new(tmp.path());
        let receipts: Vec<(u64, Hash)> = (0..13u32)
            .map(|i| log.append(Record::new("x.n").field("i", i)))
            .collect();
        let err = prove(tmp.path(), 3).unwrap_err();
        assert!(err.contains("no checkpoint yet"), "{err}");
        log.append(AuditStop {});
        log.checkpoint();
        for (seq, leaf) in &receipts {
            let p = prove(tmp.path(), *seq).unwrap();
            assert_eq!(p.leaf_hash, hex::encode(leaf));
            assert_eq!(p.tree_size, 15);
            assert_eq!(check(&p, Some(&vkey())).unwrap().size, 15);
            let mut bad = p.clone();
            bad.leaf_hash = hex::encode([1u8; 32]);
            assert!(check(&bad, Some(&vkey())).is_err());
            let mut bad = p.clone();
            bad.seq ^= 1;
            assert!(check(&bad, Some(&vkey())).is_err());
        }
        let err = prove(tmp.path(), 15).unwrap_err();
        assert!(err.contains("not covered by a checkpoint yet"), "{err}");
    }

    #[test]
    fn consistency_between_every_pair_of_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = TestLog::new(tmp.path());
        let mut notes = Vec::new();
        for round in 0..4u32 {
            for i in 0..=round {
                log.append(Record::new("x.n").field("i", i));
            }
            log.checkpoint();
            notes.push(std::fs::read_to_string(tmp.path().join("checkpoint")).unwrap());
        }
        for (i, old) in notes.iter().enumerate() {
            for new in &notes[i..] {
                let p = prove_consistency(tmp.path(), old, Some(new)).unwrap();
                let (o, n) = check_consistency(&p, Some(&vkey())).unwrap();
                assert!(o.size <= n.size);
                if o.size < n.size && !p.proof.is_empty() {
                    let mut bad = p.clone();
                    bad.proof[0] = hex::encode([7u8; 32]);
                    assert!(check_consistency(&bad, Some(&vkey())).is_err());
                }
            }
            // Old to latest, and the two swapped.
            prove_consistency(tmp.path(), old, None).unwrap();
            if i + 1 < notes.len() {
                let err = prove_consistency(tmp.path(), &notes[i + 1], Some(old)).unwrap_err();
                assert!(err.contains("more than the new one"), "{err}");
            }
        }
        // A checkpoint of a longer (or other) log is not in this one.
        let other = tempfile::tempdir().unwrap();
        let mut longer = TestLog::new(other.path());
        for i in 0..30u32 {
            longer.append(Record::new("x.n").field("i", i));
        }
        longer.checkpoint();
        let far = std::fs::read_to_string(other.path().join("checkpoint")).unwrap();
        let err = prove_consistency(tmp.path(), &notes[0], Some(&far)).unwrap_err();
        assert!(err.contains("records at the end were removed"), "{err}");
    }
}
