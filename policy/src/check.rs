//! `signerctl policy check`: warnings about a policy that parses but probably does not say
//! what its author meant — rules that can never match, allow rules that a deny rule always
//! overrides, unused names, risky breadth.
//!
//! The checks are conservative and syntactic: a warning is always worth reading, but the
//! absence of one proves nothing. This module must never change what a policy means.

use std::collections::BTreeSet;
use std::fmt;

use alloy_primitives::Address;

use crate::limit::{Limit, Scope};
use crate::rule::{AddrSet, Effect, Field, KindSet, Matchers};
use crate::{Kind, Policy};

/// One finding of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// What it is about, e.g. ``rule `payouts` `` or ``group `ops` ``.
    pub subject: String,
    /// 1-based line in the policy file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.subject, self.message),
            None => write!(f, "{}: {}", self.subject, self.message),
        }
    }
}

/// `n` followed by the singular or the plural noun: `1 warning`, `2 warnings`, `0 warnings`.
pub fn counted(n: impl Into<u64>, singular: &str, plural: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// Lints `policy`; warnings come in file order, rules first.
pub fn check(policy: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut used_books: BTreeSet<&str> = BTreeSet::new();
    let mut used_groups: BTreeSet<&str> = BTreeSet::new();

    for rule in &policy.rules {
        let warn = |out: &mut Vec<Warning>, message: String| {
            out.push(Warning {
                subject: format!("rule `{}`", rule.id),
                line: Some(rule.line),
                message,
            });
        };
        let m = &rule.m;
        for set in addr_sets(m) {
            used_books.extend(set.written.iter().filter_map(|w| w.strip_prefix("book:")));
        }
        if let Some(g) = &m.groups {
            used_groups.extend(g.names.iter().map(String::as_str));
        }
        if let Some(a) = &rule.approval {
            used_groups.extend(a.groups.iter().map(|(g, _)| g.as_str()));
            for (g, min) in &a.groups {
                let size = policy.groups.get(g).map_or(0, BTreeSet::len);
                if usize::try_from(*min).is_ok_and(|m| m == size) {
                    warn(
                        &mut out,
                        format!(
                            "needs all {} of `{g}`; a member who requests can never reach it (the requester never counts)",
                            counted(size as u64, "member", "members")
                        ),
                    );
                }
            }
        }
        if let Some(why) = never_matches(m) {
            warn(&mut out, format!("can never match: {why}"));
            continue;
        }
        if let Some(b) = &m.erc20_amount
            && b.token.is_none()
            && m.contracts.is_none()
        {
            warn(
                &mut out,
                "`erc20_amount_min/max` in base units without `contracts` compares raw amounts of tokens with different decimals; write the amount with a symbol (\"100 USDC\") or add `contracts`".into(),
            );
        }
        if rule.effect != Effect::Deny {
            for message in grant_warnings(policy, m) {
                warn(&mut out, message);
            }
        }
        for message in crate::lint::rule_lints(policy, rule) {
            warn(&mut out, message);
        }
        if rule.effect == Effect::Allow {
            if m.effective_kinds().contains(crate::Kind::RawDigest) && m.keys.is_none() {
                warn(
                    &mut out,
                    "allows blind signing (raw_digest) with every key; name the keys".into(),
                );
            }
            if m.clients.is_none() && m.groups.is_none() && m.roles.is_none() {
                warn(
                    &mut out,
                    "allows every authenticated client; add `clients`, `groups` or `roles`".into(),
                );
            }
        }
        if rule.effect != Effect::Deny {
            let by = |e: Effect| {
                policy
                    .rules
                    .iter()
                    .find(|o| o.id != rule.id && o.effect == e && covers(&o.m, m))
            };
            if let Some(d) = by(Effect::Deny) {
                warn(
                    &mut out,
                    format!(
                        "is shadowed by deny rule `{}`: every request it matches is denied",
                        d.id
                    ),
                );
            } else if rule.effect == Effect::Allow
                && let Some(r) = by(Effect::RequireApproval)
            {
                warn(
                    &mut out,
                    format!(
                        "never allows on its own: rule `{}` requires approval for every request it matches",
                        r.id
                    ),
                );
            }
        }
    }

    for l in &policy.limits {
        let warn = |out: &mut Vec<Warning>, message: String| {
            out.push(Warning {
                subject: format!("limit `{}`", l.id),
                line: Some(l.line),
                message,
            });
        };
        if let Some(to) = &l.scope.to {
            used_books.extend(to.written.iter().filter_map(|w| w.strip_prefix("book:")));
        }
        if let Some(g) = &l.scope.groups {
            used_groups.extend(g.names.iter().map(String::as_str));
        }
        if let Some(asset) = &l.asset {
            let moving = if asset.is_native() {
                KindSet(KindSet::TX.0 | KindSet::SAFE.0)
            } else {
                KindSet(KindSet::CALL.0 | KindSet::TYPED.0)
            };
            if l.scope.kinds.and(moving).is_empty() {
                warn(
                    &mut out,
                    format!(
                        "can never apply: its `kinds` {} never move {}",
                        l.scope.kinds, l.format.symbol
                    ),
                );
            }
        }
        if let (Some(p), Some(m)) = (l.per_tx_max, l.max_amount)
            && p > m
        {
            warn(
                &mut out,
                "`per_tx_max` is larger than `max_amount`, so it never decides".into(),
            );
        }
    }
    for r in &policy.rate_limits {
        if let Some(g) = &r.groups {
            used_groups.extend(g.names.iter().map(String::as_str));
        }
    }
    for name in policy.books.keys() {
        if !used_books.contains(name.as_str()) {
            out.push(Warning {
                subject: format!("address book `{name}`"),
                line: None,
                message: "is never used".into(),
            });
        }
    }
    let approving: BTreeSet<&str> = policy
        .rules
        .iter()
        .filter_map(|r| r.approval.as_ref())
        .flat_map(|a| a.groups.iter())
        .filter_map(|(g, _)| policy.groups.get(g))
        .flatten()
        .map(String::as_str)
        .collect();
    for id in policy.approvers.keys() {
        if !approving.contains(id.as_str()) {
            out.push(Warning {
                subject: format!("approver `{id}`"),
                line: None,
                message: "is in no group that any `approvals` names; the key approves nothing"
                    .into(),
            });
        }
    }
    for name in policy.groups.keys() {
        if !used_groups.contains(name.as_str()) {
            out.push(Warning {
                subject: format!("group `{name}`"),
                line: None,
                message: "is never used".into(),
            });
        }
    }
    out
}

/// Warnings about what an allow or require_approval rule lets through that no limit counts
/// (fees, chains) or that is broad or blind (messages).
fn grant_warnings(policy: &Policy, m: &Matchers) -> Vec<String> {
    let mut out = Vec::new();
    let kinds = m.effective_kinds();
    let or = |a: KindSet, b: KindSet| KindSet(a.0 | b.0);

    // Fees: a transaction may pay up to gas_limit × max_fee_per_gas.
    let tx = kinds.and(KindSet::TX);
    if !tx.is_empty() && (m.gas_limit_max.is_none() || m.max_fee_max.is_none()) {
        let uncovered: Option<Vec<u64>> = rule_chains(m, tx).map(|chains| {
            chains
                .into_iter()
                .filter(|c| !fee_covered(policy, m, tx, *c))
                .collect()
        });
        let chains = match &uncovered {
            None => Some("any chain".to_owned()),
            Some(v) if v.is_empty() => None,
            Some(v) => Some(chain_words(v)),
        };
        if let Some(chains) = chains {
            out.push(format!(
                "can sign transactions without a fee cap (`gas_limit_max` and `max_fee_per_gas_max`) that no native limit with at least the rule's scope counts ({chains}): a transaction's fee can spend up to gas_limit × max_fee_per_gas of the native coin; set both caps, or cover the rule with a native `per_tx_max` or `max_amount` limit on each of its chains"
            ));
        }
    }

    // Chains: every chain the rule can move an asset on should be counted by the limits
    // of that asset, when the policy limits it at all.
    let native_kinds = kinds.and(or(KindSet::TX, KindSet::SAFE));
    let native_limits: Vec<&Limit> = policy
        .limits
        .iter()
        .filter(|l| l.asset.as_ref().is_some_and(|a| a.is_native()) && counts_amounts(l))
        .collect();
    if !native_kinds.is_empty() && !native_limits.is_empty() {
        let counted = counted_chains(&native_limits);
        if let Some(missing) = missing_chains(rule_chains(m, native_kinds), &counted) {
            out.push(format!(
                "allows transactions on chains no native limit counts ({missing}): add `chain_ids` to the rule, or the chains to a limit"
            ));
        }
    }
    let token_kinds = kinds.and(or(or(KindSet::CALL, KindSet::GRANTS), KindSet::SAFE));
    if !token_kinds.is_empty() {
        let mut symbols: Vec<&str> = policy
            .limits
            .iter()
            .filter(|l| l.asset.as_ref().is_some_and(|a| !a.is_native()) && counts_amounts(l))
            .map(|l| l.format.symbol.as_str())
            .collect();
        symbols.sort_unstable();
        symbols.dedup();
        for sym in symbols {
            let limits: Vec<&Limit> = policy
                .limits
                .iter()
                .filter(|l| {
                    l.format.symbol == sym
                        && l.asset.as_ref().is_some_and(|a| !a.is_native())
                        && counts_amounts(l)
                })
                .collect();
            let counted = counted_chains(&limits);
            let registered: BTreeSet<u64> = policy
                .assets
                .iter()
                .filter(|a| a.symbol == sym && a.id.contract.is_some())
                .map(|a| a.id.chain_id)
                .collect();
            let mut can = rule_chains(m, token_kinds);
            if let Some(pin) = m.erc20_amount.as_ref().and_then(|b| b.token) {
                // Only the pinned token moves through ERC-20 calls and grants; a contract
                // call could still move any token.
                if !token_kinds.contains(Kind::ContractCall) {
                    let same = policy.assets.iter().any(|a| a.id == pin && a.symbol == sym);
                    can = Some(if same {
                        BTreeSet::from([pin.chain_id])
                    } else {
                        BTreeSet::new()
                    });
                }
            }
            let at_risk: BTreeSet<u64> = match can {
                None => registered,
                Some(c) => registered.intersection(&c).copied().collect(),
            };
            let missing: Vec<u64> = at_risk.difference(&counted).copied().collect();
            if !missing.is_empty() {
                out.push(format!(
                    "can move {sym} on chains no {sym} limit counts ({}): add `chain_ids` or `domain_chain_ids` to the rule, or the chains to a limit",
                    chain_words(&missing)
                ));
            }
        }
    }

    // Messages.
    if kinds.contains(Kind::Eip191Message)
        && m.message_prefixes.is_none()
        && m.message_max_bytes.is_none()
    {
        out.push(
            "broad message allow rule: any text message can be signed, including a sign-in to any site (EIP-4361) and off-chain orders or votes; add `message_prefixes` or `message_max_bytes`".into(),
        );
    }
    if m.kinds_written && m.kinds.contains(Kind::Eip191Binary) {
        out.push(
            "names `eip191_binary`: a 32-byte message can be the hash of a transaction or typed data; this is blind signing".into(),
        );
    }
    out
}

/// Whether a limit caps an amount (a count-only limit counts no coin).
fn counts_amounts(l: &Limit) -> bool {
    l.per_tx_max.is_some() || l.max_amount.is_some()
}

/// Chains whose asset some of `limits` count.
fn counted_chains(limits: &[&Limit]) -> BTreeSet<u64> {
    limits
        .iter()
        .flat_map(|l| {
            l.asset
                .iter()
                .flat_map(|a| a.ids().iter().map(|i| i.chain_id))
                .filter(|c| l.scope.chain_ids.as_ref().is_none_or(|s| s.contains(c)))
        })
        .collect()
}

/// The chains of `can` (`None`: any) that `counted` lacks, in words, or `None` if none.
fn missing_chains(can: Option<BTreeSet<u64>>, counted: &BTreeSet<u64>) -> Option<String> {
    match can {
        None if counted.is_empty() => Some("any chain".into()),
        None => {
            let v: Vec<u64> = counted.iter().copied().collect();
            Some(format!(
                "any chain but {}",
                v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ))
        }
        Some(c) => {
            let v: Vec<u64> = c.difference(counted).copied().collect();
            (!v.is_empty()).then(|| chain_words(&v))
        }
    }
}

fn chain_words(v: &[u64]) -> String {
    let list: Vec<String> = v.iter().map(u64::to_string).collect();
    if list.len() == 1 {
        format!("chain {}", list.join(""))
    } else {
        format!("chains {}", list.join(", "))
    }
}

/// Chains a rule can match requests of `kinds` on (`None`: any chain): its `chain_ids` for
/// transactions, `domain_chain_ids` for typed data, both for Safe transactions.
pub(crate) fn rule_chains(m: &Matchers, kinds: KindSet) -> Option<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    for k in kinds.kinds() {
        let c = if KindSet::TX.contains(k) {
            m.chain_ids.clone()
        } else if k == Kind::Eip712SafeTx {
            match (&m.chain_ids, &m.domain_chain_ids) {
                (Some(a), Some(b)) => Some(a.intersection(b).copied().collect()),
                (Some(a), None) | (None, Some(a)) => Some(a.clone()),
                (None, None) => None,
            }
        } else if KindSet::TYPED.contains(k) {
            m.domain_chain_ids.clone()
        } else {
            continue;
        };
        out.extend(c?);
    }
    Some(out)
}

/// Whether a native limit counts every transaction of `kinds` on `chain` that the rule
/// matches: it counts amounts of the native coin of `chain`, and its scope is no narrower
/// than the rule's. Conservative: `false` when unsure.
fn fee_covered(policy: &Policy, m: &Matchers, kinds: KindSet, chain: u64) -> bool {
    let rule_scope = Scope {
        kinds,
        keys: m.keys.clone(),
        clients: m.clients.clone(),
        groups: m.groups.clone(),
        roles: m.roles.clone(),
        chain_ids: Some(BTreeSet::from([chain])),
        to: None,
    };
    policy.limits.iter().any(|l| {
        counts_amounts(l)
            && l.asset
                .as_ref()
                .is_some_and(|a| a.is_native() && a.on_chain(chain).is_some())
            && scope_covers(&l.scope, &rule_scope)
    })
}

fn addr_sets(m: &Matchers) -> impl Iterator<Item = &AddrSet> {
    [
        &m.to,
        &m.not_to,
        &m.contracts,
        &m.counterparty,
        &m.verifying_contracts,
        &m.permit_spenders,
    ]
    .into_iter()
    .flatten()
}

/// Why a rule's matchers can never all hold, if they obviously cannot.
fn never_matches(m: &Matchers) -> Option<String> {
    if m.effective_kinds().is_empty() {
        let parts: Vec<String> = m
            .present()
            .filter(|f| f.applies_to() != KindSet::ALL)
            .map(|f| format!("`{}` applies to {}", f.name(), f.applies_to()))
            .collect();
        return Some(format!(
            "`kinds` is {} but {}; no kind satisfies all",
            m.kinds,
            parts.join(", ")
        ));
    }
    let to_constraint = to_constraint(m);
    if let (Some(to), Some(not_to)) = (&to_constraint, &m.not_to)
        && to.is_subset(&not_to.set)
    {
        return Some("every address in `to`/`contracts` is also in `not_to`".into());
    }
    if let Some(to) = &to_constraint
        && to.is_empty()
    {
        return Some("`to` and `contracts` have no address in common".into());
    }
    if let (Some(c), Some(g)) = (&m.clients, &m.groups)
        && c.is_disjoint(&g.members)
    {
        return Some("no client in `clients` is a member of `groups`".into());
    }
    if let (Some(lo), Some(hi)) = (m.value_min, m.value_max)
        && lo > hi
    {
        return Some("`value_min` is larger than `value_max`".into());
    }
    if let Some(b) = &m.erc20_amount {
        if let (Some(lo), Some(hi)) = (b.min, b.max)
            && lo > hi
        {
            return Some("`erc20_amount_min` is larger than `erc20_amount_max`".into());
        }
        if let (Some(tok), Some(c)) = (b.token, to_constraint.as_ref())
            && tok.contract.is_some_and(|t| !c.contains(&t))
        {
            return Some(format!(
                "the ERC-20 amount is written in {} but `to`/`contracts` do not include its contract",
                b.format.symbol
            ));
        }
    }
    if let (Some(pt), Some(_)) = (&m.primary_types, &m.permit_spenders)
        && !pt.iter().any(|t| {
            [
                "Permit",
                "PermitSingle",
                "PermitBatch",
                "PermitTransferFrom",
                "PermitBatchTransferFrom",
            ]
            .contains(&t.as_str())
        })
    {
        return Some(
            "`permit_spenders` needs a permit, and `primary_types` names no permit type (`Permit`, `PermitSingle`, `PermitBatch`, `PermitTransferFrom`, `PermitBatchTransferFrom`)".into(),
        );
    }
    if let (Some(pre), Some(max)) = (&m.message_prefixes, m.message_max_bytes)
        && pre
            .iter()
            .all(|p| u64::try_from(p.len()).is_ok_and(|l| l > max))
    {
        return Some(
            "every prefix in `message_prefixes` is longer than `message_max_bytes`".into(),
        );
    }
    None
}

/// Addresses the destination must be in, from `to` and `contracts` together.
fn to_constraint(m: &Matchers) -> Option<BTreeSet<Address>> {
    match (&m.to, &m.contracts) {
        (Some(a), Some(b)) => Some(a.set.intersection(&b.set).copied().collect()),
        (Some(a), None) | (None, Some(a)) => Some(a.set.clone()),
        (None, None) => None,
    }
}

/// Client ids a request's client must be one of, from `clients` and `groups` together.
fn client_constraint(
    clients: Option<&BTreeSet<String>>,
    groups: Option<&BTreeSet<String>>,
) -> Option<BTreeSet<String>> {
    match (clients, groups) {
        (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
        (Some(a), None) | (None, Some(a)) => Some(a.clone()),
        (None, None) => None,
    }
}

fn subset<T: Ord>(s: Option<&BTreeSet<T>>, g: Option<&BTreeSet<T>>) -> bool {
    match (g, s) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(g), Some(s)) => s.is_subset(g),
    }
}

fn le<T: Ord>(s: Option<T>, g: Option<T>) -> bool {
    match (g, s) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(g), Some(s)) => s <= g,
    }
}

fn ge<T: Ord>(s: Option<T>, g: Option<T>) -> bool {
    match (g, s) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(g), Some(s)) => s >= g,
    }
}

/// Whether every request that `s` matches (yes) is also matched by `g`. Conservative: may
/// say `false` when it is true, never `true` when it is false.
pub(crate) fn covers(g: &Matchers, s: &Matchers) -> bool {
    if !s.effective_kinds().is_subset(g.effective_kinds()) {
        return false;
    }
    let s_clients = client_constraint(s.clients.as_ref(), s.groups.as_ref().map(|x| &x.members));
    let s_to = to_constraint(s);
    fn set(x: &Option<AddrSet>) -> Option<&BTreeSet<Address>> {
        x.as_ref().map(|a| &a.set)
    }
    for f in g.present() {
        let ok = match f {
            Field::Kinds => true,
            Field::Keys => subset(s.keys.as_ref(), g.keys.as_ref()),
            Field::Clients => subset(s_clients.as_ref(), g.clients.as_ref()),
            Field::Groups => subset(s_clients.as_ref(), g.groups.as_ref().map(|x| &x.members)),
            Field::Roles => subset(s.roles.as_ref(), g.roles.as_ref()),
            Field::ChainIds => subset(s.chain_ids.as_ref(), g.chain_ids.as_ref()),
            Field::To => subset(s_to.as_ref(), set(&g.to)),
            Field::Contracts => subset(s_to.as_ref(), set(&g.contracts)),
            Field::NotTo => match (&g.not_to, &s.not_to, &s_to) {
                (Some(gn), Some(sn), _) if gn.set.is_subset(&sn.set) => true,
                (Some(gn), _, Some(t)) => t.is_disjoint(&gn.set),
                _ => false,
            },
            Field::Selectors => subset(s.selectors.as_ref(), g.selectors.as_ref()),
            Field::Counterparty => subset(set(&s.counterparty), set(&g.counterparty)),
            Field::Erc20Amount => match (&g.erc20_amount, &s.erc20_amount) {
                (Some(gb), Some(sb)) => {
                    (gb.token.is_none() || gb.token == sb.token)
                        && le(sb.max, gb.max)
                        && ge(sb.min, gb.min)
                }
                _ => false,
            },
            Field::ValueMin => ge(s.value_min, g.value_min),
            Field::ValueMax => le(s.value_max, g.value_max),
            Field::GasLimitMax => le(s.gas_limit_max, g.gas_limit_max),
            Field::MaxFeeMax => le(s.max_fee_max, g.max_fee_max),
            Field::PrimaryTypes => subset(s.primary_types.as_ref(), g.primary_types.as_ref()),
            Field::DomainNames => subset(s.domain_names.as_ref(), g.domain_names.as_ref()),
            Field::VerifyingContracts => {
                subset(set(&s.verifying_contracts), set(&g.verifying_contracts))
            }
            Field::DomainChainIds => {
                subset(s.domain_chain_ids.as_ref(), g.domain_chain_ids.as_ref())
            }
            Field::PermitSpenders => subset(set(&s.permit_spenders), set(&g.permit_spenders)),
            Field::MessageMaxBytes => le(s.message_max_bytes, g.message_max_bytes),
            Field::MessagePrefixes => match (&g.message_prefixes, &s.message_prefixes) {
                (Some(gp), Some(sp)) => sp
                    .iter()
                    .all(|x| gp.iter().any(|p| x.starts_with(p.as_str()))),
                _ => false,
            },
            Field::Registered => match (&g.registered, &s.registered) {
                (Some(gr), Some(sr)) => {
                    sr.is_subset(gr)
                        && subset(s.domain_chain_ids.as_ref(), g.domain_chain_ids.as_ref())
                        && (s.domain_chain_ids.is_none() || g.domain_chain_ids.is_some())
                }
                _ => false,
            },
            Field::Hours => g.hours == s.hours,
            // Same function, and every constraint of `g` is also one of `s`.
            Field::Args => match (&g.args, &s.args) {
                (Some(ga), Some(sa)) => {
                    ga.canonical == sa.canonical
                        && ga.constraints.iter().all(|c| sa.constraints.contains(c))
                }
                _ => false,
            },
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether every request in limit scope `s` is also in scope `g`.
pub(crate) fn scope_covers(g: &Scope, s: &Scope) -> bool {
    let s_clients = client_constraint(s.clients.as_ref(), s.groups.as_ref().map(|x| &x.members));
    s.kinds.is_subset(g.kinds)
        && subset(s.keys.as_ref(), g.keys.as_ref())
        && subset(s_clients.as_ref(), g.clients.as_ref())
        && subset(s_clients.as_ref(), g.groups.as_ref().map(|x| &x.members))
        && subset(s.roles.as_ref(), g.roles.as_ref())
        && subset(s.chain_ids.as_ref(), g.chain_ids.as_ref())
        && subset(s.to.as_ref().map(|a| &a.set), g.to.as_ref().map(|a| &a.set))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn warnings(body: &str) -> Vec<String> {
        let src = format!("version = 1\nserial = 1\n{body}");
        let p = Policy::parse("p.toml", &src).unwrap_or_else(|e| panic!("{e}"));
        check(&p).iter().map(ToString::to_string).collect()
    }

    fn one(body: &str, needle: &str) {
        let w = warnings(body);
        assert!(
            w.iter().any(|x| x.contains(needle)),
            "no `{needle}` in {w:#?}"
        );
    }

    const A: &str = "0x00000000000000000000000000000000000000aa";
    const B: &str = "0x00000000000000000000000000000000000000bb";

    #[test]
    fn rules_that_can_never_match() {
        one(
            "[[rule]]\nid = \"r\"\neffect = \"allow\"\nclients = [\"c\"]\nkinds = [\"eip191_message\"]\nvalue_max = \"1 ether\"\n",
            "line 4: rule `r`: can never match: `kinds` is [eip191_message] but `value_max` applies to [native_transfer",
        );
        one(
            "[[rule]]\nid = \"r\"\neffect = \"allow\"\nclients = [\"c\"]\nerc20_counterparty = [\"0x00000000000000000000000000000000000000aa\"]\nmessage_max_bytes = 100\n",
            "can never match",
        );
        one(
            &format!(
                "[[rule]]\nid = \"r\"\neffect = \"deny\"\nto = [\"{A}\"]\nnot_to = [\"{A}\", \"{B}\"]\n"
            ),
            "every address in `to`/`contracts` is also in `not_to`",
        );
        one(
            &format!(
                "[[rule]]\nid = \"r\"\neffect = \"deny\"\nto = [\"{A}\"]\ncontracts = [\"{B}\"]\n"
            ),
            "`to` and `contracts` have no address in common",
        );
        one(
            "[[rule]]\nid = \"r\"\neffect = \"deny\"\nvalue_min = \"2 ether\"\nvalue_max = \"1 ether\"\n",
            "`value_min` is larger than `value_max`",
        );
        one(
            "[groups]\ng = [\"a\"]\n[[rule]]\nid = \"r\"\neffect = \"deny\"\nclients = [\"b\"]\ngroups = [\"g\"]\n",
            "no client in `clients` is a member of `groups`",
        );
        one(
            &format!(
                "[[rule]]\nid = \"r\"\neffect = \"deny\"\nprimary_types = [\"Order\"]\npermit_spenders = [\"{A}\"]\n"
            ),
            "`primary_types` names no permit type",
        );
        one(
            &format!(
                "[[asset]]\nchain_id = 1\ncontract = \"{A}\"\nsymbol = \"TOK\"\ndecimals = 6\n[[rule]]\nid = \"r\"\neffect = \"deny\"\ncontracts = [\"{B}\"]\nerc20_amount_max = \"5 TOK\"\n"
            ),
            "written in TOK but `to`/`contracts` do not include its contract",
        );
    }

    fn none(body: &str, needle: &str) {
        let w = warnings(body);
        assert!(
            !w.iter().any(|x| x.contains(needle)),
            "`{needle}` in {w:#?}"
        );
    }

    const ETH_DAILY: &str = "[[limit]]\nid = \"eth\"\nchain_ids = [1]\nasset = \"native\"\nwindow = \"24h\"\nmax_amount = \"1 ether\"\n";

    #[test]
    fn transactions_without_a_fee_cap_need_a_native_limit_of_no_narrower_scope() {
        let rule = "[[rule]]\nid = \"pay\"\neffect = \"allow\"\nclients = [\"c\"]\nchain_ids = [1]\nkinds = [\"erc20_transfer\"]\n";
        one(
            rule,
            "line 4: rule `pay`: can sign transactions without a fee cap",
        );
        none(&format!("{rule}{ETH_DAILY}"), "fee cap");
        // Both caps bound the fee.
        none(
            &format!("{rule}gas_limit_max = 100000\nmax_fee_per_gas_max = \"100 gwei\"\n"),
            "fee cap",
        );
        one(
            &format!("{rule}gas_limit_max = 100000\n"),
            "without a fee cap",
        );
        // A limit narrower than the rule (one key, other kinds, a count only) does not cover it.
        one(&format!("{rule}{ETH_DAILY}keys = [\"k\"]\n"), "fee cap");
        one(
            &format!("{rule}{ETH_DAILY}kinds = [\"native_transfer\"]\n"),
            "fee cap",
        );
        one(
            &format!("{rule}[[limit]]\nid = \"n\"\nwindow = \"1h\"\nmax_count = 5\n"),
            "fee cap",
        );
        // A rule on any chain cannot be covered by chain-bound limits.
        one(
            &format!("{}{ETH_DAILY}", rule.replace("chain_ids = [1]\n", "")),
            "(any chain)",
        );
        none(
            "[[rule]]\nid = \"m\"\neffect = \"allow\"\nclients = [\"c\"]\nkinds = [\"eip712_permit\"]\n",
            "fee cap",
        );
    }

    #[test]
    fn rules_on_chains_no_limit_of_their_asset_counts() {
        let caps = "gas_limit_max = 100000\nmax_fee_per_gas_max = \"100 gwei\"\n";
        let rule = format!(
            "[[rule]]\nid = \"eth-out\"\neffect = \"allow\"\nclients = [\"c\"]\nkinds = [\"native_transfer\"]\n{caps}"
        );
        one(
            &format!("{rule}{ETH_DAILY}"),
            "rule `eth-out`: allows transactions on chains no native limit counts (any chain but 1): add `chain_ids` to the rule, or the chains to a limit",
        );
        one(
            &format!("{rule}chain_ids = [1, 10]\n{ETH_DAILY}"),
            "no native limit counts (chain 10)",
        );
        none(
            &format!("{rule}chain_ids = [1]\n{ETH_DAILY}"),
            "no native limit",
        );
        none(&rule, "no native limit");
        // A limit on several chains counts each.
        none(
            &format!(
                "{rule}chain_ids = [1, 10]\n{}",
                ETH_DAILY.replace("chain_ids = [1]", "chain_ids = [1, 10]")
            ),
            "no native limit",
        );
        // Tokens: a registered symbol on a chain no limit of it counts.
        let assets = format!(
            "[[asset]]\nchain_id = 1\ncontract = \"{A}\"\nsymbol = \"USDC\"\ndecimals = 6\n[[asset]]\nchain_id = 137\ncontract = \"{B}\"\nsymbol = \"USDC\"\ndecimals = 6\n"
        );
        let limit =
            "[[limit]]\nid = \"u\"\nchain_ids = [1]\nasset = \"USDC\"\nper_tx_max = \"5 USDC\"\n";
        let permits = "[[rule]]\nid = \"p\"\neffect = \"allow\"\nclients = [\"c\"]\nkinds = [\"eip712_permit\"]\n";
        one(
            &format!("{assets}{permits}{limit}"),
            "rule `p`: can move USDC on chains no USDC limit counts (chain 137)",
        );
        none(
            &format!("{assets}{permits}domain_chain_ids = [1]\n{limit}"),
            "no USDC limit",
        );
        none(
            &format!(
                "{assets}{permits}{}",
                limit.replace("chain_ids = [1]", "chain_ids = [1, 137]")
            ),
            "no USDC limit",
        );
    }

    #[test]
    fn broad_and_blind_message_rules() {
        let rule = "[[rule]]\nid = \"m\"\neffect = \"allow\"\nclients = [\"c\"]\nkinds = [\"eip191_message\"]\n";
        one(
            rule,
            "rule `m`: broad message allow rule: any text message can be signed",
        );
        none(
            &format!(
                "{rule}message_prefixes = [\"example.com wants you to sign in with your Ethereum account:\"]\n"
            ),
            "broad message",
        );
        none(&format!("{rule}message_max_bytes = 64\n"), "broad message");
        // A rule without `kinds` covers text messages too.
        one(
            "[[rule]]\nid = \"any\"\neffect = \"require_approval\"\nkeys = [\"k\"]\napprovals = [{ group = \"g\", min = 1 }]\nttl = \"1h\"\n[groups]\ng = [\"a\", \"b\"]\n[approvers]\na = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\nb = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n",
            "broad message allow rule",
        );
        one(
            "[[rule]]\nid = \"b\"\neffect = \"allow\"\nclients = [\"c\"]\nkinds = [\"eip191_binary\"]\n",
            "a 32-byte message can be the hash of a transaction or typed data; this is blind signing",
        );
        one(
            &format!("{rule}message_prefixes = [\"abcdef\"]\nmessage_max_bytes = 3\n"),
            "can never match: every prefix in `message_prefixes` is longer than `message_max_bytes`",
        );
        one(
            "[[rule]]\nid = \"r\"\neffect = \"deny\"\nkinds = [\"eip191_binary\"]\nmessage_prefixes = [\"x\"]\n",
            "can never match",
        );
    }

    #[test]
    fn shadowed_allow_rules() {
        let body = format!(
            r#"
[address_books.b]
addresses = ["{A}", "{B}"]
[[rule]]
id = "narrow"
effect = "allow"
clients = ["c"]
keys = ["hot"]
kinds = ["native_transfer"]
to = ["{A}"]
value_max = "1 ether"
[[rule]]
id = "broad-deny"
effect = "deny"
keys = ["hot", "cold"]
to = ["book:b"]
value_max = "5 ether"
"#
        );
        one(
            &body,
            "rule `narrow`: is shadowed by deny rule `broad-deny`",
        );
        // A deny rule that is narrower in any matcher does not shadow.
        let w = warnings(&body.replace("value_max = \"5 ether\"", "value_max = \"0.5 ether\""));
        assert!(!w.iter().any(|x| x.contains("shadowed")), "{w:#?}");
        let w = warnings(&body.replace("keys = [\"hot\", \"cold\"]", "keys = [\"cold\"]"));
        assert!(!w.iter().any(|x| x.contains("shadowed")), "{w:#?}");
        // Approval rules covering an allow rule make it never allow on its own.
        one(
            "[groups]\ng = [\"a\", \"b\"]\n[approvers]\na = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\nb = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n[[rule]]\nid = \"x\"\neffect = \"allow\"\nclients = [\"c\"]\nkinds = [\"eip191_message\"]\n[[rule]]\nid = \"y\"\neffect = \"require_approval\"\napprovals = [{ group = \"g\", min = 1 }]\nttl = \"1h\"\n",
            "rule `x`: never allows on its own: rule `y` requires approval",
        );
    }

    #[test]
    fn risky_or_unused_things() {
        one(
            "[[rule]]\nid = \"r\"\neffect = \"allow\"\nclients = [\"c\"]\nkinds = [\"raw_digest\"]\n",
            "allows blind signing (raw_digest) with every key",
        );
        one(
            "[[rule]]\nid = \"r\"\neffect = \"allow\"\nkeys = [\"k\"]\n",
            "allows every authenticated client",
        );
        one(
            "[[rule]]\nid = \"r\"\neffect = \"allow\"\nclients = [\"c\"]\nerc20_amount_max = 5\n",
            "compares raw amounts",
        );
        one(
            &format!("[address_books.unused]\naddresses = [\"{A}\"]\n"),
            "address book `unused`: is never used",
        );
        one("[groups]\ng = [\"a\"]\n", "group `g`: is never used");
        one(
            "[approvers]\nz = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n",
            "approver `z`: is in no group",
        );
        one(
            "[groups]\ng = [\"a\", \"b\"]\n[approvers]\na = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\nb = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n[[rule]]\nid = \"r\"\neffect = \"require_approval\"\napprovals = [{ group = \"g\", min = 2 }]\nttl = \"1h\"\n",
            "needs all 2 members of `g`",
        );
        one(
            "[[limit]]\nid = \"l\"\nchain_ids = [1]\nkinds = [\"eip191_message\"]\nasset = \"native\"\nper_tx_max = 5\n",
            "limit `l`: can never apply",
        );
        one(
            "[[limit]]\nid = \"l\"\nchain_ids = [1]\nasset = \"native\"\nper_tx_max = 5\nwindow = \"1h\"\nmax_amount = 4\n",
            "never decides",
        );
    }
}
