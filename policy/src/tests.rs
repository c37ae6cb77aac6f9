//! One test per sentence of the evaluation semantics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use alloy_primitives::{Address, U256};

use super::*;

pub(crate) fn policy(src: &str) -> Policy {
    match Policy::parse("policy.toml", src) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

pub(crate) fn who(id: &str) -> Identity {
    Identity {
        id: id.into(),
        roles: vec!["requester".into()],
    }
}

const USDC: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
const DAI: &str = "0x6b175474e89094c44da98b954eedeac495271d0f";
const ALICE: &str = "0x00000000000000000000000000000000000a11ce";
const BOB: &str = "0x0000000000000000000000000000000000000b0b";
const MALLORY: &str = "0x000000000000000000000000000000000000bad0";

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

fn eth(milli: u64) -> U256 {
    U256::from(milli) * U256::from(1_000_000_000_000_000u64)
}

fn native(key: &str, to: &str, value: U256) -> Action {
    let mut a = Action::new(key, Kind::NativeTransfer);
    a.chain_id = Some(1);
    a.to = Some(addr(to));
    a.value = value;
    // Fee-free unless a test says otherwise, so amounts below are values only.
    a.gas_limit = Some(21_000);
    a.max_fee_per_gas = Some(U256::ZERO);
    a
}

fn erc20(kind: Kind, token: &str, counterparty: &str, amount: U256) -> Action {
    let mut a = Action::new("hot", kind);
    a.chain_id = Some(1);
    a.to = Some(addr(token));
    a.gas_limit = Some(60_000);
    a.max_fee_per_gas = Some(U256::ZERO);
    a.selector = Some(match kind {
        Kind::Erc20Approve => [0x09, 0x5e, 0xa7, 0xb3],
        Kind::Erc20TransferFrom => [0x23, 0xb8, 0x72, 0xdd],
        _ => [0xa9, 0x05, 0x9c, 0xbb],
    });
    a.erc20 = Some(Erc20Call {
        token: addr(token),
        from: None,
        counterparty: addr(counterparty),
        amount,
    });
    a
}

/// An EIP-2612 permit of `token` on chain 1; without a spender or value, its grant was not
/// decoded.
fn permit(token: &str, spender: Option<&str>, value: Option<U256>) -> Action {
    let mut a = Action::new("hot", Kind::Eip712Permit);
    a.typed_data = Some(TypedDataFacts {
        primary_type: "Permit".into(),
        domain_name: Some("USD Coin".into()),
        domain_chain_id: Some(U256::from(1)),
        verifying_contract: Some(addr(token)),
        standard: Some(TypedStandard::Eip2612Permit),
        grants: match (spender, value) {
            (Some(s), Some(v)) => vec![TokenGrant {
                token: addr(token),
                counterparty: addr(s),
                amount: v,
            }],
            _ => vec![],
        },
        ..TypedDataFacts::default()
    });
    a
}

/// A usage store for tests: fixed `Used` per limit id.
struct Fixed(HashMap<&'static str, Used>);

impl Usage for Fixed {
    fn used(&self, b: &BucketKey, _: u64, _: i64) -> Used {
        self.0.get(b.limit_id()).copied().unwrap_or(Used::ZERO)
    }
}

fn eval_at(p: &Policy, a: &Action, id: &Identity, now: i64, usage: &dyn Usage) -> Evaluation {
    let r = Request {
        action: a,
        identity: id,
        now_unix: now,
        usage,
    };
    let fast = p.evaluate_request(&r);
    // The exhaustive path must always agree with the indexed one.
    assert_eq!(fast.decision, p.explain_request(&r).decision);
    fast
}

fn eval(p: &Policy, a: &Action) -> Evaluation {
    eval_at(p, a, &who("app"), 1_767_268_800, &NoUsage)
}

fn denied_by(e: &Evaluation) -> Option<&str> {
    match &e.decision {
        Decision::Deny { rule, .. } => rule.as_deref(),
        _ => panic!("expected a deny, got {:?}", e.decision),
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
    let d = p.evaluate(&Action::new("cold", Kind::NativeTransfer), &who("app"));
    assert_eq!(
        d,
        Decision::Deny {
            rule: None,
            reason: "no rule allows".into()
        }
    );
}

#[test]
fn allow_lists_every_matching_allow_rule() {
    let p = policy(&format!(
        "{BASE}\n[[rule]]\nid = \"also\"\neffect = \"allow\"\nkinds = [\"erc20_transfer\"]\n"
    ));
    let d = p.evaluate(&Action::new("hot", Kind::Erc20Transfer), &who("app"));
    assert_eq!(
        d,
        Decision::Allow {
            rules: vec!["app-signs".into(), "also".into()]
        }
    );
}

#[test]
fn any_matching_deny_wins_over_allow_and_approval() {
    let p = policy(&format!(
        r#"{BASE}
[groups]
ops = ["o1", "o2"]
[approvers]
o1 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
o2 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
[[rule]]
id = "creation-needs-ops"
effect = "require_approval"
kinds = ["contract_creation"]
approvals = [{{ group = "ops", min = 1 }}]
ttl = "1h"
"#
    ));
    let d = p.evaluate(&Action::new("hot", Kind::ContractCreation), &who("app"));
    assert_eq!(
        d,
        Decision::Deny {
            rule: Some("no-creation".into()),
            reason: "denied by rule `no-creation`".into()
        }
    );
}

#[test]
fn approval_requirements_of_matching_rules_stack_and_beat_allow() {
    let p = policy(
        r#"
version = 1
serial = 1
[groups]
treasury = ["t1", "t2", "t3"]
security = ["s1", "s2"]
[approvers]
t1 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
t2 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
t3 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
s1 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
s2 = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"

[[rule]]
id = "pay"
effect = "allow"
keys = ["hot"]

[[rule]]
id = "big"
effect = "require_approval"
keys = ["hot"]
value_min = "10 ether"
approvals = [{ group = "treasury", min = 2 }]
ttl = "4h"
veto = false

[[rule]]
id = "huge"
effect = "require_approval"
keys = ["hot"]
value_min = "100 ether"
approvals = [{ group = "treasury", min = 3 }, { group = "security", min = 1 }]
ttl = "1h"
"#,
    );
    let small = native("hot", BOB, eth(1_000));
    assert!(eval(&p, &small).decision.is_allow());

    let big = native("hot", BOB, eth(10_000));
    match eval(&p, &big).decision {
        Decision::NeedsApproval {
            rules,
            requirements,
        } => {
            assert_eq!(rules, vec!["big".to_owned()]);
            assert_eq!(requirements.len(), 1);
            assert_eq!(requirements[0].min, 2);
            assert_eq!(requirements[0].ttl_secs, 4 * 3600);
            assert!(!requirements[0].veto);
            assert_eq!(requirements[0].members, vec!["t1", "t2", "t3"]);
        }
        d => panic!("{d:?}"),
    }

    let huge = native("hot", BOB, eth(100_000));
    match eval(&p, &huge).decision {
        Decision::NeedsApproval {
            rules,
            requirements,
        } => {
            assert_eq!(rules, vec!["big".to_owned(), "huge".to_owned()]);
            let t = &requirements[0];
            // Largest min, shortest ttl, veto if any rule grants it.
            assert_eq!(
                (t.group.as_str(), t.min, t.ttl_secs, t.veto),
                ("treasury", 3, 3600, true)
            );
            let s = &requirements[1];
            assert_eq!((s.group.as_str(), s.min), ("security", 1));
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn require_approval_rules_need_no_allow_rule() {
    let p = policy(
        r#"
version = 1
serial = 1
[groups]
g = ["a", "b"]
[approvers]
a = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
b = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
[[rule]]
id = "only-with-approval"
effect = "require_approval"
keys = ["cold"]
approvals = [{ group = "g", min = 1 }]
ttl = "30m"
"#,
    );
    let d = eval(&p, &native("cold", BOB, eth(1))).decision;
    assert_eq!(d.as_str(), "require_approval");
}

#[test]
fn allow_needs_an_allow_rule_and_every_limit() {
    let p = policy(
        r#"
version = 1
serial = 1
[[asset]]
chain_id = 1
contract = "native"
symbol = "ETH"
decimals = 18

[[rule]]
id = "pay"
effect = "allow"
keys = ["hot"]

[[limit]]
id = "daily-eth"
keys = ["hot"]
chain_ids = [1]
asset = "native"
window = "24h"
max_amount = "2 ETH"

[[limit]]
id = "per-tx"
asset = { chain_id = 1, contract = "native" }
per_tx_max = "1 ether"
"#,
    );
    let a = native("hot", BOB, eth(700));
    let fresh = eval(&p, &a);
    assert!(fresh.decision.is_allow());
    assert_eq!(fresh.charges.len(), 1);
    assert_eq!(
        fresh.charges[0].bucket.as_str(),
        "limit=daily-eth|key=hot|asset=1:native"
    );
    assert_eq!(fresh.charges[0].amount, eth(700));

    let usage = Fixed(HashMap::from([(
        "daily-eth",
        Used {
            amount: eth(1_500),
            count: 3,
        },
    )]));
    let e = eval_at(&p, &a, &who("app"), 0, &usage);
    assert_eq!(
        e.decision,
        Decision::Deny {
            rule: Some("daily-eth".into()),
            reason: "limit `daily-eth`: 1.5 ETH used + 0.7 ETH requested > 2 ETH in 24h".into()
        }
    );
    assert!(e.charges.is_empty());

    let e = eval(&p, &native("hot", BOB, eth(1_001)));
    assert_eq!(denied_by(&e), Some("per-tx"));
    assert!(
        e.explanation
            .iter()
            .any(|l| l == "limit `per-tx`: 1.001 ETH requested > 1 ETH per transaction")
    );

    // Without an allow rule, limits do not matter: default deny.
    assert_eq!(denied_by(&eval(&p, &native("cold", BOB, eth(1)))), None);
}

#[test]
fn indeterminate_matchers_deny_and_never_allow() {
    let src = format!(
        r#"
version = 1
serial = 1
[[rule]]
id = "small-usdc"
effect = "allow"
kinds = ["erc20_transfer"]
erc20_amount_max = 1000

[[asset]]
chain_id = 1
contract = "{USDC}"
symbol = "USDC"
decimals = 6

[[rule]]
id = "permits-to-router"
effect = "allow"
kinds = ["eip712_permit"]
permit_spenders = ["{BOB}"]
"#
    );
    let p = policy(&src);
    let mut a = erc20(Kind::Erc20Transfer, USDC, BOB, U256::from(5));
    assert!(eval(&p, &a).decision.is_allow());
    a.erc20 = None; // kind says ERC-20 but the arguments could not be decoded
    let e = eval(&p, &a);
    assert_eq!(denied_by(&e), None);
    assert!(
        e.explanation
            .iter()
            .any(|l| l.contains("is indeterminate") && l.contains("does not allow"))
    );

    assert!(
        eval(&p, &permit(USDC, Some(BOB), Some(U256::from(1))))
            .decision
            .is_allow()
    );
    assert!(
        !eval(&p, &permit(USDC, None, Some(U256::from(1))))
            .decision
            .is_allow()
    );

    // A deny rule that is indeterminate matches (fail closed).
    let p = policy(&format!(
        r#"{src}
[[rule]]
id = "no-mallory"
effect = "deny"
erc20_counterparty = ["{MALLORY}"]
"#
    ));
    let mut a = erc20(Kind::Erc20Transfer, USDC, BOB, U256::from(5));
    assert!(eval(&p, &a).decision.is_allow());
    a.erc20 = None;
    let e = eval(&p, &a);
    assert_eq!(denied_by(&e), Some("no-mallory"));
    match &e.decision {
        Decision::Deny { reason, .. } => assert!(reason.contains("indeterminate"), "{reason}"),
        _ => unreachable!(),
    }
    // A message is not an ERC-20 call: the deny rule simply does not apply.
    let p2 = policy(&format!(
        "{src}\n[[rule]]\nid = \"msgs\"\neffect = \"allow\"\nkinds = [\"eip191_message\"]\n[[rule]]\nid = \"no-mallory\"\neffect = \"deny\"\nerc20_counterparty = [\"{MALLORY}\"]\n"
    ));
    assert!(
        eval(&p2, &Action::new("hot", Kind::Eip191Message))
            .decision
            .is_allow()
    );
}

#[test]
fn indeterminate_require_approval_rule_denies() {
    let p = policy(
        r#"
version = 1
serial = 1
[groups]
g = ["a", "b"]
[approvers]
a = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
b = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
[[rule]]
id = "all"
effect = "allow"
[[rule]]
id = "big-transfers"
effect = "require_approval"
kinds = ["erc20_transfer"]
erc20_amount_min = 1000000
approvals = [{ group = "g", min = 1 }]
ttl = "1h"
"#,
    );
    let mut a = erc20(Kind::Erc20Transfer, USDC, BOB, U256::from(5));
    assert!(eval(&p, &a).decision.is_allow());
    a.erc20 = None;
    assert_eq!(denied_by(&eval(&p, &a)), Some("big-transfers"));
}

#[test]
fn missing_gas_fields_are_indeterminate() {
    let p = policy(
        r#"
version = 1
serial = 1
[[rule]]
id = "cheap"
effect = "allow"
gas_limit_max = 100000
max_fee_per_gas_max = "50 gwei"
"#,
    );
    let mut a = native("hot", BOB, eth(1));
    a.gas_limit = None;
    a.max_fee_per_gas = None;
    assert!(!eval(&p, &a).decision.is_allow());
    a.gas_limit = Some(21_000);
    a.max_fee_per_gas = Some(U256::from(30_000_000_000u64));
    assert!(eval(&p, &a).decision.is_allow());
    a.max_fee_per_gas = Some(U256::from(51_000_000_000u64));
    assert!(!eval(&p, &a).decision.is_allow());
    // Not a transaction: a gas matcher cannot match it.
    assert!(
        !eval(&p, &Action::new("hot", Kind::Eip191Message))
            .decision
            .is_allow()
    );
}

#[test]
fn raw_digest_needs_a_rule_that_names_it() {
    let p = policy(BASE);
    // `app-signs` has no `kinds`, so it does not cover blind signing.
    let e = p.explain_request(&Request {
        action: &Action::new("hot", Kind::RawDigest),
        identity: &who("app"),
        now_unix: 0,
        usage: &NoUsage,
    });
    assert!(!e.decision.is_allow());
    assert!(
        e.explanation.iter().any(|l| l.contains("blind signing")),
        "{:?}",
        e.explanation
    );
    assert!(
        p.evaluate(&Action::new("ed", Kind::RawDigest), &who("app"))
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
fn groups_match_their_members() {
    let p = policy(
        r#"
version = 1
serial = 1
[groups]
payments = ["svc-a", "svc-b"]
[[rule]]
id = "pay"
effect = "allow"
groups = ["payments"]
"#,
    );
    let a = native("hot", BOB, eth(1));
    assert!(
        eval_at(&p, &a, &who("svc-b"), 0, &NoUsage)
            .decision
            .is_allow()
    );
    assert!(
        !eval_at(&p, &a, &who("svc-c"), 0, &NoUsage)
            .decision
            .is_allow()
    );
}

#[test]
fn address_books_to_and_not_to() {
    let p = policy(&format!(
        r#"
version = 1
serial = 1
[address_books.payees]
addresses = ["{ALICE}", "{BOB}"]
[address_books.blocked]
addresses = ["{MALLORY}"]

[[rule]]
id = "to-payees"
effect = "allow"
kinds = ["native_transfer"]
to = ["book:payees"]

[[rule]]
id = "anything-but-blocked"
effect = "allow"
kinds = ["contract_call"]
not_to = ["book:blocked", "{ALICE}"]
"#
    ));
    assert!(eval(&p, &native("k", BOB, eth(1))).decision.is_allow());
    assert!(!eval(&p, &native("k", MALLORY, eth(1))).decision.is_allow());
    let mut call = native("k", BOB, U256::ZERO);
    call.kind = Kind::ContractCall;
    assert!(eval(&p, &call).decision.is_allow());
    call.to = Some(addr(MALLORY));
    assert!(!eval(&p, &call).decision.is_allow());
    call.to = Some(addr(ALICE));
    assert!(!eval(&p, &call).decision.is_allow());
}

#[test]
fn selectors_by_signature_and_contracts() {
    let p = policy(&format!(
        r#"
version = 1
serial = 1
[[rule]]
id = "swap"
effect = "allow"
kinds = ["contract_call", "erc20_approve"]
contracts = ["{BOB}"]
selectors = ["swapExactTokensForTokens(uint256,uint256,address[],address,uint256)", "0x095ea7b3"]
"#
    ));
    let mut call = native("k", BOB, U256::ZERO);
    call.kind = Kind::ContractCall;
    call.selector = Some([0x38, 0xed, 0x17, 0x39]);
    assert!(eval(&p, &call).decision.is_allow());
    call.selector = Some([0x18, 0xcb, 0xaf, 0xe5]); // swapExactTokensForETH
    assert!(!eval(&p, &call).decision.is_allow());
    call.selector = None; // too little calldata for a selector: indeterminate, not allowed
    assert!(!eval(&p, &call).decision.is_allow());
    call.selector = Some([0x38, 0xed, 0x17, 0x39]);
    call.to = Some(addr(ALICE));
    assert!(!eval(&p, &call).decision.is_allow());
    // `contracts` is about calls: a plain transfer to the router is not matched.
    assert!(!eval(&p, &native("k", BOB, eth(1))).decision.is_allow());
}

#[test]
fn field_matchers_imply_the_kinds_they_apply_to() {
    let p = policy(
        r#"
version = 1
serial = 1
[[rule]]
id = "small"
effect = "allow"
value_max = "1 ether"
"#,
    );
    assert!(eval(&p, &native("k", BOB, eth(500))).decision.is_allow());
    assert!(!eval(&p, &native("k", BOB, eth(1_500))).decision.is_allow());
    // value_max is about transactions: it never allows a message.
    assert!(
        !eval(&p, &Action::new("k", Kind::Eip191Message))
            .decision
            .is_allow()
    );
}

#[test]
fn erc20_amount_with_a_symbol_pins_the_token() {
    let p = policy(&format!(
        r#"
version = 1
serial = 1
[[asset]]
chain_id = 1
contract = "{USDC}"
symbol = "USDC"
decimals = 6
[[rule]]
id = "usdc-up-to-2500"
effect = "allow"
kinds = ["erc20_transfer"]
erc20_amount_max = "2500 USDC"
"#
    ));
    assert!(
        eval(
            &p,
            &erc20(Kind::Erc20Transfer, USDC, BOB, U256::from(2_500_000_000u64))
        )
        .decision
        .is_allow()
    );
    assert!(
        !eval(
            &p,
            &erc20(Kind::Erc20Transfer, USDC, BOB, U256::from(2_500_000_001u64))
        )
        .decision
        .is_allow()
    );
    // Same base units of another token are not USDC.
    assert!(
        !eval(&p, &erc20(Kind::Erc20Transfer, DAI, BOB, U256::from(1u64)))
            .decision
            .is_allow()
    );
}

#[test]
fn typed_data_matchers() {
    let p = policy(&format!(
        r#"
version = 1
serial = 1
[[rule]]
id = "usdc-permits"
effect = "allow"
primary_types = ["Permit"]
domain_names = ["USD Coin"]
verifying_contracts = ["{USDC}"]
domain_chain_ids = [1]
permit_spenders = ["{BOB}"]
"#
    ));
    let ok = permit(USDC, Some(BOB), Some(U256::from(1)));
    assert!(eval(&p, &ok).decision.is_allow());
    let mut other = ok.clone();
    other.typed_data.as_mut().unwrap().domain_name = None;
    assert!(!eval(&p, &other).decision.is_allow());
    let mut other = ok.clone();
    other.typed_data.as_mut().unwrap().domain_chain_id = Some(U256::from(10));
    assert!(!eval(&p, &other).decision.is_allow());
    let mut other = ok.clone();
    other.typed_data.as_mut().unwrap().verifying_contract = Some(addr(DAI));
    assert!(!eval(&p, &other).decision.is_allow());
    let mut other = ok;
    other.typed_data.as_mut().unwrap().primary_type = "Order".into();
    assert!(!eval(&p, &other).decision.is_allow());
}

const LIMITS: &str = r#"
version = 1
serial = 1
[[asset]]
chain_id = 1
contract = "native"
symbol = "ETH"
decimals = 18
[[asset]]
chain_id = 1
contract = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
symbol = "USDC"
decimals = 6

[[rule]]
id = "everything"
effect = "allow"
kinds = ["native_transfer", "erc20_transfer", "erc20_transfer_from", "erc20_approve", "contract_call", "eip712_typed_data", "eip712_permit", "eip712_transfer_authorization"]

[[limit]]
id = "eth"
chain_ids = [1]
asset = "native"
per_tx_max = "1 ETH"

[[limit]]
id = "usdc"
asset = "USDC"
per_tx_max = "1000 USDC"
"#;

#[test]
fn a_native_limit_counts_the_value_of_every_transaction() {
    let p = policy(LIMITS);
    assert_eq!(
        denied_by(&eval(&p, &native("hot", BOB, eth(2_000)))),
        Some("eth")
    );
    // Value attached to a contract call or an ERC-20 call is native value too.
    let mut call = native("hot", BOB, eth(2_000));
    call.kind = Kind::ContractCall;
    assert_eq!(denied_by(&eval(&p, &call)), Some("eth"));
    let mut t = erc20(Kind::Erc20Transfer, USDC, BOB, U256::from(1));
    t.value = eth(2_000);
    assert_eq!(denied_by(&eval(&p, &t)), Some("eth"));
    // A token transfer moves no ether: the native limit does not apply.
    let t = erc20(Kind::Erc20Transfer, USDC, BOB, U256::from(1));
    assert!(eval(&p, &t).decision.is_allow());
}

#[test]
fn a_token_limit_counts_transfers_approvals_and_permits() {
    let p = policy(LIMITS);
    let over = U256::from(1_000_000_001u64);
    for kind in [
        Kind::Erc20Transfer,
        Kind::Erc20TransferFrom,
        Kind::Erc20Approve,
    ] {
        assert_eq!(
            denied_by(&eval(&p, &erc20(kind, USDC, BOB, over))),
            Some("usdc"),
            "{kind}"
        );
        assert!(
            eval(&p, &erc20(kind, USDC, BOB, U256::from(5)))
                .decision
                .is_allow()
        );
    }
    assert_eq!(
        denied_by(&eval(&p, &permit(USDC, Some(BOB), Some(over)))),
        Some("usdc")
    );
    assert!(
        eval(&p, &permit(USDC, Some(BOB), Some(U256::from(5))))
            .decision
            .is_allow()
    );
    // The same base units of another token are not limited by the USDC limit.
    assert!(
        eval(&p, &erc20(Kind::Erc20Transfer, DAI, BOB, over))
            .decision
            .is_allow()
    );
}

#[test]
fn a_token_limit_cannot_be_bypassed_by_encoding() {
    let p = policy(LIMITS);
    // An undecodable call to the token contract (e.g. increaseAllowance, or a transfer with
    // dirty padding that the decoder refused) might move tokens: deny.
    let mut call = native("hot", USDC, U256::ZERO);
    call.kind = Kind::ContractCall;
    call.selector = Some([0x39, 0x50, 0x93, 0x51]);
    let e = eval(&p, &call);
    assert_eq!(denied_by(&e), Some("usdc"));
    // Typed data for the token of no recognized standard (opaque).
    let mut opaque = permit(USDC, Some(BOB), None);
    opaque.kind = Kind::Eip712TypedData;
    opaque.typed_data.as_mut().unwrap().primary_type = "TransferWithAuthorization".into();
    opaque.typed_data.as_mut().unwrap().standard = None;
    assert_eq!(denied_by(&eval(&p, &opaque)), Some("usdc"));
    // A permit whose grant was not decoded: the allow rule cannot tell it is a
    // registered token, and the limit cannot count it.
    assert!(!eval(&p, &permit(USDC, Some(BOB), None)).decision.is_allow());
    // An ERC-20 kind whose arguments were not decoded.
    let mut t = erc20(Kind::Erc20Transfer, USDC, BOB, U256::from(1));
    t.erc20 = None;
    assert_eq!(denied_by(&eval(&p, &t)), Some("usdc"));
}

#[test]
fn windowed_limits_count_amount_and_requests() {
    let p = policy(
        r#"
version = 1
serial = 1
[[rule]]
id = "all"
effect = "allow"
[[limit]]
id = "daily"
chain_ids = [1]
asset = "ETH"
window = "24h"
max_amount = "10 ether"
max_count = 3
"#,
    );
    let a = native("hot", BOB, eth(1_000));
    let used = |amount, count| Fixed(HashMap::from([("daily", Used { amount, count })]));
    assert!(
        eval_at(&p, &a, &who("x"), 0, &used(eth(9_000), 2))
            .decision
            .is_allow()
    );
    let e = eval_at(&p, &a, &who("x"), 0, &used(eth(9_000), 3));
    assert_eq!(
        e.decision,
        Decision::Deny {
            rule: Some("daily".into()),
            reason: "limit `daily`: 3 requests used + 1 > 3 in 24h".into()
        }
    );
    assert_eq!(
        denied_by(&eval_at(&p, &a, &who("x"), 0, &used(eth(9_001), 0))),
        Some("daily")
    );
    // A store that cannot answer saturates: fail closed.
    struct Broken;
    impl Usage for Broken {
        fn used(&self, _: &BucketKey, _: u64, _: i64) -> Used {
            Used::SATURATED
        }
    }
    assert_eq!(
        denied_by(&eval_at(&p, &a, &who("x"), 0, &Broken)),
        Some("daily")
    );
}

#[test]
fn limits_key_by_destination_and_client() {
    let p = policy(&format!(
        r#"
version = 1
serial = 1
[[rule]]
id = "all"
effect = "allow"
[[limit]]
id = "per-payee"
chain_ids = [1]
asset = "native"
window = "1h"
max_amount = "1 ether"
key_by = ["client", "destination"]
[[limit]]
id = "to-bob-only"
chain_ids = [1]
asset = "native"
to = ["{BOB}"]
per_tx_max = "0.5 ether"
"#
    ));
    let e = eval_at(
        &p,
        &native("hot", BOB, eth(100)),
        &who("svc|1"),
        0,
        &NoUsage,
    );
    assert_eq!(
        e.charges[0].bucket.as_str(),
        format!("limit=per-payee|client=svc%7C1|destination={BOB}")
    );
    assert_eq!(
        denied_by(&eval(&p, &native("hot", BOB, eth(600)))),
        Some("to-bob-only")
    );
    assert!(
        eval(&p, &native("hot", ALICE, eth(600)))
            .decision
            .is_allow()
    );
}

#[test]
fn hours_use_a_fixed_offset_and_may_cross_midnight() {
    let p = policy(
        r#"
version = 1
serial = 1
[[rule]]
id = "office"
effect = "allow"
hours = { from = "09:00", to = "17:00", utc_offset = "+01:00", days = ["mon", "tue", "wed", "thu", "fri"] }
[[rule]]
id = "night-batch"
effect = "allow"
keys = ["batch"]
hours = { from = "22:00", to = "02:00", utc_offset = "-05:00", days = ["fri"] }
"#,
    );
    let at = |s: &str| crate::time::parse_rfc3339(s).unwrap();
    let a = native("hot", BOB, eth(1));
    let ok = |a: &Action, t: &str| {
        eval_at(&p, a, &who("x"), at(t), &NoUsage)
            .decision
            .is_allow()
    };
    assert!(ok(&a, "2026-01-02T08:30:00Z")); // Fri 09:30 +01:00
    assert!(!ok(&a, "2026-01-02T07:59:00Z")); // Fri 08:59 +01:00
    assert!(!ok(&a, "2026-01-02T16:00:00Z")); // Fri 17:00 +01:00: `to` is exclusive
    assert!(!ok(&a, "2026-01-03T10:00:00Z")); // Saturday
    let b = native("batch", BOB, eth(1));
    assert!(ok(&b, "2026-01-03T04:00:00Z")); // Fri 23:00 -05:00
    assert!(ok(&b, "2026-01-03T06:30:00Z")); // Sat 01:30 -05:00, window opened Friday
    assert!(!ok(&b, "2026-01-03T07:00:00Z")); // Sat 02:00 -05:00
    assert!(!ok(&b, "2026-01-02T06:30:00Z")); // Fri 01:30 -05:00, opened Thursday
    let e = p.explain_request(&Request {
        action: &a,
        identity: &who("x"),
        now_unix: at("2026-01-03T10:00:00Z"),
        usage: &NoUsage,
    });
    assert!(
        e.explanation.iter().any(|l| l.contains(
            "sat 11:00 (+01:00) is outside `hours` 09:00-17:00 (+01:00) on mon,tue,wed,thu,fri"
        )),
        "{:?}",
        e.explanation
    );
}

#[test]
fn rate_limits_count_requests_per_client() {
    let p = policy(
        r#"
version = 1
serial = 1
[groups]
bots = ["bot-1", "bot-2"]
[[rule]]
id = "all"
effect = "allow"
[[rate_limit]]
id = "bots"
groups = ["bots"]
window = "1m"
max_requests = 10
"#,
    );
    let a = native("hot", BOB, eth(1));
    let e = eval_at(&p, &a, &who("bot-1"), 0, &NoUsage);
    assert!(e.decision.is_allow());
    assert_eq!(e.charges[0].bucket.as_str(), "rate_limit=bots|client=bot-1");
    assert_eq!(e.charges[0].max_count, Some(10));
    let full = Fixed(HashMap::from([(
        "bots",
        Used {
            amount: U256::ZERO,
            count: 10,
        },
    )]));
    let e = eval_at(&p, &a, &who("bot-1"), 0, &full);
    assert_eq!(
        e.decision,
        Decision::Deny {
            rule: Some("bots".into()),
            reason: "rate limit `bots`: 10 requests used + 1 > 10 in 1m".into()
        }
    );
    // Other clients are not rate limited by it.
    let e = eval_at(&p, &a, &who("human"), 0, &full);
    assert!(e.decision.is_allow() && e.charges.is_empty());
}

#[test]
fn denied_requests_reserve_nothing_and_approvals_reserve_their_charges() {
    let p = policy(
        r#"
version = 1
serial = 1
[groups]
g = ["a", "b"]
[approvers]
a = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
b = "ed25519:5866666666666666666666666666666666666666666666666666666666666666"
[[rule]]
id = "approve-all"
effect = "require_approval"
approvals = [{ group = "g", min = 1 }]
ttl = "1h"
[[limit]]
id = "n"
window = "1h"
max_count = 5
"#,
    );
    let e = eval(&p, &native("hot", BOB, eth(1)));
    assert_eq!(e.decision.as_str(), "require_approval");
    assert_eq!(e.charges.len(), 1);
    assert_eq!(e.charges[0].bucket.as_str(), "limit=n|key=hot");
    let e = eval(&p, &Action::new("hot", Kind::RawDigest));
    assert!(e.charges.is_empty());
}

#[test]
fn fits_is_the_one_definition_of_within_a_limit() {
    let c = Charge {
        limit_id: "x".into(),
        bucket: BucketKey::for_rate(
            &crate::limit::RateLimit {
                id: "x".into(),
                description: String::new(),
                clients: None,
                groups: None,
                window: crate::time::Duration(60),
                max_requests: 2,
                line: 1,
            },
            &who("a"),
        ),
        window_secs: 60,
        amount: U256::from(5),
        fee: None,
        max_amount: Some(U256::from(10)),
        max_count: Some(2),
        format: AmountFormat::base_units(),
    };
    assert!(fits(
        &c,
        Used {
            amount: U256::from(5),
            count: 1
        }
    ));
    assert!(!fits(
        &c,
        Used {
            amount: U256::from(6),
            count: 0
        }
    ));
    assert!(!fits(
        &c,
        Used {
            amount: U256::ZERO,
            count: 2
        }
    ));
    assert!(!fits(&c, Used::SATURATED));
    assert!(
        !fits(
            &c,
            Used {
                amount: U256::MAX,
                count: 0
            }
        ),
        "overflow must not wrap"
    );
}

#[test]
fn explanation_says_why_rules_did_not_match() {
    let p = policy(BASE);
    let e = p.explain_request(&Request {
        action: &Action::new("cold", Kind::NativeTransfer),
        identity: &who("app"),
        now_unix: 0,
        usage: &NoUsage,
    });
    assert_eq!(
        e.explanation,
        vec![
            "rule `app-signs` (allow) does not match: key `cold` is not in `keys`",
            "rule `blind-ed` (allow) does not match: kind native_transfer is not in `kinds` [raw_digest]",
            "rule `no-creation` (deny) does not match: kind native_transfer is not in `kinds` [contract_creation]",
            "decision: deny: no rule allows",
        ]
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

#[test]
fn rule_matches_reports_three_values() {
    let p = policy(&format!(
        "version = 1\nserial = 1\n[[rule]]\nid = \"d\"\neffect = \"deny\"\nerc20_counterparty = [\"{MALLORY}\"]\n"
    ));
    let r = &p.rules()[0];
    let mut a = erc20(Kind::Erc20Transfer, USDC, MALLORY, U256::from(1));
    assert_eq!(r.matches(&a, &who("x"), 0), Match::Yes);
    a.erc20.as_mut().unwrap().counterparty = addr(BOB);
    assert_eq!(r.matches(&a, &who("x"), 0), Match::No);
    a.erc20 = None;
    assert_eq!(r.matches(&a, &who("x"), 0), Match::Indeterminate);
}

#[test]
fn rules_without_kinds_do_not_cover_the_blind_kinds() {
    let p = policy(BASE);
    for kind in [Kind::RawDigest, Kind::Eip191Binary, Kind::Eip712TypedData] {
        let e = p.explain_request(&Request {
            action: &Action::new("hot", kind),
            identity: &who("app"),
            now_unix: 0,
            usage: &NoUsage,
        });
        assert!(!e.decision.is_allow(), "{kind}");
        assert!(
            e.explanation
                .iter()
                .any(|l| l.contains("is matched only by a rule whose `kinds` names it")),
            "{kind}: {:#?}",
            e.explanation
        );
    }
    let mut m = Action::new("hot", Kind::Eip191Message);
    m.message = Some(MessageFacts {
        len: 5,
        text_head: Some("hello".into()),
    });
    assert!(eval(&p, &m).decision.is_allow());
}

fn message(kind: Kind, text: Option<&str>, len: u64) -> Action {
    let mut a = Action::new("hot", kind);
    a.message = Some(MessageFacts {
        len,
        text_head: text.map(str::to_owned),
    });
    a
}

#[test]
fn message_matchers() {
    let p = policy(
        r#"
version = 1
serial = 1
[[rule]]
id = "sign-in"
effect = "allow"
kinds = ["eip191_message", "eip191_binary"]
message_prefixes = ["example.com wants you to sign in with your Ethereum account:"]
[[rule]]
id = "short"
effect = "allow"
kinds = ["eip191_message"]
message_max_bytes = 10
"#,
    );
    let siwe = "example.com wants you to sign in with your Ethereum account:\n0xabc";
    let a = message(Kind::Eip191Message, Some(siwe), 600);
    assert_eq!(
        eval(&p, &a).decision,
        Decision::Allow {
            rules: vec!["sign-in".into()]
        }
    );
    let other = message(Kind::Eip191Message, Some("evil.example wants you"), 22);
    assert!(!eval(&p, &other).decision.is_allow());
    assert!(
        eval(&p, &message(Kind::Eip191Message, Some("hi"), 2))
            .decision
            .is_allow()
    );
    // A 32-byte message never holds a prefix, even under a rule that names its kind.
    assert!(
        !eval(&p, &message(Kind::Eip191Binary, None, 32))
            .decision
            .is_allow()
    );
    // Missing message facts are indeterminate: a deny rule matches.
    let d = policy(
        "version = 1\nserial = 1\n[[rule]]\nid = \"all\"\neffect = \"allow\"\nkinds = [\"eip191_message\"]\n[[rule]]\nid = \"long\"\neffect = \"deny\"\nkinds = [\"eip191_message\"]\nmessage_max_bytes = 100\n",
    );
    assert_eq!(
        denied_by(&eval(&d, &Action::new("hot", Kind::Eip191Message))),
        Some("long")
    );
    let e = Policy::parse(
        "p.toml",
        &format!(
            "version = 1\nserial = 1\n[[rule]]\nid = \"r\"\neffect = \"allow\"\nmessage_prefixes = [\"{}\"]\n",
            "x".repeat(513)
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("a prefix must be 1 to 512 bytes long"), "{e}");
}

const GRANTS: &str = r#"
version = 1
serial = 1
[[asset]]
chain_id = 1
contract = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
symbol = "USDC"
decimals = 6
[[rule]]
id = "router-permits"
effect = "allow"
kinds = ["eip712_permit", "eip712_transfer_authorization"]
erc20_counterparty = ["0x0000000000000000000000000000000000000b0b"]
erc20_amount_max = "100 USDC"
[[rule]]
id = "polygon-permits"
effect = "allow"
kinds = ["eip712_permit"]
domain_chain_ids = [137]
permit_spenders = ["0x0000000000000000000000000000000000000b0b"]
[[limit]]
id = "usdc"
chain_ids = [1]
asset = "USDC"
window = "24h"
max_amount = "150 USDC"
"#;

#[test]
fn grant_matchers_hold_for_every_grant() {
    let p = policy(GRANTS);
    let ok = permit(USDC, Some(BOB), Some(U256::from(50_000_000u64)));
    assert!(eval(&p, &ok).decision.is_allow());
    let mut auth = ok.clone();
    auth.kind = Kind::Eip712TransferAuthorization;
    assert!(eval(&p, &auth).decision.is_allow());
    // One grant to someone else, or over the bound, and the rule does not match.
    let mut two = ok.clone();
    let td = two.typed_data.as_mut().unwrap();
    td.grants.push(TokenGrant {
        token: addr(USDC),
        counterparty: addr(MALLORY),
        amount: U256::from(1),
    });
    assert!(!eval(&p, &two).decision.is_allow());
    let big = permit(USDC, Some(BOB), Some(U256::from(100_000_001u64)));
    assert!(!eval(&p, &big).decision.is_allow());
    // The amount bound is written in USDC: a grant of another token does not match it.
    let dai = permit(DAI, Some(BOB), Some(U256::from(1)));
    assert!(!eval(&p, &dai).decision.is_allow());
    // Grants count toward the token's limit.
    let usage = Fixed(HashMap::from([(
        "usdc",
        Used {
            amount: U256::from(120_000_000u64),
            count: 1,
        },
    )]));
    let e = eval_at(&p, &ok, &who("app"), 0, &usage);
    assert_eq!(denied_by(&e), Some("usdc"));
}

#[test]
fn permits_of_unregistered_tokens_are_not_allowed_unless_the_chain_is_named() {
    // The amount bound in base units pins no token, so only the registry stops the grant.
    let p = policy(&GRANTS.replace(
        "erc20_amount_max = \"100 USDC\"",
        "erc20_amount_max = 100000000",
    ));
    let polygon_usdc = "0x3c499c542cef5e3811e1192ce70d8cc03d5c3359";
    // USDC on chain 10: not registered, so no limit can count it.
    let mut op = permit(polygon_usdc, Some(BOB), Some(U256::from(1)));
    op.typed_data.as_mut().unwrap().domain_chain_id = Some(U256::from(10));
    let e = p.explain_request(&Request {
        action: &op,
        identity: &who("app"),
        now_unix: 0,
        usage: &NoUsage,
    });
    assert!(!e.decision.is_allow());
    assert!(
        e.explanation
            .iter()
            .any(|l| l.contains("is not a registered [[asset]]")),
        "{:#?}",
        e.explanation
    );
    // A rule that names chain 137 in `domain_chain_ids` takes it there, knowingly.
    let mut polygon = op.clone();
    polygon.typed_data.as_mut().unwrap().domain_chain_id = Some(U256::from(137));
    assert_eq!(
        eval(&p, &polygon).decision,
        Decision::Allow {
            rules: vec!["polygon-permits".into()]
        }
    );
    // Deny rules are not narrowed by the registry.
    let d = policy(&format!(
        "{GRANTS}[[rule]]\nid = \"no-bob\"\neffect = \"deny\"\nkinds = [\"eip712_permit\"]\npermit_spenders = [\"{BOB}\"]\n"
    ));
    assert_eq!(denied_by(&eval(&d, &op)), Some("no-bob"));
}

fn safe(to: &str, value: U256, operation: u8) -> Action {
    let mut a = Action::new("hot", Kind::Eip712SafeTx);
    a.chain_id = Some(1);
    a.to = Some(addr(to));
    a.value = value;
    a.typed_data = Some(TypedDataFacts {
        primary_type: "SafeTx".into(),
        domain_chain_id: Some(U256::from(1)),
        verifying_contract: Some(addr(ALICE)),
        standard: Some(TypedStandard::SafeTx),
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

#[test]
fn safe_transactions_are_matched_and_limited_like_their_call() {
    let p = policy(&format!(
        r#"
version = 1
serial = 1
[[rule]]
id = "safe-payouts"
effect = "allow"
kinds = ["eip712_safe_tx"]
chain_ids = [1]
to = ["{BOB}"]
value_max = "5 ether"
[[limit]]
id = "eth"
chain_ids = [1]
asset = "native"
window = "24h"
max_amount = "3 ether"
"#
    ));
    assert!(eval(&p, &safe(BOB, eth(1_000), 0)).decision.is_allow());
    assert!(!eval(&p, &safe(MALLORY, eth(1_000), 0)).decision.is_allow());
    assert!(!eval(&p, &safe(BOB, eth(6_000), 0)).decision.is_allow());
    assert_eq!(denied_by(&eval(&p, &safe(BOB, eth(4_000), 0))), Some("eth"));
    // A delegatecall can move anything: the limit cannot tell how much.
    assert_eq!(denied_by(&eval(&p, &safe(BOB, eth(1), 1))), Some("eth"));
    // A native refund is bounded by figures the executor picks.
    let mut refund = safe(BOB, eth(1), 0);
    if let Some(s) = refund.typed_data.as_mut().and_then(|t| t.safe_tx.as_mut()) {
        s.gas_price = U256::from(1);
    }
    assert_eq!(denied_by(&eval(&p, &refund)), Some("eth"));
    // Another chain: the rule's chain_ids do not hold.
    let mut other = safe(BOB, eth(1), 0);
    other.chain_id = Some(10);
    assert!(!eval(&p, &other).decision.is_allow());
}

#[test]
fn a_native_limit_counts_the_worst_case_fee_and_explains_it() {
    let p = policy(
        r#"
version = 1
serial = 1
[[rule]]
id = "any"
effect = "allow"
chain_ids = [1]
kinds = ["native_transfer", "contract_call"]
[[limit]]
id = "daily-eth"
chain_ids = [1]
asset = "native"
window = "24h"
max_amount = "10 ether"
[[limit]]
id = "per-tx"
chain_ids = [1]
asset = "native"
per_tx_max = "2 ether"
"#,
    );
    let mut a = native("hot", BOB, eth(1_000));
    a.max_fee_per_gas = Some(U256::from(1_000_000_000u64)); // 1 gwei × 21,000 gas
    let e = p.explain_request(&Request {
        action: &a,
        identity: &who("app"),
        now_unix: 0,
        usage: &NoUsage,
    });
    assert!(e.decision.is_allow());
    assert!(
        e.explanation.iter().any(|l| l
            == "limit `daily-eth`: 0 ether used + 1.000021 ether requested (value 1 ether + fee up to 0.000021 ether) <= 10 ether in 24h"),
        "{:#?}",
        e.explanation
    );
    assert!(
        e.explanation
            .iter()
            .any(|l| l == "limit `daily-eth` counts ether on chain 1"),
        "{:#?}",
        e.explanation
    );
    let daily = e
        .charges
        .iter()
        .find(|c| c.limit_id == "daily-eth")
        .unwrap();
    assert_eq!(daily.amount, eth(1_000) + U256::from(21_000_000_000_000u64));
    assert_eq!(daily.fee, Some(U256::from(21_000_000_000_000u64)));
    // Value 0 and a fee of 21,000 × 4,760,000 gwei = 99.96 ether.
    let mut zero = native("hot", BOB, U256::ZERO);
    zero.max_fee_per_gas = Some(U256::from(4_760_000_000_000_000u64));
    let e = eval(&p, &zero);
    let Decision::Deny { rule, reason } = &e.decision else {
        panic!("{:?}", e.decision)
    };
    assert_eq!(rule.as_deref(), Some("daily-eth"));
    assert_eq!(
        reason,
        "limit `daily-eth`: 0 ether used + 99.96 ether requested (value 0 ether + fee up to 99.96 ether) > 10 ether in 24h"
    );
    // Per-transaction limits count the fee too.
    let mut b = native("hot", BOB, eth(1_990));
    b.max_fee_per_gas = Some(U256::from(1_000_000_000_000u64));
    let e = eval(&p, &b);
    let Decision::Deny { rule, reason } = &e.decision else {
        panic!("{:?}", e.decision)
    };
    assert_eq!(rule.as_deref(), Some("per-tx"));
    assert!(
        reason.contains("(value 1.99 ether + fee up to 0.021 ether) > 2 ether per transaction"),
        "{reason}"
    );
}

#[test]
fn a_limit_may_count_one_asset_on_several_chains() {
    let src = r#"
version = 1
serial = 1
[[asset]]
chain_id = 1
contract = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
symbol = "USDC"
decimals = 6
[[asset]]
chain_id = 10
contract = "0x0b2c639c533813f4aa9d7837caf62653d097ff85"
symbol = "USDC"
decimals = 6
[[rule]]
id = "any"
effect = "allow"
chain_ids = [1, 10]
kinds = ["native_transfer", "erc20_transfer"]
[[limit]]
id = "eth"
chain_ids = [10, 1]
asset = "native"
window = "24h"
max_amount = "1 ether"
[[limit]]
id = "usdc"
chain_ids = [1, 10]
asset = "USDC"
window = "24h"
max_amount = "100 USDC"
"#;
    let p = policy(src);
    let mut a = native("hot", BOB, eth(500));
    a.chain_id = Some(10);
    let e = eval(&p, &a);
    assert_eq!(
        e.charges[0].bucket.as_str(),
        "limit=eth|key=hot|asset=1:native+10:native"
    );
    let mut t = erc20(
        Kind::Erc20Transfer,
        "0x0b2c639c533813f4aa9d7837caf62653d097ff85",
        BOB,
        U256::from(5_000_000u64),
    );
    t.chain_id = Some(10);
    let e = eval(&p, &t);
    assert!(e.decision.is_allow());
    let usdc = e.charges.iter().find(|c| c.limit_id == "usdc").unwrap();
    assert_eq!(
        usdc.bucket.as_str(),
        "limit=usdc|key=hot|asset=1:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48+10:0x0b2c639c533813f4aa9d7837caf62653d097ff85"
    );
    // A single-chain limit keeps its bucket name.
    let one = policy(&src.replace("chain_ids = [10, 1]", "chain_ids = [1]"));
    let e = eval(&one, &native("hot", BOB, eth(1)));
    assert_eq!(
        e.charges[0].bucket.as_str(),
        "limit=eth|key=hot|asset=1:native"
    );
    // The symbol must be registered on every chain, with the same decimals.
    let e = Policy::parse(
        "p.toml",
        &src.replace(
            "chain_ids = [1, 10]\nasset = \"USDC\"",
            "chain_ids = [1, 10, 137]\nasset = \"USDC\"",
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`USDC` is not registered on chain 137"), "{e}");
    let e = Policy::parse(
        "p.toml",
        &src.replacen("decimals = 6\n[[rule]]", "decimals = 18\n[[rule]]", 1),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("has 18 decimals on chain 10 but 6 on chain 1"),
        "{e}"
    );
}
