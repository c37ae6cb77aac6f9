//! Tests of the audit log writer against real files: envelope and chain, group commit,
//! fail-closed cases, checkpoints, rotation and crash recovery (every byte offset of a torn
//! tail), each log checked with the auditor crate's verifier. The verifier, proofs and queries
//! themselves are tested in that crate (`signerd/auditor`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use signerd_auditor::note::verify_note;
use signerd_auditor::segments;
use signerd_auditor::verify::{self, VerifyOptions, verify_dir};

use super::*;

/// An Ed25519 checkpoint key held in memory.
struct MemorySigner {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl MemorySigner {
    fn from_seed(name: &str, seed: [u8; 32]) -> MemorySigner {
        MemorySigner {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }
}

impl CheckpointSigner for MemorySigner {
    fn name(&self) -> &str {
        &self.name
    }
    fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(message).to_bytes())
    }
}

/// Pretended free space per directory (see [`super::free_bytes`]).
static FAKE_FREE: Mutex<Vec<(PathBuf, u64)>> = Mutex::new(Vec::new());

pub(super) fn fake_free(dir: &Path) -> Option<u64> {
    let fake = FAKE_FREE.lock().unwrap_or_else(|p| p.into_inner());
    fake.iter().find(|(d, _)| d == dir).map(|(_, v)| *v)
}

/// Pretended extra time per sync, per directory (see `Writer::commit`).
static FAKE_SYNC_DELAY: Mutex<Vec<(PathBuf, Duration)>> = Mutex::new(Vec::new());

pub(super) fn fake_sync_delay(dir: &Path) -> Option<Duration> {
    let fake = FAKE_SYNC_DELAY.lock().unwrap_or_else(|p| p.into_inner());
    fake.iter().find(|(d, _)| d == dir).map(|(_, v)| *v)
}

fn set_fake_sync_delay(dir: &Path, delay: Duration) {
    let mut fake = FAKE_SYNC_DELAY.lock().unwrap();
    fake.retain(|(d, _)| d != dir);
    fake.push((dir.to_owned(), delay));
}

fn set_fake_free(dir: &Path, free: u64) {
    let mut fake = FAKE_FREE.lock().unwrap();
    fake.retain(|(d, _)| d != dir);
    fake.push((dir.to_owned(), free));
}

/// A path for an audit directory, not created yet, inside a fresh temp dir that is removed
/// (sealed, read-only segments included: the directory is ours) on drop.
struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let root = tempfile::Builder::new()
            .prefix("signerd-audit-")
            .tempdir()
            .unwrap();
        TempDir(root.path().join(name), root)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn segment(&self) -> PathBuf {
        self.seg(1)
    }
    fn seg(&self, n: u64) -> PathBuf {
        self.0.join(segments::segment_name(n))
    }
}

const ORIGIN: &str = "test.example/audit";

fn signer() -> Arc<MemorySigner> {
    Arc::new(MemorySigner::from_seed(ORIGIN, [42; 32]))
}

fn vkey() -> VerifierKey {
    let s = signer();
    VerifierKey::new(ORIGIN, &s.public_key()).unwrap()
}

fn opts() -> AuditOptions {
    AuditOptions {
        min_free_bytes: Some(0),
        ..AuditOptions::new(signer())
    }
}

/// Independent of the implementation: ring's SHA-256 over 0x00 || line.
fn ring_leaf(line: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&[0u8]);
    ctx.update(line);
    ctx.finish().as_ref().try_into().unwrap()
}

fn ring_sha(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    if bytes.is_empty() {
        return Vec::new();
    }
    assert_eq!(bytes.last(), Some(&b'\n'));
    bytes[..bytes.len() - 1]
        .split(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// Every line of every segment, in order.
fn all_lines(dir: &Path) -> Vec<Vec<u8>> {
    segments::list(dir)
        .unwrap()
        .iter()
        .flat_map(|s| lines(&s.path))
        .collect()
}

fn json(line: &[u8]) -> serde_json::Value {
    serde_json::from_slice(line).unwrap()
}

fn types(dir: &Path) -> Vec<String> {
    all_lines(dir)
        .iter()
        .map(|l| json(l)["type"].as_str().unwrap().to_owned())
        .collect()
}

fn verify(dir: &Path) -> verify::Report {
    verify_dir(
        dir,
        &VerifyOptions {
            key: Some(vkey()),
            checkpoints: Vec::new(),
            live: false,
            since: None,
        },
    )
    .unwrap_or_else(|f| panic!("verify {}: {f}", dir.display()))
}

fn verify_err(dir: &Path) -> String {
    match verify_dir(
        dir,
        &VerifyOptions {
            key: Some(vkey()),
            checkpoints: Vec::new(),
            live: false,
            since: None,
        },
    ) {
        Ok(r) => panic!("verify passed: {r:?}"),
        Err(f) => f.to_string(),
    }
}

/// Checks envelope order, seq and chain of all segments; returns the leaf hashes.
fn check_chain(dir: &Path) -> Vec<[u8; 32]> {
    let mut prev = [0u8; 32];
    let mut leaves = Vec::new();
    for (i, line) in all_lines(dir).iter().enumerate() {
        let text = std::str::from_utf8(line).unwrap();
        let prefix = format!("{{\"v\":1,\"seq\":{i},\"ts\":\"");
        assert!(text.starts_with(&prefix), "line {i}: {text}");
        let ts = &text[prefix.len()..prefix.len() + 27];
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "ts {ts}");
        signerd_auditor::rfc3339::parse(ts).unwrap();
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

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

fn open_err_with(dir: &Path, o: AuditOptions) -> String {
    match AuditLog::open(dir, o) {
        Ok(_) => panic!("opened"),
        Err(e) => {
            assert!(matches!(e, AuditError::Open(_)), "{e}");
            e.to_string()
        }
    }
}

fn open_err(dir: &Path) -> String {
    open_err_with(dir, opts())
}

/// Opens after a simulated crash: the dropped writer thread releases the lock shortly.
fn reopen(dir: &Path, o: AuditOptions) -> AuditLog {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match AuditLog::open(dir, o.clone()) {
            Ok(log) => return log,
            Err(e)
                if e.to_string().contains("is locked") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reopen {}: {e}", dir.display()),
        }
    }
}

/// Drops the log without shutdown (a crash as far as the files are concerned) and waits
/// until its writer has released the directory.
fn crash(log: AuditLog) {
    drop(log);
}

#[tokio::test]
async fn writes_exact_envelope_chain_and_final_checkpoint() {
    let dir = TempDir::new("envelope");
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.verifier_key(), &vkey());
    log.append(
        Record::new("sign.request")
            .field("req_id", "r1")
            .field("amount", 5),
    )
    .unwrap();
    let receipt = log
        .append_durable(
            Record::new("x.result")
                .field("zulu", "last-alphabetically-first")
                .field("alpha", serde_json::json!({"b": 2, "a": 1}))
                .field("rule", Option::<&str>::None),
        )
        .await
        .unwrap();
    assert_eq!(receipt.seq, 3);
    log.shutdown().await.unwrap();

    let leaves = check_chain(dir.path());
    let lines = lines(&dir.segment());
    assert_eq!(lines.len(), 7);
    assert_eq!(receipt.leaf_hash, leaves[3]);
    let start = json(&lines[0]);
    assert_eq!(start["type"], "audit.start");
    assert_eq!(start["pid"], std::process::id());
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["checkpoint_key"], vkey().to_string());
    let text = std::str::from_utf8(&lines[0]).unwrap();
    assert!(text.contains("\"type\":\"audit.start\",\"pid\":"), "{text}");
    assert!(text.ends_with(&format!(",\"prev\":\"{}\"}}", "0".repeat(64))));
    // Start-up ends with a checkpoint of its own records.
    assert_eq!(json(&lines[1])["type"], "audit.checkpoint");
    assert_eq!(json(&lines[1])["size"], 1);
    let text = std::str::from_utf8(&lines[2]).unwrap();
    assert!(
        text.contains(r#""type":"sign.request","req_id":"r1","amount":5,"prev":"#),
        "{text}"
    );
    let text = std::str::from_utf8(&lines[3]).unwrap();
    assert!(
        text.contains(r#""type":"x.result","zulu":"last-alphabetically-first","alpha":{"a":1,"b":2},"rule":null,"prev":"#),
        "{text}"
    );
    // The record someone waited for was answered only with the checkpoint that covers it,
    // written in the same group (one timestamp).
    let attest = json(&lines[4]);
    assert_eq!(attest["type"], "audit.checkpoint");
    assert_eq!(attest["size"], 4);
    assert_eq!(attest["ts"], json(&lines[3])["ts"]);
    assert_eq!(attest["root"], hex::encode(merkle::root(&leaves[..4])));
    verify_note(attest["note"].as_str().unwrap(), &vkey()).unwrap();
    assert_eq!(json(&lines[5])["type"], "audit.stop");

    // The final checkpoint covers every record before it, audit.stop included.
    let cp = json(&lines[6]);
    assert_eq!(cp["type"], "audit.checkpoint");
    assert_eq!(cp["size"], 6);
    let root = merkle::root(&leaves[..6]);
    assert_eq!(cp["root"], hex::encode(root));
    let note = cp["note"].as_str().unwrap();
    let checked = verify_note(note, &vkey()).unwrap();
    assert_eq!(checked.size, 6);
    assert_eq!(checked.root, root);
    assert_eq!(checked.origin, ORIGIN);
    let file = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    assert_eq!(file, note);

    // The directory is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let r = verify(dir.path());
    assert_eq!(r.stats.records, 7);
    assert_eq!(r.unattested, 0);
    assert!(r.checkpoint_file);
}

#[tokio::test]
async fn reopen_continues_seq_prev_and_tree() {
    let dir = TempDir::new("reopen");
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    log.append_durable(Record::new("x.one")).await.unwrap();
    log.shutdown().await.unwrap();
    let before = lines(&dir.segment());
    // audit.start, its checkpoint, x.one and its attestation, audit.stop, the last checkpoint.
    assert_eq!(before.len(), 6);

    let log = AuditLog::open(dir.path(), opts()).unwrap();
    let receipt = log.append_durable(Record::new("x.two")).await.unwrap();
    assert_eq!(receipt.seq, 8);
    log.shutdown().await.unwrap();

    let leaves = check_chain(dir.path());
    let after = lines(&dir.segment());
    assert_eq!(&after[..6], &before[..]);
    assert_eq!(json(&after[6])["type"], "audit.start");
    assert_eq!(json(&after[6])["prev"], hex::encode(ring_leaf(&before[5])));
    assert_eq!(receipt.leaf_hash, leaves[8]);
    assert_eq!(after.len(), 12);
    let r = verify(dir.path());
    assert_eq!(r.stats.checkpoints, 6);
    assert_eq!(r.stats.starts, 2);
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

    let leaves = check_chain(dir.path());
    let lines = lines(&dir.segment());
    let mut seen = std::collections::HashSet::new();
    for (i, r) in &results {
        assert!(seen.insert(r.seq), "seq {} given twice", r.seq);
        let line = json(&lines[r.seq as usize]);
        assert_eq!(line["type"], "t.n");
        assert_eq!(line["i"], *i);
        assert_eq!(r.leaf_hash, leaves[r.seq as usize]);
    }
    assert_eq!(json(&lines[0])["type"], "audit.start");
    let t = types(dir.path());
    assert_eq!(t.iter().filter(|t| *t == "t.n").count(), 1000);
    assert_eq!(t[t.len() - 2], "audit.stop");
    assert_eq!(t[t.len() - 1], "audit.checkpoint");
    verify(dir.path());
}

/// The `ts` of record `seq`: one per group commit.
fn ts_of(dir: &Path, seq: u64) -> String {
    json(&all_lines(dir)[seq as usize])["ts"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_holds_a_batch_for_announced_and_durable_records_up_to_its_bound() {
    const PROMPT: Duration = Duration::from_secs(10);
    let dir = TempDir::new("expect");
    let long = AuditOptions {
        group_commit_wait: Duration::from_secs(60),
        ..opts()
    };
    let log = AuditLog::open(dir.path(), long).unwrap();

    // Nothing announced: a durable append is synced at once, whatever the bound.
    let alone = tokio::time::timeout(PROMPT, log.append_durable(Record::new("t.alone")))
        .await
        .expect("a durable append waited though nothing was announced")
        .unwrap();

    // Announced: the batch holding `first` waits for the announced record, and both share
    // one group commit (one `ts`).
    let expected = log.expect();
    let first = tokio::spawn({
        let log = log.clone();
        async move { log.append_durable(Record::new("t.first")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "the batch was synced while an announced record was still to come"
    );
    let second = log.submit_durable(Record::new("t.second")).unwrap();
    drop(expected);
    let first = tokio::time::timeout(PROMPT, first)
        .await
        .expect("the batch was still held after the announced record came")
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(PROMPT, second.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.seq, first.seq + 1);
    assert_eq!(ts_of(dir.path(), first.seq), ts_of(dir.path(), second.seq));
    assert_ne!(ts_of(dir.path(), alone.seq), ts_of(dir.path(), first.seq));

    // A record nobody waits for is held (no write of its own) until one someone waits for
    // joins it: both are written and synced as one group.
    log.append(Record::new("t.held")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let joined = tokio::time::timeout(PROMPT, log.append_durable(Record::new("t.joined")))
        .await
        .expect("a held batch kept a durable record waiting")
        .unwrap();
    assert_eq!(
        json(&all_lines(dir.path())[joined.seq as usize - 1])["type"],
        "t.held"
    );
    assert_eq!(
        ts_of(dir.path(), joined.seq - 1),
        ts_of(dir.path(), joined.seq)
    );

    // An announcement withdrawn without a record (an early return) releases the batch too.
    let expected = log.expect();
    let third = tokio::spawn({
        let log = log.clone();
        async move { log.append_durable(Record::new("t.third")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(expected);
    tokio::time::timeout(PROMPT, third)
        .await
        .expect("a withdrawn announcement kept the batch held")
        .unwrap()
        .unwrap();
    log.shutdown().await.unwrap();

    // The bound: an announcement that never ends delays a batch by at most the bound.
    let bound = Duration::from_millis(200);
    let short = AuditOptions {
        group_commit_wait: bound,
        ..opts()
    };
    let log = AuditLog::open(dir.path(), short).unwrap();
    let _never = log.expect();
    let t = std::time::Instant::now();
    tokio::time::timeout(PROMPT, log.append_durable(Record::new("t.bounded")))
        .await
        .expect("the batch was held past its bound")
        .unwrap();
    assert!(t.elapsed() >= bound, "held {:?}", t.elapsed());
    drop(_never);
    // A record nobody waits for, and nothing after it, is written once the bound has passed.
    let before = all_lines(dir.path()).len();
    // Complete lines only: the poll may read the segment while a batch is being written.
    let complete = || -> usize {
        segments::list(dir.path())
            .unwrap()
            .iter()
            .map(|s| std::fs::read(&s.path).unwrap())
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .sum()
    };
    log.append(Record::new("t.unwaited")).unwrap();
    let t = std::time::Instant::now();
    while complete() == before {
        assert!(t.elapsed() < PROMPT, "a held record was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(json(&all_lines(dir.path())[before])["type"], "t.unwaited");
    log.shutdown().await.unwrap();
    verify(dir.path());
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

/// A sync that does not return within `stall_after` makes the log unhealthy while it lasts:
/// nothing is answered before it returns, and the log is healthy again once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sync_makes_the_log_unhealthy_until_it_returns() {
    let dir = TempDir::new("stall");
    let quick = AuditOptions {
        stall_after: Duration::from_millis(300),
        ..opts()
    };
    let log = AuditLog::open(dir.path(), quick).unwrap();
    log.append_durable(Record::new("t.before")).await.unwrap();
    assert!(log.is_healthy() && log.stalled().is_none());

    set_fake_sync_delay(dir.path(), Duration::from_secs(2));
    let started = std::time::Instant::now();
    let slow = tokio::spawn({
        let log = log.clone();
        async move { log.append_durable(Record::new("t.slow")).await }
    });
    let mut health = log.health();
    // Unhealthy once the sync has taken longer than 300 ms, and while it still runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.is_healthy() {
        assert!(
            std::time::Instant::now() < deadline,
            "a 2 s sync never made the log unhealthy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = log.stalled().expect("unhealthy without a stall");
    assert!(took > Duration::from_millis(300), "{took:?}");
    assert!(
        !slow.is_finished(),
        "the record was answered before its sync returned"
    );
    // A stall is not a failure: the health channel (final failures, pauses) does not move.
    assert!(!health.has_changed().unwrap());

    set_fake_sync_delay(dir.path(), Duration::ZERO);
    let receipt = slow.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(log.is_healthy() && log.stalled().is_none());
    let next = log.append_durable(Record::new("t.after")).await.unwrap();
    // After the slow record's attestation.
    assert_eq!(next.seq, receipt.seq + 2);
    assert!(*health.borrow_and_update());
}

#[tokio::test]
async fn free_space_floor_refuses_open_and_stops_signing() {
    let dir = TempDir::new("freespace");
    std::fs::create_dir_all(dir.path()).unwrap();
    let floor = AuditOptions {
        min_free_bytes: Some(1 << 20),
        ..opts()
    };
    set_fake_free(dir.path(), 1000);
    let msg = open_err_with(dir.path(), floor.clone());
    assert!(
        msg.contains("has 1000 bytes free, less than audit.min_free_bytes = 1048576"),
        "{msg}"
    );
    assert!(segments::list(dir.path()).unwrap().is_empty());

    set_fake_free(dir.path(), 10 << 20);
    let log = AuditLog::open(dir.path(), floor).unwrap();
    log.append_durable(Record::new("x.one")).await.unwrap();
    let before = std::fs::read(dir.segment()).unwrap();
    set_fake_free(dir.path(), (1 << 20) - 1);
    let mut health = log.health();
    let err = log.append_durable(Record::new("x.two")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("has 1048575 bytes free, less than audit.min_free_bytes = 1048576"),
        "{msg}"
    );
    assert!(msg.contains("signing is stopped"), "{msg}");
    health.changed().await.unwrap();
    assert!(!*health.borrow());
    assert!(log.append(Record::new("x.three")).is_err());
    assert_eq!(std::fs::read(dir.segment()).unwrap(), before);
    set_fake_free(dir.path(), u64::MAX);
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
    assert_eq!(
        types(dir.path()),
        [
            "audit.start",
            "audit.checkpoint",
            "audit.stop",
            "audit.checkpoint"
        ]
    );
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
    // After audit.start and its checkpoint.
    assert_eq!(
        log.append_durable(Record::new("x.two")).await.unwrap().seq,
        2
    );
    log.shutdown().await.unwrap();
}

#[tokio::test]
async fn checkpoints_every_n_records() {
    let dir = TempDir::new("cp-records");
    let log = AuditLog::open(
        dir.path(),
        AuditOptions {
            checkpoint_every_records: 5,
            ..opts()
        },
    )
    .unwrap();
    for i in 0..23u32 {
        log.append_durable(Record::new("x.n").field("i", i))
            .await
            .unwrap();
    }
    log.shutdown().await.unwrap();
    let leaves = check_chain(dir.path());
    let lines = all_lines(dir.path());
    let mut last = None;
    let mut count = 0;
    for (seq, l) in lines.iter().enumerate() {
        let v = json(l);
        if v["type"] == "audit.checkpoint" {
            count += 1;
            assert_eq!(v["size"], seq as u64);
            assert_eq!(v["root"], hex::encode(merkle::root(&leaves[..seq])));
            let cp = verify_note(v["note"].as_str().unwrap(), &vkey()).unwrap();
            assert_eq!(cp.size, seq as u64);
            // Never more than 5 records between checkpoints (one batch may overshoot when
            // several records are queued at once; here every append waits).
            if let Some(prev) = last {
                assert!(seq - prev - 1 <= 5, "checkpoints at {prev} and {seq}");
            }
            last = Some(seq);
        }
    }
    assert!(count >= 5, "{count} checkpoints");
    let r = verify(dir.path());
    assert_eq!(r.stats.checkpoints, count);
    assert_eq!(r.unattested, 0);
}

#[tokio::test]
async fn checkpoint_after_t_seconds_and_not_when_idle() {
    let dir = TempDir::new("cp-time");
    let log = AuditLog::open(
        dir.path(),
        AuditOptions {
            checkpoint_every: Duration::from_millis(200),
            ..opts()
        },
    )
    .unwrap();
    // A record nobody waits for is covered by a checkpoint after T.
    log.append(Record::new("x.one")).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = types(dir.path());
    let start = ["audit.start", "audit.checkpoint"];
    assert_eq!(t, [&start[..], &["x.one", "audit.checkpoint"]].concat());
    let first = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    assert_eq!(verify_note(&first, &vkey()).unwrap().size, 3);
    // Idle: no new records, so no new checkpoint.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(types(dir.path()).len(), 4);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("checkpoint")).unwrap(),
        first
    );
    // A record someone waits for is attested at once; after T the checkpoint file gets that
    // attestation, and no further record is written for it.
    log.append_durable(Record::new("x.two")).await.unwrap();
    assert_eq!(types(dir.path()).len(), 6);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(types(dir.path()).len(), 6);
    let published = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    assert_eq!(verify_note(&published, &vkey()).unwrap().size, 5);
    assert_eq!(json(&all_lines(dir.path())[5])["note"], published.as_str());
    log.shutdown().await.unwrap();
    verify(dir.path());
}

/// A checkpoint key that can be made to fail, like a token or Vault server that goes away.
struct FlakySigner {
    inner: MemorySigner,
    fail: std::sync::atomic::AtomicBool,
}

impl CheckpointSigner for FlakySigner {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn public_key(&self) -> [u8; 32] {
        self.inner.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("key backend unavailable: the token is away".to_owned());
        }
        self.inner.sign(message)
    }
}

async fn wait_health(log: &AuditLog, want: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.is_healthy() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "audit health never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn checkpoint_key_outage_refuses_answers_and_pauses_at_the_unattested_limit() {
    let dir = TempDir::new("cp-outage");
    let flaky = Arc::new(FlakySigner {
        inner: MemorySigner::from_seed(ORIGIN, [42; 32]),
        fail: std::sync::atomic::AtomicBool::new(false),
    });
    let log = AuditLog::open(
        dir.path(),
        AuditOptions {
            checkpoint_every_records: 5,
            max_unattested_records: Some(12),
            ..AuditOptions {
                min_free_bytes: Some(0),
                ..AuditOptions::new(flaky.clone())
            }
        },
    )
    .unwrap();
    let mut health = log.health();
    flaky.fail.store(true, Ordering::SeqCst);
    // Nobody hears of a record that no checkpoint covers: while the key fails, a record
    // someone waits for is refused, and not written; nothing can be answered, so the log
    // pauses at once (health says so, and the service admits no new request).
    let err = log
        .append_durable(Record::new("x.refused"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuditError::Unavailable(m) if m.contains("cannot sign the checkpoint")),
        "{err}"
    );
    wait_health(&log, false).await;
    assert!(log.is_paused());
    assert!(!*health.borrow_and_update());
    // Records nobody waits for (of requests admitted before) are still written.
    for i in 0..20u32 {
        log.append(Record::new("x.n").field("i", i)).unwrap();
    }
    // The key is back: the next attempt (within a second) checkpoints everything and the
    // pause ends.
    flaky.fail.store(false, Ordering::SeqCst);
    wait_health(&log, true).await;
    assert!(!log.is_paused());
    assert!(*health.borrow_and_update());
    log.append_durable(Record::new("x.after")).await.unwrap();

    // Records nobody waits for alone pause the log at the unattested limit.
    flaky.fail.store(true, Ordering::SeqCst);
    for i in 0..20u32 {
        log.append(Record::new("x.m").field("i", i)).unwrap();
    }
    wait_health(&log, false).await;
    flaky.fail.store(false, Ordering::SeqCst);
    wait_health(&log, true).await;
    log.shutdown().await.unwrap();

    let t = types(dir.path());
    assert!(!t.iter().any(|t| t == "x.refused"), "{t:?}");
    assert_eq!(t.iter().filter(|t| *t == "x.n").count(), 20);
    let last_n = t.iter().rposition(|t| t == "x.n").unwrap();
    let after = t.iter().position(|t| t == "x.after").unwrap();
    // Nothing was signed while the key failed: the first checkpoint after start-up's covers
    // every record written during the outage, and comes before the first record after it.
    let resumed = 2 + t[2..].iter().position(|t| t == "audit.checkpoint").unwrap();
    assert!(last_n < resumed && resumed < after, "{t:?}");
    let r = verify(dir.path());
    assert_eq!(r.unattested, 0);
}

fn sha_of(path: &Path) -> String {
    ring_sha(&std::fs::read(path).unwrap())
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Checks the chaining of every segment in `dir` independently of the verifier.
fn check_segments(dir: &Path) -> usize {
    let segs = segments::list(dir).unwrap();
    for (i, s) in segs.iter().enumerate() {
        let l = lines(&s.path);
        if i + 1 < segs.len() {
            let seal = json(l.last().unwrap());
            assert_eq!(seal["type"], "audit.segment_seal", "{}", s.name);
            assert_eq!(seal["segment"], s.name);
            assert_eq!(seal["records"], l.len() as u64);
            assert_eq!(seal["first_seq"], json(&l[0])["seq"]);
            assert_eq!(mode(&s.path), 0o400, "{} must be read-only", s.name);
        } else {
            assert_eq!(mode(&s.path), 0o600);
        }
        if i > 0 {
            let open = json(&l[0]);
            assert_eq!(open["type"], "audit.segment_open");
            assert_eq!(open["segment"], s.name);
            assert_eq!(open["previous"], segs[i - 1].name);
            assert_eq!(open["previous_sha256"], sha_of(&segs[i - 1].path));
            assert_eq!(
                open["previous_bytes"],
                std::fs::metadata(&segs[i - 1].path).unwrap().len()
            );
            assert_eq!(json(&l[1])["type"], "audit.checkpoint");
        }
    }
    segs.len()
}

#[tokio::test]
async fn rotation_by_size_keeps_seq_chain_and_tree() {
    let dir = TempDir::new("rotate-size");
    let small = AuditOptions {
        max_segment_bytes: 4000,
        ..opts()
    };
    let log = AuditLog::open(dir.path(), small.clone()).unwrap();
    let pad = "p".repeat(100);
    let mut receipts = Vec::new();
    for i in 0..100u32 {
        receipts.push(
            log.append_durable(Record::new("x.n").field("i", i).field("pad", pad.as_str()))
                .await
                .unwrap(),
        );
    }
    log.shutdown().await.unwrap();
    let n = check_segments(dir.path());
    assert!(n >= 4, "{n} segments");
    let leaves = check_chain(dir.path());
    for r in &receipts {
        assert_eq!(r.leaf_hash, leaves[r.seq as usize]);
    }
    let r = verify(dir.path());
    assert_eq!(r.segments.len(), n);

    // Reopen: continues in the last segment, and rotation goes on from there.
    let log = AuditLog::open(dir.path(), small).unwrap();
    for i in 0..40u32 {
        log.append_durable(Record::new("x.m").field("i", i).field("pad", pad.as_str()))
            .await
            .unwrap();
    }
    log.shutdown().await.unwrap();
    assert!(check_segments(dir.path()) > n);
    check_chain(dir.path());
    verify(dir.path());
}

#[tokio::test]
async fn rotation_by_age() {
    let dir = TempDir::new("rotate-age");
    let log = AuditLog::open(
        dir.path(),
        AuditOptions {
            max_segment_age: Duration::from_millis(300),
            ..opts()
        },
    )
    .unwrap();
    log.append_durable(Record::new("x.one")).await.unwrap();
    // The writer wakes up by itself when the segment is old enough.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !dir.seg(2).exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dir.seg(2).exists(), "no rotation after the segment aged");
    // A segment holding only its own header does not rotate again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!dir.seg(3).exists());
    log.append_durable(Record::new("x.two")).await.unwrap();
    log.shutdown().await.unwrap();
    check_segments(dir.path());
    verify(dir.path());
}

/// A log with a start, a request that was allowed and signed, and whatever `extra` adds.
async fn log_with_requests(dir: &TempDir, o: AuditOptions) -> AuditLog {
    let log = AuditLog::open(dir.path(), o).unwrap();
    for (req, decision) in [("ok", "allow"), ("no", "deny")] {
        log.append(
            Record::new("sign.request")
                .field("req_id", req)
                .field("client", "app")
                .field("key", "hot"),
        )
        .unwrap();
        log.append(
            Record::new("sign.decision")
                .field("req_id", req)
                .field("decision", decision),
        )
        .unwrap();
        log.append_durable(Record::new("sign.result").field("req_id", req).field(
            "status",
            if decision == "allow" {
                "signed"
            } else {
                "denied"
            },
        ))
        .await
        .unwrap();
    }
    log
}

#[tokio::test]
async fn crash_with_allowed_request_records_unknown_crash() {
    let dir = TempDir::new("unknown-crash");
    let log = log_with_requests(&dir, opts()).await;
    // Allowed, no result (the daemon dies while signing).
    for (req, decision) in [
        ("lost", Some("allow")),
        ("refused", Some("deny")),
        ("early", None),
    ] {
        log.append(
            Record::new("sign.request")
                .field("req_id", req)
                .field("client", "app"),
        )
        .unwrap();
        if let Some(d) = decision {
            log.append(
                Record::new("sign.decision")
                    .field("req_id", req)
                    .field("decision", d),
            )
            .unwrap();
        }
    }
    log.append_durable(Record::new("x.sync")).await.unwrap();
    let before = all_lines(dir.path()).len();
    crash(log);
    // A live verifier sees the allowed request as pending, not as a failure.
    let r = verify(dir.path());
    assert_eq!(r.pending.len(), 1);
    assert_eq!(r.pending[0].req_id.as_deref(), Some("lost"));

    let log = reopen(dir.path(), opts());
    log.shutdown().await.unwrap();
    let lines = all_lines(dir.path());
    let new: Vec<serde_json::Value> = lines[before..].iter().map(|l| json(l)).collect();
    assert_eq!(new[0]["type"], "sign.result");
    assert_eq!(new[0]["req_id"], "lost");
    assert_eq!(
        new[0]["client"], "app",
        "a result names its client, as the spec says"
    );
    assert_eq!(new[0]["status"], "unknown_crash");
    let decision_seq = lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["type"] == "sign.decision" && v["req_id"] == "lost")
        .unwrap()["seq"]
        .clone();
    assert_eq!(new[0]["decision_seq"], decision_seq);
    assert_eq!(new[1]["type"], "audit.start");
    assert_eq!(new[2]["type"], "audit.checkpoint");
    assert_eq!(new.len(), 5, "{new:?}");
    let r = verify(dir.path());
    assert!(r.pending.is_empty());
    assert_eq!(r.stats.results.get("unknown_crash"), Some(&1));
    assert_eq!(r.stats.abandoned, 2);
}

#[tokio::test]
async fn torn_tail_is_cut_saved_and_recorded() {
    let dir = TempDir::new("torn");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let records = all_lines(dir.path()).len();
    let mut bytes = std::fs::read(dir.segment()).unwrap();
    let offset = bytes.len();
    let torn = b"{\"v\":1,\"seq\":10,\"ts\"";
    bytes.extend_from_slice(torn);
    std::fs::write(dir.segment(), &bytes).unwrap();

    let log = AuditLog::open(dir.path(), opts()).unwrap();
    log.shutdown().await.unwrap();
    let lines = all_lines(dir.path());
    let rec = json(&lines[records]);
    assert_eq!(rec["type"], "audit.recover");
    assert_eq!(rec["seq"], records as u64);
    assert_eq!(rec["segment"], "segment-00000001.jsonl");
    assert_eq!(rec["offset"], offset as u64);
    assert_eq!(rec["bytes"], torn.len() as u64);
    assert_eq!(rec["sha256"], ring_sha(torn));
    let saved = rec["saved_as"].as_str().unwrap();
    assert!(
        saved.starts_with(&format!("recovered/torn-{records}-")) && saved.ends_with("Z.bin"),
        "{saved}"
    );
    assert_eq!(std::fs::read(dir.path().join(saved)).unwrap(), torn);
    assert_eq!(json(&lines[records + 1])["type"], "audit.start");
    let r = verify(dir.path());
    assert_eq!(r.stats.recoveries, 1);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

/// Files the log's readers open by name are read only if they are regular files: a saved
/// torn tail replaced by a symbolic link (to `/dev/zero`, say) or a FIFO fails verification
/// instead of reading without bound or blocking, and so does a `checkpoint` FIFO, at start-up
/// too.
#[tokio::test]
async fn links_and_fifos_in_place_of_log_files_are_refused() {
    let dir = TempDir::new("torn-link");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let mut bytes = std::fs::read(dir.segment()).unwrap();
    bytes.extend_from_slice(b"{\"v\":1,\"seq\":10");
    std::fs::write(dir.segment(), &bytes).unwrap();
    AuditLog::open(dir.path(), opts())
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let saved = all_lines(dir.path())
        .iter()
        .map(|l| json(l))
        .find(|v| v["type"] == "audit.recover")
        .unwrap()["saved_as"]
        .as_str()
        .unwrap()
        .to_owned();
    let saved = dir.path().join(saved);
    std::fs::remove_file(&saved).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &saved).unwrap();
    let err = verify_err(dir.path());
    assert!(err.contains("cannot read recovered/torn-"), "{err}");
    std::fs::remove_file(&saved).unwrap();
    let fifo = |path: &Path| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    };
    fifo(&saved);
    let err = verify_err(dir.path());
    assert!(err.contains("not a regular file"), "{err}");
    std::fs::remove_file(&saved).unwrap();

    let checkpoint = dir.path().join("checkpoint");
    std::fs::remove_file(&checkpoint).unwrap();
    fifo(&checkpoint);
    let path = dir.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(AuditLog::open(&path, opts()).err().map(|e| e.to_string()));
    });
    let err = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("start-up blocked on a FIFO checkpoint file")
        .expect("start-up accepted a FIFO checkpoint file");
    assert!(err.contains("not a regular file"), "{err}");
}

/// An unterminated tail longer than a record may be is still a torn write for `verify`, as
/// it is for start-up recovery: reported and not verified, then cut and recorded at the next
/// start. The same bytes followed by a line break are not a record and fail verification.
#[tokio::test]
async fn a_long_torn_tail_is_reported_like_a_short_one() {
    let dir = TempDir::new("torn-long");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let clean = std::fs::read(dir.segment()).unwrap();
    let mut bytes = clean.clone();
    bytes.resize(clean.len() + (2 << 20), 0);
    std::fs::write(dir.segment(), &bytes).unwrap();
    let r = verify(dir.path());
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains(&format!("the last {} bytes", 2 << 20))),
        "{:?}",
        r.warnings
    );
    bytes.push(b'\n');
    std::fs::write(dir.segment(), &bytes).unwrap();
    let err = verify_err(dir.path());
    assert!(err.contains("not a record"), "{err}");
    bytes.pop();
    std::fs::write(dir.segment(), &bytes).unwrap();
    AuditLog::open(dir.path(), opts())
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let r = verify(dir.path());
    assert_eq!(r.stats.recoveries, 1);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[tokio::test]
async fn terminated_garbage_final_line_is_cut() {
    let dir = TempDir::new("torn-zeros");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let mut bytes = std::fs::read(dir.segment()).unwrap();
    bytes.extend_from_slice(&[0, 0, 0, 0, b'\n']);
    std::fs::write(dir.segment(), &bytes).unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    log.shutdown().await.unwrap();
    let recover = all_lines(dir.path())
        .iter()
        .map(|l| json(l))
        .find(|v| v["type"] == "audit.recover")
        .unwrap();
    assert_eq!(recover["bytes"], 5);
    verify(dir.path());
}

#[tokio::test]
async fn refuses_corruption_followed_by_records() {
    let dir = TempDir::new("corrupt");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let mut l = lines(&dir.segment());
    l[3] = vec![0; 40];
    std::fs::write(dir.segment(), join(&l)).unwrap();
    let msg = open_err(dir.path());
    assert!(
        msg.contains("segment-00000001.jsonl:4 (seq 3): not a valid record"),
        "{msg}"
    );
    assert!(
        msg.contains("so this is corruption, not a torn write"),
        "{msg}"
    );
    assert!(!dir.path().join("recovered").exists());
}

#[tokio::test]
async fn refuses_valid_json_final_line_that_is_not_a_record() {
    let dir = TempDir::new("json-tail");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let mut bytes = std::fs::read(dir.segment()).unwrap();
    bytes.extend_from_slice(b"{\"v\":1,\"seq\":99}\n");
    std::fs::write(dir.segment(), &bytes).unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("not a valid record"), "{msg}");
    assert!(msg.contains("refusing to start"), "{msg}");
}

#[tokio::test]
async fn refuses_broken_chain() {
    let dir = TempDir::new("chain");
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    log.append_durable(Record::new("x.one").field("note", "hello"))
        .await
        .unwrap();
    log.shutdown().await.unwrap();
    let mut lines = lines(&dir.segment());
    // Edit one byte of line 3's body: it still parses, but line 4's prev no longer matches.
    let pos = lines[2].windows(5).position(|w| w == b"hello").unwrap();
    lines[2][pos] = b'j';
    std::fs::write(dir.segment(), join(&lines)).unwrap();
    let msg = open_err(dir.path());
    assert!(
        msg.contains("segment-00000001.jsonl:4 (seq 3): prev is"),
        "{msg}"
    );
    assert!(
        msg.contains("(the leaf hash of the previous record): the hash chain is broken"),
        "{msg}"
    );
}

#[tokio::test]
async fn refuses_seq_gap() {
    let dir = TempDir::new("gap");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let mut l = lines(&dir.segment());
    l.remove(2);
    std::fs::write(dir.segment(), join(&l)).unwrap();
    let msg = open_err(dir.path());
    assert!(
        msg.contains(":3 (seq 3): seq is 3, expected 2: the sequence has a gap or is out of order"),
        "{msg}"
    );
}

#[tokio::test]
async fn refuses_log_shorter_than_checkpoint_file() {
    let dir = TempDir::new("short");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let l = lines(&dir.segment());
    // Whole lines removed: the chain of what is left is intact.
    std::fs::write(dir.segment(), join(&l[..l.len() - 3])).unwrap();
    let msg = open_err(dir.path());
    assert!(
        msg.contains("the log has 9 records, but the checkpoint in"),
        "{msg}"
    );
    assert!(
        msg.contains("covers 11: records at the end were removed"),
        "{msg}"
    );
    let v = verify_err(dir.path());
    assert!(v.contains("covers 11"), "{v}");
    // Only the closing checkpoint removed: the log still holds every record the checkpoint
    // file covers, but not the record the file was published from.
    std::fs::write(dir.segment(), join(&l[..l.len() - 1])).unwrap();
    let msg = open_err(dir.path());
    assert!(
        msg.contains("the log ends after 11 records, right before the audit.checkpoint record that the checkpoint in"),
        "{msg}"
    );
    let v = verify_err(dir.path());
    assert!(
        v.contains("records at the end were removed (the log was cut)"),
        "{v}"
    );
}

#[tokio::test]
async fn refuses_a_log_shorter_than_a_checkpoint_a_witness_cosigned() {
    let dir = TempDir::new("cosigned-short");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    // The latest checkpoint, as a witness cosigned it (the cosignature lines do not matter to
    // signerd: the note is signed by its own key).
    let note = std::fs::read_to_string(dir.path().join("checkpoint")).unwrap();
    std::fs::create_dir_all(dir.path().join("cosignatures")).unwrap();
    std::fs::write(dir.path().join("cosignatures/w1"), &note).unwrap();
    // The log cut back to an earlier checkpoint, and the checkpoint file removed with it.
    let l = lines(&dir.segment());
    let earlier = l[..l.len() - 1]
        .iter()
        .rposition(|line| json(line)["type"] == "audit.checkpoint")
        .unwrap();
    std::fs::write(dir.segment(), join(&l[..=earlier])).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let msg = open_err(dir.path());
    assert!(
        msg.contains("the checkpoint a witness cosigned (cosignatures/w1)")
            && msg.contains("records at the end were removed"),
        "{msg}"
    );
    // A cosigned file that the log's key did not sign is refused too.
    std::fs::write(dir.path().join("cosignatures/w1"), "not a note\n").unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("cosignatures/w1"), "{msg}");
}

#[tokio::test]
async fn refuses_checkpoints_of_another_key_or_origin() {
    let dir = TempDir::new("otherkey");
    let log = log_with_requests(&dir, opts()).await;
    log.shutdown().await.unwrap();
    let other = AuditOptions {
        signer: Arc::new(MemorySigner::from_seed(ORIGIN, [7; 32])),
        ..opts()
    };
    let msg = open_err_with(dir.path(), other);
    assert!(msg.contains("checkpoint"), "{msg}");
    assert!(
        msg.contains("the audit key or audit.origin changed"),
        "{msg}"
    );
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let renamed = AuditOptions {
        signer: Arc::new(MemorySigner::from_seed("other.origin", [42; 32])),
        ..opts()
    };
    let msg = open_err_with(dir.path(), renamed);
    assert!(msg.contains("checkpoint signature"), "{msg}");
}

#[tokio::test]
async fn refuses_wrong_file_types_gaps_and_second_writer() {
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

    std::fs::write(dir.seg(3), b"").unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("segment-00000002.jsonl is missing"), "{msg}");
    std::fs::rename(dir.seg(3), dir.seg(2)).unwrap();
    let msg = open_err(dir.path());
    assert!(
        msg.contains("segment-00000001.jsonl does not end with audit.segment_seal, but segment-00000002.jsonl follows it"),
        "{msg}"
    );
}

/// A log that has rotated once: segment 1 ends with its seal, segment 2 starts with
/// `audit.segment_open` and a checkpoint.
async fn rotated_log(dir: &TempDir) {
    let o = AuditOptions {
        max_segment_bytes: 3000,
        ..opts()
    };
    let log = AuditLog::open(dir.path(), o).unwrap();
    let mut i = 0u32;
    while !dir.seg(2).exists() {
        log.append_durable(
            Record::new("x.n")
                .field("i", i)
                .field("pad", "p".repeat(200)),
        )
        .await
        .unwrap();
        i += 1;
    }
    log.shutdown().await.unwrap();
    assert!(!dir.seg(3).exists());
}

#[tokio::test]
async fn interrupted_rotation_is_finished_at_start() {
    use std::os::unix::fs::PermissionsExt;
    // Crash after the seal, before the next segment exists (and before the chmod).
    let dir = TempDir::new("rot-crash-a");
    rotated_log(&dir).await;
    std::fs::remove_file(dir.seg(2)).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    std::fs::set_permissions(dir.seg(1), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        json(lines(&dir.seg(1)).last().unwrap())["type"],
        "audit.segment_seal"
    );
    let r = verify(dir.path());
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("rotation was interrupted")),
        "{:?}",
        r.warnings
    );
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    log.shutdown().await.unwrap();
    assert_eq!(check_segments(dir.path()), 2);
    let t: Vec<String> = lines(&dir.seg(2))
        .iter()
        .map(|l| json(l)["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        t,
        [
            "audit.segment_open",
            "audit.checkpoint",
            "audit.start",
            "audit.checkpoint",
            "audit.stop",
            "audit.checkpoint"
        ]
    );
    verify(dir.path());

    // Crash after creating the next segment, before its first record.
    let dir = TempDir::new("rot-crash-b");
    rotated_log(&dir).await;
    std::fs::write(dir.seg(2), b"").unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    log.shutdown().await.unwrap();
    assert_eq!(check_segments(dir.path()), 2);
    verify(dir.path());

    // Crash in the middle of writing audit.segment_open.
    let dir = TempDir::new("rot-crash-c");
    rotated_log(&dir).await;
    let first = lines(&dir.seg(2))[0].clone();
    std::fs::write(dir.seg(2), &first[..first.len() / 2]).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    log.shutdown().await.unwrap();
    assert_eq!(check_segments(dir.path()), 2);
    let t: Vec<String> = lines(&dir.seg(2))
        .iter()
        .map(|l| json(l)["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        &t[..4],
        [
            "audit.segment_open",
            "audit.checkpoint",
            "audit.recover",
            "audit.start"
        ]
    );
    let r = verify(dir.path());
    assert_eq!(r.stats.recoveries, 1);

    // Crash after audit.segment_open, before its checkpoint: recovery writes the checkpoint
    // right after it, before anything else.
    let dir = TempDir::new("rot-crash-d");
    rotated_log(&dir).await;
    let first = lines(&dir.seg(2))[0].clone();
    assert_eq!(json(&first)["type"], "audit.segment_open");
    std::fs::write(dir.seg(2), [first.as_slice(), b"\n"].concat()).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    log.shutdown().await.unwrap();
    let t: Vec<String> = lines(&dir.seg(2))
        .iter()
        .map(|l| json(l)["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        &t[..3],
        ["audit.segment_open", "audit.checkpoint", "audit.start"]
    );
    verify(dir.path());
}

#[tokio::test]
async fn truncation_at_every_byte_offset_of_the_last_records() {
    let dir = TempDir::new("trunc-src");
    let log = log_with_requests(&dir, opts()).await;
    log.append_durable(Record::new("x.last").field("note", "é and \"quotes\""))
        .await
        .unwrap();
    log.shutdown().await.unwrap();
    let full = std::fs::read(dir.segment()).unwrap();
    let l = lines(&dir.segment());
    // Line start offsets, and where the last four records begin.
    let mut starts = vec![0usize];
    for line in &l {
        starts.push(starts.last().unwrap() + line.len() + 1);
    }
    let from = starts[l.len() - 4];
    let key = vkey();
    let work = TempDir::new("trunc-work");
    let mut opened = 0;
    // Where the records that a checkpoint covers end, for a log cut at `cut`: after the last
    // complete checkpoint line. Everything after it is moved aside.
    let checkpoint_ends: Vec<usize> = l
        .iter()
        .enumerate()
        .filter(|(_, line)| json(line)["type"] == "audit.checkpoint")
        .map(|(i, _)| starts[i + 1])
        .collect();
    for cut in from..=full.len() {
        let _ = std::fs::remove_dir_all(work.path());
        std::fs::create_dir_all(work.path()).unwrap();
        std::fs::write(work.segment(), &full[..cut]).unwrap();
        // What recovery decides (read-only).
        let scan =
            recover::scan(work.path(), &key, None).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let attested_end = *checkpoint_ends.iter().rfind(|e| **e <= cut).unwrap();
        let kept = starts.iter().position(|s| *s == attested_end).unwrap();
        let complete = starts.iter().filter(|s| **s <= cut).count() - 1;
        assert_eq!(scan.checker.next_seq(), kept as u64, "cut {cut}");
        match &scan.torn {
            None => assert_eq!(cut, attested_end, "cut {cut}: nothing moved aside"),
            Some(t) => {
                assert_eq!(t.offset, attested_end as u64, "cut {cut}");
                assert_eq!(t.bytes, &full[attested_end..cut], "cut {cut}");
                assert_eq!(t.records, (complete - kept) as u64, "cut {cut}");
            }
        }
        assert_eq!(scan.active_bytes, attested_end as u64);
        // A real start at some offsets: every line boundary and its neighbours, and a sample.
        let near = starts.iter().any(|s| cut.abs_diff(*s) <= 1);
        if near || cut % 23 == 0 {
            opened += 1;
            let log =
                AuditLog::open(work.path(), opts()).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            log.shutdown().await.unwrap();
            let now = all_lines(work.path());
            assert_eq!(&now[..kept], &l[..kept], "cut {cut}");
            let next = json(&now[kept]);
            if cut == attested_end {
                assert_ne!(next["type"], "audit.recover", "cut {cut}");
            } else {
                assert_eq!(next["type"], "audit.recover", "cut {cut}");
                assert_eq!(next["offset"], attested_end as u64);
                assert_eq!(next["bytes"], (cut - attested_end) as u64);
                assert_eq!(next["sha256"], ring_sha(&full[attested_end..cut]));
                if complete > kept {
                    assert_eq!(next["unattested_records"], (complete - kept) as u64);
                } else {
                    assert!(next.get("unattested_records").is_none(), "cut {cut}");
                }
                let saved = work.path().join(next["saved_as"].as_str().unwrap());
                assert_eq!(std::fs::read(saved).unwrap(), &full[attested_end..cut]);
            }
            verify(work.path());
        }
    }
    assert!(opened > 20, "{opened} real starts");
}

/// Throughput of the start-up scan and of the verifier over a generated log of 1M records.
/// Run by hand: `cargo test --release -p signerd --lib audit::tests::bench -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "benchmark; run by hand"]
async fn bench_scan_and_verify_1m() {
    let dir = TempDir::new("bench");
    // SIGNERD_BENCH_KEEP=DIR keeps the generated log in DIR, for timing the CLI on it.
    let keep = std::env::var_os("SIGNERD_BENCH_KEEP").map(PathBuf::from);
    let log = AuditLog::open(
        dir.path(),
        AuditOptions {
            fsync: false,
            ..opts()
        },
    )
    .unwrap();
    let n = 1_000_000u32;
    for i in 0..n / 3 {
        let req = format!("req-{i}");
        log.append(
            Record::new("sign.request")
                .field("req_id", req.as_str())
                .field("method", "SignEvmTransaction")
                .field("client", "app")
                .field(
                    "cert_sha256",
                    "96b829699da6d2e81516c4eaf73922cd4ea19f727bd042ac284f4828d75afd4c",
                )
                .field("key", "hot")
                .field(
                    "fingerprint",
                    "5e2a0c4bb2fa7e3d3bd1d32e6ae6fe3f7d7da08f0f39a8a0a8e9a47b6b9e0d12",
                ),
        )
        .unwrap();
        log.append(Record::new("sign.decision").field("req_id", req.as_str()).field("decision", "allow").field("rules", vec!["requesters-hot"]).field("reason", Option::<&str>::None).field("policy_serial", 1).field("policy_hash", "cabecf7fc467ee1d303aa59722f5ffd116e29f76c3e4bdbcf266a5498a9b498b").field("action", serde_json::json!({"chain_id":1,"key":"hot","kind":"native_transfer","to":"0x3535353535353535353535353535353535353535","value":"0x3e8"}))).unwrap();
        let r = Record::new("sign.result")
            .field("req_id", req.as_str())
            .field("status", "signed")
            .field(
                "signing_hash",
                "0x4c29a2a7e013bc5a41071db6d88ad442b2af3ad845a0daaf2b8ee7b8948b6527",
            )
            .field(
                "tx_hash",
                "0xbef255e1f318c787f0bdb207b4a6f07d33e3d7c4b6f0d4e0f7a5f2d5a2d0e1c3",
            )
            .field(
                "signature",
                serde_json::json!({"r":"0x1d3c","s":"0x2a4b","v":1,"bytes":"0x"}),
            );
        if i % 1000 == 999 {
            log.append_durable(r).await.unwrap();
        } else {
            log.append(r).unwrap();
        }
    }
    log.shutdown().await.unwrap();
    let bytes: u64 = segments::list(dir.path())
        .unwrap()
        .iter()
        .map(|s| std::fs::metadata(&s.path).unwrap().len())
        .sum();
    let t = std::time::Instant::now();
    let scan = recover::scan(dir.path(), &vkey(), None).unwrap();
    let records = scan.checker.next_seq();
    let scan_time = t.elapsed();
    let t = std::time::Instant::now();
    let r = verify(dir.path());
    let verify_time = t.elapsed();
    assert_eq!(r.stats.records, records);
    println!(
        "{records} records, {} MiB in {} segments: start-up scan {scan_time:?} ({:.0} records/s), verify {verify_time:?} ({:.0} records/s)",
        bytes >> 20,
        r.segments.len(),
        records as f64 / scan_time.as_secs_f64(),
        records as f64 / verify_time.as_secs_f64()
    );
    let t = std::time::Instant::now();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    println!("AuditLog::open of the whole log: {:?}", t.elapsed());
    log.shutdown().await.unwrap();
    if let Some(keep) = keep {
        std::fs::rename(dir.path(), &keep).unwrap();
        println!(
            "kept the log in {}; verifier key {}",
            keep.display(),
            vkey()
        );
    }
}

mod snapshots;
