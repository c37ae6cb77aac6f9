//! Policy unit tests (`signerctl policy test`): a TOML file of cases, each a request and the
//! decision the policy must reach, in the manner of `opa test`.
//!
//! ```toml
//! [[case]]
//! name = "small payout is allowed"
//! client = "payments"
//! roles = ["requester"]                      # optional
//! now = "2026-01-01T10:00:00Z"               # optional; default 2026-01-01T12:00:00Z (a Thursday)
//! action = { key = "hot", kind = "erc20_transfer", chain_id = 1, to = "0xA0b8...", erc20 = { counterparty = "0x...", amount = "100 USDC" } }
//! usage = [{ limit = "daily-usdc", amount = "19950 USDC", count = 3 }]   # optional
//! expect = "allow"                           # allow | deny | require_approval
//! expect_rule = "payouts"                    # optional: a matching rule, or the deny's rule or limit
//! ```
//!
//! Action fields: `key`, `kind`, `chain_id`, `to`, `value`, `selector` (defaults to the
//! standard selector for the ERC-20 kinds), `gas_limit`, `max_fee_per_gas`, `erc20 = { token
//! (default: to), from, counterparty, amount }`, `typed_data = { primary_type, domain_name,
//! domain_chain_id, verifying_contract, standard, grants = [{ token (default:
//! verifying_contract), counterparty, amount }], deadline, safe_tx = { operation, gas_price,
//! gas_token, refund_receiver, nonce } }`, `message = { len, text }` (`len` defaults to the
//! length of `text`; `text` only for `eip191_message`), `calldata` (`0x` hex, selector
//! included; the selector defaults to its first 4 bytes) and `signer` (the signing key's
//! address, `self` in argument matchers). Amounts take the same literals as the policy. This module evaluates only; it never reads files or the clock.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use alloy_primitives::{Address, U256};
use serde::Deserialize;
use toml::Spanned;

use crate::amount::{AmountLit, AssetId};
use crate::limit::BucketKey;
use crate::literal::{AddrLit, Selector};
use crate::parse::{Cx, Env, Unit, from_toml};
use crate::time::parse_rfc3339;
use crate::{
    Action, Decision, Erc20Call, Identity, Kind, MAX_POLICY_BYTES, MESSAGE_HEAD_BYTES,
    MessageFacts, Policy, PolicyError, Request, SafeTxFacts, TokenGrant, TypedDataFacts,
    TypedStandard, Usage, Used,
};

/// The time a case runs at when it does not say: Thursday 2026-01-01T12:00:00Z.
const DEFAULT_NOW: i64 = 1_767_268_800;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCases {
    #[serde(rename = "case")]
    cases: Spanned<Vec<RawCase>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Allow,
    Deny,
    RequireApproval,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::RequireApproval => "require_approval",
        }
    }
}

type Amount = Option<Spanned<AmountLit>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    client: String,
    #[serde(default)]
    roles: Vec<String>,
    now: Option<Spanned<String>>,
    action: RawAction,
    #[serde(default)]
    usage: Vec<RawUsage>,
    expect: Expect,
    expect_rule: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    key: String,
    kind: Kind,
    chain_id: Option<u64>,
    to: Option<AddrLit>,
    value: Amount,
    selector: Option<Selector>,
    calldata: Option<Spanned<String>>,
    signer: Option<AddrLit>,
    gas_limit: Option<u64>,
    max_fee_per_gas: Amount,
    erc20: Option<RawErc20>,
    typed_data: Option<RawTyped>,
    message: Option<Spanned<RawMessage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    len: Option<u64>,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    token: Option<AddrLit>,
    counterparty: AddrLit,
    amount: Spanned<AmountLit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSafeTx {
    #[serde(default)]
    operation: u8,
    gas_price: Amount,
    gas_token: Option<AddrLit>,
    refund_receiver: Option<AddrLit>,
    #[serde(default)]
    nonce: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErc20 {
    token: Option<AddrLit>,
    from: Option<AddrLit>,
    counterparty: AddrLit,
    amount: Spanned<AmountLit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTyped {
    primary_type: String,
    domain_name: Option<String>,
    domain_chain_id: Option<u64>,
    verifying_contract: Option<AddrLit>,
    standard: Option<TypedStandard>,
    #[serde(default)]
    grants: Vec<RawGrant>,
    deadline: Option<u64>,
    safe_tx: Option<RawSafeTx>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    limit: Spanned<String>,
    amount: Amount,
    #[serde(default)]
    count: u64,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Whether the decision was the expected one.
    pub passed: bool,
    /// What the case expected, e.g. `deny by daily-eth`.
    pub expected: String,
    /// The decision the policy reached.
    pub decision: Decision,
    /// The evaluation's explanation, for failures.
    pub explanation: Vec<String>,
}

/// The outcome of a test file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TestReport {
    /// One result per case, in file order.
    pub results: Vec<CaseResult>,
}

impl TestReport {
    /// Number of cases that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// Number of cases that failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Whether every case passed.
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }
}

impl fmt::Display for TestReport {
    /// One line per case; failures also show what happened and the explanation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            if r.passed {
                writeln!(f, "PASS {}", r.name)?;
                continue;
            }
            writeln!(
                f,
                "FAIL {}: expected {}, got {}",
                r.name,
                r.expected,
                describe(&r.decision)
            )?;
            for line in &r.explanation {
                writeln!(f, "    {line}")?;
            }
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

fn describe(d: &Decision) -> String {
    match d {
        Decision::Allow { rules } => format!("allow by {}", rules.join(", ")),
        Decision::NeedsApproval { rules, .. } => {
            format!("require_approval by {}", rules.join(", "))
        }
        Decision::Deny {
            rule: Some(r),
            reason,
        } => format!("deny by {r} ({reason})"),
        Decision::Deny { rule: None, reason } => format!("deny ({reason})"),
    }
}

/// Runs the cases in `cases_src` against `policy`; errors name the file `cases.toml`.
pub fn run_tests(policy: &Policy, cases_src: &str) -> Result<TestReport, PolicyError> {
    run_test_file(policy, "cases.toml", cases_src)
}

/// Runs the cases in `src` against `policy`; `file` names it in error messages.
pub fn run_test_file(policy: &Policy, file: &str, src: &str) -> Result<TestReport, PolicyError> {
    if src.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            file: file.to_owned(),
            size: src.len(),
            max: MAX_POLICY_BYTES,
        });
    }
    let raw: RawCases = from_toml(file, src)?;
    let env = Env {
        cx: Cx { file, src },
        assets: &policy.assets,
        books: &policy.books,
        book_meta: &policy.book_meta,
        groups: &policy.groups,
        approvers: &policy.approvers,
    };
    if raw.cases.get_ref().is_empty() {
        return Err(env.cx.invalid(raw.cases.span(), "no `[[case]]`".into()));
    }
    let mut report = TestReport::default();
    let mut names = BTreeSet::new();
    for case in raw.cases.into_inner() {
        if !names.insert(case.name.get_ref().clone()) {
            return Err(env.cx.invalid(
                case.name.span(),
                format!("case name `{}` is used twice", case.name.get_ref()),
            ));
        }
        report.results.push(run_case(policy, &env, case)?);
    }
    Ok(report)
}

struct CaseUsage(HashMap<String, Used>);

impl Usage for CaseUsage {
    fn used(&self, bucket: &BucketKey, _: u64, _: i64) -> Used {
        self.0.get(bucket.limit_id()).copied().unwrap_or(Used::ZERO)
    }
}

fn run_case(policy: &Policy, env: &Env<'_>, c: RawCase) -> Result<CaseResult, PolicyError> {
    let name = c.name.get_ref().clone();
    let ctx = |e: PolicyError| match e {
        PolicyError::Invalid {
            file,
            line,
            column,
            message,
        } => PolicyError::Invalid {
            file,
            line,
            column,
            message: format!("case `{name}`: {message}"),
        },
        other => other,
    };
    let now = match &c.now {
        None => DEFAULT_NOW,
        Some(s) => parse_rfc3339(s.get_ref()).map_err(|e| {
            env.cx
                .invalid(s.span(), format!("case `{name}`: `now`: {e}"))
        })?,
    };
    let action = build_action(env, c.action).map_err(ctx)?;
    let mut usage = HashMap::new();
    for u in c.usage {
        let id = u.limit.get_ref();
        let asset = match policy.limits.iter().find(|l| l.id == *id) {
            Some(l) => l.asset.clone(),
            None if policy.rate_limits.iter().any(|r| r.id == *id) => None,
            None => {
                return Err(env.cx.invalid(
                    u.limit.span(),
                    format!("case `{name}`: `usage`: no limit or rate limit `{id}` in the policy"),
                ));
            }
        };
        let amount = match (&u.amount, asset) {
            (None, _) => U256::ZERO,
            (Some(lit), Some(asset)) => {
                env.amount("amount", lit, Unit::Of(asset.first()))
                    .map_err(ctx)?
                    .0
            }
            (Some(lit), None) => {
                return Err(env.cx.invalid(
                    lit.span(),
                    format!(
                        "case `{name}`: `{id}` counts requests only; give `count`, not `amount`"
                    ),
                ));
            }
        };
        usage.insert(
            id.clone(),
            Used {
                amount,
                count: u.count,
            },
        );
    }
    let who = Identity {
        id: c.client,
        roles: c.roles,
    };
    let usage = CaseUsage(usage);
    let eval = policy.explain_request(&Request {
        action: &action,
        identity: &who,
        now_unix: now,
        usage: &usage,
    });
    let kind_ok = eval.decision.as_str() == c.expect.as_str();
    let rule_ok = match (&c.expect_rule, &eval.decision) {
        (None, _) => true,
        (Some(want), Decision::Allow { rules } | Decision::NeedsApproval { rules, .. }) => {
            rules.iter().any(|r| r == want)
        }
        (Some(want), Decision::Deny { rule, .. }) => rule.as_deref() == Some(want.as_str()),
    };
    let expected = match &c.expect_rule {
        Some(r) => format!("{} by {r}", c.expect.as_str()),
        None => c.expect.as_str().to_owned(),
    };
    Ok(CaseResult {
        name,
        passed: kind_ok && rule_ok,
        expected,
        decision: eval.decision,
        explanation: eval.explanation,
    })
}

fn build_action(env: &Env<'_>, r: RawAction) -> Result<Action, PolicyError> {
    let mut a = Action::new(r.key, r.kind);
    a.chain_id = r.chain_id;
    a.to = r.to.map(|x| x.0);
    a.gas_limit = r.gas_limit;
    let chains: Option<BTreeSet<u64>> = r.chain_id.map(|c| BTreeSet::from([c]));
    let native = |v: &Amount, field: &str| -> Result<Option<U256>, PolicyError> {
        v.as_ref()
            .map(|l| {
                env.amount(field, l, Unit::Native(chains.as_ref()))
                    .map(|x| x.0)
            })
            .transpose()
    };
    a.value = native(&r.value, "value")?.unwrap_or_default();
    a.max_fee_per_gas = native(&r.max_fee_per_gas, "max_fee_per_gas")?;
    a.selector = r.selector.map(|s| s.0).or(match r.kind {
        Kind::Erc20Transfer => Some([0xa9, 0x05, 0x9c, 0xbb]),
        Kind::Erc20TransferFrom => Some([0x23, 0xb8, 0x72, 0xdd]),
        Kind::Erc20Approve => Some([0x09, 0x5e, 0xa7, 0xb3]),
        _ => None,
    });
    a.signer = r.signer.map(|x| x.0);
    if let Some(c) = &r.calldata {
        let bytes = c
            .get_ref()
            .strip_prefix("0x")
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| {
                env.cx
                    .invalid(c.span(), "`calldata` must be 0x-prefixed hex".into())
            })?;
        let head = bytes.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok());
        if r.selector.is_some() && a.selector != head {
            return Err(env.cx.invalid(
                c.span(),
                "`selector` is not the first 4 bytes of `calldata`; give only `calldata`".into(),
            ));
        }
        a.selector = head;
        a.calldata = Some(bytes.into());
    }
    if let Some(e) = r.erc20 {
        let token = e.token.map(|t| t.0).or(a.to);
        let unit = match (r.chain_id, token) {
            (Some(c), Some(t)) => Unit::Of(AssetId::token(c, t)),
            _ => Unit::Token(chains.as_ref()),
        };
        let amount = env.amount("amount", &e.amount, unit)?.0;
        let Some(token) = token else {
            return Err(env.cx.invalid(
                e.amount.span(),
                "`erc20` needs `token` or the action's `to`".into(),
            ));
        };
        a.to = a.to.or(Some(token));
        a.erc20 = Some(Erc20Call {
            token,
            from: e.from.map(|x| x.0),
            counterparty: e.counterparty.0,
            amount,
        });
    }
    if let Some(t) = r.typed_data {
        let verifying = t.verifying_contract.map(|x| x.0);
        let mut grants = Vec::with_capacity(t.grants.len());
        for g in t.grants {
            let Some(token) = g.token.map(|x| x.0).or(verifying) else {
                return Err(env.cx.invalid(
                    g.amount.span(),
                    "a grant needs `token` or the typed data's `verifying_contract`".into(),
                ));
            };
            let unit = match t.domain_chain_id {
                Some(c) => Unit::Of(AssetId::token(c, token)),
                None => Unit::Token(None),
            };
            grants.push(TokenGrant {
                token,
                counterparty: g.counterparty.0,
                amount: env.amount("amount", &g.amount, unit)?.0,
            });
        }
        let safe_tx = match t.safe_tx {
            None => None,
            Some(x) => Some(SafeTxFacts {
                operation: x.operation,
                safe_tx_gas: U256::ZERO,
                base_gas: U256::ZERO,
                gas_price: native(&x.gas_price, "gas_price")?.unwrap_or_default(),
                gas_token: x.gas_token.map_or(Address::ZERO, |a| a.0),
                refund_receiver: x.refund_receiver.map_or(Address::ZERO, |a| a.0),
                nonce: U256::from(x.nonce),
            }),
        };
        a.typed_data = Some(TypedDataFacts {
            primary_type: t.primary_type,
            domain_name: t.domain_name,
            domain_chain_id: t.domain_chain_id.map(U256::from),
            verifying_contract: verifying,
            standard: t.standard,
            grants,
            deadline: t.deadline.map(U256::from),
            safe_tx,
        });
    }
    if let Some(m) = r.message {
        let span = m.span();
        let m = m.into_inner();
        if m.text.is_some() && r.kind != Kind::Eip191Message {
            return Err(env.cx.invalid(
                span,
                "`message.text` is only for kind `eip191_message`".into(),
            ));
        }
        let Some(len) = m.len.or(m.text.as_ref().map(|t| t.len() as u64)) else {
            return Err(env
                .cx
                .invalid(span, "`message` needs `len` or `text`".into()));
        };
        a.message = Some(MessageFacts {
            len,
            text_head: m.text.map(|t| head(&t).to_owned()),
        });
    }
    Ok(a)
}

/// The first [`MESSAGE_HEAD_BYTES`] bytes of `t` at most, cut at a character boundary, as
/// the daemon keeps them.
fn head(t: &str) -> &str {
    let mut end = t.len().min(MESSAGE_HEAD_BYTES);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    &t[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::check;

    /// Every shipped example with its test suite.
    pub(crate) const EXAMPLES: [(&str, &str, &str); 5] = [
        (
            "hot-wallet",
            include_str!("../examples/hot-wallet.toml"),
            include_str!("../examples/hot-wallet.cases.toml"),
        ),
        (
            "treasury",
            include_str!("../examples/treasury.toml"),
            include_str!("../examples/treasury.cases.toml"),
        ),
        (
            "defi-bot",
            include_str!("../examples/defi-bot.toml"),
            include_str!("../examples/defi-bot.cases.toml"),
        ),
        (
            "freeze",
            include_str!("../examples/freeze.toml"),
            include_str!("../examples/freeze.cases.toml"),
        ),
        (
            "swap-and-supply",
            include_str!("../examples/swap-and-supply.toml"),
            include_str!("../examples/swap-and-supply.cases.toml"),
        ),
    ];

    #[test]
    fn every_example_passes_its_cases() {
        for (name, src, cases) in EXAMPLES {
            let p = Policy::parse(&format!("{name}.toml"), src).unwrap_or_else(|e| panic!("{e}"));
            let report = run_test_file(&p, &format!("{name}.cases.toml"), cases)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(report.is_success(), "{name}:\n{report}");
            assert!(report.results.len() >= 4, "{name}");
            let warnings: Vec<String> = check(&p).iter().map(ToString::to_string).collect();
            if name == "freeze" {
                assert_eq!(warnings.len(), 2, "{warnings:#?}");
                assert!(
                    warnings
                        .iter()
                        .all(|w| w.contains("shadowed by deny rule `freeze`"))
                );
            } else {
                assert!(warnings.is_empty(), "{name}: {warnings:#?}");
            }
            if std::env::var_os("SHOW_EXPLANATIONS").is_some() {
                for r in &report.results {
                    println!("--- {name}: {}", r.name);
                    for l in &r.explanation {
                        println!("    {l}");
                    }
                }
            }
        }
    }

    /// docs/policy.md lists every example policy in full; a listing that drifted from its file
    /// would teach a policy that is not the tested one.
    #[test]
    fn the_policy_reference_lists_every_example_as_it_is() {
        let doc = include_str!("../../docs/policy.md");
        for (name, src, _) in EXAMPLES {
            let listing = format!("```toml\n{src}```");
            assert!(
                doc.contains(&listing),
                "docs/policy.md does not list policy/examples/{name}.toml as it is"
            );
        }
    }

    #[test]
    fn a_failing_case_is_reported_with_its_explanation() {
        let (_, src, _) = EXAMPLES[0];
        let p = Policy::parse("hot-wallet.toml", src).unwrap();
        let cases = r#"
[[case]]
name = "wrong"
client = "payments-api"
action = { key = "hot-payments", kind = "raw_digest" }
expect = "allow"

[[case]]
name = "right"
client = "payments-api"
action = { key = "hot-payments", kind = "raw_digest" }
expect = "deny"
"#;
        let report = run_tests(&p, cases).unwrap();
        assert_eq!((report.passed(), report.failed()), (1, 1));
        let text = report.to_string();
        assert!(
            text.starts_with("FAIL wrong: expected allow, got deny (no rule allows)\n"),
            "{text}"
        );
        assert!(
            text.contains("    decision: deny: no rule allows\n"),
            "{text}"
        );
        assert!(
            text.contains("PASS right\n") && text.ends_with("1 passed, 1 failed"),
            "{text}"
        );
    }

    #[test]
    fn case_files_are_validated_with_locations() {
        let (_, src, _) = EXAMPLES[0];
        let p = Policy::parse("hot-wallet.toml", src).unwrap();
        let e = run_tests(&p, "[[case]]\nname = \"a\"\nclient = \"c\"\naction = { key = \"k\", kind = \"raw_digest\" }\nexpect = \"allow\"\nusage = [{ limit = \"nope\", count = 1 }]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cases.toml:6:20: case `a`: `usage`: no limit or rate limit `nope` in the policy"
        );
        let e = run_tests(&p, "[[case]]\nname = \"a\"\nclient = \"c\"\nnow = \"yesterday\"\naction = { key = \"k\", kind = \"raw_digest\" }\nexpect = \"allow\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "cases.toml:4:7: case `a`: `now`: `yesterday` is not an RFC 3339 time"
            ),
            "{e}"
        );
        let e = run_tests(&p, "[[case]]\nname = \"a\"\nclient = \"c\"\naction = { key = \"k\", kind = \"native_transfer\", chain_id = 1, value = \"1.5 USDC\" }\nexpect = \"allow\"\n").unwrap_err();
        assert!(e.to_string().contains("names a token"), "{e}");
        let e = run_tests(&p, "[[case]]\nname = \"a\"\nclient = \"c\"\naction = { key = \"k\", kind = \"raw_digest\" }\nexpect = \"maybe\"\n").unwrap_err();
        assert!(e.to_string().starts_with("cases.toml:5:10: "), "{e}");
        assert!(run_tests(&p, "").is_err());
    }
}
