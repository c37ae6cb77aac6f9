//! The audit writer thread: group commit, signed checkpoints, segment rotation and the
//! free-space guard.
//!
//! One OS thread owns the active segment. It takes one queued record, drains up to
//! `max_batch` more, gives them consecutive `seq`s, chains each to the previous leaf hash,
//! adds each leaf to the Merkle tree, writes the whole batch with one `write_all`, makes it
//! durable with one `fdatasync`, and only then answers the waiters. Before syncing a batch it
//! may wait, at most `group_commit_wait`, for the durable records that requests in progress
//! have announced ([`Shared::expect`]), so that one sync serves them too. A batch nobody waits
//! for is held, for at most the same bound, until a record someone waits for joins it. Between
//! batches it signs a checkpoint when enough records or time have passed, and rotates the
//! segment when it is too big or too old.
//!
//! It must never retry a failed write or sync (after a failed fsync the page cache state is
//! unknown), never write after a failure (a torn batch must stay the last bytes of the file),
//! never write to a segment that was deleted or replaced under it, and never write a batch when
//! the audit filesystem is below its free-space floor.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use signerd_auditor::events::{AuditCheckpoint, AuditSegmentOpen, AuditSegmentSeal, Kind};
use signerd_auditor::layout::CHECKPOINT_FILE;
use signerd_auditor::merkle::{self, Frontier, Hash};
use signerd_auditor::note::{Checkpoint, CheckpointSigner};
use signerd_auditor::record::Record;
use signerd_auditor::segments::segment_name;

use super::{AuditError, Receipt};

/// Suffix of every message that stops signing, so operators know what to do.
pub(super) const STOPPED: &str = "signing is stopped until an operator restarts signerd";

/// A reply channel for one record.
pub(super) type Reply = tokio::sync::oneshot::Sender<Result<Receipt, AuditError>>;

/// One queued record.
pub(super) struct Msg {
    pub(super) kind: &'static str,
    /// `,"name":value...`, from [`Record::encode`].
    pub(super) body: Vec<u8>,
    pub(super) reply: Option<Reply>,
    /// The last record: sync it, checkpoint, answer, and end the thread.
    pub(super) stop: bool,
}

impl Msg {
    /// A record the writer adds by itself; nobody waits for it.
    pub(super) fn internal(record: &Record) -> Result<Msg, String> {
        Ok(Msg {
            kind: record.kind(),
            body: record.encode().map_err(|e| e.to_string())?,
            reply: None,
            stop: false,
        })
    }
}

/// State shared by every handle and the writer thread.
pub(super) struct Shared {
    /// Why the log takes no more records; set once (a failure or a shutdown), never cleared.
    stopped: OnceLock<String>,
    /// Set while the log's checkpoints cannot be signed and `max_unattested_records` wait
    /// for one: the service admits no new requests (records of requests already admitted are
    /// still written). Cleared by the next signed checkpoint.
    paused: AtomicBool,
    health: tokio::sync::watch::Sender<bool>,
    /// Durable records announced by [`Shared::expect`] and not yet queued.
    expected: AtomicUsize,
    /// Set while the writer waits for `expected` to reach zero.
    writer_waiting: AtomicBool,
    /// Set while the writer holds records nobody waits for, until a record someone waits for
    /// joins them.
    writer_holding: AtomicBool,
    /// The writer thread, to wake it when `expected` reaches zero while it waits, or when a
    /// record someone waits for joins records it holds.
    writer_thread: OnceLock<std::thread::Thread>,
    /// Origin of `io_since`.
    epoch: Instant,
    /// When the write or sync in progress began, in microseconds after `epoch` plus one;
    /// zero when none is in progress.
    io_since: AtomicU64,
    /// See [`super::AuditOptions::stall_after`].
    stall_after: Duration,
    /// Records the log holds, durable, as of the writer's last committed batch.
    pub(super) durable_records: AtomicU64,
    /// The number of the last segment this writer sealed (0: none yet).
    pub(super) sealed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub(super) fn new(stall_after: Duration) -> Shared {
        Shared {
            epoch: Instant::now(),
            io_since: AtomicU64::new(0),
            stall_after,
            stopped: OnceLock::new(),
            paused: AtomicBool::new(false),
            health: tokio::sync::watch::Sender::new(true),
            expected: AtomicUsize::new(0),
            writer_waiting: AtomicBool::new(false),
            writer_holding: AtomicBool::new(false),
            writer_thread: OnceLock::new(),
            durable_records: AtomicU64::new(0),
            sealed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Announces a durable record that may be queued soon (a request in progress).
    pub(super) fn expect(&self) {
        self.expected.fetch_add(1, Ordering::SeqCst);
    }

    /// The announced record was queued, or will not be. Wakes a writer waiting for the last
    /// one.
    pub(super) fn expected_done(&self) {
        if self.expected.fetch_sub(1, Ordering::SeqCst) == 1
            && self.writer_waiting.load(Ordering::SeqCst)
            && let Some(thread) = self.writer_thread.get()
        {
            thread.unpark();
        }
    }

    /// A record someone waits for (or the stop record) was queued: wakes a writer holding
    /// records nobody waits for.
    pub(super) fn durable_queued(&self) {
        // Pairs with the fence in `park_while`: either this load sees the flag, or the
        // writer's drain after its fence sees the record.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.writer_holding.load(Ordering::SeqCst)
            && let Some(thread) = self.writer_thread.get()
        {
            thread.unpark();
        }
    }

    /// Parks the writer thread while `waiting()` holds, until `deadline` at the latest.
    /// `flag` is set meanwhile, so that whoever ends the wait unparks the writer. It is set
    /// before `waiting` is first checked: a change made afterwards sees the flag and unparks
    /// (an unpark before the park makes the park return at once). Writer thread only.
    fn park_while(&self, flag: &AtomicBool, deadline: Instant, mut waiting: impl FnMut() -> bool) {
        flag.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        while waiting() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
        flag.store(false, Ordering::SeqCst);
    }

    /// Waits until no announced record is outstanding, or until `deadline`.
    fn wait_for_expected(&self, deadline: Instant) {
        self.park_while(&self.writer_waiting, deadline, || {
            self.expected.load(Ordering::SeqCst) > 0
        });
    }

    /// Stops the log for good. The first reason wins.
    pub(super) fn stop(&self, reason: String) {
        let _ = self.stopped.set(reason);
        self.health.send_replace(false);
    }

    /// Reports the log unhealthy until [`Shared::resume`].
    pub(super) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.health.send_replace(false);
    }

    /// Ends a pause (the log stays unhealthy if it has stopped meanwhile).
    pub(super) fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.health.send_replace(self.stopped.get().is_none());
    }

    /// `Ok` while the log takes records (a paused log does).
    pub(super) fn check(&self) -> Result<(), AuditError> {
        match self.stopped.get() {
            None => Ok(()),
            Some(reason) => Err(AuditError::Unavailable(reason.clone())),
        }
    }

    /// Why the log takes no more records (a failure or a shutdown); `None` while it does.
    pub(super) fn stop_reason(&self) -> Option<String> {
        self.stopped.get().cloned()
    }

    /// The error for a request the writer can no longer answer.
    pub(super) fn unavailable(&self) -> AuditError {
        AuditError::Unavailable(
            self.stopped
                .get()
                .cloned()
                .unwrap_or_else(|| format!("the audit writer stopped; {STOPPED}")),
        )
    }

    pub(super) fn is_paused(&self) -> bool {
        self.stopped.get().is_none() && self.paused.load(Ordering::SeqCst)
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.stopped.get().is_none()
            && !self.paused.load(Ordering::SeqCst)
            && self.stalled().is_none()
    }

    /// The writer begins a write or sync; the returned guard marks its end.
    fn io(&self) -> InIo<'_> {
        let since = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.io_since.store(since + 1, Ordering::Relaxed);
        InIo(self)
    }

    /// How long the write or sync in progress has taken, if longer than `stall_after`.
    pub(super) fn stalled(&self) -> Option<Duration> {
        let since = self.io_since.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let took = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_micros(since - 1));
        (took > self.stall_after).then_some(took)
    }

    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.health.subscribe()
    }
}

/// Where the chain continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tail {
    pub(super) next_seq: u64,
    pub(super) prev: Hash,
    pub(super) tree: Frontier,
}

/// The segment being appended to.
pub(super) struct Segment {
    pub(super) no: u64,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes in the file.
    pub(super) bytes: u64,
    /// SHA-256 of those bytes, named by the next segment's `audit.segment_open`.
    pub(super) sha: Sha256,
    pub(super) first_seq: Option<u64>,
    pub(super) records: u64,
    /// When its first record was written.
    pub(super) started: Option<SystemTime>,
    /// Holds records other than bookkeeping.
    pub(super) content: bool,
}

/// A write or sync of the log in progress (see [`Shared::stalled`]); ends when dropped.
struct InIo<'a>(&'a Shared);

impl Drop for InIo<'_> {
    fn drop(&mut self) {
        self.0.io_since.store(0, Ordering::Relaxed);
    }
}

/// The writer's limits and schedule.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) fsync: bool,
    pub(super) max_batch: usize,
    /// Longest wait, before syncing a batch, for announced records (zero: never wait).
    pub(super) group_commit_wait: Duration,
    pub(super) checkpoint_every_records: u64,
    pub(super) checkpoint_every: Duration,
    pub(super) max_segment_bytes: u64,
    pub(super) max_segment_age: Duration,
    pub(super) min_free_bytes: u64,
    /// The log pauses (see [`Shared`]) while a checkpoint cannot be signed and this many
    /// records are unattested, until the next signed checkpoint.
    pub(super) max_unattested_records: u64,
}

/// Whether [`Writer::commit`] ends the group with a signed checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attest {
    /// No checkpoint (records nobody waits for, bookkeeping, a checkpoint record itself).
    No,
    /// Someone waits for a record: a checkpoint covers the group before anyone hears of it;
    /// when the key cannot sign, the waited-for records are not written.
    Answers,
    /// A checkpoint must cover the group, or the commit fails (start-up).
    Required,
}

/// How long the writer waits before trying again to sign a checkpoint that failed.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

/// Checkpoints that could not be signed, since the last one that was.
struct CheckpointFailure {
    /// The error of the latest attempt.
    error: String,
    /// Failed attempts so far.
    attempts: u64,
    /// No new attempt before this.
    retry_at: Instant,
}

/// Free bytes for unprivileged users on the filesystem holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Total size in bytes of the filesystem holding `dir`.
pub(super) fn fs_size(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

/// Replaces `dir/name` with `bytes`, mode `mode`, so that readers see the old or the new
/// content, never a mix, and a crash leaves one of them: a temporary file `dir/tmp_name`
/// (a leftover from a crash is removed first, never adopted), fsync, rename, fsync of the
/// directory. Shared by the `checkpoint` file, witness cosignatures and the policy archive.
pub(crate) fn replace_file(
    dir: &Path,
    name: &str,
    tmp_name: &str,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let tmp = dir.join(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Writes `note` to `DIR/checkpoint` atomically ([`replace_file`]). Readers see the old or
/// the new checkpoint, never a mix.
pub(super) fn publish_checkpoint(dir: &Path, note: &str) -> Result<(), String> {
    replace_file(
        dir,
        CHECKPOINT_FILE,
        &format!("{CHECKPOINT_FILE}.tmp"),
        note.as_bytes(),
        0o644,
    )
    .map_err(|e| format!("cannot write {}: {e}", dir.join(CHECKPOINT_FILE).display()))
}

/// The writer thread's state.
pub(super) struct Writer {
    /// The log directory; `None` only for tests writing to a bare file (no checkpoint file,
    /// no rotation, no free-space check).
    dir: Option<PathBuf>,
    seg: Segment,
    /// (device, inode) of the open segment, to notice deletion or replacement.
    identity: (u64, u64),
    tail: Tail,
    signer: Arc<dyn CheckpointSigner>,
    settings: Settings,
    /// `seq` of the last `audit.checkpoint` record.
    last_checkpoint_seq: Option<u64>,
    /// The note of that record, once this writer wrote it (not yet published when an answer's
    /// attestation made it).
    last_note: Option<String>,
    /// Records the log held when `DIR/checkpoint` was last written, and when.
    published_records: u64,
    published_at: Instant,
    /// Set while checkpoints cannot be signed.
    checkpoint_failure: Option<CheckpointFailure>,
    shared: Arc<Shared>,
    /// Reused across batches so the hot path does not allocate.
    buf: Vec<u8>,
    ts: Vec<u8>,
    pub(super) receipts: Vec<Receipt>,
    /// Held (and so locked) as long as the writer lives.
    _lock: Option<File>,
    /// The free-space probe (statvfs; tests replace it).
    pub(super) free: fn(&Path) -> std::io::Result<u64>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        dir: Option<PathBuf>,
        seg: Segment,
        tail: Tail,
        last_checkpoint_seq: Option<u64>,
        signer: Arc<dyn CheckpointSigner>,
        settings: Settings,
        lock: Option<File>,
        shared: Arc<Shared>,
    ) -> Result<Writer, AuditError> {
        let identity = identity_of(&seg.file, &seg.path).map_err(AuditError::Open)?;
        let published_records = tail.next_seq;
        Ok(Writer {
            dir,
            seg,
            identity,
            tail,
            signer,
            settings,
            published_records,
            last_checkpoint_seq,
            last_note: None,
            published_at: Instant::now(),
            checkpoint_failure: None,
            shared,
            buf: Vec::with_capacity(64 * 1024),
            ts: Vec::with_capacity(32),
            receipts: Vec::new(),
            _lock: lock,
            free: super::free_bytes,
        })
    }

    /// Records after the last checkpoint record.
    fn unattested(&self) -> u64 {
        self.tail.next_seq - self.last_checkpoint_seq.map_or(0, |s| s + 1)
    }

    /// Refuses to write when the audit filesystem is below `min_free_bytes`.
    pub(super) fn check_space(&self) -> Result<(), String> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if self.settings.min_free_bytes == 0 {
            return Ok(());
        }
        let free = (self.free)(dir).map_err(|e| {
            format!(
                "cannot read the free space of the audit filesystem at {}: {e}; {STOPPED}",
                dir.display()
            )
        })?;
        if free < self.settings.min_free_bytes {
            return Err(format!(
                "the audit filesystem at {} has {free} bytes free, less than audit.min_free_bytes = {}; {STOPPED}",
                dir.display(),
                self.settings.min_free_bytes
            ));
        }
        Ok(())
    }

    /// Appends one record line for `kind`/`body` at the position `tail` to `self.buf`, and
    /// advances `tail`. Returns the record's receipt.
    fn encode(&mut self, tail: &mut Tail, kind: &str, body: &[u8]) -> Result<Receipt, String> {
        let start = self.buf.len();
        let mut prev_hex = [0u8; 64];
        self.buf.extend_from_slice(b"{\"v\":1,\"seq\":");
        write!(self.buf, "{}", tail.next_seq).map_err(|e| format!("seq: {e}"))?;
        self.buf.extend_from_slice(b",\"ts\":\"");
        self.buf.extend_from_slice(&self.ts);
        // `kind` was checked to need no escaping by Record::encode.
        self.buf.extend_from_slice(b"\",\"type\":\"");
        self.buf.extend_from_slice(kind.as_bytes());
        self.buf.push(b'"');
        self.buf.extend_from_slice(body);
        self.buf.extend_from_slice(b",\"prev\":\"");
        hex::encode_to_slice(tail.prev, &mut prev_hex).map_err(|e| format!("prev: {e}"))?;
        self.buf.extend_from_slice(&prev_hex);
        self.buf.extend_from_slice(b"\"}");
        let leaf = merkle::leaf_hash(&self.buf[start..]);
        self.buf.push(b'\n');
        let receipt = Receipt {
            seq: tail.next_seq,
            leaf_hash: leaf,
        };
        tail.tree.push(leaf);
        tail.prev = leaf;
        tail.next_seq = tail
            .next_seq
            .checked_add(1)
            .ok_or_else(|| format!("seq overflows; {STOPPED}"))?;
        Ok(receipt)
    }

    /// Encodes the records of `batch` that `keep` selects into `self.buf`, from the writer's
    /// tail; returns the tail after them and whether any is a content record.
    fn encode_batch(
        &mut self,
        batch: &[Msg],
        keep: impl Fn(&Msg) -> bool,
    ) -> Result<(Tail, bool), String> {
        self.buf.clear();
        self.receipts.clear();
        let mut tail = self.tail.clone();
        let mut content = false;
        for msg in batch {
            if !keep(msg) {
                // Keeps `receipts[i]` the receipt of `batch[i]`; never sent (see `commit`).
                self.receipts.push(Receipt {
                    seq: u64::MAX,
                    leaf_hash: [0; 32],
                });
                continue;
            }
            let receipt = self.encode(&mut tail, msg.kind, &msg.body)?;
            self.receipts.push(receipt);
            content |= !Kind::parse(msg.kind).is_some_and(Kind::is_bookkeeping);
        }
        Ok((tail, content))
    }

    /// Writes `batch` as one group: envelope, chain, tree, one write, and one sync when fsync is
    /// enabled and someone waits for a record of the batch, or when `force_sync`. On success
    /// `self.receipts[i]` is the receipt of `batch[i]`. On error the message says what failed;
    /// the caller must stop the log.
    ///
    /// With `attest` other than [`Attest::No`], the group ends with an `audit.checkpoint` over
    /// every record up to it, signed before anything is written and made durable by the same
    /// write and sync: nobody hears of a record before a signed tree head covers it. When the
    /// key cannot sign, [`Attest::Answers`] writes only the records nobody waits for (and the
    /// stop record) and returns the signing error for the waiters, which the caller answers
    /// with [`AuditError::Unavailable`]; [`Attest::Required`] fails.
    pub(super) fn commit(
        &mut self,
        batch: &[Msg],
        force_sync: bool,
        attest: Attest,
    ) -> Result<Option<String>, String> {
        self.check_identity()?;
        // One clock read per batch: the records of a group become durable together.
        let now = SystemTime::now();
        if now.duration_since(UNIX_EPOCH).is_err() {
            return Err(format!("the system clock is before 1970; {STOPPED}"));
        }
        self.ts.clear();
        write!(self.ts, "{}", humantime::format_rfc3339_micros(now))
            .map_err(|e| format!("timestamp: {e}"))?;
        let (mut tail, mut content) = self.encode_batch(batch, |_| true)?;
        let mut refused = None;
        let mut attestation = None;
        if attest != Attest::No {
            let signed = match &self.checkpoint_failure {
                // The key failed a moment ago: the answers wait no longer than that.
                Some(f) if attest == Attest::Answers && Instant::now() < f.retry_at => {
                    Err(f.error.clone())
                }
                _ => self.sign_at(&tail),
            };
            match signed {
                Ok((_, note)) => {
                    let record = Record::from_event(&AuditCheckpoint {
                        size: tail.next_seq,
                        root: hex::encode(tail.tree.root()),
                        note: note.clone(),
                    });
                    let body = record.encode().map_err(|e| e.to_string())?;
                    let seq = tail.next_seq;
                    self.encode(&mut tail, record.kind(), &body)?;
                    attestation = Some((seq, note));
                }
                Err(e) if attest == Attest::Answers => {
                    // The answers wait; records nobody waits for are written unattested.
                    (tail, content) = self.encode_batch(batch, |m| m.reply.is_none() || m.stop)?;
                    refused = Some(e);
                }
                Err(e) => return Err(format!("cannot sign the audit checkpoint: {e}; {STOPPED}")),
            }
        }
        if self.buf.is_empty() {
            return Ok(refused);
        }
        let records = tail.next_seq - self.tail.next_seq;
        let io = self.shared.io();
        self.seg.file.write_all(&self.buf).map_err(|e| {
            format!(
                "write to {} failed: {e}; {STOPPED}",
                self.seg.path.display()
            )
        })?;
        // fdatasync makes every earlier write of the file durable too, so a batch that nobody
        // waits on (records appended without waiting) is synced by the next batch that someone
        // does wait on; syncing it on its own would only add a flush to the hot path.
        let waited_on = batch.iter().any(|m| m.reply.is_some());
        let mut synced = None;
        if (self.settings.fsync && waited_on) || force_sync {
            let t = Instant::now();
            #[cfg(test)]
            if let Some(delay) = self.dir.as_deref().and_then(super::tests::fake_sync_delay) {
                std::thread::sleep(delay);
            }
            self.seg.file.sync_data().map_err(|e| {
                format!("sync of {} failed: {e}; {STOPPED}", self.seg.path.display())
            })?;
            synced = Some(t.elapsed());
        }
        crate::metrics::audit_batch(records, self.buf.len() as u64, synced);
        if self.seg.first_seq.is_none() {
            self.seg.first_seq = Some(self.tail.next_seq);
            self.seg.started = Some(now);
        }
        self.seg.records += records;
        self.seg.bytes += self.buf.len() as u64;
        self.seg.sha.update(&self.buf);
        self.seg.content |= content;
        self.tail = tail;
        drop(io);
        if let Some((seq, note)) = attestation {
            self.attested(seq, note);
        }
        Ok(refused)
    }

    /// Signs a checkpoint of every record so far, appends it as `audit.checkpoint` (synced)
    /// and publishes it to `DIR/checkpoint`. Any failure, signing included, is final: this is
    /// for start-up, where signerd refuses to start without a checkpoint key that signs.
    pub(super) fn write_checkpoint(&mut self) -> Result<(), String> {
        let (checkpoint, note) = self
            .sign_checkpoint()
            .map_err(|e| format!("{e}; {STOPPED}"))?;
        self.append_checkpoint(&checkpoint, &note)
    }

    fn sign_checkpoint(&self) -> Result<(Checkpoint, String), String> {
        self.sign_at(&self.tail)
    }

    /// Signs the checkpoint of the tree at `tail`.
    fn sign_at(&self, tail: &Tail) -> Result<(Checkpoint, String), String> {
        let checkpoint = Checkpoint {
            origin: self.signer.name().to_owned(),
            size: tail.next_seq,
            root: tail.tree.root(),
        };
        let note = checkpoint
            .sign(self.signer.as_ref())
            .map_err(|e| e.to_string())?;
        Ok((checkpoint, note))
    }

    fn append_checkpoint(&mut self, checkpoint: &Checkpoint, note: &str) -> Result<(), String> {
        let record = Record::from_event(&AuditCheckpoint {
            size: checkpoint.size,
            root: hex::encode(checkpoint.root),
            note: note.to_owned(),
        });
        let msg = Msg::internal(&record)?;
        let seq = self.tail.next_seq;
        self.commit(std::slice::from_ref(&msg), true, Attest::No)?;
        self.attested(seq, note.to_owned());
        self.publish()
    }

    /// After the `audit.checkpoint` record `seq` with `note` was written: it attests every
    /// record before it; a key that failed signs again.
    fn attested(&mut self, seq: u64, note: String) {
        self.last_checkpoint_seq = Some(seq);
        self.last_note = Some(note);
        crate::metrics::checkpoint_written();
        if let Some(failure) = self.checkpoint_failure.take() {
            tracing::info!(
                failed_attempts = failure.attempts,
                size = seq,
                "audit checkpoints are signed again"
            );
            self.shared.resume();
        }
    }

    /// Writes the note of the last checkpoint record to `DIR/checkpoint`.
    fn publish(&mut self) -> Result<(), String> {
        if let (Some(dir), Some(note)) = (&self.dir, &self.last_note) {
            publish_checkpoint(dir, note).map_err(|e| format!("{e}; {STOPPED}"))?;
        }
        self.published_records = self.tail.next_seq;
        self.published_at = Instant::now();
        Ok(())
    }

    /// Publishes a checkpoint of every record so far: the last checkpoint record's when no
    /// record follows it, else a new one ([`Writer::checkpoint`]).
    fn publish_latest(&mut self) -> Result<(), String> {
        if self.unattested() == 0 && self.last_note.is_some() {
            return self.publish();
        }
        self.checkpoint()
    }

    /// Checkpoints while serving. A key that cannot sign (an HSM or Vault that is away) is
    /// not final, unlike a failed write: the records stay durable and chained, the attempt is
    /// repeated every [`CHECKPOINT_RETRY`], and the log pauses (no new request is admitted)
    /// once `max_unattested_records` wait for a checkpoint, until one is signed. Errors
    /// returned are write failures, which stop the log.
    fn checkpoint(&mut self) -> Result<(), String> {
        let (checkpoint, note) = match self.sign_checkpoint() {
            Ok(signed) => signed,
            Err(e) => {
                self.checkpoint_failed(e, false);
                return Ok(());
            }
        };
        self.append_checkpoint(&checkpoint, &note)
    }

    /// Notes a checkpoint that could not be signed. `answering`: it had to cover records that
    /// someone waits for, who are refused; nothing can be answered until the key signs again,
    /// so the log pauses at once (health says so), instead of at `max_unattested_records`.
    fn checkpoint_failed(&mut self, error: String, answering: bool) {
        crate::metrics::checkpoint_failed();
        let unattested = self.unattested();
        let retry_at = Instant::now() + CHECKPOINT_RETRY;
        match &mut self.checkpoint_failure {
            Some(f) => {
                f.attempts += 1;
                f.retry_at = retry_at;
                if f.error != error {
                    tracing::error!(error = %error, unattested, "the audit checkpoint still cannot be signed");
                    f.error = error.clone();
                }
            }
            None => {
                tracing::error!(
                    error = %error,
                    unattested,
                    limit = self.settings.max_unattested_records,
                    "the audit checkpoint cannot be signed: nothing is answered until it is; \
                     records nobody waits for stay durable, and signing pauses if they reach \
                     audit.max_unattested_records"
                );
                self.checkpoint_failure = Some(CheckpointFailure {
                    error: error.clone(),
                    attempts: 1,
                    retry_at,
                });
            }
        }
        if (answering || unattested >= self.settings.max_unattested_records)
            && !self.shared.is_paused()
        {
            tracing::error!(
                unattested,
                limit = self.settings.max_unattested_records,
                "signing is paused: the audit signing key cannot sign checkpoints, and nothing is \
                 answered before one covers it; it resumes by itself once the key signs again"
            );
            self.shared.pause();
        }
    }

    /// Seals the active segment, starts the next one and checkpoints. The segment is sealed
    /// only once a checkpoint covers every record before the seal, so that a sealed segment
    /// never holds records that no signed tree head covers (recovery could not move them aside).
    fn rotate(&mut self) -> Result<(), String> {
        if self.unattested() > 0 {
            self.checkpoint()?;
            if self.unattested() > 0 {
                // The key cannot sign; the rotation waits for it.
                return Ok(());
            }
        }
        let name = segment_name(self.seg.no);
        let seal = AuditSegmentSeal {
            segment: name,
            first_seq: self.seg.first_seq.unwrap_or(self.tail.next_seq),
            records: self.seg.records + 1,
        };
        self.commit(
            &[Msg::internal(&Record::from_event(&seal))?],
            true,
            Attest::No,
        )?;
        let open = self.open_next_segment()?;
        self.commit(&[open], true, Attest::No)?;
        self.checkpoint()?;
        // The sealed segment is durable and read-only: snapshots may be built from it.
        self.shared.sealed.send_replace(self.seg.no - 1);
        Ok(())
    }

    /// After the active segment was sealed: makes it read-only, creates the next segment and
    /// switches to it. Returns its `audit.segment_open` record, to be written first.
    pub(super) fn open_next_segment(&mut self) -> Result<Msg, String> {
        let Some(dir) = self.dir.clone() else {
            return Err("cannot rotate a log without a directory".to_owned());
        };
        let old_name = segment_name(self.seg.no);
        fs::set_permissions(&self.seg.path, fs::Permissions::from_mode(0o400)).map_err(|e| {
            format!(
                "cannot make the sealed segment {} read-only: {e}; {STOPPED}",
                self.seg.path.display()
            )
        })?;
        self.seg
            .file
            .sync_all()
            .map_err(|e| format!("sync of {} failed: {e}; {STOPPED}", self.seg.path.display()))?;
        let old_sha: Hash = self.seg.sha.clone().finalize().into();
        let old_bytes = self.seg.bytes;
        let no = self.seg.no + 1;
        let path = dir.join(segment_name(no));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}; {STOPPED}", path.display()))?;
        // The new directory entry must survive a crash along with the records in the file.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync directory {}: {e}; {STOPPED}", dir.display()))?;
        self.identity = identity_of(&file, &path)?;
        self.seg = Segment {
            no,
            path,
            file,
            bytes: 0,
            sha: Sha256::new(),
            first_seq: None,
            records: 0,
            started: None,
            content: false,
        };
        let open = AuditSegmentOpen {
            segment: segment_name(no),
            previous: old_name,
            previous_sha256: hex::encode(old_sha),
            previous_bytes: old_bytes,
        };
        Msg::internal(&Record::from_event(&open))
    }

    /// Checkpoints and rotates when due.
    fn maintain(&mut self) -> Result<(), String> {
        if self.dir.is_none() {
            return Ok(());
        }
        let age = self
            .seg
            .started
            .and_then(|s| SystemTime::now().duration_since(s).ok())
            .unwrap_or_default();
        if self.seg.content
            && (self.seg.bytes >= self.settings.max_segment_bytes
                || age >= self.settings.max_segment_age)
        {
            return self.rotate();
        }
        let unpublished = self.tail.next_seq - self.published_records;
        let due = unpublished >= self.settings.checkpoint_every_records
            || (unpublished > 0 && self.published_at.elapsed() >= self.settings.checkpoint_every);
        let may_try = self
            .checkpoint_failure
            .as_ref()
            .is_none_or(|f| Instant::now() >= f.retry_at);
        if self.checkpoint_failure.is_some() {
            // While the key fails, a checkpoint is tried every second even with nothing new to
            // cover: the pause ends only with a signed one.
            return if may_try { self.checkpoint() } else { Ok(()) };
        }
        if due {
            return self.publish_latest();
        }
        Ok(())
    }

    /// How long the thread may sleep before [`Writer::maintain`] has work; `None` if it has
    /// none until records arrive.
    fn next_deadline(&self) -> Option<Duration> {
        self.dir.as_ref()?;
        let mut next: Option<Duration> = None;
        if let Some(f) = &self.checkpoint_failure {
            next = Some(f.retry_at.saturating_duration_since(Instant::now()));
        } else if self.tail.next_seq > self.published_records {
            next = Some(
                self.settings
                    .checkpoint_every
                    .saturating_sub(self.published_at.elapsed()),
            );
        }
        if self.seg.content {
            let age = self
                .seg
                .started
                .and_then(|s| SystemTime::now().duration_since(s).ok())
                .unwrap_or_default();
            let left = self.settings.max_segment_age.saturating_sub(age);
            next = Some(next.map_or(left, |n| n.min(left)));
        }
        next
    }

    /// Fails if the segment path no longer names the open file: whatever deleted or replaced
    /// it would make our records invisible to anyone reading the directory.
    fn check_identity(&self) -> Result<(), String> {
        let path = &self.seg.path;
        match fs::metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => Ok(()),
            Ok(m) => Err(format!(
                "segment file {} was replaced while open (device:inode {}:{} is now {}:{}); {STOPPED}",
                path.display(),
                self.identity.0,
                self.identity.1,
                m.dev(),
                m.ino()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "segment file {} was deleted while open; {STOPPED}",
                path.display()
            )),
            Err(e) => Err(format!(
                "cannot inspect segment file {}: {e}; {STOPPED}",
                path.display()
            )),
        }
    }

    fn fail(&self, reason: &str, batch: &mut Vec<Msg>) {
        tracing::error!(error = %reason, "audit log failed");
        self.shared.stop(reason.to_owned());
        for msg in batch.drain(..) {
            if let Some(reply) = msg.reply {
                let _ = reply.send(Err(AuditError::Unavailable(reason.to_owned())));
            }
        }
    }

    /// Whether the writer may hold `batch` at all: not at a stop, not without syncs or with
    /// the hold turned off, and not when the batch is full.
    fn may_hold(&self, batch: &[Msg], stop: bool) -> bool {
        !stop
            && self.settings.fsync
            && !self.settings.group_commit_wait.is_zero()
            && batch.len() < self.settings.max_batch
    }

    /// Whether to hold a batch that nobody waits for. Written on its own it would cost a
    /// write now and leave the next group its sync anyway; held, it joins that group's write.
    fn should_hold(&self, batch: &[Msg], stop: bool) -> bool {
        self.may_hold(batch, stop) && batch.iter().all(|m| m.reply.is_none())
    }

    /// Holds a batch that nobody waits for until a record someone waits for (or the stop
    /// record) is queued, the batch is full, or `group_commit_wait` has passed. Senders of
    /// records nobody waits for do not wake the writer meanwhile. Returns whether the batch
    /// now ends with a stop record.
    fn hold(&self, rx: &Receiver<Msg>, batch: &mut Vec<Msg>, mut stop: bool) -> bool {
        let max_batch = self.settings.max_batch;
        let deadline = Instant::now() + self.settings.group_commit_wait;
        // The fence in `park_while` pairs with the one in `durable_queued`: either the sender
        // sees the flag, or this drain sees the record.
        self.shared
            .park_while(&self.shared.writer_holding, deadline, || {
                stop = drain(rx, batch, stop, max_batch);
                !stop && batch.len() < max_batch && batch.iter().all(|m| m.reply.is_none())
            });
        stop
    }

    /// Whether to wait for announced records before committing `batch`: only when the batch
    /// will be synced for a waiter, has room, and some announced record is still to come.
    fn should_wait(&self, batch: &[Msg], stop: bool) -> bool {
        self.may_hold(batch, stop)
            && self.shared.expected.load(Ordering::SeqCst) > 0
            && batch.iter().any(|m| m.reply.is_some())
    }

    /// The thread body: group commit and maintenance until a stop record, a failure, or every
    /// sender is gone.
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        // Lets senders wake this thread from a hold or a wait for announced records.
        let _ = self.shared.writer_thread.set(std::thread::current());
        let mut batch: Vec<Msg> = Vec::with_capacity(self.settings.max_batch.min(4096));
        loop {
            let first = match self.next_deadline() {
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            if let Some(first) = first {
                let mut stop = first.stop;
                batch.push(first);
                stop = drain(&rx, &mut batch, stop, self.settings.max_batch);
                if self.should_hold(&batch, stop) {
                    stop = self.hold(&rx, &mut batch, stop);
                }
                if self.should_wait(&batch, stop) {
                    // Results of requests in progress join this batch's sync instead of each
                    // paying for one of their own.
                    self.shared
                        .wait_for_expected(Instant::now() + self.settings.group_commit_wait);
                    stop = drain(&rx, &mut batch, stop, self.settings.max_batch);
                }
                let attest = if batch.iter().any(|m| m.reply.is_some()) {
                    Attest::Answers
                } else {
                    Attest::No
                };
                let committed = self
                    .check_space()
                    .and_then(|()| self.commit(&batch, stop, attest));
                let receipts = std::mem::take(&mut self.receipts);
                let (mut written, refused) = match committed {
                    Ok(refused) => (Ok(()), refused),
                    Err(e) => (Err(e), None),
                };
                if let Some(e) = &refused {
                    self.checkpoint_failed(e.clone(), true);
                }
                // At shutdown the last checkpoint covers audit.stop and is published; the stop
                // waiter hears about it only once the checkpoint is durable too.
                if stop && written.is_ok() {
                    written = self.publish_latest();
                    if let Some(f) = &self.checkpoint_failure {
                        tracing::error!(
                            error = %f.error,
                            unattested = self.unattested(),
                            "shut down without a final checkpoint: the records after the last \
                             checkpoint are durable and chained, and the first checkpoint after \
                             the next start covers them"
                        );
                    }
                }
                if let Err(reason) = written {
                    self.fail(&reason, &mut batch);
                    // Queued requests are dropped with the receiver: their waiters get
                    // Unavailable. Nothing is ever written again.
                    return;
                }
                self.shared
                    .durable_records
                    .store(self.tail.next_seq, Ordering::SeqCst);
                for (msg, receipt) in batch.drain(..).zip(receipts.iter()) {
                    let Some(reply) = msg.reply else { continue };
                    // The waiter may have gone away; the record is written regardless.
                    let _ = match &refused {
                        Some(e) if !msg.stop => reply.send(Err(AuditError::Unavailable(format!(
                            "the audit signing key cannot sign the checkpoint that must cover \
                             this record before it is answered ({e}); the record was not written"
                        )))),
                        _ => reply.send(Ok(*receipt)),
                    };
                }
                // Hand the buffer back so the next batch does not allocate.
                self.receipts = receipts;
                if stop {
                    return;
                }
            }
            if let Err(reason) = self.maintain() {
                self.fail(&reason, &mut batch);
                return;
            }
        }
    }
}

/// Moves queued records into `batch` without blocking, up to `max_batch` or a stop record;
/// returns whether the batch now ends with a stop record.
fn drain(rx: &Receiver<Msg>, batch: &mut Vec<Msg>, mut stop: bool, max_batch: usize) -> bool {
    while !stop && batch.len() < max_batch {
        match rx.try_recv() {
            Ok(msg) => {
                stop = msg.stop;
                batch.push(msg);
            }
            Err(_) => break,
        }
    }
    stop
}

fn identity_of(file: &File, path: &Path) -> Result<(u64, u64), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    Ok((meta.dev(), meta.ino()))
}

impl Drop for Writer {
    fn drop(&mut self) {
        // However the thread ends (stop, failure, every handle dropped, panic), the log is
        // unhealthy from now on; a reason set earlier is kept.
        self.shared
            .stop(format!("the audit writer stopped; {STOPPED}"));
    }
}
