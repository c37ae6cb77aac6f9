//! The audit writer: opening and validating a segment, and the single writer thread that
//! appends records with group commit.
//!
//! One OS thread owns the segment file. It takes one queued record, drains up to `max_batch`
//! more, gives them consecutive `seq`s, chains each to the previous leaf hash, writes the whole
//! batch with one `write_all`, makes it durable with one `fdatasync`, and only then answers the
//! waiters. It must never retry a failed write or sync (after a failed fsync the page cache
//! state is unknown), never write after a failure (a torn batch must stay the last bytes of the
//! file), and never write to a segment that was deleted or replaced under it.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::record::MAX_LINE_BYTES;
use super::{AuditError, Receipt};

/// Suffix of every message that stops signing, so operators know what to do.
const STOPPED: &str = "signing is stopped until an operator restarts signerd";

/// `prev` of the first record.
pub(super) const GENESIS_PREV: [u8; 32] = [0; 32];

/// The file name of segment `n` (1-based).
pub(super) fn segment_name(n: u64) -> String {
    format!("segment-{n:08}.jsonl")
}

/// The segment number in a file name shaped like [`segment_name`], if it is one.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// RFC 6962 leaf hash: SHA-256(0x00 || line), the line without its newline.
pub(super) fn leaf_hash(line: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(line)
        .finalize()
        .into()
}

/// A reply channel for one record.
pub(super) type Reply = tokio::sync::oneshot::Sender<Result<Receipt, AuditError>>;

/// One queued record.
pub(super) struct Msg {
    pub(super) kind: &'static str,
    /// `,"name":value...`, from [`Record::encode`](super::Record).
    pub(super) body: Vec<u8>,
    pub(super) reply: Option<Reply>,
    /// The last record: sync it, answer, and end the thread.
    pub(super) stop: bool,
}

/// State shared by every handle and the writer thread.
pub(super) struct Shared {
    /// Why the log takes no more records; set once (a failure or a shutdown), never cleared.
    stopped: OnceLock<String>,
    health: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            stopped: OnceLock::new(),
            health: tokio::sync::watch::Sender::new(true),
        }
    }

    /// Stops the log for good. The first reason wins.
    pub(super) fn stop(&self, reason: String) {
        let _ = self.stopped.set(reason);
        self.health.send_replace(false);
    }

    /// `Ok` while the log takes records.
    pub(super) fn check(&self) -> Result<(), AuditError> {
        match self.stopped.get() {
            None => Ok(()),
            Some(reason) => Err(AuditError::Unavailable(reason.clone())),
        }
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

    pub(super) fn is_healthy(&self) -> bool {
        self.stopped.get().is_none()
    }

    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.health.subscribe()
    }
}

/// Where the chain continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tail {
    pub(super) next_seq: u64,
    pub(super) prev: [u8; 32],
}

/// An open, validated segment ready for appending.
pub(super) struct Opened {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) tail: Tail,
    pub(super) lock: File,
}

/// Opens (creating if needed) the audit directory and its active segment, validates the chain
/// and returns where it continues.
pub(super) fn open_segment(dir: &Path) -> Result<Opened, AuditError> {
    let open_err = |what: String| AuditError::Open(what);
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
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(open_err(format!(
                "{} is locked: another signerd (or another audit writer in this process) has this audit log open",
                lock_path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(open_err(format!(
                "cannot lock {}: {e}",
                lock_path.display()
            )));
        }
    }

    // Rotation is not implemented yet: any segment other than the first means a newer version
    // wrote here, and continuing segment 1 would fork the chain.
    let entries =
        fs::read_dir(dir).map_err(|e| open_err(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| open_err(format!("cannot list {}: {e}", dir.display())))?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_segment_name)
            && n != 1
        {
            return Err(open_err(format!(
                "found {} in {}: this version writes only {} (segment rotation is not implemented yet); refusing to open",
                segment_name(n),
                dir.display(),
                segment_name(1)
            )));
        }
    }

    let path = dir.join(segment_name(1));
    let existed = match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => true,
        Ok(m) => {
            let kind = if m.file_type().is_symlink() {
                "a symbolic link"
            } else if m.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            return Err(open_err(format!(
                "{} exists but is {kind}, not a regular file",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(open_err(format!("cannot inspect {}: {e}", path.display()))),
    };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| open_err(format!("cannot open {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| open_err(format!("cannot inspect {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(open_err(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if !existed {
        // The new directory entry must survive a crash along with the records in the file.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| open_err(format!("cannot sync directory {}: {e}", dir.display())))?;
    }
    let tail = read_tail(&file, &path)?;
    Ok(Opened {
        file,
        path,
        tail,
        lock,
    })
}

/// Fields of the envelope the opener checks. Other fields are skipped without being built.
#[derive(serde::Deserialize)]
struct Envelope {
    v: u64,
    seq: u64,
    prev: String,
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "ts")]
    _ts: String,
}

/// Reads the whole segment, checks every line and its link to the previous one, and returns
/// where the chain continues.
fn read_tail(file: &File, path: &Path) -> Result<Tail, AuditError> {
    let name = path.display();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(4096);
    let mut offset: u64 = 0;
    let mut lineno: u64 = 0;
    let mut tail = Tail {
        next_seq: 0,
        prev: GENESIS_PREV,
    };
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| {
                AuditError::Open(format!("cannot read {name} at byte offset {offset}: {e}"))
            })?;
        if n == 0 {
            return Ok(tail);
        }
        lineno += 1;
        let Some(content) = line.strip_suffix(b"\n") else {
            if n > MAX_LINE_BYTES {
                return Err(AuditError::Open(format!(
                    "{name} line {lineno} (byte offset {offset}) is longer than {MAX_LINE_BYTES} bytes; refusing to open"
                )));
            }
            return Err(AuditError::Open(format!(
                "{name}: torn tail found at byte offset {offset} (line {lineno}, {n} bytes without a final newline); \
                 recovery is not implemented yet, refusing to open (fail closed)"
            )));
        };
        check_line(content, &tail).map_err(|why| {
            AuditError::Open(format!("{name} line {lineno}: {why}; refusing to open"))
        })?;
        tail.prev = leaf_hash(content);
        tail.next_seq = tail
            .next_seq
            .checked_add(1)
            .ok_or_else(|| AuditError::Open(format!("{name} line {lineno}: seq overflows")))?;
        offset += n as u64;
    }
}

/// Checks one line (without its newline) against the chain so far.
fn check_line(content: &[u8], tail: &Tail) -> Result<(), String> {
    // serde would also accept a JSON array for a struct; records are objects.
    if content.first() != Some(&b'{') {
        return Err("not a JSON object".to_owned());
    }
    let env: Envelope =
        serde_json::from_slice(content).map_err(|e| format!("not a valid record: {e}"))?;
    if env.v != 1 {
        return Err(format!("unsupported record version v={}", env.v));
    }
    if env.seq != tail.next_seq {
        return Err(format!(
            "seq is {}, expected {}: the sequence has a gap or is out of order",
            env.seq, tail.next_seq
        ));
    }
    let expected = hex::encode(tail.prev);
    if env.prev != expected {
        let of = if tail.next_seq == 0 {
            "64 zeros for the first record".to_owned()
        } else {
            "the leaf hash of the previous line".to_owned()
        };
        return Err(format!(
            "prev is {:?}, expected {expected} ({of}): the hash chain is broken",
            env.prev
        ));
    }
    Ok(())
}

/// The writer thread's state.
pub(super) struct Writer {
    file: File,
    path: PathBuf,
    /// (device, inode) of the open file, to notice deletion or replacement.
    identity: (u64, u64),
    tail: Tail,
    fsync: bool,
    max_batch: usize,
    shared: Arc<Shared>,
    /// Reused across batches so the hot path does not allocate.
    buf: Vec<u8>,
    ts: Vec<u8>,
    receipts: Vec<Receipt>,
    /// Held (and so locked) as long as the writer lives.
    _lock: Option<File>,
}

impl Writer {
    pub(super) fn new(
        file: File,
        path: PathBuf,
        tail: Tail,
        lock: Option<File>,
        fsync: bool,
        max_batch: usize,
        shared: Arc<Shared>,
    ) -> Result<Writer, AuditError> {
        let meta = file
            .metadata()
            .map_err(|e| AuditError::Open(format!("cannot inspect {}: {e}", path.display())))?;
        Ok(Writer {
            file,
            path,
            identity: (meta.dev(), meta.ino()),
            tail,
            fsync,
            max_batch: max_batch.max(1),
            shared,
            buf: Vec::with_capacity(64 * 1024),
            ts: Vec::with_capacity(32),
            receipts: Vec::new(),
            _lock: lock,
        })
    }

    /// Writes `batch` as one group: envelope, chain, one write, one sync (if enabled or
    /// `force_sync`). On success `self.receipts[i]` is the receipt of `batch[i]`. On error the
    /// message says what failed; the caller must stop the log.
    pub(super) fn commit(&mut self, batch: &[Msg], force_sync: bool) -> Result<(), String> {
        self.check_identity()?;
        self.buf.clear();
        self.receipts.clear();
        // One clock read per batch: the records of a group become durable together.
        let now = SystemTime::now();
        if now.duration_since(UNIX_EPOCH).is_err() {
            return Err(format!("the system clock is before 1970; {STOPPED}"));
        }
        self.ts.clear();
        write!(self.ts, "{}", humantime::format_rfc3339_micros(now))
            .map_err(|e| format!("timestamp: {e}"))?;
        let mut prev_hex = [0u8; 64];
        for msg in batch {
            let start = self.buf.len();
            self.buf.extend_from_slice(b"{\"v\":1,\"seq\":");
            write!(self.buf, "{}", self.tail.next_seq).map_err(|e| format!("seq: {e}"))?;
            self.buf.extend_from_slice(b",\"ts\":\"");
            self.buf.extend_from_slice(&self.ts);
            // `kind` was checked to need no escaping by Record::encode.
            self.buf.extend_from_slice(b"\",\"type\":\"");
            self.buf.extend_from_slice(msg.kind.as_bytes());
            self.buf.push(b'"');
            self.buf.extend_from_slice(&msg.body);
            self.buf.extend_from_slice(b",\"prev\":\"");
            hex::encode_to_slice(self.tail.prev, &mut prev_hex)
                .map_err(|e| format!("prev: {e}"))?;
            self.buf.extend_from_slice(&prev_hex);
            self.buf.extend_from_slice(b"\"}");
            let leaf = leaf_hash(&self.buf[start..]);
            self.buf.push(b'\n');
            self.receipts.push(Receipt {
                seq: self.tail.next_seq,
                leaf_hash: leaf,
            });
            self.tail.prev = leaf;
            self.tail.next_seq = self
                .tail
                .next_seq
                .checked_add(1)
                .ok_or_else(|| format!("seq overflows; {STOPPED}"))?;
        }
        self.file
            .write_all(&self.buf)
            .map_err(|e| format!("write to {} failed: {e}; {STOPPED}", self.path.display()))?;
        if self.fsync || force_sync {
            self.file
                .sync_data()
                .map_err(|e| format!("sync of {} failed: {e}; {STOPPED}", self.path.display()))?;
        }
        Ok(())
    }

    /// Fails if the segment path no longer names the open file: whatever deleted or replaced
    /// it would make our records invisible to anyone reading the directory.
    fn check_identity(&self) -> Result<(), String> {
        match fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => Ok(()),
            Ok(m) => Err(format!(
                "segment file {} was replaced while open (device:inode {}:{} is now {}:{}); {STOPPED}",
                self.path.display(),
                self.identity.0,
                self.identity.1,
                m.dev(),
                m.ino()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "segment file {} was deleted while open; {STOPPED}",
                self.path.display()
            )),
            Err(e) => Err(format!(
                "cannot inspect segment file {}: {e}; {STOPPED}",
                self.path.display()
            )),
        }
    }

    /// The thread body: group commit until a stop record, a failure, or every sender is gone.
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        let mut batch: Vec<Msg> = Vec::with_capacity(self.max_batch.min(4096));
        while let Ok(first) = rx.recv() {
            let mut stop = first.stop;
            batch.push(first);
            while !stop && batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(msg) => {
                        stop = msg.stop;
                        batch.push(msg);
                    }
                    Err(_) => break,
                }
            }
            match self.commit(&batch, stop) {
                Ok(()) => {
                    for (msg, receipt) in batch.drain(..).zip(self.receipts.iter()) {
                        if let Some(reply) = msg.reply {
                            // The waiter may have gone away; the record is written regardless.
                            let _ = reply.send(Ok(*receipt));
                        }
                    }
                }
                Err(reason) => {
                    tracing::error!(error = %reason, "audit log failed");
                    self.shared.stop(reason.clone());
                    for msg in batch.drain(..) {
                        if let Some(reply) = msg.reply {
                            let _ = reply.send(Err(AuditError::Unavailable(reason.clone())));
                        }
                    }
                    // Queued requests are dropped with the receiver: their waiters get
                    // Unavailable. Nothing is ever written again.
                    return;
                }
            }
            if stop {
                return;
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // However the thread ends (stop, failure, every handle dropped, panic), the log is
        // unhealthy from now on; a reason set earlier is kept.
        self.shared
            .stop(format!("the audit writer stopped; {STOPPED}"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(1), "segment-00000001.jsonl");
        assert_eq!(parse_segment_name("segment-00000002.jsonl"), Some(2));
        assert_eq!(parse_segment_name("segment-2.jsonl"), None);
        assert_eq!(parse_segment_name("segment-0000000x.jsonl"), None);
        assert_eq!(parse_segment_name("segment-00000001.json"), None);
    }
}
