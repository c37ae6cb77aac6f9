//! Evaluation: a pure function of (policy, action, identity, time, usage snapshot) to a
//! decision, the limit charges the daemon must reserve, and a human-readable explanation.
//!
//! Order of precedence: any matching (or indeterminate) deny rule denies; otherwise the
//! approval requirements of every matching `require_approval` rule stack; otherwise at least
//! one allow rule must match. A request that passes the rules must then fit every limit that
//! applies to it. This module reads no clock and no store: the caller passes the time and a
//! usage snapshot, and must reserve the returned [`Charge`]s atomically with [`fits`].

use alloy_primitives::U256;

use crate::amount::AmountFormat;
use crate::args::Calls;
use crate::limit::{BucketKey, Limit, Moves, destination, effective_chain};
use crate::rule::{Effect, KindSet, Outcome};
use crate::{Action, ApprovalRequirement, Decision, Identity, Policy};

/// Usage already counted in one bucket's sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Used {
    /// Sum of the amounts reserved in the window, in the limit asset's base units.
    pub amount: U256,
    /// Number of requests reserved in the window.
    pub count: u64,
}

impl Used {
    /// Nothing used.
    pub const ZERO: Used = Used {
        amount: U256::ZERO,
        count: 0,
    };

    /// Everything used: what a [`Usage`] that cannot read its store must return, so that
    /// every windowed limit denies (fail closed).
    pub const SATURATED: Used = Used {
        amount: U256::MAX,
        count: u64::MAX,
    };
}

/// Read access to usage counters, as of the time of the request.
pub trait Usage {
    /// Sum and count of the charges reserved in `bucket` with a time in
    /// `(now_unix - window_secs, now_unix]`. An implementation that cannot read its store
    /// must return [`Used::SATURATED`].
    fn used(&self, bucket: &BucketKey, window_secs: u64, now_unix: i64) -> Used;
}

/// A [`Usage`] with nothing used: for tools and for a first look before reserving.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUsage;

impl Usage for NoUsage {
    fn used(&self, _: &BucketKey, _: u64, _: i64) -> Used {
        Used::ZERO
    }
}

/// One request to evaluate.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// What would be signed.
    pub action: &'a Action,
    /// Who asks.
    pub identity: &'a Identity,
    /// The time of the request, in seconds since the Unix epoch (for `hours` and windows).
    pub now_unix: i64,
    /// Usage counters as of `now_unix`.
    pub usage: &'a dyn Usage,
}

/// What one windowed limit (or rate limit) would count for a request. The daemon reserves all
/// of a request's charges atomically, each only if it [`fits`] the bucket's usage at that
/// moment, so concurrent requests cannot overshoot a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The limit or rate limit's id.
    pub limit_id: String,
    /// The usage bucket.
    pub bucket: BucketKey,
    /// The sliding window, in seconds.
    pub window_secs: u64,
    /// The amount to add, in the limit asset's base units (zero for count-only limits). For
    /// a native-coin limit on a transaction it is the value plus the worst-case fee.
    pub amount: U256,
    /// The part of `amount` that is the transaction's worst-case fee (`gas_limit ×
    /// max_fee_per_gas`), for native-coin limits on transactions; shown apart in
    /// explanations.
    pub fee: Option<U256>,
    /// Most the window may hold, when the limit caps amounts.
    pub max_amount: Option<U256>,
    /// Most requests the window may hold, when the limit caps counts.
    pub max_count: Option<u64>,
    /// How to print this limit's amounts.
    pub format: AmountFormat,
}

/// Whether `charge` can be added to a bucket that already holds `used`: the one definition
/// of "within the limit", shared by evaluation, the daemon's atomic reservation and tests.
pub fn fits(charge: &Charge, used: Used) -> bool {
    charge.exceeded(used).is_none()
}

impl Charge {
    /// Why the charge does not fit on top of `used`, or `None` if it fits.
    pub fn exceeded(&self, used: Used) -> Option<String> {
        let what = if self.bucket.as_str().starts_with("rate_limit=") {
            "rate limit"
        } else {
            "limit"
        };
        let window = crate::time::Duration(self.window_secs);
        if let Some(max) = self.max_amount {
            let over = used.amount.checked_add(self.amount).is_none_or(|t| t > max);
            if over {
                return Some(format!(
                    "{what} `{}`: {} used + {} requested{} > {} in {window}",
                    self.limit_id,
                    self.format.format(used.amount),
                    self.format.format(self.amount),
                    self.breakdown(),
                    self.format.format(max)
                ));
            }
        }
        if let Some(max) = self.max_count
            && used.count.checked_add(1).is_none_or(|t| t > max)
        {
            return Some(format!(
                "{what} `{}`: {} requests used + 1 > {max} in {window}",
                self.limit_id, used.count
            ));
        }
        None
    }

    /// ` (value X + fee up to Y)` when the amount includes a fee, else nothing.
    fn breakdown(&self) -> String {
        breakdown(&self.format, self.amount, self.fee)
    }

    fn within(&self, used: Used) -> String {
        let window = crate::time::Duration(self.window_secs);
        let mut parts = Vec::new();
        if let Some(max) = self.max_amount {
            parts.push(format!(
                "{} used + {} requested{} <= {}",
                self.format.format(used.amount),
                self.format.format(self.amount),
                self.breakdown(),
                self.format.format(max)
            ));
        }
        if let Some(max) = self.max_count {
            parts.push(format!("{} requests used + 1 <= {max}", used.count));
        }
        format!("{} in {window}", parts.join(", "))
    }
}

/// The result of evaluating one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Allow, deny or needs approval, naming the deciding rule or limit.
    pub decision: Decision,
    /// What to reserve before signing (empty when denied).
    pub charges: Vec<Charge>,
    /// Human-readable lines: which rules matched, which limits applied, what decided.
    pub explanation: Vec<String>,
}

impl Policy {
    /// Evaluates a request: rules, then limits against `req.usage`. Only rules that the index
    /// says could match are tested; the explanation lists those that matched.
    pub fn evaluate_request(&self, req: &Request<'_>) -> Evaluation {
        self.run(req, false)
    }

    /// Like [`Policy::evaluate_request`], and the explanation also says why every rule that
    /// did not match did not (for `signerctl policy explain`). Slower; same decision.
    pub fn explain_request(&self, req: &Request<'_>) -> Evaluation {
        self.run(req, true)
    }

    fn run(&self, req: &Request<'_>, explain: bool) -> Evaluation {
        let (a, who, now) = (req.action, req.identity, req.now_unix);
        let mut lines = Vec::new();
        // (rule position, indeterminate field, whether it waits for an entry cooling off)
        let mut deny: Option<(usize, Option<crate::rule::Field>, bool)> = None;
        let mut approvals: Vec<usize> = Vec::new();
        let mut allows: Vec<usize> = Vec::new();
        // Calldata decoded once per distinct `function` for all rules of this request.
        let calls = Calls::default();
        // The first allow rule that would match but for an address-book entry cooling off.
        let mut waiting: Option<String> = None;
        let mut visit = |pos: usize, lines: &mut Vec<String>| {
            let Some(rule) = self.rules.get(pos) else {
                return;
            };
            let head = || format!("rule `{}` ({})", rule.id, rule.effect);
            let outcome = match rule.m.test(a, who, now, &calls) {
                // Cooling-off never delays a restriction: a deny rule matches at once.
                Outcome::NotYet(_) if rule.effect == Effect::Deny => Outcome::Yes,
                o => o,
            };
            match (rule.effect, outcome) {
                (_, Outcome::No(f)) => {
                    if explain {
                        lines.push(format!(
                            "{} does not match: {}",
                            head(),
                            rule.m.describe(f, a, who, now, &calls)
                        ));
                    }
                }
                (Effect::Deny, Outcome::Yes) => {
                    deny.get_or_insert((pos, None, false));
                    lines.push(format!("{} matches", head()));
                }
                (Effect::Deny | Effect::RequireApproval, Outcome::Unknown(f)) => {
                    deny.get_or_insert((pos, Some(f), false));
                    lines.push(format!(
                        "{} is indeterminate ({}): counts as a deny (fail closed)",
                        head(),
                        rule.m.describe(f, a, who, now, &calls)
                    ));
                }
                (Effect::RequireApproval, Outcome::Yes) => {
                    approvals.push(pos);
                    lines.push(format!("{} matches", head()));
                }
                (Effect::Allow, Outcome::Yes) => {
                    allows.push(pos);
                    lines.push(format!("{} matches", head()));
                }
                (Effect::Allow, Outcome::NotYet(f)) => {
                    let note = rule.m.cooling_note(f, a, now);
                    lines.push(format!("{} does not match yet: {note}", head()));
                    waiting.get_or_insert_with(|| {
                        format!("rule `{}` would allow, but {note}", rule.id)
                    });
                }
                (Effect::Deny | Effect::RequireApproval, Outcome::NotYet(f)) => {
                    deny.get_or_insert((pos, Some(f), true));
                    lines.push(format!(
                        "{} depends on an entry still cooling off ({}): counts as a deny (fail closed)",
                        head(),
                        rule.m.cooling_note(f, a, now)
                    ));
                }
                (Effect::Allow, Outcome::Unknown(f)) => {
                    lines.push(format!(
                        "{} is indeterminate ({}): does not allow (fail closed)",
                        head(),
                        rule.m.describe(f, a, who, now, &calls)
                    ));
                }
            }
            if explain && let Some(spec) = &rule.m.args {
                lines.extend(
                    spec.explain(a, now, &calls)
                        .into_iter()
                        .map(|l| format!("  rule `{}`: {l}", rule.id)),
                );
            }
        };
        if explain {
            for pos in 0..self.rules.len() {
                visit(pos, &mut lines);
            }
        } else {
            for pos in self.index.candidates(&a.key, a.kind, &who.id) {
                visit(pos, &mut lines);
            }
        }

        let ids = |v: &[usize]| -> Vec<String> {
            v.iter()
                .filter_map(|p| self.rules.get(*p))
                .map(|r| r.id.clone())
                .collect()
        };
        let deny_with = |lines: Vec<String>, rule: Option<String>, reason: String| {
            let mut lines = lines;
            lines.push(format!("decision: deny: {reason}"));
            Evaluation {
                decision: Decision::Deny { rule, reason },
                charges: Vec::new(),
                explanation: lines,
            }
        };
        if let Some((pos, unknown, cooling)) = deny {
            let Some(rule) = self.rules.get(pos) else {
                return deny_with(
                    lines,
                    None,
                    "internal error: rule index out of range".into(),
                );
            };
            let reason = match (unknown, rule.effect) {
                (None, _) => format!("denied by rule `{}`", rule.id),
                (Some(f), _) if cooling => format!(
                    "denied: rule `{}` ({}) depends on an address-book entry still cooling off: {}",
                    rule.id,
                    rule.effect,
                    rule.m.cooling_note(f, a, now)
                ),
                (Some(f), Effect::RequireApproval) => format!(
                    "denied: rule `{}` (require_approval) is indeterminate: {}",
                    rule.id,
                    rule.m.describe(f, a, who, now, &calls)
                ),
                (Some(f), _) => format!(
                    "denied by rule `{}` (indeterminate: {})",
                    rule.id,
                    rule.m.describe(f, a, who, now, &calls)
                ),
            };
            return deny_with(lines, Some(rule.id.clone()), reason);
        }
        let decision = if !approvals.is_empty() {
            Decision::NeedsApproval {
                rules: ids(&approvals),
                requirements: self.requirements(&approvals),
            }
        } else if !allows.is_empty() {
            Decision::Allow {
                rules: ids(&allows),
            }
        } else {
            let reason = match waiting {
                Some(w) => format!("no rule allows: {w}"),
                None => "no rule allows".into(),
            };
            return deny_with(lines, None, reason);
        };

        let mut charges = Vec::new();
        let mut failed: Option<(String, String)> = None;
        for l in &self.limits {
            match self.check_limit(l, req, explain, &mut lines) {
                Ok(Some(c)) => charges.push(c),
                Ok(None) => {}
                Err(reason) => {
                    lines.push(reason.clone());
                    failed.get_or_insert((l.id.clone(), reason));
                    if !explain {
                        break;
                    }
                }
            }
        }
        for r in &self.rate_limits {
            if failed.is_some() && !explain {
                break;
            }
            if !r.applies(who) {
                continue;
            }
            let c = Charge {
                limit_id: r.id.clone(),
                bucket: BucketKey::for_rate(r, who),
                window_secs: r.window.0,
                amount: U256::ZERO,
                fee: None,
                max_amount: None,
                max_count: Some(r.max_requests),
                format: AmountFormat::base_units(),
            };
            let used = req.usage.used(&c.bucket, c.window_secs, now);
            match c.exceeded(used) {
                Some(reason) => {
                    lines.push(reason.clone());
                    failed.get_or_insert((r.id.clone(), reason));
                }
                None => {
                    if explain {
                        lines.push(format!("rate limit `{}`: {}", r.id, c.within(used)));
                    }
                    charges.push(c);
                }
            }
        }
        if let Some((id, reason)) = failed {
            return deny_with(lines, Some(id), reason);
        }
        lines.push(match &decision {
            Decision::Allow { rules } => format!("decision: allow by {}", quote(rules)),
            Decision::NeedsApproval {
                rules,
                requirements,
            } => {
                let req: Vec<String> = requirements
                    .iter()
                    .map(|r| format!("{} of `{}`", r.min, r.group))
                    .collect();
                format!(
                    "decision: requires approval by {} ({})",
                    req.join(" and "),
                    quote(rules)
                )
            }
            Decision::Deny { reason, .. } => format!("decision: deny: {reason}"),
        });
        Evaluation {
            decision,
            charges,
            explanation: lines,
        }
    }

    /// Stacks the approval requirements of the matching `require_approval` rules: every group
    /// named must approve; for a group named by several rules the largest `min`, the
    /// shortest TTL, and veto if any rule allows it.
    fn requirements(&self, rules: &[usize]) -> Vec<ApprovalRequirement> {
        let mut out: Vec<ApprovalRequirement> = Vec::new();
        for spec in rules
            .iter()
            .filter_map(|p| self.rules.get(*p)?.approval.as_ref())
        {
            for (group, min) in &spec.groups {
                match out.iter_mut().find(|r| r.group == *group) {
                    Some(r) => {
                        r.min = r.min.max(*min);
                        r.ttl_secs = r.ttl_secs.min(spec.ttl.0);
                        r.veto |= spec.veto;
                    }
                    None => out.push(ApprovalRequirement {
                        group: group.clone(),
                        min: *min,
                        members: self
                            .groups
                            .get(group)
                            .map(|m| m.iter().cloned().collect())
                            .unwrap_or_default(),
                        ttl_secs: spec.ttl.0,
                        veto: spec.veto,
                    }),
                }
            }
        }
        out
    }

    /// Checks one limit: `Ok(None)` if it does not apply or has no window, `Ok(Some)` with
    /// the charge to reserve, `Err` with the reason it denies.
    fn check_limit(
        &self,
        l: &Limit,
        req: &Request<'_>,
        explain: bool,
        lines: &mut Vec<String>,
    ) -> Result<Option<Charge>, String> {
        let (a, who) = (req.action, req.identity);
        let skip = |lines: &mut Vec<String>, why: &str| {
            if explain {
                lines.push(format!("limit `{}` does not apply: {why}", l.id));
            }
            Ok(None)
        };
        if !l.scope.holds_for(a, who) {
            return skip(lines, "key, client or kind out of scope");
        }
        if let Some(chains) = &l.scope.chain_ids {
            match effective_chain(a) {
                Some(c) if chains.contains(&c) => {}
                Some(_) => return skip(lines, "chain out of scope"),
                None if KindSet::TX.contains(a.kind) => {
                    return Err(format!(
                        "limit `{}` cannot be checked: the transaction's chain id is missing; denied (fail closed)",
                        l.id
                    ));
                }
                // Without a chain, only the asset can tell whether the request moves it.
                None if l.asset.is_some() => {}
                None => return skip(lines, "no chain"),
            }
        }
        let (amount, fee) = match &l.asset {
            None => (U256::ZERO, None),
            Some(asset) => match asset.moves(a) {
                Moves::Nothing => {
                    return skip(
                        lines,
                        &format!(
                            "the request does not move {} on {}",
                            l.format.symbol,
                            asset.chains_text()
                        ),
                    );
                }
                Moves::Amount { total, fee } => {
                    if explain {
                        lines.push(format!(
                            "limit `{}` counts {} on {}",
                            l.id,
                            l.format.symbol,
                            asset.chains_text()
                        ));
                    }
                    (total, fee)
                }
                Moves::Unknown(why) => {
                    return Err(format!(
                        "limit `{}` on {} ({}) cannot be checked: {why}; denied (fail closed)",
                        l.id,
                        l.format.symbol,
                        asset.chains_text()
                    ));
                }
            },
        };
        let dest = if l.scope.to.is_some() || l.key_by.destination {
            match destination(l.asset.as_ref(), a) {
                Ok(d) => d,
                Err(why) => {
                    return Err(format!(
                        "limit `{}` cannot be checked: {why}; denied (fail closed)",
                        l.id
                    ));
                }
            }
        } else {
            None
        };
        if let Some(to) = &l.scope.to
            && !dest.is_some_and(|d| to.contains(&d))
        {
            return skip(lines, "destination out of scope");
        }
        if let Some(max) = l.per_tx_max {
            if amount > max {
                return Err(format!(
                    "limit `{}`: {} requested{} > {} per transaction",
                    l.id,
                    l.format.format(amount),
                    breakdown(&l.format, amount, fee),
                    l.format.format(max)
                ));
            }
            if explain {
                lines.push(format!(
                    "limit `{}`: {} requested{} <= {} per transaction",
                    l.id,
                    l.format.format(amount),
                    breakdown(&l.format, amount, fee),
                    l.format.format(max)
                ));
            }
        }
        let Some(window) = l.window else {
            return Ok(None);
        };
        let charge = Charge {
            limit_id: l.id.clone(),
            bucket: BucketKey::for_limit(l, a, who, dest),
            window_secs: window.0,
            amount,
            fee,
            max_amount: l.max_amount,
            max_count: l.max_count,
            format: l.format.clone(),
        };
        let used = req
            .usage
            .used(&charge.bucket, charge.window_secs, req.now_unix);
        if let Some(reason) = charge.exceeded(used) {
            return Err(reason);
        }
        if explain {
            lines.push(format!("limit `{}`: {}", l.id, charge.within(used)));
        }
        Ok(Some(charge))
    }
}

/// ` (value X + fee up to Y)` for an amount that includes a transaction's fee.
fn breakdown(format: &AmountFormat, amount: U256, fee: Option<U256>) -> String {
    match fee {
        Some(fee) if !fee.is_zero() => format!(
            " (value {} + fee up to {})",
            format.format(amount.saturating_sub(fee)),
            format.format(fee)
        ),
        _ => String::new(),
    }
}

fn quote(ids: &[String]) -> String {
    let v: Vec<String> = ids.iter().map(|i| format!("`{i}`")).collect();
    v.join(", ")
}
