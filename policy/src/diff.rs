//! `signerctl policy diff`: what changes between two policies, and whether any change
//! loosens the policy (could let through a request the old policy refused, or with fewer
//! approvals or a larger budget).
//!
//! The comparison is conservative: when it cannot prove a change only tightens, it reports
//! the change as loosening. It compares compiled policies, so a change to an address book or
//! group is judged through the rules that use it. This module must never under-report.

use std::collections::BTreeSet;
use std::fmt;

use crate::Policy;
use crate::check::{covers, scope_covers};
use crate::limit::{Limit, RateLimit};
use crate::rule::{Effect, Field, Matchers, Rule};

/// One difference between two policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What changed, e.g. ``rule `payouts` ``.
    pub subject: String,
    /// How it changed.
    pub description: String,
    /// Whether this change may let through something the old policy refused.
    pub loosens: bool,
}

/// Every difference found by [`diff`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiffReport {
    /// The changes, rules first, in the new policy's order.
    pub changes: Vec<Change>,
    /// The old policy's serial.
    pub old_serial: u64,
    /// The new policy's serial.
    pub new_serial: u64,
}

impl DiffReport {
    /// Whether the new serial is higher than the old one, as the daemon requires to load it.
    pub fn serial_increases(&self) -> bool {
        self.new_serial > self.old_serial
    }

    /// Whether any change loosens the policy.
    pub fn loosens(&self) -> bool {
        self.changes.iter().any(|c| c.loosens)
    }
}

impl fmt::Display for DiffReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return write!(f, "no changes");
        }
        for c in &self.changes {
            let tag = if c.loosens { "LOOSENS" } else { "       " };
            writeln!(f, "{tag} {}: {}", c.subject, c.description)?;
        }
        if self.loosens() {
            write!(f, "this change loosens the policy")
        } else {
            write!(f, "this change does not loosen the policy")
        }
    }
}

/// Compares `old` with `new`.
pub fn diff(old: &Policy, new: &Policy) -> DiffReport {
    let mut out = Vec::new();
    let mut push = |subject: String, description: String, loosens: bool| {
        out.push(Change {
            subject,
            description,
            loosens,
        });
    };
    if new.serial <= old.serial {
        push(
            "serial".into(),
            format!(
                "{} → {} does not increase; the daemon refuses to load it",
                old.serial, new.serial
            ),
            false,
        );
    }
    // Who may sign the next policy: any change to it needs the full quorum.
    if new.governance != old.governance {
        let show = |g: Option<&crate::Governance>| g.map_or("none".to_owned(), |g| g.to_string());
        push(
            "governance".into(),
            format!(
                "{} → {}",
                show(old.governance.as_ref()),
                show(new.governance.as_ref())
            ),
            true,
        );
    }

    for r in &new.rules {
        let subject = format!("rule `{}`", r.id);
        match old.rules.iter().find(|o| o.id == r.id) {
            None => push(
                subject,
                format!("added ({})", r.effect),
                r.effect != Effect::Deny,
            ),
            Some(o) => {
                for (d, l) in rule_changes(o, r) {
                    push(subject.clone(), d, l);
                }
            }
        }
    }
    for o in &old.rules {
        if !new.rules.iter().any(|r| r.id == o.id) {
            push(
                format!("rule `{}`", o.id),
                format!("removed ({})", o.effect),
                o.effect != Effect::Allow,
            );
        }
    }

    for l in &new.limits {
        let subject = format!("limit `{}`", l.id);
        match old.limits.iter().find(|o| o.id == l.id) {
            None => push(subject, "added".into(), false),
            Some(o) => {
                for (d, x) in limit_changes(o, l) {
                    push(subject.clone(), d, x);
                }
            }
        }
    }
    for o in &old.limits {
        if !new.limits.iter().any(|l| l.id == o.id) {
            push(format!("limit `{}`", o.id), "removed".into(), true);
        }
    }
    for r in &new.rate_limits {
        let subject = format!("rate limit `{}`", r.id);
        match old.rate_limits.iter().find(|o| o.id == r.id) {
            None => push(subject, "added".into(), false),
            Some(o) => {
                for (d, x) in rate_changes(o, r) {
                    push(subject.clone(), d, x);
                }
            }
        }
    }
    for o in &old.rate_limits {
        if !new.rate_limits.iter().any(|r| r.id == o.id) {
            push(format!("rate limit `{}`", o.id), "removed".into(), true);
        }
    }

    // Groups: membership decides who may approve. A new member is one more person whose
    // approval counts, so adding members to an approver group loosens.
    let approver_groups: BTreeSet<&str> = new
        .rules
        .iter()
        .filter_map(|r| r.approval.as_ref())
        .flat_map(|a| a.groups.iter().map(|(g, _)| g.as_str()))
        .collect();
    for (name, members) in &new.groups {
        let subject = format!("group `{name}`");
        match old.groups.get(name) {
            None => push(
                subject,
                "added".into(),
                approver_groups.contains(name.as_str()),
            ),
            Some(before) if before != members => {
                let added: Vec<&str> = members.difference(before).map(String::as_str).collect();
                let removed: Vec<&str> = before.difference(members).map(String::as_str).collect();
                push(
                    subject,
                    format!(
                        "members added [{}], removed [{}]",
                        added.join(", "),
                        removed.join(", ")
                    ),
                    !added.is_empty() && approver_groups.contains(name.as_str()),
                );
            }
            Some(_) => {}
        }
    }
    for name in old.groups.keys() {
        if !new.groups.contains_key(name) {
            push(format!("group `{name}`"), "removed".into(), false);
        }
    }
    // Approver keys: whoever holds a new or replaced key can approve in that person's name,
    // so both loosen; a key that is gone can no longer approve.
    for (id, key) in &new.approvers {
        let subject = format!("approver `{id}`");
        match old.approvers.get(id) {
            None => push(subject, "key added".into(), true),
            Some(before) if before != key => push(subject, "key replaced".into(), true),
            Some(_) => {}
        }
    }
    for id in old.approvers.keys() {
        if !new.approvers.contains_key(id) {
            push(format!("approver `{id}`"), "key removed".into(), false);
        }
    }
    // Books and assets are judged through the rules and limits that use them; list them so
    // a reviewer sees why a rule changed.
    for (name, addrs) in &new.books {
        match old.books.get(name) {
            None => push(format!("address book `{name}`"), "added".into(), false),
            Some(before) if before != addrs => {
                let list = |a: &BTreeSet<alloy_primitives::Address>,
                            b: &BTreeSet<alloy_primitives::Address>| {
                    let v: Vec<String> = a.difference(b).map(ToString::to_string).collect();
                    if v.is_empty() {
                        "none".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                push(
                    format!("address book `{name}`"),
                    format!(
                        "added {}; removed {}",
                        list(addrs, before),
                        list(before, addrs)
                    ),
                    false,
                );
            }
            Some(_) => {}
        }
    }
    for name in old.books.keys() {
        if !new.books.contains_key(name) {
            push(format!("address book `{name}`"), "removed".into(), false);
        }
    }
    // A shorter or removed cooling-off period makes new entries usable sooner; a changed label
    // changes what approvers are shown about a destination. Both need the full quorum.
    for (name, meta) in &new.book_meta {
        let Some(before) = old.book_meta.get(name) else {
            continue;
        };
        let (was, now) = (
            before.cooling_off.map(|d| d.0),
            meta.cooling_off.map(|d| d.0),
        );
        if was != now {
            let show = |d: Option<u64>| d.map_or_else(|| "none".to_owned(), |s| format!("{s} s"));
            let loosens = match (was, now) {
                (Some(_), None) => true,
                (Some(w), Some(n)) => n < w,
                _ => false,
            };
            push(
                format!("address book `{name}`"),
                format!("cooling_off {} -> {}", show(was), show(now)),
                loosens,
            );
        }
        let relabelled: Vec<String> = meta
            .labels
            .iter()
            .filter(|(addr, label)| {
                before
                    .labels
                    .get(*addr)
                    .is_some_and(|old_label| old_label != *label)
            })
            .map(|(addr, label)| format!("{addr} now labelled {label:?}"))
            .collect();
        if !relabelled.is_empty() {
            push(
                format!("address book `{name}`"),
                format!("labels changed: {}", relabelled.join(", ")),
                true,
            );
        }
    }
    for a in &new.assets {
        match old.assets.iter().find(|o| o.id == a.id) {
            None => push(
                format!("asset {}", a.id),
                format!("added ({})", a.symbol),
                false,
            ),
            Some(o) if o != a => push(
                format!("asset {}", a.id),
                format!(
                    "{} ({} decimals) → {} ({} decimals)",
                    o.symbol, o.decimals, a.symbol, a.decimals
                ),
                false,
            ),
            Some(_) => {}
        }
    }
    DiffReport {
        changes: out,
        old_serial: old.serial,
        new_serial: new.serial,
    }
}

fn changed_fields(o: &Matchers, n: &Matchers) -> Vec<&'static str> {
    let mut fields: Vec<Field> = o.present().chain(n.present()).collect();
    fields.push(Field::Kinds);
    let mut names = Vec::new();
    for f in fields {
        let differs = match f {
            Field::Kinds => o.kinds != n.kinds,
            Field::Keys => o.keys != n.keys,
            Field::Clients => o.clients != n.clients,
            Field::Groups => o.groups != n.groups,
            Field::Roles => o.roles != n.roles,
            Field::ChainIds => o.chain_ids != n.chain_ids,
            Field::To => o.to.as_ref().map(|a| &a.set) != n.to.as_ref().map(|a| &a.set),
            Field::NotTo => o.not_to.as_ref().map(|a| &a.set) != n.not_to.as_ref().map(|a| &a.set),
            Field::Contracts => {
                o.contracts.as_ref().map(|a| &a.set) != n.contracts.as_ref().map(|a| &a.set)
            }
            Field::Selectors => o.selectors != n.selectors,
            Field::Counterparty => {
                o.counterparty.as_ref().map(|a| &a.set) != n.counterparty.as_ref().map(|a| &a.set)
            }
            Field::Erc20Amount => {
                let k = |m: &Matchers| m.erc20_amount.as_ref().map(|b| (b.token, b.min, b.max));
                k(o) != k(n)
            }
            Field::ValueMin => o.value_min != n.value_min,
            Field::ValueMax => o.value_max != n.value_max,
            Field::GasLimitMax => o.gas_limit_max != n.gas_limit_max,
            Field::MaxFeeMax => o.max_fee_max != n.max_fee_max,
            Field::PrimaryTypes => o.primary_types != n.primary_types,
            Field::DomainNames => o.domain_names != n.domain_names,
            Field::VerifyingContracts => {
                o.verifying_contracts.as_ref().map(|a| &a.set)
                    != n.verifying_contracts.as_ref().map(|a| &a.set)
            }
            Field::DomainChainIds => o.domain_chain_ids != n.domain_chain_ids,
            Field::PermitSpenders => {
                o.permit_spenders.as_ref().map(|a| &a.set)
                    != n.permit_spenders.as_ref().map(|a| &a.set)
            }
            Field::MessageMaxBytes => o.message_max_bytes != n.message_max_bytes,
            Field::MessagePrefixes => o.message_prefixes != n.message_prefixes,
            Field::Registered => o.registered.as_deref() != n.registered.as_deref(),
            Field::Hours => o.hours != n.hours,
            Field::Args => o.args != n.args,
        };
        if differs && !names.contains(&f.name()) {
            names.push(f.name());
        }
    }
    names
}

fn rule_changes(o: &Rule, n: &Rule) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let fields = changed_fields(&o.m, &n.m);
    let matchers = || format!("matchers changed: {}", fields.join(", "));
    if o.effect != n.effect {
        let loosens = match (o.effect, n.effect) {
            // The allow is gone and a deny only refuses more.
            (Effect::Allow, Effect::Deny) => false,
            // Requests the new rule matches that the old did not may now be approved.
            (Effect::Allow, Effect::RequireApproval) => !covers(&o.m, &n.m),
            // Requests that needed approval and that the deny does not cover may now be
            // allowed outright by other rules.
            (Effect::RequireApproval, Effect::Deny) => !covers(&n.m, &o.m),
            // A deny or an approval requirement is gone.
            _ => true,
        };
        let mut d = format!("effect {} → {}", o.effect, n.effect);
        if !fields.is_empty() {
            d = format!("{d}; {}", matchers());
        }
        out.push((d, loosens));
    } else if !fields.is_empty() {
        let loosens = match n.effect {
            // A wider allow rule allows more.
            Effect::Allow => !covers(&o.m, &n.m),
            // A narrower deny rule denies less.
            Effect::Deny => !covers(&n.m, &o.m),
            // Narrower: requests that needed approval may now be allowed outright; wider:
            // requests that were denied may now be approved. Either way it may loosen.
            Effect::RequireApproval => true,
        };
        out.push((matchers(), loosens));
    }
    if let (Some(a), Some(b)) = (&o.approval, &n.approval) {
        for (g, min) in &a.groups {
            match b.groups.iter().find(|(h, _)| h == g) {
                None => out.push((format!("approval by `{g}` no longer required"), true)),
                Some((_, m)) if m < min => {
                    out.push((
                        format!("approvals by `{g}` lowered from {min} to {m}"),
                        true,
                    ));
                }
                Some((_, m)) if m > min => {
                    out.push((
                        format!("approvals by `{g}` raised from {min} to {m}"),
                        false,
                    ));
                }
                Some(_) => {}
            }
        }
        for (g, m) in &b.groups {
            if !a.groups.iter().any(|(h, _)| h == g) {
                out.push((
                    format!(
                        "now also needs {} by `{g}`",
                        crate::counted(u64::from(*m), "approval", "approvals")
                    ),
                    false,
                ));
            }
        }
        if b.ttl != a.ttl {
            out.push((format!("approval ttl {} → {}", a.ttl, b.ttl), b.ttl > a.ttl));
        }
        if a.veto != b.veto {
            out.push((format!("veto {} → {}", a.veto, b.veto), a.veto && !b.veto));
        }
    }
    if o.description != n.description && out.is_empty() {
        out.push(("description changed".into(), false));
    }
    out
}

fn opt_loosens<T: Ord>(old: Option<T>, new: Option<T>) -> bool {
    match (old, new) {
        (Some(_), None) => true,
        (Some(o), Some(n)) => n > o,
        _ => false,
    }
}

fn limit_changes(o: &Limit, n: &Limit) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let fmt = |v: Option<alloy_primitives::U256>, l: &Limit| {
        v.map_or_else(|| "none".to_owned(), |x| l.format.format(x))
    };
    if o.asset != n.asset {
        out.push(("asset changed".to_owned(), true));
    }
    if o.per_tx_max != n.per_tx_max {
        out.push((
            format!(
                "per_tx_max {} → {}",
                fmt(o.per_tx_max, o),
                fmt(n.per_tx_max, n)
            ),
            opt_loosens(o.per_tx_max, n.per_tx_max),
        ));
    }
    if o.max_amount != n.max_amount {
        out.push((
            format!(
                "max_amount {} → {}",
                fmt(o.max_amount, o),
                fmt(n.max_amount, n)
            ),
            opt_loosens(o.max_amount, n.max_amount),
        ));
    }
    if o.max_count != n.max_count {
        let s = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |x| x.to_string());
        out.push((
            format!("max_count {} → {}", s(o.max_count), s(n.max_count)),
            opt_loosens(o.max_count, n.max_count),
        ));
    }
    if o.window != n.window {
        let s = |v: Option<crate::time::Duration>| {
            v.map_or_else(|| "none".to_owned(), |x| x.to_string())
        };
        // A shorter window forgets usage sooner.
        let shorter = match (o.window, n.window) {
            (Some(a), Some(b)) => b < a,
            (Some(_), None) => true,
            _ => false,
        };
        out.push((format!("window {} → {}", s(o.window), s(n.window)), shorter));
    }
    if o.key_by != n.key_by {
        // More parts: finer buckets, each with the full budget.
        out.push((
            format!("key_by {} → {}", o.key_by, n.key_by),
            !n.key_by.is_subset(o.key_by),
        ));
    }
    if o.scope != n.scope {
        out.push((
            "scope changed".to_owned(),
            !scope_covers(&n.scope, &o.scope),
        ));
    }
    out
}

fn rate_changes(o: &RateLimit, n: &RateLimit) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    if o.max_requests != n.max_requests {
        out.push((
            format!("max_requests {} → {}", o.max_requests, n.max_requests),
            n.max_requests > o.max_requests,
        ));
    }
    if o.window != n.window {
        out.push((
            format!("window {} → {}", o.window, n.window),
            n.window < o.window,
        ));
    }
    let members = |r: &RateLimit| -> Option<BTreeSet<String>> {
        match (&r.clients, &r.groups) {
            (Some(c), Some(g)) => Some(c.intersection(&g.members).cloned().collect()),
            (Some(c), None) => Some(c.clone()),
            (None, Some(g)) => Some(g.members.clone()),
            (None, None) => None,
        }
    };
    let (a, b) = (members(o), members(n));
    if a != b {
        let narrower = match (&a, &b) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => !a.is_subset(b),
        };
        out.push(("clients changed".to_owned(), narrower));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const A: &str = "0x00000000000000000000000000000000000000aa";
    const B: &str = "0x00000000000000000000000000000000000000bb";

    fn base() -> String {
        format!(
            r#"version = 1
serial = 1
[groups]
treasury = ["t1", "t2", "t3"]
[approvers]
t1 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
t2 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
t3 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
t4 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
[address_books.payees]
addresses = ["{A}"]
[[rule]]
id = "pay"
effect = "allow"
clients = ["app"]
kinds = ["native_transfer"]
to = ["book:payees"]
value_max = "1 ether"
[[rule]]
id = "no-blind"
effect = "deny"
kinds = ["raw_digest"]
[[rule]]
id = "big"
effect = "require_approval"
value_min = "10 ether"
approvals = [{{ group = "treasury", min = 2 }}]
ttl = "1h"
[[limit]]
id = "daily"
chain_ids = [1]
asset = "native"
window = "24h"
max_amount = "5 ether"
[[rate_limit]]
id = "rate"
window = "1m"
max_requests = 10
"#
        )
    }

    /// Diffs the base policy against it with `from` replaced by `to` (and serial 2).
    fn d(from: &str, to: &str) -> DiffReport {
        let old = Policy::parse("old.toml", &base()).unwrap();
        let src = base().replace("serial = 1", "serial = 2");
        assert!(from.is_empty() || src.contains(from), "{from}");
        let src = if from.is_empty() {
            format!("{src}{to}")
        } else {
            src.replacen(from, to, 1)
        };
        let new = Policy::parse("new.toml", &src).unwrap_or_else(|e| panic!("{e}"));
        diff(&old, &new)
    }

    fn loosens(from: &str, to: &str, needle: &str) {
        let r = d(from, to);
        assert!(r.loosens(), "{r}");
        assert!(r.to_string().contains(needle), "no `{needle}` in\n{r}");
    }

    fn tightens(from: &str, to: &str, needle: &str) {
        let r = d(from, to);
        assert!(!r.loosens(), "{r}");
        assert!(r.to_string().contains(needle), "no `{needle}` in\n{r}");
    }

    #[test]
    fn no_change_is_no_change() {
        let r = d("", "");
        assert!(r.changes.is_empty() && !r.loosens(), "{r}");
        let old = Policy::parse("a", &base()).unwrap();
        let r = diff(&old, &old);
        assert_eq!(r.changes.len(), 1);
        assert!(r.changes[0].description.contains("does not increase"));
        assert!(!r.loosens());
    }

    #[test]
    fn rules_added_removed_and_changed() {
        loosens(
            "",
            "[[rule]]\nid = \"new\"\neffect = \"allow\"\nclients = [\"x\"]\n",
            "LOOSENS rule `new`: added (allow)",
        );
        tightens(
            "",
            "[[rule]]\nid = \"new\"\neffect = \"deny\"\nclients = [\"x\"]\n",
            "rule `new`: added (deny)",
        );
        loosens(
            "[[rule]]\nid = \"no-blind\"\neffect = \"deny\"\nkinds = [\"raw_digest\"]\n",
            "",
            "rule `no-blind`: removed (deny)",
        );
        tightens(
            "[[rule]]\nid = \"pay\"",
            "[[rule]]\nid = \"pay\"\nkeys = [\"k\"]",
            "matchers changed: keys",
        );
        loosens(
            "value_max = \"1 ether\"",
            "value_max = \"2 ether\"",
            "LOOSENS rule `pay`: matchers changed: value_max",
        );
        tightens(
            "value_max = \"1 ether\"",
            "value_max = \"0.5 ether\"",
            "matchers changed: value_max",
        );
        loosens(
            "kinds = [\"native_transfer\"]\nto",
            "to",
            "matchers changed: kinds",
        );
        loosens(
            "kinds = [\"raw_digest\"]",
            "kinds = [\"raw_digest\"]\nkeys = [\"k\"]",
            "LOOSENS rule `no-blind`: matchers changed: keys",
        );
        loosens(
            "effect = \"deny\"",
            "effect = \"allow\"\nclients = [\"a\"]",
            "effect deny → allow",
        );
        tightens(
            "id = \"pay\"\neffect = \"allow\"",
            "id = \"pay\"\neffect = \"deny\"",
            "effect allow → deny",
        );
        // A book change is judged through the rules that use it.
        loosens(
            &format!("addresses = [\"{A}\"]"),
            &format!("addresses = [\"{A}\", \"{B}\"]"),
            "LOOSENS rule `pay`: matchers changed: to",
        );
        loosens(
            &format!("addresses = [\"{A}\"]"),
            &format!("addresses = [\"{B}\"]"),
            "address book `payees`: added 0x00000000000000000000000000000000000000bb; removed 0x00000000000000000000000000000000000000AA",
        );
        let r = d(
            &format!("addresses = [\"{A}\"]"),
            &format!("addresses = [\"{A}\", \"{B}\"]"),
        );
        assert!(
            r.to_string()
                .contains("address book `payees`: added 0x00000000000000000000000000000000000000bb; removed none"),
            "{r}"
        );
    }

    #[test]
    fn a_shorter_cooling_off_or_a_new_label_is_a_loosening() {
        let src = |serial: u32, book: &str| {
            format!(
                "version = 1\nserial = {serial}\n[address_books.payees]\n{book}\n\
                 [[rule]]\nid = \"pay\"\neffect = \"allow\"\nkinds = [\"native_transfer\"]\nto = [\"book:payees\"]\n"
            )
        };
        let entry = "addresses = [{ address = \"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\", label = \"cold\" }]";
        let p = |serial, book: String| Policy::parse("p.toml", &src(serial, &book)).unwrap();
        let old = p(1, format!("cooling_off = \"48h\"\n{entry}"));
        for (book, loosens) in [
            (format!("cooling_off = \"1h\"\n{entry}"), true),
            (entry.to_owned(), true),
            (format!("cooling_off = \"72h\"\n{entry}"), false),
            (
                format!("cooling_off = \"48h\"\n{}", entry.replace("cold", "hot")),
                true,
            ),
        ] {
            let report = diff(&old, &p(2, book.clone()));
            assert_eq!(report.loosens(), loosens, "{book}: {report}");
            assert!(!report.changes.is_empty(), "{book}");
        }
    }

    #[test]
    fn the_serial_must_increase() {
        assert!(d("", "").serial_increases());
        let old = Policy::parse("old.toml", &base()).unwrap();
        for serial in ["serial = 1", "serial = 0"] {
            let new = Policy::parse("new.toml", &base().replace("serial = 1", serial)).unwrap();
            let r = diff(&old, &new);
            assert!(!r.serial_increases(), "{serial}");
            assert!(r.to_string().contains("does not increase"), "{r}");
        }
    }

    #[test]
    fn approvals() {
        loosens(
            "min = 2",
            "min = 1",
            "approvals by `treasury` lowered from 2 to 1",
        );
        tightens(
            "min = 2",
            "min = 3",
            "approvals by `treasury` raised from 2 to 3",
        );
        loosens("ttl = \"1h\"", "ttl = \"2h\"", "approval ttl 1h → 2h");
        loosens(
            "ttl = \"1h\"",
            "ttl = \"1h\"\nveto = false",
            "veto true → false",
        );
        loosens(
            "value_min = \"10 ether\"",
            "value_min = \"20 ether\"",
            "matchers changed: value_min",
        );
        loosens(
            "treasury = [\"t1\", \"t2\", \"t3\"]",
            "treasury = [\"t1\", \"t2\", \"t3\", \"t4\"]",
            "LOOSENS group `treasury`: members added [t4]",
        );
        let k = "ed25519:5866666666666666666666666666666666666666666666666666666666666666";
        let other = "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        loosens(
            &format!("t1 = \"{k}\""),
            &format!("t1 = \"{other}\""),
            "LOOSENS approver `t1`: key replaced",
        );
        tightens(&format!("t4 = \"{k}\"\n"), "", "approver `t4`: key removed");
    }

    #[test]
    fn limits() {
        loosens(
            "max_amount = \"5 ether\"",
            "max_amount = \"6 ether\"",
            "max_amount 5 ether → 6 ether",
        );
        tightens(
            "max_amount = \"5 ether\"",
            "max_amount = \"4 ether\"",
            "max_amount 5 ether → 4 ether",
        );
        loosens("window = \"24h\"", "window = \"1h\"", "window 24h → 1h");
        loosens(
            "max_amount = \"5 ether\"",
            "max_amount = \"5 ether\"\nkey_by = [\"key\", \"asset\", \"destination\"]",
            "key_by [key, asset] → [key, asset, destination]",
        );
        tightens(
            "max_amount = \"5 ether\"",
            "max_amount = \"5 ether\"\nkey_by = [\"asset\"]",
            "key_by",
        );
        loosens(
            "[[limit]]\nid = \"daily\"",
            "[[limit]]\nid = \"daily\"\nkeys = [\"k\"]",
            "LOOSENS limit `daily`: scope changed",
        );
        loosens(
            "max_requests = 10",
            "max_requests = 11",
            "rate limit `rate`: max_requests 10 → 11",
        );
        tightens(
            "",
            "[[limit]]\nid = \"n\"\nwindow = \"1h\"\nmax_count = 5\n",
            "limit `n`: added",
        );
        let r = d(
            "[[limit]]\nid = \"daily\"\nchain_ids = [1]\nasset = \"native\"\nwindow = \"24h\"\nmax_amount = \"5 ether\"\n",
            "",
        );
        assert!(
            r.loosens() && r.to_string().contains("limit `daily`: removed"),
            "{r}"
        );
    }

    /// The matchers and scopes this release added: messages, grants on permits and transfer
    /// authorizations, limits on several chains, the asset registry.
    #[test]
    fn new_matchers_and_scopes() {
        let msg = "[[rule]]\nid = \"m\"\neffect = \"allow\"\nkinds = [\"eip191_message\"]\nmessage_max_bytes = 64\nmessage_prefixes = [\"example.com wants you\"]\n";
        let with = |extra: &str| format!("{}{extra}", base().replace("serial = 1", "serial = 2"));
        let pair = |old: &str, new: &str| {
            let o = Policy::parse("old.toml", old).unwrap_or_else(|e| panic!("{e}"));
            let n = Policy::parse("new.toml", new).unwrap_or_else(|e| panic!("{e}"));
            diff(&o, &n)
        };
        let old = format!("{}{msg}", base());
        // Raising the length bound or dropping the prefixes lets more messages through.
        let r = pair(&old, &with(&msg.replace("= 64", "= 128")));
        assert!(
            r.loosens() && r.to_string().contains("message_max_bytes"),
            "{r}"
        );
        let r = pair(
            &old,
            &with(&msg.replace("message_prefixes = [\"example.com wants you\"]\n", "")),
        );
        assert!(
            r.loosens() && r.to_string().contains("message_prefixes"),
            "{r}"
        );
        // Narrowing them tightens.
        let r = pair(&old, &with(&msg.replace("= 64", "= 32")));
        assert!(
            !r.loosens() && r.to_string().contains("message_max_bytes"),
            "{r}"
        );
        // Naming a blind kind on an allow rule loosens, unless a matcher rules it out: a
        // prefix only text can have.
        let no_prefix = msg.replace("message_prefixes = [\"example.com wants you\"]\n", "");
        let blind = |m: &str| {
            m.replace(
                "[\"eip191_message\"]",
                "[\"eip191_message\", \"eip191_binary\"]",
            )
        };
        let r = pair(&format!("{}{no_prefix}", base()), &with(&blind(&no_prefix)));
        assert!(r.loosens() && r.to_string().contains("kinds"), "{r}");
        let r = pair(&old, &with(&blind(msg)));
        assert!(!r.loosens(), "{r}");

        // A permit rule: more spenders loosen, fewer tighten.
        let permit = format!(
            "[[rule]]\nid = \"p\"\neffect = \"allow\"\nkinds = [\"eip712_permit\"]\npermit_spenders = [\"{A}\"]\n"
        );
        let old = format!("{}{permit}", base());
        let r = pair(
            &old,
            &with(&permit.replace(&format!("[\"{A}\"]"), &format!("[\"{A}\", \"{B}\"]"))),
        );
        assert!(
            r.loosens() && r.to_string().contains("permit_spenders"),
            "{r}"
        );

        // A limit that counts fewer chains loosens.
        let two = base().replace("chain_ids = [1]\nasset", "chain_ids = [1, 10]\nasset");
        let r = pair(&two, &base().replace("serial = 1", "serial = 2"));
        assert!(
            r.loosens() && r.to_string().contains("limit `daily`"),
            "{r}"
        );
        // Adding a chain counts more, but it changes the limit's asset and so its bucket:
        // usage starts again from zero, which loosens.
        let r = pair(&base(), &two.replace("serial = 1", "serial = 2"));
        assert!(
            r.loosens() && r.to_string().contains("limit `daily`: asset changed"),
            "{r}"
        );
    }
}
