//! A minimal writer of the log format, for this crate's tests only: records with their
//! envelope and chain, checkpoints (record and file), and segment rotation, written from
//! `docs/audit-log.md` apart from signerd's writer, so that the readers here are tested
//! against the spec rather than against that writer alone. No group commit, no fsync, no
//! recovery: those are the daemon's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Record;
use crate::events::{AuditCheckpoint, AuditSegmentOpen, AuditSegmentSeal, AuditStart};
use crate::layout::CHECKPOINT_FILE;
use crate::merkle::{self, Frontier, Hash};
use crate::note::{Checkpoint, CheckpointSigner, MemorySigner, VerifierKey};
use crate::segments::segment_name;

/// The origin (and key name) of test logs.
pub(crate) const ORIGIN: &str = "test.example/audit";

/// The checkpoint key of test logs.
pub(crate) fn signer() -> MemorySigner {
    MemorySigner::from_seed(ORIGIN, [42; 32])
}

/// Its verifier key.
pub(crate) fn vkey() -> VerifierKey {
    VerifierKey::new(ORIGIN, &signer().public_key()).unwrap()
}

/// A log being written in a directory.
pub(crate) struct TestLog {
    dir: PathBuf,
    /// The `ts` of the next records.
    pub(crate) ts: String,
    segment: u64,
    file: File,
    segment_sha: Sha256,
    segment_bytes: u64,
    segment_first: Option<u64>,
    segment_records: u64,
    next_seq: u64,
    prev: Hash,
    tree: Frontier,
}

impl TestLog {
    /// A new log in `dir` (created), starting with `audit.start`.
    pub(crate) fn new(dir: &Path) -> TestLog {
        std::fs::create_dir_all(dir).unwrap();
        let mut log = TestLog {
            dir: dir.to_owned(),
            ts: "2026-01-02T03:04:05.000000Z".to_owned(),
            segment: 1,
            file: Self::create(&dir.join(segment_name(1))),
            segment_sha: Sha256::new(),
            segment_bytes: 0,
            segment_first: None,
            segment_records: 0,
            next_seq: 0,
            prev: [0; 32],
            tree: Frontier::new(),
        };
        log.append(AuditStart {
            pid: 1,
            version: "0.1.0".to_owned(),
            checkpoint_key: vkey().to_string(),
        });
        log
    }

    fn create(path: &Path) -> File {
        OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .unwrap()
    }

    /// The path of segment `n`.
    pub(crate) fn segment(&self, n: u64) -> PathBuf {
        self.dir.join(segment_name(n))
    }

    /// Appends a record; returns its `seq` and leaf hash.
    pub(crate) fn append(&mut self, record: impl Into<Record>) -> (u64, Hash) {
        let record = record.into();
        let body = String::from_utf8(record.encode().unwrap()).unwrap();
        let line = format!(
            "{{\"v\":1,\"seq\":{},\"ts\":\"{}\",\"type\":\"{}\"{body},\"prev\":\"{}\"}}",
            self.next_seq,
            self.ts,
            record.kind(),
            hex::encode(self.prev)
        );
        let leaf = merkle::leaf_hash(line.as_bytes());
        let bytes = format!("{line}\n");
        self.file.write_all(bytes.as_bytes()).unwrap();
        self.segment_sha.update(bytes.as_bytes());
        self.segment_bytes += bytes.len() as u64;
        self.segment_first.get_or_insert(self.next_seq);
        self.segment_records += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.prev = leaf;
        self.tree.push(leaf);
        (seq, leaf)
    }

    /// Appends an `audit.checkpoint` of every record so far, signed by `signer`, and writes
    /// it to the `checkpoint` file.
    pub(crate) fn checkpoint_by(&mut self, signer: &dyn CheckpointSigner) -> String {
        let checkpoint = Checkpoint {
            origin: signer.name().to_owned(),
            size: self.next_seq,
            root: self.tree.root(),
        };
        let note = checkpoint.sign(signer).unwrap();
        self.append(AuditCheckpoint {
            size: checkpoint.size,
            root: hex::encode(checkpoint.root),
            note: note.clone(),
        });
        std::fs::write(self.dir.join(CHECKPOINT_FILE), &note).unwrap();
        note
    }

    /// [`TestLog::checkpoint_by`] the log's key.
    pub(crate) fn checkpoint(&mut self) -> String {
        let signer = signer();
        self.checkpoint_by(&signer)
    }

    /// Seals the segment, opens the next one, and checkpoints.
    pub(crate) fn rotate(&mut self) {
        self.append(AuditSegmentSeal {
            segment: segment_name(self.segment),
            first_seq: self.segment_first.unwrap_or(self.next_seq),
            records: self.segment_records + 1,
        });
        let previous = segment_name(self.segment);
        let previous_sha256 = hex::encode(std::mem::take(&mut self.segment_sha).finalize());
        let previous_bytes = self.segment_bytes;
        self.segment += 1;
        self.file = Self::create(&self.segment(self.segment));
        self.segment_bytes = 0;
        self.segment_first = None;
        self.segment_records = 0;
        self.append(AuditSegmentOpen {
            segment: segment_name(self.segment),
            previous,
            previous_sha256,
            previous_bytes,
        });
        self.checkpoint();
    }
}
