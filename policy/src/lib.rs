//! signerd's policy engine: parse, validate and evaluate the declarative signing policy that
//! security teams own.
//!
//! Evaluation is a pure function of (policy, action, identity, time, usage snapshot): this
//! crate performs no I/O, reads no clock and holds no global state, so it can be unit-tested,
//! fuzzed and run by `signerctl` exactly as the daemon runs it. The entry points are
//! [`Policy::parse`], [`Policy::evaluate_request`] (and [`Policy::explain_request`]),
//! [`check`], [`signatures`], [`Policy::unknown_keys`], [`run_tests`] and [`diff`].
//!
//! # Semantics
//!
//! - **Default deny.** A request is allowed only when at least one `allow` rule matches.
//! - **All matching rules are considered.** Any matching `deny` rule wins. Otherwise, the
//!   approval requirements of every matching `require_approval` rule stack (each group named
//!   must reach its largest `min`; the shortest `ttl` and any `veto` apply), giving
//!   [`Decision::NeedsApproval`]: the request *requires approval*. Otherwise an `allow` rule
//!   must match.
//! - **Limits.** A request that passes the rules must also fit every limit that applies to
//!   it: `per_tx_max`, and the sliding-window `max_amount` (used + requested) and `max_count`
//!   (used + 1), and every `[[rate_limit]]` of its client. The returned [`Charge`]s must be
//!   reserved atomically with [`fits`] by the caller before signing.
//! - **Indeterminate is deny.** A matcher that needs a field the request lacks or that could
//!   not be decoded (an ERC-20 kind without decoded arguments, a `Permit` without a decoded
//!   spender, a missing chain id) is indeterminate: a `deny` rule then matches, a
//!   `require_approval` rule denies, and an `allow` rule does not match. A limit that cannot
//!   tell how much of its asset a request moves denies.
//! - **Blind signing must be named.** A rule without `kinds` covers every kind except
//!   `raw_digest`, `eip191_binary` and opaque `eip712_typed_data`.
//! - **Field matchers imply kinds.** A matcher on a field a kind does not have does not match
//!   (`value_max` never matches a signed message; `erc20_counterparty` only ERC-20 calls).
//!
//! # The language (version 1)
//!
//! ```toml
//! version = 1
//! serial = 7                      # must increase with every change the daemon loads
//!
//! [address_books.payees]
//! addresses = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"]   # EIP-55 or lowercase
//!
//! [[asset]]                        # registry for amount literals and limits
//! chain_id = 1
//! contract = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"      # or "native"
//! symbol = "USDC"
//! decimals = 6
//!
//! [groups]
//! treasury = ["alice", "bob", "carol"]
//!
//! [approvers]                      # every member of a group named in `approvals`
//! alice = "ed25519:<64 hex digits>" # as `signerctl approver keygen` prints it
//!
//! [[rule]]
//! id = "payouts"
//! effect = "allow"                 # allow | deny | require_approval
//! clients = ["payments"]
//! keys = ["hot"]
//! chain_ids = [1]
//! kinds = ["erc20_transfer"]
//! erc20_counterparty = ["book:payees"]
//! erc20_amount_max = "2500 USDC"
//! hours = { from = "09:00", to = "17:00", utc_offset = "+01:00", days = ["mon", "tue", "wed", "thu", "fri"] }
//!
//! [[rule]]
//! id = "large"
//! effect = "require_approval"
//! keys = ["hot"]
//! value_min = "10 ether"
//! approvals = [{ group = "treasury", min = 2 }]
//! ttl = "1h"
//! veto = true                      # default true: any group member can veto
//!
//! [[limit]]
//! id = "daily-usdc"
//! keys = ["hot"]
//! asset = "USDC"                   # "native", a symbol, or { chain_id = 1, contract = "0x..." }
//! per_tx_max = "5000 USDC"
//! window = "24h"                   # s, m, h, d
//! max_amount = "20000 USDC"
//! max_count = 100
//! key_by = ["key", "asset"]        # any of key, asset, destination, client
//!
//! [[rate_limit]]
//! id = "per-client"
//! window = "1m"
//! max_requests = 600
//!
//! [governance]                     # who may sign the next policy (the daemon requires it)
//! threshold = 2                    # signatures that admit any change
//! tighten_threshold = 1            # signatures that admit a change that only tightens
//! administrators = { alice = "ed25519:<64 hex digits>", bob = "ed25519:<64 hex digits>" }
//! ```
//!
//! Rule matchers (all present ones must hold; an absent one matches anything; lists must
//! not be empty): `clients`, `groups`, `roles` (any one), `keys`, `chain_ids`, `kinds`, `to`
//! and `not_to` (the transaction's destination — for ERC-20 calls that is the token
//! contract; entries are addresses or `"book:NAME"`), `contracts` and `selectors`
//! (`"0xa9059cbb"` or a canonical signature `"transfer(address,uint256)"`),
//! `erc20_counterparty` (recipient or spender), `erc20_amount_min`/`erc20_amount_max`
//! (written with a token symbol they also pin the token), `value_min`/`value_max` (native),
//! `value_above`/`erc20_amount_above` (exclusive lower bounds: `value_min`/`erc20_amount_min`
//! one base unit higher),
//! `gas_limit_max`, `max_fee_per_gas_max` (`gas_price` for legacy transactions),
//! `primary_types`, `domain_names`, `verifying_contracts`, `domain_chain_ids`,
//! `permit_spenders` (every grant of an `eip712_permit` to a listed spender),
//! `message_max_bytes`, `message_prefixes` (EIP-191 text), and `hours`. `function` (a
//! Solidity signature with argument names) and `args` constrain a call's decoded arguments
//! (`{ arg = "params.recipient", eq = "self" }`, see the `args` module); calldata with the
//! function's selector that is not its canonical ABI encoding is indeterminate.
//!
//! Amount literals are base units (`1000000` or `"1000000"`) or a decimal with a unit:
//! `wei`, `gwei`, `ether`/`ETH` for the native coin, or an `[[asset]]` symbol resolved among
//! the chains of the rule's `chain_ids` (all chains when absent). Unknown or ambiguous
//! symbols, more fractional digits than the asset has decimals, and values over 256 bits are
//! errors. Amounts are never floats.
//!
//! `hours` uses a **fixed UTC offset** (`utc_offset = "+02:00"`, default UTC): there is no
//! time-zone database in this version, so a window does not follow daylight-saving changes.
//! A window with `from` later than `to` crosses midnight and belongs to the day it opens on.
//!
//! Limits are per asset (the native coin, or one token symbol, on one or several chains). A
//! native-coin limit counts the value plus the worst-case fee (`gas_limit × max_fee_per_gas`)
//! of every transaction on its chains and a Safe transaction's value; a token limit counts
//! ERC-20 `transfer`, `transferFrom` and `approve` amounts (also as a Safe transaction's call)
//! and the grants of permits and transfer authorizations of that token, and denies calls to
//! the token contract, opaque typed data for it, delegatecalls and refunds that cannot be
//! measured. Absent `kinds` in a limit means every kind. In a
//! limit, `to` and the `destination` bucket part mean where the asset goes (the native
//! recipient, the ERC-20 recipient or spender, the Permit spender). A limit without `asset`
//! counts requests (`max_count`). A request the daemon refuses does not use up rate budget.
//!
//! Ids of rules, limits and rate limits share one namespace and appear in decisions.

mod action;
mod amount;
mod args;
mod book;
mod cases;
mod check;
mod diff;
mod display;
mod eval;
mod governance;
mod index;
mod limit;
mod lint;
mod literal;
mod parse;
#[cfg(test)]
mod proptests;
mod rule;
mod time;
mod xref;

pub use action::{
    Action, Erc20Call, Kind, MESSAGE_HEAD_BYTES, MessageFacts, SafeTxFacts, TokenGrant,
    TypedDataFacts, TypedStandard,
};
pub use amount::{AmountFormat, Asset, AssetId};
pub use book::FirstLoaded;
pub use cases::{CaseResult, TestReport, run_test_file, run_tests};
pub use check::{Warning, check, counted};
pub use diff::{Change, DiffReport, diff};
pub use eval::{Charge, Evaluation, NoUsage, Request, Usage, Used, fits};
pub use governance::{
    Admitted, Candidate, Governance, MAX_ADMINISTRATORS, MAX_SIGNATURE_FILE_BYTES, MAX_SIGNATURES,
    PolicySignature, Refused, SIGNATURE_CONTEXT, Threshold, admit, parse_signatures,
    signing_message,
};
pub use limit::BucketKey;
pub use lint::{SignatureNote, signatures};
pub use parse::{
    MAX_COOLING_ENTRIES, MAX_POLICY_BYTES, Policy, PolicyError, line_col, parse_approver_key,
};
pub use rule::{Effect, Match, Rule};

/// Who is asking: the identity the daemon mapped from the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client's id, as named in policy rules.
    pub id: String,
    /// The client's roles.
    pub roles: Vec<String>,
}

/// One group's part of a quorum that must approve a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequirement {
    /// The group's name in `[groups]`.
    pub group: String,
    /// Distinct members of the group who must approve (the requester never counts).
    pub min: u32,
    /// The group's members (client ids).
    pub members: Vec<String>,
    /// How long approvals stay valid, in seconds.
    pub ttl_secs: u64,
    /// Whether one member's veto rejects the request.
    pub veto: bool,
}

/// The outcome of evaluating a request against a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// At least one allow rule matched, no deny or require_approval rule did, and every
    /// applicable limit holds.
    Allow {
        /// Ids of every allow rule that matched.
        rules: Vec<String>,
    },
    /// A deny rule matched (or was indeterminate), no rule allows, or a limit is exceeded.
    Deny {
        /// The deciding rule or limit, or `None` when no rule allows.
        rule: Option<String>,
        /// A human-readable reason, naming the rule or limit.
        reason: String,
    },
    /// No deny rule matched, some `require_approval` rules did, and every applicable limit
    /// holds: the request requires approval by every listed quorum.
    NeedsApproval {
        /// Ids of every `require_approval` rule that matched.
        rules: Vec<String>,
        /// The stacked requirements, one per group.
        requirements: Vec<ApprovalRequirement>,
    },
}

impl Decision {
    /// Whether the request may be signed now.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// `allow`, `deny` or `require_approval`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::NeedsApproval { .. } => "require_approval",
        }
    }
}

impl Policy {
    /// Evaluates `action` requested by `who` at Unix time 0 with no usage counted: limits
    /// see empty windows (only `per_tx_max` can deny) and `hours` windows are evaluated at
    /// 1970-01-01T00:00Z. Kept for callers that do not track time and usage yet; use
    /// [`Policy::evaluate_request`].
    pub fn evaluate(&self, action: &Action, who: &Identity) -> Decision {
        self.evaluate_request(&Request {
            action,
            identity: who,
            now_unix: 0,
            usage: &NoUsage,
        })
        .decision
    }
}

#[cfg(test)]
mod tests;
