//! Parsing and validation of policy files (TOML, strict schema) into a compiled [`Policy`].
//!
//! Unknown fields, empty lists, duplicate ids, unknown address books, groups or asset
//! symbols, bad EIP-55 checksums, amounts with too many decimals and oversized files are all
//! errors that name the file, line and column, so a policy that does not say exactly what its
//! author meant is never loaded. This module must never panic on any input: it is fuzzed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Range;
use std::sync::Arc;

use alloy_primitives::{Address, U256};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::amount::{self, AmountFormat, AmountLit, Asset, AssetId, MAX_DECIMALS};
use crate::book::{BookMeta, FirstLoaded, RawEntry, check_label};
use crate::index::RuleIndex;
use crate::limit::{KeyBy, Limit, LimitAsset, RateLimit, Scope};
use crate::literal::{AddrRef, ContractLit, Selector, check_name, parse_address};
use crate::rule::{AddrSet, ApprovalSpec, Effect, Groups, KindSet, Matchers, Rule, TokenBound};
use crate::time::{DAYS, Duration, Hours, TimeOfDay, UtcOffset, Weekday};
use crate::xref::{KeyRefs, KeyUser};
use crate::{Kind, MESSAGE_HEAD_BYTES};

/// Largest policy file accepted, in bytes.
pub const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

/// Most entries all address books with a `cooling_off` period may hold together: every
/// `policy.load` audit record lists each of them with its first load (about 110 bytes each),
/// and a record is at most 1 MiB.
pub const MAX_COOLING_ENTRIES: usize = 4096;

/// The only policy language version this crate understands.
const VERSION: u32 = 1;

/// Why a policy (or test-case) file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file is not valid TOML or does not fit the schema.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parsed but says something inconsistent or unresolvable (an unknown address
    /// book, an ambiguous asset symbol, a duplicate id).
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error("{file}: policy is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// A validated, compiled policy, with the hash of the exact bytes it was parsed from.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) serial: u64,
    pub(crate) rules: Vec<Rule>,
    pub(crate) limits: Vec<Limit>,
    pub(crate) rate_limits: Vec<RateLimit>,
    pub(crate) assets: Vec<Asset>,
    pub(crate) books: BTreeMap<String, BTreeSet<Address>>,
    /// Labels and cooling-off periods of the address books.
    pub(crate) book_meta: BTreeMap<String, BookMeta>,
    /// When each entry of a book with a cooling-off period was first loaded.
    pub(crate) first_loaded: FirstLoaded,
    pub(crate) groups: BTreeMap<String, BTreeSet<String>>,
    /// Approvers' Ed25519 public keys, by client id.
    pub(crate) approvers: BTreeMap<String, [u8; 32]>,
    pub(crate) index: RuleIndex,
    /// Where rules and limits name keys, for [`Policy::unknown_keys`].
    pub(crate) key_refs: KeyRefs,
    /// `[governance]`: who may sign the next policy.
    pub(crate) governance: Option<crate::governance::Governance>,
    hash: [u8; 32],
}

impl Policy {
    /// Parses and validates `src`; `file` names it in error messages.
    pub fn parse(file: &str, src: &str) -> Result<Policy, PolicyError> {
        if src.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                file: file.to_owned(),
                size: src.len(),
                max: MAX_POLICY_BYTES,
            });
        }
        let raw: RawFile = from_toml(file, src)?;
        let cx = Cx { file, src };
        if *raw.version.get_ref() != VERSION {
            return Err(cx.invalid(
                raw.version.span(),
                format!(
                    "version {} is not supported (this signerd reads version {VERSION})",
                    raw.version.get_ref()
                ),
            ));
        }
        let assets = cx.assets(raw.assets)?;
        let (books, book_meta) = cx.books(raw.address_books)?;
        let groups = cx.groups(raw.groups)?;
        let approvers = cx.approvers(raw.approvers)?;
        let governance = match raw.governance {
            Some(g) => {
                let span = g.span();
                Some(crate::governance::compile(&cx, span, g.into_inner())?)
            }
            None => None,
        };
        let env = Env {
            cx,
            assets: &assets,
            books: &books,
            book_meta: &book_meta,
            groups: &groups,
            approvers: &approvers,
        };
        let mut ids: HashSet<String> = HashSet::new();
        let mut unique = |id: &Spanned<String>| -> Result<(), PolicyError> {
            check_name(id.get_ref()).map_err(|e| cx.invalid(id.span(), format!("id {e}")))?;
            if !ids.insert(id.get_ref().clone()) {
                return Err(cx.invalid(
                    id.span(),
                    format!(
                        "id `{}` is used twice; rules, limits and rate limits share one id space",
                        id.get_ref()
                    ),
                ));
            }
            Ok(())
        };
        // Allow and require_approval rules check permits' and authorizations' tokens against
        // the registry; one shared copy serves every rule.
        let tokens: Arc<BTreeSet<AssetId>> = Arc::new(
            assets
                .iter()
                .map(|a| a.id)
                .filter(|id| id.contract.is_some())
                .collect(),
        );
        let mut key_refs = KeyRefs::collect(
            file,
            src,
            raw.rules
                .iter()
                .map(|r| (KeyUser::Rule, r.id.get_ref(), &r.keys))
                .chain(
                    raw.limits
                        .iter()
                        .map(|l| (KeyUser::Limit, l.id.get_ref(), &l.keys)),
                ),
        );
        for r in &raw.rules {
            key_refs.add_signatures(src, r.id.get_ref(), &r.selectors);
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for r in raw.rules {
            unique(&r.id)?;
            rules.push(env.rule(r, &tokens)?);
        }
        let mut limits = Vec::with_capacity(raw.limits.len());
        for l in raw.limits {
            unique(&l.id)?;
            limits.push(env.limit(l)?);
        }
        let mut rate_limits = Vec::with_capacity(raw.rate_limits.len());
        for r in raw.rate_limits {
            unique(&r.id)?;
            rate_limits.push(env.rate_limit(r)?);
        }
        let index = RuleIndex::build(&rules);
        Ok(Policy {
            serial: raw.serial,
            rules,
            limits,
            rate_limits,
            assets,
            books,
            book_meta,
            first_loaded: FirstLoaded::new(),
            groups,
            approvers,
            index,
            key_refs,
            governance,
            hash: Sha256::digest(src.as_bytes()).into(),
        })
    }

    /// The policy's serial number.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The asset registry, in file order.
    pub fn assets(&self) -> &[Asset] {
        &self.assets
    }

    /// Members of the group `name`, if it exists (for approval quorums).
    pub fn group_members(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.groups.get(name)
    }

    /// The Ed25519 public key registered in `[approvers]` for the client `id`, if any.
    pub fn approver_key(&self, id: &str) -> Option<[u8; 32]> {
        self.approvers.get(id).copied()
    }

    /// Ids of the `[[limit]]` and `[[rate_limit]]` entries, in file order.
    pub fn limit_ids(&self) -> Vec<&str> {
        self.limits
            .iter()
            .map(|l| l.id.as_str())
            .chain(self.rate_limits.iter().map(|r| r.id.as_str()))
            .collect()
    }

    /// SHA-256 of the policy file's bytes.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// [`Policy::hash`] as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

pub(crate) fn format_of(assets: &[Asset], asset: AssetId) -> AmountFormat {
    match assets.iter().find(|a| a.id == asset) {
        Some(a) => AmountFormat {
            symbol: a.symbol.clone(),
            decimals: a.decimals,
        },
        None if asset.contract.is_none() => AmountFormat::ether(),
        None => AmountFormat::base_units(),
    }
}

/// Deserializes TOML, turning errors into located [`PolicyError::Syntax`].
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(
    file: &str,
    src: &str,
) -> Result<T, PolicyError> {
    toml::from_str(src).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(src, s.start));
        PolicyError::Syntax {
            file: file.to_owned(),
            line,
            column,
            message: explain_toml_error(src, e.span(), e.message().trim_end()),
        }
    })
}

/// Makes a schema error from the TOML deserializer say which field it is about: a wrong type or
/// value is prefixed with the key written before it (``chain_ids`: invalid type: ...``), and an
/// unknown field or variant gets the closest known one as a suggestion.
fn explain_toml_error(src: &str, span: Option<Range<usize>>, message: &str) -> String {
    if let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    {
        let Some((unknown, expected)) = rest.split_once('`') else {
            return message.to_owned();
        };
        let known = expected.split('`').skip(1).step_by(2);
        return match closest(unknown, known) {
            Some(field) => format!("{message}; did you mean `{field}`?"),
            None => message.to_owned(),
        };
    }
    let about_a_value = ["invalid type", "invalid value", "invalid length"]
        .iter()
        .any(|p| message.starts_with(p));
    let key = span.filter(|_| about_a_value).and_then(|s| {
        let before = src.get(..s.start)?;
        let line = before.rsplit('\n').next()?;
        let line = line.trim_end().strip_suffix('=')?.trim_end();
        let start = line
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        Some(&line[start..]).filter(|k| !k.is_empty())
    });
    match key {
        Some(key) => format!("`{key}`: {message}"),
        None => message.to_owned(),
    }
}

/// The known name closest to `unknown` by edit distance, if it is close enough to be a typo
/// (at most a third of the longer name, and at least one edit allowed), or starts with it.
pub(crate) fn closest<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        let d = edit_distance(unknown, k);
        let limit = (unknown.chars().count().max(k.chars().count()) / 3).max(1);
        let close = d <= limit || (unknown.len() >= 3 && k.starts_with(unknown));
        if close && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// 1-based line and column (in characters) of byte offset `at` in `src`, as every error of
/// a TOML file signerd reads reports them.
pub fn line_col(src: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(src.len());
    while !src.is_char_boundary(at) {
        at -= 1;
    }
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------
// The schema, as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Spanned<u32>,
    serial: u64,
    #[serde(default)]
    address_books: BTreeMap<String, Spanned<RawBook>>,
    #[serde(default, rename = "asset")]
    assets: Vec<RawAsset>,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    approvers: BTreeMap<String, Spanned<String>>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
    #[serde(default, rename = "limit")]
    limits: Vec<RawLimit>,
    #[serde(default, rename = "rate_limit")]
    rate_limits: Vec<RawRateLimit>,
    governance: Option<Spanned<crate::governance::RawGovernance>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBook {
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    addresses: Spanned<Vec<Spanned<RawEntry>>>,
    cooling_off: Option<Spanned<Duration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsset {
    chain_id: u64,
    contract: Spanned<ContractLit>,
    symbol: Spanned<String>,
    decimals: Spanned<u8>,
}

type List<T> = Option<Spanned<Vec<T>>>;
type Addrs = List<Spanned<String>>;
type Amount = Option<Spanned<AmountLit>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    effect: Effect,
    clients: List<String>,
    groups: List<Spanned<String>>,
    roles: List<String>,
    keys: List<Spanned<String>>,
    chain_ids: List<u64>,
    kinds: List<Kind>,
    to: Addrs,
    not_to: Addrs,
    contracts: Addrs,
    selectors: List<Spanned<String>>,
    function: Option<Spanned<String>>,
    args: Option<Spanned<Vec<crate::args::RawArg>>>,
    erc20_counterparty: Addrs,
    erc20_amount_max: Amount,
    erc20_amount_min: Amount,
    erc20_amount_above: Amount,
    value_max: Amount,
    value_min: Amount,
    value_above: Amount,
    gas_limit_max: Option<u64>,
    max_fee_per_gas_max: Amount,
    primary_types: List<String>,
    domain_names: List<String>,
    verifying_contracts: Addrs,
    domain_chain_ids: List<u64>,
    permit_spenders: Addrs,
    message_max_bytes: Option<u64>,
    message_prefixes: List<Spanned<String>>,
    hours: Option<Spanned<RawHours>>,
    approvals: List<Spanned<RawApproval>>,
    ttl: Option<Spanned<Duration>>,
    veto: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHours {
    from: TimeOfDay,
    to: TimeOfDay,
    #[serde(default)]
    utc_offset: UtcOffset,
    days: List<Weekday>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    group: Spanned<String>,
    min: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    clients: List<String>,
    groups: List<Spanned<String>>,
    roles: List<String>,
    keys: List<Spanned<String>>,
    chain_ids: List<u64>,
    kinds: List<Kind>,
    to: Addrs,
    asset: Option<Spanned<RawAssetRef>>,
    per_tx_max: Amount,
    window: Option<Spanned<Duration>>,
    max_amount: Amount,
    max_count: Option<Spanned<u64>>,
    key_by: List<RawKeyBy>,
}

enum RawAssetRef {
    Name(String),
    Id(RawAssetId),
}

impl<'de> Deserialize<'de> for RawAssetRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawAssetRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"native\", an asset symbol, or { chain_id, contract }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawAssetRef, E> {
                Ok(RawAssetRef::Name(v.to_owned()))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                m: M,
            ) -> Result<RawAssetRef, M::Error> {
                RawAssetId::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RawAssetRef::Id)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssetId {
    chain_id: u64,
    contract: ContractLit,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawKeyBy {
    Key,
    Asset,
    Destination,
    Client,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    clients: List<String>,
    groups: List<Spanned<String>>,
    window: Spanned<Duration>,
    max_requests: Spanned<u64>,
}

// ---------------------------------------------------------------------------------------
// Compilation.

/// Where errors point.
#[derive(Clone, Copy)]
pub(crate) struct Cx<'a> {
    pub(crate) file: &'a str,
    pub(crate) src: &'a str,
}

impl Cx<'_> {
    pub(crate) fn invalid(&self, span: Range<usize>, message: String) -> PolicyError {
        let (line, column) = line_col(self.src, span.start);
        PolicyError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            message,
        }
    }

    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        line_col(self.src, span.start).0
    }

    fn assets(&self, raw: Vec<RawAsset>) -> Result<Vec<Asset>, PolicyError> {
        let mut out: Vec<Asset> = Vec::with_capacity(raw.len());
        for a in raw {
            let id = match *a.contract.get_ref() {
                ContractLit::Native => AssetId::native(a.chain_id),
                ContractLit::Token(c) => AssetId::token(a.chain_id, c),
            };
            let symbol = a.symbol.get_ref();
            let sym_ok = !symbol.is_empty()
                && symbol.len() <= 32
                && symbol
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-');
            if !sym_ok {
                return Err(self.invalid(
                    a.symbol.span(),
                    format!(
                        "symbol `{symbol}` must be 1 to 32 letters, digits, `.`, `_` or `-` (it is written after amounts)"
                    ),
                ));
            }
            let decimals = *a.decimals.get_ref();
            if decimals > MAX_DECIMALS {
                return Err(self.invalid(
                    a.decimals.span(),
                    format!("decimals {decimals} is more than {MAX_DECIMALS}"),
                ));
            }
            if let Some(d) = amount::native_unit(symbol) {
                let ok = id.contract.is_none() && symbol == "ETH" && decimals == d;
                if !ok {
                    return Err(self.invalid(
                        a.symbol.span(),
                        format!(
                            "symbol `{symbol}` is reserved for the native unit it names (wei, gwei, ether/ETH with 18 decimals)"
                        ),
                    ));
                }
            }
            if out.iter().any(|o| o.id == id) {
                return Err(
                    self.invalid(a.contract.span(), format!("asset {id} is registered twice"))
                );
            }
            if out
                .iter()
                .any(|o| o.id.chain_id == id.chain_id && o.symbol == *symbol)
            {
                return Err(self.invalid(
                    a.symbol.span(),
                    format!("symbol `{symbol}` is used twice on chain {}", id.chain_id),
                ));
            }
            out.push(Asset {
                id,
                symbol: symbol.clone(),
                decimals,
            });
        }
        Ok(out)
    }

    fn books(&self, raw: BTreeMap<String, Spanned<RawBook>>) -> Result<Books, PolicyError> {
        let mut out = BTreeMap::new();
        let mut metas = BTreeMap::new();
        let mut cooling_entries = 0usize;
        for (name, book) in raw {
            check_name(&name)
                .map_err(|e| self.invalid(book.span(), format!("address book {e}")))?;
            let book = book.into_inner();
            if let Some(period) = &book.cooling_off {
                // Every `policy.load` lists each entry of these books with its first load.
                cooling_entries += book.addresses.get_ref().len();
                if cooling_entries > MAX_COOLING_ENTRIES {
                    return Err(self.invalid(
                        period.span(),
                        format!(
                            "address books with `cooling_off` hold more than \
                             {MAX_COOLING_ENTRIES} entries together (each load records every \
                             one); split the list or drop `cooling_off` from a book that does \
                             not need it"
                        ),
                    ));
                }
            }
            if book.addresses.get_ref().is_empty() {
                return Err(self.invalid(
                    book.addresses.span(),
                    format!("address book `{name}` is empty"),
                ));
            }
            let mut set = BTreeSet::new();
            let mut meta = BookMeta {
                cooling_off: book.cooling_off.map(Spanned::into_inner),
                labels: BTreeMap::new(),
            };
            for a in book.addresses.into_inner() {
                let entry = a.get_ref();
                let addr = parse_address(&entry.address).map_err(|e| self.invalid(a.span(), e))?;
                let fresh = set.insert(addr);
                if let Some(label) = &entry.label {
                    check_label(label).map_err(|e| {
                        self.invalid(a.span(), format!("address book `{name}`: {e}"))
                    })?;
                    if meta.labels.insert(addr, label.clone()).is_some() || !fresh {
                        return Err(self.invalid(
                            a.span(),
                            format!("address book `{name}` lists {addr} twice; list it once, with one label"),
                        ));
                    }
                } else if meta.labels.contains_key(&addr) {
                    return Err(self.invalid(
                        a.span(),
                        format!(
                            "address book `{name}` lists {addr} twice; list it once, with one label"
                        ),
                    ));
                }
            }
            out.insert(name.clone(), set);
            metas.insert(name, meta);
        }
        Ok((out, metas))
    }

    fn groups(
        &self,
        raw: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    ) -> Result<BTreeMap<String, BTreeSet<String>>, PolicyError> {
        let mut out = BTreeMap::new();
        for (name, members) in raw {
            check_name(&name).map_err(|e| self.invalid(members.span(), format!("group {e}")))?;
            if members.get_ref().is_empty() {
                return Err(self.invalid(members.span(), format!("group `{name}` is empty")));
            }
            let mut set = BTreeSet::new();
            for m in members.into_inner() {
                if m.get_ref().is_empty() {
                    return Err(self.invalid(m.span(), "an empty client id".into()));
                }
                set.insert(m.into_inner());
            }
            out.insert(name, set);
        }
        Ok(out)
    }

    /// `[approvers]`: client id = `"ed25519:<64 hex digits>"`, a valid Ed25519 public key.
    fn approvers(
        &self,
        raw: BTreeMap<String, Spanned<String>>,
    ) -> Result<BTreeMap<String, [u8; 32]>, PolicyError> {
        let mut out = BTreeMap::new();
        for (id, key) in raw {
            if id.is_empty() || id.chars().any(char::is_control) {
                return Err(self.invalid(
                    key.span(),
                    "approver: an empty or unprintable client id".into(),
                ));
            }
            out.insert(
                id.clone(),
                parse_approver_key(key.get_ref())
                    .map_err(|e| self.invalid(key.span(), format!("approver `{id}`: {e}")))?,
            );
        }
        Ok(out)
    }
}

/// Parses `ed25519:<64 hex digits>` into a public key that is a valid Ed25519 point.
pub fn parse_approver_key(text: &str) -> Result<[u8; 32], String> {
    let Some(hex_part) = text.strip_prefix("ed25519:") else {
        return Err(format!(
            "key {text:?} must be written `ed25519:<64 hex digits>` (as `signerctl approver keygen` prints it)"
        ));
    };
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut key)
        .map_err(|_| "key must have exactly 64 hex digits after `ed25519:`".to_owned())?;
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| "key is not a valid Ed25519 public key".to_owned())?;
    Ok(key)
}

/// Address books by name, and their labels and cooling-off periods.
type Books = (
    BTreeMap<String, BTreeSet<Address>>,
    BTreeMap<String, BookMeta>,
);

/// Everything name resolution needs.
pub(crate) struct Env<'a> {
    pub(crate) cx: Cx<'a>,
    pub(crate) assets: &'a [Asset],
    pub(crate) books: &'a BTreeMap<String, BTreeSet<Address>>,
    pub(crate) book_meta: &'a BTreeMap<String, BookMeta>,
    pub(crate) groups: &'a BTreeMap<String, BTreeSet<String>>,
    pub(crate) approvers: &'a BTreeMap<String, [u8; 32]>,
}

/// A resolved amount: base units, the token its symbol names, how to print it.
pub(crate) type Resolved = (U256, Option<AssetId>, AmountFormat);

/// What unit an amount field is in.
#[derive(Clone, Copy)]
pub(crate) enum Unit<'a> {
    /// The native coin, on these chains (all registered chains when `None`).
    Native(Option<&'a BTreeSet<u64>>),
    /// Some ERC-20 token, on these chains.
    Token(Option<&'a BTreeSet<u64>>),
    /// Exactly this asset.
    Of(AssetId),
}

fn chain_list(chains: Option<&BTreeSet<u64>>) -> String {
    match chains {
        Some(c) => {
            let v: Vec<String> = c.iter().map(u64::to_string).collect();
            format!("chain {}", v.join(", "))
        }
        None => "any registered chain".into(),
    }
}

impl Env<'_> {
    /// Non-empty list or `None`; an empty list would match nothing, so it is refused.
    fn list<T>(&self, field: &str, v: List<T>) -> Result<Option<Vec<T>>, PolicyError> {
        match v {
            None => Ok(None),
            Some(s) if s.get_ref().is_empty() => Err(self.cx.invalid(
                s.span(),
                format!("`{field}` is empty; omit it to match any"),
            )),
            Some(s) => Ok(Some(s.into_inner())),
        }
    }

    fn strings(
        &self,
        field: &str,
        v: List<String>,
    ) -> Result<Option<BTreeSet<String>>, PolicyError> {
        let span = v.as_ref().map(Spanned::span);
        let list = self.list(field, v)?;
        if let (Some(l), Some(span)) = (&list, span)
            && l.iter().any(String::is_empty)
        {
            return Err(self
                .cx
                .invalid(span, format!("`{field}` has an empty entry")));
        }
        Ok(list.map(|l| l.into_iter().collect()))
    }

    fn selectors(
        &self,
        v: List<Spanned<String>>,
    ) -> Result<Option<BTreeSet<[u8; 4]>>, PolicyError> {
        let Some(list) = self.list("selectors", v)? else {
            return Ok(None);
        };
        let mut out = BTreeSet::new();
        for s in list {
            let sel = Selector::parse(s.get_ref()).map_err(|e| self.cx.invalid(s.span(), e))?;
            out.insert(sel.0);
        }
        Ok(Some(out))
    }

    /// `message_prefixes`: non-empty strings of at most [`MESSAGE_HEAD_BYTES`] bytes (the
    /// daemon keeps no more of a message's text).
    fn prefixes(&self, v: List<Spanned<String>>) -> Result<Option<BTreeSet<String>>, PolicyError> {
        let Some(list) = self.list("message_prefixes", v)? else {
            return Ok(None);
        };
        let mut out = BTreeSet::new();
        for p in list {
            let len = p.get_ref().len();
            if len == 0 || len > MESSAGE_HEAD_BYTES {
                return Err(self.cx.invalid(
                    p.span(),
                    format!(
                        "`message_prefixes`: a prefix must be 1 to {MESSAGE_HEAD_BYTES} bytes long (this one is {len})"
                    ),
                ));
            }
            out.insert(p.into_inner());
        }
        Ok(Some(out))
    }

    fn group_set(&self, v: List<Spanned<String>>) -> Result<Option<Groups>, PolicyError> {
        let Some(names) = self.list("groups", v)? else {
            return Ok(None);
        };
        let mut members = BTreeSet::new();
        let mut written = Vec::with_capacity(names.len());
        for n in names {
            let Some(m) = self.groups.get(n.get_ref()) else {
                return Err(self.cx.invalid(
                    n.span(),
                    format!("group `{}` is not defined in [groups]", n.get_ref()),
                ));
            };
            members.extend(m.iter().cloned());
            written.push(n.into_inner());
        }
        Ok(Some(Groups {
            names: written,
            members,
        }))
    }

    pub(crate) fn addrs(&self, field: &str, v: Addrs) -> Result<Option<AddrSet>, PolicyError> {
        let Some(list) = self.list(field, v)? else {
            return Ok(None);
        };
        let mut set = BTreeSet::new();
        let mut cooling = Vec::new();
        let mut written = Vec::with_capacity(list.len());
        for entry in list {
            let parsed =
                AddrRef::parse(entry.get_ref()).map_err(|e| self.cx.invalid(entry.span(), e))?;
            match &parsed {
                AddrRef::Addr(a) => {
                    set.insert(*a);
                }
                AddrRef::Book(name) => {
                    let period = self.book_meta.get(name).and_then(|m| m.cooling_off);
                    if let (Some(book), Some(period)) = (self.books.get(name), period) {
                        cooling.push((name.clone(), book, period));
                        written.push(parsed.to_string());
                        continue;
                    }
                    let Some(book) = self.books.get(name) else {
                        return Err(self.cx.invalid(
                            entry.span(),
                            format!(
                                "address book `{name}` is not defined (add [address_books.{name}])"
                            ),
                        ));
                    };
                    set.extend(book.iter().copied());
                }
            }
            written.push(parsed.to_string());
        }
        Ok(Some(AddrSet::build(set, cooling, written)))
    }

    /// Resolves an amount literal; returns base units, the token it names (for `Unit::Token`
    /// with a symbol) and how to print amounts of that unit.
    pub(crate) fn amount(
        &self,
        field: &str,
        lit: &Spanned<AmountLit>,
        unit: Unit<'_>,
    ) -> Result<Resolved, PolicyError> {
        let err = |m: String| self.cx.invalid(lit.span(), format!("`{field}`: {m}"));
        let base_format = || match unit {
            Unit::Native(chains) => self.native_format(chains),
            Unit::Token(_) => AmountFormat::base_units(),
            Unit::Of(id) => format_of(self.assets, id),
        };
        let text = match lit.get_ref() {
            AmountLit::Int(v) => return Ok((U256::from(*v), None, base_format())),
            AmountLit::Text(t) => t,
        };
        let sp = amount::split(text).map_err(&err)?;
        let Some(u) = sp.unit else {
            let v = amount::scale(text, sp.int, sp.frac, 0).map_err(&err)?;
            return Ok((v, None, base_format()));
        };
        let scaled = |decimals: u8| amount::scale(text, sp.int, sp.frac, decimals).map_err(&err);
        let in_chains = |chains: Option<&BTreeSet<u64>>, a: &Asset| {
            chains.is_none_or(|c| c.contains(&a.id.chain_id))
        };
        match unit {
            Unit::Native(chains) => {
                if let Some(d) = amount::native_unit(u) {
                    return Ok((scaled(d)?, None, self.native_format(chains)));
                }
                let natives: Vec<&Asset> = self
                    .assets
                    .iter()
                    .filter(|a| a.symbol == u && a.id.contract.is_none() && in_chains(chains, a))
                    .collect();
                let Some(first) = natives.first() else {
                    if self.assets.iter().any(|a| a.symbol == u) {
                        return Err(err(format!(
                            "`{text}` names a token, but this amount is in the native coin's units (wei, gwei, ether)"
                        )));
                    }
                    return Err(err(format!(
                        "`{text}`: unknown unit `{u}` on {} (native units are wei, gwei, ether or a native [[asset]] symbol)",
                        chain_list(chains)
                    )));
                };
                if natives.iter().any(|a| a.decimals != first.decimals) {
                    return Err(err(format!(
                        "`{text}`: `{u}` is ambiguous: native assets with different decimals on {}; narrow `chain_ids`",
                        chain_list(chains)
                    )));
                }
                let fmt = AmountFormat {
                    symbol: first.symbol.clone(),
                    decimals: first.decimals,
                };
                Ok((scaled(first.decimals)?, None, fmt))
            }
            Unit::Token(chains) => {
                if amount::native_unit(u).is_some() {
                    return Err(err(format!(
                        "`{text}` is in native units, but this amount is an ERC-20 token amount"
                    )));
                }
                let tokens: Vec<&Asset> = self
                    .assets
                    .iter()
                    .filter(|a| a.symbol == u && a.id.contract.is_some() && in_chains(chains, a))
                    .collect();
                match tokens.as_slice() {
                    [one] => Ok((
                        scaled(one.decimals)?,
                        Some(one.id),
                        AmountFormat {
                            symbol: one.symbol.clone(),
                            decimals: one.decimals,
                        },
                    )),
                    [] => Err(err(format!(
                        "`{text}`: unknown token symbol `{u}` on {} (register it with [[asset]])",
                        chain_list(chains)
                    ))),
                    many => {
                        let c: Vec<String> = many.iter().map(|a| a.id.to_string()).collect();
                        Err(err(format!(
                            "`{text}`: symbol `{u}` is ambiguous ({}); narrow `chain_ids` to one chain",
                            c.join(", ")
                        )))
                    }
                }
            }
            Unit::Of(id) => {
                let fmt = format_of(self.assets, id);
                if id.contract.is_none()
                    && let Some(d) = amount::native_unit(u)
                {
                    return Ok((scaled(d)?, None, fmt));
                }
                match self.assets.iter().find(|a| a.id == id) {
                    Some(a) if a.symbol == u => Ok((scaled(a.decimals)?, None, fmt)),
                    _ => Err(err(format!(
                        "`{text}` is not in the units of asset {id} ({})",
                        fmt.symbol
                    ))),
                }
            }
        }
    }

    fn native_format(&self, chains: Option<&BTreeSet<u64>>) -> AmountFormat {
        let one = chains
            .filter(|c| c.len() == 1)
            .and_then(|c| c.first().copied());
        match one {
            Some(c) => format_of(self.assets, AssetId::native(c)),
            None => AmountFormat::ether(),
        }
    }

    fn rule(&self, r: RawRule, tokens: &Arc<BTreeSet<AssetId>>) -> Result<Rule, PolicyError> {
        let cx = self.cx;
        let id = r.id.get_ref().clone();
        let ctx = |e: PolicyError| prefix(e, &format!("rule `{id}`: "));
        let clients = self.strings("clients", r.clients).map_err(ctx)?;
        let roles = self.strings("roles", r.roles).map_err(ctx)?;
        let keys = self.strings("keys", unspanned(r.keys)).map_err(ctx)?;
        let kinds = self.list("kinds", r.kinds).map_err(ctx)?;
        let chain_ids: Option<BTreeSet<u64>> = self
            .list("chain_ids", r.chain_ids)
            .map_err(ctx)?
            .map(|v| v.into_iter().collect());
        let chains = chain_ids.as_ref();
        let native = |field: &str, v: &Amount| -> Result<Option<U256>, PolicyError> {
            v.as_ref()
                .map(|l| self.amount(field, l, Unit::Native(chains)).map(|x| x.0))
                .transpose()
                .map_err(ctx)
        };
        let value_max = native("value_max", &r.value_max)?;
        let value_min = match (&r.value_min, &r.value_above) {
            (Some(_), Some(a)) => return Err(both_bounds(cx, &id, "value", a)),
            (None, Some(a)) => Some(above(
                cx,
                &id,
                "value_above",
                a,
                native("value_above", &r.value_above)?,
            )?),
            _ => native("value_min", &r.value_min)?,
        };
        let max_fee_max = native("max_fee_per_gas_max", &r.max_fee_per_gas_max)?;
        let erc20_min = match (&r.erc20_amount_min, &r.erc20_amount_above) {
            (Some(_), Some(a)) => return Err(both_bounds(cx, &id, "erc20_amount", a)),
            (None, Some(a)) => Some(("erc20_amount_above", a)),
            (m, None) => m.as_ref().map(|m| ("erc20_amount_min", m)),
        };
        let erc20_amount = self
            .token_bound(erc20_min, r.erc20_amount_max.as_ref(), chains)
            .map_err(ctx)?;
        let hours = r.hours.map(|h| self.hours(h)).transpose().map_err(ctx)?;
        let selectors_span = r.selectors.as_ref().map(Spanned::span);
        let args = self
            .function(r.function.as_ref(), r.args, selectors_span, chains)
            .map_err(ctx)?;
        let m = Matchers {
            kinds: kinds.as_deref().map_or(KindSet::DEFAULT, KindSet::of),
            kinds_written: kinds.is_some(),
            keys: keys.clone(),
            clients: clients.clone(),
            groups: self.group_set(r.groups).map_err(ctx)?,
            roles: roles.clone(),
            native_format: self.native_format(chains),
            chain_ids,
            to: self.addrs("to", r.to).map_err(ctx)?,
            not_to: self.addrs("not_to", r.not_to).map_err(ctx)?,
            contracts: self.addrs("contracts", r.contracts).map_err(ctx)?,
            selectors: self.selectors(r.selectors).map_err(ctx)?,
            counterparty: self
                .addrs("erc20_counterparty", r.erc20_counterparty)
                .map_err(ctx)?,
            erc20_amount,
            value_min,
            value_max,
            gas_limit_max: r.gas_limit_max,
            max_fee_max,
            primary_types: self
                .strings("primary_types", r.primary_types)
                .map_err(ctx)?,
            domain_names: self.strings("domain_names", r.domain_names).map_err(ctx)?,
            verifying_contracts: self
                .addrs("verifying_contracts", r.verifying_contracts)
                .map_err(ctx)?,
            domain_chain_ids: self
                .list("domain_chain_ids", r.domain_chain_ids)
                .map_err(ctx)?
                .map(|v| v.into_iter().collect()),
            permit_spenders: self
                .addrs("permit_spenders", r.permit_spenders)
                .map_err(ctx)?,
            message_max_bytes: r.message_max_bytes,
            message_prefixes: self.prefixes(r.message_prefixes).map_err(ctx)?,
            hours,
            registered: (r.effect != Effect::Deny).then(|| Arc::clone(tokens)),
            args,
        };
        let approval = match r.effect {
            Effect::RequireApproval => {
                let Some(list) = self.list("approvals", r.approvals).map_err(ctx)? else {
                    return Err(cx.invalid(
                        r.id.span(),
                        format!("rule `{id}`: `require_approval` needs `approvals = [{{ group = \"...\", min = N }}]`"),
                    ));
                };
                let Some(ttl) = r.ttl else {
                    return Err(cx.invalid(
                        r.id.span(),
                        format!("rule `{id}`: `require_approval` needs `ttl` (how long approvals stay valid, e.g. \"1h\")"),
                    ));
                };
                let mut groups: Vec<(String, u32)> = Vec::with_capacity(list.len());
                for a in list {
                    let span = a.span();
                    let a = a.into_inner();
                    let name = a.group.get_ref();
                    let Some(members) = self.groups.get(name) else {
                        return Err(cx.invalid(
                            a.group.span(),
                            format!("rule `{id}`: group `{name}` is not defined in [groups]"),
                        ));
                    };
                    if a.min == 0 || usize::try_from(a.min).map_or(true, |m| m > members.len()) {
                        return Err(cx.invalid(
                            span,
                            format!(
                                "rule `{id}`: `min` must be 1 to {} (the size of group `{name}`)",
                                members.len()
                            ),
                        ));
                    }
                    if let Some(m) = members.iter().find(|m| !self.approvers.contains_key(*m)) {
                        return Err(cx.invalid(
                            a.group.span(),
                            format!("rule `{id}`: member `{m}` of approver group `{name}` has no key in [approvers]"),
                        ));
                    }
                    if groups.iter().any(|(g, _)| g == name) {
                        return Err(cx.invalid(
                            a.group.span(),
                            format!("rule `{id}`: group `{name}` is listed twice in `approvals`"),
                        ));
                    }
                    groups.push((name.clone(), a.min));
                }
                Some(ApprovalSpec {
                    groups,
                    ttl: *ttl.get_ref(),
                    veto: r.veto.is_none_or(|v| *v.get_ref()),
                })
            }
            Effect::Allow | Effect::Deny => {
                let stray = r
                    .approvals
                    .map(|s| ("approvals", s.span()))
                    .or(r.ttl.map(|s| ("ttl", s.span())))
                    .or(r.veto.map(|s| ("veto", s.span())));
                if let Some((field, span)) = stray {
                    return Err(cx.invalid(
                        span,
                        format!("rule `{id}`: `{field}` is only for rules with effect = \"require_approval\""),
                    ));
                }
                None
            }
        };
        Ok(Rule {
            line: cx.line(&r.id.span()),
            id,
            description: r.description,
            effect: r.effect,
            clients: clients.map(|c| c.into_iter().collect()),
            roles: roles.map(|c| c.into_iter().collect()),
            keys: keys.map(|c| c.into_iter().collect()),
            kinds,
            m,
            approval,
        })
    }

    /// `function` and `args` (see [`crate::args`]): `args` needs `function`, and `function`
    /// replaces `selectors`.
    fn function(
        &self,
        function: Option<&Spanned<String>>,
        args: Option<Spanned<Vec<crate::args::RawArg>>>,
        selectors: Option<Range<usize>>,
        chains: Option<&BTreeSet<u64>>,
    ) -> Result<Option<Arc<crate::args::CallSpec>>, PolicyError> {
        let Some(function) = function else {
            if let Some(args) = &args {
                return Err(self.cx.invalid(
                    args.span(),
                    "`args` needs `function` (the signature whose arguments it constrains)".into(),
                ));
            }
            return Ok(None);
        };
        if let Some(s) = selectors {
            return Err(self.cx.invalid(
                s,
                "`selectors` and `function` cannot both be given: `function` implies its selector"
                    .into(),
            ));
        }
        self.call_spec(function, args, chains)
            .map(|s| Some(Arc::new(s)))
    }

    fn token_bound(
        &self,
        min: Option<(&str, &Spanned<AmountLit>)>,
        max: Option<&Spanned<AmountLit>>,
        chains: Option<&BTreeSet<u64>>,
    ) -> Result<Option<TokenBound>, PolicyError> {
        if min.is_none() && max.is_none() {
            return Ok(None);
        }
        let min = min
            .map(|(field, l)| {
                let (v, token, format) = self.amount(field, l, Unit::Token(chains))?;
                // An exclusive bound is the inclusive bound one base unit higher.
                let v = if field == "erc20_amount_above" {
                    v.checked_add(U256::from(1u8)).ok_or_else(|| {
                        self.cx.invalid(
                            l.span(),
                            format!("`{field}`: no amount is above the largest one"),
                        )
                    })?
                } else {
                    v
                };
                Ok::<_, PolicyError>(((v, token, format), l.span()))
            })
            .transpose()?;
        let max = max
            .map(|l| {
                self.amount("erc20_amount_max", l, Unit::Token(chains))
                    .map(|r| (r, l.span()))
            })
            .transpose()?;
        let token_of = |x: &Option<(Resolved, Range<usize>)>| {
            x.as_ref()
                .and_then(|((_, t, f), s)| t.map(|t| (t, f.clone(), s.clone())))
        };
        let (tmin, tmax) = (token_of(&min), token_of(&max));
        if let (Some((a, _, _)), Some((b, _, span))) = (&tmin, &tmax)
            && a != b
        {
            return Err(self.cx.invalid(
                span.clone(),
                format!(
                    "`erc20_amount_min` is in {a} but `erc20_amount_max` in {b}; use one token"
                ),
            ));
        }
        let pinned = tmax.or(tmin);
        Ok(Some(TokenBound {
            token: pinned.as_ref().map(|p| p.0),
            format: pinned.map_or_else(AmountFormat::base_units, |p| p.1),
            min: min.map(|((v, _, _), _)| v),
            max: max.map(|((v, _, _), _)| v),
        }))
    }

    fn hours(&self, h: Spanned<RawHours>) -> Result<Hours, PolicyError> {
        let span = h.span();
        let h = h.into_inner();
        if h.from == h.to {
            return Err(self.cx.invalid(
                span,
                "`hours`: `from` equals `to`; a window must not be empty (omit `hours` to allow all day)".into(),
            ));
        }
        if h.from.0 == 1440 {
            return Err(self
                .cx
                .invalid(span, "`hours`: `from` cannot be 24:00".into()));
        }
        let days = match self.list("days", h.days)? {
            None => 0x7f,
            Some(days) => {
                let mut mask = 0u8;
                for d in days {
                    if mask & (1 << d.0) != 0 {
                        let name = DAYS.get(usize::from(d.0)).copied().unwrap_or("?");
                        return Err(self
                            .cx
                            .invalid(span, format!("`hours`: day `{name}` is listed twice")));
                    }
                    mask |= 1 << d.0;
                }
                mask
            }
        };
        Ok(Hours {
            from: h.from,
            to: h.to,
            offset: h.utc_offset,
            days,
        })
    }

    fn limit(&self, l: RawLimit) -> Result<Limit, PolicyError> {
        let cx = self.cx;
        let id = l.id.get_ref().clone();
        let ctx = |e: PolicyError| prefix(e, &format!("limit `{id}`: "));
        let chain_ids: Option<BTreeSet<u64>> = self
            .list("chain_ids", l.chain_ids)
            .map_err(ctx)?
            .map(|v| v.into_iter().collect());
        let asset = match &l.asset {
            None => None,
            Some(a) => Some(self.asset_ref(a, chain_ids.as_ref()).map_err(ctx)?),
        };
        let amount = |field: &str, v: &Amount| -> Result<Option<U256>, PolicyError> {
            let Some(lit) = v else { return Ok(None) };
            let Some(asset) = asset.as_ref().map(LimitAsset::first) else {
                return Err(cx.invalid(
                    lit.span(),
                    format!("limit `{id}`: `{field}` needs `asset` (amounts of different assets cannot be added)"),
                ));
            };
            self.amount(field, lit, Unit::Of(asset))
                .map(|x| Some(x.0))
                .map_err(ctx)
        };
        let per_tx_max = amount("per_tx_max", &l.per_tx_max)?;
        let max_amount = amount("max_amount", &l.max_amount)?;
        let max_count = match &l.max_count {
            Some(c) if *c.get_ref() == 0 => {
                return Err(cx.invalid(
                    c.span(),
                    format!("limit `{id}`: `max_count` must be at least 1 (to forbid, write a deny rule)"),
                ));
            }
            c => c.as_ref().map(|c| *c.get_ref()),
        };
        let windowed = max_amount.is_some() || max_count.is_some();
        match (&l.window, windowed) {
            (None, true) => {
                return Err(cx.invalid(
                    l.id.span(),
                    format!(
                        "limit `{id}`: `max_amount` and `max_count` need a `window` (e.g. \"24h\")"
                    ),
                ));
            }
            (Some(w), false) => {
                return Err(cx.invalid(
                    w.span(),
                    format!("limit `{id}`: `window` needs `max_amount` or `max_count`"),
                ));
            }
            _ => {}
        }
        if per_tx_max.is_none() && !windowed {
            return Err(cx.invalid(
                l.id.span(),
                format!("limit `{id}`: set `per_tx_max`, or a `window` with `max_amount` and/or `max_count`"),
            ));
        }
        let key_by = match self.list("key_by", l.key_by).map_err(ctx)? {
            None => KeyBy {
                key: true,
                asset: asset.is_some(),
                ..KeyBy::default()
            },
            Some(parts) => {
                let mut k = KeyBy::default();
                for p in &parts {
                    let slot = match p {
                        RawKeyBy::Key => &mut k.key,
                        RawKeyBy::Asset => &mut k.asset,
                        RawKeyBy::Client => &mut k.client,
                        RawKeyBy::Destination => &mut k.destination,
                    };
                    if *slot {
                        return Err(cx.invalid(
                            l.id.span(),
                            format!("limit `{id}`: `key_by` lists a part twice"),
                        ));
                    }
                    *slot = true;
                }
                if k.asset && asset.is_none() {
                    return Err(cx.invalid(
                        l.id.span(),
                        format!(
                            "limit `{id}`: `key_by` has \"asset\" but the limit has no `asset`"
                        ),
                    ));
                }
                k
            }
        };
        let kinds = self.list("kinds", l.kinds).map_err(ctx)?;
        let scope = Scope {
            kinds: kinds.as_deref().map_or(KindSet::ALL, KindSet::of),
            keys: self.strings("keys", unspanned(l.keys)).map_err(ctx)?,
            clients: self.strings("clients", l.clients).map_err(ctx)?,
            groups: self.group_set(l.groups).map_err(ctx)?,
            roles: self.strings("roles", l.roles).map_err(ctx)?,
            chain_ids,
            to: self.addrs("to", l.to).map_err(ctx)?,
        };
        Ok(Limit {
            line: cx.line(&l.id.span()),
            format: asset.as_ref().map_or_else(AmountFormat::base_units, |a| {
                format_of(self.assets, a.first())
            }),
            id,
            description: l.description,
            scope,
            asset,
            per_tx_max,
            window: l.window.map(Spanned::into_inner),
            max_amount,
            max_count,
            key_by,
        })
    }

    /// Resolves a limit's `asset`. `"native"` (or `ether`/`ETH`) counts the native coin of
    /// every chain in `chain_ids`; a symbol with several `chain_ids` counts its registered
    /// token on each of them, which must all exist and have the same decimals.
    fn asset_ref(
        &self,
        a: &Spanned<RawAssetRef>,
        chains: Option<&BTreeSet<u64>>,
    ) -> Result<LimitAsset, PolicyError> {
        let err = |m: String| self.cx.invalid(a.span(), format!("`asset`: {m}"));
        let several = |ids: Vec<AssetId>| {
            LimitAsset::new(ids).ok_or_else(|| err("no chain to count it on".into()))
        };
        match a.get_ref() {
            RawAssetRef::Id(r) => Ok(LimitAsset::one(match r.contract {
                ContractLit::Native => AssetId::native(r.chain_id),
                ContractLit::Token(c) => AssetId::token(r.chain_id, c),
            })),
            RawAssetRef::Name(n) if n == "native" || amount::native_unit(n) == Some(18) => {
                let Some(chains) = chains else {
                    return Err(err(format!(
                        "`{n}` needs `chain_ids` (the chains whose native coin it counts), or write {{ chain_id = 1, contract = \"native\" }}"
                    )));
                };
                let ids: Vec<AssetId> = chains.iter().map(|c| AssetId::native(*c)).collect();
                let decimals = |id: AssetId| {
                    self.assets
                        .iter()
                        .find(|x| x.id == id)
                        .map_or(18, |x| x.decimals)
                };
                if let Some(odd) = ids.iter().find(|id| decimals(**id) != decimals(ids[0])) {
                    return Err(err(format!(
                        "the native coin of chain {} has {} decimals, but that of chain {} has {}; one limit cannot add them",
                        odd.chain_id,
                        decimals(*odd),
                        ids[0].chain_id,
                        decimals(ids[0])
                    )));
                }
                several(ids)
            }
            RawAssetRef::Name(n) if chains.is_some_and(|c| c.len() > 1) => {
                let chains = chains.map(|c| c.iter().copied()).into_iter().flatten();
                let mut ids: Vec<AssetId> = Vec::new();
                let mut decimals: Option<(u8, u64)> = None;
                for c in chains {
                    let Some(x) = self
                        .assets
                        .iter()
                        .find(|x| x.symbol == *n && x.id.chain_id == c)
                    else {
                        return Err(err(format!(
                            "asset symbol `{n}` is not registered on chain {c}; a limit with several `chain_ids` needs it on each"
                        )));
                    };
                    match decimals {
                        Some((d, first)) if d != x.decimals => {
                            return Err(err(format!(
                                "`{n}` has {} decimals on chain {c} but {d} on chain {first}; one limit cannot add them",
                                x.decimals
                            )));
                        }
                        Some(_) => {}
                        None => decimals = Some((x.decimals, c)),
                    }
                    ids.push(x.id);
                }
                several(ids)
            }
            RawAssetRef::Name(n) => {
                let found: Vec<&Asset> = self
                    .assets
                    .iter()
                    .filter(|x| x.symbol == *n && chains.is_none_or(|c| c.contains(&x.id.chain_id)))
                    .collect();
                match found.as_slice() {
                    [one] => Ok(LimitAsset::one(one.id)),
                    [] => Err(err(format!(
                        "unknown asset symbol `{n}` on {}",
                        chain_list(chains)
                    ))),
                    many => {
                        let c: Vec<String> = many.iter().map(|x| x.id.to_string()).collect();
                        Err(err(format!(
                            "symbol `{n}` is ambiguous ({}); narrow `chain_ids` or write {{ chain_id, contract }}",
                            c.join(", ")
                        )))
                    }
                }
            }
        }
    }

    fn rate_limit(&self, r: RawRateLimit) -> Result<RateLimit, PolicyError> {
        let id = r.id.get_ref().clone();
        let ctx = |e: PolicyError| prefix(e, &format!("rate limit `{id}`: "));
        if *r.max_requests.get_ref() == 0 {
            return Err(self.cx.invalid(
                r.max_requests.span(),
                format!("rate limit `{id}`: `max_requests` must be at least 1"),
            ));
        }
        Ok(RateLimit {
            line: self.cx.line(&r.id.span()),
            clients: self.strings("clients", r.clients).map_err(ctx)?,
            groups: self.group_set(r.groups).map_err(ctx)?,
            id,
            description: r.description,
            window: r.window.into_inner(),
            max_requests: r.max_requests.into_inner(),
        })
    }
}

/// `value_above`/`erc20_amount_above` next to the `_min` of the same quantity.
fn both_bounds(cx: Cx<'_>, id: &str, what: &str, at: &Spanned<AmountLit>) -> PolicyError {
    cx.invalid(
        at.span(),
        format!(
            "rule `{id}`: `{what}_min` and `{what}_above` both bound the amount from below; keep one"
        ),
    )
}

/// The inclusive bound equivalent to the exclusive bound `v` (amounts are whole base units).
fn above(
    cx: Cx<'_>,
    id: &str,
    field: &str,
    at: &Spanned<AmountLit>,
    v: Option<U256>,
) -> Result<U256, PolicyError> {
    v.and_then(|v| v.checked_add(U256::from(1u8)))
        .ok_or_else(|| {
            cx.invalid(
                at.span(),
                format!("rule `{id}`: `{field}`: no amount is above the largest one"),
            )
        })
}

/// A list of spanned strings without the inner spans (the list keeps its own).
fn unspanned(v: List<Spanned<String>>) -> List<String> {
    v.map(|s| {
        let span = s.span();
        Spanned::new(
            span,
            s.into_inner()
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
        )
    })
}

/// Prefixes the message of a located error with the item it is about.
fn prefix(e: PolicyError, p: &str) -> PolicyError {
    match e {
        PolicyError::Invalid {
            file,
            line,
            column,
            message,
        } if !message.starts_with(p) => PolicyError::Invalid {
            file,
            line,
            column,
            message: format!("{p}{message}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests;
