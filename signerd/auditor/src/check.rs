//! The record-by-record checks shared by start-up recovery and `signerctl audit verify`:
//! envelope, sequence, hash chain, segment chaining, Merkle tree heads against every
//! checkpoint (and against checkpoints kept outside the log), checkpoint signatures, and the
//! pairing of requests with their decisions and results.
//!
//! The checker is fed one line at a time and keeps O(log n) tree state plus the requests still
//! open, so a million records take seconds and little memory. It must never accept a record
//! it has not checked against everything before it, and never report a position other than
//! the first bad record.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Deserialize;

use crate::envelope::{self, Field, LineError};
use crate::events::{
    self, ApprovalVote, AuditCheckpoint, AuditRecover, AuditSegmentOpen, AuditSegmentSeal,
    AuditSnapshot, Decision, Event, KeyPin, Kind, Outcome, SignResult,
};
use crate::merkle::{self, Frontier, Hash};
use crate::note::{self, Checkpoint, VerifierKey};

/// Where a record is: segment file name, 1-based line number and byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The segment's file name.
    pub segment: String,
    /// The line number, from 1.
    pub lineno: u64,
    /// The byte offset of the line's first byte in the segment.
    pub offset: u64,
}

/// The first problem found, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `segment-00000002.jsonl:17`, when the problem is at a record.
    pub location: Option<String>,
    /// The record's `seq` when known (the expected one if the line could not be parsed).
    pub seq: Option<u64>,
    /// What is wrong and what it means.
    pub message: String,
    /// The line is not a syntactically valid record (a torn or overwritten write).
    pub syntax: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.location, self.seq) {
            (Some(l), Some(s)) => write!(f, "{l} (seq {s}): {}", self.message),
            (Some(l), None) => write!(f, "{l}: {}", self.message),
            (None, Some(s)) => write!(f, "seq {s}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// A failure that is not at one record.
    pub(crate) fn general(message: impl Into<String>) -> Failure {
        Failure {
            location: None,
            seq: None,
            message: message.into(),
            syntax: false,
        }
    }

    pub(crate) fn at(pos: &Position, seq: Option<u64>, message: impl Into<String>) -> Failure {
        Failure {
            location: Some(format!("{}:{}", pos.segment, pos.lineno)),
            seq,
            message: message.into(),
            syntax: false,
        }
    }
}

/// A checkpoint kept outside the log (the `checkpoint` file, an off-host copy) that the log
/// must be consistent with.
#[derive(Debug, Clone)]
pub struct Expected {
    /// How to name it in messages.
    pub label: String,
    /// Its content.
    pub checkpoint: Checkpoint,
}

/// What the checker enforces.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Check every checkpoint's signature with this key.
    pub key: Option<VerifierKey>,
    /// Semantic problems (a result without a request, an allowed request left without result
    /// across a restart) are failures; otherwise they are only tracked.
    pub strict_semantics: bool,
    /// Checkpoints kept outside the log.
    pub expected: Vec<Expected>,
    /// Records before this `seq` were verified before (`audit verify --since`): they are
    /// hashed into the chain and the tree, which must reach the checkpoint verified then, but
    /// their checkpoint signatures and request pairing are not checked again.
    pub verified_below: u64,
}

/// A signing request that has no result yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenRequest {
    /// `seq` of its `sign.request`.
    pub seq: u64,
    /// Its `req_id` (`None` for `null`).
    pub req_id: Option<String>,
    /// The requesting client.
    pub client: Option<String>,
    /// The requested key.
    pub key: Option<String>,
    /// The final decision, if recorded: (allowed, seq of the `sign.decision`).
    pub decision: Option<(bool, u64)>,
    /// A non-final decision was recorded (e.g. waiting for approvals); a later
    /// `sign.decision` decides.
    pub pending: bool,
}

/// Joins `sign.decision` and `sign.result` records to their `sign.request`.
///
/// Every one of them carries `client` and `req_id`; a `req_id` is unique per client, so a
/// record belongs to an open request of the same client and `req_id`. Open requests with the
/// same pair (a retry after a restart) are matched in order, first open request first.
#[derive(Debug, Default)]
pub(crate) struct Pairing {
    open: HashMap<RequestKey, VecDeque<OpenRequest>>,
}

/// What joins the records of one request: (`client`, `req_id`), each `None` for `null`.
type RequestKey = (Option<String>, Option<String>);

fn request_key(env: &envelope::Envelope<'_>) -> Result<RequestKey, String> {
    Ok((opt_string(&env.client), req_key(&env.req_id)?))
}

impl Pairing {
    /// The open requests a decision or result belongs to. A record without `client` (the
    /// `unknown_crash` results of earlier releases) belongs to the oldest open request with its
    /// `req_id`, whatever the client.
    fn key_for(&self, key: RequestKey) -> RequestKey {
        if key.0.is_some() {
            return key;
        }
        self.open
            .iter()
            .filter(|((_, r), q)| *r == key.1 && !q.is_empty())
            .min_by_key(|(_, q)| q.front().map(|o| o.seq))
            .map(|(k, _)| k.clone())
            .unwrap_or(key)
    }
}

fn req_key(field: &Field<'_>) -> Result<Option<String>, String> {
    match field {
        Field::Str(s) => Ok(Some(s.to_string())),
        Field::Null | Field::Absent => Ok(None),
        Field::Other => Err("`req_id` must be a string or null".to_owned()),
    }
}

fn opt_string(field: &Field<'_>) -> Option<String> {
    field.as_str().map(str::to_owned)
}

fn show(key: &RequestKey) -> String {
    let req_id = match &key.1 {
        Some(r) => format!("`{r}`"),
        None => "null".to_owned(),
    };
    match &key.0 {
        Some(c) => format!("{req_id} of client `{c}`"),
        None => req_id,
    }
}

impl Pairing {
    /// A `sign.request`.
    pub(crate) fn request(&mut self, seq: u64, env: &envelope::Envelope<'_>) -> Result<(), String> {
        let key = request_key(env)?;
        self.open
            .entry(key.clone())
            .or_default()
            .push_back(OpenRequest {
                seq,
                req_id: key.1,
                client: key.0,
                key: opt_string(&env.key),
                decision: None,
                pending: false,
            });
        Ok(())
    }

    /// A `sign.decision`: returns its request.
    pub(crate) fn decision(
        &mut self,
        seq: u64,
        env: &envelope::Envelope<'_>,
    ) -> Result<OpenRequest, String> {
        let req_id = self.key_for(request_key(env)?);
        if env.decision.as_str().is_none() {
            return Err("`decision` must be a string".to_owned());
        }
        let allow = match env.decision() {
            Some(Decision::Allow) => Some(true),
            Some(Decision::Deny) => Some(false),
            // Not final (waiting for approvals, or a value of a later version): a later
            // decision decides.
            Some(Decision::RequireApproval) | None => None,
        };
        let open = self
            .open
            .get_mut(&req_id)
            .and_then(|q| q.iter_mut().find(|r| r.decision.is_none()))
            .ok_or_else(|| {
                format!(
                    "sign.decision for req_id {} has no open sign.request before it",
                    show(&req_id)
                )
            })?;
        match allow {
            Some(allow) => open.decision = Some((allow, seq)),
            None => open.pending = true,
        }
        Ok(open.clone())
    }

    /// A `sign.result`: closes and returns its request.
    pub(crate) fn result(&mut self, env: &envelope::Envelope<'_>) -> Result<OpenRequest, String> {
        let req_id = self.key_for(request_key(env)?);
        let found = match self.open.get_mut(&req_id) {
            Some(q) => {
                let r = q.pop_front();
                if q.is_empty() {
                    self.open.remove(&req_id);
                }
                r
            }
            None => None,
        };
        found.ok_or_else(|| {
            format!(
                "sign.result for req_id {} has no open sign.request before it (a result without a request, or a second result)",
                show(&req_id)
            )
        })
    }

    /// The context of a record about `req_id` that does not open or close a request.
    pub(crate) fn peek(&self, env: &envelope::Envelope<'_>) -> Option<&OpenRequest> {
        let req_id = self.key_for(request_key(env).ok()?);
        self.open.get(&req_id).and_then(|q| q.front())
    }

    /// Allowed requests without a result, in decision order.
    pub(crate) fn open_allows(&self) -> Vec<OpenRequest> {
        let mut out: Vec<OpenRequest> = self
            .open
            .values()
            .flatten()
            .filter(|r| matches!(r.decision, Some((true, _))))
            .cloned()
            .collect();
        out.sort_by_key(|r| r.decision.map(|(_, s)| s));
        out
    }

    /// Requests without a result, allowed or not.
    pub(crate) fn open_count(&self) -> usize {
        self.open.values().map(VecDeque::len).sum()
    }

    /// A restart (`audit.start`): requests of the previous run that were never decided or
    /// were denied cannot get a result any more; forget them so that they are not matched with
    /// later requests reusing their `req_id`. Allowed ones stay until a result closes them,
    /// and ones waiting for a final decision stay until it comes.
    pub(crate) fn restart(&mut self) -> usize {
        let before = self.open_count();
        for q in self.open.values_mut() {
            q.retain(|r| {
                matches!(r.decision, Some((true, _))) || (r.pending && r.decision.is_none())
            });
        }
        self.open.retain(|_, q| !q.is_empty());
        before - self.open_count()
    }
}

/// Counts for the verification report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Records checked.
    pub records: u64,
    /// Segments checked.
    pub segments: u64,
    /// `audit.checkpoint` records.
    pub checkpoints: u64,
    /// `audit.start` records.
    pub starts: u64,
    /// `audit.recover` records.
    pub recoveries: u64,
    /// `sign.request` records.
    pub requests: u64,
    /// `sign.decision` records with `allow`.
    pub allowed: u64,
    /// `sign.decision` records with `deny`.
    pub denied: u64,
    /// `sign.result` records, by status.
    pub results: BTreeMap<String, u64>,
    /// Refused clients: `auth.failure` records, each counted `count` times (1 when absent).
    pub auth_failures: u64,
    /// Requests without a result that were forgotten at a restart (refused before a decision).
    pub abandoned: u64,
}

/// The last `audit.checkpoint` record seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastCheckpoint {
    /// Its `seq` (which is also the tree size it covers).
    pub seq: u64,
    /// Its root.
    #[serde(with = "hex32")]
    pub root: Hash,
    /// The note text.
    pub note: String,
}

/// The segment being checked.
#[derive(Debug, Clone)]
pub struct SegmentState {
    /// Its number, from 1.
    pub no: u64,
    /// Its file name.
    pub name: String,
    /// `seq` of its first record, once it has one.
    pub first_seq: Option<u64>,
    /// Records checked in it so far.
    pub records: u64,
    /// `ts` of its first record, once it has one.
    pub first_ts: Option<String>,
    /// It ends with its `audit.segment_seal`.
    pub sealed: bool,
    /// Holds records other than the log's own bookkeeping ([`Kind::is_bookkeeping`]).
    pub content: bool,
}

/// A sealed segment: what the next `audit.segment_open` must name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedSegment {
    /// Its file name.
    pub name: String,
    /// SHA-256 of the whole file.
    #[serde(with = "hex32")]
    pub sha256: Hash,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Verifies the approver's Ed25519 signature in an `approval.grant` or `approval.reject`
/// record over the approval message the record describes, with the public key it names
/// (`docs/approvals.md`). The record's type must agree with its `decision`.
fn verify_vote(vote: &ApprovalVote, kind: Kind) -> Result<(), String> {
    use crate::approval::{SignatureError, message, verify};
    if vote.kind() != kind {
        return Err(format!("{kind} with decision {:?}", vote.decision.as_str()));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(&vote.public_key, &mut key).map_err(|_| {
        format!(
            "{kind} by {:?}: public_key is not 32 bytes of hex",
            vote.approver
        )
    })?;
    let signature = hex::decode(&vote.signature)
        .map_err(|_| format!("{kind} by {:?}: signature is not hex", vote.approver))?;
    let msg = message(
        &vote.client,
        &vote.req_id,
        &vote.fingerprint,
        vote.decision,
        vote.expires,
    );
    verify(&key, &msg, &signature).map_err(|e| {
        let why = match e {
            SignatureError::Length(_) => e.to_string(),
            _ => format!(
                "the signature does not verify with the key registered for `{}` over this request's approval message",
                vote.approver
            ),
        };
        format!(
            "{kind} for req_id {:?} of {:?}: {why}",
            vote.req_id, vote.client
        )
    })
}

/// The body of `line`, a record of type `kind`, as its event.
fn body<'a, T: Deserialize<'a>>(line: &'a [u8], kind: Kind) -> Result<T, String> {
    events::read(line).map_err(|e| format!("malformed {kind} record: {e}"))
}

fn is_hex32(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a log one record at a time.
#[derive(Debug)]
pub struct Checker {
    opts: Options,
    next_seq: u64,
    prev: Hash,
    tree: Frontier,
    segment: Option<SegmentState>,
    sealed: Option<SealedSegment>,
    origin: Option<String>,
    last_checkpoint: Option<LastCheckpoint>,
    pairing: Pairing,
    /// `key.pin` records by `seq`: (key, version).
    pins: HashMap<u64, (String, Option<u64>)>,
    stats: Stats,
    expected_next: usize,
    /// Kind of the last record.
    last_kind: Option<String>,
    /// `seq` after the last record that a checkpoint covers, or that the log before it fully
    /// determines (a seal, and the next segment's open, right after covered records).
    attested_next: u64,
    /// `audit.recover` records.
    recovered: Vec<Recovered>,
    /// The request the last record closed, when it was a `sign.result` that closed one (not
    /// part of [`CheckerState`]: it describes one record, not the log).
    closed: Option<OpenRequest>,
}

/// What an `audit.recover` record says recovery cut and saved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovered {
    /// Where the cut bytes were saved, relative to the log directory.
    pub saved_as: String,
    /// Their SHA-256, lowercase hex.
    pub sha256: String,
    /// How many bytes were cut.
    pub bytes: u64,
}

/// A hash as lowercase hex in serialized state.
mod hex32 {
    use super::Hash;

    pub(super) fn serialize<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// One perfect subtree of the tree's right edge, in serialized state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrontierNode {
    /// Its height (0: a leaf).
    pub height: u32,
    /// Its hash.
    #[serde(with = "hex32")]
    pub hash: Hash,
}

/// A `key.pin` record the checker remembers, in serialized state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinSeen {
    /// `seq` of the `key.pin` record.
    pub seq: u64,
    /// The pinned key.
    pub key: String,
    /// The pinned version, if the key has versions.
    pub version: Option<u64>,
}

/// Everything a [`Checker`] knows after the last record of a sealed segment, so that a
/// checker resumed from it ([`Checker::resume`]) checks the records after that segment
/// exactly as a checker that read the whole log would. Deterministic: serializing the state
/// of two checkers that read the same records gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckerState {
    /// The `seq` of the next record: how many records were checked.
    pub next_seq: u64,
    /// The leaf hash of the last record.
    #[serde(with = "hex32")]
    pub prev: Hash,
    /// The right edge of the Merkle tree, largest subtree first.
    pub tree: Vec<FrontierNode>,
    /// The last sealed segment, which the next `audit.segment_open` names.
    pub sealed: SealedSegment,
    /// The checkpoints' origin, once a checkpoint was seen.
    pub origin: Option<String>,
    /// The last `audit.checkpoint` record.
    pub last_checkpoint: Option<LastCheckpoint>,
    /// Requests without a result, in the order of their `sign.request`.
    pub open: Vec<OpenRequest>,
    /// `key.pin` records, by `seq`.
    pub pins: Vec<PinSeen>,
    /// Counts so far.
    pub stats: Stats,
    /// The type of the last record.
    pub last_kind: Option<String>,
    /// `seq` after the last attested record.
    pub attested_next: u64,
    /// `audit.recover` records, in order.
    pub recovered: Vec<Recovered>,
}

impl Checker {
    /// The checker's state, between segments: right after [`Checker::end_segment`] of a sealed
    /// segment (`None` elsewhere).
    pub fn state(&self) -> Option<CheckerState> {
        if self.segment.is_some() {
            return None;
        }
        let sealed = self.sealed.clone()?;
        let mut open: Vec<OpenRequest> = self.pairing.open.values().flatten().cloned().collect();
        open.sort_by_key(|r| r.seq);
        let mut pins: Vec<PinSeen> = self
            .pins
            .iter()
            .map(|(seq, (key, version))| PinSeen {
                seq: *seq,
                key: key.clone(),
                version: *version,
            })
            .collect();
        pins.sort_by_key(|p| p.seq);
        Some(CheckerState {
            next_seq: self.next_seq,
            prev: self.prev,
            tree: self
                .tree
                .nodes()
                .iter()
                .map(|&(height, hash)| FrontierNode { height, hash })
                .collect(),
            sealed,
            origin: self.origin.clone(),
            last_checkpoint: self.last_checkpoint.clone(),
            open,
            pins,
            stats: self.stats.clone(),
            last_kind: self.last_kind.clone(),
            attested_next: self.attested_next,
            recovered: self.recovered.clone(),
        })
    }

    /// A checker that continues after the sealed segment `state` was taken at. External
    /// checkpoints in `opts.expected` smaller than the state's tree are not checked (their
    /// roots are not in the state); the others are, as by [`Checker::new`].
    pub fn resume(mut opts: Options, state: CheckerState) -> Result<Checker, String> {
        let tree = Frontier::from_nodes(
            state.next_seq,
            state.tree.iter().map(|n| (n.height, n.hash)).collect(),
        )?;
        if state.attested_next > state.next_seq
            || state.stats.records != state.next_seq
            || state
                .last_checkpoint
                .as_ref()
                .is_some_and(|c| c.seq >= state.next_seq)
        {
            return Err("the checker state is inconsistent".to_owned());
        }
        opts.expected.sort_by_key(|e| e.checkpoint.size);
        let expected_next = opts
            .expected
            .iter()
            .take_while(|e| e.checkpoint.size < state.next_seq)
            .count();
        let mut pairing = Pairing::default();
        for r in state.open {
            pairing
                .open
                .entry((r.client.clone(), r.req_id.clone()))
                .or_default()
                .push_back(r);
        }
        Ok(Checker {
            opts,
            next_seq: state.next_seq,
            prev: state.prev,
            tree,
            segment: None,
            sealed: Some(state.sealed),
            origin: state.origin,
            last_checkpoint: state.last_checkpoint,
            pairing,
            pins: state
                .pins
                .into_iter()
                .map(|p| (p.seq, (p.key, p.version)))
                .collect(),
            stats: state.stats,
            expected_next,
            last_kind: state.last_kind,
            attested_next: state.attested_next,
            recovered: state.recovered,
            closed: None,
        })
    }

    /// A checker for a log that starts at `seq` 0.
    pub fn new(mut opts: Options) -> Checker {
        opts.expected.sort_by_key(|e| e.checkpoint.size);
        Checker {
            opts,
            next_seq: 0,
            prev: [0; 32],
            tree: Frontier::new(),
            segment: None,
            sealed: None,
            origin: None,
            last_checkpoint: None,
            pairing: Pairing::default(),
            pins: HashMap::new(),
            stats: Stats::default(),
            expected_next: 0,
            last_kind: None,
            attested_next: 0,
            recovered: Vec::new(),
            closed: None,
        }
    }

    /// The request that the last record checked closed: its `sign.request`'s `seq`, client
    /// and `req_id`, when that record was a `sign.result` matched to an open request.
    pub fn closed(&self) -> Option<&OpenRequest> {
        self.closed.as_ref()
    }

    /// The `seq` of every `sign.request` that has no result yet and can still get one.
    pub fn open_request_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.pairing.open.values().flatten().map(|r| r.seq)
    }

    /// The `seq` the next record must have: the number of records checked so far.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The leaf hash of the last record checked (64 zeros before the first): the next
    /// record's `prev`.
    pub fn prev(&self) -> Hash {
        self.prev
    }

    /// The Merkle tree of the records checked so far.
    pub fn tree(&self) -> &Frontier {
        &self.tree
    }

    /// The segment being checked; `None` before the first and after a sealed one ended.
    pub fn segment(&self) -> Option<&SegmentState> {
        self.segment.as_ref()
    }

    /// The last sealed segment that ended, which the next `audit.segment_open` must name.
    pub fn sealed(&self) -> Option<&SealedSegment> {
        self.sealed.as_ref()
    }

    /// The checkpoints' origin, once a checkpoint was seen.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The last `audit.checkpoint` record checked.
    pub fn last_checkpoint(&self) -> Option<&LastCheckpoint> {
        self.last_checkpoint.as_ref()
    }

    /// Records at the end that no checkpoint covers (a seal or an open that only follows
    /// covered records is not counted: the log before it determines it).
    pub fn unattested(&self) -> u64 {
        self.next_seq - self.attested_next
    }

    /// The type of the last record checked.
    pub fn last_kind(&self) -> Option<&str> {
        self.last_kind.as_deref()
    }

    /// Every `audit.recover` record checked, in order.
    pub fn recovered(&self) -> &[Recovered] {
        &self.recovered
    }

    /// Counts of what was checked.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Allowed requests that have no result yet, in decision order.
    pub fn open_allows(&self) -> Vec<OpenRequest> {
        self.pairing.open_allows()
    }

    /// Starts segment `no` named `name`. The previous one, if any, must have been sealed
    /// and ended with [`Checker::end_segment`].
    pub fn begin_segment(&mut self, no: u64, name: &str) -> Result<(), Failure> {
        if let Some(seg) = &self.segment {
            return Err(Failure::general(format!(
                "{} does not end with audit.segment_seal, but {name} follows it: a sealed segment was cut short or a segment was inserted",
                seg.name
            )));
        }
        self.segment = Some(SegmentState {
            no,
            name: name.to_owned(),
            first_seq: None,
            records: 0,
            first_ts: None,
            sealed: false,
            content: false,
        });
        self.stats.segments += 1;
        Ok(())
    }

    /// Ends the current segment, which must be sealed unless it is the last one.
    pub fn end_segment(&mut self, sha256: Hash, bytes: u64) {
        if let Some(seg) = &self.segment
            && seg.sealed
        {
            self.sealed = Some(SealedSegment {
                name: seg.name.clone(),
                sha256,
                bytes,
            });
            self.segment = None;
        }
    }

    /// Checks the external checkpoints whose size is the current tree size. Every checkpoint
    /// signerd publishes or hands out is the note of the `audit.checkpoint` record right after
    /// the records it covers, so `next` (the record at that position: `Some(type)`, or `None`
    /// when the log ends there) must be that record.
    fn check_expected(&mut self, next: Option<(Option<Kind>, &str)>) -> Result<(), String> {
        while let Some(e) = self.opts.expected.get(self.expected_next) {
            if e.checkpoint.size != self.tree.size() {
                break;
            }
            let root = self.tree.root();
            if e.checkpoint.root != root {
                return Err(format!(
                    "{} covers {} records with root {}, but the first {} records of the log hash to {}: the log was rewritten or replaced",
                    e.label,
                    e.checkpoint.size,
                    hex::encode(e.checkpoint.root),
                    e.checkpoint.size,
                    hex::encode(root)
                ));
            }
            match next {
                Some((Some(Kind::AuditCheckpoint), _)) => {}
                Some((_, type_name)) => {
                    return Err(format!(
                        "{} covers {} records, so record {} must be the audit.checkpoint it was published from, but it is {type_name}: records were replaced",
                        e.label, e.checkpoint.size, e.checkpoint.size
                    ));
                }
                None => {
                    return Err(format!(
                        "the log ends after {} records, right before the audit.checkpoint record that {} was published from: records at the end were removed (the log was cut)",
                        e.checkpoint.size, e.label
                    ));
                }
            }
            self.expected_next += 1;
        }
        Ok(())
    }

    /// Checks one line (without its newline) at `pos`.
    pub fn record(&mut self, pos: &Position, line: &[u8]) -> Result<Hash, Failure> {
        self.closed = None;
        let expected_seq = self.next_seq;
        let env = envelope::parse(line).map_err(|e| {
            let syntax = matches!(e, LineError::Syntax(_));
            let mut f = Failure::at(pos, Some(expected_seq), format!("not a valid record: {e}"));
            f.syntax = syntax;
            f
        })?;
        let seq = env.seq;
        let fail = |m: String| Failure::at(pos, Some(seq), m);
        if seq != expected_seq {
            return Err(fail(format!(
                "seq is {seq}, expected {expected_seq}: the sequence has a gap or is out of order (a record was removed, inserted or moved)"
            )));
        }
        if env.prev != self.prev {
            let of = if seq == 0 {
                "64 zeros for the first record"
            } else {
                "the leaf hash of the previous record"
            };
            return Err(fail(format!(
                "prev is {}, expected {} ({of}): the hash chain is broken (the previous record was changed, or records were removed, inserted or reordered)",
                hex::encode(env.prev),
                hex::encode(self.prev)
            )));
        }
        self.check_expected(Some((env.kind, env.type_name)))
            .map_err(&fail)?;
        let Some(seg) = self.segment.as_mut() else {
            return Err(fail("record outside a segment".to_owned()));
        };
        if seg.sealed {
            return Err(fail(format!(
                "record after the audit.segment_seal of {}: a sealed segment must end with its seal",
                seg.name
            )));
        }
        let header = seg.records == 0 && seg.no > 1;
        if header && env.kind != Some(Kind::AuditSegmentOpen) {
            return Err(fail(format!(
                "the first record of {} is {}, expected audit.segment_open",
                seg.name, env.type_name
            )));
        }
        // Records of types this version does not know are checked like any other (envelope,
        // sequence, chain, tree) and otherwise ignored.
        let Some(kind) = env.kind else {
            return self.accept(line, &env, pos);
        };
        match kind {
            Kind::AuditSegmentOpen => {
                if !header {
                    return Err(fail(
                        "audit.segment_open must be the first record of a segment other than the first"
                            .to_owned(),
                    ));
                }
                let b: AuditSegmentOpen = body(line, kind).map_err(&fail)?;
                let Some(prev) = &self.sealed else {
                    return Err(fail(
                        "audit.segment_open without a sealed previous segment".to_owned(),
                    ));
                };
                if b.segment != seg.name {
                    return Err(fail(format!(
                        "audit.segment_open names segment {:?}, but it is in {}: segment files were renamed",
                        b.segment, seg.name
                    )));
                }
                if b.previous != prev.name
                    || b.previous_sha256 != hex::encode(prev.sha256)
                    || b.previous_bytes != prev.bytes
                {
                    return Err(fail(format!(
                        "audit.segment_open names the previous segment as {:?} with SHA-256 {} and {} bytes, but {} has SHA-256 {} and {} bytes: the sealed segment was changed",
                        b.previous,
                        b.previous_sha256,
                        b.previous_bytes,
                        prev.name,
                        hex::encode(prev.sha256),
                        prev.bytes
                    )));
                }
            }
            Kind::AuditSegmentSeal => {
                let b: AuditSegmentSeal = body(line, kind).map_err(&fail)?;
                let first = seg.first_seq.unwrap_or(seq);
                if b.segment != seg.name || b.first_seq != first || b.records != seg.records + 1 {
                    return Err(fail(format!(
                        "audit.segment_seal says segment {:?}, first seq {}, {} records; the segment is {}, first seq {first}, {} records",
                        b.segment,
                        b.first_seq,
                        b.records,
                        seg.name,
                        seg.records + 1
                    )));
                }
                seg.sealed = true;
            }
            Kind::AuditCheckpoint => self.checkpoint(line, seq).map_err(&fail)?,
            Kind::AuditRecover => {
                let b: AuditRecover = body(line, kind).map_err(&fail)?;
                if !is_hex32(&b.sha256)
                    || b.bytes == 0
                    || crate::segments::parse_segment_name(&b.segment).is_none()
                    || !(b.saved_as.starts_with("recovered/torn-") && b.unattested_records == 0
                        || b.saved_as.starts_with("recovered/unattested-")
                            && b.unattested_records > 0)
                {
                    return Err(fail(format!(
                        "malformed audit.recover record (segment {:?}, offset {}, {} bytes, sha256 {:?}, saved as {:?})",
                        b.segment, b.offset, b.bytes, b.sha256, b.saved_as
                    )));
                }
                self.stats.recoveries += 1;
                self.recovered.push(Recovered {
                    saved_as: b.saved_as,
                    sha256: b.sha256,
                    bytes: b.bytes,
                });
            }
            Kind::AuditSnapshot => {
                let b: AuditSnapshot = body(line, kind).map_err(&fail)?;
                if !is_hex32(&b.sha256)
                    || b.records >= seq
                    || b.file != crate::layout::snapshot_file(b.records)
                {
                    return Err(fail(format!(
                        "malformed audit.snapshot record (records {}, sha256 {:?}, file {:?}): it must name a snapshot of fewer records than come before it, as {}",
                        b.records,
                        b.sha256,
                        b.file,
                        crate::layout::snapshot_file(b.records)
                    )));
                }
            }
            Kind::AuditStart => {
                self.stats.starts += 1;
                if self.stats.starts > 1
                    && self.opts.strict_semantics
                    && seq >= self.opts.verified_below
                    && let Some(r) = self.pairing.open_allows().first()
                {
                    return Err(fail(format!(
                        "request {} was allowed (sign.decision at seq {}) but has no sign.result before signerd restarted here; recovery should have recorded `unknown_crash`",
                        show(&(r.client.clone(), r.req_id.clone())),
                        r.decision.map_or(0, |(_, s)| s)
                    )));
                }
                self.stats.abandoned += self.pairing.restart() as u64;
            }
            Kind::SignRequest => {
                self.stats.requests += 1;
                self.semantic(pos, seq, |p| p.request(seq, &env))?;
            }
            Kind::SignDecision => {
                match env.decision() {
                    Some(Decision::Allow) => self.stats.allowed += 1,
                    Some(Decision::Deny) => self.stats.denied += 1,
                    _ => {}
                }
                self.semantic(pos, seq, |p| p.decision(seq, &env).map(|_| ()))?;
            }
            Kind::SignResult => {
                let status = env.status.as_str().unwrap_or("(none)").to_owned();
                *self.stats.results.entry(status).or_default() += 1;
                let pinned = self.check_pin(line, self.pairing.peek(&env));
                let mut closed = None;
                self.semantic(pos, seq, |p| p.result(&env).map(|r| closed = Some(r)))?;
                self.semantic(pos, seq, |_| pinned)?;
                self.closed = closed;
            }
            Kind::KeyPin => match body::<KeyPin>(line, kind) {
                Ok(b) => {
                    self.pins.insert(seq, (b.key, b.version));
                }
                Err(e) => self.semantic(pos, seq, |_| Err(e))?,
            },
            Kind::ApprovalGrant | Kind::ApprovalReject => {
                let b: Result<ApprovalVote, String> = body(line, kind);
                self.semantic(pos, seq, |_| b.and_then(|b| verify_vote(&b, kind)))?;
            }
            Kind::AuthFailure => {
                // A folded record stands for `count` refusals.
                let n = body::<events::AuthFailure>(line, kind).map_or(1, |a| a.count.unwrap_or(1));
                self.stats.auth_failures = self.stats.auth_failures.saturating_add(n);
            }
            Kind::AuditStop
            | Kind::PolicyLoad
            | Kind::PolicyRefused
            | Kind::StateRebind
            | Kind::KeyAllowance
            | Kind::SignDryRun
            | Kind::ApprovalRequest
            | Kind::ApprovalExpire => {}
        }
        self.accept(line, &env, pos)
    }

    /// A signed `sign.result` that names its key's pin (`pin`, the `seq` of a `key.pin`) must
    /// name the pin of the key its request asked for, and of the version that signed.
    fn check_pin(&self, line: &[u8], open: Option<&OpenRequest>) -> Result<(), String> {
        let Ok(SignResult {
            outcome:
                Outcome::Signed {
                    pin: Some(pin),
                    key_version,
                    ..
                },
            ..
        }) = body::<SignResult>(line, Kind::SignResult)
        else {
            return Ok(());
        };
        let Some((key, version)) = self.pins.get(&pin) else {
            return Err(format!(
                "sign.result names the key pin at seq {pin}, but no key.pin record is there: the pin was removed or the result changed"
            ));
        };
        if open
            .and_then(|o| o.key.as_deref())
            .is_some_and(|k| k != key)
            || *version != key_version
        {
            return Err(format!(
                "sign.result names the key pin at seq {pin}, which pins key {key:?} version {version:?}, not the key and version that signed"
            ));
        }
        Ok(())
    }

    /// Adds a checked record to the segment, the chain and the tree.
    fn accept(
        &mut self,
        line: &[u8],
        env: &envelope::Envelope<'_>,
        pos: &Position,
    ) -> Result<Hash, Failure> {
        let seq = env.seq;
        let fail = |m: String| Failure::at(pos, Some(seq), m);
        let Some(seg) = self.segment.as_mut() else {
            return Err(fail("record outside a segment".to_owned()));
        };
        if seg.first_seq.is_none() {
            seg.first_seq = Some(seq);
            seg.first_ts = Some(env.ts.to_owned());
        }
        if !env.kind.is_some_and(Kind::is_bookkeeping) {
            seg.content = true;
        }
        seg.records += 1;
        let leaf = merkle::leaf_hash(line);
        self.tree.push(leaf);
        self.prev = leaf;
        self.next_seq = seq
            .checked_add(1)
            .ok_or_else(|| fail("seq overflows".to_owned()))?;
        self.stats.records += 1;
        self.last_kind = Some(env.type_name.to_owned());
        match env.kind {
            Some(Kind::AuditCheckpoint) => self.attested_next = seq + 1,
            Some(Kind::AuditSegmentSeal | Kind::AuditSegmentOpen) if self.attested_next == seq => {
                self.attested_next = seq + 1;
            }
            _ => {}
        }
        Ok(leaf)
    }

    fn semantic(
        &mut self,
        pos: &Position,
        seq: u64,
        f: impl FnOnce(&mut Pairing) -> Result<(), String>,
    ) -> Result<(), Failure> {
        match f(&mut self.pairing) {
            Ok(()) => Ok(()),
            Err(e) if self.opts.strict_semantics && seq >= self.opts.verified_below => {
                Err(Failure::at(pos, Some(seq), e))
            }
            Err(_) => Ok(()),
        }
    }

    fn checkpoint(&mut self, line: &[u8], seq: u64) -> Result<(), String> {
        let b: AuditCheckpoint = body(line, Kind::AuditCheckpoint)?;
        if b.size != seq {
            return Err(format!(
                "audit.checkpoint covers {} records, but a checkpoint covers exactly the {seq} records before it",
                b.size
            ));
        }
        let root = self.tree.root();
        if b.root != hex::encode(root) {
            return Err(format!(
                "audit.checkpoint has root {}, but the {seq} records before it hash to {}: records before this checkpoint were changed",
                b.root,
                hex::encode(root)
            ));
        }
        let (cp, _) =
            note::parse_note(&b.note).map_err(|e| format!("audit.checkpoint note: {e}"))?;
        if cp.size != seq || cp.root != root {
            return Err(format!(
                "the note of audit.checkpoint says {} records with root {}, not the record's {seq} and {}",
                cp.size,
                hex::encode(cp.root),
                hex::encode(root)
            ));
        }
        match &self.origin {
            Some(o) if *o != cp.origin => {
                return Err(format!(
                    "checkpoint origin changed from {o:?} to {:?}: a log keeps one origin",
                    cp.origin
                ));
            }
            Some(_) => {}
            None => self.origin = Some(cp.origin.clone()),
        }
        if let Some(key) = self
            .opts
            .key
            .as_ref()
            .filter(|_| seq >= self.opts.verified_below)
        {
            note::verify_note(&b.note, key).map_err(|e| {
                format!("checkpoint signature: {e} (a forged or replaced checkpoint, or the wrong verifier key)")
            })?;
        }
        self.stats.checkpoints += 1;
        self.last_checkpoint = Some(LastCheckpoint {
            seq,
            root,
            note: b.note,
        });
        Ok(())
    }

    /// After the last record: checks the external checkpoints not reached yet.
    pub fn finish(&mut self) -> Result<(), Failure> {
        self.check_expected(None).map_err(Failure::general)?;
        if let Some(e) = self.opts.expected.get(self.expected_next) {
            return Err(Failure::general(format!(
                "the log has {} records, but {} covers {}: records at the end were removed (the log was truncated or replaced)",
                self.tree.size(),
                e.label,
                e.checkpoint.size
            )));
        }
        Ok(())
    }
}
