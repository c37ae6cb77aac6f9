//! The tamper-evident audit log: durable, hash-chained JSON Lines with group commit.
//!
//! Every record is one line of JSON written once; the bytes on disk are exactly the bytes
//! hashed. Each line carries the envelope `{"v":1,"seq":N,"ts":"...","type":"...", <body>,
//! "prev":"<hex>"}` where `prev` is the RFC 6962 leaf hash (SHA-256(0x00 || line)) of the
//! previous line, so a verifier detects any edit, deletion or reordering. One writer thread
//! does group commit; [`AuditLog::append_durable`] returns only after its record, and every
//! record queued before it, is fsynced. See `docs/audit-log.md` for the format.
//!
//! This module must never re-serialize a written record, write after a failed write or sync
//! (it fails closed: every later request gets [`AuditError::Unavailable`] until an operator
//! restarts signerd), or accept a log on disk whose chain it cannot validate.

mod record;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use record::{MAX_LINE_BYTES, Record};
use writer::{Msg, Shared, Writer};

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

/// Options for [`AuditLog::open`].
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// fdatasync after every group of records. Only benchmarks turn this off.
    pub fsync: bool,
    /// Most records written in one group commit (at least 1).
    pub max_batch: usize,
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
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("segment", &self.inner.path)
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`, continues its sequence and chain, writes `audit.start`.
    ///
    /// `dir` is created with mode 0700 if missing. Opening refuses (with [`AuditError::Open`]) a
    /// path that is not a directory, a segment that is not a regular file, a directory another
    /// writer holds, segments other than the first (rotation is not implemented yet), and any
    /// segment whose chain does not validate or that ends in a torn (unterminated) line.
    /// `audit.start` is fsynced before this returns, whatever `opts.fsync` says.
    pub fn open(dir: &Path, opts: AuditOptions) -> Result<AuditLog, AuditError> {
        let opened = writer::open_segment(dir)?;
        let shared = Arc::new(Shared::new());
        let mut writer = Writer::new(
            opened.file,
            opened.path.clone(),
            opened.tail,
            Some(opened.lock),
            opts.fsync,
            opts.max_batch,
            Arc::clone(&shared),
        )?;
        // Written on this thread, before the writer thread exists: `open` is synchronous and
        // may run inside an async runtime, where blocking on a reply would be wrong.
        let start = Record::new("audit.start")
            .field("pid", std::process::id())
            .field("version", env!("CARGO_PKG_VERSION"));
        let msg = Msg {
            kind: start.kind(),
            body: start.encode()?,
            reply: None,
            stop: false,
        };
        writer
            .commit(std::slice::from_ref(&msg), true)
            .map_err(|e| AuditError::Open(format!("cannot write audit.start: {e}")))?;
        Self::spawn(writer, opened.path, shared)
    }

    /// A log whose writer appends to an arbitrary open `file` checked against `path`, starting
    /// at seq 0 without `audit.start`: lets tests inject real I/O errors (`/dev/full`).
    #[cfg(test)]
    fn with_file(
        file: std::fs::File,
        path: &Path,
        opts: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        let shared = Arc::new(Shared::new());
        let tail = writer::Tail {
            next_seq: 0,
            prev: writer::GENESIS_PREV,
        };
        let writer = Writer::new(
            file,
            path.to_owned(),
            tail,
            None,
            opts.fsync,
            opts.max_batch,
            Arc::clone(&shared),
        )?;
        Self::spawn(writer, path.to_owned(), shared)
    }

    fn spawn(writer: Writer, path: PathBuf, shared: Arc<Shared>) -> Result<AuditLog, AuditError> {
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
                path,
            }),
        })
    }

    fn enqueue(&self, record: &Record, reply: Option<writer::Reply>) -> Result<(), AuditError> {
        self.inner.shared.check()?;
        let msg = Msg {
            kind: record.kind(),
            body: record.encode()?,
            reply,
            stop: false,
        };
        match self.inner.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(AuditError::Unavailable(format!(
                "the audit queue is full ({QUEUE_CAPACITY} records are waiting for the disk); try again later"
            ))),
            Err(TrySendError::Disconnected(_)) => Err(self.inner.shared.unavailable()),
        }
    }

    /// Queues a record without waiting for it to be durable. Records are written in the order
    /// they are queued, so a later durable append makes this one durable too.
    pub fn append(&self, record: Record) -> Result<(), AuditError> {
        self.enqueue(&record, None)
    }

    /// Queues a record and waits until it, and every record queued before it, is fsynced.
    pub async fn append_durable(&self, record: Record) -> Result<Receipt, AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(&record, Some(tx))?;
        match rx.await {
            Ok(answer) => answer,
            // The writer stopped with this record still queued.
            Err(_) => Err(self.inner.shared.unavailable()),
        }
    }

    /// False once a write or sync has failed, the segment was deleted or replaced, or the log
    /// was shut down.
    pub fn is_healthy(&self) -> bool {
        self.inner.shared.is_healthy()
    }

    /// A receiver that flips to `false` when the log fails (or shuts down).
    pub fn health(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.shared.subscribe()
    }

    /// The active segment file.
    pub fn segment_path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes `audit.stop`, syncs and stops the writer. Later appends fail with
    /// [`AuditError::Unavailable`]; a record appended concurrently with the shutdown may be
    /// refused. Calling it again does nothing. Fails if the log had already failed.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        let thread = {
            let mut guard = self.inner.thread.lock().unwrap_or_else(|p| p.into_inner());
            guard.take()
        };
        let Some(thread) = thread else {
            return Ok(());
        };
        let stop = Record::new("audit.stop");
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        let msg = Msg {
            kind: stop.kind(),
            body: stop.encode()?,
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
                // A blocking send (the queue may be full) belongs on a blocking thread.
                match tokio::task::spawn_blocking(move || tx.send(msg)).await {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "signerd-audit-{name}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            TempDir(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
        fn segment(&self) -> PathBuf {
            self.0.join("segment-00000001.jsonl")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn opts() -> AuditOptions {
        AuditOptions {
            fsync: true,
            max_batch: 256,
        }
    }

    /// Independent of the implementation: ring's SHA-256 over 0x00 || line.
    fn ring_leaf(line: &[u8]) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&[0u8]);
        ctx.update(line);
        ctx.finish().as_ref().try_into().unwrap()
    }

    fn lines(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.last(), Some(&b'\n'));
        bytes[..bytes.len() - 1]
            .split(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn json(line: &[u8]) -> serde_json::Value {
        serde_json::from_slice(line).unwrap()
    }

    /// Checks envelope order, seq and chain of a whole segment; returns the leaf hashes.
    fn check_chain(path: &Path) -> Vec<[u8; 32]> {
        let mut prev = [0u8; 32];
        let mut leaves = Vec::new();
        for (i, line) in lines(path).iter().enumerate() {
            let text = std::str::from_utf8(line).unwrap();
            let prefix = format!("{{\"v\":1,\"seq\":{i},\"ts\":\"");
            assert!(text.starts_with(&prefix), "line {i}: {text}");
            let ts = &text[prefix.len()..prefix.len() + 27];
            assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "ts {ts}");
            humantime::parse_rfc3339(ts).unwrap();
            assert!(
                text[prefix.len() + 27..].starts_with("\",\"type\":\""),
                "{text}"
            );
            let suffix = format!(",\"prev\":\"{}\"}}", hex::encode(prev));
            assert!(text.ends_with(&suffix), "line {i}: {text}");
            prev = ring_leaf(line);
            leaves.push(prev);
        }
        leaves
    }

    #[tokio::test]
    async fn writes_exact_envelope_and_chain() {
        let dir = TempDir::new("envelope");
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        log.append(
            Record::new("sign.request")
                .field("req_id", "r1")
                .field("amount", 5),
        )
        .unwrap();
        let receipt = log
            .append_durable(
                Record::new("sign.result")
                    .field("zulu", "last-alphabetically-first")
                    .field("alpha", serde_json::json!({"b": 2, "a": 1}))
                    .field("rule", Option::<&str>::None),
            )
            .await
            .unwrap();
        assert_eq!(receipt.seq, 2);
        log.shutdown().await.unwrap();

        let leaves = check_chain(&dir.segment());
        let lines = lines(&dir.segment());
        assert_eq!(lines.len(), 4);
        assert_eq!(receipt.leaf_hash, leaves[2]);
        let start = json(&lines[0]);
        assert_eq!(start["type"], "audit.start");
        assert_eq!(start["pid"], std::process::id());
        assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
        let text = std::str::from_utf8(&lines[0]).unwrap();
        assert!(text.contains("\"type\":\"audit.start\",\"pid\":"), "{text}");
        assert!(text.ends_with(&format!(",\"prev\":\"{}\"}}", "0".repeat(64))));
        let text = std::str::from_utf8(&lines[1]).unwrap();
        assert!(
            text.contains(r#""type":"sign.request","req_id":"r1","amount":5,"prev":"#),
            "{text}"
        );
        let text = std::str::from_utf8(&lines[2]).unwrap();
        assert!(
            text.contains(r#""type":"sign.result","zulu":"last-alphabetically-first","alpha":{"a":1,"b":2},"rule":null,"prev":"#),
            "{text}"
        );
        assert_eq!(json(&lines[3])["type"], "audit.stop");

        // The directory is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[tokio::test]
    async fn reopen_continues_seq_and_prev() {
        let dir = TempDir::new("reopen");
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        log.append_durable(Record::new("x.one")).await.unwrap();
        log.shutdown().await.unwrap();
        let before = lines(&dir.segment());
        assert_eq!(before.len(), 3);

        let log = AuditLog::open(dir.path(), opts()).unwrap();
        let receipt = log.append_durable(Record::new("x.two")).await.unwrap();
        assert_eq!(receipt.seq, 4);
        log.shutdown().await.unwrap();

        let leaves = check_chain(&dir.segment());
        let after = lines(&dir.segment());
        assert_eq!(&after[..3], &before[..]);
        assert_eq!(json(&after[3])["type"], "audit.start");
        assert_eq!(json(&after[3])["prev"], hex::encode(ring_leaf(&before[2])));
        assert_eq!(receipt.leaf_hash, leaves[4]);
        assert_eq!(after.len(), 6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_many_concurrent_durable_appends() {
        let dir = TempDir::new("group");
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let r = log
                    .append_durable(Record::new("t.n").field("i", i))
                    .await
                    .unwrap();
                (i, r)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        log.shutdown().await.unwrap();

        let mut seqs: Vec<u64> = results.iter().map(|(_, r)| r.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>());
        let leaves = check_chain(&dir.segment());
        let lines = lines(&dir.segment());
        assert_eq!(lines.len(), 1002);
        assert_eq!(json(&lines[0])["type"], "audit.start");
        assert_eq!(json(&lines[1001])["type"], "audit.stop");
        for (i, r) in &results {
            let line = json(&lines[r.seq as usize]);
            assert_eq!(line["i"], *i);
            assert_eq!(r.leaf_hash, leaves[r.seq as usize]);
        }
    }

    #[tokio::test]
    async fn deleted_segment_fails_closed() {
        let dir = TempDir::new("deleted");
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        log.append_durable(Record::new("x.one")).await.unwrap();
        let mut health = log.health();
        assert!(*health.borrow());
        // A handle on the same inode, to see what the writer does after the unlink.
        let original = std::fs::File::open(dir.segment()).unwrap();
        let before = std::fs::read(dir.segment()).unwrap();
        std::fs::remove_file(dir.segment()).unwrap();

        let err = log.append_durable(Record::new("x.two")).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)));
        let msg = err.to_string();
        assert!(msg.contains("was deleted while open"), "{msg}");
        assert!(
            msg.contains("signing is stopped until an operator restarts signerd"),
            "{msg}"
        );
        health.changed().await.unwrap();
        assert!(!*health.borrow());
        assert!(!log.is_healthy());

        let err = log.append(Record::new("x.three")).unwrap_err();
        assert!(err.to_string().contains("was deleted while open"), "{err}");
        let err = log.append_durable(Record::new("x.four")).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)));
        assert!(log.shutdown().await.is_err());

        let mut after = Vec::new();
        std::io::Read::read_to_end(&mut &original, &mut after).unwrap();
        assert_eq!(after, before, "nothing may be written after the failure");
        assert!(
            !dir.segment().exists(),
            "the writer must not recreate the segment"
        );
    }

    #[tokio::test]
    async fn replaced_segment_fails_closed() {
        let dir = TempDir::new("replaced");
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        log.append_durable(Record::new("x.one")).await.unwrap();
        let original = std::fs::File::open(dir.segment()).unwrap();
        let before = std::fs::read(dir.segment()).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"not the log\n").unwrap();
        std::fs::rename(&other, dir.segment()).unwrap();

        let err = log.append_durable(Record::new("x.two")).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("was replaced while open"), "{msg}");
        assert!(!log.is_healthy());
        assert!(!*log.health().borrow());
        assert!(log.append(Record::new("x.three")).is_err());

        assert_eq!(std::fs::read(dir.segment()).unwrap(), b"not the log\n");
        let mut after = Vec::new();
        std::io::Read::read_to_end(&mut &original, &mut after).unwrap();
        assert_eq!(after, before);
    }

    #[tokio::test]
    async fn write_error_fails_closed() {
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap();
        let log = AuditLog::with_file(full, Path::new("/dev/full"), opts()).unwrap();
        let mut health = log.health();
        let err = log.append_durable(Record::new("x.one")).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("audit log unavailable: write to /dev/full failed: "),
            "{msg}"
        );
        assert!(
            msg.contains("No space left on device (os error 28)"),
            "{msg}"
        );
        assert!(
            msg.ends_with("; signing is stopped until an operator restarts signerd"),
            "{msg}"
        );
        health.changed().await.unwrap();
        assert!(!*health.borrow());
        let err = log.append(Record::new("x.two")).unwrap_err();
        assert!(err.to_string().contains("No space left on device"), "{err}");
        let err = log
            .append_durable(Record::new("x.three"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No space left on device"), "{err}");
    }

    #[tokio::test]
    async fn shutdown_stops_appends() {
        let dir = TempDir::new("shutdown");
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        log.shutdown().await.unwrap();
        log.shutdown().await.unwrap();
        assert!(!log.is_healthy());
        let err = log.append(Record::new("x.one")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "audit log unavailable: the audit log is shut down"
        );
        let err = log.append_durable(Record::new("x.one")).await.unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)));
        assert_eq!(lines(&dir.segment()).len(), 2);
    }

    #[tokio::test]
    async fn invalid_record_is_refused_and_log_stays_healthy() {
        let dir = TempDir::new("invalid");
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        let err = log
            .append(Record::new("x.one").field("seq", 7))
            .unwrap_err();
        assert!(matches!(err, AuditError::InvalidRecord(_)), "{err}");
        assert!(log.is_healthy());
        assert_eq!(
            log.append_durable(Record::new("x.two")).await.unwrap().seq,
            1
        );
        log.shutdown().await.unwrap();
    }

    fn open_err(dir: &Path) -> String {
        match AuditLog::open(dir, opts()) {
            Ok(_) => panic!("opened"),
            Err(e) => {
                assert!(matches!(e, AuditError::Open(_)), "{e}");
                e.to_string()
            }
        }
    }

    /// A valid three-record segment (start, one record, stop) and its lines.
    async fn valid_log(dir: &TempDir) -> Vec<Vec<u8>> {
        let log = AuditLog::open(dir.path(), opts()).unwrap();
        log.append_durable(Record::new("x.one").field("note", "hello"))
            .await
            .unwrap();
        log.shutdown().await.unwrap();
        lines(&dir.segment())
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    }

    #[tokio::test]
    async fn refuses_torn_tail() {
        let dir = TempDir::new("torn");
        let lines = valid_log(&dir).await;
        let mut bytes = join(&lines);
        let offset = bytes.len();
        bytes.extend_from_slice(b"{\"v\":1,\"seq\":3,\"ts\"");
        std::fs::write(dir.segment(), &bytes).unwrap();
        let msg = open_err(dir.path());
        assert!(
            msg.contains(&format!(
                "torn tail found at byte offset {offset} (line 4, 19 bytes"
            )),
            "{msg}"
        );
        assert!(msg.contains("recovery is not implemented yet"), "{msg}");
        // Nothing was appended.
        assert_eq!(std::fs::read(dir.segment()).unwrap(), bytes);
    }

    #[tokio::test]
    async fn refuses_broken_chain() {
        let dir = TempDir::new("chain");
        let mut lines = valid_log(&dir).await;
        // Edit one byte of line 2's body: it still parses, but line 3's prev no longer matches.
        let pos = lines[1].windows(5).position(|w| w == b"hello").unwrap();
        lines[1][pos] = b'j';
        std::fs::write(dir.segment(), join(&lines)).unwrap();
        let msg = open_err(dir.path());
        assert!(
            msg.contains("segment-00000001.jsonl line 3: prev is"),
            "{msg}"
        );
        assert!(
            msg.contains("(the leaf hash of the previous line): the hash chain is broken"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn refuses_seq_gap() {
        let dir = TempDir::new("gap");
        let lines = valid_log(&dir).await;
        std::fs::write(dir.segment(), join(&[lines[0].clone(), lines[2].clone()])).unwrap();
        let msg = open_err(dir.path());
        assert!(
            msg.contains("line 2: seq is 2, expected 1: the sequence has a gap or is out of order"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn refuses_bad_first_prev_and_garbage() {
        let dir = TempDir::new("garbage");
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(
            dir.segment(),
            b"{\"v\":1,\"seq\":0,\"ts\":\"t\",\"type\":\"x\",\"prev\":\"ab\"}\n",
        )
        .unwrap();
        let msg = open_err(dir.path());
        assert!(
            msg.contains("line 1: prev is \"ab\", expected 000"),
            "{msg}"
        );
        assert!(msg.contains("64 zeros for the first record"), "{msg}");
        std::fs::write(dir.segment(), b"[1,0,\"t\",\"x\",\"ab\"]\n").unwrap();
        assert!(open_err(dir.path()).contains("line 1: not a JSON object"));
        std::fs::write(dir.segment(), b"{\"v\":1,\n").unwrap();
        assert!(open_err(dir.path()).contains("line 1: not a valid record"));
    }

    #[tokio::test]
    async fn refuses_overlong_line() {
        let dir = TempDir::new("long");
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(dir.segment(), vec![b'x'; MAX_LINE_BYTES + 10]).unwrap();
        let msg = open_err(dir.path());
        assert!(
            msg.contains("line 1 (byte offset 0) is longer than 1048576 bytes"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn refuses_wrong_file_types_and_second_writer() {
        let dir = TempDir::new("types");
        std::fs::create_dir_all(dir.path()).unwrap();
        let not_dir = dir.path().join("file");
        std::fs::write(&not_dir, b"").unwrap();
        assert!(open_err(&not_dir).ends_with("file exists but is not a directory"));

        std::fs::create_dir(dir.segment()).unwrap();
        let msg = open_err(dir.path());
        assert!(
            msg.ends_with("segment-00000001.jsonl exists but is a directory, not a regular file"),
            "{msg}"
        );
        std::fs::remove_dir(dir.segment()).unwrap();

        std::os::unix::fs::symlink("/dev/null", dir.segment()).unwrap();
        assert!(open_err(dir.path()).ends_with("is a symbolic link, not a regular file"));
        std::fs::remove_file(dir.segment()).unwrap();

        let log = AuditLog::open(dir.path(), opts()).unwrap();
        let msg = open_err(dir.path());
        assert!(msg.contains("is locked: another signerd"), "{msg}");
        log.shutdown().await.unwrap();

        std::fs::write(dir.path().join("segment-00000002.jsonl"), b"").unwrap();
        let msg = open_err(dir.path());
        assert!(msg.contains("found segment-00000002.jsonl"), "{msg}");
        assert!(
            msg.contains("segment rotation is not implemented yet"),
            "{msg}"
        );
    }
}
