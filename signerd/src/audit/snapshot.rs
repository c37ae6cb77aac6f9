//! Snapshots of the state derived from the audit log, taken at segment seals, so that start-up
//! reads the newest snapshot the log vouches for plus the records after it, instead of the
//! whole log (`docs/audit-log.md`, "Snapshots of derived state").
//!
//! What start-up derives from the log is one value, [`Derived`]: the checker's resume state
//! (sequence, chain head, tree frontier, segment chaining, last checkpoint, requests without a
//! result, key pins) and the [`Ledger`] (spend within the longest window, requests waiting for
//! approval with their charges, policy serial and hash, address-book first loads, key pins,
//! record count). A full read, the snapshot builder and the read after a snapshot all apply
//! the same lines through [`Derived::apply`] (start-up's recovery scan and reconciliation
//! drive its two halves, `Checker::record` and `Ledger::apply`, themselves).
//!
//! A snapshot file is `snapshots/snapshot-<records>.json` (mode 0600, written to a temporary
//! file, synced, renamed, directory synced). The builder ([`spawn_builder`]) runs after each
//! seal, from the previous snapshot plus the sealed segments after it, and appends an
//! `audit.snapshot` record naming the file's SHA-256 once the file is durable. This module must
//! never let start-up use a snapshot that no `audit.snapshot` record after its position names
//! (the caller checks that, [`super::recover`]), nor record a snapshot before its file is
//! durable, nor advance the state store's `answers_complete` while an answer below the
//! snapshot's position may be missing from the store.

use std::fs::{self, DirBuilder, File};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use signerd_auditor::check::{self, Checker, CheckerState, Position};
use signerd_auditor::events::AuditSnapshot;
use signerd_auditor::layout::{
    MAX_SNAPSHOT_BYTES, SNAPSHOTS_DIR, parse_snapshot_name, snapshot_file,
};
use signerd_auditor::merkle::Hash;
use signerd_auditor::note::VerifierKey;
use signerd_auditor::segments::{self, LineReader, Next, SegmentFile};

use super::AuditLog;
use crate::state::reconcile::Ledger;

/// The snapshot format this binary writes and reads. A snapshot of another version is not
/// used (start-up falls back to an older one, or to the full read). Version 2 keeps signed
/// charges by bucket and second instead of by request.
pub const VERSION: u32 = 2;

/// How many snapshot files the daemon keeps (the newest).
pub const KEEP: usize = 2;

/// The state derived from a log's first `records` records, as a snapshot file holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`VERSION`].
    pub version: u32,
    /// How many records it covers: every record of segments 1 to `segment`.
    pub records: u64,
    /// The last segment it covers (sealed).
    pub segment: u64,
    /// The checker's state after that segment.
    pub checker: CheckerState,
    /// The ledger after that segment.
    pub ledger: Ledger,
}

/// Just the version, read before the rest so that another version is named as such.
#[derive(serde::Deserialize)]
struct VersionOnly {
    version: u32,
}

impl Snapshot {
    /// The file's bytes: JSON, one line.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out =
            serde_json::to_vec(self).map_err(|e| format!("cannot encode a snapshot: {e}"))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Reads a snapshot file's bytes; refuses another version, unknown members and a state that
    /// does not hang together.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        let v: VersionOnly = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a snapshot (no readable `version`): {e}"))?;
        if v.version != VERSION {
            return Err(format!(
                "snapshot version {} is not the version this signerd reads ({VERSION})",
                v.version
            ));
        }
        let s: Snapshot =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable snapshot: {e}"))?;
        if s.records != s.checker.next_seq || s.records != s.ledger.records() {
            return Err(format!(
                "inconsistent snapshot: it says {} records, its checker {} and its ledger {}",
                s.records,
                s.checker.next_seq,
                s.ledger.records()
            ));
        }
        if s.checker.sealed.name != segments::segment_name(s.segment) {
            return Err(format!(
                "inconsistent snapshot: it says it ends with segment {}, its checker with {}",
                s.segment, s.checker.sealed.name
            ));
        }
        Ok(s)
    }
}

/// A snapshot file, read and hashed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its path.
    pub path: PathBuf,
    /// Its name relative to the log directory (`snapshots/snapshot-<records>.json`).
    pub file: String,
    /// SHA-256 of its bytes.
    pub sha256: Hash,
    /// Its content.
    pub snapshot: Snapshot,
}

/// The snapshot files of `dir` as (records, path), newest first. Other files in
/// `snapshots/` (a temporary file a crash left) are ignored.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let snaps = dir.join(SNAPSHOTS_DIR);
    let entries = match fs::read_dir(&snaps) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {e}", snaps.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", snaps.display()))?;
        let name = entry.file_name();
        if let Some(records) = name.to_str().and_then(parse_snapshot_name) {
            out.push((records, entry.path()));
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// Reads and hashes the snapshot file at `path` (at most [`MAX_SNAPSHOT_BYTES`], not through
/// a symbolic link) and checks that its name says the records it covers.
pub fn load(path: &Path) -> Result<Loaded, String> {
    let file = segments::open_regular(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_SNAPSHOT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_SNAPSHOT_BYTES {
        return Err(format!("larger than {MAX_SNAPSHOT_BYTES} bytes"));
    }
    let sha256: Hash = Sha256::digest(&bytes).into();
    let snapshot = Snapshot::decode(&bytes)?;
    let file = snapshot_file(snapshot.records);
    if !path.ends_with(&file) {
        return Err(format!(
            "it covers {} records, so its name must be {file}",
            snapshot.records
        ));
    }
    Ok(Loaded {
        path: path.to_owned(),
        file,
        sha256,
        snapshot,
    })
}

/// Writes `snapshot` to `DIR/snapshots/` durably (temporary file, sync, rename, directory
/// sync); returns its name relative to `dir` and its SHA-256.
pub fn write(dir: &Path, snapshot: &Snapshot) -> Result<(String, Hash), String> {
    let snaps = dir.join(SNAPSHOTS_DIR);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&snaps)
        .map_err(|e| format!("cannot create {}: {e}", snaps.display()))?;
    let bytes = snapshot.encode()?;
    let file = snapshot_file(snapshot.records);
    let name = file
        .trim_start_matches(&format!("{SNAPSHOTS_DIR}/"))
        .to_owned();
    super::replace_file(&snaps, &name, &format!("{name}.tmp"), &bytes, 0o600)
        .map_err(|e| format!("cannot write {}: {e}", snaps.join(&name).display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    Ok((file, Sha256::digest(&bytes).into()))
}

/// Removes every snapshot file but the newest `keep`.
pub fn prune(dir: &Path, keep: usize) -> Result<(), String> {
    for (_, path) in list(dir)?.into_iter().skip(keep) {
        fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The state derived from the records read so far.
#[derive(Debug)]
pub struct Derived {
    checker: Checker,
    ledger: Ledger,
    /// The last segment read whole (0: none).
    segment: u64,
}

/// The checks start-up applies: signatures by `key`, semantics tracked but not enforced.
fn options(key: &VerifierKey) -> check::Options {
    check::Options {
        key: Some(key.clone()),
        strict_semantics: false,
        expected: Vec::new(),
        verified_below: 0,
    }
}

impl Derived {
    /// Nothing read yet: a full read starts here.
    pub fn new(key: &VerifierKey) -> Derived {
        Derived {
            checker: Checker::new(options(key)),
            ledger: Ledger::default(),
            segment: 0,
        }
    }

    /// Continues after `snapshot`, checking checkpoints with `key`.
    pub fn resume(key: &VerifierKey, snapshot: Snapshot) -> Result<Derived, String> {
        Ok(Derived {
            checker: Checker::resume(options(key), snapshot.checker)?,
            ledger: snapshot.ledger,
            segment: snapshot.segment,
        })
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.checker.next_seq()
    }

    /// The last segment read whole.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// The ledger so far.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Applies one line (without its newline) at `pos`: the checker's checks, then the ledger.
    pub fn apply(&mut self, pos: &Position, line: &[u8]) -> Result<(), String> {
        self.checker.record(pos, line).map_err(|f| f.to_string())?;
        self.ledger.apply(
            line,
            &|| format!("{}:{}", pos.segment, pos.lineno),
            &mut |_| Ok(()),
        )
    }

    /// Reads the sealed segment `seg` whole; it must be the one after the last one read and
    /// end with its seal.
    pub fn read_segment(&mut self, seg: &SegmentFile) -> Result<(), String> {
        if seg.no != self.segment + 1 {
            return Err(format!(
                "{} follows segment {}, expected segment {}",
                seg.name,
                self.segment,
                self.segment + 1
            ));
        }
        self.checker
            .begin_segment(seg.no, &seg.name)
            .map_err(|f| f.to_string())?;
        let mut reader = LineReader::open(&seg.path)?;
        let mut sha = Sha256::new();
        let mut bytes = 0u64;
        loop {
            let next = reader
                .next_line()
                .map_err(|e| format!("cannot read {}: {e}", seg.path.display()))?;
            match next {
                Next::Eof => break,
                Next::TooLong { lineno, .. } => {
                    return Err(format!(
                        "{}:{lineno}: longer than a record may be",
                        seg.name
                    ));
                }
                Next::Line {
                    bytes: line,
                    lineno,
                    offset,
                    terminated,
                } => {
                    if !terminated {
                        return Err(format!("{}:{lineno}: unterminated line", seg.name));
                    }
                    let pos = Position {
                        segment: seg.name.clone(),
                        lineno,
                        offset,
                    };
                    self.apply(&pos, line)?;
                    sha.update(line);
                    sha.update(b"\n");
                    bytes = offset + line.len() as u64 + 1;
                }
            }
        }
        self.checker.end_segment(sha.finalize().into(), bytes);
        if self.checker.segment().is_some() {
            return Err(format!("{} does not end with audit.segment_seal", seg.name));
        }
        self.segment = seg.no;
        Ok(())
    }

    /// The snapshot of what was read (`None` before the first sealed segment was read).
    pub fn snapshot(&self) -> Option<Snapshot> {
        if self.segment == 0 {
            return None;
        }
        Some(Snapshot {
            version: VERSION,
            records: self.records(),
            segment: self.segment,
            checker: self.checker.state()?,
            ledger: self.ledger.compacted(),
        })
    }
}

/// Reads the sealed segments of `dir` after `derived`'s last one, up to segment `through`.
pub fn advance(dir: &Path, derived: &mut Derived, through: u64) -> Result<(), String> {
    advance_until(dir, derived, through, &|| false)
}

/// [`advance`], stopping early (between segments, without an error) once `stop` says so.
fn advance_until(
    dir: &Path,
    derived: &mut Derived,
    through: u64,
    stop: &dyn Fn() -> bool,
) -> Result<(), String> {
    for seg in segments::list(dir)? {
        if stop() {
            return Ok(());
        }
        if seg.no > derived.segment() && seg.no <= through {
            derived.read_segment(&seg)?;
        }
    }
    if derived.segment() < through {
        return Err(format!(
            "{}: segment {} is missing",
            dir.display(),
            derived.segment() + 1
        ));
    }
    Ok(())
}

/// A snapshot file an auditor checked against the log ([`verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The file, relative to the log directory.
    pub file: String,
    /// How many records it covers.
    pub records: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// `seq` of the `audit.snapshot` record that names it.
    pub named_at: u64,
}

/// Checks the snapshot files `files` (every snapshot in `DIR/snapshots` when empty) against
/// the log in `dir`: each must be byte for byte the state the log's records derive up to its
/// position (recomputed from the first record, checkpoints checked with `key`), and an
/// `audit.snapshot` record after that position must name its SHA-256. The first failure is
/// the error, naming the file.
pub fn verify(dir: &Path, key: &VerifierKey, files: &[PathBuf]) -> Result<Vec<Verified>, String> {
    let mut paths: Vec<PathBuf> = if files.is_empty() {
        list(dir)?.into_iter().map(|(_, p)| p).collect()
    } else {
        files.to_vec()
    };
    if paths.is_empty() {
        return Err(format!(
            "{}: no snapshot files",
            dir.join(SNAPSHOTS_DIR).display()
        ));
    }
    let mut loaded = Vec::new();
    for p in paths.drain(..) {
        let l = load(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let bytes = fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        loaded.push((l, bytes));
    }
    loaded.sort_by_key(|(l, _)| l.snapshot.records);
    // Every audit.snapshot record: (seq, records, sha256).
    let mut named = Vec::new();
    crate::state::reconcile::for_each_line_from(dir, 1, |line, at| {
        if let Ok(env) = signerd_auditor::envelope::parse(line)
            && env.kind == Some(signerd_auditor::events::Kind::AuditSnapshot)
        {
            let r: AuditSnapshot = signerd_auditor::events::read(line)
                .map_err(|e| format!("{}: malformed audit.snapshot: {e}", at()))?;
            named.push((env.seq, r.records, r.sha256));
        }
        Ok(())
    })?;
    let mut derived = Derived::new(key);
    let mut out = Vec::new();
    for (l, bytes) in loaded {
        advance(dir, &mut derived, l.snapshot.segment)
            .map_err(|e| format!("{}: the log up to it does not check: {e}", l.file))?;
        let again = derived
            .snapshot()
            .ok_or_else(|| format!("{}: covers no sealed segment", l.file))?;
        if again.encode()? != bytes {
            let theirs = serde_json::to_value(&l.snapshot).map_err(|e| e.to_string())?;
            let ours = serde_json::to_value(&again).map_err(|e| e.to_string())?;
            let differ: Vec<String> = ["version", "records", "segment", "checker", "ledger"]
                .iter()
                .filter(|m| theirs.get(**m) != ours.get(**m))
                .map(|m| format!("`{m}`"))
                .collect();
            return Err(format!(
                "{}: differs from the state the log's first {} records derive (members {}); the snapshot was changed or forged",
                l.file,
                again.records,
                if differ.is_empty() {
                    "(encoding)".to_owned()
                } else {
                    differ.join(", ")
                }
            ));
        }
        let sha = hex::encode(l.sha256);
        let Some((seq, _, _)) = named.iter().find(|(seq, r, h)| {
            *seq >= l.snapshot.records && *r == l.snapshot.records && *h == sha
        }) else {
            return Err(format!(
                "{}: no audit.snapshot record after its {} records names its SHA-256 {sha}",
                l.file, l.snapshot.records
            ));
        };
        out.push(Verified {
            file: l.file.clone(),
            records: l.snapshot.records,
            sha256: sha,
            named_at: *seq,
        });
    }
    Ok(out)
}

/// What the snapshot builder needs.
pub struct Builder {
    /// The log directory.
    pub dir: PathBuf,
    /// The log's checkpoint key.
    pub key: VerifierKey,
    /// The log, to append `audit.snapshot`.
    pub audit: AuditLog,
    /// The state store, whose `answers_complete` advances with each snapshot.
    pub state: Arc<dyn crate::state::StateStore>,
    /// Which answers are in the store.
    pub answers: Arc<crate::service::answers::AnswerWatermark>,
}

/// How long the builder waits for the answers below a snapshot's position to reach the state
/// store before it records the snapshot without advancing `answers_complete`.
const ANSWERS_WAIT: Duration = Duration::from_secs(30);

/// Starts the snapshot builder: after each seal (and once now), it reads the sealed segments
/// after its last snapshot (`start`, a vouched snapshot start-up used; without one, it reads
/// the whole log once), writes the next snapshot, advances the state store's
/// `answers_complete`, appends `audit.snapshot` and keeps the newest [`KEEP`] files.
pub fn spawn_builder(
    background: &crate::tasks::Background,
    builder: Builder,
    start: Option<Snapshot>,
) {
    let bg = background.clone();
    background.spawn("audit snapshot builder", async move {
        let mut sealed = builder.audit.sealed();
        let mut derived = match start.map(|s| Derived::resume(&builder.key, s)) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "snapshot builder: cannot continue the start-up snapshot; reading the log from its start");
                None
            }
            None => None,
        };
        loop {
            derived = match build_once(&builder, derived, &bg).await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!(error = %e, "snapshot builder: no snapshot built; the next seal tries again from the log's start");
                    None
                }
            };
            tokio::select! {
                changed = sealed.changed() => if changed.is_err() { return },
                () = bg.cancelled() => return,
            }
        }
    });
}

/// One round of the builder: brings `derived` to the last sealed segment and, if it moved,
/// writes and records its snapshot.
async fn build_once(
    b: &Builder,
    derived: Option<Derived>,
    bg: &crate::tasks::Background,
) -> Result<Derived, String> {
    let dir = b.dir.clone();
    let key = b.key.clone();
    let before = derived.as_ref().map_or(0, Derived::segment);
    // Shutdown ends a long first read between two segments.
    let stopping = bg.child();
    let work = tokio::task::spawn_blocking(move || {
        let mut d = derived.unwrap_or_else(|| Derived::new(&key));
        // Every segment but the last (the active one) is sealed and durable.
        let last = segments::list(&dir)?.last().map_or(0, |s| s.no);
        let stop = || stopping.is_cancelled();
        advance_until(&dir, &mut d, last.saturating_sub(1), &stop)?;
        if stop() {
            return Ok((d, None));
        }
        let written = match d.snapshot() {
            Some(s) if d.segment() > before => Some((s.records, write(&dir, &s)?)),
            _ => None,
        };
        Ok::<_, String>((d, written))
    });
    let (d, written) = work
        .await
        .map_err(|e| format!("the snapshot builder task failed: {e}"))??;
    let Some((records, (file, sha256))) = written else {
        return Ok(d);
    };
    record_answers_complete(b, records, bg).await;
    b.audit
        .append_durable(AuditSnapshot {
            records,
            sha256: hex::encode(sha256),
            file: file.clone(),
        })
        .await
        .map_err(|e| format!("cannot record {file}: {e}"))?;
    tracing::info!(records, file = %file, "audit snapshot written");
    let dir = b.dir.clone();
    match tokio::task::spawn_blocking(move || prune(&dir, KEEP)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove old snapshots"),
        Err(e) => tracing::warn!(error = %e, "cannot remove old snapshots"),
    }
    Ok(d)
}

/// Once every answer below `records` is in the state store, flushes it and records there that
/// its answers are complete through `records`. Gives up (leaving the store's position where it
/// was) after [`ANSWERS_WAIT`], at shutdown, or when an answer was lost.
async fn record_answers_complete(b: &Builder, records: u64, bg: &crate::tasks::Background) {
    let deadline = tokio::time::Instant::now() + ANSWERS_WAIT;
    loop {
        match b.answers.complete_through(records) {
            Some(true) => break,
            None => {
                tracing::warn!(
                    records,
                    "an answer did not reach the state store in this run; the next start restores answers from an earlier position"
                );
                return;
            }
            Some(false) if tokio::time::Instant::now() >= deadline || bg.is_cancelled() => {
                tracing::warn!(
                    records,
                    "answers below the snapshot are still on their way to the state store; its answers position stays"
                );
                return;
            }
            Some(false) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let advanced = async {
        b.state.flush().await?;
        let Some(mut binding) = b.state.log_binding().await? else {
            return Ok(());
        };
        if binding.answers_complete.is_none_or(|a| a < records) {
            binding.answers_complete = Some(records);
            b.state.bind_log(&binding).await?;
        }
        Ok::<(), crate::state::StateError>(())
    };
    if let Err(e) = advanced.await {
        tracing::warn!(error = %e, "cannot record in the state store which answers it holds");
    }
}
