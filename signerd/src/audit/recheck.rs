//! `signerctl audit recheck`: re-evaluates every recorded `sign.decision` from the audit log
//! and the policies archived beside it ([`super::archive`]), and reports every decision the
//! recorded policy would not have made.
//!
//! The log is read once, in order. Spend is rebuilt exactly as the daemon counts it: a
//! decision that allows a request, or sends it to wait for approval, reserves its charges at
//! the second of its record's `ts`; a result other than `signed` releases them; the decision
//! at quorum replaces them; at every `audit.start` only the spend of signed requests and of
//! requests still waiting survives (the daemon's start-up reconciliation). Each decision is
//! evaluated by the policy crate with that usage, as the daemon evaluates it.
//!
//! What the log cannot say exactly is bounded, never guessed in the attacker's favour: the
//! daemon reserves a request's spend a moment before its decision is written and releases it
//! a moment after its result is, so concurrent requests may reach the log in another order
//! than they reserved. That only ever makes the daemon see *more* usage than this replay (so
//! an allowed request the replay finds over a limit is a real difference), while a denial by
//! a limit that fits the replay is reported only if it also fits with every reservation made
//! or released within [`CONCURRENCY_SLACK_SECS`] of it counted.
//!
//! This module only reads; it never writes to the log or the archive.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use alloy_primitives::{U256, U512};
use serde::Serialize;
use signerd_auditor::envelope;
use signerd_auditor::events::{
    self, ApprovalRequest, ApprovalVote, Decision as Recorded, Kind, PolicyLoad, SignDecision,
    Status,
};
use signerd_auditor::segments::{self, LineReader, Next};
use signerd_policy::{Action, BucketKey, Charge, Decision, Identity, Policy, Request, Usage, Used};

use super::archive::{self, ArchiveError};
use crate::approvals::{Requirement, StoredVote, tally};

/// How far apart in time (by `ts`) a reservation or release may be from a denial by a limit
/// and still have been seen by it: see the module documentation.
pub const CONCURRENCY_SLACK_SECS: i64 = 10;

/// Why a log cannot be rechecked at all (as opposed to a decision that differs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecheckError {
    /// The log cannot be read, or a record is not what its type says.
    #[error("{0}")]
    Log(String),
    /// A policy the log names is missing from the archive, altered, or not a policy.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// One decision (or vote) that the recorded policy would not have made (or accepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The record's `seq`.
    pub seq: u64,
    /// Its type (`sign.decision`, `approval.grant`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The request's id.
    pub req_id: String,
    /// The requesting client.
    pub client: String,
    /// What the record says: the decision and its rules.
    pub recorded: String,
    /// What the policy decides: the decision and its rules (or what it requires).
    pub recomputed: String,
    /// Why they differ.
    pub why: String,
}

/// What [`recheck`] found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// `sign.decision` records re-evaluated.
    pub decisions: u64,
    /// Of those, decisions made at quorum (approvals checked too).
    pub quorum_decisions: u64,
    /// Votes whose public key was checked against the policy's `[approvers]`.
    pub votes: u64,
    /// Distinct policies used (read from the archive or given).
    pub policies: usize,
    /// Decisions recorded without the client's roles (earlier releases): evaluated with none.
    pub without_roles: u64,
    /// Denials by a limit that fit the replayed usage but not with the reservations made or
    /// released around them by concurrent requests counted: not differences.
    pub concurrent_limit_denials: u64,
    /// Every difference, in log order.
    pub findings: Vec<Finding>,
}

/// Re-evaluates every `sign.decision` of the log in `dir`, reading policies from
/// `<dir>/policies` and from `extra_policies` (policy files given by hand, e.g. those loaded
/// before the archive existed; each is used only under its own hash).
pub fn recheck(dir: &Path, extra_policies: &[PathBuf]) -> Result<Report, RecheckError> {
    let mut r = Replay::new(dir);
    for path in extra_policies {
        let bytes = std::fs::read(path).map_err(|e| {
            RecheckError::Log(format!("cannot read the policy {}: {e}", path.display()))
        })?;
        let shown = path.display().to_string();
        let text = String::from_utf8(bytes)
            .map_err(|_| RecheckError::Log(format!("the policy {shown} is not UTF-8")))?;
        let policy = Policy::parse(&shown, &text)
            .map_err(|e| RecheckError::Log(format!("the policy {shown}: {e}")))?;
        r.policies
            .insert(policy.hash_hex(), std::rc::Rc::new(policy));
    }
    for seg in segments::list(dir).map_err(RecheckError::Log)? {
        let mut reader = LineReader::open(&seg.path).map_err(RecheckError::Log)?;
        loop {
            let next = reader.next_line().map_err(|e| {
                RecheckError::Log(format!("cannot read {}: {e}", seg.path.display()))
            })?;
            let (line, lineno) = match next {
                Next::Eof => break,
                Next::TooLong { lineno, .. } => {
                    return Err(RecheckError::Log(format!(
                        "{}:{lineno}: longer than a record may be",
                        seg.path.display()
                    )));
                }
                // A torn tail: not a record (the next start cuts it).
                Next::Line { terminated, .. } if !terminated => break,
                Next::Line { bytes, lineno, .. } => (bytes, lineno),
            };
            let at = format!("{}:{lineno}", seg.path.display());
            r.record(line).map_err(|e| match e {
                RecheckError::Log(why) => RecheckError::Log(format!("{at}: {why}")),
                other => other,
            })?;
        }
    }
    r.finish();
    let mut report = r.report;
    report.policies = r.used_policies.len();
    Ok(report)
}

/// A request between its `sign.request` and its `sign.result`.
#[derive(Debug, Default)]
struct Open {
    /// Its last decision was `require_approval`.
    waiting: bool,
    /// The hash of the policy that sent it to wait.
    approval_policy: Option<String>,
    /// What that policy required (recomputed).
    required: Option<Vec<Requirement>>,
    /// What `approval.request` recorded as required.
    recorded_required: Option<Vec<Requirement>>,
    /// The votes recorded so far.
    votes: Vec<StoredVote>,
}

/// A denial by a limit that fits the replayed usage, waiting for the reservations made just
/// after it (by `ts`) before it is judged.
struct Pending {
    finding: Finding,
    ts: i64,
    /// The recomputed charges and the usage the replay saw for each.
    charges: Vec<(Charge, Used)>,
    /// Usage the daemon may have seen besides, by bucket.
    extra: HashMap<String, Sum>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sum {
    amount: U512,
    count: u64,
}

impl Sum {
    fn add(&mut self, amount: U256) {
        self.amount += U512::from(amount);
        self.count += 1;
    }

    fn sub(&mut self, amount: U256) {
        self.amount = self.amount.saturating_sub(U512::from(amount));
        self.count = self.count.saturating_sub(1);
    }

    fn used(self) -> Used {
        Used {
            amount: {
                let l = self.amount.as_limbs();
                if l[4..].iter().all(|x| *x == 0) {
                    U256::from_limbs([l[0], l[1], l[2], l[3]])
                } else {
                    U256::MAX
                }
            },
            count: self.count,
        }
    }

    fn plus(self, other: Sum) -> Sum {
        Sum {
            amount: self.amount + other.amount,
            count: self.count + other.count,
        }
    }
}

/// The spend ledger, indexed for sliding windows: per bucket, the entries by time, and for
/// each window asked about, the sum of the entries inside it as of the last time asked.
/// Where an entry is in its bucket: (time, sequence number).
type EntryKey = (i64, u64);

#[derive(Default)]
struct Ledger {
    buckets: HashMap<String, Bucket>,
    /// The entries of each request still open: (bucket, key in the bucket).
    owners: HashMap<String, Vec<(String, EntryKey)>>,
    next_id: u64,
}

#[derive(Default)]
struct Bucket {
    entries: BTreeMap<EntryKey, U256>,
    /// window_secs -> (since, sum of the entries with a time after `since`)
    windows: HashMap<u64, (i64, Sum)>,
}

impl Bucket {
    fn used(&mut self, window_secs: u64, now: i64) -> Sum {
        let since = now.saturating_sub(i64::try_from(window_secs).unwrap_or(i64::MAX));
        let entries = &self.entries;
        let (at, sum) = self.windows.entry(window_secs).or_insert_with(|| {
            let mut s = Sum::default();
            for (_, a) in entries.range((since.saturating_add(1), 0)..) {
                s.add(*a);
            }
            (since, s)
        });
        if since > *at {
            for (_, a) in entries.range((at.saturating_add(1), 0)..(since.saturating_add(1), 0)) {
                sum.sub(*a);
            }
        } else if since < *at {
            for (_, a) in entries.range((since.saturating_add(1), 0)..(at.saturating_add(1), 0)) {
                sum.add(*a);
            }
        }
        *at = since;
        *sum
    }

    fn insert(&mut self, key: EntryKey, amount: U256) {
        self.entries.insert(key, amount);
        for (since, sum) in self.windows.values_mut() {
            if key.0 > *since {
                sum.add(amount);
            }
        }
    }

    fn remove(&mut self, key: EntryKey) -> Option<U256> {
        let amount = self.entries.remove(&key)?;
        for (since, sum) in self.windows.values_mut() {
            if key.0 > *since {
                sum.sub(amount);
            }
        }
        Some(amount)
    }
}

impl Ledger {
    fn used(&mut self, bucket: &str, window_secs: u64, now: i64, excluding: Option<&str>) -> Sum {
        let Some(b) = self.buckets.get_mut(bucket) else {
            return Sum::default();
        };
        let mut sum = b.used(window_secs, now);
        if let Some(owner) = excluding {
            let since = now.saturating_sub(i64::try_from(window_secs).unwrap_or(i64::MAX));
            for (name, key) in self.owners.get(owner).into_iter().flatten() {
                if name == bucket
                    && key.0 > since
                    && let Some(a) = b.entries.get(key)
                {
                    sum.sub(*a);
                }
            }
        }
        sum
    }

    /// The first charge that does not fit, as the daemon's reservation checks them.
    fn exceeded(
        &mut self,
        charges: &[Charge],
        now: i64,
        excluding: Option<&str>,
    ) -> Option<(String, String)> {
        charges.iter().find_map(|c| {
            let used = self
                .used(c.bucket.as_str(), c.window_secs, now, excluding)
                .used();
            c.exceeded(used).map(|d| (c.limit_id.clone(), d))
        })
    }

    /// Records `owner`'s charges at `now` (charges of windowed limits only, as the daemon).
    fn hold(&mut self, owner: &str, now: i64, charges: &[(String, u64, U256)]) {
        for (bucket, window, amount) in charges {
            if *window == 0 {
                continue;
            }
            let key = (now, self.next_id);
            self.next_id += 1;
            self.buckets
                .entry(bucket.clone())
                .or_default()
                .insert(key, *amount);
            self.owners
                .entry(owner.to_owned())
                .or_default()
                .push((bucket.clone(), key));
        }
    }

    /// Drops `owner`'s entries; returns them (bucket, amount).
    fn release(&mut self, owner: &str) -> Vec<(String, U256)> {
        let mut out = Vec::new();
        for (bucket, key) in self.owners.remove(owner).unwrap_or_default() {
            if let Some(b) = self.buckets.get_mut(&bucket)
                && let Some(a) = b.remove(key)
            {
                out.push((bucket, a));
            }
        }
        out
    }

    /// `owner`'s entries stay, and are no longer its to release.
    fn settle(&mut self, owner: &str) {
        self.owners.remove(owner);
    }
}

/// The ledger as the policy reads it.
struct View<'a> {
    ledger: &'a RefCell<Ledger>,
    excluding: Option<&'a str>,
}

impl Usage for View<'_> {
    fn used(&self, bucket: &BucketKey, window_secs: u64, now_unix: i64) -> Used {
        self.ledger
            .borrow_mut()
            .used(bucket.as_str(), window_secs, now_unix, self.excluding)
            .used()
    }
}

struct Replay {
    archive: PathBuf,
    policies: HashMap<String, std::rc::Rc<Policy>>,
    used_policies: std::collections::HashSet<String>,
    ledger: RefCell<Ledger>,
    open: HashMap<String, Open>,
    /// The client of each request id, for records of releases that did not name it.
    client_of: HashMap<String, String>,
    /// Spend released recently: (ts, bucket, amount).
    released: VecDeque<(i64, String, U256)>,
    pending: VecDeque<Pending>,
    /// The serial and hash of the policy loaded last.
    last_load: Option<(u64, String)>,
    report: Report,
}

/// The decision the policy makes, with what it charges (or requires).
struct Recomputed {
    decision: Decision,
    charges: Vec<Charge>,
    /// A denial by a limit of a request that passed the rules: the charges, and the usage
    /// the replay saw.
    limit_denied: bool,
}

fn owner(client: &str, req_id: &str) -> String {
    format!("{client}\0{req_id}")
}

fn describe(d: &Decision) -> String {
    match d {
        Decision::Allow { rules } => format!("allow {rules:?}"),
        Decision::Deny { rule, reason } => match rule {
            Some(r) => format!("deny [{r:?}] ({reason})"),
            None => format!("deny [] ({reason})"),
        },
        Decision::NeedsApproval { rules, .. } => format!("require_approval {rules:?}"),
    }
}

fn recorded_word(d: &SignDecision) -> String {
    format!("{} {:?}", d.decision.as_str(), d.rules)
}

fn holds(d: &Decision) -> bool {
    matches!(d, Decision::Allow { .. } | Decision::NeedsApproval { .. })
}

fn charge_tuple(c: &Charge) -> (String, String, u64, String) {
    (
        c.limit_id.clone(),
        c.bucket.as_str().to_owned(),
        c.window_secs,
        c.amount.to_string(),
    )
}

fn requirements_of(d: &Decision) -> Option<Vec<Requirement>> {
    match d {
        Decision::NeedsApproval { requirements, .. } => {
            Some(requirements.iter().map(Requirement::from).collect())
        }
        _ => None,
    }
}

impl Replay {
    fn new(dir: &Path) -> Replay {
        Replay {
            archive: dir.join(archive::DIR),
            policies: HashMap::new(),
            used_policies: std::collections::HashSet::new(),
            ledger: RefCell::new(Ledger::default()),
            open: HashMap::new(),
            client_of: HashMap::new(),
            released: VecDeque::new(),
            pending: VecDeque::new(),
            last_load: None,
            report: Report::default(),
        }
    }

    fn policy(&mut self, hash: &str) -> Result<std::rc::Rc<Policy>, RecheckError> {
        self.used_policies.insert(hash.to_owned());
        if let Some(p) = self.policies.get(hash) {
            return Ok(p.clone());
        }
        let p = std::rc::Rc::new(archive::load(&self.archive, hash)?);
        self.policies.insert(hash.to_owned(), p.clone());
        Ok(p)
    }

    fn record(&mut self, line: &[u8]) -> Result<(), RecheckError> {
        self.report.records += 1;
        let env = envelope::parse(line)
            .map_err(|e| RecheckError::Log(format!("not a valid record: {e}")))?;
        let ts = signerd_auditor::rfc3339::parse_unix(env.ts)
            .ok_or_else(|| RecheckError::Log("`ts` is not an RFC 3339 time".to_owned()))?;
        self.judge_pending(Some(ts));
        let bad = |what: &str, e: serde_json::Error| RecheckError::Log(format!("{what}: {e}"));
        match env.kind {
            Some(Kind::PolicyLoad) => {
                let load: PolicyLoad = events::read(line).map_err(|e| bad("policy.load", e))?;
                let policy = self.policy(&load.new_hash)?;
                self.policy_load(env.seq, &load, policy.serial());
                // Decisions under this load saw its address-book entries' first loads (an
                // entry the record does not list was new at this load, as the daemon takes it).
                if !policy.cooling_entries().is_empty() {
                    let known = crate::policy_file::first_loaded(&load.book_entries)
                        .map_err(|e| RecheckError::Log(format!("policy.load: {e}")))?;
                    let mut timed = (*policy).clone();
                    timed.set_first_loaded(&known, Some(ts));
                    self.policies
                        .insert(load.new_hash.clone(), std::rc::Rc::new(timed));
                }
            }
            Some(Kind::AuditStart) => {
                // The daemon's start-up keeps the spend of signed requests and of requests
                // waiting for approval; every other open request is over.
                let over: Vec<String> = self
                    .open
                    .iter()
                    .filter(|(_, o)| !o.waiting)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in over {
                    self.open.remove(&k);
                    self.ledger.borrow_mut().release(&k);
                }
            }
            Some(Kind::SignRequest) => {
                if let (Some(req_id), Some(client)) = (env.req_id.as_str(), env.client.as_str()) {
                    self.client_of.insert(req_id.to_owned(), client.to_owned());
                    let key = owner(client, req_id);
                    if !self.open.get(&key).is_some_and(|o| o.waiting) {
                        self.open.insert(key, Open::default());
                    }
                }
            }
            Some(Kind::SignDecision) => {
                let d: SignDecision = events::read(line).map_err(|e| bad("sign.decision", e))?;
                self.decision(env.seq, ts, &d)?;
            }
            Some(Kind::ApprovalRequest) => {
                let a: ApprovalRequest =
                    events::read(line).map_err(|e| bad("approval.request", e))?;
                self.approval_request(env.seq, &a);
            }
            Some(Kind::ApprovalGrant | Kind::ApprovalReject) => {
                let v: ApprovalVote = events::read(line).map_err(|e| bad("vote", e))?;
                self.vote(env.seq, ts, env.type_name, &v)?;
            }
            Some(Kind::SignResult) => {
                let Some(req_id) = env.req_id.as_str() else {
                    return Ok(());
                };
                let Some(client) = env
                    .client
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| self.client_of.get(req_id).cloned())
                else {
                    return Ok(());
                };
                let key = owner(&client, req_id);
                self.open.remove(&key);
                if env.status() == Some(Status::Signed) {
                    self.ledger.borrow_mut().settle(&key);
                } else {
                    let gone = self.ledger.borrow_mut().release(&key);
                    for (bucket, amount) in gone {
                        self.released.push_back((ts, bucket, amount));
                    }
                }
            }
            _ => {}
        }
        while self
            .released
            .front()
            .is_some_and(|(t, _, _)| *t < ts.saturating_sub(CONCURRENCY_SLACK_SECS))
        {
            self.released.pop_front();
        }
        Ok(())
    }

    /// The policy history is consistent: a load names the archived policy's serial, a reload
    /// replaces the policy loaded last, and a serial goes down only when the record says the
    /// load was forced.
    fn policy_load(&mut self, seq: u64, load: &PolicyLoad, archived_serial: u64) {
        let mut why = Vec::new();
        if archived_serial != load.new_serial {
            why.push(format!(
                "new_serial is {}, but the archived policy has serial {archived_serial}",
                load.new_serial
            ));
        }
        if let Some((last_serial, last_hash)) = &self.last_load {
            if load.old_hash.is_some() && load.old_hash.as_ref() != Some(last_hash) {
                why.push(format!(
                    "it replaces the policy {}, but the policy loaded last is {last_hash}",
                    load.old_hash.as_deref().unwrap_or_default()
                ));
            }
            // A reload must raise the serial; a start may keep it, not lower it.
            let reload = load.old_serial.is_some();
            let lower = if reload {
                load.new_serial <= *last_serial
            } else {
                load.new_serial < *last_serial
            };
            if lower && !load.forced {
                why.push(format!(
                    "serial {} does not follow serial {last_serial}, loaded before, and the \
                     load is not marked forced",
                    load.new_serial
                ));
            }
        }
        if !why.is_empty() {
            self.report.findings.push(Finding {
                seq,
                kind: "policy.load".to_owned(),
                req_id: String::new(),
                client: load.actor.clone().flatten().unwrap_or_default(),
                recorded: format!("serial {} hash {}", load.new_serial, load.new_hash),
                recomputed: String::new(),
                why: why.join("; "),
            });
        }
        self.last_load = Some((load.new_serial, load.new_hash.clone()));
    }

    fn finish(&mut self) {
        self.judge_pending(None);
    }

    /// Judges the pending limit denials whose slack has passed (all at the end of the log).
    fn judge_pending(&mut self, now: Option<i64>) {
        while let Some(p) = self.pending.front() {
            if now.is_some_and(|t| t <= p.ts.saturating_add(CONCURRENCY_SLACK_SECS)) {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let explained = p.charges.iter().any(|(c, used)| {
                let extra = p.extra.get(c.bucket.as_str()).copied().unwrap_or_default();
                let seen = Sum {
                    amount: U512::from(used.amount),
                    count: used.count,
                }
                .plus(extra);
                c.exceeded(seen.used()).is_some()
            });
            if explained {
                self.report.concurrent_limit_denials += 1;
            } else {
                self.report.findings.push(p.finding);
            }
        }
    }

    fn evaluate(
        &self,
        policy: &Policy,
        action: &Action,
        who: &Identity,
        now: i64,
        excluding: Option<&str>,
    ) -> Recomputed {
        let view = View {
            ledger: &self.ledger,
            excluding,
        };
        let eval = policy.evaluate_request(&Request {
            action,
            identity: who,
            now_unix: now,
            usage: &view,
        });
        Recomputed {
            decision: eval.decision,
            charges: eval.charges,
            limit_denied: false,
        }
    }

    /// The reservation step: a decision that holds spend is denied when a charge does not fit.
    fn reserve_check(&self, r: &mut Recomputed, now: i64, excluding: Option<&str>) {
        if holds(&r.decision) && !r.charges.is_empty() {
            let over = self
                .ledger
                .borrow_mut()
                .exceeded(&r.charges, now, excluding);
            if let Some((limit, detail)) = over {
                r.decision = Decision::Deny {
                    rule: Some(limit),
                    reason: detail,
                };
                r.limit_denied = true;
            }
        }
    }

    fn decision(&mut self, seq: u64, ts: i64, d: &SignDecision) -> Result<(), RecheckError> {
        self.report.decisions += 1;
        let Some(client) = d
            .client
            .clone()
            .or_else(|| self.client_of.get(&d.req_id).cloned())
        else {
            return Err(RecheckError::Log(format!(
                "sign.decision for req_id {} names no client and has no sign.request",
                d.req_id
            )));
        };
        let key = owner(&client, &d.req_id);
        let policy = self.policy(&d.policy_hash)?;
        let finding = |recomputed: String, why: String| Finding {
            seq,
            kind: "sign.decision".to_owned(),
            req_id: d.req_id.clone(),
            client: client.clone(),
            recorded: recorded_word(d),
            recomputed,
            why,
        };
        if policy.serial() != d.policy_serial {
            self.report.findings.push(finding(
                String::new(),
                format!(
                    "policy_serial is {}, but the policy with hash {} has serial {}",
                    d.policy_serial,
                    d.policy_hash,
                    policy.serial()
                ),
            ));
        }
        let action: Action = match serde_json::from_value(d.action.clone()) {
            Ok(a) => a,
            Err(e) => {
                self.report.findings.push(finding(
                    String::new(),
                    format!("the recorded action cannot be read: {e}"),
                ));
                return Ok(());
            }
        };
        if d.roles.is_none() {
            self.report.without_roles += 1;
        }
        let who = Identity {
            id: client.clone(),
            roles: d.roles.clone().unwrap_or_default(),
        };
        let quorum = self.open.get(&key).is_some_and(|o| o.waiting);
        let excluding = quorum.then_some(key.as_str());
        let mut r = self.evaluate(&policy, &action, &who, ts, excluding);
        let mut approvals_note: Option<String> = None;
        if quorum {
            self.report.quorum_decisions += 1;
            let open = self.open.get(&key);
            let votes: &[StoredVote] = open.map_or(&[], |o| &o.votes);
            let unchanged = open.and_then(|o| o.approval_policy.as_deref()) == Some(&d.policy_hash);
            if let Decision::NeedsApproval {
                rules,
                requirements,
            } = &r.decision
            {
                let now_required: Vec<Requirement> =
                    requirements.iter().map(Requirement::from).collect();
                r.decision = if unchanged || tally(&now_required, votes, &client, ts).met {
                    Decision::Allow {
                        rules: rules.clone(),
                    }
                } else {
                    Decision::Deny {
                        rule: rules.first().cloned(),
                        reason: "the policy changed while the request waited, and the \
                                 approvals collected do not meet its requirements"
                            .to_owned(),
                    }
                };
            }
            if d.decision == Recorded::Allow {
                approvals_note = self.check_quorum(open, &client, ts, d);
            }
        }
        self.reserve_check(&mut r, ts, excluding);

        // Compare.
        let recomputed = describe(&r.decision);
        let same_decision = d.decision.as_str() == r.decision.as_str();
        let recorded_rules = &d.rules;
        let rules_agree = match &r.decision {
            Decision::Allow { rules } | Decision::NeedsApproval { rules, .. } => {
                rules == recorded_rules
            }
            Decision::Deny { rule, .. } => {
                let limits = policy.limit_ids();
                let is_limit = |x: &str| limits.contains(&x);
                match (rule, recorded_rules.as_slice()) {
                    (None, []) => true,
                    (Some(a), [b]) => a == b || (is_limit(a) && is_limit(b)),
                    _ => false,
                }
            }
        };
        let charges_agree = if same_decision && holds(&r.decision) {
            let mut want: Vec<_> = r.charges.iter().map(charge_tuple).collect();
            let mut got: Vec<_> = d
                .charges
                .iter()
                .map(|c| {
                    (
                        c.limit.clone(),
                        c.bucket.clone(),
                        c.window_secs,
                        c.amount.clone(),
                    )
                })
                .collect();
            want.sort();
            got.sort();
            want == got
        } else {
            true
        };
        let recorded_limit_denial = d.decision == Recorded::Deny
            && matches!(recorded_rules.as_slice(), [b] if policy.limit_ids().contains(&b.as_str()));
        if let Some(why) = approvals_note {
            self.report.findings.push(finding(recomputed.clone(), why));
        }
        if recorded_limit_denial && holds(&r.decision) {
            // The daemon may have seen reservations of concurrent requests this replay places
            // elsewhere: judged once the reservations around it are known.
            let charges: Vec<(Charge, Used)> = r
                .charges
                .iter()
                .map(|c| {
                    let used = self
                        .ledger
                        .borrow_mut()
                        .used(c.bucket.as_str(), c.window_secs, ts, excluding)
                        .used();
                    (c.clone(), used)
                })
                .collect();
            let mut extra: HashMap<String, Sum> = HashMap::new();
            for (t, bucket, amount) in &self.released {
                if *t >= ts.saturating_sub(CONCURRENCY_SLACK_SECS) {
                    extra.entry(bucket.clone()).or_default().add(*amount);
                }
            }
            let f = finding(
                recomputed,
                "denied by a limit, but the request fits every limit with the spend recorded \
                 before it"
                    .to_owned(),
            );
            self.pending.push_back(Pending {
                finding: f,
                ts,
                charges,
                extra,
            });
        } else if !same_decision || !rules_agree {
            let over_limit = r.limit_denied
                || matches!(&r.decision, Decision::Deny { rule: Some(x), .. }
                    if policy.limit_ids().contains(&x.as_str()));
            let why = if over_limit && d.decision != Recorded::Deny {
                "over a limit with the spend recorded before it".to_owned()
            } else if !same_decision {
                "the recorded policy decides otherwise".to_owned()
            } else {
                "the recorded policy names other rules".to_owned()
            };
            self.report.findings.push(finding(recomputed, why));
        } else if !charges_agree {
            let want: Vec<_> = r.charges.iter().map(charge_tuple).collect();
            self.report.findings.push(finding(
                recomputed,
                format!("the recorded charges are not what the policy charges: {want:?}"),
            ));
        }

        // What the daemon reserved, as the record says it decided.
        if matches!(d.decision, Recorded::Allow | Recorded::RequireApproval) {
            let held: Vec<(String, u64, U256)> = if same_decision && holds(&r.decision) {
                r.charges
                    .iter()
                    .map(|c| (c.bucket.as_str().to_owned(), c.window_secs, c.amount))
                    .collect()
            } else {
                d.charges
                    .iter()
                    .map(|c| {
                        (
                            c.bucket.clone(),
                            c.window_secs,
                            c.amount.parse().unwrap_or(U256::MAX),
                        )
                    })
                    .collect()
            };
            for p in &mut self.pending {
                if ts <= p.ts.saturating_add(CONCURRENCY_SLACK_SECS) {
                    for (bucket, _, amount) in &held {
                        p.extra.entry(bucket.clone()).or_default().add(*amount);
                    }
                }
            }
            let mut ledger = self.ledger.borrow_mut();
            if quorum {
                ledger.release(&key);
            }
            ledger.hold(&key, ts, &held);
        }
        let open = self.open.entry(key).or_default();
        open.waiting = d.decision == Recorded::RequireApproval;
        if open.waiting {
            open.approval_policy = Some(d.policy_hash.clone());
            open.required = requirements_of(&r.decision);
        }
        Ok(())
    }

    /// At quorum: the votes recorded must meet what was required, no veto, and `approved_by`
    /// names exactly the approvals that counted.
    fn check_quorum(
        &self,
        open: Option<&Open>,
        client: &str,
        now: i64,
        d: &SignDecision,
    ) -> Option<String> {
        let open = open?;
        let required = open.required.as_ref().or(open.recorded_required.as_ref())?;
        let t = tally(required, &open.votes, client, now);
        if let Some((who, _)) = &t.vetoed_by {
            return Some(format!("allowed at quorum, but `{who}` vetoed it"));
        }
        let unchanged = open.approval_policy.as_deref() == Some(&d.policy_hash);
        if unchanged && !t.met {
            return Some(
                "allowed at quorum, but the approvals recorded do not meet what the policy requires"
                    .to_owned(),
            );
        }
        let mut counted: Vec<String> = t.approved_by.into_iter().flatten().collect();
        let mut named = d.approved_by.clone().unwrap_or_default();
        counted.sort();
        counted.dedup();
        named.sort();
        named.dedup();
        (counted != named).then(|| {
            format!(
                "approved_by names {named:?}, but the approvals recorded that count are {counted:?}"
            )
        })
    }

    fn approval_request(&mut self, seq: u64, a: &ApprovalRequest) {
        let key = owner(&a.client, &a.req_id);
        let Some(open) = self.open.get_mut(&key) else {
            return;
        };
        let recorded: Vec<Requirement> = a
            .requirements
            .iter()
            .map(|g| Requirement {
                group: g.group.clone(),
                min: g.min,
                members: g.members.clone(),
                veto: g.veto,
            })
            .collect();
        if let Some(required) = &open.required {
            let norm = |v: &[Requirement]| {
                let mut v: Vec<_> = v
                    .iter()
                    .map(|r| {
                        let mut m = r.members.clone();
                        m.sort();
                        (r.group.clone(), r.min, m, r.veto)
                    })
                    .collect();
                v.sort();
                v
            };
            if norm(required) != norm(&recorded) {
                self.report.findings.push(Finding {
                    seq,
                    kind: "approval.request".to_owned(),
                    req_id: a.req_id.clone(),
                    client: a.client.clone(),
                    recorded: format!("{:?}", norm(&recorded)),
                    recomputed: format!("{:?}", norm(required)),
                    why: "the recorded requirements are not what the policy requires".to_owned(),
                });
            }
        }
        open.recorded_required = Some(recorded);
    }

    fn vote(
        &mut self,
        seq: u64,
        ts: i64,
        kind: &str,
        v: &ApprovalVote,
    ) -> Result<(), RecheckError> {
        self.report.votes += 1;
        let policy = self.policy(&v.policy_hash)?;
        let registered = policy.approver_key(&v.approver).map(hex::encode);
        if registered.as_deref() != Some(v.public_key.as_str()) {
            self.report.findings.push(Finding {
                seq,
                kind: kind.to_owned(),
                req_id: v.req_id.clone(),
                client: v.client.clone(),
                recorded: format!("public_key {}", v.public_key),
                recomputed: match &registered {
                    Some(k) => format!("public_key {k}"),
                    None => "no key".to_owned(),
                },
                why: format!(
                    "the policy {} does not register this key for `{}`",
                    v.policy_hash, v.approver
                ),
            });
        }
        let key = owner(&v.client, &v.req_id);
        if let Some(open) = self.open.get_mut(&key) {
            open.votes.push(StoredVote {
                approver: v.approver.clone(),
                vote: v.decision,
                expires: v.expires,
                signature: v.signature.clone(),
                public_key: v.public_key.clone(),
                cert_sha256: v.cert_sha256.clone(),
                reason: v.reason.clone(),
                ts,
            });
        }
        Ok(())
    }
}

/// Prints a report: one line per finding, then a summary.
pub fn print(report: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    for f in &report.findings {
        writeln!(
            out,
            "seq {} {} req_id {} (client {}): recorded {}, recomputed {}: {}",
            f.seq, f.kind, f.req_id, f.client, f.recorded, f.recomputed, f.why
        )?;
    }
    writeln!(
        out,
        "{} records, {} decisions rechecked ({} at quorum), {} votes, {} policies; \
         {} decisions recorded without roles; {} limit denials explained by concurrent \
         requests",
        report.records,
        report.decisions,
        report.quorum_decisions,
        report.votes,
        report.policies,
        report.without_roles,
        report.concurrent_limit_denials
    )?;
    if report.findings.is_empty() {
        writeln!(
            out,
            "every decision is what the recorded policy decides: OK"
        )
    } else {
        writeln!(
            out,
            "{} records differ from what the recorded policy decides",
            report.findings.len()
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The indexed ledger answers exactly what a plain scan of its entries answers, through
    /// holds, releases, several windows and a clock that sometimes goes back.
    #[test]
    fn the_indexed_ledger_agrees_with_a_plain_scan() {
        let mut ledger = Ledger::default();
        // (owner, bucket, ts, amount) of every entry held now.
        let mut plain: Vec<(String, String, i64, u64)> = Vec::new();
        let mut seed: u64 = 0x5eed;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut now: i64 = 1_000_000;
        for step in 0..4000u64 {
            // Mostly forward, sometimes a little back.
            now = now + i64::try_from(next(5)).unwrap() - 1;
            let bucket = format!("b{}", next(3));
            let window = [10u64, 60, 3600][usize::try_from(next(3)).unwrap()];
            match next(4) {
                0 | 1 => {
                    let owner = format!("o{step}");
                    let amount = next(1000);
                    ledger.hold(&owner, now, &[(bucket.clone(), window, U256::from(amount))]);
                    plain.push((owner, bucket.clone(), now, amount));
                }
                2 if !plain.is_empty() => {
                    let i = usize::try_from(next(plain.len() as u64)).unwrap();
                    let owner = plain[i].0.clone();
                    ledger.release(&owner);
                    plain.retain(|e| e.0 != owner);
                }
                _ => {}
            }
            let since = now - i64::try_from(window).unwrap();
            let inside: Vec<_> = plain
                .iter()
                .filter(|e| e.1 == bucket && e.2 > since)
                .collect();
            let want = Used {
                amount: U256::from(inside.iter().map(|e| e.3).sum::<u64>()),
                count: inside.len() as u64,
            };
            assert_eq!(
                ledger.used(&bucket, window, now, None).used(),
                want,
                "step {step}"
            );
            // Leaving one request out, as at quorum.
            if let Some(e) = plain.iter().find(|e| e.1 == bucket) {
                let owner = e.0.clone();
                let others: Vec<_> = inside.iter().filter(|x| x.0 != owner).collect();
                let want = Used {
                    amount: U256::from(others.iter().map(|e| e.3).sum::<u64>()),
                    count: others.len() as u64,
                };
                assert_eq!(
                    ledger.used(&bucket, window, now, Some(&owner)).used(),
                    want,
                    "step {step}, without {owner}"
                );
            }
        }
    }

    fn line(seq: u64, event: &impl signerd_auditor::events::Event) -> String {
        let record = signerd_auditor::Record::from_event(event);
        format!(
            r#"{{"v":1,"seq":{seq},"ts":"2026-01-01T00:00:00.000000Z","type":"{}"{},"prev":"{}"}}"#,
            record.kind(),
            String::from_utf8(record.encode().unwrap()).unwrap(),
            "0".repeat(64)
        )
    }

    fn load(serial: u64, hash: &str, old: Option<(u64, &str)>, forced: bool) -> PolicyLoad {
        PolicyLoad {
            source: if old.is_some() {
                events::PolicySource::Sighup
            } else {
                events::PolicySource::Startup
            },
            actor: old.map(|_| None),
            file: "policy.toml".to_owned(),
            old_serial: old.map(|o| o.0),
            old_hash: old.map(|o| o.1.to_owned()),
            new_serial: serial,
            new_hash: hash.to_owned(),
            forced,
            signers: Vec::new(),
            threshold: None,
            book_entries: Vec::new(),
        }
    }

    /// The policy history must hold together: what a reload replaces, serials that only go
    /// down when forced, and the archived policy's serial.
    #[test]
    fn an_inconsistent_policy_history_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = |serial: u64| format!("version = 1\nserial = {serial}\n");
        let h1 = archive::store(dir.path(), p(1).as_bytes()).unwrap();
        let h2 = archive::store(dir.path(), p(2).as_bytes()).unwrap();
        let h3 = archive::store(dir.path(), p(3).as_bytes()).unwrap();
        let lines = [
            line(0, &load(1, &h1, None, false)),
            line(1, &load(2, &h2, Some((1, &h1)), false)),
            // A restart on the same policy; then on an older one, forced.
            line(2, &load(2, &h2, None, false)),
            line(3, &load(1, &h1, None, true)),
            // Bad: an older serial, not forced; a reload that replaces another policy than
            // the one loaded; a serial that is not the archived policy's.
            line(4, &load(2, &h2, Some((1, &h1)), false)),
            line(5, &load(1, &h1, Some((2, &h2)), false)),
            line(6, &load(3, &h3, Some((1, &h2)), false)),
            line(7, &load(4, &h3, None, false)),
        ];
        std::fs::write(
            dir.path().join("segment-00000001.jsonl"),
            lines.join("\n") + "\n",
        )
        .unwrap();
        let report = recheck(dir.path(), &[]).unwrap();
        let found: Vec<(u64, &str)> = report
            .findings
            .iter()
            .map(|f| (f.seq, f.why.as_str()))
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].0, 5);
        assert!(found[0].1.contains("is not marked forced"), "{found:?}");
        assert_eq!(found[1].0, 6);
        assert!(
            found[1].1.contains("the policy loaded last is"),
            "{found:?}"
        );
        assert_eq!(found[2].0, 7);
        assert!(
            found[2].1.contains("the archived policy has serial 3"),
            "{found:?}"
        );
        // A policy the log names and the archive lacks stops the recheck.
        std::fs::remove_file(archive::path_in(&dir.path().join(archive::DIR), &h3)).unwrap();
        let e = recheck(dir.path(), &[]).unwrap_err();
        assert!(e.to_string().contains("is missing"), "{e}");
    }

    /// Amounts beyond 256 bits in sum (unlimited permits) saturate, as the daemon's do.
    #[test]
    fn sums_saturate_at_the_largest_amount() {
        let mut ledger = Ledger::default();
        ledger.hold("a", 10, &[("b".to_owned(), 60, U256::MAX)]);
        ledger.hold("c", 10, &[("b".to_owned(), 60, U256::from(5u64))]);
        assert_eq!(ledger.used("b", 60, 20, None).used().amount, U256::MAX);
        ledger.release("a");
        assert_eq!(
            ledger.used("b", 60, 20, None).used().amount,
            U256::from(5u64)
        );
    }
}
