//! Every record type of the audit log as a typed event: one struct per type, whose fields are
//! the type's body members in the order `docs/audit-log.md` ("Record types") lists them, the
//! type names ([`Kind`]), and enums for the members that take one of a few values
//! ([`Method`], [`Decision`], [`Status`], [`PolicySource`], and [`Vote`] from
//! [`crate::approval`]).
//!
//! Writers turn an event into a record with [`Record::from_event`] (or pass it where a
//! [`Record`] is expected: every event converts into one). The bytes are exactly those the
//! field-by-field builder ([`Record::new`], [`Record::field`]) writes for the same data, so
//! nothing on disk depends on which of the two wrote a record. Readers deserialize a whole line
//! into the event of its type with [`read`]: the envelope members, and members a later version
//! may add, are ignored. Members that earlier releases did not write are `Option`s that read
//! as `None` from their records (`client` of `sign.decision` and `sign.result`).
//!
//! Nested objects (`signature`, `charges`, `requirements`) have their fields in alphabetical
//! order, as the spec requires; `action` is the policy's own JSON (`serde_json` sorts its
//! keys). A value outside a closed set is refused: by serde when reading, and by the type
//! system when writing, so no writer can put `"singed"` in a `status`. Readers that must
//! accept values of later versions (a `decision` that is not final, a `status` to count) read
//! the raw string from the [`envelope`](crate::envelope) and [`parse`](Status::parse) it.
//!
//! The test `events::tests::the_spec_and_the_events_agree` reads `docs/audit-log.md` and fails
//! when it and this module disagree on a type, a member's name or a member's place. This
//! module must never reorder or rename a member: the bytes on disk are the bytes hashed.

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

pub use crate::approval::Vote;
use crate::record::Record;

/// Defines an enum whose values are written as fixed strings, with the list of its values,
/// the string of each, and the value of a string.
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in the order of the spec.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The value as the log writes it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value the log writes as `text`, if there is one.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_set! {
    /// A record type: the envelope's `type`.
    pub enum Kind {
        /// [`AuditStart`].
        AuditStart = "audit.start",
        /// [`AuditStop`].
        AuditStop = "audit.stop",
        /// [`AuditCheckpoint`].
        AuditCheckpoint = "audit.checkpoint",
        /// [`AuditSegmentSeal`].
        AuditSegmentSeal = "audit.segment_seal",
        /// [`AuditSegmentOpen`].
        AuditSegmentOpen = "audit.segment_open",
        /// [`AuditRecover`].
        AuditRecover = "audit.recover",
        /// [`AuditSnapshot`].
        AuditSnapshot = "audit.snapshot",
        /// [`AuthFailure`].
        AuthFailure = "auth.failure",
        /// [`PolicyLoad`].
        PolicyLoad = "policy.load",
        /// [`PolicyRefused`].
        PolicyRefused = "policy.refused",
        /// [`StateRebind`].
        StateRebind = "state.rebind",
        /// [`KeyPin`].
        KeyPin = "key.pin",
        /// [`KeyAllowance`].
        KeyAllowance = "key.allowance",
        /// [`SignRequest`].
        SignRequest = "sign.request",
        /// [`SignDecision`].
        SignDecision = "sign.decision",
        /// [`SignDryRun`].
        SignDryRun = "sign.dry_run",
        /// [`SignResult`].
        SignResult = "sign.result",
        /// [`ApprovalRequest`].
        ApprovalRequest = "approval.request",
        /// [`ApprovalVote`] with [`Vote::Approve`].
        ApprovalGrant = "approval.grant",
        /// [`ApprovalVote`] with [`Vote::Reject`].
        ApprovalReject = "approval.reject",
        /// [`ApprovalExpire`].
        ApprovalExpire = "approval.expire",
    }
}

impl Kind {
    /// Records the writer adds by itself when rotating and checkpointing. A segment holding
    /// only these is not rotated for age, so an idle log does not grow.
    pub const fn is_bookkeeping(self) -> bool {
        matches!(
            self,
            Kind::AuditSegmentOpen | Kind::AuditSegmentSeal | Kind::AuditCheckpoint
        )
    }
}

closed_set! {
    /// `method` of `sign.request`, `sign.dry_run` and `approval.request`: the gRPC method called.
    pub enum Method {
        /// `Signer.SignEvmTransaction`.
        SignEvmTransaction = "SignEvmTransaction",
        /// `Signer.SignEvmMessage`.
        SignEvmMessage = "SignEvmMessage",
        /// `Signer.SignTypedData`.
        SignTypedData = "SignTypedData",
        /// `Signer.SignDigest`.
        SignDigest = "SignDigest",
    }
}

closed_set! {
    /// `decision` of `sign.decision` and `sign.dry_run`: what the policy decided.
    pub enum Decision {
        /// Allowed: the request is signed.
        Allow = "allow",
        /// Denied by a rule, a limit, or because no rule allows it.
        Deny = "deny",
        /// Not final: the request waits for approvals, and a later record decides.
        RequireApproval = "require_approval",
    }
}

impl Decision {
    /// Allow and deny decide a request; anything else (waiting for approval) does not.
    pub const fn is_final(self) -> bool {
        matches!(self, Decision::Allow | Decision::Deny)
    }
}

closed_set! {
    /// `status` of `sign.result`: how a signing call ended (see [`Outcome`] for the members
    /// each status brings).
    pub enum Status {
        /// Signed and returned.
        Signed = "signed",
        /// Denied by policy.
        Denied = "denied",
        /// Waited for approval and was vetoed.
        Rejected = "rejected",
        /// Waited for approval and its deadline passed.
        Expired = "expired",
        /// Refused as malformed.
        InvalidArgument = "invalid_argument",
        /// Unknown key.
        NotFound = "not_found",
        /// Not decoded in time.
        Unavailable = "unavailable",
        /// The key backend failed.
        BackendError = "backend_error",
        /// Written by crash recovery for an allowed request without a durable result.
        UnknownCrash = "unknown_crash",
        /// The key differs from its pin, or lacks a protection, and was not used.
        KeyRefused = "key_refused",
    }
}

closed_set! {
    /// `source` of `policy.load` and `policy.refused`: what installed (or tried to install) the policy.
    pub enum PolicySource {
        /// Start-up.
        Startup = "startup",
        /// A reload by SIGHUP.
        Sighup = "sighup",
        /// A reload by `Admin.ReloadPolicy`.
        Rpc = "rpc",
    }
}

closed_set! {
    /// `threshold` of `policy.load`: which quorum of policy administrators admitted the policy.
    pub enum PolicyThreshold {
        /// The full `threshold` (any change).
        Full = "full",
        /// `tighten_threshold`: a change that only tightens.
        Tighten = "tighten",
    }
}

/// A typed record body: one of the structs of this module.
pub trait Event: Serialize {
    /// The record type it is written as.
    fn kind(&self) -> Kind;
}

macro_rules! event {
    ($($name:ident => $kind:ident,)+) => {
        $(
            impl Event for $name {
                fn kind(&self) -> Kind {
                    Kind::$kind
                }
            }
        )+
    };
}

event! {
    AuditStart => AuditStart,
    AuditStop => AuditStop,
    AuditCheckpoint => AuditCheckpoint,
    AuditSegmentSeal => AuditSegmentSeal,
    AuditSegmentOpen => AuditSegmentOpen,
    AuditRecover => AuditRecover,
    AuditSnapshot => AuditSnapshot,
    AuthFailure => AuthFailure,
    PolicyLoad => PolicyLoad,
    PolicyRefused => PolicyRefused,
    StateRebind => StateRebind,
    KeyPin => KeyPin,
    KeyAllowance => KeyAllowance,
    SignRequest => SignRequest,
    SignDecision => SignDecision,
    SignDryRun => SignDryRun,
    SignResult => SignResult,
    ApprovalRequest => ApprovalRequest,
    ApprovalExpire => ApprovalExpire,
}

impl Event for ApprovalVote {
    /// `approval.grant` for an approval, `approval.reject` for a rejection: the type always
    /// agrees with `decision`.
    fn kind(&self) -> Kind {
        match self.decision {
            Vote::Approve => Kind::ApprovalGrant,
            Vote::Reject => Kind::ApprovalReject,
        }
    }
}

impl<E: Event> From<E> for Record {
    fn from(event: E) -> Record {
        Record::from_event(&event)
    }
}

/// Reads a record line (the whole line, envelope included) as the event `E`. The envelope
/// members and members `E` does not know are ignored; the caller has checked the type.
pub fn read<'a, E: Deserialize<'a>>(line: &'a [u8]) -> serde_json::Result<E> {
    serde_json::from_slice(line)
}

/// The names of the members of a serialized JSON object, in order; an error if it is not
/// an object.
pub(crate) fn member_names(json: &[u8]) -> Result<Vec<String>, String> {
    struct Names;
    impl<'de> Visitor<'de> for Names {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut names = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                names.push(name);
            }
            Ok(names)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(Names)
        .map_err(|e| format!("an event must serialize as a JSON object: {e}"))
}

/// Deserializes a member that may be absent (`None`), `null` (`Some(None)`) or a value.
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `audit.start`: signerd opened the log, after recovery and before it accepts any
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStart {
    /// Process id of the daemon.
    pub pid: u32,
    /// signerd's version.
    pub version: String,
    /// The verifier key of the log's checkpoints (informational: take the key from a trusted
    /// source, not from the log).
    pub checkpoint_key: String,
}

/// `audit.stop`: graceful shutdown, after the calls in flight have finished. No members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStop {}

/// `audit.checkpoint`: a signed checkpoint of every record before this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// Number of records covered; always this record's own `seq`.
    pub size: u64,
    /// The Merkle tree head of those records, lowercase hex.
    pub root: String,
    /// The signed checkpoint note.
    pub note: String,
}

/// `audit.segment_seal`: the last record of every sealed segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSegmentSeal {
    /// This segment's file name.
    pub segment: String,
    /// `seq` of the segment's first record.
    pub first_seq: u64,
    /// Number of records in the segment, this one included.
    pub records: u64,
}

/// `audit.snapshot`: a snapshot of the state derived from the first `records` records was
/// written beside the log and made durable; start-up uses a snapshot only when such a record
/// names its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSnapshot {
    /// How many records the snapshot covers (records `0 .. records-1`, whole sealed segments).
    pub records: u64,
    /// SHA-256 of the snapshot file (every byte), lowercase hex.
    pub sha256: String,
    /// The snapshot file, relative to the log directory (`snapshots/snapshot-<records>.json`).
    pub file: String,
}

/// `audit.segment_open`: the first record of every segment after the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSegmentOpen {
    /// This segment's file name.
    pub segment: String,
    /// The previous segment's file name.
    pub previous: String,
    /// SHA-256 of the whole previous segment file, lowercase hex.
    pub previous_sha256: String,
    /// Its size in bytes.
    pub previous_bytes: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `audit.recover`: start-up moved aside the records after the last checkpoint (which no
/// signed tree head covers) and a torn tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecover {
    /// The segment that was cut.
    pub segment: String,
    /// Byte offset where the cut started; the file was truncated to this length.
    pub offset: u64,
    /// Number of bytes cut.
    pub bytes: u64,
    /// SHA-256 of the cut bytes, lowercase hex.
    pub sha256: String,
    /// Where the cut bytes were saved, relative to the log directory.
    pub saved_as: String,
    /// Complete records among the cut bytes: records after the last checkpoint. Absent when
    /// only a torn write was cut (0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unattested_records: u64,
}

/// `auth.failure`: a refused client (failed handshake, or no single identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFailure {
    /// Client address `ip:port` (`null` when it is not known).
    pub peer: Option<String>,
    /// SHA-256 of the client certificate (DER), or `null` when the handshake failed.
    pub cert_sha256: Option<String>,
    /// The TLS error, the identity-mapping error, or the connection cap.
    pub reason: String,
    /// How many failures of this certificate (or address) and reason the record stands for:
    /// absent for one failure, recorded as it happened; `n` for the repeats within one
    /// `audit.auth_failure_window` that were folded into this record, written when the window
    /// ended (or at shutdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// `policy.load`: a policy was installed, at start-up or by a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLoad {
    /// What installed it.
    pub source: PolicySource,
    /// Reloads only: `Some(Some(id))`, the admin client that called `Admin.ReloadPolicy`;
    /// `Some(None)` (`null`), a reload by SIGHUP; `None` (absent) at start-up.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "double_option"
    )]
    pub actor: Option<Option<String>>,
    /// The policy file.
    pub file: String,
    /// The serial of the policy replaced (`null` at start-up).
    pub old_serial: Option<u64>,
    /// The hash of the policy replaced (`null` at start-up).
    pub old_hash: Option<String>,
    /// The serial of the policy installed.
    pub new_serial: u64,
    /// The hash of the policy installed.
    pub new_hash: String,
    /// The serial did not increase and the reload was forced.
    pub forced: bool,
    /// The policy administrators whose valid signatures admitted it, sorted (empty in records
    /// of releases that did not check signatures).
    #[serde(default)]
    pub signers: Vec<String>,
    /// Which quorum admitted it (`None` in records of releases that did not check signatures).
    #[serde(default)]
    pub threshold: Option<PolicyThreshold>,
    /// The first load of every entry of the installed policy's address books that have a
    /// cooling-off period (absent when there is none, and in records of earlier releases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub book_entries: Vec<BookEntryLoad>,
}

/// When one entry of an address book with a cooling-off period was first loaded (the time of
/// the first `policy.load` that contained it in that book, since it was last absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookEntryLoad {
    /// The address, `0x` and 40 hex digits (EIP-55).
    pub address: String,
    /// The address book's name.
    pub book: String,
    /// The first load, RFC 3339 UTC to the second.
    pub first_loaded: String,
}

/// `policy.refused`: a policy that was not installed: on a reload the running one stays; at
/// start-up (a policy not signed by enough administrators) the start stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRefused {
    /// `startup`, `sighup` or `rpc`.
    pub source: PolicySource,
    /// The caller's identity id (`rpc`), or `None` for SIGHUP and at start-up.
    pub actor: Option<String>,
    /// The policy file.
    pub file: String,
    /// Why it was refused.
    pub reason: String,
    /// The policy administrators whose valid signatures were found, sorted (empty when the
    /// refusal came before the signatures were checked, and in records of earlier releases).
    #[serde(default)]
    pub signers: Vec<String>,
}

/// `state.rebind`: the state store, which belonged to another audit log (or to this one when
/// it held more records), was bound to this log by an operator's override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRebind {
    /// The origin of the log the store belonged to.
    pub previous_origin: String,
    /// The leaf hash of that log's first record, hex.
    pub previous_first_record: String,
    /// How many records that log held when the store last saw it.
    pub previous_records: u64,
    /// This log's first record's leaf hash, hex.
    pub first_record: String,
    /// How many records this log holds.
    pub records: u64,
}

/// What signerd checked about a key when it pinned it (`checked` of `key.pin`): the members
/// its backend has, in alphabetical order; the others are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChecked {
    /// PKCS#11: the private key's `CKA_ID`, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ckid: Option<String>,
    /// Vault transit: the key's `exportable` setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exportable: Option<bool>,
    /// PKCS#11: `CKA_EXTRACTABLE` (one the token does not report counts as `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extractable: Option<bool>,
    /// Vault transit: the key's `type` (`ed25519`, `ecdsa-p256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// PKCS#11: `CKA_NEVER_EXTRACTABLE` (one the token does not report counts as
    /// `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_extractable: Option<bool>,
    /// PKCS#11: `CKA_SENSITIVE` (one the token does not report counts as `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive: Option<bool>,
    /// PKCS#11: the token's serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_serial: Option<String>,
    /// Vault transit: the transit key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit_key: Option<String>,
    /// Vault, transit-wrapped keys: the transit key that wraps the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapping_key: Option<String>,
}

/// `key.pin`: the first time signerd served a (key, version), before its first signature:
/// the public key every later use of that (key, version) must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPin {
    /// The key id.
    pub key: String,
    /// Keys with versions (Vault transit): the version; `null` for every other key.
    pub version: Option<u64>,
    /// `secp256k1`, `ed25519` or `p256`.
    pub algorithm: String,
    /// `soft`, `pkcs11` or `vault`.
    pub backend: String,
    /// The public key, `0x`-hex (33-byte compressed SEC1 for ECDSA, 32 bytes for Ed25519).
    pub public_key: String,
    /// What was checked about the key in its backend.
    pub checked: KeyChecked,
    /// The protections the key lacks (empty for a key that has them all).
    pub weak: Vec<String>,
}

/// `key.allowance`: a key that lacks a protection was served because the operator allows it
/// by name (`keys.allow_weak_keys`); written once per run and (key, version), before its
/// first signature of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAllowance {
    /// The key id.
    pub key: String,
    /// As in `key.pin`.
    pub version: Option<u64>,
    /// The `seq` of the key's `key.pin` record.
    pub pin: u64,
    /// The protections it lacks, as in `key.pin`.
    pub weak: Vec<String>,
    /// The configuration setting that allows it: `keys.allow_weak_keys`.
    pub setting: String,
}

/// `sign.request`: a signing call from an authenticated client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRequest {
    /// The client's `request_id`; `null` when a refused request's is malformed.
    pub req_id: Option<String>,
    /// The method called.
    pub method: Method,
    /// The caller's identity id.
    pub client: String,
    /// SHA-256 of the caller's certificate (DER).
    pub cert_sha256: String,
    /// The requested key id; `null` when a refused request's is malformed.
    pub key: Option<String>,
    /// The request fingerprint, or `null` when the request was refused before it could be
    /// decoded.
    pub fingerprint: Option<String>,
}

/// One spend reserved against a limit (`charges` of `sign.decision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// The amount, a decimal string in the asset's base units.
    pub amount: String,
    /// The bucket charged.
    pub bucket: String,
    /// The limit's id.
    pub limit: String,
    /// The limit's window.
    pub window_secs: u64,
}

/// `sign.decision`: the policy's decision for a decoded request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignDecision {
    /// As in `sign.request`.
    pub req_id: String,
    /// The requesting client (always written; absent from records of earlier releases).
    #[serde(default)]
    pub client: Option<String>,
    /// The requesting client's roles, as the policy saw them (always written; absent from
    /// records of earlier releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// The decision.
    pub decision: Decision,
    /// The rules that decided.
    pub rules: Vec<String>,
    /// `null` unless denied; why it was denied.
    pub reason: Option<String>,
    /// The policy's `serial`.
    pub policy_serial: u64,
    /// SHA-256 of the policy file bytes.
    pub policy_hash: String,
    /// The decoded request the policy judged.
    pub action: serde_json::Value,
    /// Allow and require_approval only (empty otherwise): the spend reserved.
    pub charges: Vec<Charge>,
    /// Only on the decision made at quorum: the approvers whose approvals counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<Vec<String>>,
}

/// `sign.dry_run`: the policy was evaluated, nothing was signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignDryRun {
    /// As in `sign.request`.
    pub req_id: String,
    /// As in `sign.request`.
    pub method: Method,
    /// As in `sign.request`.
    pub client: String,
    /// As in `sign.request`.
    pub key: String,
    /// As in `sign.decision`.
    pub decision: Decision,
    /// As in `sign.decision`.
    pub rules: Vec<String>,
    /// As in `sign.decision`.
    pub policy_serial: u64,
    /// As in `sign.decision`.
    pub policy_hash: String,
    /// As in `sign.decision`.
    pub action: serde_json::Value,
}

/// `signature` of a signed `sign.result`, as returned to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The 65-byte (or Ed25519 64-byte) signature, `0x`-hex; `"0x"` for transactions.
    pub bytes: String,
    /// `r`, `0x`-hex; `"0x"` for Ed25519.
    pub r: String,
    /// `s`, `0x`-hex; `"0x"` for Ed25519.
    pub s: String,
    /// `v` as returned to the client.
    pub v: u64,
}

/// `sign.result`: the outcome of a signing call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResult {
    /// As in `sign.request` (`null` when a refused request's is malformed).
    pub req_id: Option<String>,
    /// The requesting client (`null` when recovery does not know it; absent from records of
    /// earlier releases).
    #[serde(default)]
    pub client: Option<String>,
    /// `status`, and the members that come with it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The `status` of a `sign.result` and the members after it, which depend on the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Signed and returned.
    Signed {
        /// The hash or raw digest signed, `0x`-hex.
        signing_hash: String,
        /// Transactions only: the transaction hash, `0x`-hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tx_hash: Option<String>,
        /// Transactions only: the signed encoding returned to the client, `0x`-hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw_tx: Option<String>,
        /// The signature.
        signature: Signature,
        /// Keys with versions only (Vault transit): the version that signed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_version: Option<u64>,
        /// The `seq` of the `key.pin` record of the key (and version) that signed, whose
        /// `public_key` verifies the signature (absent from records of earlier releases).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<u64>,
    },
    /// Denied by policy.
    Denied {
        /// The deciding rule, or `null`.
        rule: Option<String>,
        /// Why.
        message: String,
    },
    /// Waited for approval and was vetoed.
    Rejected {
        /// Who rejected it, and why.
        message: String,
    },
    /// Waited for approval and its deadline passed.
    Expired {
        /// Why.
        message: String,
    },
    /// Refused as malformed.
    InvalidArgument {
        /// Why.
        message: String,
    },
    /// Unknown key.
    NotFound {
        /// Why.
        message: String,
    },
    /// Not decoded in time; or signed, but the result could not be attested, so the signature
    /// never left the process.
    Unavailable {
        /// Why.
        message: String,
    },
    /// The key backend failed.
    BackendError {
        /// Why.
        message: String,
    },
    /// Written by crash recovery: allowed, but signerd stopped before the result was durable.
    UnknownCrash {
        /// The `seq` of the allowing `sign.decision`.
        decision_seq: u64,
        /// What it means.
        message: String,
    },
    /// Allowed, but the key was refused before it signed: its public key differs from its
    /// pin, its version is below the highest pinned one, or it lacks a protection the
    /// operator did not waive.
    KeyRefused {
        /// The `seq` of the `key.pin` record the key was checked against, or `null`.
        pin: Option<u64>,
        /// Why.
        message: String,
    },
}

impl Outcome {
    /// The status.
    pub const fn status(&self) -> Status {
        match self {
            Outcome::Signed { .. } => Status::Signed,
            Outcome::Denied { .. } => Status::Denied,
            Outcome::Rejected { .. } => Status::Rejected,
            Outcome::Expired { .. } => Status::Expired,
            Outcome::InvalidArgument { .. } => Status::InvalidArgument,
            Outcome::NotFound { .. } => Status::NotFound,
            Outcome::Unavailable { .. } => Status::Unavailable,
            Outcome::BackendError { .. } => Status::BackendError,
            Outcome::UnknownCrash { .. } => Status::UnknownCrash,
            Outcome::KeyRefused { .. } => Status::KeyRefused,
        }
    }
}

/// One group a request waits for (`requirements` of `approval.request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequiredGroup {
    /// The group.
    pub group: String,
    /// The group's members when the request was made.
    pub members: Vec<String>,
    /// Distinct members who must approve.
    pub min: u32,
    /// Whether one member's rejection ends the request.
    pub veto: bool,
}

/// `approval.request`: a request started waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The request's id.
    pub req_id: String,
    /// The requesting client.
    pub client: String,
    /// As in `sign.request`.
    pub method: Method,
    /// As in `sign.request`.
    pub key: String,
    /// The approval fingerprint, 64 lowercase hex digits.
    pub fingerprint: String,
    /// The matching `require_approval` rules.
    pub rules: Vec<String>,
    /// One entry per required group.
    pub requirements: Vec<RequiredGroup>,
    /// Unix seconds when the request expires.
    pub deadline: i64,
    /// The policy the request was evaluated under.
    pub policy_serial: u64,
    /// Its hash (part of the fingerprint).
    pub policy_hash: String,
}

/// `approval.grant` ([`Vote::Approve`]) and `approval.reject` ([`Vote::Reject`]): a verified
/// vote. Its type follows `decision` ([`Event::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalVote {
    /// The request voted on.
    pub req_id: String,
    /// Its requester.
    pub client: String,
    /// The voter's client id.
    pub approver: String,
    /// SHA-256 of the voter's certificate (DER), hex.
    pub cert_sha256: String,
    /// The fingerprint the voter signed.
    pub fingerprint: String,
    /// The vote.
    pub decision: Vote,
    /// Unix seconds; the vote counts until then.
    pub expires: i64,
    /// The voter's Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// The Ed25519 signature over the approval message, 128 hex digits.
    pub signature: String,
    /// Rejections: the reason given (not signed); `null` otherwise.
    pub reason: Option<String>,
    /// The policy running when the vote was made.
    pub policy_hash: String,
}

/// `approval.expire`: the deadline passed before every quorum was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalExpire {
    /// The request.
    pub req_id: String,
    /// Its requester.
    pub client: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its deadline, Unix seconds.
    pub deadline: i64,
    /// Approvers whose approvals still counted.
    pub approved_by: Vec<String>,
}

#[cfg(test)]
mod tests;
