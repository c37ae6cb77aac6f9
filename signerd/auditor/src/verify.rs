//! `signerctl audit verify`: the full verification procedure of `docs/audit-log.md` over a
//! log directory, stopping at the first failure and naming its record.
//!
//! It checks every line's envelope, the sequence, the hash chain, segment chaining, the tree
//! head against every checkpoint (and against `DIR/checkpoint` and any checkpoints kept
//! elsewhere), checkpoint signatures when a verifier key is given, and the pairing of requests
//! with decisions and results. It must never report success after skipping a record, and never
//! say signatures were checked when no key was given.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::check::{self, Checker, Expected, Failure, Position, Stats};
use crate::layout;
use crate::note::{self, VerifierKey};
use crate::segments::{self, LineReader, Next};

/// What to verify against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Check every checkpoint signature with this key.
    pub key: Option<VerifierKey>,
    /// Checkpoints kept elsewhere (label, note text), e.g. shipped off the host earlier: the
    /// log must contain each one's tree.
    pub checkpoints: Vec<(String, String)>,
}

/// The last checkpoint in the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointInfo {
    /// `seq` of the `audit.checkpoint` record, which is also the number of records covered.
    pub seq: u64,
    /// Root hash, hex.
    pub root: String,
    /// The note text.
    pub note: String,
}

/// An allowed request that has no result yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pending {
    /// Its `req_id`.
    pub req_id: Option<String>,
    /// `seq` of its `sign.decision`.
    pub decision_seq: u64,
}

/// The result of a successful verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The segment files, in order.
    pub segments: Vec<String>,
    /// Counts.
    pub stats: Stats,
    /// `seq` of the last record.
    pub last_seq: Option<u64>,
    /// The checkpoints' origin.
    pub origin: Option<String>,
    /// The last checkpoint.
    pub last_checkpoint: Option<CheckpointInfo>,
    /// The verifier key that checked every checkpoint signature, or `None` if signatures were
    /// not checked.
    pub signatures_checked_with: Option<String>,
    /// Records after the last checkpoint record: not yet covered by a signed tree head.
    pub unattested: u64,
    /// Whether `DIR/checkpoint` was present (and matched the log).
    pub checkpoint_file: bool,
    /// Checkpoints kept elsewhere that matched.
    pub external_checkpoints: usize,
    /// Allowed requests at the end of the log without a result (in flight while the log was
    /// read, or the daemon stopped; the next start records `unknown_crash` for them).
    pub pending: Vec<Pending>,
    /// Things worth knowing that are not failures.
    pub warnings: Vec<String>,
}

/// Verifies the log in `dir`.
pub fn verify_dir(dir: &Path, opts: &VerifyOptions) -> Result<Report, Failure> {
    let segs = segments::list(dir).map_err(Failure::general)?;
    if segs.is_empty() {
        return Err(Failure::general(format!(
            "{} holds no segment-NNNNNNNN.jsonl files",
            dir.display()
        )));
    }
    let mut expected = Vec::new();
    let file = layout::read_checkpoint_file(dir, opts.key.as_ref()).map_err(Failure::general)?;
    let checkpoint_file = file.is_some();
    if let Some((_, checkpoint)) = file {
        expected.push(Expected {
            label: "the checkpoint file".to_owned(),
            checkpoint,
        });
    }
    for (label, text) in &opts.checkpoints {
        let checkpoint = match &opts.key {
            Some(key) => note::verify_note(text, key),
            None => note::parse_note(text).map(|(c, _)| c),
        }
        .map_err(|e| Failure::general(format!("{label}: {e}")))?;
        expected.push(Expected {
            label: label.clone(),
            checkpoint,
        });
    }
    let external_checkpoints = opts.checkpoints.len();
    let mut checker = Checker::new(check::Options {
        key: opts.key.clone(),
        strict_semantics: true,
        expected,
    });
    let mut warnings = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        checker.begin_segment(seg.no, &seg.name)?;
        let mut reader = LineReader::open(&seg.path).map_err(Failure::general)?;
        let mut sha = Sha256::new();
        loop {
            let next = reader.next_line().map_err(|e| {
                Failure::general(format!("cannot read {}: {e}", seg.path.display()))
            })?;
            match next {
                Next::Eof => break,
                Next::TooLong { lineno, offset } => {
                    // Like a short one, a long unterminated tail of the last segment is a torn
                    // write that start-up recovery cuts (up to its cap), not a bad record.
                    if last
                        && let Ok(rest) = crate::layout::read_tail(&seg.path, offset)
                        && rest.len() as u64 <= crate::layout::MAX_TORN_BYTES
                        && !rest.contains(&b'\n')
                    {
                        warnings.push(format!(
                            "{}:{lineno}: the last {} bytes (from byte offset {offset}) are an incomplete line and were not verified: a torn write that signerd cuts and records (audit.recover) at its next start",
                            seg.name,
                            rest.len()
                        ));
                        break;
                    }
                    return Err(Failure::general(format!(
                        "{}:{lineno} (byte offset {offset}) is longer than {} bytes: not a record",
                        seg.name,
                        crate::MAX_LINE_BYTES
                    )));
                }
                Next::Line {
                    bytes,
                    lineno,
                    offset,
                    terminated,
                } => {
                    let pos = Position {
                        segment: seg.name.clone(),
                        lineno,
                        offset,
                    };
                    if !terminated {
                        if last {
                            warnings.push(format!(
                                "{}:{lineno}: the last {} bytes (from byte offset {offset}) are an incomplete line and were not verified: a write in progress, or a torn write that signerd cuts and records (audit.recover) at its next start",
                                seg.name,
                                bytes.len()
                            ));
                            break;
                        }
                        return Err(Failure::at(
                            &pos,
                            Some(checker.next_seq()),
                            "incomplete line at the end of a segment that is not the last one",
                        ));
                    }
                    checker.record(&pos, bytes)?;
                    sha.update(bytes);
                    sha.update(b"\n");
                }
            }
        }
        checker.end_segment(sha.finalize().into(), reader.offset());
    }
    checker.finish()?;
    if checker.segment().is_none() {
        warnings.push(
            "the last segment is sealed but the next one does not exist yet: a rotation was interrupted; signerd finishes it at its next start"
                .to_owned(),
        );
    }
    for crate::check::Recovered {
        saved_as,
        sha256,
        bytes,
    } in checker.recovered()
    {
        // Recovery saves cut bytes as `recovered/torn-<seq>-<time>.bin`, never more than it may
        // cut: anything else is not its record, and must not make this tool read outside the
        // directory or without bound.
        let name = saved_as.strip_prefix("recovered/torn-").unwrap_or("");
        // No `/` is allowed, so the name cannot leave `recovered/`.
        if !name.ends_with(".bin")
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            || *bytes > crate::layout::MAX_TORN_BYTES
        {
            return Err(Failure::general(format!(
                "an audit.recover record names {saved_as:?} and {bytes} bytes; recovery saves at most {} bytes as recovered/torn-<seq>-<time>.bin",
                crate::layout::MAX_TORN_BYTES
            )));
        }
        match crate::segments::open_regular(&dir.join(saved_as)) {
            Ok(f) => {
                let mut data = Vec::new();
                f.take(*bytes + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| Failure::general(format!("cannot read {saved_as}: {e}")))?;
                if data.len() as u64 != *bytes || hex::encode(Sha256::digest(&data)) != *sha256 {
                    return Err(Failure::general(format!(
                        "{saved_as} does not match its audit.recover record ({bytes} bytes, SHA-256 {sha256})"
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => warnings.push(format!(
                "{saved_as} (cut by recovery) is not in the directory; its length and SHA-256 are in the audit.recover record"
            )),
            Err(e) => {
                return Err(Failure::general(format!("cannot read {saved_as}: {e}")));
            }
        }
    }
    let last_checkpoint = checker.last_checkpoint().map(|c| CheckpointInfo {
        seq: c.seq,
        root: hex::encode(c.root),
        note: c.note.clone(),
    });
    let unattested = checker.next_seq() - checker.last_checkpoint().map_or(0, |c| c.seq + 1);
    let pending = checker
        .open_allows()
        .into_iter()
        .map(|r| Pending {
            req_id: r.req_id,
            decision_seq: r.decision.map_or(0, |(_, s)| s),
        })
        .collect();
    Ok(Report {
        segments: segs.into_iter().map(|s| s.name).collect(),
        last_seq: checker.next_seq().checked_sub(1),
        origin: checker.origin().map(str::to_owned),
        last_checkpoint,
        signatures_checked_with: opts.key.as_ref().map(ToString::to_string),
        unattested,
        checkpoint_file,
        external_checkpoints,
        pending,
        warnings,
        stats: checker.stats().clone(),
    })
}
