//! Address books: entries with optional labels, and the cooling-off period that keeps a new
//! entry from granting anything until a set time after the first policy load that contained it.
//!
//! This module reads no clock and no log. When an entry was first loaded is an input: the daemon
//! takes it from its audit log and attaches it with [`Policy::set_first_loaded`]; tools attach
//! what they were told. An entry whose first load is not known is not usable yet (fail closed).
//! Cooling-off never delays a restriction: an entry that is still cooling off counts, for each
//! rule, the way that restricts (a `deny` rule matches it at once, an `allow` rule does not, and
//! a `require_approval` rule that depends on it denies).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use alloy_primitives::Address;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::Policy;
use crate::rule::{AddrSet, Field, Matchers};
use crate::time::{Duration, format_rfc3339};
use crate::{Action, Kind};

/// Most characters in an address-book label.
pub(crate) const MAX_LABEL_CHARS: usize = 64;

/// When each entry of an address book with a cooling-off period was first loaded: (book name,
/// address) to Unix seconds.
pub type FirstLoaded = BTreeMap<(String, Address), i64>;

/// An address-book entry as written: `"0x…"` or `{ address = "0x…", label = "…" }`.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) address: String,
    pub(crate) label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabeled {
    address: String,
    label: String,
}

impl<'de> Deserialize<'de> for RawEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an address, or { address = "0x…", label = "…" }"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawEntry, E> {
                Ok(RawEntry {
                    address: s.to_owned(),
                    label: None,
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<RawEntry, M::Error> {
                let l = RawLabeled::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(RawEntry {
                    address: l.address,
                    label: Some(l.label),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks a label: 1 to [`MAX_LABEL_CHARS`] characters, none of them control characters, not
/// only spaces (approvers read it next to the address).
pub(crate) fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err("a label must not be empty".into());
    }
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(format!("a label has at most {MAX_LABEL_CHARS} characters"));
    }
    if label.chars().any(char::is_control) {
        return Err("a label must not contain control characters".into());
    }
    Ok(())
}

/// What a policy knows about one address book beyond its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BookMeta {
    /// How long after its first load an entry becomes usable.
    pub(crate) cooling_off: Option<Duration>,
    /// Labels, by address.
    pub(crate) labels: BTreeMap<Address, String>,
}

/// The part of an address set that comes from books with a cooling-off period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cooling {
    /// Addresses usable at once: written directly, or in a book without cooling-off.
    pub(crate) settled: BTreeSet<Address>,
    /// Every book with a cooling-off period the set names.
    pub(crate) books: Vec<CoolingBook>,
}

/// One book with a cooling-off period, as an address set names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CoolingBook {
    pub(crate) name: String,
    pub(crate) period: Duration,
    /// Each entry's first load (Unix seconds), `None` while not known.
    pub(crate) entries: BTreeMap<Address, Option<i64>>,
}

impl CoolingBook {
    /// When `a` becomes usable, if known.
    fn usable_at(&self, a: &Address) -> Option<i64> {
        self.entries
            .get(a)
            .copied()
            .flatten()
            .map(|t| t.saturating_add_unsigned(self.period.0))
    }
}

/// Whether an address is in a set at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Membership {
    /// In the set, and usable.
    In,
    /// Not in the set.
    Out,
    /// In the set only through entries still cooling off.
    Cooling,
}

impl AddrSet {
    /// Whether `a` is in the set at `now_unix`, telling entries still cooling off apart.
    pub(crate) fn holds(&self, a: &Address, now_unix: i64) -> Membership {
        if !self.set.contains(a) {
            return Membership::Out;
        }
        let Some(c) = &self.cooling else {
            return Membership::In;
        };
        if c.settled.contains(a) {
            return Membership::In;
        }
        let usable = c
            .books
            .iter()
            .any(|b| b.usable_at(a).is_some_and(|t| t <= now_unix));
        if usable {
            Membership::In
        } else {
            Membership::Cooling
        }
    }

    /// Why `a` is not usable yet: the entry that will become usable first.
    pub(crate) fn cooling_note(&self, a: &Address, now_unix: i64) -> Option<String> {
        if self.holds(a, now_unix) != Membership::Cooling {
            return None;
        }
        let c = self.cooling.as_ref()?;
        let mut best: Option<(&CoolingBook, Option<i64>)> = None;
        for b in c.books.iter().filter(|b| b.entries.contains_key(a)) {
            let at = b.usable_at(a);
            let better = match (&best, at) {
                (None, _) => true,
                (Some((_, None)), Some(_)) => true,
                (Some((_, Some(t0))), Some(t)) => t < *t0,
                _ => false,
            };
            if better {
                best = Some((b, at));
            }
        }
        let (b, at) = best?;
        Some(match at {
            Some(t) => format!(
                "{a} in address book `{}` becomes usable at {} (cooling-off {} after its first load)",
                b.name,
                format_rfc3339(t),
                b.period
            ),
            None => format!(
                "{a} in address book `{}` is cooling off ({}) and its first load is not known, so it is not usable",
                b.name, b.period
            ),
        })
    }

    /// A set of the addresses written directly and in books without cooling-off (`direct`),
    /// and of the entries of books with a cooling-off period (`cooling`: name, entries, period).
    pub(crate) fn build(
        direct: BTreeSet<Address>,
        cooling: Vec<(String, &BTreeSet<Address>, Duration)>,
        written: Vec<String>,
    ) -> AddrSet {
        let mut set = direct.clone();
        let mut books: Vec<CoolingBook> = Vec::new();
        for (name, addrs, period) in cooling {
            set.extend(addrs.iter().copied());
            if books.iter().all(|b| b.name != name) {
                books.push(CoolingBook {
                    name,
                    period,
                    entries: addrs.iter().map(|a| (*a, None)).collect(),
                });
            }
        }
        let cooling = (!books.is_empty()).then(|| {
            Box::new(Cooling {
                settled: direct,
                books,
            })
        });
        AddrSet {
            set,
            written,
            cooling,
        }
    }
}

/// The address sets of a rule's matchers, for attaching load times.
fn addr_sets_mut(m: &mut Matchers) -> impl Iterator<Item = &mut AddrSet> {
    let args = m
        .args
        .iter_mut()
        .flat_map(|s| std::sync::Arc::make_mut(s).addr_sets_mut());
    [
        m.to.as_mut(),
        m.not_to.as_mut(),
        m.contracts.as_mut(),
        m.counterparty.as_mut(),
        m.verifying_contracts.as_mut(),
        m.permit_spenders.as_mut(),
    ]
    .into_iter()
    .flatten()
    .chain(args)
}

impl Matchers {
    /// For a matcher whose outcome depends on an entry still cooling off: which entry, and
    /// when it becomes usable.
    pub(crate) fn cooling_note(&self, f: Field, a: &Action, now_unix: i64) -> String {
        let grants: Vec<Address> = a
            .typed_data
            .iter()
            .flat_map(|td| td.grants.iter().map(|g| g.counterparty))
            .collect();
        let (set, addrs): (Option<&AddrSet>, Vec<Address>) = match f {
            Field::To => (self.to.as_ref(), a.to.into_iter().collect()),
            Field::NotTo => (self.not_to.as_ref(), a.to.into_iter().collect()),
            Field::Contracts => (self.contracts.as_ref(), a.to.into_iter().collect()),
            Field::Counterparty => (
                self.counterparty.as_ref(),
                match &a.erc20 {
                    Some(e) if a.kind != Kind::Eip712Permit => vec![e.counterparty],
                    _ => grants,
                },
            ),
            Field::VerifyingContracts => (
                self.verifying_contracts.as_ref(),
                a.typed_data
                    .iter()
                    .filter_map(|td| td.verifying_contract)
                    .collect(),
            ),
            Field::PermitSpenders => (self.permit_spenders.as_ref(), grants),
            _ => (None, Vec::new()),
        };
        set.and_then(|s| addrs.iter().find_map(|x| s.cooling_note(x, now_unix)))
            .map_or_else(
                || {
                    format!(
                        "`{}` depends on an address-book entry still cooling off",
                        f.name()
                    )
                },
                |note| format!("`{}`: {note}", f.name()),
            )
    }
}

impl Policy {
    /// The label of `address` in each address book that lists it with one: (book, label).
    pub fn address_labels(&self, address: &Address) -> Vec<(&str, &str)> {
        self.book_meta
            .iter()
            .filter_map(|(book, m)| m.labels.get(address).map(|l| (book.as_str(), l.as_str())))
            .collect()
    }

    /// The cooling-off period of address book `name`, in seconds, if it has one.
    pub fn cooling_off_secs(&self, name: &str) -> Option<u64> {
        self.book_meta.get(name)?.cooling_off.map(|d| d.0)
    }

    /// Every entry of an address book with a cooling-off period: (book, address).
    pub fn cooling_entries(&self) -> Vec<(String, Address)> {
        self.books
            .iter()
            .filter(|(name, _)| self.cooling_off_secs(name).is_some())
            .flat_map(|(name, addrs)| addrs.iter().map(move |a| (name.clone(), *a)))
            .collect()
    }

    /// Attaches when each entry of a book with a cooling-off period was first loaded: the time
    /// in `known` when it has one (an entry of the policy loaded before), else `new_at` (an
    /// entry this load adds; `None` leaves its first load unknown, and the entry unusable).
    /// Returns the entries that were not in `known`. Until this is called, no such entry is
    /// usable.
    pub fn set_first_loaded(
        &mut self,
        known: &FirstLoaded,
        new_at: Option<i64>,
    ) -> Vec<(String, Address)> {
        let mut all = FirstLoaded::new();
        let mut new = Vec::new();
        for key in self.cooling_entries() {
            let at = match known.get(&key) {
                Some(t) => Some(*t),
                None => {
                    new.push(key.clone());
                    new_at
                }
            };
            if let Some(at) = at {
                all.insert(key, at);
            }
        }
        for rule in &mut self.rules {
            for set in addr_sets_mut(&mut rule.m) {
                let Some(c) = &mut set.cooling else { continue };
                for b in &mut c.books {
                    for (addr, at) in &mut b.entries {
                        *at = all.get(&(b.name.clone(), *addr)).copied();
                    }
                }
            }
        }
        self.first_loaded = all;
        new
    }

    /// When each entry of a book with a cooling-off period was first loaded, as attached by
    /// [`Policy::set_first_loaded`] (empty before).
    pub fn first_loaded(&self) -> &FirstLoaded {
        &self.first_loaded
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::tests::{policy, who};
    use crate::{Decision, NoUsage, Request};
    use alloy_primitives::U256;

    const NEW: &str = "0x00000000000000000000000000000000000a11ce";
    const OLD: &str = "0x0000000000000000000000000000000000000b0b";
    const T0: i64 = 1_767_261_600; // 2026-01-01T10:00:00Z

    fn src(extra_rules: &str) -> String {
        format!(
            r#"version = 1
serial = 1

[address_books.payees]
cooling_off = "2h"
addresses = ["{OLD}", {{ address = "{NEW}", label = "Kraken deposit" }}]

[address_books.blocked]
cooling_off = "1d"
addresses = ["{NEW}"]

[[rule]]
id = "pay"
effect = "allow"
kinds = ["native_transfer"]
to = ["book:payees"]
{extra_rules}"#
        )
    }

    fn send(to: &str) -> Action {
        let mut a = Action::new("hot", Kind::NativeTransfer);
        a.chain_id = Some(1);
        a.to = Some(to.parse().unwrap());
        a.value = U256::from(1);
        a
    }

    fn decide(p: &Policy, to: &str, now: i64) -> Decision {
        p.evaluate_request(&Request {
            action: &send(to),
            identity: &who("svc"),
            now_unix: now,
            usage: &NoUsage,
        })
        .decision
    }

    fn known(entries: &[(&str, &str, i64)]) -> FirstLoaded {
        entries
            .iter()
            .map(|(b, a, t)| (((*b).to_owned(), a.parse().unwrap()), *t))
            .collect()
    }

    #[test]
    fn cooling_off_books_are_bounded_so_a_load_record_fits() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("\"0x{i:040x}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = |n: usize| {
            format!(
                "version = 1\nserial = 1\n[address_books.a]\ncooling_off = \"1h\"\naddresses = [{}]\n\
                 [address_books.b]\ncooling_off = \"1h\"\naddresses = [\"0x{:040x}\"]\n",
                list(n),
                n + 1
            )
        };
        let max = crate::parse::MAX_COOLING_ENTRIES;
        assert!(crate::Policy::parse("p.toml", &text(max - 1)).is_ok());
        let e = crate::Policy::parse("p.toml", &text(max))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.toml:") && e.contains(&format!("more than {max} entries")),
            "{e}"
        );
        // A record listing the most entries allowed fits the audit log's line limit.
        let one = r#"{"address":"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed","book":"abcdefghijklmnopqrstuvwxyz0123456789abcd","first_loaded":"2026-01-01T10:00:00Z"},"#;
        assert!(one.len() * max < 900 * 1024);
    }

    #[test]
    fn a_new_entry_allows_only_after_its_cooling_off() {
        let mut p = policy(&src(""));
        // Before any load time is attached, no entry of a cooling-off book is usable.
        assert!(!decide(&p, OLD, T0).is_allow());
        let new = p.set_first_loaded(&known(&[("payees", OLD, T0 - 86_400)]), Some(T0));
        assert_eq!(
            new,
            vec![
                ("blocked".to_owned(), NEW.parse().unwrap()),
                ("payees".to_owned(), NEW.parse().unwrap())
            ]
        );
        assert!(decide(&p, OLD, T0).is_allow());
        match decide(&p, NEW, T0 + 7199) {
            Decision::Deny { rule: None, reason } => assert_eq!(
                reason,
                format!(
                    "no rule allows: rule `pay` would allow, but `to`: {} in address book `payees` becomes usable at 2026-01-01T12:00:00Z (cooling-off 2h after its first load)",
                    NEW.parse::<Address>().unwrap()
                )
            ),
            d => panic!("{d:?}"),
        }
        assert!(decide(&p, NEW, T0 + 7200).is_allow());
        // An entry loaded before keeps its time; the map holds every cooling entry.
        assert_eq!(p.first_loaded().len(), 3);
    }

    #[test]
    fn an_entry_whose_first_load_is_not_known_is_not_usable() {
        let mut p = policy(&src(""));
        p.set_first_loaded(&known(&[("payees", OLD, T0)]), None);
        assert!(decide(&p, OLD, T0 + 7200).is_allow());
        match decide(&p, NEW, i64::MAX) {
            Decision::Deny { reason, .. } => {
                assert!(reason.contains("first load is not known"), "{reason}")
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(p.first_loaded().len(), 1);
    }

    #[test]
    fn an_entry_removed_and_added_back_starts_a_new_period() {
        // Each load carries forward the first loads of the policy it replaces, as the daemon
        // does on reload.
        let mut first = policy(&src(""));
        first.set_first_loaded(&FirstLoaded::new(), Some(T0));
        let without = src("").replace(
            &format!("\"{OLD}\", {{ address = \"{NEW}\", label = \"Kraken deposit\" }}"),
            &format!("\"{OLD}\""),
        );
        let mut second = policy(&without);
        assert!(
            second
                .set_first_loaded(first.first_loaded(), Some(T0 + 100))
                .is_empty()
        );
        let mut third = policy(&src(""));
        let new = third.set_first_loaded(second.first_loaded(), Some(T0 + 200));
        assert_eq!(new, vec![("payees".to_owned(), NEW.parse().unwrap())]);
        assert!(!decide(&third, NEW, T0 + 7200).is_allow());
        assert!(decide(&third, NEW, T0 + 7400).is_allow());
        assert!(decide(&third, OLD, T0 + 7200).is_allow());
    }

    #[test]
    fn a_deny_book_applies_at_once() {
        let mut p = policy(&src(
            "\n[[rule]]\nid = \"block\"\neffect = \"deny\"\nto = [\"book:blocked\"]\n",
        ));
        p.set_first_loaded(&known(&[("payees", NEW, T0 - 86_400)]), Some(T0));
        // `blocked` was loaded just now (1d cooling-off) and `payees` long ago: deny wins.
        match decide(&p, NEW, T0) {
            Decision::Deny { rule, .. } => assert_eq!(rule.as_deref(), Some("block")),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn not_to_restricts_at_once_in_allow_rules_and_loosens_only_later_in_deny_rules() {
        let allow = "\n[[rule]]\nid = \"any-but\"\neffect = \"allow\"\nkinds = [\"native_transfer\"]\nnot_to = [\"book:blocked\"]\n";
        let mut p = policy(&src(allow));
        p.set_first_loaded(&FirstLoaded::new(), Some(T0));
        // Neither `pay` (payees still cooling off) nor `any-but` (NEW is blocked at once).
        assert!(!decide(&p, NEW, T0).is_allow());
        let deny = "\n[[rule]]\nid = \"only-trusted\"\neffect = \"deny\"\nnot_to = [\"book:payees\"]\n[[rule]]\nid = \"all\"\neffect = \"allow\"\nkinds = [\"native_transfer\"]\n";
        let mut p = policy(&src(deny));
        p.set_first_loaded(&known(&[("payees", OLD, 0)]), Some(T0));
        match decide(&p, NEW, T0) {
            Decision::Deny { rule, .. } => assert_eq!(rule.as_deref(), Some("only-trusted")),
            d => panic!("{d:?}"),
        }
        assert!(decide(&p, NEW, T0 + 7200).is_allow());
        assert!(decide(&p, OLD, T0).is_allow());
    }

    #[test]
    fn a_require_approval_rule_waiting_for_an_entry_denies() {
        let src = format!(
            r#"version = 1
serial = 1
[address_books.vendors]
cooling_off = "1h"
addresses = ["{NEW}"]
[[rule]]
id = "vendors"
effect = "require_approval"
to = ["book:vendors"]
approvals = [{{ group = "t", min = 1 }}]
ttl = "1h"
[groups]
t = ["a", "b"]
[approvers]
a = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
b = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
"#
        );
        let mut p = policy(&src);
        p.set_first_loaded(&FirstLoaded::new(), Some(T0));
        match decide(&p, NEW, T0 + 10) {
            Decision::Deny { rule, reason } => {
                assert_eq!(rule.as_deref(), Some("vendors"));
                assert!(
                    reason.contains("becomes usable at 2026-01-01T11:00:00Z"),
                    "{reason}"
                );
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decide(&p, NEW, T0 + 3600),
            Decision::NeedsApproval { .. }
        ));
    }

    #[test]
    fn labels_are_checked_and_listed() {
        let p = policy(&src(""));
        assert_eq!(
            p.address_labels(&NEW.parse().unwrap()),
            vec![("payees", "Kraken deposit")]
        );
        assert_eq!(p.cooling_off_secs("payees"), Some(7200));
        for (bad, msg) in [
            (
                format!("{{ address = \"{OLD}\", label = \"\" }}"),
                "a label must not be empty",
            ),
            (
                format!("{{ address = \"{OLD}\", label = \"{}\" }}", "x".repeat(65)),
                "at most 64",
            ),
            (
                format!("{{ address = \"{OLD}\", label = \"a\\nb\" }}"),
                "control characters",
            ),
            (
                format!("{{ address = \"{OLD}\", lable = \"a\" }}"),
                "unknown field `lable`",
            ),
            (
                format!("\"{OLD}\", {{ address = \"{OLD}\", label = \"a\" }}"),
                "lists",
            ),
        ] {
            let src = format!("version = 1\nserial = 1\n[address_books.b]\naddresses = [{bad}]\n");
            let e = Policy::parse("p.toml", &src).unwrap_err().to_string();
            assert!(e.starts_with("p.toml:4:"), "{e}");
            assert!(e.contains(msg), "{e}");
        }
    }

    #[test]
    fn limits_count_entries_still_cooling_off() {
        // A limit scoped to a book restricts, so it applies to a new entry at once.
        let src = src(
            "\n[[rule]]\nid = \"all\"\neffect = \"allow\"\nkinds = [\"native_transfer\"]\n[[limit]]\nid = \"cap\"\nto = [\"book:payees\"]\nchain_ids = [1]\nasset = \"native\"\nper_tx_max = 0\n",
        );
        let mut p = policy(&src);
        p.set_first_loaded(&FirstLoaded::new(), Some(T0));
        match decide(&p, NEW, T0) {
            Decision::Deny { rule, .. } => assert_eq!(rule.as_deref(), Some("cap")),
            d => panic!("{d:?}"),
        }
    }
}
