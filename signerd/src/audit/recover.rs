//! Start-up: take the directory lock, read and check every segment, and recover from a crash
//! before anything new is written.
//!
//! Recovery does exactly four things, each recorded in the log: it cuts a torn tail (an
//! unterminated last line, or a last line that is not valid JSON) after saving the cut bytes
//! to `recovered/` and records their length and SHA-256 in `audit.recover`; it finishes a
//! rotation that a crash interrupted (`audit.segment_open`); and it closes every allowed
//! request that has no result with a `sign.result` of status `unknown_crash`. Everything else
//! that is wrong refuses to start: corruption followed by more data, a broken chain, a log
//! shorter than the last published checkpoint, checkpoints signed by another key.
//!
//! This module must never cut anything but the final line of the last segment, cut before
//! the cut bytes are saved and synced, or write before the whole log has been checked.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use signerd_auditor::check::{self, Checker, Expected, Position};
use signerd_auditor::events::{AuditRecover, AuditSegmentOpen, Event, Kind, Outcome, SignResult};
use signerd_auditor::layout::{
    CHECKPOINT_FILE, MAX_TORN_BYTES, RECOVERED_DIR, read_checkpoint_file, read_tail,
};
use signerd_auditor::note::{CheckpointSigner, VerifierKey};
use signerd_auditor::record::{MAX_LINE_BYTES, Record};
use signerd_auditor::segments::{self, LineReader, Next, SegmentFile};

use super::AuditError;
use super::writer::{Msg, Segment, Settings, Shared, Tail, Writer};

fn open_err(what: String) -> AuditError {
    AuditError::Open(what)
}

/// Creates the directory if missing (mode 0700) and takes its advisory lock.
pub(super) fn prepare_dir(dir: &Path) -> Result<File, AuditError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format_args!("{:o}", m.permissions().mode() & 0o777),
                    "audit directory is accessible to other users; 0700 is recommended"
                );
            }
        }
        Ok(_) => {
            return Err(open_err(format!(
                "{} exists but is not a directory",
                dir.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| open_err(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        Err(e) => return Err(open_err(format!("cannot inspect {}: {e}", dir.display()))),
    }
    // Two writers on one directory would fork the chain; an advisory lock refuses the second
    // one, in another process or in this one.
    let lock_path = dir.join("lock");
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| {
            open_err(format!(
                "cannot open lock file {}: {e}",
                lock_path.display()
            ))
        })?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(open_err(format!(
            "{} is locked: another signerd (or another audit writer in this process) has this audit log open",
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(open_err(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// What start-up cuts from the end of the log: the records after the last checkpoint, which
/// no signed tree head covers, and a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Torn {
    /// The segment it is in (always the last one).
    pub(crate) segment: SegmentFile,
    /// Where the cut starts.
    pub(crate) offset: u64,
    /// The bytes that will be cut.
    pub(crate) bytes: Vec<u8>,
    /// Complete records among them (0: only a torn write).
    pub(crate) records: u64,
}

/// The end of the records that a checkpoint covers, or that are fully determined by the log
/// before them (a segment's seal and the next segment's open, which the checks recompute).
#[derive(Debug, Clone, Copy, Default)]
struct Attested {
    /// Index of the segment.
    segment: usize,
    /// Byte offset after the last such record in it.
    offset: u64,
    /// `seq` of the next record.
    next_seq: u64,
}

/// What the start-up scan found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The segments, in order.
    pub(crate) segments: Vec<SegmentFile>,
    /// The checker's state after the last complete record.
    pub(crate) checker: Checker,
    /// Bytes of the last segment that are kept (everything before a torn tail).
    pub(crate) active_bytes: u64,
    /// SHA-256 of those bytes.
    pub(crate) active_sha: Sha256,
    /// The torn tail, if any.
    pub(crate) torn: Option<Torn>,
    /// (`records`, `sha256`) of every `audit.snapshot` record read (attested ones only: an
    /// unattested tail is read again without them).
    pub(crate) vouched: Vec<(u64, String)>,
}

/// Reads every segment of `dir` and checks it (structure, chain, checkpoints signed by `key`,
/// consistency with `DIR/checkpoint`). Read-only: it decides what recovery must do.
///
/// With `start`, the checks resume after the snapshot instead of reading the segments it
/// covers; external checkpoints smaller than the snapshot are then not checked.
pub(crate) fn scan(
    dir: &Path,
    key: &VerifierKey,
    start: Option<&super::snapshot::Snapshot>,
) -> Result<Scan, AuditError> {
    let first = scan_until(dir, key, None, start)?;
    let unattested = first.scan.checker.next_seq() - first.attested.next_seq;
    if unattested == 0 {
        return Ok(first.scan);
    }
    let last = first.scan.segments.len() - 1;
    let Some(seg) = first.scan.segments.last().cloned() else {
        return Ok(first.scan);
    };
    if first.attested.segment < last {
        return Err(open_err(format!(
            "{}: the {unattested} records from seq {} on are covered by no checkpoint, and some of them are in a sealed segment, where only a crash of a release that answered before it attested could leave them; refusing to start (fail closed)",
            dir.display(),
            first.attested.next_seq
        )));
    }
    let offset = first.attested.offset;
    let file_len = fs::metadata(&seg.path)
        .map_err(|e| open_err(format!("cannot inspect {}: {e}", seg.path.display())))?
        .len();
    // The writer attests every group someone waits for and pauses while its key cannot sign,
    // so an honest tail is far smaller; a longer one is refused rather than read into memory.
    if file_len - offset > MAX_TORN_BYTES {
        return Err(open_err(format!(
            "{}: {} bytes after byte offset {offset} hold {unattested} records that no checkpoint covers, more than the {MAX_TORN_BYTES} bytes start-up moves aside; refusing to start (fail closed)",
            seg.path.display(),
            file_len - offset
        )));
    }
    // The checks again, up to the last attested record: the state the log continues from.
    let mut again = scan_until(dir, key, Some(offset), start)?.scan;
    again.torn = Some(Torn {
        bytes: tail_bytes(&seg.path, offset)?,
        segment: seg,
        offset,
        records: unattested,
    });
    Ok(again)
}

/// A scan, and where its attested records end.
struct Scanned {
    scan: Scan,
    attested: Attested,
}

/// [`scan`], reading the last segment only up to byte `limit` when given.
fn scan_until(
    dir: &Path,
    key: &VerifierKey,
    limit: Option<u64>,
    start: Option<&super::snapshot::Snapshot>,
) -> Result<Scanned, AuditError> {
    let mut expected = Vec::new();
    if let Some((_, checkpoint)) = read_checkpoint_file(dir, Some(key)).map_err(open_err)? {
        expected.push(Expected {
            label: format!("the checkpoint in {}", dir.join(CHECKPOINT_FILE).display()),
            checkpoint,
        });
    }
    for (name, checkpoint) in
        signerd_auditor::layout::read_cosigned_checkpoints(dir, key).map_err(open_err)?
    {
        expected.push(Expected {
            label: format!("the checkpoint a witness cosigned (cosignatures/{name})"),
            checkpoint,
        });
    }
    let segments = segments::list(dir).map_err(open_err)?;
    let opts = check::Options {
        key: Some(key.clone()),
        strict_semantics: false,
        expected,
        verified_below: 0,
    };
    let (mut checker, skip) = match start {
        Some(s) => (
            Checker::resume(opts, s.checker.clone())
                .map_err(|e| open_err(format!("snapshot of {} records: {e}", s.records)))?,
            s.segment,
        ),
        None => (Checker::new(opts), 0),
    };
    let mut vouched = Vec::new();
    let refuse = |f: check::Failure| {
        open_err(format!(
            "{} {f}; refusing to start (fail closed)",
            dir.display()
        ))
    };
    let mut torn = None;
    let mut active_bytes = 0;
    let mut active_sha = Sha256::new();
    // After a snapshot, everything it covers is attested (a segment is sealed only once a
    // checkpoint covers it).
    let mut attested = Attested {
        segment: segments
            .iter()
            .take_while(|s| s.no <= skip)
            .count()
            .saturating_sub(1),
        offset: 0,
        next_seq: checker.next_seq() - checker.unattested(),
    };
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if seg.no <= skip {
            if last {
                return Err(open_err(format!(
                    "{}: the log ends within the snapshot of {} records",
                    dir.display(),
                    checker.next_seq()
                )));
            }
            continue;
        }
        let limit = limit.filter(|_| last);
        checker.begin_segment(seg.no, &seg.name).map_err(refuse)?;
        let file_len = fs::metadata(&seg.path)
            .map_err(|e| open_err(format!("cannot inspect {}: {e}", seg.path.display())))?
            .len();
        let mut reader = LineReader::open(&seg.path).map_err(open_err)?;
        let mut sha = Sha256::new();
        let mut kept = 0u64;
        loop {
            let next = reader
                .next_line()
                .map_err(|e| open_err(format!("cannot read {}: {e}", seg.path.display())))?;
            match next {
                Next::Eof => break,
                Next::TooLong { offset, .. } | Next::Line { offset, .. }
                    if limit.is_some_and(|l| offset >= l) =>
                {
                    break;
                }
                Next::TooLong { lineno, offset } => {
                    if last {
                        let rest = tail_bytes(&seg.path, offset)?;
                        if !rest.contains(&b'\n') {
                            torn = Some(Torn {
                                segment: seg.clone(),
                                offset,
                                bytes: rest,
                                records: 0,
                            });
                            break;
                        }
                    }
                    return Err(open_err(format!(
                        "{} line {lineno} (byte offset {offset}) is longer than {MAX_LINE_BYTES} bytes; refusing to start (fail closed)",
                        seg.path.display()
                    )));
                }
                Next::Line {
                    bytes,
                    lineno,
                    offset,
                    terminated,
                } => {
                    let end = offset + bytes.len() as u64 + u64::from(terminated);
                    if !terminated {
                        if !last {
                            return Err(open_err(format!(
                                "{} ends with an unterminated line at byte offset {offset} (line {lineno}), but it is not the last segment; refusing to start (fail closed)",
                                seg.path.display()
                            )));
                        }
                        torn = Some(Torn {
                            segment: seg.clone(),
                            offset,
                            bytes: bytes.to_vec(),
                            records: 0,
                        });
                        break;
                    }
                    let pos = Position {
                        segment: seg.name.clone(),
                        lineno,
                        offset,
                    };
                    match checker.record(&pos, bytes) {
                        Ok(_) => {
                            sha.update(bytes);
                            sha.update(b"\n");
                            kept = end;
                            let seq = checker.next_seq() - 1;
                            let kind = checker.last_kind().and_then(Kind::parse);
                            if kind == Some(Kind::AuditSnapshot)
                                && let Ok(v) = signerd_auditor::events::read::<
                                    signerd_auditor::events::AuditSnapshot,
                                >(bytes)
                            {
                                vouched.push((v.records, v.sha256));
                            }
                            let covered = match kind {
                                Some(Kind::AuditCheckpoint) => true,
                                Some(Kind::AuditSegmentSeal | Kind::AuditSegmentOpen) => {
                                    attested.next_seq == seq
                                }
                                _ => false,
                            };
                            if covered {
                                attested = Attested {
                                    segment: i,
                                    offset: end,
                                    next_seq: seq + 1,
                                };
                            }
                        }
                        Err(f) if f.syntax && last && end == file_len => {
                            // The final line is not a record: a write that stopped part-way
                            // (a crash can leave zeros or a prefix that still ends in \n).
                            let mut cut = bytes.to_vec();
                            cut.push(b'\n');
                            torn = Some(Torn {
                                segment: seg.clone(),
                                offset,
                                bytes: cut,
                                records: 0,
                            });
                            break;
                        }
                        Err(f) if f.syntax && end < file_len => {
                            return Err(open_err(format!(
                                "{} {f}; {} more bytes follow it, so this is corruption, not a torn write; refusing to start (fail closed)",
                                dir.display(),
                                file_len - end
                            )));
                        }
                        Err(f) => return Err(refuse(f)),
                    }
                }
            }
        }
        if last {
            active_bytes = kept;
            active_sha = sha.clone();
        }
        checker.end_segment(sha.finalize().into(), kept);
    }
    if let Some(t) = &torn
        && t.bytes.len() as u64 > MAX_TORN_BYTES
    {
        return Err(open_err(format!(
            "{}: {} bytes after byte offset {} are not records, more than a torn write leaves; refusing to start (fail closed)",
            t.segment.path.display(),
            t.bytes.len(),
            t.offset
        )));
    }
    checker.finish().map_err(refuse)?;
    Ok(Scanned {
        scan: Scan {
            segments,
            checker,
            active_bytes,
            active_sha,
            torn,
            vouched,
        },
        attested,
    })
}

fn tail_bytes(path: &Path, offset: u64) -> Result<Vec<u8>, AuditError> {
    read_tail(path, offset).map_err(|e| open_err(format!("cannot read {}: {e}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| open_err(format!("cannot sync directory {}: {e}", dir.display())))
}

/// `20250102T030405.123456Z`: an RFC 3339 time usable in a file name.
fn compact_ts(now: SystemTime) -> String {
    humantime::format_rfc3339_micros(now)
        .to_string()
        .replace(['-', ':'], "")
}

/// Saves the torn bytes to `recovered/torn-<seq>-<ts>.bin` (synced), then cuts them from the
/// segment (synced). Returns the saved file's name relative to the log directory.
fn cut_torn_tail(dir: &Path, torn: &Torn, seq: u64) -> Result<String, AuditError> {
    let recovered = dir.join(RECOVERED_DIR);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&recovered)
        .map_err(|e| open_err(format!("cannot create {}: {e}", recovered.display())))?;
    let what = if torn.records > 0 {
        "unattested"
    } else {
        "torn"
    };
    let name = format!("{what}-{seq}-{}.bin", compact_ts(SystemTime::now()));
    let path = recovered.join(&name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)
        .map_err(|e| open_err(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(&torn.bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| open_err(format!("cannot write {}: {e}", path.display())))?;
    sync_dir(&recovered)?;
    sync_dir(dir)?;
    let seg = OpenOptions::new()
        .write(true)
        .open(&torn.segment.path)
        .map_err(|e| open_err(format!("cannot open {}: {e}", torn.segment.path.display())))?;
    seg.set_len(torn.offset)
        .and_then(|()| seg.sync_all())
        .map_err(|e| {
            open_err(format!(
                "cannot cut the torn tail of {} at byte offset {}: {e}",
                torn.segment.path.display(),
                torn.offset
            ))
        })?;
    tracing::warn!(
        segment = %torn.segment.path.display(),
        offset = torn.offset,
        bytes = torn.bytes.len(),
        records = torn.records,
        saved_as = %path.display(),
        "moved aside the end of the log that no checkpoint covers (left by a crash, or written by someone else)"
    );
    Ok(format!("{RECOVERED_DIR}/{name}"))
}

/// What [`apply`] prepared: a writer positioned at the end of the log, the records recovery
/// must write before `audit.start`, and whether a checkpoint must be written after the first
/// `n` of them (`Some(n)`): a rotation's `audit.segment_open` is always followed by a
/// checkpoint, whether recovery writes it (`n` = 1) or finds it last on disk (`n` = 0).
pub(super) struct Recovery {
    pub(super) writer: Writer,
    pub(super) records: Vec<Msg>,
    pub(super) checkpoint_after: Option<usize>,
}

fn msg(event: &impl Event) -> Result<Msg, AuditError> {
    Msg::internal(&Record::from_event(event)).map_err(open_err)
}

/// Acts on a scan: cuts the torn tail, opens (or creates) the segment to append to, and lists
/// the recovery records. Nothing is appended yet.
pub(super) fn apply(
    dir: &Path,
    scan: Scan,
    lock: File,
    signer: Arc<dyn CheckpointSigner>,
    settings: Settings,
    shared: Arc<Shared>,
) -> Result<Recovery, AuditError> {
    let Scan {
        segments,
        checker,
        active_bytes,
        active_sha,
        torn,
        vouched: _,
    } = scan;
    let mut records = Vec::new();
    let mut checkpoint_after = None;
    let tail = Tail {
        next_seq: checker.next_seq(),
        prev: checker.prev(),
        tree: checker.tree().clone(),
    };
    let last_checkpoint_seq = checker.last_checkpoint().map(|c| c.seq);

    let saved_as = match &torn {
        Some(t) => Some(cut_torn_tail(dir, t, checker.next_seq())?),
        None => None,
    };

    let Some(last) = segments.last() else {
        // A new log.
        let path = dir.join(segments::segment_name(1));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| open_err(format!("cannot create {}: {e}", path.display())))?;
        sync_dir(dir)?;
        let seg = Segment {
            no: 1,
            path,
            file,
            bytes: 0,
            sha: Sha256::new(),
            first_seq: None,
            records: 0,
            started: None,
            content: false,
        };
        let writer = Writer::new(
            Some(dir.to_owned()),
            seg,
            tail,
            last_checkpoint_seq,
            signer,
            settings,
            Some(lock),
            shared,
        )?;
        return Ok(Recovery {
            writer,
            records,
            checkpoint_after,
        });
    };

    let state = checker.segment().cloned();
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&last.path)
        .or_else(|e| match state {
            // A sealed segment is read-only; it is only renamed into history, never written.
            None => File::open(&last.path),
            Some(_) => Err(e),
        })
        .map_err(|e| open_err(format!("cannot open {}: {e}", last.path.display())))?;
    let seg = Segment {
        no: last.no,
        path: last.path.clone(),
        file,
        bytes: active_bytes,
        sha: active_sha,
        first_seq: state.as_ref().and_then(|s| s.first_seq),
        records: state.as_ref().map_or(0, |s| s.records),
        started: state
            .as_ref()
            .and_then(|s| s.first_ts.as_deref())
            .and_then(signerd_auditor::rfc3339::parse),
        content: state.as_ref().is_some_and(|s| s.content),
    };
    let mut writer = Writer::new(
        Some(dir.to_owned()),
        seg,
        tail,
        last_checkpoint_seq,
        signer,
        settings,
        Some(lock),
        shared,
    )?;
    match &state {
        None => {
            // The last segment ends with its seal: a crash interrupted the rotation.
            records.push(writer.open_next_segment().map_err(open_err)?);
            checkpoint_after = Some(1);
        }
        Some(s) if s.records == 0 && s.no > 1 => {
            // The next segment was created (or its first record was torn) but has no
            // audit.segment_open yet.
            let Some(prev) = checker.sealed() else {
                return Err(open_err(format!(
                    "{} is empty and no sealed segment precedes it",
                    last.path.display()
                )));
            };
            records.push(msg(&AuditSegmentOpen {
                segment: s.name.clone(),
                previous: prev.name.clone(),
                previous_sha256: hex::encode(prev.sha256),
                previous_bytes: prev.bytes,
            })?);
            checkpoint_after = Some(1);
        }
        Some(_) if checker.last_kind().and_then(Kind::parse) == Some(Kind::AuditSegmentOpen) => {
            // The rotation wrote audit.segment_open and stopped before its checkpoint.
            checkpoint_after = Some(0);
        }
        Some(_) => {}
    }
    if let (Some(t), Some(saved_as)) = (&torn, saved_as) {
        let mut sha = Sha256::new();
        sha.update(&t.bytes);
        records.push(msg(&AuditRecover {
            segment: t.segment.name.clone(),
            offset: t.offset,
            bytes: t.bytes.len() as u64,
            sha256: hex::encode(sha.finalize()),
            saved_as,
            unattested_records: t.records,
        })?);
    }
    for open in checker.open_allows() {
        // Every request open_allows returns has its allowing decision.
        let Some((_, decision_seq)) = open.decision else {
            continue;
        };
        records.push(msg(&SignResult {
            req_id: open.req_id,
            client: open.client,
            outcome: Outcome::UnknownCrash {
                decision_seq,
                message: "signerd stopped after this request was allowed and before its result was durable; \
                          no signature was returned to the client, but one may have been made"
                    .to_owned(),
            },
        })?);
    }
    Ok(Recovery {
        writer,
        records,
        checkpoint_after,
    })
}
