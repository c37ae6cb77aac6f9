//! An index of rules by key and kind, so a request is tested only against rules that could
//! match it.
//!
//! The index is an optimisation and must never change a decision: a rule is left out of a
//! request's candidates only when its `keys` or its effective kinds (its `kinds` narrowed by
//! the kinds its field matchers apply to) exclude the request outright, which the full match
//! would also reject. A property test checks indexed and exhaustive evaluation agree.

use std::collections::HashMap;

use crate::Kind;
use crate::rule::Rule;

type ByKind = [Vec<u32>; Kind::ALL.len()];

/// Candidate rule positions per (key, kind), each list in file order.
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
            let add = |lists: &mut ByKind| {
                for k in kinds.kinds() {
                    if let Some(l) = lists.get_mut(k.index()) {
                        l.push(pos);
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

    /// Positions of the rules that may match a request on `key` of `kind`, in file order.
    pub(crate) fn candidates(&self, key: &str, kind: Kind) -> Candidates<'_> {
        let empty: &[u32] = &[];
        let a = self
            .by_key
            .get(key)
            .and_then(|l| l.get(kind.index()))
            .map_or(empty, Vec::as_slice);
        let b = self.any_key.get(kind.index()).map_or(empty, Vec::as_slice);
        Candidates { a, b }
    }
}

/// Merges two ascending lists (a rule is in at most one of them).
pub(crate) struct Candidates<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let list = if take_a { &mut self.a } else { &mut self.b };
        let (first, rest) = list.split_first()?;
        *list = rest;
        usize::try_from(*first).ok()
    }
}
