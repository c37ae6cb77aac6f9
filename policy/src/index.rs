//! An index of rules by key, kind and client, so a request is tested only against rules that
//! could match it.
//!
//! The index is an optimisation and must never change a decision: a rule is left out of a
//! request's candidates only when its `keys`, its `clients` or its effective kinds (its `kinds`
//! narrowed by the kinds its field matchers apply to) exclude the request outright, which the
//! full match would also reject (`keys` and `clients` are exact sets that never make a rule
//! indeterminate). A property test checks indexed and exhaustive evaluation agree.

use std::collections::HashMap;

use crate::Kind;
use crate::rule::Rule;

/// Rule positions of one (key, kind): those for any client, and those naming clients, under
/// each client they name; each list in file order.
#[derive(Debug, Clone, Default)]
struct ByClient {
    any: Vec<u32>,
    named: HashMap<String, Vec<u32>>,
}

type ByKind = [ByClient; Kind::ALL.len()];

/// Candidate rule positions per (key, kind, client), each list in file order.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    by_key: HashMap<String, ByKind>,
    any_key: ByKind,
}

impl RuleIndex {
    pub(crate) fn build(rules: &[Rule]) -> RuleIndex {
        let mut idx = RuleIndex::default();
        for (pos, rule) in rules.iter().enumerate() {
            let Ok(pos) = u32::try_from(pos) else {
                // Unreachable with MAX_POLICY_BYTES; never index a rule under a wrong position.
                break;
            };
            let kinds = rule.m.effective_kinds();
            let clients = rule.m.clients.as_ref();
            let add = |lists: &mut ByKind| {
                for k in kinds.kinds() {
                    let Some(l) = lists.get_mut(k.index()) else {
                        continue;
                    };
                    match clients {
                        None => l.any.push(pos),
                        Some(names) => {
                            for name in names {
                                l.named.entry(name.clone()).or_default().push(pos);
                            }
                        }
                    }
                }
            };
            match &rule.m.keys {
                None => add(&mut idx.any_key),
                Some(keys) => {
                    for key in keys {
                        add(idx.by_key.entry(key.clone()).or_default());
                    }
                }
            }
        }
        idx
    }

    /// Positions of the rules that may match a request of `client` on `key` of `kind`, in
    /// file order.
    pub(crate) fn candidates(&self, key: &str, kind: Kind, client: &str) -> Candidates<'_> {
        fn lists<'a>(c: Option<&'a ByClient>, client: &str) -> (&'a [u32], &'a [u32]) {
            let empty: &[u32] = &[];
            (
                c.map_or(empty, |c| c.any.as_slice()),
                c.and_then(|c| c.named.get(client))
                    .map_or(empty, Vec::as_slice),
            )
        }
        let (a, b) = lists(
            self.by_key.get(key).and_then(|l| l.get(kind.index())),
            client,
        );
        let (c, d) = lists(self.any_key.get(kind.index()), client);
        Candidates {
            lists: [a, b, c, d],
        }
    }
}

/// Merges ascending lists (a rule is in at most one of them).
pub(crate) struct Candidates<'a> {
    lists: [&'a [u32]; 4],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let list = self
            .lists
            .iter_mut()
            .filter(|l| !l.is_empty())
            .min_by_key(|l| l.first().copied())?;
        let (first, rest) = list.split_first()?;
        *list = rest;
        usize::try_from(*first).ok()
    }
}
