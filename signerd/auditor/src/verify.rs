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
    /// The log is being written: records after the last checkpoint are reported, not a
    /// failure. Without it they fail the verification: no signed tree head covers them, so
    /// anyone with the disk could have written them.
    pub live: bool,
    /// `(label, note text)`: a checkpoint of this log that the auditor verified before. The
    /// log must still contain its tree (which is what a consistency proof shows), and only the
    /// records from its size on are checked in full.
    pub since: Option<(String, String)>,
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
    /// With `--since`: records before this `seq` were only hashed into the chain and the tree
    /// (shown consistent with the checkpoint verified before), not checked again.
    pub verified_from: u64,
}

/// Verifies the log in `dir`.
pub fn verify_dir(dir: &Path, opts: &VerifyOptions) -> Result<Report, Failure> {
    verify_dir_observed(dir, opts, &mut |_, _, _| Ok(()))
}

/// What [`verify_dir_observed`] calls with each record once the checker has accepted it: the
/// checker (which now includes the record), where the record is, and its line.
pub(crate) type Observer<'a> = dyn FnMut(&Checker, &Position, &[u8]) -> Result<(), Failure> + 'a;

/// Verifies the log in `dir` as [`verify_dir`] does, showing every accepted record to
/// `observe`, which may fail the verification at that record.
pub(crate) fn verify_dir_observed(
    dir: &Path,
    opts: &VerifyOptions,
    observe: &mut Observer<'_>,
) -> Result<Report, Failure> {
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
    let mut verified_below = 0;
    if let Some((label, text)) = &opts.since {
        let checkpoint = match &opts.key {
            Some(key) => note::verify_note(text, key),
            None => note::parse_note(text).map(|(c, _)| c),
        }
        .map_err(|e| Failure::general(format!("{label}: {e}")))?;
        verified_below = checkpoint.size;
        expected.push(Expected {
            label: label.clone(),
            checkpoint,
        });
    }
    let mut checker = Checker::new(check::Options {
        key: opts.key.clone(),
        strict_semantics: true,
        expected,
        verified_below,
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
                    observe(&checker, &pos, bytes)?;
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
        // Recovery saves cut bytes as `recovered/torn-<seq>-<time>.bin` (a torn write) or
        // `recovered/unattested-<seq>-<time>.bin` (records no checkpoint covered), never more than it may
        // cut: anything else is not its record, and must not make this tool read outside the
        // directory or without bound.
        let name = saved_as
            .strip_prefix("recovered/torn-")
            .or_else(|| saved_as.strip_prefix("recovered/unattested-"))
            .unwrap_or("");
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
    let unattested = checker.unattested();
    if unattested > 0 && !opts.live {
        return Err(Failure::general(format!(
            "the last {unattested} record(s), from seq {}, are covered by no checkpoint: anyone with the disk could have written them (signerd answers nothing before a checkpoint covers it, and moves such records aside at its next start); pass --live to verify a log that is being written",
            checker.next_seq() - unattested
        )));
    }
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
        verified_from: verified_below,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::Record;
    use crate::events::{ApprovalVote, AuditCheckpoint, AuditStop, Vote};
    use crate::merkle::leaf_hash;
    use crate::note::MemorySigner;
    use crate::testlog::{ORIGIN, TestLog, vkey};

    fn with_key() -> VerifyOptions {
        VerifyOptions {
            key: Some(vkey()),
            checkpoints: Vec::new(),
            live: false,
            since: None,
        }
    }

    fn verify(dir: &Path) -> Report {
        verify_dir(dir, &with_key()).unwrap_or_else(|f| panic!("verify {}: {f}", dir.display()))
    }

    fn verify_err(dir: &Path) -> String {
        match verify_dir(dir, &with_key()) {
            Ok(r) => panic!("verify passed: {r:?}"),
            Err(f) => f.to_string(),
        }
    }

    fn lines(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).unwrap();
        bytes
            .strip_suffix(b"\n")
            .unwrap()
            .split(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| [&l[..], b"\n"].concat())
            .collect()
    }

    /// Lines: 0 start, 1-4 `x.n` 0-3, 5 checkpoint, 6-9 `x.n` 4-7, 10 checkpoint,
    /// 11-12 `x.n` 8-9, 13 stop, 14 checkpoint (also in the checkpoint file).
    fn ten_records(dir: &Path) -> TestLog {
        let mut log = TestLog::new(dir);
        for i in 0..10u32 {
            log.append(Record::new("x.n").field("i", i));
            if i % 4 == 3 {
                log.checkpoint();
            }
        }
        log.append(AuditStop {});
        log.checkpoint();
        log
    }

    #[test]
    fn detects_every_kind_of_tampering() {
        let tmp = tempfile::tempdir().unwrap();
        let log = ten_records(tmp.path());
        let r = verify(tmp.path());
        assert_eq!(r.stats.records, 15);
        assert_eq!(r.stats.checkpoints, 3);
        assert_eq!(r.unattested, 0);
        let seg = log.segment(1);
        let original = std::fs::read(&seg).unwrap();
        let l = lines(&seg);
        let write = |lines: &[Vec<u8>]| std::fs::write(&seg, join(lines)).unwrap();
        let value_at = |line: &[u8]| line.windows(4).position(|w| w == b"\"i\":").unwrap() + 4;

        // A changed byte: the next record's prev catches it.
        let mut t = l.clone();
        let pos = value_at(&t[3]);
        t[3][pos] = b'7';
        write(&t);
        let e = verify_err(tmp.path());
        assert!(e.contains(":5 (seq 4): prev is"), "{e}");
        // Deleted, reordered, inserted.
        let mut t = l.clone();
        t.remove(5);
        write(&t);
        assert!(verify_err(tmp.path()).contains("seq is 6, expected 5"));
        let mut t = l.clone();
        t.swap(5, 6);
        write(&t);
        assert!(verify_err(tmp.path()).contains("seq is 6, expected 5"));
        let mut t = l.clone();
        t.insert(5, l[5].clone());
        write(&t);
        assert!(verify_err(tmp.path()).contains("seq is 5, expected 6"));
        // Rewritten with a consistent chain: only the checkpoints catch it.
        let mut t = l.clone();
        let pos = value_at(&t[2]);
        t[2][pos] = b'8';
        let mut prev = leaf_hash(&t[2]);
        for line in t.iter_mut().skip(3) {
            let s = String::from_utf8(line.clone()).unwrap();
            let cut = s.rfind(",\"prev\":\"").unwrap();
            *line = format!("{},\"prev\":\"{}\"}}", &s[..cut], hex::encode(prev)).into_bytes();
            prev = leaf_hash(line);
        }
        write(&t);
        let e = verify_err(tmp.path());
        assert!(
            e.contains(":6 (seq 5): audit.checkpoint has root")
                && e.contains("records before this checkpoint were changed"),
            "{e}"
        );
        // A checkpoint replaced by one signed with another key.
        let text = String::from_utf8(l[5].clone()).unwrap();
        let record: AuditCheckpoint = crate::events::read(&l[5]).unwrap();
        let note = record.note.as_str();
        let cp = note::parse_note(note).unwrap().0;
        let forged = cp.sign(&MemorySigner::from_seed(ORIGIN, [9; 32])).unwrap();
        let mut t = l.clone();
        t[5] = text
            .replace(
                &serde_json::to_string(note).unwrap(),
                &serde_json::to_string(&forged).unwrap(),
            )
            .into_bytes();
        write(&t);
        let e = verify_err(tmp.path());
        assert!(e.contains(":6 (seq 5): checkpoint signature: "), "{e}");
        // Without the key, the forged checkpoint still breaks the chain at the next record.
        let e = match verify_dir(tmp.path(), &VerifyOptions::default()) {
            Ok(r) => panic!("{r:?}"),
            Err(f) => f.to_string(),
        };
        assert!(e.contains(":7 (seq 6): prev is"), "{e}");
        // Truncated (whole lines): the checkpoint file still covers more.
        write(&l[..l.len() - 2]);
        assert!(verify_err(tmp.path()).contains("records at the end were removed"));
        // An older or forged checkpoint file.
        std::fs::write(&seg, &original).unwrap();
        let cp_file = tmp.path().join("checkpoint");
        let saved = std::fs::read(&cp_file).unwrap();
        std::fs::write(&cp_file, &forged).unwrap();
        let e = verify_err(tmp.path());
        assert!(
            e.contains("/checkpoint: the note has no signature by"),
            "{e}"
        );
        // A checkpoint kept elsewhere that the log no longer has.
        std::fs::write(&cp_file, &saved).unwrap();
        let kept = VerifyOptions {
            checkpoints: vec![("kept".to_owned(), String::from_utf8(saved).unwrap())],
            ..with_key()
        };
        assert_eq!(
            verify_dir(tmp.path(), &kept).unwrap().external_checkpoints,
            1
        );
        std::fs::remove_file(&cp_file).unwrap();
        write(&l[..l.len() - 2]);
        let e = verify_dir(tmp.path(), &kept).unwrap_err().to_string();
        assert!(e.contains("but kept covers 14"), "{e}");
    }

    /// A log with one `approval.grant` whose signature is made over `signed_expires` while
    /// the record says `expires = 100`.
    fn grant_log(dir: &Path, signed_expires: i64) {
        use ed25519_dalek::Signer as _;
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let fp = "ab".repeat(32);
        let msg = crate::approval::message("app", "r1", &fp, Vote::Approve, signed_expires);
        let mut log = TestLog::new(dir);
        log.append(ApprovalVote {
            req_id: "r1".to_owned(),
            client: "app".to_owned(),
            approver: "bob".to_owned(),
            cert_sha256: "cd".repeat(32),
            fingerprint: fp,
            decision: Vote::Approve,
            expires: 100,
            public_key: hex::encode(key.verifying_key().to_bytes()),
            signature: hex::encode(key.sign(&msg).to_bytes()),
            reason: None,
            policy_hash: "ef".repeat(32),
        });
        log.checkpoint();
    }

    #[test]
    fn checks_every_approval_signature() {
        let good = tempfile::tempdir().unwrap();
        grant_log(good.path(), 100);
        verify(good.path());
        // A record whose signed expiry was changed (or a forged grant) fails verification even
        // though its chain and checkpoints are intact.
        let bad = tempfile::tempdir().unwrap();
        grant_log(bad.path(), 101);
        let e = verify_err(bad.path());
        assert!(
            e.contains("approval.grant for req_id \"r1\"") && e.contains("does not verify"),
            "{e}"
        );
    }

    /// The example log that a real daemon wrote (`docs/audit-example`) verifies with its key.
    #[test]
    fn the_example_log_verifies() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit-example");
        let vkey = std::fs::read_to_string(example.join("vkey")).unwrap();
        let opts = VerifyOptions {
            key: Some(VerifierKey::parse(&vkey).unwrap()),
            checkpoints: Vec::new(),
            live: false,
            since: None,
        };
        let r = verify_dir(&example.join("audit"), &opts).unwrap();
        assert_eq!(r.stats.records, 83);
        assert_eq!(r.segments.len(), 3);
        assert_eq!(r.stats.recoveries, 1);
        assert!(r.checkpoint_file);
        assert_eq!(r.unattested, 0);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    /// A signed result must name the pin of its own key: a pin of another key, or a seq that
    /// holds no pin, fails.
    #[test]
    fn a_result_names_the_pin_of_the_key_that_signed() {
        use crate::events::{
            Decision, KeyChecked, KeyPin, Method, Outcome, SignDecision, SignRequest, SignResult,
            Signature,
        };
        let run = |pin_of: &dyn Fn(u64, u64) -> u64| -> Result<Report, Failure> {
            let tmp = tempfile::tempdir().unwrap();
            let mut log = TestLog::new(tmp.path());
            let mut pins = Vec::new();
            for key in ["hot", "cold"] {
                let (seq, _) = log.append(KeyPin {
                    key: key.to_owned(),
                    version: None,
                    algorithm: "ed25519".to_owned(),
                    backend: "soft".to_owned(),
                    public_key: format!("0x{}", "11".repeat(32)),
                    checked: KeyChecked::default(),
                    weak: Vec::new(),
                });
                pins.push(seq);
            }
            log.append(SignRequest {
                req_id: Some("r1".to_owned()),
                method: Method::SignDigest,
                client: "app".to_owned(),
                cert_sha256: "ab".repeat(32),
                key: Some("hot".to_owned()),
                fingerprint: Some("cd".repeat(32)),
            });
            log.append(SignDecision {
                req_id: "r1".to_owned(),
                client: Some("app".to_owned()),
                decision: Decision::Allow,
                rules: vec!["r".to_owned()],
                reason: None,
                policy_serial: 1,
                policy_hash: "ef".repeat(32),
                action: serde_json::json!({}),
                charges: Vec::new(),
                approved_by: None,
                roles: Some(Vec::new()),
            });
            log.append(SignResult {
                req_id: Some("r1".to_owned()),
                client: Some("app".to_owned()),
                outcome: Outcome::Signed {
                    signing_hash: format!("0x{}", "22".repeat(32)),
                    tx_hash: None,
                    raw_tx: None,
                    signature: Signature {
                        bytes: format!("0x{}", "33".repeat(64)),
                        r: "0x".to_owned(),
                        s: "0x".to_owned(),
                        v: 0,
                    },
                    key_version: None,
                    pin: Some(pin_of(pins[0], pins[1])),
                },
            });
            log.append(AuditStop {});
            log.checkpoint();
            verify_dir(tmp.path(), &with_key())
        };
        run(&|hot, _| hot).unwrap();
        let err = run(&|_, cold| cold).unwrap_err().to_string();
        assert!(err.contains("which pins key \"cold\""), "{err}");
        let err = run(&|_, _| 3).unwrap_err().to_string();
        assert!(err.contains("no key.pin record is there"), "{err}");
    }
}
