//! Start-up reconciliation of the spend ledger from the audit log, the source of truth.
//!
//! After a crash the state store may hold reservations of requests that never got a result
//! (they died with the process and must not count), and, if it lost writes, may lack spend that
//! was signed. Before serving, the ledger is rebuilt to exactly the charges of requests whose
//! `sign.result` says `signed`, taken from their last `sign.decision` records inside the longest
//! window a limit may have, plus the charges of requests still waiting for approval (a
//! `require_approval` decision and no result yet): they hold their spend across restarts.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use alloy_primitives::U256;
use signerd_auditor::envelope;
use signerd_auditor::events::{
    self, BookEntryLoad, Decision, KeyPin, Kind, Method, PolicyLoad, SignDecision, SignRequest,
    SignResult, Status,
};
use signerd_auditor::segments::{self, LineReader, Next};

use super::spend::{Entry, MAX_WINDOW_SECS};

/// A request's final answer as the audit log holds it: the `sign.result` record that ended it
/// `signed` or `denied`, with its last `sign.request` record's method and fingerprint.
#[derive(Debug)]
pub struct LoggedAnswer<'a> {
    /// The requesting client.
    pub client: &'a str,
    /// The client's request id.
    pub req_id: &'a str,
    /// The gRPC method of the request.
    pub method: &'a str,
    /// The request's fingerprint.
    pub fingerprint: &'a str,
    /// The `sign.result` record, typed.
    pub record: &'a SignResult,
    /// The `seq` of the `sign.result` record.
    pub seq: u64,
    /// The `ts` of the `sign.result` record, Unix seconds: when the request was answered.
    pub ts: i64,
    /// The exact line of the `sign.result` record (without its newline): its leaf hash is
    /// part of the answer.
    pub line: &'a str,
}

/// The charges of signed requests (and of requests still waiting for approval) recorded in the
/// audit log in `dir` since
/// `now - MAX_WINDOW_SECS`, as ledger entries. A request is its (`client`, `req_id`).
pub fn signed_spend(dir: &Path, now: i64) -> Result<Vec<Entry>, String> {
    scan(dir, now, &mut |_| Ok(())).map(|s| s.spend)
}

/// The leaf hash of the first record of the log in `dir` (`None` for an empty log): which
/// log it is, read before anything else at start-up.
pub fn first_record(dir: &Path) -> Result<Option<[u8; 32]>, String> {
    if !dir.exists() {
        // A new log: the directory is created when the log is opened.
        return Ok(None);
    }
    let Some(seg) = segments::list(dir)?.into_iter().next() else {
        return Ok(None);
    };
    let mut reader = LineReader::open(&seg.path)?;
    match reader
        .next_line()
        .map_err(|e| format!("cannot read {}: {e}", seg.path.display()))?
    {
        Next::Line {
            bytes,
            terminated: true,
            ..
        } => Ok(Some(signerd_auditor::merkle::leaf_hash(bytes))),
        _ => Ok(None),
    }
}

/// The hash of the policy the log in `dir` records as loaded last (`policy.load`), if any; read
/// without opening the log for writing (`signerctl policy sign` and `verify-signatures`). A
/// torn last line is not a record and is skipped.
pub fn last_policy_hash(dir: &Path) -> Result<Option<String>, String> {
    let mut last = None;
    for_each_line(dir, |line, at| {
        if let Ok(env) = envelope::parse(line)
            && env.kind == Some(Kind::PolicyLoad)
        {
            let load: PolicyLoad =
                events::read(line).map_err(|e| format!("{}: malformed policy.load: {e}", at()))?;
            last = Some(load.new_hash);
        }
        Ok(())
    })?;
    Ok(last)
}

/// Calls `each` with every complete line of the log in `dir`, in log order, and a function
/// that says where it is (`file:line`). A torn last line is not a record and ends its segment.
fn for_each_line(
    dir: &Path,
    mut each: impl FnMut(&[u8], &dyn Fn() -> String) -> Result<(), String>,
) -> Result<(), String> {
    for seg in segments::list(dir)? {
        let mut reader = LineReader::open(&seg.path)?;
        loop {
            let next = reader
                .next_line()
                .map_err(|e| format!("cannot read {}: {e}", seg.path.display()))?;
            let (line, lineno) = match next {
                Next::Eof => break,
                Next::TooLong { lineno, .. } => {
                    return Err(format!(
                        "{}:{lineno}: longer than a record may be",
                        seg.path.display()
                    ));
                }
                Next::Line { terminated, .. } if !terminated => break,
                Next::Line { bytes, lineno, .. } => (bytes, lineno),
            };
            each(line, &|| format!("{}:{lineno}", seg.path.display()))?;
        }
    }
    Ok(())
}

/// What start-up learns from the audit log.
#[derive(Debug, Clone, Default)]
pub struct Scanned {
    /// The spend of signed requests, and of requests still waiting for approval.
    pub spend: Vec<Entry>,
    /// The highest policy serial the log records as loaded (`policy.load`), if any.
    pub highest_policy_serial: Option<u64>,
    /// The hash of the policy the log records as loaded last (`policy.load`), if any: the
    /// policy in force, whose administrators sign the next one.
    pub last_policy_hash: Option<String>,
    /// How many records the log holds.
    pub records: u64,
    /// Every `key.pin` record, with its `seq`, in log order.
    pub pins: Vec<(u64, KeyPin)>,
    /// The `book_entries` of the last `policy.load`: when each entry of an address book with
    /// a cooling-off period was first loaded.
    pub book_entries: Vec<BookEntryLoad>,
}

/// [`signed_spend`], also handing every final answer in the log to `on_answer`, in log order
/// (a later answer for the same request comes later).
///
/// The log has been checked and recovered before this runs (`AuditLog::open`), so every line
/// is a record; one that is not is skipped.
pub fn scan(
    dir: &Path,
    now: i64,
    on_answer: &mut dyn FnMut(LoggedAnswer<'_>) -> Result<(), String>,
) -> Result<Scanned, String> {
    let mut highest_policy_serial: Option<u64> = None;
    let mut last_policy_hash: Option<String> = None;
    let mut records = 0u64;
    let mut pins = Vec::new();
    let mut book_entries = Vec::new();
    let since = now.saturating_sub(MAX_WINDOW_SECS as i64);
    let mut client_of: HashMap<String, String> = HashMap::new();
    // (method, fingerprint) of the last `sign.request` of each request without a result yet.
    let mut requested: HashMap<String, (Method, String)> = HashMap::new();
    let mut charged: HashMap<String, Vec<Entry>> = HashMap::new();
    let mut signed: HashSet<String> = HashSet::new();
    // Requests whose last decision was `require_approval`, until a result ends them.
    let mut waiting: HashSet<String> = HashSet::new();
    for_each_line(dir, |line, at| {
        records += 1;
        let Ok(env) = envelope::parse(line) else {
            return Ok(());
        };
        if env.kind == Some(Kind::PolicyLoad) {
            let load: PolicyLoad =
                events::read(line).map_err(|e| format!("{}: malformed policy.load: {e}", at()))?;
            highest_policy_serial = highest_policy_serial.max(Some(load.new_serial));
            last_policy_hash = Some(load.new_hash);
            // Each load lists every entry it holds, so the last one is the whole history.
            book_entries = load.book_entries;
            return Ok(());
        }
        if env.kind == Some(Kind::KeyPin) {
            let pin: KeyPin =
                events::read(line).map_err(|e| format!("{}: malformed key.pin: {e}", at()))?;
            pins.push((env.seq, pin));
            return Ok(());
        }
        let (Some(kind), Some(req_id)) = (env.kind, env.req_id.as_str()) else {
            return Ok(());
        };
        if kind == Kind::SignRequest {
            if let Some(client) = env.client.as_str() {
                client_of.insert(req_id.to_owned(), client.to_owned());
                if let Ok(SignRequest {
                    method,
                    fingerprint: Some(fingerprint),
                    ..
                }) = events::read(line)
                {
                    requested.insert(format!("{client}\0{req_id}"), (method, fingerprint));
                }
            }
            return Ok(());
        }
        // Decision and result records name their client; pairing through the request
        // record is the fallback for records of earlier releases, which do not.
        let Some(client) = env
            .client
            .as_str()
            .map(str::to_owned)
            .or_else(|| client_of.get(req_id).cloned())
        else {
            return Ok(());
        };
        let owner = format!("{client}\0{req_id}");
        match (kind, env.decision()) {
            (Kind::SignDecision, Some(d @ (Decision::Allow | Decision::RequireApproval))) => {
                if d == Decision::RequireApproval {
                    waiting.insert(owner.clone());
                } else {
                    waiting.remove(&owner);
                }
                let ts = signerd_auditor::rfc3339::parse_unix(env.ts)
                    .ok_or_else(|| format!("{}: `ts` is not an RFC 3339 time", at()))?;
                if ts <= since {
                    return Ok(());
                }
                let decision: SignDecision = events::read(line)
                    .map_err(|e| format!("{}: malformed sign.decision: {e}", at()))?;
                let mut entries = Vec::with_capacity(decision.charges.len());
                for c in decision.charges {
                    let amount: U256 = c
                        .amount
                        .parse()
                        .map_err(|e| format!("{}: charge amount: {e}", at()))?;
                    entries.push(Entry {
                        owner: owner.clone(),
                        bucket: c.bucket,
                        ts,
                        amount,
                    });
                }
                // The decision at quorum replaces the one that sent the request to wait.
                charged.insert(owner, entries);
            }
            (Kind::SignDecision, _) => {
                waiting.remove(&owner);
                charged.remove(&owner);
            }
            (Kind::SignResult, _) => {
                waiting.remove(&owner);
                let request = requested.remove(&owner);
                let status = env.status();
                if matches!(status, Some(Status::Signed | Status::Denied))
                    && let Some((method, fingerprint)) = &request
                {
                    let record: SignResult = events::read(line)
                        .map_err(|e| format!("{}: malformed sign.result: {e}", at()))?;
                    let text = std::str::from_utf8(line).map_err(|e| format!("{}: {e}", at()))?;
                    let ts = signerd_auditor::rfc3339::parse_unix(env.ts)
                        .ok_or_else(|| format!("{}: `ts` is not an RFC 3339 time", at()))?;
                    on_answer(LoggedAnswer {
                        client: &client,
                        req_id,
                        method: method.as_str(),
                        fingerprint,
                        record: &record,
                        seq: env.seq,
                        ts,
                        line: text,
                    })
                    .map_err(|e| format!("{}: {e}", at()))?;
                }
                if status == Some(Status::Signed) {
                    signed.insert(owner);
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    let spend = charged
        .into_iter()
        .filter(|(owner, _)| signed.contains(owner) || waiting.contains(owner))
        .flat_map(|(_, e)| e)
        .collect();
    Ok(Scanned {
        spend,
        highest_policy_serial,
        last_policy_hash,
        records,
        pins,
        book_entries,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use signerd_auditor::Record;
    use signerd_auditor::events::{Charge, Event, Outcome, Signature};

    use super::*;

    /// A record line of `event` written at `ts` (`seq` and `prev` do not matter here).
    fn line(event: &impl Event, ts: &str) -> String {
        let record = Record::from_event(event);
        format!(
            r#"{{"v":1,"seq":0,"ts":"{ts}","type":"{}"{},"prev":"{}"}}"#,
            record.kind(),
            String::from_utf8(record.encode().unwrap()).unwrap(),
            "0".repeat(64)
        )
    }

    fn decision(req: &str, decision: Decision, amount: u64) -> String {
        line(
            &SignDecision {
                req_id: req.to_owned(),
                client: Some("app".to_owned()),
                roles: None,
                decision,
                rules: Vec::new(),
                reason: None,
                policy_serial: 1,
                policy_hash: "ab".repeat(32),
                action: serde_json::json!({}),
                charges: vec![Charge {
                    amount: amount.to_string(),
                    bucket: "limit=l".to_owned(),
                    limit: "l".to_owned(),
                    window_secs: 86_400,
                }],
                approved_by: None,
            },
            "2026-01-01T00:00:00.000000Z",
        )
    }

    fn signed() -> Outcome {
        Outcome::Signed {
            signing_hash: format!("0x{}", "cd".repeat(32)),
            tx_hash: None,
            raw_tx: None,
            signature: Signature {
                bytes: "0x".to_owned(),
                r: "0x01".to_owned(),
                s: "0x02".to_owned(),
                v: 27,
            },
            key_version: None,
            pin: None,
        }
    }

    fn rejected() -> Outcome {
        Outcome::Rejected {
            message: "rejected by `carol`".to_owned(),
        }
    }

    fn result(req: &str, client: Option<&str>, outcome: Outcome) -> String {
        line(
            &SignResult {
                req_id: Some(req.to_owned()),
                client: client.map(str::to_owned),
                outcome,
            },
            "2026-01-01T00:00:01.000000Z",
        )
    }

    fn request(req: &str) -> String {
        line(
            &SignRequest {
                req_id: Some(req.to_owned()),
                method: Method::SignDigest,
                client: "app".to_owned(),
                cert_sha256: "ef".repeat(32),
                key: Some("hot".to_owned()),
                fingerprint: Some("12".repeat(32)),
            },
            "2026-01-01T00:00:00.000000Z",
        )
    }

    const NOW: i64 = 1_767_225_600 + 10; // 2026-01-01T00:00:10Z

    fn write(lines: &[String]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("segment-00000001.jsonl"),
            lines.join("\n") + "\n",
        )
        .unwrap();
        tmp
    }

    #[test]
    fn waiting_requests_keep_their_charges_until_a_result_ends_them() {
        use Decision::{Allow, Deny, RequireApproval};
        let tmp = write(&[
            decision("signed", Allow, 1),
            result("signed", Some("app"), signed()),
            decision("waiting", RequireApproval, 10),
            decision("approved", RequireApproval, 100),
            decision("approved", Allow, 200),
            result("approved", Some("app"), signed()),
            decision("vetoed", RequireApproval, 1000),
            result("vetoed", Some("app"), rejected()),
            decision("denied-at-quorum", RequireApproval, 10000),
            decision("denied-at-quorum", Deny, 0),
            decision("allowed-then-crashed", Allow, 100000),
        ]);
        let mut amounts: Vec<u64> = signed_spend(tmp.path(), NOW)
            .unwrap()
            .iter()
            .map(|e| e.amount.to::<u64>())
            .collect();
        amounts.sort_unstable();
        // Signed (1), still waiting (10), approved at its final charge (200).
        assert_eq!(amounts, vec![1, 10, 200]);
    }

    /// Signed and denied results are handed over with their request's method and fingerprint,
    /// typed and as the exact line; a result of an earlier release (no `client`) pairs through
    /// its request.
    #[test]
    fn final_answers_are_handed_over_with_their_request() {
        let old = result("old", None, signed());
        let tmp = write(&[
            request("new"),
            decision("new", Decision::Allow, 5),
            result("new", Some("app"), signed()),
            request("old"),
            old.clone(),
            request("vetoed"),
            result("vetoed", Some("app"), rejected()),
        ]);
        let mut answers = Vec::new();
        let spend = scan(tmp.path(), NOW, &mut |a| {
            answers.push((
                a.client.to_owned(),
                a.req_id.to_owned(),
                a.method.to_owned(),
                a.record.outcome.status(),
                a.line.to_owned(),
            ));
            assert_eq!(a.fingerprint, "12".repeat(32));
            let line: serde_json::Value = serde_json::from_str(a.line).unwrap();
            assert_eq!(line["seq"], a.seq);
            Ok(())
        })
        .unwrap()
        .spend;
        assert_eq!(spend.len(), 1);
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(answers[0].1, "new");
        assert_eq!(answers[0].2, "SignDigest");
        assert_eq!(answers[0].3, Status::Signed);
        assert_eq!(
            (answers[1].0.as_str(), answers[1].1.as_str()),
            ("app", "old")
        );
        assert_eq!(answers[1].4, old);
    }
}
