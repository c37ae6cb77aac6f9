//! signerd's policy engine: parse, validate and evaluate the declarative signing policy that
//! security teams own.
//!
//! Evaluation is a pure function of (policy, action, identity): this crate performs no I/O,
//! reads no clock and holds no state, so it can be unit-tested, fuzzed and run by
//! `signerctl` exactly as the daemon runs it. The default is deny: a request is allowed only
//! when at least one `allow` rule matches and no `deny` rule does. Raw-digest (blind) signing
//! is never matched by a rule that does not name the `raw_digest` kind explicitly.

mod action;
mod parse;

pub use action::{Action, Erc20Call, Kind, TypedDataFacts};
pub use parse::{Effect, MAX_POLICY_BYTES, Policy, PolicyError, Rule};

/// Who is asking: the identity the daemon mapped from the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client's id, as named in policy rules.
    pub id: String,
    /// The client's roles.
    pub roles: Vec<String>,
}

/// The outcome of evaluating a request against a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// At least one allow rule matched and no deny rule did.
    Allow {
        /// Ids of every allow rule that matched.
        rules: Vec<String>,
    },
    /// A deny rule matched, or no allow rule did.
    Deny {
        /// The first matching deny rule, or `None` when no rule allows.
        rule: Option<String>,
        /// A human-readable reason, naming the rule.
        reason: String,
    },
}

impl Decision {
    /// Whether the request may be signed.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

impl Policy {
    /// Evaluates `action` requested by `who`.
    pub fn evaluate(&self, action: &Action, who: &Identity) -> Decision {
        let mut allows = Vec::new();
        for rule in self.rules() {
            if !rule.matches(action, who) {
                continue;
            }
            match rule.effect {
                Effect::Deny => {
                    return Decision::Deny {
                        rule: Some(rule.id.clone()),
                        reason: format!("denied by rule `{}`", rule.id),
                    };
                }
                Effect::Allow => allows.push(rule.id.clone()),
            }
        }
        if allows.is_empty() {
            Decision::Deny {
                rule: None,
                reason: "no rule allows".to_owned(),
            }
        } else {
            Decision::Allow { rules: allows }
        }
    }
}

impl Rule {
    /// Whether every matcher of this rule holds for the request.
    pub fn matches(&self, action: &Action, who: &Identity) -> bool {
        // Blind signing must be named: a rule without `kinds` covers everything else.
        let kind_ok = match &self.kinds {
            Some(kinds) => kinds.contains(&action.kind),
            None => action.kind != Kind::RawDigest,
        };
        kind_ok
            && self.clients.as_ref().is_none_or(|c| c.contains(&who.id))
            && self
                .roles
                .as_ref()
                .is_none_or(|r| who.roles.iter().any(|role| r.contains(role)))
            && self.keys.as_ref().is_none_or(|k| k.contains(&action.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(src: &str) -> Policy {
        match Policy::parse("policy.toml", src) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn app() -> Identity {
        Identity {
            id: "app".into(),
            roles: vec!["requester".into()],
        }
    }

    const BASE: &str = r#"
version = 1
serial = 3

[[rule]]
id = "app-signs"
effect = "allow"
clients = ["app"]
keys = ["hot"]

[[rule]]
id = "blind-ed"
effect = "allow"
roles = ["requester"]
keys = ["ed"]
kinds = ["raw_digest"]

[[rule]]
id = "no-creation"
description = "contract creation is never allowed"
effect = "deny"
kinds = ["contract_creation"]
"#;

    #[test]
    fn default_deny_names_no_rule() {
        let p = policy(BASE);
        let d = p.evaluate(&Action::new("cold", Kind::NativeTransfer), &app());
        assert_eq!(
            d,
            Decision::Deny {
                rule: None,
                reason: "no rule allows".into()
            }
        );
    }

    #[test]
    fn allow_lists_matching_rules() {
        let p = policy(BASE);
        let d = p.evaluate(&Action::new("hot", Kind::Erc20Transfer), &app());
        assert_eq!(
            d,
            Decision::Allow {
                rules: vec!["app-signs".into()]
            }
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = policy(BASE);
        let d = p.evaluate(&Action::new("hot", Kind::ContractCreation), &app());
        assert_eq!(
            d,
            Decision::Deny {
                rule: Some("no-creation".into()),
                reason: "denied by rule `no-creation`".into()
            }
        );
    }

    #[test]
    fn raw_digest_needs_a_rule_that_names_it() {
        let p = policy(BASE);
        // `app-signs` has no `kinds`, so it does not cover blind signing.
        assert!(
            !p.evaluate(&Action::new("hot", Kind::RawDigest), &app())
                .is_allow()
        );
        assert!(
            p.evaluate(&Action::new("ed", Kind::RawDigest), &app())
                .is_allow()
        );
    }

    #[test]
    fn other_client_and_role_do_not_match() {
        let p = policy(BASE);
        let bob = Identity {
            id: "bob".into(),
            roles: vec!["approver".into()],
        };
        assert!(
            !p.evaluate(&Action::new("hot", Kind::NativeTransfer), &bob)
                .is_allow()
        );
        assert!(
            !p.evaluate(&Action::new("ed", Kind::RawDigest), &bob)
                .is_allow()
        );
    }

    #[test]
    fn hash_and_serial_are_exposed() {
        let p = policy(BASE);
        assert_eq!(p.serial(), 3);
        assert_eq!(p.hash_hex().len(), 64);
        assert_ne!(
            p.hash_hex(),
            policy(&BASE.replace("serial = 3", "serial = 4")).hash_hex()
        );
    }
}
