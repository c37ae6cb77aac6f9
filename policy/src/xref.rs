//! Cross-checks of a policy against what the daemon that runs it holds: every key a rule or
//! a limit names must be a key the daemon can sign with. A freeze rule or a limit whose
//! `keys` has a typo would otherwise load and then do nothing.
//!
//! The policy crate stays pure: the caller lists the key ids it holds (the daemon asks its
//! key backend, `signerctl` reads the configured keystore), and this module only compares.
//! It must never change what a policy means.

use std::collections::BTreeSet;
use std::fmt;

use toml::Spanned;

use crate::{Policy, PolicyError, line_col};

/// Most unknown keys reported for one policy; the rest are counted.
const MAX_REPORTED: usize = 20;

/// Whether a rule or a limit names a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyUser {
    Rule,
    Limit,
}

impl fmt::Display for KeyUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyUser::Rule => "rule",
            KeyUser::Limit => "limit",
        })
    }
}

/// One key id written in a `keys` list, with where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRef {
    user: KeyUser,
    /// The rule's or limit's id.
    id: String,
    key: String,
    line: usize,
    column: usize,
}

/// One function signature written in a rule's `selectors`, with where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignatureRef {
    /// The rule's id.
    pub(crate) rule: String,
    pub(crate) text: String,
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// Every key a policy names and every signature its rules write, in file order, and the
/// file name it was parsed as.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyRefs {
    pub(crate) file: String,
    refs: Vec<KeyRef>,
    pub(crate) signatures: Vec<SignatureRef>,
}

impl KeyRefs {
    /// Collects the `keys` entries of `users` (kind, id, the list as written).
    pub(crate) fn collect<'a>(
        file: &str,
        src: &str,
        users: impl Iterator<
            Item = (
                KeyUser,
                &'a String,
                &'a Option<Spanned<Vec<Spanned<String>>>>,
            ),
        >,
    ) -> KeyRefs {
        let mut refs = Vec::new();
        for (user, id, keys) in users {
            for k in keys.iter().flat_map(|l| l.get_ref()) {
                let (line, column) = line_col(src, k.span().start);
                refs.push(KeyRef {
                    user,
                    id: id.clone(),
                    key: k.get_ref().clone(),
                    line,
                    column,
                });
            }
        }
        refs.sort_by_key(|r| (r.line, r.column));
        KeyRefs {
            file: file.to_owned(),
            refs,
            signatures: Vec::new(),
        }
    }

    /// Adds the signatures (not the `0x` selectors) of one rule's `selectors`.
    pub(crate) fn add_signatures(
        &mut self,
        src: &str,
        rule: &str,
        selectors: &Option<Spanned<Vec<Spanned<String>>>>,
    ) {
        for s in selectors.iter().flat_map(|l| l.get_ref()) {
            if s.get_ref().starts_with("0x") {
                continue;
            }
            let (line, column) = line_col(src, s.span().start);
            self.signatures.push(SignatureRef {
                rule: rule.to_owned(),
                text: s.get_ref().clone(),
                line,
                column,
            });
        }
    }
}

impl Policy {
    /// Every key id that a rule's or a limit's `keys` names and that is not in `held`, as
    /// located errors (file, line and column of the entry), in file order. Empty when every
    /// named key is held. At most 20 are listed; a last error counts the others.
    pub fn unknown_keys(&self, held: &BTreeSet<String>) -> Vec<PolicyError> {
        let refs = &self.key_refs;
        let unknown: Vec<&KeyRef> = refs
            .refs
            .iter()
            .filter(|r| !held.contains(&r.key))
            .collect();
        let mut out: Vec<PolicyError> = unknown
            .iter()
            .take(MAX_REPORTED)
            .map(|r| {
                let hint = match crate::parse::closest(&r.key, held.iter().map(String::as_str)) {
                    Some(k) => format!("; did you mean `{k}`?"),
                    None if held.is_empty() => "; it holds no keys".to_owned(),
                    None => String::new(),
                };
                PolicyError::Invalid {
                    file: refs.file.clone(),
                    line: r.line,
                    column: r.column,
                    message: format!(
                        "{} `{}`: `keys` names `{}`, a key this signerd does not hold{hint}",
                        r.user, r.id, r.key
                    ),
                }
            })
            .collect();
        if let Some(first) = unknown.get(MAX_REPORTED) {
            out.push(PolicyError::Invalid {
                file: refs.file.clone(),
                line: first.line,
                column: first.column,
                message: format!(
                    "and {} more keys this signerd does not hold",
                    unknown.len() - MAX_REPORTED
                ),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn held(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    const POLICY: &str = r#"version = 1
serial = 1

[[rule]]
id = "freeze"
effect = "deny"
keys = ["hot", "legacy_hot"]

[[rule]]
id = "pay"
effect = "allow"
clients = ["c"]
keys = [ "hot" ]

[[limit]]
id = "daily"
keys = ["cold", "hott"]
window = "24h"
max_count = 5
"#;

    #[test]
    fn every_unknown_key_is_reported_where_it_is_written() {
        let p = Policy::parse("p.toml", POLICY).unwrap();
        let errs: Vec<String> = p
            .unknown_keys(&held(&["hot", "cold"]))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errs,
            vec![
                "p.toml:7:16: rule `freeze`: `keys` names `legacy_hot`, a key this signerd does not hold",
                "p.toml:17:17: limit `daily`: `keys` names `hott`, a key this signerd does not hold; did you mean `hot`?",
            ]
        );
        assert!(
            p.unknown_keys(&held(&["hot", "cold", "legacy_hot", "hott"]))
                .is_empty()
        );
        // With no keys held, every reference is unknown (the first one included).
        let none = p.unknown_keys(&BTreeSet::new());
        assert_eq!(none.len(), 5);
        assert!(
            none[0]
                .to_string()
                .starts_with("p.toml:7:9: rule `freeze`: `keys` names `hot`"),
            "{}",
            none[0]
        );
        assert!(none[0].to_string().ends_with("; it holds no keys"));
    }

    #[test]
    fn a_policy_without_keys_names_none() {
        let p = Policy::parse(
            "p.toml",
            "version = 1\nserial = 1\n[[rule]]\nid = \"r\"\neffect = \"deny\"\n",
        )
        .unwrap();
        assert!(p.unknown_keys(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn the_report_is_bounded() {
        let keys: Vec<String> = (0..50).map(|i| format!("\"k{i}\"")).collect();
        let src = format!(
            "version = 1\nserial = 1\n[[rule]]\nid = \"r\"\neffect = \"deny\"\nkeys = [{}]\n",
            keys.join(", ")
        );
        let p = Policy::parse("p.toml", &src).unwrap();
        let errs = p.unknown_keys(&held(&["other"]));
        assert_eq!(errs.len(), MAX_REPORTED + 1);
        assert!(
            errs[MAX_REPORTED]
                .to_string()
                .ends_with("and 30 more keys this signerd does not hold"),
            "{}",
            errs[MAX_REPORTED]
        );
    }
}
