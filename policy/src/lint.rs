//! Lints of `signerctl policy check` about what a rule leaves open without saying so: a deny
//! rule that does not cover blind signing that another rule allows, an approval rule that lets
//! approvers send anywhere, and function signatures whose selector may not be the one the
//! author meant. Also the selector of every signature, so that a reviewer can compare it with
//! the contract's ABI or with calldata.
//!
//! Like [`crate::check`], these are advice: they must never change what a policy means.

use std::fmt;

use alloy_json_abi::Function;
use alloy_primitives::keccak256;

use crate::Policy;
use crate::rule::{Effect, KindSet, Matchers, Rule};
use crate::xref::SignatureRef;

/// A signature with at least this many parameters and no tuple is suspicious: such long
/// parameter lists are usually a struct written without its parentheses.
const FLAT_PARAMS: usize = 7;

/// A function signature written in a rule's `selectors`, and the selector it computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureNote {
    /// The policy file.
    pub file: String,
    /// 1-based line of the signature.
    pub line: usize,
    /// 1-based column of the signature.
    pub column: usize,
    /// The rule's id.
    pub rule: String,
    /// The signature as written.
    pub signature: String,
    /// Its selector, `0x` and 8 hex digits.
    pub selector: String,
}

impl fmt::Display for SignatureNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: rule `{}`: `{}` is selector {}",
            self.file, self.line, self.column, self.rule, self.signature, self.selector
        )
    }
}

/// Every function signature in the policy's `selectors`, in file order, with its selector.
pub fn signatures(policy: &Policy) -> Vec<SignatureNote> {
    let refs = &policy.key_refs;
    refs.signatures
        .iter()
        .map(|s| SignatureNote {
            file: refs.file.clone(),
            line: s.line,
            column: s.column,
            rule: s.rule.clone(),
            signature: s.text.clone(),
            selector: selector_of(&s.text),
        })
        .collect()
}

fn selector_of(signature: &str) -> String {
    format!("0x{}", hex::encode(&keccak256(signature.as_bytes())[..4]))
}

/// The lints of one rule, as messages for a warning about it.
pub(crate) fn rule_lints(policy: &Policy, rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    match rule.effect {
        Effect::Deny => out.extend(blind_left_open(policy, rule)),
        Effect::RequireApproval => out.extend(any_destination(&rule.m)),
        Effect::Allow => {}
    }
    for s in policy
        .key_refs
        .signatures
        .iter()
        .filter(|s| s.rule == rule.id)
    {
        out.extend(flat_struct(s));
    }
    out
}

/// A deny rule without `kinds` does not cover the blind kinds (`raw_digest`, `eip191_binary`,
/// opaque `eip712_typed_data`): if another rule allows one of them for a key the deny covers,
/// the deny (typically a freeze) leaves that signing open.
fn blind_left_open(policy: &Policy, deny: &Rule) -> Option<String> {
    let d = &deny.m;
    if d.kinds_written {
        return None;
    }
    // The blind kinds this deny could cover if it named them: its other matchers must apply
    // to them (a deny on `to` could never cover a digest, which has no destination).
    let coverable = d
        .present()
        .fold(KindSet::BLIND, |k, f| k.and(f.applies_to()));
    if coverable.is_empty() {
        return None;
    }
    let mut open = KindSet(0);
    let mut by: Vec<&str> = Vec::new();
    for o in &policy.rules {
        if o.effect == Effect::Deny || !keys_overlap(d, &o.m) {
            continue;
        }
        let blind = o.m.effective_kinds().and(coverable);
        if !blind.is_empty() {
            open = KindSet(open.0 | blind.0);
            by.push(o.id.as_str());
        }
    }
    if by.is_empty() {
        return None;
    }
    let rules: Vec<String> = by.iter().map(|r| format!("`{r}`")).collect();
    Some(format!(
        "has no `kinds`, so it does not cover blind signing {open}, which {} for keys it covers; name those kinds in `kinds` (a rule without `kinds` covers every kind but the blind ones)",
        if by.len() == 1 {
            format!("rule {} allows", rules.join(", "))
        } else {
            format!("rules {} allow", rules.join(", "))
        }
    ))
}

/// Whether some key can be named by both rules (a rule without `keys` names every key).
fn keys_overlap(a: &Matchers, b: &Matchers) -> bool {
    match (&a.keys, &b.keys) {
        (Some(x), Some(y)) => !x.is_disjoint(y),
        _ => true,
    }
}

/// A `require_approval` rule grants once approved; without a destination matcher it grants
/// sending anywhere, and the approvers alone check where assets go.
fn any_destination(m: &Matchers) -> Option<String> {
    let constrained = m.to.is_some()
        || m.not_to.is_some()
        || m.contracts.is_some()
        || m.counterparty.is_some()
        || m.permit_spenders.is_some()
        || m.verifying_contracts.is_some();
    let with_destination = KindSet(KindSet::DEST.0 | KindSet::SAFE.0 | KindSet::GRANTS.0);
    let kinds = m.effective_kinds().and(with_destination);
    if constrained || kinds.is_empty() {
        return None;
    }
    Some(format!(
        "has no destination matcher (`to`, `not_to`, `contracts`, `erc20_counterparty`, `permit_spenders`, `verifying_contracts`): once approved, it signs {kinds} to any destination, and only the approvers check where assets go; add one (e.g. `to = [\"book:...\"]`)"
    ))
}

/// A long flat parameter list is often a struct written without its parentheses, which
/// hashes to another selector: say both.
fn flat_struct(s: &SignatureRef) -> Option<String> {
    let f = Function::parse(&s.text).ok()?;
    let flat = f.inputs.iter().all(|p| p.components.is_empty());
    if !flat || f.inputs.len() < FLAT_PARAMS {
        return None;
    }
    let types: Vec<String> = f
        .inputs
        .iter()
        .map(|p| p.selector_type().into_owned())
        .collect();
    let as_tuple = format!("{}(({}))", f.name, types.join(","));
    Some(format!(
        "`selectors`: `{}` (line {}, column {}) takes {} parameters, none a tuple; if the function takes a struct, its members go in parentheses: `{as_tuple}` is selector {}, not {}; compare with the contract's ABI",
        s.text,
        s.line,
        s.column,
        f.inputs.len(),
        selector_of(&as_tuple),
        selector_of(&s.text)
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn warnings(body: &str) -> Vec<String> {
        let src = format!("version = 1\nserial = 1\n{body}");
        let p = Policy::parse("p.toml", &src).unwrap_or_else(|e| panic!("{e}"));
        crate::check(&p).iter().map(ToString::to_string).collect()
    }

    fn has(w: &[String], needle: &str) -> bool {
        w.iter().any(|x| x.contains(needle))
    }

    const APPROVERS: &str = "[groups]\ng = [\"a\", \"b\"]\n[approvers]\na = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\nb = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n";

    #[test]
    fn a_deny_without_kinds_that_leaves_blind_signing_open() {
        let freeze = "[[rule]]\nid = \"freeze\"\neffect = \"deny\"\nkeys = [\"hot\"]\n";
        let blind = "[[rule]]\nid = \"digests\"\neffect = \"allow\"\nclients = [\"c\"]\nkeys = [\"hot\", \"ed\"]\nkinds = [\"raw_digest\", \"native_transfer\"]\n";
        let w = warnings(&format!("{freeze}{blind}"));
        assert!(
            has(
                &w,
                "line 4: rule `freeze`: has no `kinds`, so it does not cover blind signing [raw_digest], which rule `digests` allows for keys it covers"
            ),
            "{w:#?}"
        );
        // Naming the kinds covers them.
        let named = freeze.replace(
            "keys = [\"hot\"]",
            "keys = [\"hot\"]\nkinds = [\"raw_digest\", \"native_transfer\"]",
        );
        assert!(!has(
            &warnings(&format!("{named}{blind}")),
            "blind signing ["
        ));
        // Another key's blind signing is not this deny's business.
        let other = blind.replace("keys = [\"hot\", \"ed\"]", "keys = [\"ed\"]");
        assert!(!has(
            &warnings(&format!("{freeze}{other}")),
            "blind signing ["
        ));
        // Without blind allow rules there is nothing to warn about.
        let plain = blind.replace("\"raw_digest\", ", "");
        assert!(!has(
            &warnings(&format!("{freeze}{plain}")),
            "blind signing ["
        ));
        // A deny on destinations could never cover a digest.
        let to = freeze.replace(
            "keys = [\"hot\"]",
            "keys = [\"hot\"]\nto = [\"0x00000000000000000000000000000000000000aa\"]",
        );
        assert!(!has(&warnings(&format!("{to}{blind}")), "blind signing ["));
        // A deny without `keys` covers every key.
        let all = freeze.replace("keys = [\"hot\"]\n", "");
        assert!(has(&warnings(&format!("{all}{blind}")), "blind signing ["));
    }

    #[test]
    fn an_approval_rule_without_a_destination() {
        let rule = format!(
            "{APPROVERS}[[rule]]\nid = \"big\"\neffect = \"require_approval\"\nkeys = [\"hot\"]\nchain_ids = [1]\nvalue_min = \"10 ether\"\napprovals = [{{ group = \"g\", min = 1 }}]\nttl = \"1h\"\n"
        );
        let w = warnings(&rule);
        assert!(
            has(
                &w,
                "line 9: rule `big`: has no destination matcher (`to`, `not_to`, `contracts`, `erc20_counterparty`, `permit_spenders`, `verifying_contracts`): once approved, it signs [native_transfer, erc20_transfer, erc20_transfer_from, erc20_approve, contract_call, eip712_safe_tx] to any destination"
            ),
            "{w:#?}"
        );
        for m in [
            "to = [\"0x00000000000000000000000000000000000000aa\"]",
            "not_to = [\"0x00000000000000000000000000000000000000aa\"]",
        ] {
            let w = warnings(&rule.replace("chain_ids = [1]", &format!("chain_ids = [1]\n{m}")));
            assert!(!has(&w, "no destination matcher"), "{m}: {w:#?}");
        }
        // Messages have no destination.
        let w = warnings(&rule.replace(
            "value_min = \"10 ether\"",
            "kinds = [\"eip191_message\"]\nmessage_max_bytes = 10",
        ));
        assert!(!has(&w, "no destination matcher"), "{w:#?}");
    }

    const ROUTER: &str =
        "exactInputSingle(address,address,uint24,address,uint256,uint256,uint256,uint160)";

    #[test]
    fn a_struct_written_flat_is_suspicious_and_both_selectors_are_shown() {
        let rule = format!(
            "[[rule]]\nid = \"swap\"\neffect = \"deny\"\nkinds = [\"contract_call\"]\nselectors = [\"0xa9059cbb\", \"{ROUTER}\"]\n"
        );
        let w = warnings(&rule);
        // The tuple form is Uniswap v3's SwapRouter selector 0x414bf389.
        assert!(
            has(
                &w,
                &format!(
                    "line 4: rule `swap`: `selectors`: `{ROUTER}` (line 7, column 28) takes 8 parameters, none a tuple; if the function takes a struct, its members go in parentheses: `exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))` is selector 0x414bf389, not {}",
                    selector_of(ROUTER)
                )
            ),
            "{w:#?}"
        );
        let tuple = String::from(
            "[[rule]]\nid = \"swap\"\neffect = \"deny\"\nkinds = [\"contract_call\"]\nselectors = [\"exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))\", \"transfer(address,uint256)\"]\n",
        );
        assert!(!has(&warnings(&tuple), "none a tuple"));
        let p = Policy::parse("p.toml", &format!("version = 1\nserial = 1\n{tuple}")).unwrap();
        let notes: Vec<String> = signatures(&p).iter().map(ToString::to_string).collect();
        assert_eq!(
            notes,
            vec![
                "p.toml:7:14: rule `swap`: `exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))` is selector 0x414bf389",
                "p.toml:7:100: rule `swap`: `transfer(address,uint256)` is selector 0xa9059cbb",
            ]
        );
        // Hex selectors are not signatures.
        let p = Policy::parse("p.toml", &format!("version = 1\nserial = 1\n{rule}")).unwrap();
        assert_eq!(signatures(&p).len(), 1);
    }
}
