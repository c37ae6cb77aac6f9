//! Property tests: limits hold under any interleaving of requests, the rule index never changes
//! a decision, and no input panics the parsers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;

use alloy_primitives::{Address, U256};
use proptest::prelude::*;

use crate::cases::tests::EXAMPLES;
use crate::{
    Action, BucketKey, Charge, Decision, Identity, Kind, NoUsage, Policy, Request, Usage, Used,
    fits, run_tests,
};

/// An in-memory usage store with sliding windows: the model of what the daemon keeps.
#[derive(Default)]
struct Store {
    /// (bucket, time, amount)
    records: RefCell<Vec<(BucketKey, i64, U256)>>,
}

impl Usage for Store {
    fn used(&self, bucket: &BucketKey, window_secs: u64, now: i64) -> Used {
        let since = now - i64::try_from(window_secs).unwrap();
        let mut used = Used::ZERO;
        for (b, t, a) in self.records.borrow().iter() {
            if b == bucket && *t > since && *t <= now {
                used.amount += *a;
                used.count += 1;
            }
        }
        used
    }
}

impl Store {
    /// Reserves all of a request's charges or none, re-checking each with [`fits`] as the
    /// daemon must do atomically.
    fn reserve(&self, charges: &[Charge], now: i64) -> bool {
        let ok = charges
            .iter()
            .all(|c| fits(c, self.used(&c.bucket, c.window_secs, now)));
        if ok {
            let mut r = self.records.borrow_mut();
            for c in charges {
                r.push((c.bucket.clone(), now, c.amount));
            }
        }
        ok
    }
}

const WINDOW: i64 = 3600;
const MAX_AMOUNT: u64 = 1_000;
const MAX_COUNT: u64 = 7;
const PER_TX: u64 = 400;

fn limit_policy() -> Policy {
    Policy::parse(
        "p.toml",
        &format!(
            r#"
version = 1
serial = 1
[[rule]]
id = "all"
effect = "allow"
[[limit]]
id = "velocity"
chain_ids = [1]
asset = "native"
per_tx_max = {PER_TX}
window = "1h"
max_amount = {MAX_AMOUNT}
max_count = {MAX_COUNT}
[[rate_limit]]
id = "rate"
window = "10m"
max_requests = 5
"#
        ),
    )
    .unwrap()
}

fn transfer(key: &str, value: u64) -> Action {
    let mut a = Action::new(key, Kind::NativeTransfer);
    a.chain_id = Some(1);
    a.to = Some(Address::repeat_byte(0xb0));
    a.value = U256::from(value);
    a
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// No sequence of concurrent requests ever exceeds a limit: requests in a batch are all
    /// evaluated against the same usage snapshot (as concurrent requests are), then reserved
    /// in an arbitrary order with `fits`; afterwards every window holds at most the maximum.
    #[test]
    fn no_interleaving_of_requests_exceeds_a_limit(
        batches in prop::collection::vec(
            (0i64..1200, prop::collection::vec((0u64..600, 0usize..2, 0usize..3), 1..6), any::<u64>()),
            1..40,
        )
    ) {
        let p = limit_policy();
        let store = Store::default();
        let mut now = 1_767_268_800i64;
        for (dt, requests, order_seed) in batches {
            now += dt;
            let mut pending = Vec::new();
            for (value, key, client) in &requests {
                let a = transfer(["hot", "warm"][*key], *value);
                let who = Identity { id: format!("client-{client}"), roles: vec![] };
                let e = p.evaluate_request(&Request { action: &a, identity: &who, now_unix: now, usage: &store });
                if let Decision::Allow { .. } = e.decision {
                    prop_assert!(*value <= PER_TX);
                    pending.push(e.charges);
                }
            }
            // Reserve in an order chosen by the seed.
            let n = pending.len();
            for i in 0..n {
                let j = i + usize::try_from(order_seed.rotate_left(u32::try_from(i).unwrap()) % (n - i) as u64).unwrap();
                pending.swap(i, j);
            }
            for charges in &pending {
                store.reserve(charges, now);
            }
            // Invariant: every window ending at a record's time holds at most the maximum.
            let records = store.records.borrow().clone();
            for (bucket, t, _) in &records {
                let (mut amount, mut count) = (U256::ZERO, 0u64);
                for (b, u, a) in &records {
                    if b == bucket && *u > t - if bucket.limit_id() == "rate" { 600 } else { WINDOW } && u <= t {
                        amount += *a;
                        count += 1;
                    }
                }
                if bucket.limit_id() == "velocity" {
                    prop_assert!(amount <= U256::from(MAX_AMOUNT), "{bucket}: {amount}");
                    prop_assert!(count <= MAX_COUNT, "{bucket}: {count}");
                } else {
                    prop_assert!(count <= 5, "{bucket}: {count}");
                }
            }
        }
    }

    /// The index is only an optimisation: indexed and exhaustive evaluation always agree.
    #[test]
    fn the_index_never_changes_a_decision(
        rules in prop::collection::vec(
            (0usize..4, prop::option::of(0usize..3), prop::option::of(prop::collection::vec(0usize..9, 1..4)), prop::option::of(0u64..100), prop::option::of(0usize..2)),
            1..30,
        ),
        actions in prop::collection::vec((0usize..3, 0usize..9, 0u64..150, 0usize..3, any::<bool>()), 1..20),
    ) {
        let keys = ["k0", "k1", "k2"];
        let effects = ["allow", "deny", "allow", "require_approval"];
        let mut src = String::from("version = 1\nserial = 1\n[groups]\ng = [\"c0\", \"c1\"]\n[approvers]\nc0 = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\nc1 = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n");
        for (i, (effect, key, kinds, value_max, client)) in rules.iter().enumerate() {
            src.push_str(&format!("[[rule]]\nid = \"r{i}\"\neffect = \"{}\"\n", effects[*effect]));
            if *effect == 3 {
                src.push_str("approvals = [{ group = \"g\", min = 1 }]\nttl = \"1h\"\n");
            }
            if let Some(k) = key {
                src.push_str(&format!("keys = [\"{}\"]\n", keys[*k]));
            }
            if let Some(kinds) = kinds {
                let names: Vec<String> = kinds.iter().map(|k| format!("\"{}\"", Kind::ALL[*k])).collect();
                src.push_str(&format!("kinds = [{}]\n", names.join(", ")));
            }
            if let Some(v) = value_max {
                src.push_str(&format!("value_max = {v}\n"));
            }
            if let Some(c) = client {
                src.push_str(&format!("clients = [\"c{c}\"]\n"));
            }
        }
        let p = Policy::parse("p.toml", &src).unwrap();
        for (key, kind, value, client, decoded) in actions {
            let mut a = Action::new(keys[key], Kind::ALL[kind]);
            a.value = U256::from(value);
            if decoded {
                a.chain_id = Some(1);
                a.to = Some(Address::repeat_byte(1));
            }
            let who = Identity { id: format!("c{client}"), roles: vec![] };
            let r = Request { action: &a, identity: &who, now_unix: 0, usage: &NoUsage };
            prop_assert_eq!(p.evaluate_request(&r).decision, p.explain_request(&r).decision);
        }
    }

    /// Policy files are written by people and reloaded at run time: nothing panics the parser.
    #[test]
    fn parse_never_panics_on_arbitrary_text(src in "\\PC*") {
        let _ = Policy::parse("fuzz.toml", &src);
    }

    /// Nor do near-valid policies: examples with random splices of policy-like fragments.
    #[test]
    fn parse_never_panics_on_mutated_examples(
        which in 0usize..4,
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..40, 0usize..FRAGMENTS.len()), 1..6),
    ) {
        let mut src = EXAMPLES[which].1.to_owned();
        for (at, cut, frag) in edits {
            let mut i = at.index(src.len() + 1);
            while !src.is_char_boundary(i) { i -= 1; }
            let mut j = (i + cut).min(src.len());
            while !src.is_char_boundary(j) { j -= 1; }
            src.replace_range(i..j, FRAGMENTS[frag]);
        }
        if let Ok(p) = Policy::parse("fuzz.toml", &src) {
            let _ = crate::check(&p);
            let _ = run_tests(&p, EXAMPLES[which].2);
            let _ = crate::diff(&p, &p);
        }
        let _ = run_tests(&Policy::parse("x", EXAMPLES[which].1).unwrap(), &src);
    }
}

const FRAGMENTS: [&str; 30] = [
    "",
    "\n",
    "\"",
    "]",
    "[[rule]]\nid = \"x\"\neffect = \"deny\"\n",
    "= \"1.5 ether\"",
    "= \"99999999999999999999999999999999999999999999999999999999999999999999999999999999 wei\"",
    "= \"0.0000001 USDC\"",
    "= \"1 USDC\"",
    "\"book:payees\"",
    "\"book:\"",
    "\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD\"",
    "\"0x\"",
    "\"transfer(address,uint256)\"",
    "\"f((((\"",
    "hours = { from = \"23:59\", to = \"24:00\", utc_offset = \"-18:00\" }",
    "window = \"366d\"",
    "decimals = 77",
    "decimals = 255",
    "min = 4294967295",
    "max_count = 18446744073709551615",
    "chain_id = -1",
    "value_max = 1e400",
    "é",
    "\u{0}",
    "asset = { chain_id = 1, contract = \"native\" }",
    "kinds = []",
    "[groups]\n",
    "key_by = [\"destination\", \"destination\"]",
    "ttl = \"0s\"",
];
