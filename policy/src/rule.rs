//! Compiled rules and their matchers, with three-valued matching (yes, no, indeterminate).
//!
//! A matcher that reads a field the request's kind does not have (a `value_max` on a signed
//! message) does not match: each field matcher implies the kinds it applies to. A matcher that
//! reads a field the kind should have but the daemon could not decode (an ERC-20 transfer
//! whose arguments are missing) is *indeterminate*; the caller decides what that means for
//! the rule's effect, and it must always be the safe side. This module must never treat an
//! indeterminate matcher as a match for a rule that grants anything.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use alloy_primitives::{Address, U256};

use crate::amount::{AmountFormat, AssetId, format_units};
use crate::args::{CallSpec, Calls};
use crate::book::Membership;
use crate::time::{Duration, Hours};
use crate::{Action, Identity, Kind, TokenGrant};

/// A set of request kinds, as a bit mask over [`Kind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KindSet(pub(crate) u16);

impl KindSet {
    /// Every kind.
    pub(crate) const ALL: KindSet = KindSet((1 << Kind::ALL.len()) - 1);
    /// What a rule without `kinds` covers: everything but the blind kinds (`raw_digest`,
    /// `eip191_binary` and opaque `eip712_typed_data`), which only a rule naming them covers.
    pub(crate) const DEFAULT: KindSet = KindSet(Self::ALL.0 & !Self::BLIND.0);
    /// Kinds whose content the daemon cannot read: a digest, a message that may be a hash,
    /// typed data of no recognized standard.
    pub(crate) const BLIND: KindSet = KindSet(
        1 << Kind::RawDigest as u16
            | 1 << Kind::Eip191Binary as u16
            | 1 << Kind::Eip712TypedData as u16,
    );
    /// Transactions.
    pub(crate) const TX: KindSet = KindSet(
        1 << Kind::NativeTransfer as u16
            | 1 << Kind::Erc20Transfer as u16
            | 1 << Kind::Erc20TransferFrom as u16
            | 1 << Kind::Erc20Approve as u16
            | 1 << Kind::ContractCall as u16
            | 1 << Kind::ContractCreation as u16,
    );
    /// Transactions with a destination.
    pub(crate) const DEST: KindSet = KindSet(Self::TX.0 & !(1 << Kind::ContractCreation as u16));
    /// Transactions with calldata for a contract.
    pub(crate) const CALL: KindSet = KindSet(Self::DEST.0 & !(1 << Kind::NativeTransfer as u16));
    /// Decoded ERC-20 calls.
    pub(crate) const ERC20: KindSet = KindSet(Self::CALL.0 & !(1 << Kind::ContractCall as u16));
    /// EIP-712 typed data: opaque, permits, transfer authorizations and Safe transactions.
    pub(crate) const TYPED: KindSet = KindSet(
        1 << Kind::Eip712TypedData as u16
            | 1 << Kind::Eip712Permit as u16
            | 1 << Kind::Eip712TransferAuthorization as u16
            | 1 << Kind::Eip712SafeTx as u16,
    );
    /// Typed data that grants tokens: permits and transfer authorizations.
    pub(crate) const GRANTS: KindSet =
        KindSet(1 << Kind::Eip712Permit as u16 | 1 << Kind::Eip712TransferAuthorization as u16);
    /// A Safe transaction, whose call is read like a transaction's.
    pub(crate) const SAFE: KindSet = KindSet(1 << Kind::Eip712SafeTx as u16);
    /// EIP-191 messages.
    pub(crate) const MESSAGES: KindSet =
        KindSet(1 << Kind::Eip191Message as u16 | 1 << Kind::Eip191Binary as u16);

    pub(crate) fn of(kinds: &[Kind]) -> KindSet {
        KindSet(kinds.iter().fold(0, |m, k| m | k.bit()))
    }

    pub(crate) fn contains(self, k: Kind) -> bool {
        self.0 & k.bit() != 0
    }

    pub(crate) fn and(self, o: KindSet) -> KindSet {
        KindSet(self.0 & o.0)
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn is_subset(self, o: KindSet) -> bool {
        self.0 & !o.0 == 0
    }

    pub(crate) fn kinds(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl fmt::Display for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.kinds().map(Kind::as_str).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// A set of addresses with the entries as written (for explanations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddrSet {
    /// Every address, usable or still cooling off (limits and checks use this).
    pub(crate) set: BTreeSet<Address>,
    pub(crate) written: Vec<String>,
    /// Entries of address books with a cooling-off period, when the set names any.
    pub(crate) cooling: Option<Box<crate::book::Cooling>>,
}

impl AddrSet {
    pub(crate) fn contains(&self, a: &Address) -> bool {
        self.set.contains(a)
    }
}

impl fmt::Display for AddrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 4;
        write!(f, "[")?;
        for (i, w) in self.written.iter().take(SHOWN).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{w}")?;
        }
        if self.written.len() > SHOWN {
            write!(f, ", … {} more", self.written.len() - SHOWN)?;
        }
        write!(f, "]")
    }
}

/// Bounds on a decoded ERC-20 amount, optionally pinned to one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenBound {
    /// When the bound was written with a symbol (`"1000 USDC"`): the token it is about.
    pub(crate) token: Option<AssetId>,
    pub(crate) min: Option<U256>,
    pub(crate) max: Option<U256>,
    pub(crate) format: AmountFormat,
}

impl TokenBound {
    /// Whether `amount` of `token` on `chain` is within the bounds; a bound written with a
    /// symbol holds only for that token on its chain (unknown chain: indeterminate).
    fn test(&self, chain: Option<u64>, token: Address, amount: U256) -> T {
        if let Some(pin) = self.token {
            match chain {
                None => return T::U,
                Some(c) if c != pin.chain_id || Some(token) != pin.contract => return T::N,
                Some(_) => {}
            }
        }
        t(self.min.is_none_or(|m| amount >= m) && self.max.is_none_or(|m| amount <= m))
    }
}

/// Tests every grant of a permit or transfer authorization with its domain chain (Kleene
/// conjunction); typed data without grants is indeterminate.
fn grants(a: &Action, each: impl Fn(Option<u64>, &TokenGrant) -> T) -> T {
    let Some(td) = a.typed_data.as_ref() else {
        return T::U;
    };
    if td.grants.is_empty() {
        return T::U;
    }
    let chain = td.domain_chain_id.and_then(|c| u64::try_from(c).ok());
    let mut out = T::Y;
    for g in &td.grants {
        match each(chain, g) {
            T::N => return T::N,
            T::U => out = T::U,
            T::C if out == T::Y => out = T::C,
            T::C | T::Y => {}
        }
    }
    out
}

/// `groups` as written and the client ids they resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Groups {
    pub(crate) names: Vec<String>,
    pub(crate) members: BTreeSet<String>,
}

/// Every matcher a rule may carry. `None` means absent (matches anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matchers {
    /// Kinds named in `kinds`, or [`KindSet::DEFAULT`].
    pub(crate) kinds: KindSet,
    pub(crate) kinds_written: bool,
    pub(crate) keys: Option<BTreeSet<String>>,
    pub(crate) clients: Option<BTreeSet<String>>,
    pub(crate) groups: Option<Groups>,
    pub(crate) roles: Option<BTreeSet<String>>,
    pub(crate) chain_ids: Option<BTreeSet<u64>>,
    pub(crate) to: Option<AddrSet>,
    pub(crate) not_to: Option<AddrSet>,
    pub(crate) contracts: Option<AddrSet>,
    pub(crate) selectors: Option<BTreeSet<[u8; 4]>>,
    pub(crate) counterparty: Option<AddrSet>,
    pub(crate) erc20_amount: Option<TokenBound>,
    pub(crate) value_min: Option<U256>,
    pub(crate) value_max: Option<U256>,
    pub(crate) native_format: AmountFormat,
    pub(crate) gas_limit_max: Option<u64>,
    pub(crate) max_fee_max: Option<U256>,
    pub(crate) primary_types: Option<BTreeSet<String>>,
    pub(crate) domain_names: Option<BTreeSet<String>>,
    pub(crate) verifying_contracts: Option<AddrSet>,
    pub(crate) domain_chain_ids: Option<BTreeSet<u64>>,
    pub(crate) permit_spenders: Option<AddrSet>,
    pub(crate) message_max_bytes: Option<u64>,
    pub(crate) message_prefixes: Option<BTreeSet<String>>,
    pub(crate) hours: Option<Hours>,
    /// For allow and require_approval rules: the registered tokens (`[[asset]]` with a
    /// contract). A permit or transfer authorization of any other (chain, token) is
    /// indeterminate unless `domain_chain_ids` names its chain, so a grant no limit can
    /// count is never allowed by accident.
    pub(crate) registered: Option<Arc<BTreeSet<AssetId>>>,
    /// `function` and its `args` constraints.
    pub(crate) args: Option<Arc<CallSpec>>,
}

/// The matchers, by the names policy files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Kinds,
    Keys,
    Clients,
    Groups,
    Roles,
    ChainIds,
    To,
    NotTo,
    Contracts,
    Selectors,
    Counterparty,
    Erc20Amount,
    ValueMin,
    ValueMax,
    GasLimitMax,
    MaxFeeMax,
    PrimaryTypes,
    DomainNames,
    VerifyingContracts,
    DomainChainIds,
    PermitSpenders,
    MessageMaxBytes,
    MessagePrefixes,
    Hours,
    /// Not written: the asset registry an allow or require_approval rule checks grants against.
    Registered,
    /// `function` and its `args`.
    Args,
}

impl Field {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::Kinds => "kinds",
            Field::Keys => "keys",
            Field::Clients => "clients",
            Field::Groups => "groups",
            Field::Roles => "roles",
            Field::ChainIds => "chain_ids",
            Field::To => "to",
            Field::NotTo => "not_to",
            Field::Contracts => "contracts",
            Field::Selectors => "selectors",
            Field::Counterparty => "erc20_counterparty",
            Field::Erc20Amount => "erc20_amount_min/max",
            Field::ValueMin => "value_min",
            Field::ValueMax => "value_max",
            Field::GasLimitMax => "gas_limit_max",
            Field::MaxFeeMax => "max_fee_per_gas_max",
            Field::PrimaryTypes => "primary_types",
            Field::DomainNames => "domain_names",
            Field::VerifyingContracts => "verifying_contracts",
            Field::DomainChainIds => "domain_chain_ids",
            Field::PermitSpenders => "permit_spenders",
            Field::MessageMaxBytes => "message_max_bytes",
            Field::MessagePrefixes => "message_prefixes",
            Field::Hours => "hours",
            Field::Registered => "[[asset]] registry",
            Field::Args => "function/args",
        }
    }

    /// The kinds a matcher on this field can match at all.
    pub(crate) fn applies_to(self) -> KindSet {
        let or = |a: KindSet, b: KindSet| KindSet(a.0 | b.0);
        match self {
            // A Safe transaction's call is read like a transaction's; its chain is the
            // domain's chainId.
            Field::ChainIds | Field::ValueMin | Field::ValueMax | Field::NotTo => {
                or(KindSet::TX, KindSet::SAFE)
            }
            Field::GasLimitMax | Field::MaxFeeMax => KindSet::TX,
            Field::To => or(KindSet::DEST, KindSet::SAFE),
            Field::Contracts | Field::Selectors | Field::Args => or(KindSet::CALL, KindSet::SAFE),
            Field::Counterparty | Field::Erc20Amount => {
                or(or(KindSet::ERC20, KindSet::GRANTS), KindSet::SAFE)
            }
            Field::PrimaryTypes
            | Field::DomainNames
            | Field::VerifyingContracts
            | Field::DomainChainIds => KindSet::TYPED,
            Field::PermitSpenders => KindSet::of(&[Kind::Eip712Permit]),
            Field::MessageMaxBytes => KindSet::MESSAGES,
            Field::MessagePrefixes => KindSet::of(&[Kind::Eip191Message]),
            Field::Kinds
            | Field::Keys
            | Field::Clients
            | Field::Groups
            | Field::Roles
            | Field::Hours
            | Field::Registered => KindSet::ALL,
        }
    }
}

/// The result of testing matchers against a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every matcher holds.
    Yes,
    /// This matcher does not hold.
    No(Field),
    /// No matcher fails, but this one needs a field the request lacks.
    Unknown(Field),
    /// No matcher fails and none is unknown, but this one holds or fails only through an
    /// address-book entry still cooling off: the rule's effect decides which way restricts.
    NotYet(Field),
}

/// Whether a rule matches a request, as reported by [`Rule::matches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Every matcher holds.
    Yes,
    /// Some matcher does not hold.
    No,
    /// No matcher fails but one needs a field the request lacks or that could not be
    /// decoded: a deny rule then matches and an allow rule does not (fail closed).
    Indeterminate,
}

/// Three-valued result of one matcher.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum T {
    Y,
    N,
    U,
    /// Depends on an address-book entry still cooling off.
    C,
}

pub(crate) fn t(b: bool) -> T {
    if b { T::Y } else { T::N }
}

/// Whether `a` is in `set` at `now_unix` (`C` when only through entries still cooling off).
fn member(set: &AddrSet, a: &Address, now_unix: i64) -> T {
    match set.holds(a, now_unix) {
        Membership::In => T::Y,
        Membership::Out => T::N,
        Membership::Cooling => T::C,
    }
}

fn in_set<X: Ord>(set: &BTreeSet<X>, x: &X) -> T {
    t(set.contains(x))
}

/// A field's value for kinds where it is expected: present → test it; missing → indeterminate.
fn expected<X>(v: Option<X>, test: impl FnOnce(X) -> bool) -> T {
    match v {
        Some(x) => t(test(x)),
        None => T::U,
    }
}

impl Matchers {
    /// Kinds this rule can match at all: its `kinds` narrowed by each field matcher.
    pub(crate) fn effective_kinds(&self) -> KindSet {
        self.present()
            .fold(self.kinds, |k, f| k.and(f.applies_to()))
    }

    /// The matchers that are present, in evaluation order.
    pub(crate) fn present(&self) -> impl Iterator<Item = Field> + '_ {
        let all = [
            (Field::Keys, self.keys.is_some()),
            (Field::Clients, self.clients.is_some()),
            (Field::Groups, self.groups.is_some()),
            (Field::Roles, self.roles.is_some()),
            (Field::ChainIds, self.chain_ids.is_some()),
            (Field::To, self.to.is_some()),
            (Field::NotTo, self.not_to.is_some()),
            (Field::Contracts, self.contracts.is_some()),
            (Field::Selectors, self.selectors.is_some()),
            (Field::Counterparty, self.counterparty.is_some()),
            (Field::Erc20Amount, self.erc20_amount.is_some()),
            (Field::ValueMin, self.value_min.is_some()),
            (Field::ValueMax, self.value_max.is_some()),
            (Field::GasLimitMax, self.gas_limit_max.is_some()),
            (Field::MaxFeeMax, self.max_fee_max.is_some()),
            (Field::PrimaryTypes, self.primary_types.is_some()),
            (Field::DomainNames, self.domain_names.is_some()),
            (
                Field::VerifyingContracts,
                self.verifying_contracts.is_some(),
            ),
            (Field::DomainChainIds, self.domain_chain_ids.is_some()),
            (Field::PermitSpenders, self.permit_spenders.is_some()),
            (Field::MessageMaxBytes, self.message_max_bytes.is_some()),
            (Field::MessagePrefixes, self.message_prefixes.is_some()),
            (Field::Hours, self.hours.is_some()),
            (Field::Registered, self.registered.is_some()),
            // Last: decoding calldata costs most.
            (Field::Args, self.args.is_some()),
        ];
        all.into_iter().filter(|(_, p)| *p).map(|(f, _)| f)
    }

    /// Tests every present matcher (Kleene conjunction: any no → no; else any unknown →
    /// unknown). Cheap matchers first; allocation-free but for decoding calldata, which
    /// `calls` keeps for the other rules of the same request.
    pub(crate) fn test<'p>(
        &'p self,
        a: &Action,
        who: &Identity,
        now_unix: i64,
        calls: &Calls<'p>,
    ) -> Outcome {
        if !self.kinds.contains(a.kind) {
            return Outcome::No(Field::Kinds);
        }
        let mut unknown = None;
        let mut cooling = None;
        for f in self.present() {
            match self.test_one(f, a, who, now_unix, calls) {
                T::Y => {}
                T::N => return Outcome::No(f),
                T::U => {
                    unknown.get_or_insert(f);
                }
                T::C => {
                    cooling.get_or_insert(f);
                }
            }
        }
        match (unknown, cooling) {
            (Some(f), _) => Outcome::Unknown(f),
            (None, Some(f)) => Outcome::NotYet(f),
            (None, None) => Outcome::Yes,
        }
    }

    fn test_one<'p>(
        &'p self,
        f: Field,
        a: &Action,
        who: &Identity,
        now_unix: i64,
        calls: &Calls<'p>,
    ) -> T {
        if !f.applies_to().contains(a.kind) {
            return T::N;
        }
        match f {
            Field::Kinds => t(self.kinds.contains(a.kind)),
            Field::Keys => self.keys.as_ref().map_or(T::Y, |s| in_set(s, &a.key)),
            Field::Clients => self.clients.as_ref().map_or(T::Y, |s| in_set(s, &who.id)),
            Field::Groups => self
                .groups
                .as_ref()
                .map_or(T::Y, |g| in_set(&g.members, &who.id)),
            Field::Roles => self
                .roles
                .as_ref()
                .map_or(T::Y, |r| t(who.roles.iter().any(|x| r.contains(x)))),
            Field::ChainIds => self
                .chain_ids
                .as_ref()
                .map_or(T::Y, |s| expected(a.chain_id, |c| s.contains(&c))),
            Field::To => self.to.as_ref().map_or(T::Y, |s| match a.to {
                Some(to) => member(s, &to, now_unix),
                None => T::U,
            }),
            Field::NotTo => self.not_to.as_ref().map_or(T::Y, |s| {
                if a.kind == Kind::ContractCreation {
                    // A creation has no destination, so it is not sent to any listed one.
                    return T::Y;
                }
                match a.to.map(|to| member(s, &to, now_unix)) {
                    Some(T::Y) => T::N,
                    Some(T::N) => T::Y,
                    Some(other) => other,
                    None => T::U,
                }
            }),
            Field::Contracts => self.contracts.as_ref().map_or(T::Y, |s| match a.to {
                Some(to) => member(s, &to, now_unix),
                None => T::U,
            }),
            Field::Selectors => self
                .selectors
                .as_ref()
                .map_or(T::Y, |s| expected(a.selector, |sel| s.contains(&sel))),
            Field::Counterparty => self.counterparty.as_ref().map_or(T::Y, |s| {
                if KindSet::GRANTS.contains(a.kind) {
                    return grants(a, |_, g| member(s, &g.counterparty, now_unix));
                }
                match a.erc20.as_ref() {
                    Some(e) => member(s, &e.counterparty, now_unix),
                    // A Safe call that is not an ERC-20 call has no counterparty, as a
                    // contract call has none; an ERC-20 kind without arguments is undecoded.
                    None if a.kind == Kind::Eip712SafeTx => T::N,
                    None => T::U,
                }
            }),
            Field::Erc20Amount => self.erc20_amount.as_ref().map_or(T::Y, |b| {
                if KindSet::GRANTS.contains(a.kind) {
                    return grants(a, |chain, g| b.test(chain, g.token, g.amount));
                }
                match a.erc20.as_ref() {
                    Some(e) => b.test(a.chain_id, e.token, e.amount),
                    None if a.kind == Kind::Eip712SafeTx => T::N,
                    None => T::U,
                }
            }),
            Field::ValueMin => t(self.value_min.is_none_or(|m| a.value >= m)),
            Field::ValueMax => t(self.value_max.is_none_or(|m| a.value <= m)),
            Field::GasLimitMax => self
                .gas_limit_max
                .map_or(T::Y, |m| expected(a.gas_limit, |g| g <= m)),
            Field::MaxFeeMax => self
                .max_fee_max
                .map_or(T::Y, |m| expected(a.max_fee_per_gas, |g| g <= m)),
            Field::PrimaryTypes => self.primary_types.as_ref().map_or(T::Y, |s| {
                expected(a.typed_data.as_ref(), |td| s.contains(&td.primary_type))
            }),
            Field::DomainNames => self.domain_names.as_ref().map_or(T::Y, |s| {
                // A domain without a name is a decoded fact, not a decoding failure.
                expected(a.typed_data.as_ref(), |td| {
                    td.domain_name.as_ref().is_some_and(|n| s.contains(n))
                })
            }),
            Field::VerifyingContracts => {
                self.verifying_contracts
                    .as_ref()
                    .map_or(T::Y, |s| match a.typed_data.as_ref() {
                        Some(td) => td
                            .verifying_contract
                            .map_or(T::N, |v| member(s, &v, now_unix)),
                        None => T::U,
                    })
            }
            Field::DomainChainIds => self.domain_chain_ids.as_ref().map_or(T::Y, |s| {
                expected(a.typed_data.as_ref(), |td| {
                    td.domain_chain_id
                        .and_then(|c| u64::try_from(c).ok())
                        .is_some_and(|c| s.contains(&c))
                })
            }),
            Field::PermitSpenders => self.permit_spenders.as_ref().map_or(T::Y, |s| {
                grants(a, |_, g| member(s, &g.counterparty, now_unix))
            }),
            Field::MessageMaxBytes => self
                .message_max_bytes
                .map_or(T::Y, |m| expected(a.message.as_ref(), |x| x.len <= m)),
            Field::MessagePrefixes => self.message_prefixes.as_ref().map_or(T::Y, |s| {
                expected(
                    a.message.as_ref().and_then(|x| x.text_head.as_deref()),
                    |text| s.iter().any(|p| text.starts_with(p.as_str())),
                )
            }),
            Field::Hours => self
                .hours
                .as_ref()
                .map_or(T::Y, |h| t(h.contains(now_unix))),
            Field::Registered => self.registered.as_ref().map_or(T::Y, |reg| {
                if !KindSet::GRANTS.contains(a.kind) {
                    return T::Y;
                }
                grants(a, |chain, g| match chain {
                    None => T::U,
                    Some(c)
                        if self
                            .domain_chain_ids
                            .as_ref()
                            .is_some_and(|d| d.contains(&c)) =>
                    {
                        T::Y
                    }
                    Some(c) if reg.contains(&AssetId::token(c, g.token)) => T::Y,
                    Some(_) => T::U,
                })
            }),
            Field::Args => self
                .args
                .as_ref()
                .map_or(T::Y, |s| s.test(a, now_unix, calls)),
        }
    }

    /// Why `f` did not hold (or was indeterminate) for this request, for people.
    pub(crate) fn describe<'p>(
        &'p self,
        f: Field,
        a: &Action,
        who: &Identity,
        now_unix: i64,
        calls: &Calls<'p>,
    ) -> String {
        let name = f.name();
        if f == Field::Kinds {
            return if !self.kinds_written && KindSet::BLIND.contains(a.kind) {
                let what = match a.kind {
                    Kind::RawDigest => "raw_digest (blind signing)",
                    Kind::Eip191Binary => {
                        "eip191_binary (a 32-byte or non-text message, which may be a hash: blind signing)"
                    }
                    _ => "eip712_typed_data (typed data of no recognized standard: blind signing)",
                };
                format!("{what} is matched only by a rule whose `kinds` names it")
            } else {
                format!("kind {} is not in `kinds` {}", a.kind, self.kinds)
            };
        }
        if !f.applies_to().contains(a.kind) {
            return format!(
                "`{name}` applies only to {}; this is {}",
                f.applies_to(),
                a.kind
            );
        }
        let missing = |what: &str| {
            format!("`{name}` needs {what}, which this request lacks or could not be decoded")
        };
        let opt_addr = |x: Option<Address>| x.map_or_else(|| "none".to_owned(), |a| a.to_string());
        match f {
            Field::Kinds => String::new(),
            Field::Keys => format!("key `{}` is not in `keys`", a.key),
            Field::Clients => format!("client `{}` is not in `clients`", who.id),
            Field::Groups => format!(
                "client `{}` is in none of `groups` [{}]",
                who.id,
                self.groups
                    .as_ref()
                    .map(|g| g.names.join(", "))
                    .unwrap_or_default()
            ),
            Field::Roles => format!("client `{}` has none of `roles`", who.id),
            Field::ChainIds => match a.chain_id {
                None => missing("a chain id"),
                Some(c) => format!("chain {c} is not in `chain_ids`"),
            },
            Field::To | Field::Contracts => {
                let set = if f == Field::To {
                    &self.to
                } else {
                    &self.contracts
                };
                match (a.to, set) {
                    (None, _) => missing("a destination"),
                    (Some(to), Some(s)) => format!("destination {to} is not in `{name}` {s}"),
                    (Some(to), None) => format!("destination {to} is not in `{name}`"),
                }
            }
            Field::NotTo => match a.to {
                None => missing("a destination"),
                Some(to) => format!("destination {to} is in `not_to`"),
            },
            Field::Selectors => match a.selector {
                None => missing("a 4-byte function selector"),
                Some(s) => format!("selector 0x{} is not in `selectors`", hex::encode(s)),
            },
            Field::Counterparty | Field::Erc20Amount if KindSet::GRANTS.contains(a.kind) => {
                self.describe_grants(f, a)
            }
            Field::Counterparty => match (&a.erc20, &self.counterparty) {
                (Some(e), Some(s)) => {
                    format!(
                        "ERC-20 counterparty {} is not in `erc20_counterparty` {s}",
                        e.counterparty
                    )
                }
                _ if a.kind == Kind::Eip712SafeTx => {
                    "the Safe transaction's call is not an ERC-20 transfer, transferFrom or approve"
                        .into()
                }
                _ => missing("decoded ERC-20 arguments"),
            },
            Field::Erc20Amount => {
                let (Some(e), Some(b)) = (&a.erc20, &self.erc20_amount) else {
                    if a.kind == Kind::Eip712SafeTx {
                        return "the Safe transaction's call is not an ERC-20 transfer, transferFrom or approve".into();
                    }
                    return missing("decoded ERC-20 arguments");
                };
                b.describe(a.chain_id, e.token, e.amount, "ERC-20 amount")
            }
            Field::ValueMin => format!(
                "value {} < `value_min` {}",
                self.native_format.format(a.value),
                self.native_format
                    .format(self.value_min.unwrap_or_default())
            ),
            Field::ValueMax => format!(
                "value {} > `value_max` {}",
                self.native_format.format(a.value),
                self.native_format
                    .format(self.value_max.unwrap_or_default())
            ),
            Field::GasLimitMax => match a.gas_limit {
                None => missing("the gas limit"),
                Some(g) => format!(
                    "gas limit {g} > `gas_limit_max` {}",
                    self.gas_limit_max.unwrap_or_default()
                ),
            },
            Field::MaxFeeMax => match a.max_fee_per_gas {
                None => missing("the max fee per gas"),
                Some(g) => format!(
                    "max fee per gas {} gwei > `max_fee_per_gas_max` {} gwei",
                    format_units(g, 9),
                    format_units(self.max_fee_max.unwrap_or_default(), 9)
                ),
            },
            Field::PrimaryTypes
            | Field::DomainNames
            | Field::VerifyingContracts
            | Field::DomainChainIds => {
                let Some(td) = &a.typed_data else {
                    return missing("decoded typed data");
                };
                match f {
                    Field::PrimaryTypes => format!(
                        "primaryType `{}` is not in `primary_types`",
                        td.primary_type
                    ),
                    Field::DomainNames => match &td.domain_name {
                        None => "the EIP-712 domain has no name".into(),
                        Some(n) => format!("domain name `{n}` is not in `domain_names`"),
                    },
                    Field::VerifyingContracts => format!(
                        "verifying contract {} is not in `verifying_contracts`",
                        opt_addr(td.verifying_contract)
                    ),
                    _ => match td.domain_chain_id {
                        None => "the EIP-712 domain has no chainId".into(),
                        Some(c) => format!("domain chainId {c} is not in `domain_chain_ids`"),
                    },
                }
            }
            Field::PermitSpenders | Field::Registered => self.describe_grants(f, a),
            Field::MessageMaxBytes => match &a.message {
                None => missing("the message's length"),
                Some(m) => format!(
                    "message of {} bytes > `message_max_bytes` {}",
                    m.len,
                    self.message_max_bytes.unwrap_or_default()
                ),
            },
            Field::MessagePrefixes => match a.message.as_ref().and_then(|m| m.text_head.as_deref())
            {
                None => missing("the message's text"),
                Some(text) => {
                    let shown: String = text.chars().take(40).collect();
                    let more = if shown.len() < text.len() { "…" } else { "" };
                    format!("message {shown:?}{more} starts with none of `message_prefixes`")
                }
            },
            Field::Hours => match &self.hours {
                Some(h) => format!("{} is outside `hours` {h}", h.local(now_unix)),
                None => String::new(),
            },
            Field::Args => self
                .args
                .as_ref()
                .map(|s| s.describe(a, now_unix, calls))
                .unwrap_or_default(),
        }
    }

    /// Why a matcher over a permit's or authorization's grants did not hold.
    fn describe_grants(&self, f: Field, a: &Action) -> String {
        let name = f.name();
        let Some(td) = a.typed_data.as_ref().filter(|td| !td.grants.is_empty()) else {
            return format!(
                "`{name}` needs the token grants, which this request lacks or could not be decoded"
            );
        };
        let chain = td.domain_chain_id.and_then(|c| u64::try_from(c).ok());
        for g in &td.grants {
            match f {
                Field::Counterparty | Field::PermitSpenders => {
                    let set = if f == Field::Counterparty {
                        &self.counterparty
                    } else {
                        &self.permit_spenders
                    };
                    if let Some(s) = set
                        && !s.contains(&g.counterparty)
                    {
                        return format!(
                            "grant of {} to {} is not in `{name}` {s}",
                            g.token, g.counterparty
                        );
                    }
                }
                Field::Erc20Amount => {
                    if let Some(b) = &self.erc20_amount
                        && b.test(chain, g.token, g.amount) != T::Y
                    {
                        return b.describe(chain, g.token, g.amount, "granted amount");
                    }
                }
                _ => match chain {
                    None => return "the EIP-712 domain has no usable chainId".into(),
                    Some(c) => {
                        let known = self
                            .registered
                            .as_ref()
                            .is_some_and(|r| r.contains(&AssetId::token(c, g.token)));
                        if !known {
                            return format!(
                                "token {} on chain {c} is not a registered [[asset]], so no limit counts this grant; allow it by naming chain {c} in `domain_chain_ids`, or register the token",
                                g.token
                            );
                        }
                    }
                },
            }
        }
        format!("`{name}` does not hold for the grants")
    }
}

impl TokenBound {
    /// Why `amount` of `token` on `chain` is out of bounds; `what` names the amount.
    fn describe(&self, chain: Option<u64>, token: Address, amount: U256, what: &str) -> String {
        if let Some(tok) = self.token
            && (chain != Some(tok.chain_id) || Some(token) != tok.contract)
        {
            let Some(c) = chain else {
                return "`erc20_amount_min/max` needs a chain id, which this request lacks".into();
            };
            return format!(
                "token {token} on chain {c} is not {} ({tok}), the token `erc20_amount_min/max` are written in",
                self.format.symbol
            );
        }
        let shown = self.format.format(amount);
        match (self.min, self.max) {
            (Some(m), _) if amount < m => {
                format!(
                    "{what} {shown} < `erc20_amount_min` {}",
                    self.format.format(m)
                )
            }
            (_, Some(m)) => {
                format!(
                    "{what} {shown} > `erc20_amount_max` {}",
                    self.format.format(m)
                )
            }
            _ => format!("{what} {shown} is out of bounds"),
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Allows the request unless a deny rule also matches or a limit is exceeded.
    Allow,
    /// Denies the request, whatever else matches.
    Deny,
    /// Requires approval by quorums of people before signing.
    RequireApproval,
}

impl Effect {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::RequireApproval => "require_approval",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `require_approval` rule asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApprovalSpec {
    /// (group, minimum approvals), in file order.
    pub(crate) groups: Vec<(String, u32)>,
    pub(crate) ttl: Duration,
    pub(crate) veto: bool,
}

/// One rule, validated and compiled. Every matcher that is present must hold; an absent
/// matcher matches anything.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique id, reported in decisions and audit records.
    pub id: String,
    /// Free text for humans.
    pub description: String,
    /// Allow, deny or require approval.
    pub effect: Effect,
    /// Client ids this rule applies to (sorted, without duplicates).
    pub clients: Option<Vec<String>>,
    /// Client roles this rule applies to, any one sufficing (sorted, without duplicates).
    pub roles: Option<Vec<String>>,
    /// Key ids this rule applies to (sorted, without duplicates).
    pub keys: Option<Vec<String>>,
    /// Request kinds as written; when absent, every kind except `raw_digest`.
    pub kinds: Option<Vec<Kind>>,
    pub(crate) m: Matchers,
    pub(crate) approval: Option<ApprovalSpec>,
    /// 1-based line of the rule's `id`, for warnings.
    pub(crate) line: usize,
}

impl Rule {
    /// Whether every matcher of this rule holds for `action` requested by `who` at
    /// `now_unix` (seconds since the Unix epoch).
    pub fn matches(&self, action: &Action, who: &Identity, now_unix: i64) -> Match {
        match self.m.test(action, who, now_unix, &Calls::default()) {
            Outcome::Yes => Match::Yes,
            Outcome::No(_) => Match::No,
            Outcome::Unknown(_) => Match::Indeterminate,
            // An entry still cooling off counts the way that restricts.
            Outcome::NotYet(_) => match self.effect {
                Effect::Deny => Match::Yes,
                Effect::Allow => Match::No,
                Effect::RequireApproval => Match::Indeterminate,
            },
        }
    }

    /// Approvals a `require_approval` rule asks for: (group, minimum), in file order.
    pub fn approval_groups(&self) -> Vec<(String, u32)> {
        self.approval
            .as_ref()
            .map(|a| a.groups.clone())
            .unwrap_or_default()
    }
}
