//! Start-up reconciliation of the spend ledger from the audit log, the source of truth.
//!
//! After a crash the state store may hold reservations of requests that never got a result
//! (they died with the process and must not count), and, if it lost writes, may lack spend that
//! was signed. Before serving, the ledger is rebuilt to exactly the charges of requests whose
//! `sign.result` says `signed`, taken from their last `sign.decision` records inside the longest
//! window a limit may have, plus the charges of requests still waiting for approval (a
//! `require_approval` decision and no result yet): they hold their spend across restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use alloy_primitives::U256;
use signerd_auditor::envelope;
use signerd_auditor::events::{
    self, BookEntryLoad, Decision, KeyPin, Kind, Method, PolicyLoad, SignDecision, SignRequest,
    SignResult, Status,
};
use signerd_auditor::segments::{self, LineReader, Next};

use super::spend::{Entry, MAX_WINDOW_SECS, SETTLE_RATIO, Settled, Spend, settled_at};

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
pub fn signed_spend(dir: &Path, now: i64) -> Result<Spend, String> {
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
    each: impl FnMut(&[u8], &dyn Fn() -> String) -> Result<(), String>,
) -> Result<(), String> {
    for_each_line_from(dir, 1, each)
}

/// Calls `each` with every complete line of the segments of `dir` numbered `first_segment`
/// and later, in log order, and a function that says where it is (`file:line`). A torn last
/// line is not a record and ends its segment.
pub fn for_each_line_from(
    dir: &Path,
    first_segment: u64,
    mut each: impl FnMut(&[u8], &dyn Fn() -> String) -> Result<(), String>,
) -> Result<(), String> {
    for seg in segments::list(dir)?
        .into_iter()
        .filter(|s| s.no >= first_segment)
    {
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
    pub spend: Spend,
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

/// What the log's records say about spend, policies, key pins and answers, record by record:
/// the state start-up needs, derived by [`Ledger::apply`] from each line in log order. A full
/// read, a snapshot (`crate::audit::snapshot`) and the read of the records after a snapshot
/// all go through `apply`, so they cannot disagree.
///
/// Its size does not grow with the number of records: charges older than the longest window
/// ([`MAX_WINDOW_SECS`]) before the latest decision are dropped, a request is forgotten once
/// its result is recorded, and at a restart (`audit.start`) requests that can no longer get a
/// result (never decided, denied, or closed by recovery) are forgotten too. Serializing it is
/// deterministic (ordered maps).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    /// Records applied.
    records: u64,
    /// See [`Scanned::highest_policy_serial`].
    highest_policy_serial: Option<u64>,
    /// See [`Scanned::last_policy_hash`].
    last_policy_hash: Option<String>,
    /// See [`Scanned::pins`].
    pins: Vec<(u64, KeyPin)>,
    /// See [`Scanned::book_entries`].
    book_entries: Vec<BookEntryLoad>,
    /// The latest `ts` of a charging decision, Unix seconds: charges older than the longest
    /// window before it can never count again.
    latest: i64,
    /// The client of each `req_id` with a request and no result yet (records of earlier
    /// releases name no client in decisions and results).
    client_of: BTreeMap<String, String>,
    /// (method, fingerprint) of the last `sign.request` of each request without a result yet,
    /// by owner (`client || 0x00 || req_id`).
    requested: BTreeMap<String, (Method, String)>,
    /// Charges of the last charging decision of each request without a result yet.
    charged: BTreeMap<String, Vec<Entry>>,
    /// Charges of signed requests: (amount, count) by bucket and the second they count at
    /// ([`settled_at`] the latest decision). A bucket holds at most about 16,000 slots, whatever
    /// the number of requests.
    settled: BTreeMap<String, BTreeMap<i64, (U256, u64)>>,
    /// Requests whose last decision was `require_approval`, until a result ends them.
    waiting: BTreeSet<String>,
    /// The `ts` before which `settled` was last pruned (not state: when to prune again).
    #[serde(skip)]
    pruned_at: NotState<i64>,
    /// Charges of signed requests by request, of the records applied since
    /// [`Ledger::keeping_signed`] (not state: what a shared store checks it holds at start-up;
    /// the snapshot builder, which runs for the life of the daemon, keeps none).
    #[serde(skip)]
    signed: NotState<Option<Vec<Entry>>>,
}

/// Data carried beside a ledger's state that is not part of it: it does not take part in
/// comparisons, so a ledger read from a snapshot equals the one a full read derives.
#[derive(Debug, Clone, Default)]
struct NotState<T>(T);

impl<T> PartialEq for NotState<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for NotState<T> {}

impl Ledger {
    /// From now on, also keeps the charges of signed requests by request, for
    /// [`Spend::signed`].
    pub fn keeping_signed(mut self) -> Ledger {
        self.signed.0.get_or_insert_with(Vec::new);
        self
    }

    /// How many records were applied.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Applies one complete line of the log (the record of `seq` [`Ledger::records`]). `at`
    /// says where it is (`file:line`), for errors. Every final answer (`sign.result` `signed`
    /// or `denied` of a request whose `sign.request` was applied) goes to `on_answer`.
    ///
    /// The log has been checked before this runs, so every line is a record; one that is not
    /// is counted and skipped.
    pub fn apply(
        &mut self,
        line: &[u8],
        at: &dyn Fn() -> String,
        on_answer: &mut dyn FnMut(LoggedAnswer<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        self.records += 1;
        let Ok(env) = envelope::parse(line) else {
            return Ok(());
        };
        match env.kind {
            Some(Kind::PolicyLoad) => {
                let load: PolicyLoad = events::read(line)
                    .map_err(|e| format!("{}: malformed policy.load: {e}", at()))?;
                self.highest_policy_serial = self.highest_policy_serial.max(Some(load.new_serial));
                self.last_policy_hash = Some(load.new_hash);
                // Each load lists every entry it holds, so the last one is the whole history.
                self.book_entries = load.book_entries;
                return Ok(());
            }
            Some(Kind::KeyPin) => {
                let pin: KeyPin =
                    events::read(line).map_err(|e| format!("{}: malformed key.pin: {e}", at()))?;
                self.pins.push((env.seq, pin));
                return Ok(());
            }
            Some(Kind::AuditStart) => {
                // Recovery closed the allowed requests of the previous run before this record;
                // only requests waiting for approval can still get a result.
                let waiting = &self.waiting;
                self.requested.retain(|owner, _| waiting.contains(owner));
                self.charged.retain(|owner, _| waiting.contains(owner));
                self.client_of
                    .retain(|req_id, client| waiting.contains(&format!("{client}\0{req_id}")));
                return Ok(());
            }
            _ => {}
        }
        let (Some(kind), Some(req_id)) = (env.kind, env.req_id.as_str()) else {
            return Ok(());
        };
        if kind == Kind::SignRequest {
            if let Some(client) = env.client.as_str() {
                self.client_of.insert(req_id.to_owned(), client.to_owned());
                if let Ok(SignRequest {
                    method,
                    fingerprint: Some(fingerprint),
                    ..
                }) = events::read(line)
                {
                    self.requested
                        .insert(format!("{client}\0{req_id}"), (method, fingerprint));
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
            .or_else(|| self.client_of.get(req_id).cloned())
        else {
            return Ok(());
        };
        let owner = format!("{client}\0{req_id}");
        match (kind, env.decision()) {
            (Kind::SignDecision, Some(d @ (Decision::Allow | Decision::RequireApproval))) => {
                if d == Decision::RequireApproval {
                    self.waiting.insert(owner.clone());
                } else {
                    self.waiting.remove(&owner);
                }
                let ts = signerd_auditor::rfc3339::parse_unix(env.ts)
                    .ok_or_else(|| format!("{}: `ts` is not an RFC 3339 time", at()))?;
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
                self.charged.insert(owner, entries);
                if ts > self.latest {
                    self.latest = ts;
                    self.prune();
                }
            }
            (Kind::SignDecision, _) => {
                self.waiting.remove(&owner);
                self.charged.remove(&owner);
            }
            (Kind::SignResult, _) => {
                self.waiting.remove(&owner);
                if self.client_of.get(req_id) == Some(&client) {
                    self.client_of.remove(req_id);
                }
                let request = self.requested.remove(&owner);
                let charges = self.charged.remove(&owner);
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
                    for e in charges.into_iter().flatten() {
                        let slot = self
                            .settled
                            .entry(e.bucket.clone())
                            .or_default()
                            .entry(e.ts)
                            .or_insert((U256::ZERO, 0));
                        slot.0 = slot.0.saturating_add(e.amount);
                        slot.1 = slot.1.saturating_add(1);
                        if let Some(signed) = &mut self.signed.0 {
                            signed.push(e);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Drops charges that no window can reach any more (older than the longest window before
    /// the latest decision), and moves old signed charges to wider slots. Amortized: at most
    /// once an hour of log time.
    fn prune(&mut self) {
        if self.latest < self.pruned_at.0.saturating_add(3600) {
            return;
        }
        self.settle_old();
        self.pruned_at.0 = self.latest;
    }

    /// Drops the charges of signed requests that no window can reach any more, and moves the
    /// old ones to the slots [`settled_at`] gives at the latest decision. The result does not
    /// depend on how often this ran before.
    fn settle_old(&mut self) {
        let latest = self.latest;
        let horizon = latest.saturating_sub(MAX_WINDOW_SECS as i64);
        let cut = latest.saturating_sub(2 * SETTLE_RATIO);
        for slots in self.settled.values_mut() {
            *slots = slots.split_off(&horizon.saturating_add(1));
            // Only charges at least 2,048 s old can move, and they stay below the others.
            let young = slots.split_off(&cut.saturating_add(1));
            let old = std::mem::replace(slots, young);
            for (ts, (amount, count)) in old {
                let slot = slots
                    .entry(settled_at(ts, latest))
                    .or_insert((U256::ZERO, 0));
                slot.0 = slot.0.saturating_add(amount);
                slot.1 = slot.1.saturating_add(count);
            }
        }
        self.settled.retain(|_, slots| !slots.is_empty());
        if let Some(signed) = &mut self.signed.0 {
            signed.retain(|e| e.ts > horizon);
        }
    }

    /// The state as it would be serialized: old charges dropped, so that two ledgers that
    /// applied the same records serialize to the same bytes however often they pruned.
    pub fn compacted(&self) -> Ledger {
        let horizon = self.latest.saturating_sub(MAX_WINDOW_SECS as i64);
        let mut out = self.clone();
        out.settle_old();
        for entries in out.charged.values_mut() {
            entries.retain(|e| e.ts > horizon);
        }
        out
    }

    /// What start-up needs, at `now` (Unix seconds): the charges of signed requests and of
    /// requests still waiting for approval inside the longest window before `now` (and before
    /// the latest decision, so the result does not depend on when the ledger was pruned).
    pub fn finish(mut self, now: i64) -> Scanned {
        self.settle_old();
        let since = now
            .saturating_sub(MAX_WINDOW_SECS as i64)
            .max(self.latest.saturating_sub(MAX_WINDOW_SECS as i64));
        let waiting = &self.waiting;
        let spend = Spend {
            settled: self
                .settled
                .into_iter()
                .flat_map(|(bucket, slots)| {
                    slots.into_iter().filter(|(ts, _)| *ts > since).map(
                        move |(ts, (amount, count))| Settled {
                            bucket: bucket.clone(),
                            ts,
                            amount,
                            count,
                        },
                    )
                })
                .collect(),
            signed: (self.signed.0)
                .into_iter()
                .flatten()
                .filter(|e| e.ts > since)
                .collect(),
            waiting: self
                .charged
                .into_iter()
                .filter(|(owner, _)| waiting.contains(owner))
                .flat_map(|(_, e)| e)
                .filter(|e| e.ts > since)
                .collect(),
        };
        Scanned {
            spend,
            highest_policy_serial: self.highest_policy_serial,
            last_policy_hash: self.last_policy_hash,
            records: self.records,
            pins: self.pins,
            book_entries: self.book_entries,
        }
    }
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
    scan_from(dir, Ledger::default().keeping_signed(), 1, 0, on_answer).map(|l| l.finish(now))
}

/// Continues `ledger` with the segments of `dir` numbered `first_segment` and later (the
/// records after a snapshot), handing the final answers whose `sign.result` has a `seq` of at
/// least `answers_from` to `on_answer`.
pub fn scan_from(
    dir: &Path,
    mut ledger: Ledger,
    first_segment: u64,
    answers_from: u64,
    on_answer: &mut dyn FnMut(LoggedAnswer<'_>) -> Result<(), String>,
) -> Result<Ledger, String> {
    let mut hand = |a: LoggedAnswer<'_>| {
        if a.seq >= answers_from {
            on_answer(a)
        } else {
            Ok(())
        }
    };
    for_each_line_from(dir, first_segment, |line, at| {
        ledger.apply(line, at, &mut hand)
    })?;
    Ok(ledger)
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
        let spend = signed_spend(tmp.path(), NOW).unwrap();
        let amounts = |entries: &[Entry]| {
            let mut a: Vec<u64> = entries.iter().map(|e| e.amount.to::<u64>()).collect();
            a.sort_unstable();
            a
        };
        // Signed (1), approved at its final charge (200); still waiting (10).
        assert_eq!(amounts(&spend.signed), vec![1, 200]);
        assert_eq!(amounts(&spend.waiting), vec![10]);
        // The same signed charges by bucket and second: one slot, since both were decided in
        // the same second.
        let settled: Vec<(u64, u64)> = spend
            .settled
            .iter()
            .map(|s| (s.amount.to::<u64>(), s.count))
            .collect();
        assert_eq!(settled, vec![(201, 2)]);
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
        assert_eq!(spend.signed.len(), 1);
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

    /// Signed charges are moved to wider slots as the log's time goes on; a ledger that did it
    /// every hour of log time and one that did it only when serialized hold the same state, so a
    /// snapshot plus the records after it still derives what a full read derives.
    #[test]
    fn signed_charges_add_up_the_same_however_often_the_ledger_was_pruned() {
        let mut next = crate::state::spend::tests::xorshift(0x9e37_79b9_7f4a_7c15_u64);
        let (mut often, mut once) = (Ledger::default(), Ledger::default());
        let mut ts = 1_800_000_000i64;
        let charges = 5_000u64;
        for i in 0..charges {
            // About 580 days in all: old charges move, and the oldest leave the longest window.
            ts += next(20_000) as i64;
            for l in [&mut often, &mut once] {
                l.latest = ts;
                let slot = l
                    .settled
                    .entry(format!("limit=l{}", i % 3))
                    .or_default()
                    .entry(ts)
                    .or_insert((U256::ZERO, 0));
                slot.0 += U256::from(i);
                slot.1 += 1;
            }
            often.prune();
        }
        let (often, once) = (often.compacted(), once.compacted());
        assert_eq!(
            serde_json::to_string(&often).unwrap(),
            serde_json::to_string(&once).unwrap()
        );
        let slots: usize = once.settled.values().map(BTreeMap::len).sum();
        let counted: u64 = once
            .settled
            .values()
            .flat_map(|s| s.values())
            .map(|s| s.1)
            .sum();
        assert!(
            slots < counted as usize,
            "{slots} slots for {counted} charges"
        );
        assert!(counted < charges, "the oldest left the window");
    }
}
