//! Policy evaluation against a 1,000-rule policy with a realistic ERC-20 transfer, and against
//! the same policy with argument matchers (`function`/`args`) on its contract-call rules and on
//! global deny rules, with a Uniswap V3 swap whose arguments every key rule decodes.
//!
//! Criterion reports the mean; after it, a plain loop prints p50/p99/p99.9 over 100,000
//! evaluations (the DESIGN target is p99 <= 20 µs). Run with
//! `cargo bench -p signerd-policy --bench evaluate`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};
use criterion::Criterion;
use signerd_policy::{Action, Erc20Call, Identity, Kind, NoUsage, Policy, Request, Usage, Used};

const KEYS: usize = 50;
const RULES: usize = 1_000;
const USDC: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";

fn addr(i: usize) -> String {
    format!("0x{:040x}", 0x1000 + i)
}

/// A policy like a large deployment's: per-key rules over 50 keys, a few global deny rules,
/// address books, assets, limits and a rate limit.
fn policy_src() -> String {
    policy_src_with(false)
}

/// The Uniswap V3 SwapRouter.
const ROUTER: &str = "0xe592427a0aece92de3edee1f18e0157c05861564";
const SWAP: &str = "exactInputSingle((address tokenIn,address tokenOut,uint24 fee,address recipient,uint256 deadline,uint256 amountIn,uint256 amountOutMinimum,uint160 sqrtPriceLimitX96) params)";

/// [`policy_src`], or with `args`: every contract-call rule allows `exactInputSingle` on the
/// router with argument matchers (recipient `self`, amount in USDC, fee), and every global
/// deny rule also refuses swaps paying a blocked address.
fn policy_src_with(args: bool) -> String {
    let mut s = String::from("version = 1\nserial = 1\n");
    let _ = write!(
        s,
        "[[asset]]\nchain_id = 1\ncontract = \"native\"\nsymbol = \"ETH\"\ndecimals = 18\n\
         [[asset]]\nchain_id = 1\ncontract = \"{USDC}\"\nsymbol = \"USDC\"\ndecimals = 6\n"
    );
    s.push_str("[groups]\nops = [\"o1\", \"o2\", \"o3\"]\n[approvers]\no1 = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\no2 = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\no3 = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n");
    for b in 0..20 {
        let addrs: Vec<String> = (0..25)
            .map(|i| format!("\"{}\"", addr(b * 25 + i)))
            .collect();
        let _ = write!(
            s,
            "[address_books.book{b}]\naddresses = [{}]\n",
            addrs.join(", ")
        );
    }
    let _ = write!(
        s,
        "[address_books.blocked]\naddresses = [\"0x000000000000000000000000000000000000dead\"]\n"
    );
    for r in 0..RULES {
        let key = r % KEYS;
        let _ = write!(s, "[[rule]]\nid = \"r{r}\"\n");
        match r % 10 {
            // Global deny rules (no key): every request is tested against these.
            0 if r % 100 == 0 && args && r % 200 == 0 => {
                let _ = write!(
                    s,
                    "effect = \"deny\"\nfunction = \"{SWAP}\"\n\
                     args = [{{ arg = \"params.recipient\", in = [\"book:blocked\"] }}]\n"
                );
            }
            0 if r % 100 == 0 => {
                let _ = write!(
                    s,
                    "effect = \"deny\"\nerc20_counterparty = [\"book:blocked\"]\n"
                );
            }
            0..=3 => {
                let _ = write!(
                    s,
                    "effect = \"allow\"\nclients = [\"svc-{key}\"]\nkeys = [\"key-{key}\"]\nchain_ids = [1]\n\
                     kinds = [\"erc20_transfer\"]\ncontracts = [\"{USDC}\"]\n\
                     erc20_counterparty = [\"book:book{}\"]\nerc20_amount_max = \"{} USDC\"\n",
                    r % 20,
                    1000 + r
                );
            }
            4..=5 => {
                let _ = write!(
                    s,
                    "effect = \"allow\"\nclients = [\"svc-{key}\"]\nkeys = [\"key-{key}\"]\nchain_ids = [1]\n\
                     kinds = [\"native_transfer\"]\nto = [\"book:book{}\"]\nvalue_max = \"0.{} ether\"\n",
                    r % 20,
                    r % 9 + 1
                );
            }
            6 if args => {
                let _ = write!(
                    s,
                    "effect = \"allow\"\ngroups = [\"ops\"]\nkeys = [\"key-{key}\"]\nchain_ids = [1]\n\
                     contracts = [\"{ROUTER}\"]\nfunction = \"{SWAP}\"\n\
                     args = [{{ arg = \"params.recipient\", eq = \"self\" }}, \
                     {{ arg = \"params.amountIn\", max = \"{} USDC\", token = \"params.tokenIn\" }}, \
                     {{ arg = \"params.fee\", max = 10000 }}]\n\
                     hours = {{ from = \"08:00\", to = \"20:00\", utc_offset = \"+01:00\" }}\n",
                    1000 + r
                );
            }
            6 => {
                let _ = write!(
                    s,
                    "effect = \"allow\"\ngroups = [\"ops\"]\nkeys = [\"key-{key}\"]\nkinds = [\"contract_call\"]\n\
                     contracts = [\"{}\"]\nselectors = [\"swapExactTokensForTokens(uint256,uint256,address[],address,uint256)\"]\n\
                     hours = {{ from = \"08:00\", to = \"20:00\", utc_offset = \"+01:00\" }}\n",
                    addr(r)
                );
            }
            7 => {
                let _ = write!(
                    s,
                    "effect = \"require_approval\"\nkeys = [\"key-{key}\"]\nvalue_min = \"{} ether\"\n\
                     approvals = [{{ group = \"ops\", min = 2 }}]\nttl = \"1h\"\n",
                    10 + r
                );
            }
            8 => {
                let _ = write!(
                    s,
                    "effect = \"deny\"\nkeys = [\"key-{key}\"]\nkinds = [\"erc20_approve\", \"eip712_typed_data\", \"eip712_permit\"]\n"
                );
            }
            _ => {
                let _ = write!(
                    s,
                    "effect = \"allow\"\nclients = [\"svc-{key}\"]\nkeys = [\"key-{key}\"]\nkinds = [\"eip712_permit\"]\n\
                     primary_types = [\"Permit\"]\npermit_spenders = [\"book:book{}\"]\n",
                    r % 20
                );
            }
        }
    }
    for k in 0..5 {
        let _ = write!(
            s,
            "[[limit]]\nid = \"usdc-{k}\"\nkeys = [\"key-{k}\"]\nchain_ids = [1]\nasset = \"USDC\"\n\
             per_tx_max = \"5000 USDC\"\nwindow = \"24h\"\nmax_amount = \"50000 USDC\"\nmax_count = 500\n\
             [[limit]]\nid = \"eth-{k}\"\nkeys = [\"key-{k}\"]\nchain_ids = [1]\nasset = \"native\"\n\
             window = \"24h\"\nmax_amount = \"2 ether\"\n"
        );
    }
    s.push_str(
        "[[limit]]\nid = \"usdc-per-payee\"\nchain_ids = [1]\nasset = \"USDC\"\nwindow = \"24h\"\n\
         max_amount = \"10000 USDC\"\nkey_by = [\"key\", \"asset\", \"destination\"]\n\
         [[rate_limit]]\nid = \"rate\"\nwindow = \"1m\"\nmax_requests = 600\n",
    );
    s
}

/// A USDC payout by `svc-3` with `key-3` to an address in `book3`, matched by rule `r3`.
fn transfer() -> (Action, Identity) {
    let usdc: Address = USDC.parse().unwrap();
    let mut a = Action::new("key-3", Kind::Erc20Transfer);
    a.chain_id = Some(1);
    a.to = Some(usdc);
    a.selector = Some([0xa9, 0x05, 0x9c, 0xbb]);
    // As the daemon fills it: the whole calldata of `transfer(to, 250 USDC)`.
    a.calldata = Some(
        decode_hex(&format!(
            "a9059cbb{:0>64}{:0>64x}",
            addr(3 * 25 + 7).trim_start_matches("0x"),
            250_000_000u64
        ))
        .into(),
    );
    a.erc20 = Some(Erc20Call {
        token: usdc,
        from: None,
        counterparty: addr(3 * 25 + 7).parse().unwrap(),
        amount: U256::from(250_000_000u64),
    });
    a.gas_limit = Some(65_000);
    a.max_fee_per_gas = Some(U256::from(30_000_000_000u64));
    let who = Identity {
        id: "svc-3".into(),
        roles: vec!["payments".into()],
    };
    (a, who)
}

/// A 1,000 USDC → WETH swap by `o1` with `key-6` paying the key itself, matched by all 20
/// rules of `key-6` in the `args` policy (each testing its argument matchers on calldata
/// decoded once), after the global deny rules with argument matchers.
fn swap() -> (Action, Identity) {
    let me = Address::repeat_byte(0x66);
    let word = |h: &str| format!("{h:0>64}");
    let mut hex = String::from("414bf389");
    hex += &word(USDC.trim_start_matches("0x"));
    hex += &word("c02aaa39b223fe8d0a0e5c4f27ead9083c756cc2");
    hex += &word(&format!("{:x}", 500));
    hex += &word(&hex_addr(me));
    hex += &word(&format!("{:x}", 1_767_270_000u64));
    hex += &word(&format!("{:x}", 1_000_000_000u64));
    hex += &word(&format!("{:x}", 1u64));
    hex += &word("0");
    let data = decode_hex(&hex);
    let mut a = Action::new("key-6", Kind::ContractCall);
    a.chain_id = Some(1);
    a.to = Some(ROUTER.parse().unwrap());
    a.selector = Some([0x41, 0x4b, 0xf3, 0x89]);
    a.calldata = Some(data.into());
    a.signer = Some(me);
    a.gas_limit = Some(200_000);
    a.max_fee_per_gas = Some(U256::from(30_000_000_000u64));
    let who = Identity {
        id: "o1".into(),
        roles: vec![],
    };
    (a, who)
}

fn hex_addr(a: Address) -> String {
    a.0.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn decode_hex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

/// Usage that always finds some spend, as a warm store would.
struct Warm;

impl Usage for Warm {
    fn used(&self, _: &signerd_policy::BucketKey, _: u64, _: i64) -> Used {
        Used {
            amount: U256::from(1_000_000_000u64),
            count: 10,
        }
    }
}

fn bench(c: &mut Criterion) {
    let policy = Policy::parse("bench.toml", &policy_src()).unwrap();
    assert_eq!(policy.rules().len(), RULES);
    let (action, who) = transfer();
    let req = Request {
        action: &action,
        identity: &who,
        now_unix: 1_767_268_800,
        usage: &Warm,
    };
    let e = policy.evaluate_request(&req);
    assert!(e.decision.is_allow(), "{e:#?}");
    // USDC daily, USDC per payee, the rate limit, and the ETH limit the transfer's fee counts
    // toward.
    assert_eq!(e.charges.len(), 4, "{:#?}", e.charges);

    c.bench_function("evaluate_request/1000 rules/erc20 transfer", |b| {
        b.iter(|| black_box(policy.evaluate_request(black_box(&req))));
    });
    let no_usage = Request {
        usage: &NoUsage,
        ..req
    };
    c.bench_function("evaluate (no usage)/1000 rules/erc20 transfer", |b| {
        b.iter(|| black_box(policy.evaluate_request(black_box(&no_usage))));
    });
    c.bench_function("explain_request/1000 rules/erc20 transfer", |b| {
        b.iter(|| black_box(policy.explain_request(black_box(&req))));
    });
    let args = Policy::parse("bench-args.toml", &policy_src_with(true)).unwrap();
    let (swap, ops) = swap();
    let swap_req = Request {
        action: &swap,
        identity: &ops,
        ..req
    };
    let e = args.evaluate_request(&swap_req);
    assert!(
        matches!(&e.decision, signerd_policy::Decision::Allow { rules } if rules.len() == 20),
        "{e:#?}"
    );
    c.bench_function("evaluate_request/1000 rules with args/uniswap swap", |b| {
        b.iter(|| black_box(args.evaluate_request(black_box(&swap_req))));
    });
    let src = policy_src();
    c.bench_function("parse/1000 rules", |b| {
        b.iter(|| black_box(Policy::parse("bench.toml", black_box(&src)).unwrap()));
    });
}

/// p50/p99/p99.9 over 100,000 single evaluations of `action` against `policy`, measured one
/// by one.
fn percentiles(label: &str, policy: &Policy, (action, who): (Action, Identity)) {
    let req = Request {
        action: &action,
        identity: &who,
        now_unix: 1_767_268_800,
        usage: &Warm,
    };
    let e = policy.evaluate_request(&req);
    assert!(e.decision.is_allow(), "{label}: {e:#?}");
    for _ in 0..10_000 {
        black_box(policy.evaluate_request(black_box(&req)));
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Instant::now();
        black_box(policy.evaluate_request(black_box(&req)));
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "evaluate_request, 1000 rules, {label}, 100000 runs: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        at(0.50),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    let base = Policy::parse("bench.toml", &policy_src()).unwrap();
    let args = Policy::parse("bench-args.toml", &policy_src_with(true)).unwrap();
    percentiles("ERC-20 transfer (baseline)", &base, transfer());
    percentiles("with argument matchers, ERC-20 transfer", &args, transfer());
    percentiles(
        "with argument matchers, Uniswap V3 swap (args decoded)",
        &args,
        swap(),
    );
}
