//! Spending limits (per transaction and per sliding window) and request-rate limits: which
//! requests they apply to, how much of which asset a request moves, and the bucket its usage
//! is counted in.
//!
//! Limits are per asset: a native-coin limit counts native value, a token limit counts
//! ERC-20 transfers, transferFroms, approvals and EIP-2612 permits of that token. When a
//! request could move a limited asset in a way this module cannot measure (an undecoded call
//! to the token contract, typed data for the token other than `Permit`), the limit is
//! indeterminate and the request is denied: a limit must never be bypassable by encoding.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use alloy_primitives::{Address, U256};

use crate::amount::{AmountFormat, AssetId};
use crate::rule::{AddrSet, Groups, KindSet};
use crate::time::Duration;
use crate::{Action, Identity, Kind};

/// Which requests a limit applies to. Absent matchers match anything; absent `kinds` means
/// every kind (limits err on the side of counting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) kinds: KindSet,
    pub(crate) keys: Option<BTreeSet<String>>,
    pub(crate) clients: Option<BTreeSet<String>>,
    pub(crate) groups: Option<Groups>,
    pub(crate) roles: Option<BTreeSet<String>>,
    pub(crate) chain_ids: Option<BTreeSet<u64>>,
    /// Matched against the limit's destination (see [`destination`]), not the contract called.
    pub(crate) to: Option<AddrSet>,
}

impl Scope {
    /// Whether the identity-and-key part of the scope holds (no request fields needed).
    pub(crate) fn holds_for(&self, a: &Action, who: &Identity) -> bool {
        self.kinds.contains(a.kind)
            && self.keys.as_ref().is_none_or(|k| k.contains(&a.key))
            && self.clients.as_ref().is_none_or(|c| c.contains(&who.id))
            && self
                .groups
                .as_ref()
                .is_none_or(|g| g.members.contains(&who.id))
            && self
                .roles
                .as_ref()
                .is_none_or(|r| who.roles.iter().any(|x| r.contains(x)))
    }
}

/// Which parts of a request select its usage bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct KeyBy {
    pub(crate) key: bool,
    pub(crate) asset: bool,
    pub(crate) client: bool,
    pub(crate) destination: bool,
}

impl KeyBy {
    /// Whether every component of `self` is also in `o` (so `o`'s buckets are finer).
    pub(crate) fn is_subset(self, o: KeyBy) -> bool {
        (!self.key || o.key)
            && (!self.asset || o.asset)
            && (!self.client || o.client)
            && (!self.destination || o.destination)
    }
}

impl fmt::Display for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = [
            (self.key, "key"),
            (self.asset, "asset"),
            (self.client, "client"),
            (self.destination, "destination"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n)
        .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

/// A compiled `[[limit]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) id: String,
    pub(crate) description: String,
    pub(crate) scope: Scope,
    pub(crate) asset: Option<LimitAsset>,
    pub(crate) format: AmountFormat,
    pub(crate) per_tx_max: Option<U256>,
    pub(crate) window: Option<Duration>,
    pub(crate) max_amount: Option<U256>,
    pub(crate) max_count: Option<u64>,
    pub(crate) key_by: KeyBy,
    pub(crate) line: usize,
}

/// A compiled `[[rate_limit]]`: at most `max_requests` per client per window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub(crate) id: String,
    pub(crate) description: String,
    pub(crate) clients: Option<BTreeSet<String>>,
    pub(crate) groups: Option<Groups>,
    pub(crate) window: Duration,
    pub(crate) max_requests: u64,
    pub(crate) line: usize,
}

impl RateLimit {
    pub(crate) fn applies(&self, who: &Identity) -> bool {
        self.clients.as_ref().is_none_or(|c| c.contains(&who.id))
            && self
                .groups
                .as_ref()
                .is_none_or(|g| g.members.contains(&who.id))
    }
}

/// How much of an asset a request moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Moves {
    /// It does not move this asset.
    Nothing,
    /// It moves (or authorizes moving) `total` base units, more than zero. For a native
    /// limit on a transaction, `fee` is the part of `total` that is the worst-case fee
    /// (`gas_limit × max_fee_per_gas`); the rest is the value.
    Amount {
        /// Everything counted: value (or token amount) plus fee.
        total: U256,
        /// The worst-case fee included in `total`, for native limits on transactions.
        fee: Option<U256>,
    },
    /// It might move this asset in a way that cannot be measured.
    Unknown(&'static str),
}

impl Moves {
    fn amount(v: U256) -> Moves {
        if v.is_zero() {
            Moves::Nothing
        } else {
            Moves::Amount {
                total: v,
                fee: None,
            }
        }
    }

    /// Adds what a request moves of two assets that one limit counts together.
    pub(crate) fn plus(self, o: Moves) -> Moves {
        match (self, o) {
            (Moves::Unknown(w), _) | (_, Moves::Unknown(w)) => Moves::Unknown(w),
            (Moves::Nothing, x) | (x, Moves::Nothing) => x,
            (Moves::Amount { total: a, fee: fa }, Moves::Amount { total: b, fee: fb }) => {
                let fee = match (fa, fb) {
                    (None, None) => Some(None),
                    (x, y) => x
                        .unwrap_or_default()
                        .checked_add(y.unwrap_or_default())
                        .map(Some),
                };
                match (a.checked_add(b), fee) {
                    (Some(total), Some(fee)) => Moves::Amount { total, fee },
                    _ => Moves::Unknown("the amounts overflow 256 bits"),
                }
            }
        }
    }
}

/// The asset a limit counts: one asset, or the native coin (or one token symbol's
/// registered contracts) on several chains, counted together in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitAsset {
    /// Sorted by chain id, one per chain, never empty; all native or all tokens.
    ids: Vec<AssetId>,
}

impl LimitAsset {
    /// `ids` sorted by chain id; `None` when empty or two share a chain.
    pub(crate) fn new(mut ids: Vec<AssetId>) -> Option<LimitAsset> {
        ids.sort_by_key(|i| i.chain_id);
        let distinct = ids.windows(2).all(|w| w[0].chain_id != w[1].chain_id);
        let same = ids
            .iter()
            .all(|i| i.contract.is_none() == ids[0].contract.is_none());
        (!ids.is_empty() && distinct && same).then_some(LimitAsset { ids })
    }

    pub(crate) fn one(id: AssetId) -> LimitAsset {
        LimitAsset { ids: vec![id] }
    }

    /// The asset on the lowest chain id (amount literals are resolved against it).
    pub(crate) fn first(&self) -> AssetId {
        self.ids[0]
    }

    pub(crate) fn is_native(&self) -> bool {
        self.ids[0].contract.is_none()
    }

    pub(crate) fn ids(&self) -> &[AssetId] {
        &self.ids
    }

    /// Whether this limit counts the asset on `chain`.
    pub(crate) fn on_chain(&self, chain: u64) -> Option<AssetId> {
        self.ids.iter().copied().find(|i| i.chain_id == chain)
    }

    /// The chains counted, as `chain 1` or `chains 1, 10`.
    pub(crate) fn chains_text(&self) -> String {
        let v: Vec<String> = self.ids.iter().map(|i| i.chain_id.to_string()).collect();
        if v.len() == 1 {
            format!("chain {}", v.join(""))
        } else {
            format!("chains {}", v.join(", "))
        }
    }

    /// How much of this asset, on any of its chains, the request moves.
    pub(crate) fn moves(&self, a: &Action) -> Moves {
        self.ids
            .iter()
            .fold(Moves::Nothing, |m, id| m.plus(moves(*id, a)))
    }
}

impl fmt::Display for LimitAsset {
    /// The bucket component: `1:native`, or for several chains the assets in ascending
    /// chain-id order joined by `+` (`1:native+10:native`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.ids.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

/// Reads a chain id from typed data's `domain.chainId` (a uint256).
fn domain_chain(a: &Action) -> Option<u64> {
    a.typed_data
        .as_ref()
        .and_then(|t| t.domain_chain_id)
        .and_then(|c| u64::try_from(c).ok())
}

/// How much of `asset` the request moves.
///
/// A transaction moves its value plus its worst-case fee (`gas_limit × max_fee_per_gas`) of
/// the native coin of its chain. A Safe transaction moves its call's value, and denies every
/// limit on its chain when it is a delegatecall (it runs arbitrary code as the Safe) or pays
/// a refund in the limited asset (the refund is bounded by gas figures the Safe executor
/// chooses). Permits and transfer authorizations move the sum of their grants of the token
/// on the domain's chain; opaque typed data for the token cannot be measured.
pub(crate) fn moves(asset: AssetId, a: &Action) -> Moves {
    if a.kind == Kind::Eip712SafeTx {
        return safe_tx_moves(asset, a);
    }
    let Some(token) = asset.contract else {
        // Native coin: value and fee of any transaction on that chain.
        if !KindSet::TX.contains(a.kind) {
            return Moves::Nothing;
        }
        match a.chain_id {
            None => return Moves::Unknown("the transaction's chain id is missing"),
            Some(c) if c != asset.chain_id => return Moves::Nothing,
            Some(_) => {}
        }
        let Some(gas) = a.gas_limit else {
            return Moves::Unknown("the transaction's gas limit is missing, so its fee is unknown");
        };
        let Some(price) = a.max_fee_per_gas else {
            return Moves::Unknown(
                "the transaction's max fee per gas is missing, so its fee is unknown",
            );
        };
        let Some(fee) = U256::from(gas).checked_mul(price) else {
            return Moves::Unknown("the transaction's fee overflows 256 bits");
        };
        return match a.value.checked_add(fee) {
            None => Moves::Unknown("the transaction's value plus fee overflows 256 bits"),
            Some(total) if total.is_zero() => Moves::Nothing,
            Some(total) => Moves::Amount {
                total,
                fee: Some(fee),
            },
        };
    };
    match a.kind {
        Kind::Erc20Transfer | Kind::Erc20TransferFrom | Kind::Erc20Approve | Kind::ContractCall => {
            match a.chain_id {
                None => return Moves::Unknown("the transaction's chain id is missing"),
                Some(c) if c != asset.chain_id => return Moves::Nothing,
                Some(_) => {}
            }
            match (&a.erc20, a.to) {
                (Some(e), _) if a.kind != Kind::ContractCall => {
                    if e.token == token {
                        Moves::amount(e.amount)
                    } else {
                        Moves::Nothing
                    }
                }
                (_, Some(to)) if to != token => Moves::Nothing,
                (_, Some(_)) => Moves::Unknown(
                    "a call to the token contract that is not a decoded transfer, transferFrom or approve",
                ),
                (_, None) => Moves::Unknown("the transaction's destination is missing"),
            }
        }
        Kind::Eip712Permit | Kind::Eip712TransferAuthorization => {
            let Some(td) = &a.typed_data else {
                return Moves::Unknown("the typed data was not decoded");
            };
            match td.domain_chain_id {
                None => return Moves::Unknown("the typed data's domain has no chainId"),
                Some(_) if domain_chain(a) != Some(asset.chain_id) => return Moves::Nothing,
                Some(_) => {}
            }
            if td.grants.is_empty() {
                return Moves::Unknown("the authorization's token grants were not decoded");
            }
            let mut sum = U256::ZERO;
            for g in td.grants.iter().filter(|g| g.token == token) {
                let Some(s) = sum.checked_add(g.amount) else {
                    return Moves::Unknown("the grants' amounts overflow 256 bits");
                };
                sum = s;
            }
            Moves::amount(sum)
        }
        Kind::Eip712TypedData => {
            let Some(td) = &a.typed_data else {
                return Moves::Unknown("the typed data was not decoded");
            };
            let chain_ok = match td.domain_chain_id {
                None => true,
                Some(_) => domain_chain(a) == Some(asset.chain_id),
            };
            match td.verifying_contract {
                Some(v) if v == token && chain_ok => Moves::Unknown(
                    "typed data for the token contract that is not a recognized permit or transfer authorization",
                ),
                None if td.primary_type.starts_with("Permit") => {
                    Moves::Unknown("typed data named like a permit without a verifyingContract")
                }
                _ => Moves::Nothing,
            }
        }
        Kind::NativeTransfer
        | Kind::ContractCreation
        | Kind::Eip191Message
        | Kind::Eip191Binary
        | Kind::RawDigest
        | Kind::Eip712SafeTx => Moves::Nothing,
    }
}

/// [`moves`] for a Safe `SafeTx`: its call, its operation and its refund.
fn safe_tx_moves(asset: AssetId, a: &Action) -> Moves {
    match a.chain_id {
        None => return Moves::Unknown("the Safe transaction's domain has no usable chainId"),
        Some(c) if c != asset.chain_id => return Moves::Nothing,
        Some(_) => {}
    }
    let Some(safe) = a.typed_data.as_ref().and_then(|t| t.safe_tx.as_ref()) else {
        return Moves::Unknown("the Safe transaction's parameters were not decoded");
    };
    if safe.operation != 0 {
        return Moves::Unknown(
            "the Safe transaction is a delegatecall, which can move any asset of the Safe",
        );
    }
    let refund_in = |x: Address| !safe.gas_price.is_zero() && safe.gas_token == x;
    let Some(token) = asset.contract else {
        if refund_in(Address::ZERO) {
            return Moves::Unknown(
                "the Safe transaction pays a refund in the native coin, which its executor bounds",
            );
        }
        return Moves::amount(a.value);
    };
    if refund_in(token) {
        return Moves::Unknown(
            "the Safe transaction pays a refund in this token, which its executor bounds",
        );
    }
    match (&a.erc20, a.to) {
        (Some(e), Some(to)) if to == token && e.token == token => Moves::amount(e.amount),
        (_, Some(to)) if to != token => Moves::Nothing,
        (_, Some(_)) => Moves::Unknown(
            "a Safe call to the token contract that is not a decoded transfer, transferFrom or approve",
        ),
        (_, None) => Moves::Unknown("the Safe transaction's destination is missing"),
    }
}

/// Where the limited asset goes: the native value's recipient (`to`), the ERC-20
/// recipient or spender, or the counterparty of a permit's or authorization's grants of the
/// token. `Err` when it should exist but was not decoded, or is not one address.
///
/// `asset` is the limit's asset (`None` for a limit that counts requests).
pub(crate) fn destination(
    asset: Option<&LimitAsset>,
    a: &Action,
) -> Result<Option<Address>, &'static str> {
    if asset.is_some_and(LimitAsset::is_native) {
        return Ok(a.to);
    }
    let token = asset
        .and_then(|l| effective_chain(a).and_then(|c| l.on_chain(c)))
        .and_then(|i| i.contract);
    if KindSet::ERC20.contains(a.kind) {
        return a
            .erc20
            .as_ref()
            .map(|e| Some(e.counterparty))
            .ok_or("the ERC-20 arguments were not decoded");
    }
    match a.kind {
        Kind::Eip712SafeTx => Ok(a.erc20.as_ref().map(|e| e.counterparty).or(a.to)),
        Kind::Eip712Permit | Kind::Eip712TransferAuthorization => {
            let Some(td) = &a.typed_data else {
                return Err("the typed data was not decoded");
            };
            let mut out = None;
            for g in td
                .grants
                .iter()
                .filter(|g| token.is_none_or(|t| g.token == t))
            {
                match out {
                    Some(c) if c != g.counterparty => {
                        return Err("the grants of the token go to several counterparties");
                    }
                    _ => out = Some(g.counterparty),
                }
            }
            Ok(out)
        }
        Kind::Eip712TypedData => Ok(None),
        _ => Ok(a.to),
    }
}

/// Effective chain of a request for limit scopes: the transaction's chain or the EIP-712
/// domain's chainId, so a `chain_ids` scope also catches permits.
pub(crate) fn effective_chain(a: &Action) -> Option<u64> {
    a.chain_id.or_else(|| domain_chain(a))
}

/// The canonical name of one usage bucket, such as
/// `limit=daily-eth|key=hot|asset=1:native`.
///
/// Components appear in a fixed order (`limit`/`rate_limit`, `key`, `asset`, `client`,
/// `destination`) and only those the limit is keyed by. Key and client ids are
/// percent-escaped (`%`, `|`, `=`), so distinct requests never share a name by accident.
/// Usage stores key their counters by this string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey(String);

impl BucketKey {
    /// The canonical string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the limit or rate limit this bucket belongs to.
    pub fn limit_id(&self) -> &str {
        let first = self.0.split('|').next().unwrap_or("");
        first.split_once('=').map_or("", |(_, v)| v)
    }

    pub(crate) fn for_limit(
        l: &Limit,
        a: &Action,
        who: &Identity,
        dest: Option<Address>,
    ) -> BucketKey {
        let mut s = String::with_capacity(96);
        s.push_str("limit=");
        s.push_str(&l.id);
        if l.key_by.key {
            s.push_str("|key=");
            escape(&mut s, &a.key);
        }
        if l.key_by.asset
            && let Some(asset) = &l.asset
        {
            let _ = write!(s, "|asset={asset}");
        }
        if l.key_by.client {
            s.push_str("|client=");
            escape(&mut s, &who.id);
        }
        if l.key_by.destination {
            match dest {
                Some(d) => {
                    let _ = write!(s, "|destination={d:#x}");
                }
                None => s.push_str("|destination=none"),
            }
        }
        BucketKey(s)
    }

    pub(crate) fn for_rate(r: &RateLimit, who: &Identity) -> BucketKey {
        let mut s = String::with_capacity(48);
        s.push_str("rate_limit=");
        s.push_str(&r.id);
        s.push_str("|client=");
        escape(&mut s, &who.id);
        BucketKey(s)
    }
}

impl fmt::Display for BucketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::{Erc20Call, SafeTxFacts, TypedDataFacts};

    const TOKEN: Address = Address::repeat_byte(0x70);
    const OTHER: Address = Address::repeat_byte(0x71);
    const BOB: Address = Address::repeat_byte(0xb0);

    fn tx(kind: Kind) -> Action {
        let mut a = Action::new("hot", kind);
        a.chain_id = Some(1);
        a
    }

    fn amount(total: u64, fee: Option<u64>) -> Moves {
        Moves::Amount {
            total: U256::from(total),
            fee: fee.map(U256::from),
        }
    }

    fn unknown(m: Moves) -> bool {
        matches!(m, Moves::Unknown(_))
    }

    #[test]
    fn native_value_and_worst_case_fee_count_on_its_chain_for_every_transaction_kind() {
        let eth = AssetId::native(1);
        for kind in Kind::ALL.into_iter().filter(|k| KindSet::TX.contains(*k)) {
            let mut a = tx(kind);
            a.to = Some(OTHER);
            a.value = U256::from(5);
            a.gas_limit = Some(21_000);
            a.max_fee_per_gas = Some(U256::from(3));
            assert_eq!(moves(eth, &a), amount(5 + 63_000, Some(63_000)), "{kind}");
            assert_eq!(moves(AssetId::native(10), &a), Moves::Nothing);
            // A zero-value transaction still moves its fee.
            a.value = U256::ZERO;
            assert_eq!(moves(eth, &a), amount(63_000, Some(63_000)), "{kind}");
            a.max_fee_per_gas = Some(U256::ZERO);
            assert_eq!(moves(eth, &a), Moves::Nothing);
            // Missing gas figures, an overflowing fee, a missing chain: fail closed.
            a.max_fee_per_gas = None;
            assert!(unknown(moves(eth, &a)), "{kind}");
            a.max_fee_per_gas = Some(U256::MAX);
            assert!(unknown(moves(eth, &a)), "{kind}");
            a.max_fee_per_gas = Some(U256::from(1));
            a.gas_limit = None;
            assert!(unknown(moves(eth, &a)), "{kind}");
            a.gas_limit = Some(1);
            a.value = U256::MAX;
            assert!(unknown(moves(eth, &a)), "{kind}");
            a.value = U256::from(1);
            a.chain_id = None;
            assert!(unknown(moves(eth, &a)), "{kind}");
        }
        for kind in [
            Kind::Eip191Message,
            Kind::Eip191Binary,
            Kind::RawDigest,
            Kind::Eip712TypedData,
            Kind::Eip712Permit,
            Kind::Eip712TransferAuthorization,
        ] {
            assert_eq!(
                moves(eth, &Action::new("k", kind)),
                Moves::Nothing,
                "{kind}"
            );
        }
    }

    #[test]
    fn a_limit_on_several_chains_adds_them_in_one_bucket_named_in_chain_order() {
        let both = LimitAsset::new(vec![AssetId::native(10), AssetId::native(1)]).unwrap();
        assert_eq!(both.to_string(), "1:native+10:native");
        assert_eq!(both.chains_text(), "chains 1, 10");
        assert_eq!(LimitAsset::one(AssetId::native(1)).to_string(), "1:native");
        assert!(LimitAsset::new(vec![AssetId::native(1), AssetId::native(1)]).is_none());
        assert!(LimitAsset::new(vec![AssetId::native(1), AssetId::token(10, TOKEN)]).is_none());
        let mut a = tx(Kind::NativeTransfer);
        a.value = U256::from(2);
        a.gas_limit = Some(1);
        a.max_fee_per_gas = Some(U256::from(1));
        for chain in [1, 10] {
            a.chain_id = Some(chain);
            assert_eq!(both.moves(&a), amount(3, Some(1)));
        }
        a.chain_id = Some(137);
        assert_eq!(both.moves(&a), Moves::Nothing);
    }

    fn safe_tx(operation: u8) -> Action {
        let mut a = Action::new("hot", Kind::Eip712SafeTx);
        a.chain_id = Some(1);
        a.to = Some(OTHER);
        a.value = U256::from(4);
        a.typed_data = Some(TypedDataFacts {
            primary_type: "SafeTx".into(),
            domain_chain_id: Some(U256::from(1)),
            verifying_contract: Some(Address::repeat_byte(0x5a)),
            standard: Some(crate::TypedStandard::SafeTx),
            safe_tx: Some(SafeTxFacts {
                operation,
                safe_tx_gas: U256::ZERO,
                base_gas: U256::ZERO,
                gas_price: U256::ZERO,
                gas_token: Address::ZERO,
                refund_receiver: Address::ZERO,
                nonce: U256::ZERO,
            }),
            ..TypedDataFacts::default()
        });
        a
    }

    fn set_refund(a: &mut Action, token: Address) {
        if let Some(s) = a.typed_data.as_mut().and_then(|t| t.safe_tx.as_mut()) {
            s.gas_price = U256::from(1);
            s.gas_token = token;
        }
    }

    #[test]
    fn safe_transactions_count_their_call_and_deny_delegatecalls_and_refunds() {
        let (eth, usdc) = (AssetId::native(1), AssetId::token(1, TOKEN));
        let a = safe_tx(0);
        assert_eq!(moves(eth, &a), amount(4, None));
        assert_eq!(moves(AssetId::native(10), &a), Moves::Nothing);
        assert_eq!(moves(usdc, &a), Moves::Nothing);
        // A delegatecall can move anything on its chain.
        let d = safe_tx(1);
        assert!(unknown(moves(eth, &d)) && unknown(moves(usdc, &d)));
        assert_eq!(moves(AssetId::token(10, TOKEN), &d), Moves::Nothing);
        // A refund in the native coin or in the limited token is unbounded.
        let mut r = safe_tx(0);
        set_refund(&mut r, Address::ZERO);
        assert!(unknown(moves(eth, &r)));
        assert_eq!(moves(usdc, &r), Moves::Nothing);
        set_refund(&mut r, TOKEN);
        assert!(unknown(moves(usdc, &r)));
        assert_eq!(moves(eth, &r), amount(4, None));
        // A decoded ERC-20 call of the token counts; another call to it cannot be measured.
        let mut t = safe_tx(0);
        t.to = Some(TOKEN);
        t.value = U256::ZERO;
        assert!(unknown(moves(usdc, &t)));
        t.erc20 = Some(Erc20Call {
            token: TOKEN,
            from: None,
            counterparty: BOB,
            amount: U256::from(7),
        });
        assert_eq!(moves(usdc, &t), amount(7, None));
        assert_eq!(moves(eth, &t), Moves::Nothing);
        let l = LimitAsset::one(usdc);
        assert_eq!(destination(Some(&l), &t), Ok(Some(BOB)));
        // Without a usable chain the Safe transaction cannot be placed.
        t.chain_id = None;
        assert!(unknown(moves(usdc, &t)) && unknown(moves(eth, &t)));
    }

    fn grant(token: Address, to: Address, amount: u64) -> crate::TokenGrant {
        crate::TokenGrant {
            token,
            counterparty: to,
            amount: U256::from(amount),
        }
    }

    #[test]
    fn token_limits_count_transfers_approvals_and_grants_and_fail_closed() {
        let usdc = AssetId::token(1, TOKEN);
        let l = LimitAsset::one(usdc);
        for kind in [
            Kind::Erc20Transfer,
            Kind::Erc20TransferFrom,
            Kind::Erc20Approve,
        ] {
            let mut a = tx(kind);
            a.to = Some(TOKEN);
            a.erc20 = Some(Erc20Call {
                token: TOKEN,
                from: None,
                counterparty: BOB,
                amount: U256::from(7),
            });
            assert_eq!(moves(usdc, &a), amount(7, None), "{kind}");
            assert_eq!(destination(Some(&l), &a), Ok(Some(BOB)));
            a.erc20 = None;
            assert!(unknown(moves(usdc, &a)), "{kind}");
            assert!(destination(Some(&l), &a).is_err());
        }
        let mut call = tx(Kind::ContractCall);
        call.to = Some(TOKEN);
        call.selector = Some([0x39, 0x50, 0x93, 0x51]); // increaseAllowance
        assert!(unknown(moves(usdc, &call)));
        call.to = Some(OTHER);
        assert_eq!(moves(usdc, &call), Moves::Nothing);

        for kind in [Kind::Eip712Permit, Kind::Eip712TransferAuthorization] {
            // Permit2-style: the verifying contract is not the token; the grants say which.
            let mut p = Action::new("hot", kind);
            p.typed_data = Some(TypedDataFacts {
                primary_type: "PermitBatch".into(),
                domain_chain_id: Some(U256::from(1)),
                verifying_contract: Some(OTHER),
                grants: vec![
                    grant(TOKEN, BOB, 9),
                    grant(OTHER, BOB, 5),
                    grant(TOKEN, BOB, 1),
                ],
                ..TypedDataFacts::default()
            });
            assert_eq!(moves(usdc, &p), amount(10, None), "{kind}");
            assert_eq!(moves(AssetId::token(10, TOKEN), &p), Moves::Nothing);
            assert_eq!(destination(Some(&l), &p), Ok(Some(BOB)));
            assert_eq!(effective_chain(&p), Some(1));
            let mut td = p.typed_data.clone().unwrap();
            td.grants.push(grant(TOKEN, OTHER, 1));
            p.typed_data = Some(td.clone());
            assert!(destination(Some(&l), &p).is_err());
            td.grants.push(grant(TOKEN, BOB, u64::MAX));
            td.grants.push(crate::TokenGrant {
                amount: U256::MAX,
                ..grant(TOKEN, BOB, 0)
            });
            p.typed_data = Some(td.clone());
            assert!(unknown(moves(usdc, &p)), "{kind}: overflow");
            td.grants.clear();
            p.typed_data = Some(td.clone());
            assert!(unknown(moves(usdc, &p)), "{kind}: no grants");
            td.grants.push(grant(TOKEN, BOB, 1));
            td.domain_chain_id = None;
            p.typed_data = Some(td);
            assert!(unknown(moves(usdc, &p)), "{kind}: no chain");
            p.typed_data = None;
            assert!(unknown(moves(usdc, &p)), "{kind}: not decoded");
        }

        // Opaque typed data for the token cannot be measured.
        let mut o = Action::new("hot", Kind::Eip712TypedData);
        o.typed_data = Some(TypedDataFacts {
            primary_type: "Permit".into(),
            domain_chain_id: Some(U256::from(1)),
            verifying_contract: Some(TOKEN),
            ..TypedDataFacts::default()
        });
        assert!(unknown(moves(usdc, &o)));
        assert_eq!(moves(AssetId::token(10, TOKEN), &o), Moves::Nothing);
        let mut td = o.typed_data.clone().unwrap();
        td.verifying_contract = None;
        o.typed_data = Some(td.clone());
        assert!(unknown(moves(usdc, &o)));
        td.primary_type = "Mail".into();
        o.typed_data = Some(td);
        assert_eq!(moves(usdc, &o), Moves::Nothing);
    }

    #[test]
    fn bucket_keys_are_canonical_and_escaped() {
        let l = Limit {
            id: "daily".into(),
            description: String::new(),
            scope: Scope {
                kinds: KindSet::ALL,
                keys: None,
                clients: None,
                groups: None,
                roles: None,
                chain_ids: None,
                to: None,
            },
            asset: Some(LimitAsset::one(AssetId::native(1))),
            format: AmountFormat::ether(),
            per_tx_max: None,
            window: Some(Duration(86_400)),
            max_amount: Some(U256::from(1)),
            max_count: None,
            key_by: KeyBy {
                key: true,
                asset: true,
                client: true,
                destination: true,
            },
            line: 1,
        };
        let who = Identity {
            id: "a|b=c%".into(),
            roles: vec![],
        };
        let b = BucketKey::for_limit(&l, &tx(Kind::NativeTransfer), &who, Some(BOB));
        assert_eq!(
            b.as_str(),
            "limit=daily|key=hot|asset=1:native|client=a%7Cb%3Dc%25|destination=0xb0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"
        );
        assert_eq!(b.limit_id(), "daily");
    }
}
