//! What a windowed limit costs a signing request when its bucket already holds many charges:
//! the check-and-reserve of one charge, then its release (so every iteration sees the same
//! ledger).
//!
//! Baseline, in the same run: the window sum as the previous release took it, one pass over
//! every entry of the bucket, on the same charges. Run with `cargo bench -p signerd --bench
//! spend`; `CHARGES=n` sets how many signed charges the bucket holds (1 to 10,000,000; default
//! 100,000), spread evenly over the day before now.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use alloy_primitives::U256;
use criterion::Criterion;
use signerd::state::spend::{Entry, Ledger, Settled};
use signerd_policy::{Action, Charge, Identity, Kind, NoUsage, Policy, Request};

const DAY: i64 = 86_400;
const NOW: i64 = 1_800_000_000;

/// The charge a real policy asks for: 1 wei against a limit of `u64::MAX` wei a day on the
/// key `hot`.
fn charge() -> Charge {
    let src = format!(
        "version = 1\nserial = 1\n[[rule]]\nid = \"r\"\neffect = \"allow\"\n\
         [[limit]]\nid = \"daily\"\nasset = \"native\"\nchain_ids = [1]\nwindow = \"1d\"\n\
         max_amount = \"{}\"\n",
        u64::MAX
    );
    let policy = Policy::parse("bench.toml", &src).unwrap();
    let mut action = Action::new("hot", Kind::NativeTransfer);
    action.chain_id = Some(1);
    action.to = Some(alloy_primitives::Address::repeat_byte(0x35));
    action.value = U256::from(1);
    action.gas_limit = Some(21_000);
    action.max_fee_per_gas = Some(U256::ZERO);
    let who = Identity {
        id: "app".into(),
        roles: vec![],
    };
    let eval = policy.evaluate_request(&Request {
        action: &action,
        identity: &who,
        now_unix: NOW,
        usage: &NoUsage,
    });
    eval.charges.into_iter().next().unwrap()
}

fn main() {
    let charges: i64 = match std::env::var("CHARGES") {
        Err(_) => 100_000,
        Ok(v) => match v.parse() {
            Ok(n) if (1..=10_000_000).contains(&n) => n,
            _ => {
                eprintln!("CHARGES must be a whole number from 1 to 10000000, got {v:?}");
                std::process::exit(2);
            }
        },
    };
    let c = charge();
    let bucket = c.bucket.as_str().to_owned();
    let at = |i: i64| NOW - DAY + 1 + i * DAY / charges;
    // The previous release's ledger: every charge as an entry of its request.
    let entries: Vec<Entry> = (0..charges)
        .map(|i| Entry {
            owner: format!("app\0r{i}"),
            bucket: bucket.clone(),
            ts: at(i),
            amount: U256::from(1),
        })
        .collect();
    // This release's: signed charges added up by bucket and second.
    let mut ledger = Ledger::default();
    for i in 0..charges {
        ledger.settle(Settled {
            bucket: bucket.clone(),
            ts: at(i),
            amount: U256::from(1),
            count: 1,
        });
    }
    ledger.prune(NOW);
    assert_eq!(ledger.used(&bucket, 86_400, NOW).count, charges as u64);
    eprintln!("the bucket holds {charges} signed charges over the last day");

    let mut crit = Criterion::default().configure_from_args();
    let mut g = crit.benchmark_group(format!("one windowed limit, {charges} charges held"));
    g.bench_function("baseline: window sum by a pass over every entry", |b| {
        b.iter(|| {
            let since = NOW - DAY;
            let mut used = signerd::state::Used::ZERO;
            for e in &entries {
                if e.bucket == bucket && e.ts > since {
                    used.amount = used.amount.saturating_add(e.amount);
                    used.count += 1;
                }
            }
            black_box(c.exceeded(used))
        })
    });
    let mut n = 0u64;
    g.bench_function("Ledger reserve + release", |b| {
        b.iter(|| {
            n += 1;
            let owner = format!("app\0new-{n}");
            ledger
                .reserve(&owner, NOW, std::slice::from_ref(&c))
                .unwrap();
            ledger.release(&owner);
        })
    });
    g.finish();
    crit.final_summary();
}
