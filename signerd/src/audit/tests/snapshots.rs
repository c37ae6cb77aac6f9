//! Snapshots of derived state: a snapshot plus the records after it derive exactly what a full
//! read derives, and start-up uses only a snapshot the log vouches for.

use signerd_auditor::events::{AuditSnapshot, KeyChecked, KeyPin, PolicyLoad, PolicySource};

use super::super::generate::{Generate, generate};
use super::super::snapshot::{self, Derived, Snapshot};
use super::*;
use crate::state::reconcile;

fn small() -> AuditOptions {
    AuditOptions {
        max_segment_bytes: 6000,
        // Small batches, so that segments rotate at about their size.
        max_batch: 8,
        fsync: false,
        ..opts()
    }
}

/// A log of several sealed segments with signed, denied and waiting requests, a key pin, a
/// policy load and a restart in the middle.
async fn sample_log(dir: &Path) {
    let log = AuditLog::open(dir, small()).unwrap();
    log.append_durable(KeyPin {
        key: "hot-1".to_owned(),
        version: None,
        algorithm: "secp256k1".to_owned(),
        backend: "soft".to_owned(),
        public_key: "02".repeat(33),
        checked: KeyChecked::default(),
        weak: Vec::new(),
    })
    .await
    .unwrap();
    log.append_durable(PolicyLoad {
        source: PolicySource::Startup,
        actor: None,
        file: "policy.toml".to_owned(),
        old_serial: None,
        old_hash: None,
        new_serial: 3,
        new_hash: "ab".repeat(32),
        forced: false,
        signers: Vec::new(),
        threshold: None,
        book_entries: Vec::new(),
    })
    .await
    .unwrap();
    let g = Generate {
        records: 400,
        first_request: 0,
    };
    let n = generate(&log, &g).await.unwrap();
    log.shutdown().await.unwrap();
    let log = AuditLog::open(dir, small()).unwrap();
    let g = Generate {
        records: 400,
        first_request: n,
    };
    generate(&log, &g).await.unwrap();
    log.shutdown().await.unwrap();
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn last_sealed(dir: &Path) -> u64 {
    segments::list(dir).unwrap().last().unwrap().no - 1
}

fn derive(dir: &Path, through: u64) -> Derived {
    let mut d = Derived::new(&vkey());
    snapshot::advance(dir, &mut d, through).unwrap();
    d
}

/// What start-up's reconciliation gets, comparable: the signed charges by request are those
/// of the records read after the snapshot, so they are left out.
fn finished(l: reconcile::Ledger) -> String {
    let mut s = l.finish(now());
    s.spend.signed.clear();
    s.spend
        .waiting
        .sort_by(|a, b| (&a.owner, &a.bucket).cmp(&(&b.owner, &b.bucket)));
    format!("{s:?}")
}

#[tokio::test]
async fn a_snapshot_plus_the_records_after_it_derive_what_a_full_read_derives() {
    let dir = TempDir::new("snap-equal");
    sample_log(dir.path()).await;
    let last = last_sealed(dir.path());
    assert!(last >= 6, "{last} sealed segments");
    let full = derive(dir.path(), last);
    let full_bytes = full.snapshot().unwrap().encode().unwrap();
    // Not vacuous: spend, a request waiting for approval, a pin and a policy.
    let state = full.ledger().clone().finish(now());
    let charges: u64 = state.spend.settled.iter().map(|s| s.count).sum();
    assert!(charges > 100, "{charges}");
    assert!(!state.spend.waiting.is_empty());
    assert_eq!(state.pins.len(), 1);
    assert_eq!(state.highest_policy_serial, Some(3));
    assert!(!full.snapshot().unwrap().checker.open.is_empty());
    let full_scan = finished(
        reconcile::scan_from(dir.path(), reconcile::Ledger::default(), 1, 0, &mut |_| {
            Ok(())
        })
        .unwrap(),
    );
    for k in [1, 2, last / 2, last - 1, last] {
        let at_k = derive(dir.path(), k).snapshot().unwrap();
        // Through the file format.
        let read = Snapshot::decode(&at_k.encode().unwrap()).unwrap();
        assert_eq!(read, at_k);
        let ledger = read.ledger.clone();
        let mut resumed = Derived::resume(&vkey(), read).unwrap();
        snapshot::advance(dir.path(), &mut resumed, last).unwrap();
        let resumed_bytes = resumed.snapshot().unwrap().encode().unwrap();
        assert!(
            resumed_bytes == full_bytes,
            "snapshot at segment {k} + tail differs from the full read"
        );
        // Start-up's reconciliation from the snapshot, through the active segment too.
        let tail = reconcile::scan_from(dir.path(), ledger, k + 1, 0, &mut |_| Ok(())).unwrap();
        assert_eq!(finished(tail), full_scan, "reconciliation from segment {k}");
    }
}

/// Writes the snapshot of the sealed segments through `through` and, with `vouch`, the
/// `audit.snapshot` record naming it; returns the file's path.
async fn snapshot_at(dir: &Path, through: u64, vouch: bool) -> PathBuf {
    let s = derive(dir, through).snapshot().unwrap();
    let (file, sha) = snapshot::write(dir, &s).unwrap();
    if vouch {
        let log = AuditLog::open(dir, small()).unwrap();
        log.append_durable(AuditSnapshot {
            records: s.records,
            sha256: hex::encode(sha),
            file: file.clone(),
        })
        .await
        .unwrap();
        log.shutdown().await.unwrap();
    }
    dir.join(file)
}

/// Opens the log from `candidates` (newest first); returns the index used. The log then
/// continues correctly (checked by the verifier).
async fn open_with(dir: &Path, candidates: &[PathBuf]) -> Option<usize> {
    let loaded: Vec<_> = candidates
        .iter()
        .map(|p| snapshot::load(p).unwrap())
        .collect();
    let (log, used) = AuditLog::open_from(dir, small(), &loaded).unwrap();
    log.append_durable(Record::new("x.after").field("i", 1u32))
        .await
        .unwrap();
    log.shutdown().await.unwrap();
    verify(dir);
    used
}

#[tokio::test]
async fn start_up_uses_only_a_snapshot_the_log_vouches_for() {
    let dir = TempDir::new("snap-vouch");
    sample_log(dir.path()).await;
    let older = snapshot_at(dir.path(), 2, true).await;
    // Vouched: used.
    assert_eq!(
        open_with(dir.path(), std::slice::from_ref(&older)).await,
        Some(0)
    );
    // A newer one written just before a crash (no record names it): the older one is used.
    let newer = snapshot_at(dir.path(), last_sealed(dir.path()), false).await;
    assert_eq!(
        open_with(dir.path(), &[newer.clone(), older.clone()]).await,
        Some(1)
    );
    // One byte changed (still a readable snapshot): not used.
    let text = std::fs::read_to_string(&older).unwrap();
    let at = text.find("\"records\":").unwrap() + "\"records\":".len();
    let mut changed = text.clone().into_bytes();
    changed[at] = if changed[at] == b'9' { b'8' } else { b'9' };
    let tampered = String::from_utf8(changed).unwrap();
    std::fs::write(&older, &tampered).unwrap();
    match snapshot::load(&older) {
        // The count no longer matches the state or the name: refused when read.
        Err(e) => assert!(e.contains("snapshot"), "{e}"),
        Ok(_) => panic!("a snapshot whose record count was changed was accepted"),
    }
    // One byte changed where nothing else cross-checks it: read, but named by no record.
    let at = text.find("\"requests\":").unwrap() + "\"requests\":".len();
    let mut changed = text.clone().into_bytes();
    changed[at] = if changed[at] == b'9' { b'8' } else { b'9' };
    std::fs::write(&older, &changed).unwrap();
    snapshot::load(&older).unwrap();
    assert_eq!(
        open_with(dir.path(), std::slice::from_ref(&older)).await,
        None
    );
    // A forged snapshot, re-hashed (its own, consistent file): no record names its hash.
    let mut forged = derive(dir.path(), 2).snapshot().unwrap();
    let mut ledger = serde_json::to_value(&forged.ledger).unwrap();
    ledger["settled"] = serde_json::json!({});
    forged.ledger = serde_json::from_value(ledger).unwrap();
    snapshot::write(dir.path(), &forged).unwrap();
    assert_eq!(
        open_with(dir.path(), std::slice::from_ref(&older)).await,
        None
    );
    // Restore the vouched bytes: used again.
    std::fs::write(&older, &text).unwrap();
    assert_eq!(
        open_with(dir.path(), std::slice::from_ref(&older)).await,
        Some(0)
    );
    // A version this binary does not know is refused when read.
    let current = format!("\"version\":{}", snapshot::VERSION);
    assert!(text.contains(&current));
    let other = format!("\"version\":{}", snapshot::VERSION + 1);
    std::fs::write(&older, text.replacen(&current, &other, 1)).unwrap();
    let e = snapshot::load(&older).unwrap_err();
    assert!(
        e.contains(&format!("version {}", snapshot::VERSION + 1)),
        "{e}"
    );
    // Version 1 kept signed charges by request: not read, so start-up reads the whole log.
    std::fs::write(&older, text.replacen(&current, "\"version\":1", 1)).unwrap();
    let e = snapshot::load(&older).unwrap_err();
    assert!(e.contains("version 1"), "{e}");
}

#[test]
fn snapshot_files_are_private_and_only_the_newest_are_kept() {
    use std::os::unix::fs::PermissionsExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = TempDir::new("snap-keep");
    rt.block_on(sample_log(dir.path()));
    let mut written = Vec::new();
    for k in 1..=4 {
        let s = derive(dir.path(), k).snapshot().unwrap();
        written.push(dir.path().join(snapshot::write(dir.path(), &s).unwrap().0));
    }
    let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    snapshot::prune(dir.path(), snapshot::KEEP).unwrap();
    let left: Vec<PathBuf> = snapshot::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(left, vec![written[3].clone(), written[2].clone()]);
}

#[tokio::test]
async fn an_auditor_checks_snapshots_against_the_log() {
    let dir = TempDir::new("snap-verify");
    sample_log(dir.path()).await;
    let path = snapshot_at(dir.path(), 3, true).await;
    let ok = snapshot::verify(dir.path(), &vkey(), std::slice::from_ref(&path)).unwrap();
    assert_eq!(ok.len(), 1);
    assert!(ok[0].named_at >= ok[0].records);
    // The auditor's own check of the whole log passes with audit.snapshot records in it.
    verify(dir.path());
    // Not named by any record.
    let unnamed = snapshot_at(dir.path(), 4, false).await;
    let e = snapshot::verify(dir.path(), &vkey(), std::slice::from_ref(&unnamed)).unwrap_err();
    assert!(e.contains("no audit.snapshot record"), "{e}");
    // Changed and re-hashed: its content is not what the log derives.
    let mut forged = derive(dir.path(), 3).snapshot().unwrap();
    let mut ledger = serde_json::to_value(&forged.ledger).unwrap();
    ledger["settled"] = serde_json::json!({});
    forged.ledger = serde_json::from_value(ledger).unwrap();
    let (file, _) = snapshot::write(dir.path(), &forged).unwrap();
    let e = snapshot::verify(dir.path(), &vkey(), &[dir.path().join(file)]).unwrap_err();
    assert!(e.contains("`ledger`"), "{e}");
}
