//! The tamper-evident audit log: durable, hash-chained JSON Lines in rotating segments, an
//! RFC 6962 Merkle tree over every record, and signed C2SP checkpoints.
//!
//! Every record is one line of JSON written once; the bytes on disk are exactly the bytes
//! hashed. Each line carries the envelope `{"v":1,"seq":N,"ts":"...","type":"...", <body>,
//! "prev":"<hex>"}` where `prev` is the RFC 6962 leaf hash (SHA-256(0x00 || line)) of the
//! previous line. The leaves form an RFC 6962 tree whose head the writer signs every N records
//! or T seconds, at each segment seal and at shutdown, as an `audit.checkpoint` record and in
//! the file `checkpoint`. One writer thread does group commit; [`AuditLog::append_durable`]
//! returns only after its record, and every record queued before it, is fsynced. Start-up
//! recovers from a crash ([`recover`]) and refuses a log it cannot validate. See
//! `docs/audit-log.md` for the exact format and the verification procedure.
//!
//! The format itself (record bodies, the envelope, segments, the Merkle tree, checkpoints) and
//! everything that only reads a log (the checks, `verify`, `prove`, `query`) live in the
//! `signerd-auditor` crate (`signerd/auditor`), which auditors build without signerd. This
//! module is the writer: the writer thread, crash recovery (which writes) and the audit
//! signing key ([`key`]).
//!
//! This module must never re-serialize a written record, write after a failed write or sync
//! (it fails closed: every later request gets [`AuditError::Unavailable`] until an operator
//! restarts signerd), write when the audit filesystem is nearly full, or accept a log on disk
//! whose chain, tree or checkpoints it cannot validate.

pub mod archive;
pub mod generate;
pub mod key;
pub mod recheck;
pub(crate) mod recover;
pub mod snapshot;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use signerd_auditor::check::{Failure, Stats};
/// Every record type, typed (`SignResult`, `SignDecision`, ...), from the auditor crate.
pub use signerd_auditor::events;
use signerd_auditor::events::{AuditStart, AuditStop};
/// RFC 6962 hashing, from the auditor crate.
pub use signerd_auditor::merkle;
/// C2SP checkpoints and verifier keys, from the auditor crate.
pub use signerd_auditor::note;
pub use signerd_auditor::note::{Checkpoint, CheckpointSigner, VerifierKey};
use signerd_auditor::record::RecordError;
pub use signerd_auditor::record::{MAX_LINE_BYTES, Record};
pub(crate) use writer::replace_file;
use writer::{Msg, Settings, Shared, Writer};

/// How many records may wait for the writer. When the queue is full the disk is far behind;
/// appends then fail with [`AuditError::Unavailable`] instead of blocking an async worker
/// thread, and the caller (who has signed nothing yet) reports the request as unavailable.
pub const QUEUE_CAPACITY: usize = 65_536;

/// Where a record landed: its sequence number and RFC 6962 leaf hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The record's `seq`.
    pub seq: u64,
    /// SHA-256(0x00 || line bytes without the trailing newline).
    pub leaf_hash: [u8; 32],
}

/// Why the audit log cannot take a record.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Writing or syncing failed earlier or now; the log refuses everything until restart.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// The log on disk cannot be opened or continued.
    #[error("audit log: {0}")]
    Open(String),
    /// The record itself is malformed (reserved or duplicate field name, bad type, too long).
    /// A bug in the caller; the log stays healthy.
    #[error("invalid audit record: {0}")]
    InvalidRecord(String),
}

impl From<RecordError> for AuditError {
    fn from(e: RecordError) -> AuditError {
        match e {
            RecordError::Invalid(why) => AuditError::InvalidRecord(why),
            other => AuditError::InvalidRecord(other.to_string()),
        }
    }
}

/// Options for [`AuditLog::open`].
#[derive(Clone)]
pub struct AuditOptions {
    /// fdatasync after every group of records. Only benchmarks turn this off; records that
    /// open, seal or checkpoint the log are synced regardless.
    pub fsync: bool,
    /// Most records written in one group commit (at least 1).
    pub max_batch: usize,
    /// Longest time the writer holds a batch that someone waits for, before syncing it, while
    /// records announced with [`AuditLog::expect`] are still to come; and a batch nobody waits
    /// for, before writing it, while no record someone waits for has joined it (zero: never).
    pub group_commit_wait: Duration,
    /// Signs checkpoints. Its name is the checkpoints' origin.
    pub signer: Arc<dyn CheckpointSigner>,
    /// A checkpoint after this many records (at least 1).
    pub checkpoint_every_records: u64,
    /// A checkpoint after this long, if records were written since the last one.
    pub checkpoint_every: Duration,
    /// The active segment is sealed once it holds this many bytes.
    pub max_segment_bytes: u64,
    /// The active segment is sealed once its first record is this old.
    pub max_segment_age: Duration,
    /// Nothing is written (and signing stops) when the audit filesystem has less free space
    /// (`Some(0)` disables the check). `None`: [`DEFAULT_MIN_FREE_BYTES`], or a quarter of the
    /// filesystem's size if that is smaller.
    pub min_free_bytes: Option<u64>,
    /// While checkpoints cannot be signed, the log pauses (no new request is admitted; records
    /// are still written) once this many wait for a checkpoint, until one is signed. `None`:
    /// ten times `checkpoint_every_records`.
    pub max_unattested_records: Option<u64>,
    /// A write or sync of the log that has not returned after this long makes the log
    /// unhealthy (no new request is admitted, health reports NOT_SERVING) until it returns.
    pub stall_after: Duration,
}

pub use crate::config::DEFAULT_GROUP_COMMIT_WAIT;

/// The free-space floor when none is configured (capped at a quarter of the filesystem).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

/// Default [`AuditOptions::stall_after`]: far beyond any healthy disk's sync (milliseconds).
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(5);

impl std::fmt::Debug for AuditOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditOptions")
            .field("fsync", &self.fsync)
            .field("max_batch", &self.max_batch)
            .field("group_commit_wait", &self.group_commit_wait)
            .field("signer", &self.signer.name())
            .field("checkpoint_every_records", &self.checkpoint_every_records)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("max_segment_bytes", &self.max_segment_bytes)
            .field("max_segment_age", &self.max_segment_age)
            .field("min_free_bytes", &self.min_free_bytes)
            .field("max_unattested_records", &self.max_unattested_records)
            .finish()
    }
}

impl AuditOptions {
    /// The documented defaults (fsync on, batches of 1024, a checkpoint every 1000 records or
    /// 60 s, 64 MiB or one-day segments, the default free space floor).
    pub fn new(signer: Arc<dyn CheckpointSigner>) -> AuditOptions {
        AuditOptions {
            fsync: true,
            max_batch: 1024,
            group_commit_wait: DEFAULT_GROUP_COMMIT_WAIT,
            signer,
            checkpoint_every_records: 1000,
            checkpoint_every: Duration::from_secs(60),
            max_segment_bytes: 64 << 20,
            max_segment_age: Duration::from_secs(86_400),
            min_free_bytes: None,
            max_unattested_records: None,
            stall_after: DEFAULT_STALL_AFTER,
        }
    }

    /// Options from the `[audit]` configuration.
    pub fn from_config(
        config: &crate::config::AuditConfig,
        signer: Arc<dyn CheckpointSigner>,
    ) -> AuditOptions {
        AuditOptions {
            fsync: !config.bench_unsafe_no_fsync,
            max_batch: config.max_batch,
            group_commit_wait: config.group_commit_wait(),
            signer,
            checkpoint_every_records: config.checkpoint_every_records,
            checkpoint_every: Duration::from_secs(config.checkpoint_every_seconds),
            max_segment_bytes: config.max_segment_bytes,
            max_segment_age: Duration::from_secs(config.max_segment_age_seconds),
            min_free_bytes: config.min_free_bytes,
            max_unattested_records: config.max_unattested_records,
            stall_after: DEFAULT_STALL_AFTER,
        }
    }

    fn settings(&self, dir: &Path) -> Result<Settings, AuditError> {
        let min_free_bytes = match self.min_free_bytes {
            Some(v) => v,
            None => {
                let total = writer::fs_size(dir).map_err(|e| {
                    AuditError::Open(format!(
                        "cannot read the size of the filesystem holding {}: {e}",
                        dir.display()
                    ))
                })?;
                DEFAULT_MIN_FREE_BYTES.min(total / 4)
            }
        };
        let checkpoint_every_records = self.checkpoint_every_records.max(1);
        Ok(Settings {
            fsync: self.fsync,
            max_batch: self.max_batch.max(1),
            group_commit_wait: self.group_commit_wait,
            checkpoint_every_records,
            checkpoint_every: self.checkpoint_every.max(Duration::from_millis(1)),
            max_segment_bytes: self.max_segment_bytes,
            max_segment_age: self.max_segment_age.max(Duration::from_millis(1)),
            min_free_bytes,
            max_unattested_records: self
                .max_unattested_records
                .unwrap_or(checkpoint_every_records.saturating_mul(10))
                .max(1),
        })
    }
}

/// A record queued by [`AuditLog::submit_durable`], not yet known to be durable.
#[must_use = "the record's receipt comes from `wait`"]
pub struct Durable {
    rx: tokio::sync::oneshot::Receiver<Result<Receipt, AuditError>>,
    shared: Arc<Shared>,
}

impl Durable {
    /// Waits until the record, and every record queued before it, is fsynced.
    pub async fn wait(self) -> Result<Receipt, AuditError> {
        match self.rx.await {
            Ok(answer) => answer,
            // The writer stopped with this record still queued.
            Err(_) => Err(self.shared.unavailable()),
        }
    }
}

/// A durable record announced by [`AuditLog::expect`]; dropping it ends the announcement.
#[must_use = "dropping it at once announces nothing"]
pub struct Expected {
    shared: Arc<Shared>,
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.shared.expected_done();
    }
}

/// The single writer of the audit log. Cheap to clone: every clone feeds the same writer.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    verifier: VerifierKey,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`, recovers from a crash, continues its sequence,
    /// chain and tree, and writes `audit.start`.
    ///
    /// `dir` is created with mode 0700 if missing. Opening refuses (with [`AuditError::Open`])
    /// a path that is not a directory, a segment that is not a regular file, a directory
    /// another writer holds, a gap in the segment numbers, any record that does not validate
    /// (chain, segment chaining, checkpoint roots, checkpoint signatures by `opts.signer`'s
    /// key), corruption followed by more data, a log shorter than `DIR/checkpoint`, and a
    /// filesystem below `opts.min_free_bytes`. A torn tail is cut and recorded
    /// (`audit.recover`), an interrupted rotation is finished, and allowed requests without a
    /// result get `sign.result` `unknown_crash`, all before `audit.start`. These records are
    /// fsynced before this returns, whatever `opts.fsync` says.
    pub fn open(dir: &Path, opts: AuditOptions) -> Result<AuditLog, AuditError> {
        Self::open_from(dir, opts, &[]).map(|(log, _)| log)
    }

    /// [`AuditLog::open`], resuming the checks after the first of `snapshots` (newest first)
    /// that the log vouches for: an `audit.snapshot` record after the records it covers names
    /// its SHA-256, and the records after it check from its state. A snapshot that is not
    /// vouched for, or from which the checks fail, is skipped with a warning; without one, the
    /// whole log is read. Returns the log and the index of the snapshot used.
    pub fn open_from(
        dir: &Path,
        opts: AuditOptions,
        snapshots: &[snapshot::Loaded],
    ) -> Result<(AuditLog, Option<usize>), AuditError> {
        let lock = recover::prepare_dir(dir)?;
        let verifier = VerifierKey::new(opts.signer.name(), &opts.signer.public_key())
            .map_err(|e| AuditError::Open(format!("the audit signing key: {e}")))?;
        let settings = opts.settings(dir)?;
        if settings.min_free_bytes > 0 {
            let free = free_bytes(dir).map_err(|e| {
                AuditError::Open(format!(
                    "cannot read the free space of the filesystem holding {}: {e}",
                    dir.display()
                ))
            })?;
            if free < settings.min_free_bytes {
                return Err(AuditError::Open(format!(
                    "the filesystem holding {} has {free} bytes free, less than audit.min_free_bytes = {}; free some space first",
                    dir.display(),
                    settings.min_free_bytes
                )));
            }
        }
        let mut used = None;
        let mut found = None;
        for (i, c) in snapshots.iter().enumerate() {
            let sha = hex::encode(c.sha256);
            match recover::scan(dir, &verifier, Some(&c.snapshot)) {
                Ok(s)
                    if s.vouched
                        .iter()
                        .any(|(r, h)| *r == c.snapshot.records && *h == sha) =>
                {
                    found = Some(s);
                    used = Some(i);
                    break;
                }
                Ok(_) => tracing::warn!(
                    snapshot = %c.file,
                    sha256 = %sha,
                    "snapshot not used: no audit.snapshot record after it names its SHA-256 (changed, forged, or written just before a crash); trying an older snapshot, then the whole log"
                ),
                Err(e) => tracing::warn!(
                    snapshot = %c.file,
                    error = %e,
                    "snapshot not used: the log after it does not check from it; trying an older snapshot, then the whole log"
                ),
            }
        }
        let scan = match found {
            Some(s) => s,
            None => recover::scan(dir, &verifier, None)?,
        };
        let shared = Arc::new(Shared::new(opts.stall_after));
        let mut recovery =
            recover::apply(dir, scan, lock, opts.signer, settings, Arc::clone(&shared))?;
        // Written on this thread, before the writer thread exists: `open` is synchronous and
        // may run inside an async runtime, where blocking on a reply would be wrong.
        let start = AuditStart {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            checkpoint_key: verifier.to_string(),
        };
        let mut records = std::mem::take(&mut recovery.records);
        records.push(Msg::internal(&Record::from_event(&start)).map_err(AuditError::Open)?);
        let mut writer = recovery.writer;
        let written =
            |e: String| AuditError::Open(format!("cannot write the start-up records: {e}"));
        if let Some(n) = recovery.checkpoint_after {
            // A finished rotation looks like any other: audit.segment_open, then a checkpoint.
            let rest = records.split_off(n.min(records.len()));
            if !records.is_empty() {
                writer
                    .commit(&records, true, writer::Attest::No)
                    .map_err(written)?;
            }
            writer.write_checkpoint().map_err(written)?;
            records = rest;
        }
        // The start-up records end with a checkpoint: a log is never left with a record that no
        // signed tree head covers, except records written while the key could not sign.
        writer
            .commit(&records, true, writer::Attest::Required)
            .map_err(written)?;
        Self::spawn(writer, dir.to_owned(), shared, verifier).map(|log| (log, used))
    }

    /// A log whose writer appends to an arbitrary open `file` checked against `path`, starting
    /// at seq 0 without `audit.start`: lets tests inject real I/O errors (`/dev/full`).
    #[cfg(test)]
    fn with_file(
        file: std::fs::File,
        path: &Path,
        opts: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        let shared = Arc::new(Shared::new(opts.stall_after));
        let verifier = VerifierKey::new(opts.signer.name(), &opts.signer.public_key())
            .map_err(|e| AuditError::Open(e.to_string()))?;
        let seg = writer::Segment {
            no: 1,
            path: path.to_owned(),
            file,
            bytes: 0,
            sha: <sha2::Sha256 as sha2::Digest>::new(),
            first_seq: None,
            records: 0,
            started: None,
            content: false,
        };
        let tail = writer::Tail {
            next_seq: 0,
            prev: [0; 32],
            tree: merkle::Frontier::new(),
        };
        let settings = opts.settings(Path::new("/"))?;
        let writer = Writer::new(
            None,
            seg,
            tail,
            None,
            opts.signer,
            settings,
            None,
            Arc::clone(&shared),
        )?;
        Self::spawn(writer, path.to_owned(), shared, verifier)
    }

    fn spawn(
        writer: Writer,
        dir: PathBuf,
        shared: Arc<Shared>,
        verifier: VerifierKey,
    ) -> Result<AuditLog, AuditError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Open(format!("cannot start the audit writer thread: {e}")))?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                shared,
                thread: Mutex::new(Some(thread)),
                dir,
                verifier,
            }),
        })
    }

    fn enqueue(&self, record: Record, reply: Option<writer::Reply>) -> Result<(), AuditError> {
        self.inner.shared.check()?;
        let msg = Msg {
            kind: record.kind(),
            body: record.into_body()?,
            reply,
            stop: false,
        };
        let durable = msg.reply.is_some();
        match self.inner.tx.try_send(msg) {
            Ok(()) => {
                if durable {
                    self.inner.shared.durable_queued();
                }
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(AuditError::Unavailable(format!(
                "the audit queue is full ({QUEUE_CAPACITY} records are waiting for the disk); try again later"
            ))),
            Err(TrySendError::Disconnected(_)) => Err(self.inner.shared.unavailable()),
        }
    }

    /// Queues a record without waiting for it to be durable. Records are written in the order
    /// they are queued, so a later durable append makes this one durable too. The writer may
    /// hold it (at most `group_commit_wait`) to write it with the next durable one.
    ///
    /// `record` is a [`Record`] or a typed event ([`events`]: `SignResult { .. }`, ...).
    pub fn append(&self, record: impl Into<Record>) -> Result<(), AuditError> {
        self.enqueue(record.into(), None)
    }

    /// Queues a record (a [`Record`] or a typed event) and waits until it, and every record
    /// queued before it, is fsynced.
    pub async fn append_durable(&self, record: impl Into<Record>) -> Result<Receipt, AuditError> {
        self.submit_durable(record)?.wait().await
    }

    /// Queues a record whose caller will wait for it to be durable: [`append_durable`] in
    /// two steps, so that the caller can drop an [`Expected`] between them.
    ///
    /// [`append_durable`]: AuditLog::append_durable
    pub fn submit_durable(&self, record: impl Into<Record>) -> Result<Durable, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(record.into(), Some(tx))?;
        Ok(Durable {
            rx,
            shared: Arc::clone(&self.inner.shared),
        })
    }

    /// Announces a durable record that may follow shortly (the result of a request in
    /// progress). Until the returned guard is dropped, the writer may hold a batch someone waits
    /// for (at most `group_commit_wait`) so that one fdatasync covers both. Drop the guard
    /// once the record is submitted, or when it will not be.
    pub fn expect(&self) -> Expected {
        self.inner.shared.expect();
        Expected {
            shared: Arc::clone(&self.inner.shared),
        }
    }

    /// Why the log takes no more records, once it has failed or been shut down (the same
    /// text every append then gets); `None` while it works.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.stop_reason()
    }

    /// False once a write or sync has failed, the segment was deleted or replaced, the free
    /// space fell below the floor, or the log was shut down; and, for a while, when it
    /// [`is_paused`](AuditLog::is_paused) or is [`stalled`](AuditLog::stalled).
    pub fn is_healthy(&self) -> bool {
        self.inner.shared.is_healthy()
    }

    /// How long the write or sync in progress has taken, once that is longer than
    /// [`AuditOptions::stall_after`]: the log is unhealthy meanwhile, and healthy again as soon
    /// as the call returns (a failed call stops the log for good).
    pub fn stalled(&self) -> Option<Duration> {
        self.inner.shared.stalled()
    }

    /// True while `max_unattested_records` wait for a checkpoint its key cannot sign: the
    /// service then admits no new request (the log still writes the records of requests
    /// already admitted). Cleared by the next signed checkpoint.
    pub fn is_paused(&self) -> bool {
        self.inner.shared.is_paused()
    }

    /// A receiver that flips to `false` when the log fails (or shuts down), and to `false`
    /// then back to `true` around a pause.
    pub fn health(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.shared.subscribe()
    }

    /// A receiver of the number of the last segment this log sealed since it was opened
    /// (0 before the first seal).
    pub fn sealed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.sealed.subscribe()
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The key that verifies this log's checkpoints, in C2SP vkey form when displayed.
    pub fn verifier_key(&self) -> &VerifierKey {
        &self.inner.verifier
    }

    /// How many records the log holds durably, as of the writer's last committed batch (after
    /// [`AuditLog::shutdown`], every record it will ever hold).
    pub fn durable_records(&self) -> u64 {
        self.inner
            .shared
            .durable_records
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Writes `audit.stop` and a final checkpoint, syncs and stops the writer. Later appends
    /// fail with [`AuditError::Unavailable`]; a record appended concurrently with the shutdown
    /// may be refused. Calling it again does nothing. Fails if the log had already failed.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        let thread = {
            let mut guard = self.inner.thread.lock().unwrap_or_else(|p| p.into_inner());
            guard.take()
        };
        let Some(thread) = thread else {
            return Ok(());
        };
        let stop = Record::from_event(&AuditStop {});
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        let msg = Msg {
            kind: stop.kind(),
            body: stop.into_body()?,
            reply: Some(reply_tx),
            stop: true,
        };
        let result = match self.inner.shared.check() {
            Err(e) => Err(e),
            Ok(()) => {
                // From here on, new appends are refused; the stop record goes last.
                self.inner
                    .shared
                    .stop("the audit log is shut down".to_owned());
                let tx = self.inner.tx.clone();
                let shared = Arc::clone(&self.inner.shared);
                // A blocking send (the queue may be full) belongs on a blocking thread.
                let send = move || {
                    let sent = tx.send(msg);
                    shared.durable_queued();
                    sent
                };
                match tokio::task::spawn_blocking(send).await {
                    Ok(Ok(())) => match reply_rx.await {
                        Ok(answer) => answer.map(|_| ()),
                        Err(_) => Err(AuditError::Unavailable(
                            "the audit writer stopped before writing audit.stop".to_owned(),
                        )),
                    },
                    Ok(Err(_)) => Err(AuditError::Unavailable(
                        "the audit writer stopped before writing audit.stop".to_owned(),
                    )),
                    Err(e) => Err(AuditError::Unavailable(format!(
                        "cannot queue audit.stop: {e}"
                    ))),
                }
            }
        };
        // The thread ends right after answering (or has already ended after a failure).
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the audit writer thread panicked"),
            Err(e) => tracing::error!(error = %e, "cannot join the audit writer thread"),
        }
        result
    }
}

/// Free bytes on the filesystem holding `dir` (tests may pretend a disk is fuller).
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    #[cfg(test)]
    if let Some(v) = tests::fake_free(dir) {
        return Ok(v);
    }
    writer::free_bytes(dir)
}

#[cfg(test)]
mod tests;
