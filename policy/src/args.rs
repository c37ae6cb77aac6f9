//! Argument matchers: a rule's `function` (a Solidity function signature, parsed once when the
//! policy is loaded) and its `args` constraints on the decoded arguments of the calldata.
//!
//! Calldata is decoded with alloy's ABI decoder ([`alloy_dyn_abi`]) and accepted only when it
//! is exactly the canonical ABI encoding of the function's arguments: the right selector, no
//! short or trailing data, clean padding. Anything looser could be read one way here and
//! another way by the contract. Calldata that carries the function's selector but does not
//! decode makes the rule *indeterminate* (fail closed); calldata of another function simply
//! does not match. Each distinct function is decoded at most once per request ([`Calls`]).
//!
//! This module must never treat calldata it could not decode, or a `self` it does not know,
//! as satisfying a constraint of a rule that grants anything.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use alloy_dyn_abi::{DynSolType, DynSolValue};
use alloy_primitives::{I256, U256, keccak256};
use serde::Deserialize;
use toml::Spanned;

use crate::Action;
use crate::amount::{AmountFormat, AmountLit, AssetId};
use crate::book::Membership;
use crate::parse::{Env, PolicyError, Unit};
use crate::rule::{AddrSet, T};

/// Longest `function` signature accepted, in bytes.
pub(crate) const MAX_SIGNATURE_BYTES: usize = 2048;
/// Most `args` entries in one rule.
pub(crate) const MAX_ARGS: usize = 64;
/// Longest `eq`/`bytes` byte string or text accepted, in bytes.
const MAX_EXACT_BYTES: usize = 4096;
/// Most 32-byte words the arguments of a `function` may take before their dynamic parts:
/// 128 KiB, the daemon's calldata limit.
const MAX_HEAD_WORDS: usize = 128 * 1024 / 32;
/// Most characters of a decoded string or byte string shown in an explanation.
const SHOWN_CHARS: usize = 80;

// ---------------------------------------------------------------------------------------
// The schema, as written.

/// One entry of a rule's `args`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawArg {
    arg: Spanned<ArgRef>,
    eq: Option<Spanned<Scalar>>,
    #[serde(rename = "in")]
    in_list: Option<Spanned<Vec<Spanned<String>>>>,
    not_in: Option<Spanned<Vec<Spanned<String>>>>,
    min: Option<Spanned<Scalar>>,
    max: Option<Spanned<Scalar>>,
    bytes: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
}

/// An argument by position (`0`) or by path (`"params.recipient"`, `"0.3"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum ArgRef {
    Pos(u64),
    Path(String),
}

/// A matcher's value: what TOML can hold for it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Text(String),
}

// ---------------------------------------------------------------------------------------
// Compiled.

/// A rule's `function` and `args`, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CallSpec {
    /// The canonical signature (`name(type,...)`), whose hash gives the selector.
    pub(crate) canonical: String,
    pub(crate) selector: [u8; 4],
    /// The argument types, as one tuple.
    params: DynSolType,
    pub(crate) constraints: Vec<Constraint>,
}

impl PartialEq for CallSpec {
    fn eq(&self, o: &Self) -> bool {
        // The canonical signature determines the types; names only resolve paths.
        self.canonical == o.canonical && self.constraints == o.constraints
    }
}

impl Eq for CallSpec {}

/// One constraint on one decoded argument.
#[derive(Debug, Clone)]
pub(crate) struct Constraint {
    /// The argument as written (`params.recipient`, `2`).
    pub(crate) arg: String,
    /// Indices from the argument tuple down to the argument.
    path: Vec<usize>,
    /// The argument's ABI type, for explanations.
    ty: String,
    pub(crate) test: Test,
}

impl PartialEq for Constraint {
    fn eq(&self, o: &Self) -> bool {
        self.path == o.path && self.test == o.test
    }
}

impl Eq for Constraint {}

/// What a constraint requires of its argument.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    /// An address argument is (or with `negate`, is not) in `set` or, with `me`, the signing
    /// key's address (`self`).
    Addr {
        set: AddrSet,
        me: bool,
        negate: bool,
        /// `eq`, `in` or `not_in`, for explanations.
        op: &'static str,
    },
    /// An unsigned integer argument within bounds (`eq` is `min = max`).
    Uint {
        min: Option<U256>,
        max: Option<U256>,
        eq: bool,
        format: AmountFormat,
        /// For bounds written in a token's units: the argument that must hold that token.
        token: Option<TokenPin>,
    },
    /// A signed integer argument within bounds.
    Int {
        min: Option<I256>,
        max: Option<I256>,
        eq: bool,
    },
    /// A `bool`, `bytes`, `bytesN` or `string` argument equal to this.
    Exact(Exact),
}

impl PartialEq for Test {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (
                Test::Addr {
                    set: a,
                    me: am,
                    negate: an,
                    ..
                },
                Test::Addr {
                    set: b,
                    me: bm,
                    negate: bn,
                    ..
                },
            ) => a.set == b.set && am == bm && an == bn,
            (
                Test::Uint {
                    min: a0,
                    max: a1,
                    token: at,
                    ..
                },
                Test::Uint {
                    min: b0,
                    max: b1,
                    token: bt,
                    ..
                },
            ) => a0 == b0 && a1 == b1 && at == bt,
            (
                Test::Int {
                    min: a0, max: a1, ..
                },
                Test::Int {
                    min: b0, max: b1, ..
                },
            ) => a0 == b0 && a1 == b1,
            (Test::Exact(a), Test::Exact(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Test {}

/// The token that amount bounds written with a symbol are about, and the address argument
/// that must name it.
#[derive(Debug, Clone)]
pub(crate) struct TokenPin {
    pub(crate) asset: AssetId,
    /// The address argument as written.
    arg: String,
    path: Vec<usize>,
}

impl PartialEq for TokenPin {
    fn eq(&self, o: &Self) -> bool {
        self.asset == o.asset && self.path == o.path
    }
}

impl Eq for TokenPin {}

/// An exact value of a non-numeric, non-address argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exact {
    Bool(bool),
    /// `bytes` and `bytesN` (the N bytes).
    Bytes(Vec<u8>),
    Text(String),
}

impl fmt::Display for Exact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exact::Bool(b) => write!(f, "{b}"),
            Exact::Bytes(b) => f.write_str(&shown_hex(b)),
            Exact::Text(s) => f.write_str(&shown_text(s)),
        }
    }
}

fn shown_hex(b: &[u8]) -> String {
    let h = hex::encode(b);
    if h.len() > SHOWN_CHARS {
        format!("0x{}… ({} bytes)", &h[..SHOWN_CHARS], b.len())
    } else {
        format!("0x{h}")
    }
}

fn shown_text(s: &str) -> String {
    let shown: String = s.chars().take(SHOWN_CHARS).collect();
    if shown.len() < s.len() {
        format!("{shown:?}…")
    } else {
        format!("{shown:?}")
    }
}

// ---------------------------------------------------------------------------------------
// Function signatures.

/// Most nested tuples in a signature.
const MAX_NESTING: usize = 16;

/// A function signature as written: its name and its arguments with their names.
///
/// Solidity's human-readable form (`f((address to,uint256 amount) params)`): the argument
/// types with optional names, tuples in parentheses (or `tuple(...)`), array suffixes, and an
/// optional leading `function` keyword. The canonical form, whose Keccak-256 hash gives the
/// selector, drops the names.
pub(crate) struct Sig {
    name: String,
    inputs: Vec<SigParam>,
}

/// One argument of a [`Sig`]: its canonical type, its name (may be empty) and, for a tuple,
/// its members.
pub(crate) struct SigParam {
    ty: String,
    name: String,
    components: Vec<SigParam>,
}

/// The selector of a canonical signature: the first 4 bytes of its Keccak-256 hash.
fn selector_of(canonical: &str) -> [u8; 4] {
    let h = keccak256(canonical.as_bytes());
    [h[0], h[1], h[2], h[3]]
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'$'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// A cursor over a signature; errors carry the byte offset.
struct Cursor<'s> {
    s: &'s [u8],
    at: usize,
}

type SigResult<T> = Result<T, (usize, String)>;

impl Cursor<'_> {
    fn ws(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> SigResult<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err((self.at, format!("expected `{}`", c as char)))
        }
    }

    fn ident(&mut self) -> Option<String> {
        if !self.peek().is_some_and(is_ident_start) {
            return None;
        }
        let start = self.at;
        while self.peek().is_some_and(is_ident) {
            self.at += 1;
        }
        Some(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// `(` param, ... `)`
    fn params(&mut self, depth: usize) -> SigResult<Vec<SigParam>> {
        if depth > MAX_NESTING {
            return Err((
                self.at,
                format!("tuples nested more than {MAX_NESTING} deep"),
            ));
        }
        self.expect(b'(')?;
        let mut out = Vec::new();
        self.ws();
        if self.eat(b')') {
            return Ok(out);
        }
        loop {
            out.push(self.param(depth)?);
            self.ws();
            if self.eat(b')') {
                return Ok(out);
            }
            self.expect(b',')?;
        }
    }

    /// A type (elementary or tuple, with array suffixes), then an optional data location and
    /// an optional name.
    fn param(&mut self, depth: usize) -> SigResult<SigParam> {
        self.ws();
        let start = self.at;
        let (mut ty, components) = if self.peek() == Some(b'(') {
            let c = self.params(depth + 1)?;
            (tuple_type(&c), c)
        } else {
            let Some(word) = self.ident() else {
                return Err((self.at, "expected a type".into()));
            };
            if word == "tuple" && self.peek() == Some(b'(') {
                let c = self.params(depth + 1)?;
                (tuple_type(&c), c)
            } else {
                let canonical = DynSolType::parse(&word)
                    .map_err(|_| (start, format!("`{word}` is not an ABI type")))?;
                if matches!(
                    canonical,
                    DynSolType::Tuple(_) | DynSolType::CustomStruct { .. }
                ) {
                    return Err((start, format!("`{word}` is not an ABI type")));
                }
                (canonical.sol_type_name().into_owned(), Vec::new())
            }
        };
        while self.eat(b'[') {
            let from = self.at;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.at += 1;
            }
            let digits = String::from_utf8_lossy(&self.s[from..self.at]).into_owned();
            self.expect(b']')?;
            ty = format!("{ty}[{digits}]");
        }
        self.ws();
        let mut name = self.ident().unwrap_or_default();
        if matches!(name.as_str(), "memory" | "calldata" | "storage") {
            self.ws();
            name = self.ident().unwrap_or_default();
        }
        Ok(SigParam {
            ty,
            name,
            components,
        })
    }
}

fn tuple_type(c: &[SigParam]) -> String {
    let types: Vec<&str> = c.iter().map(|p| p.ty.as_str()).collect();
    format!("({})", types.join(","))
}

impl Sig {
    /// Parses a signature; an error gives the byte offset where it went wrong.
    pub(crate) fn parse(text: &str) -> SigResult<Sig> {
        let mut c = Cursor {
            s: text.as_bytes(),
            at: 0,
        };
        c.ws();
        let mut name = c
            .ident()
            .ok_or((c.at, "expected the function's name".to_owned()))?;
        if name == "function" {
            c.ws();
            name = c
                .ident()
                .ok_or((c.at, "expected the function's name".to_owned()))?;
        }
        let inputs = c.params(0)?;
        c.ws();
        if c.at != text.len() {
            return Err((
                c.at,
                "unexpected text after the arguments (write only the name and the arguments)"
                    .into(),
            ));
        }
        Ok(Sig { name, inputs })
    }

    /// `name(type,...)`: what the selector is the hash of.
    pub(crate) fn canonical(&self) -> String {
        format!("{}{}", self.name, tuple_type(&self.inputs))
    }
}

// ---------------------------------------------------------------------------------------
// Compilation.

/// A `function` argument while resolving a path: its declared name, components and type.
struct Arg<'a> {
    params: &'a [SigParam],
    types: &'a [DynSolType],
}

impl Env<'_> {
    /// Compiles `function` and `args`; `chains` are the rule's `chain_ids` (for amount units).
    pub(crate) fn call_spec(
        &self,
        function: &Spanned<String>,
        args: Option<Spanned<Vec<RawArg>>>,
        chains: Option<&BTreeSet<u64>>,
    ) -> Result<CallSpec, PolicyError> {
        let cx = self.cx;
        let text = function.get_ref();
        if text.len() > MAX_SIGNATURE_BYTES {
            return Err(cx.invalid(
                function.span(),
                format!("`function` is longer than {MAX_SIGNATURE_BYTES} bytes"),
            ));
        }
        let f = Sig::parse(text).map_err(|(at, e)| {
            cx.invalid(
                function.span(),
                format!(
                    "`function` {text:?} is not a Solidity function signature: {e} at character {}; write e.g. \"supply(address asset,uint256 amount,address onBehalfOf,uint16 referralCode)\"",
                    at + 1
                ),
            )
        })?;
        let mut types = Vec::with_capacity(f.inputs.len());
        for p in &f.inputs {
            types.push(DynSolType::parse(&p.ty).map_err(|e| {
                cx.invalid(
                    function.span(),
                    format!("`function`: argument type `{}`: {e}", p.ty),
                )
            })?);
        }
        // The decoder lays out every fixed-size array before reading: bound it by what
        // calldata can hold, so a policy cannot make one request allocate without limit.
        let words = types
            .iter()
            .fold(0usize, |n, t| n.saturating_add(head_words(t)));
        if words > MAX_HEAD_WORDS {
            return Err(cx.invalid(
                function.span(),
                format!(
                    "`function`: its arguments take {words} or more 32-byte words; calldata has at most {MAX_HEAD_WORDS}"
                ),
            ));
        }
        let canonical = f.canonical();
        let mut spec = CallSpec {
            selector: selector_of(&canonical),
            canonical,
            params: DynSolType::Tuple(types),
            constraints: Vec::new(),
        };
        let Some(args) = args else {
            return Ok(spec);
        };
        if args.get_ref().is_empty() {
            return Err(cx.invalid(
                args.span(),
                "`args` is empty; omit it to constrain no argument".into(),
            ));
        }
        if args.get_ref().len() > MAX_ARGS {
            return Err(cx.invalid(
                args.span(),
                format!("`args` has more than {MAX_ARGS} entries"),
            ));
        }
        let top = match &spec.params {
            DynSolType::Tuple(t) => t.clone(),
            _ => Vec::new(),
        };
        let root = Arg {
            params: &f.inputs,
            types: &top,
        };
        for raw in args.into_inner() {
            let c = self.constraint(&f, &root, raw, chains)?;
            spec.constraints.push(c);
        }
        Ok(spec)
    }

    /// Resolves `arg` (a position or a dotted path of names and positions) to indices and
    /// the argument's type.
    fn arg_path(
        &self,
        f: &Sig,
        root: &Arg<'_>,
        arg: &Spanned<String>,
    ) -> Result<(Vec<usize>, DynSolType), PolicyError> {
        let err = |m: String| self.cx.invalid(arg.span(), m);
        let written = arg.get_ref();
        if written.is_empty() {
            return Err(err("`arg` is empty".into()));
        }
        let mut path = Vec::new();
        let mut level = Arg {
            params: root.params,
            types: root.types,
        };
        let mut done: Option<DynSolType> = None;
        for seg in written.split('.') {
            if let Some(ty) = &done {
                return Err(err(format!(
                    "`arg` {written:?}: `{}` is {ty}, which has no members",
                    path_prefix(written, path.len())
                )));
            }
            let names: Vec<&str> = level.params.iter().map(|p| p.name.as_str()).collect();
            let at = match seg.parse::<usize>() {
                Ok(i) if i < level.params.len() => i,
                Ok(i) => {
                    return Err(err(format!(
                        "`arg` {written:?}: there is no argument {i} in `{}` ({} {})",
                        f.name,
                        level.params.len(),
                        if level.params.len() == 1 {
                            "argument"
                        } else {
                            "arguments"
                        }
                    )));
                }
                Err(_) => match names.iter().position(|n| *n == seg) {
                    Some(i) if names.iter().filter(|n| **n == seg).count() == 1 => i,
                    Some(_) => {
                        return Err(err(format!(
                            "`arg` {written:?}: `{seg}` names more than one argument; use its position"
                        )));
                    }
                    None => {
                        let known: Vec<&str> =
                            names.iter().copied().filter(|n| !n.is_empty()).collect();
                        return Err(err(format!(
                            "`arg` {written:?}: no argument is named `{seg}` (named: {}); name arguments in `function` or use positions",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        )));
                    }
                },
            };
            path.push(at);
            let (Some(p), Some(ty)) = (level.params.get(at), level.types.get(at)) else {
                return Err(err(format!("`arg` {written:?} does not exist")));
            };
            match ty {
                DynSolType::Tuple(inner) => {
                    level = Arg {
                        params: &p.components,
                        types: inner,
                    };
                    done = None;
                    // A tuple itself cannot be matched: keep it for the next segment.
                    if seg_is_last(written, path.len()) {
                        return Err(err(format!(
                            "`arg` {written:?} is a tuple; name one of its members (e.g. \"{written}.{}\")",
                            p.components
                                .first()
                                .map(|c| if c.name.is_empty() {
                                    "0".to_owned()
                                } else {
                                    c.name.clone()
                                })
                                .unwrap_or_else(|| "0".into())
                        )));
                    }
                }
                DynSolType::Array(_) | DynSolType::FixedArray(..) => {
                    return Err(err(format!(
                        "`arg` {written:?} is an array ({ty}); arrays cannot be constrained"
                    )));
                }
                other => done = Some(other.clone()),
            }
        }
        match done {
            Some(ty) => Ok((path, ty)),
            None => Err(err(format!("`arg` {written:?} does not name an argument"))),
        }
    }

    fn constraint(
        &self,
        f: &Sig,
        root: &Arg<'_>,
        raw: RawArg,
        chains: Option<&BTreeSet<u64>>,
    ) -> Result<Constraint, PolicyError> {
        let cx = self.cx;
        let arg_span = raw.arg.span();
        let written = match raw.arg.get_ref() {
            ArgRef::Pos(i) => i.to_string(),
            ArgRef::Path(p) => p.clone(),
        };
        let arg = Spanned::new(arg_span.clone(), written.clone());
        let (path, ty) = self.arg_path(f, root, &arg)?;
        let present: Vec<&str> = [
            ("eq", raw.eq.is_some()),
            ("in", raw.in_list.is_some()),
            ("not_in", raw.not_in.is_some()),
            ("min/max", raw.min.is_some() || raw.max.is_some()),
            ("bytes", raw.bytes.is_some()),
        ]
        .into_iter()
        .filter(|(_, p)| *p)
        .map(|(n, _)| n)
        .collect();
        match present.as_slice() {
            [_] => {}
            [] => {
                return Err(cx.invalid(
                    arg_span,
                    format!(
                        "argument `{written}` has no matcher; add one of `eq`, `in`, `not_in`, `min`/`max`, `bytes`"
                    ),
                ));
            }
            many => {
                return Err(cx.invalid(
                    arg_span,
                    format!(
                        "argument `{written}` has several matchers ({}); write one entry per matcher",
                        many.join(", ")
                    ),
                ));
            }
        }
        if let Some(t) = &raw.token
            && raw.min.is_none()
            && raw.max.is_none()
            && !(matches!(ty, DynSolType::Uint(_)) && raw.eq.is_some())
        {
            return Err(cx.invalid(
                t.span(),
                "`token` is only for amount bounds (`min`, `max`, `eq`) of an unsigned integer argument".into(),
            ));
        }
        let mismatch = |span: std::ops::Range<usize>, what: &str| {
            cx.invalid(
                span,
                format!("argument `{written}` is {ty}; {what} does not fit it"),
            )
        };
        let test = match &ty {
            DynSolType::Address => {
                if let Some(eq) = raw.eq {
                    let span = eq.span();
                    let Scalar::Text(s) = eq.into_inner() else {
                        return Err(mismatch(span, "`eq` that is not an address string"));
                    };
                    if s.starts_with("book:") {
                        return Err(cx.invalid(
                            span,
                            format!(
                                "argument `{written}`: `eq` takes one address or \"self\"; for an address book write `in = [\"{s}\"]`"
                            ),
                        ));
                    }
                    self.addr_test("eq", vec![Spanned::new(span.clone(), s)], span, false)?
                } else if let Some(l) = raw.in_list {
                    let span = l.span();
                    self.addr_test("in", l.into_inner(), span, false)?
                } else if let Some(l) = raw.not_in {
                    let span = l.span();
                    self.addr_test("not_in", l.into_inner(), span, true)?
                } else {
                    let span = raw.min.as_ref().or(raw.max.as_ref()).map_or_else(
                        || raw.bytes.as_ref().map_or(arg_span.clone(), Spanned::span),
                        Spanned::span,
                    );
                    return Err(mismatch(span, "a numeric or bytes matcher"));
                }
            }
            DynSolType::Uint(bits) => {
                if let Some(s) = raw.in_list.as_ref().or(raw.not_in.as_ref()) {
                    return Err(mismatch(s.span(), "an address list"));
                }
                if let Some(b) = &raw.bytes {
                    return Err(mismatch(b.span(), "`bytes`"));
                }
                self.uint_test(
                    &written, *bits, raw.eq, raw.min, raw.max, raw.token, f, root, chains,
                )?
            }
            DynSolType::Int(bits) => {
                if let Some(s) = raw.in_list.as_ref().or(raw.not_in.as_ref()) {
                    return Err(mismatch(s.span(), "an address list"));
                }
                if let Some(b) = &raw.bytes {
                    return Err(mismatch(b.span(), "`bytes`"));
                }
                let int = |v: Option<Spanned<Scalar>>, name: &str| -> Result<_, PolicyError> {
                    let Some(v) = v else { return Ok(None) };
                    let span = v.span();
                    let parsed = match v.into_inner() {
                        Scalar::Int(i) => I256::try_from(i).ok(),
                        Scalar::Text(t) => I256::from_dec_str(t.trim()).ok(),
                        Scalar::Bool(_) => None,
                    };
                    match parsed {
                        Some(x) if fits_int(x, *bits) => Ok(Some(x)),
                        _ => Err(cx.invalid(
                            span,
                            format!(
                                "argument `{written}` is int{bits}; `{name}` must be a whole number that fits it"
                            ),
                        )),
                    }
                };
                let eq = int(raw.eq, "eq")?;
                let (min, max) = match eq {
                    Some(v) => (Some(v), Some(v)),
                    None => (int(raw.min, "min")?, int(raw.max, "max")?),
                };
                if let (Some(a), Some(b)) = (min, max)
                    && a > b
                {
                    return Err(cx.invalid(
                        arg_span,
                        format!("argument `{written}`: `min` {a} is more than `max` {b}"),
                    ));
                }
                Test::Int {
                    min,
                    max,
                    eq: eq.is_some(),
                }
            }
            DynSolType::Bool
            | DynSolType::Bytes
            | DynSolType::FixedBytes(_)
            | DynSolType::String => {
                if let Some(s) = raw.in_list.as_ref().or(raw.not_in.as_ref()) {
                    return Err(mismatch(s.span(), "an address list"));
                }
                if let Some(s) = raw.min.as_ref().or(raw.max.as_ref()) {
                    return Err(mismatch(s.span(), "`min`/`max`"));
                }
                let (span, value) = match (raw.eq, raw.bytes) {
                    (Some(e), _) => (e.span(), e.into_inner()),
                    (None, Some(b)) => {
                        if matches!(ty, DynSolType::Bool | DynSolType::String) {
                            return Err(mismatch(b.span(), "`bytes`"));
                        }
                        (b.span(), Scalar::Text(b.into_inner()))
                    }
                    (None, None) => return Err(mismatch(arg_span, "this matcher")),
                };
                Test::Exact(
                    exact(&ty, value).map_err(|m| {
                        cx.invalid(span, format!("argument `{written}` is {ty}: {m}"))
                    })?,
                )
            }
            other => {
                return Err(cx.invalid(
                    arg_span,
                    format!("argument `{written}` is {other}, which cannot be constrained"),
                ));
            }
        };
        Ok(Constraint {
            arg: written,
            path,
            ty: ty.to_string(),
            test,
        })
    }

    /// `eq`, `in` or `not_in` over addresses, `"book:NAME"` and `"self"`.
    fn addr_test(
        &self,
        op: &'static str,
        entries: Vec<Spanned<String>>,
        span: std::ops::Range<usize>,
        negate: bool,
    ) -> Result<Test, PolicyError> {
        let me = entries.iter().any(|e| e.get_ref() == "self");
        let rest: Vec<Spanned<String>> = entries
            .into_iter()
            .filter(|e| e.get_ref() != "self")
            .collect();
        let mut set = if rest.is_empty() {
            if !me {
                return Err(self
                    .cx
                    .invalid(span, format!("`{op}` is empty; omit it to match any")));
            }
            AddrSet {
                set: BTreeSet::new(),
                written: Vec::new(),
                cooling: None,
            }
        } else {
            self.addrs(op, Some(Spanned::new(span, rest)))?
                .unwrap_or(AddrSet {
                    set: BTreeSet::new(),
                    written: Vec::new(),
                    cooling: None,
                })
        };
        if me {
            set.written.insert(0, "self".into());
        }
        Ok(Test::Addr {
            set,
            me,
            negate,
            op,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn uint_test(
        &self,
        written: &str,
        bits: usize,
        eq: Option<Spanned<Scalar>>,
        min: Option<Spanned<Scalar>>,
        max: Option<Spanned<Scalar>>,
        token: Option<Spanned<String>>,
        f: &Sig,
        root: &Arg<'_>,
        chains: Option<&BTreeSet<u64>>,
    ) -> Result<Test, PolicyError> {
        let cx = self.cx;
        let pin_path = match &token {
            None => None,
            Some(t) => {
                let (path, ty) = self.arg_path(f, root, t)?;
                if ty != DynSolType::Address {
                    return Err(cx.invalid(
                        t.span(),
                        format!("`token` {:?} is {ty}, not an address", t.get_ref()),
                    ));
                }
                Some((path, t.get_ref().clone(), t.span()))
            }
        };
        let is_eq = eq.is_some();
        let min_span = min.as_ref().map(Spanned::span);
        let mut asset: Option<AssetId> = None;
        let mut format = AmountFormat::base_units();
        let mut bound = |v: Option<Spanned<Scalar>>, name: &str| -> Result<_, PolicyError> {
            let Some(v) = v else { return Ok(None) };
            let span = v.span();
            let lit = match v.into_inner() {
                Scalar::Int(i) => match u64::try_from(i) {
                    Ok(u) => AmountLit::Int(u),
                    Err(_) => {
                        return Err(cx.invalid(
                            span,
                            format!("argument `{written}` is uint{bits}; `{name}` {i} is negative"),
                        ));
                    }
                },
                Scalar::Text(t)
                    if t == "self"
                        || t.starts_with("book:")
                        || t.starts_with("0x") && t.len() == 42 =>
                {
                    return Err(cx.invalid(
                        span,
                        format!("argument `{written}` is uint{bits}; an address does not fit it"),
                    ));
                }
                Scalar::Text(t) => AmountLit::Text(t),
                Scalar::Bool(_) => {
                    return Err(cx.invalid(
                        span,
                        format!("argument `{written}` is uint{bits}; `{name}` must be a number or an amount"),
                    ));
                }
            };
            let lit = Spanned::new(span.clone(), lit);
            let field = format!("{name}` of argument `{written}");
            let (value, named, fmt) = if pin_path.is_some() {
                self.amount(&field, &lit, Unit::Token(chains))?
            } else {
                match self.amount(&field, &lit, Unit::Native(chains)) {
                    Ok(r) => r,
                    Err(e) => {
                        if self.amount(&field, &lit, Unit::Token(chains)).is_ok() {
                            return Err(cx.invalid(
                                span,
                                format!(
                                    "`{name}` of argument `{written}` is in a token's units; add `token = \"<argument>\"` naming the address argument that holds the token, so the bound holds only for that token"
                                ),
                            ));
                        }
                        return Err(e);
                    }
                }
            };
            if bits < 256 && value >> bits != U256::ZERO {
                return Err(cx.invalid(
                    span,
                    format!("argument `{written}` is uint{bits}; `{name}` does not fit it"),
                ));
            }
            if let Some(id) = named {
                if asset.is_some_and(|a| a != id) {
                    return Err(cx.invalid(
                        span,
                        format!("argument `{written}`: `min` and `max` are in different tokens"),
                    ));
                }
                asset = Some(id);
            }
            if named.is_some() || fmt.decimals > 0 {
                format = fmt;
            }
            Ok(Some(value))
        };
        let eqv = bound(eq, "eq")?;
        let (lo, hi) = match eqv {
            Some(v) => (Some(v), Some(v)),
            None => (bound(min, "min")?, bound(max, "max")?),
        };
        if let (Some(a), Some(b)) = (lo, hi)
            && a > b
        {
            return Err(cx.invalid(
                min_span.unwrap_or(0..0),
                format!("argument `{written}`: `min` is more than `max`"),
            ));
        }
        let token = match (pin_path, asset) {
            (None, _) => None,
            (Some((path, arg, _)), Some(asset)) => Some(TokenPin { asset, arg, path }),
            (Some((_, _, span)), None) => {
                return Err(cx.invalid(
                    span,
                    format!(
                        "argument `{written}`: `token` needs bounds written with a token symbol (e.g. \"1000 USDC\")"
                    ),
                ));
            }
        };
        Ok(Test::Uint {
            min: lo,
            max: hi,
            eq: is_eq,
            format,
            token,
        })
    }
}

/// Words a value of `t` takes in the head of an encoding, counting fixed-size arrays and
/// tuples in full (saturating).
fn head_words(t: &DynSolType) -> usize {
    match t {
        DynSolType::FixedArray(inner, n) => n.saturating_mul(head_words(inner).max(1)),
        DynSolType::Tuple(ts) => ts
            .iter()
            .fold(0usize, |n, t| n.saturating_add(head_words(t)))
            .max(1),
        _ => 1,
    }
}

/// The prefix of dotted `path` made of its first `n` segments.
fn path_prefix(path: &str, n: usize) -> String {
    path.split('.').take(n).collect::<Vec<_>>().join(".")
}

/// Whether segment number `n` (1-based) is the last of `path`.
fn seg_is_last(path: &str, n: usize) -> bool {
    path.split('.').count() == n
}

fn fits_int(x: I256, bits: usize) -> bool {
    if bits >= 256 {
        return true;
    }
    let Ok(one) = I256::try_from(1i64) else {
        return false;
    };
    let limit = one << (bits - 1);
    x >= -limit && x < limit
}

/// An `eq`/`bytes` value for a `bool`, `bytes`, `bytesN` or `string` argument.
fn exact(ty: &DynSolType, v: Scalar) -> Result<Exact, String> {
    match (ty, v) {
        (DynSolType::Bool, Scalar::Bool(b)) => Ok(Exact::Bool(b)),
        (DynSolType::Bool, _) => Err("`eq` must be true or false".into()),
        (DynSolType::String, Scalar::Text(t)) if t.len() <= MAX_EXACT_BYTES => Ok(Exact::Text(t)),
        (DynSolType::String, _) => Err(format!(
            "`eq` must be a string of at most {MAX_EXACT_BYTES} bytes"
        )),
        (DynSolType::Bytes | DynSolType::FixedBytes(_), Scalar::Text(t)) => {
            let Some(h) = t.strip_prefix("0x") else {
                return Err("write the bytes as 0x-prefixed hex".into());
            };
            let b = hex::decode(h).map_err(|e| format!("bad hex: {e}"))?;
            if b.len() > MAX_EXACT_BYTES {
                return Err(format!("more than {MAX_EXACT_BYTES} bytes"));
            }
            if let DynSolType::FixedBytes(n) = ty
                && b.len() != *n
            {
                return Err(format!("the value has {} bytes, not {n}", b.len()));
            }
            Ok(Exact::Bytes(b))
        }
        _ => Err("write the bytes as 0x-prefixed hex".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation.

/// Decoded calldata of one request, by function: each distinct function is decoded at most
/// once per request. One `Calls` serves one action only.
#[derive(Default)]
pub(crate) struct Calls<'p> {
    slots: RefCell<Vec<(&'p str, Option<DynSolValue>)>>,
}

/// Why a rule's function could not be matched against a request.
enum Miss {
    /// The request carries no calldata the policy can read.
    NoCalldata,
    /// The calldata is another function's (or shorter than a selector).
    OtherFunction,
    /// The selector is the function's, but the rest is not its canonical ABI encoding.
    Undecodable,
}

impl CallSpec {
    /// Decodes `data` (selector included) as this function's arguments, only if it is exactly
    /// their canonical encoding.
    fn decode(&self, data: &[u8]) -> Option<DynSolValue> {
        let body = data.get(4..)?;
        let v = self.params.abi_decode_sequence(body).ok()?;
        (v.abi_encode_params() == body).then_some(v)
    }

    /// Runs `each` on this function's decoded arguments of `a`, decoding them at most once
    /// per `calls`.
    fn with_args<'p, R>(
        &'p self,
        a: &Action,
        calls: &Calls<'p>,
        each: impl FnOnce(&DynSolValue) -> R,
    ) -> Result<R, Miss> {
        let Some(data) = a.calldata.as_deref() else {
            return Err(Miss::NoCalldata);
        };
        if data.get(..4) != Some(&self.selector[..]) {
            return Err(Miss::OtherFunction);
        }
        let known = calls
            .slots
            .borrow()
            .iter()
            .position(|(k, _)| *k == self.canonical);
        let at = match known {
            Some(i) => i,
            None => {
                let decoded = self.decode(data);
                let mut slots = calls.slots.borrow_mut();
                slots.push((self.canonical.as_str(), decoded));
                slots.len() - 1
            }
        };
        let slots = calls.slots.borrow();
        match slots.get(at).and_then(|(_, v)| v.as_ref()) {
            Some(v) => Ok(each(v)),
            None => Err(Miss::Undecodable),
        }
    }

    /// Whether `a` is a call of this function whose arguments satisfy every constraint
    /// (Kleene conjunction). Calldata of another function: no. Undecodable calldata, or
    /// none to read: indeterminate.
    pub(crate) fn test<'p>(&'p self, a: &Action, now_unix: i64, calls: &Calls<'p>) -> T {
        let r = self.with_args(a, calls, |args| {
            let mut out = T::Y;
            for c in &self.constraints {
                match c.verdict(args, a, now_unix) {
                    T::N => return T::N,
                    T::U => out = T::U,
                    T::C if out == T::Y => out = T::C,
                    T::C | T::Y => {}
                }
            }
            out
        });
        match r {
            Ok(t) => t,
            Err(Miss::OtherFunction) => T::N,
            Err(Miss::NoCalldata | Miss::Undecodable) => T::U,
        }
    }

    /// The address sets of `in`/`not_in`/`eq` constraints (cooling-off times are attached to
    /// them as to every other matcher's).
    pub(crate) fn addr_sets_mut(&mut self) -> impl Iterator<Item = &mut AddrSet> {
        self.constraints
            .iter_mut()
            .filter_map(|c| match &mut c.test {
                Test::Addr { set, .. } => Some(set),
                _ => None,
            })
    }

    /// Why `a` did not match (or was indeterminate), for people.
    pub(crate) fn describe<'p>(&'p self, a: &Action, now_unix: i64, calls: &Calls<'p>) -> String {
        let r = self.with_args(a, calls, |args| {
            self.constraints
                .iter()
                .find(|c| c.verdict(args, a, now_unix) != T::Y)
                .map(|c| c.line(args, a, now_unix))
        });
        match r {
            Err(Miss::NoCalldata) => {
                "`function` needs the calldata, which this request lacks".into()
            }
            Err(Miss::OtherFunction) => {
                let sel = a
                    .calldata
                    .as_deref()
                    .and_then(|d| d.get(..4))
                    .map_or_else(|| "none".to_owned(), |s| format!("0x{}", hex::encode(s)));
                format!(
                    "selector {sel} is not `function` {} (0x{})",
                    self.canonical,
                    hex::encode(self.selector)
                )
            }
            Err(Miss::Undecodable) => format!(
                "the calldata has the selector of {} but is not its canonical ABI encoding (short, overlong or malformed)",
                self.canonical
            ),
            Ok(Some(line)) => format!("argument {line}"),
            Ok(None) => format!("the call of {} matches", self.canonical),
        }
    }

    /// One line per constraint: the argument's decoded value and the verdict; empty when the
    /// request is not a call of this function (the rule's reason says why).
    pub(crate) fn explain<'p>(
        &'p self,
        a: &Action,
        now_unix: i64,
        calls: &Calls<'p>,
    ) -> Vec<String> {
        self.with_args(a, calls, |args| {
            self.constraints
                .iter()
                .map(|c| format!("argument {}", c.line(args, a, now_unix)))
                .collect()
        })
        .unwrap_or_default()
    }
}

/// The decoded value at `path` in the argument tuple.
fn at<'v>(args: &'v DynSolValue, path: &[usize]) -> Option<&'v DynSolValue> {
    let mut v = args;
    for i in path {
        match v {
            DynSolValue::Tuple(items) => v = items.get(*i)?,
            _ => return None,
        }
    }
    Some(v)
}

impl Constraint {
    /// This constraint's verdict on decoded `args` of `a`.
    fn verdict(&self, args: &DynSolValue, a: &Action, now_unix: i64) -> T {
        let Some(v) = at(args, &self.path) else {
            return T::U;
        };
        match (&self.test, v) {
            (
                Test::Addr {
                    set, me, negate, ..
                },
                DynSolValue::Address(x),
            ) => {
                // An entry still cooling off (`C`) restricts whichever way the matcher
                // points: it does not grant `in`, and `not_in` excludes it at once.
                let found = match set.holds(x, now_unix) {
                    Membership::In => T::Y,
                    Membership::Cooling => T::C,
                    Membership::Out if *me => match a.signer {
                        Some(s) => crate::rule::t(s == *x),
                        None => T::U,
                    },
                    Membership::Out => T::N,
                };
                match (found, negate) {
                    (T::Y, true) => T::N,
                    (T::N, true) => T::Y,
                    (f, _) => f,
                }
            }
            (
                Test::Uint {
                    min, max, token, ..
                },
                DynSolValue::Uint(x, _),
            ) => {
                if let Some(pin) = token {
                    match a.chain_id {
                        None => return T::U,
                        Some(c) if c != pin.asset.chain_id => return T::N,
                        Some(_) => {}
                    }
                    match at(args, &pin.path) {
                        Some(DynSolValue::Address(t)) if Some(*t) == pin.asset.contract => {}
                        Some(DynSolValue::Address(_)) => return T::N,
                        _ => return T::U,
                    }
                }
                crate::rule::t(min.is_none_or(|m| *x >= m) && max.is_none_or(|m| *x <= m))
            }
            (Test::Int { min, max, .. }, DynSolValue::Int(x, _)) => {
                crate::rule::t(min.is_none_or(|m| *x >= m) && max.is_none_or(|m| *x <= m))
            }
            (Test::Exact(want), got) => crate::rule::t(match (want, got) {
                (Exact::Bool(w), DynSolValue::Bool(g)) => w == g,
                (Exact::Bytes(w), DynSolValue::Bytes(g)) => w == g,
                (Exact::Bytes(w), DynSolValue::FixedBytes(g, n)) => {
                    g.get(..*n).is_some_and(|g| g == w.as_slice())
                }
                (Exact::Text(w), DynSolValue::String(g)) => w == g,
                _ => false,
            }),
            _ => T::U,
        }
    }

    /// `` `params.recipient` (address) = 0x…: eq self (0x…): yes ``.
    fn line(&self, args: &DynSolValue, a: &Action, now_unix: i64) -> String {
        // Amounts are shown in the token's units only when they are of that token.
        let other_token = match &self.test {
            Test::Uint {
                token: Some(pin), ..
            } => match at(args, &pin.path) {
                Some(DynSolValue::Address(t)) if Some(*t) != pin.asset.contract => {
                    Some(format!("`{}` is {t}, not that token", pin.arg))
                }
                _ => None,
            },
            _ => None,
        };
        let value = at(args, &self.path)
            .map_or_else(|| "?".to_owned(), |v| self.show(v, other_token.is_none()));
        let verdict = match self.verdict(args, a, now_unix) {
            T::Y => "yes".to_owned(),
            T::C => "not yet (an address-book entry is still cooling off)".to_owned(),
            T::N => match other_token {
                Some(why) => format!("no ({why})"),
                None => "no".to_owned(),
            },
            T::U => match &self.test {
                Test::Addr { me: true, .. } if a.signer.is_none() => {
                    "indeterminate (the signing key's address, `self`, is unknown)".to_owned()
                }
                Test::Uint { token: Some(_), .. } if a.chain_id.is_none() => {
                    "indeterminate (the request has no chain id)".to_owned()
                }
                _ => "indeterminate".to_owned(),
            },
        };
        format!(
            "`{}` ({}) = {value}: {}: {verdict}",
            self.arg,
            self.ty,
            self.want(a)
        )
    }

    fn show(&self, v: &DynSolValue, in_units: bool) -> String {
        match v {
            DynSolValue::Address(x) => x.to_string(),
            DynSolValue::Uint(x, _) => match &self.test {
                Test::Uint { format, .. } if in_units && format.decimals > 0 => {
                    format!("{x} ({})", format.format(*x))
                }
                _ => x.to_string(),
            },
            DynSolValue::Int(x, _) => x.to_string(),
            DynSolValue::Bool(b) => b.to_string(),
            DynSolValue::Bytes(b) => shown_hex(b),
            DynSolValue::FixedBytes(w, n) => shown_hex(w.get(..*n).unwrap_or_default()),
            DynSolValue::String(s) => shown_text(s),
            other => format!("{other:?}"),
        }
    }

    /// What the constraint requires, for people.
    fn want(&self, a: &Action) -> String {
        match &self.test {
            Test::Addr { set, me, op, .. } => {
                let me_is = match (me, a.signer) {
                    (true, Some(s)) => format!(" (self = {s})"),
                    _ => String::new(),
                };
                if *op == "eq" {
                    let one = set.written.first().cloned().unwrap_or_default();
                    format!("eq {one}{me_is}")
                } else {
                    format!("{op} {set}{me_is}")
                }
            }
            Test::Uint {
                min,
                max,
                eq,
                format,
                token,
            } => {
                let f = |v: &U256| {
                    if format.decimals > 0 || token.is_some() {
                        format.format(*v)
                    } else {
                        v.to_string()
                    }
                };
                let mut s = match (eq, min, max) {
                    (true, Some(v), _) => format!("eq {}", f(v)),
                    (_, Some(lo), Some(hi)) => format!("min {}, max {}", f(lo), f(hi)),
                    (_, Some(lo), None) => format!("min {}", f(lo)),
                    (_, None, Some(hi)) => format!("max {}", f(hi)),
                    _ => "any".to_owned(),
                };
                if let Some(pin) = token {
                    s.push_str(&format!(
                        ", `{}` = {} ({})",
                        pin.arg, pin.asset, format.symbol
                    ));
                }
                s
            }
            Test::Int { min, max, eq } => match (eq, min, max) {
                (true, Some(v), _) => format!("eq {v}"),
                (_, Some(lo), Some(hi)) => format!("min {lo}, max {hi}"),
                (_, Some(lo), None) => format!("min {lo}"),
                (_, None, Some(hi)) => format!("max {hi}"),
                _ => "any".to_owned(),
            },
            Test::Exact(e) => format!("eq {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use alloy_primitives::{Address, Bytes};

    use super::*;
    use crate::cases::tests::EXAMPLES;
    use crate::{Decision, Identity, Kind, NoUsage, Policy, PolicyError, Request, run_tests};

    const ROUTER: &str = "0xE592427A0AEce92De3Edee1F18E0157C05861564";
    const USDC: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
    const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
    const ME: &str = "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23";
    const EVIL: &str = "0x00000000000000000000000000000000deadbeef";
    const SWAP: &str = "exactInputSingle((address tokenIn,address tokenOut,uint24 fee,address recipient,uint256 deadline,uint256 amountIn,uint256 amountOutMinimum,uint160 sqrtPriceLimitX96) params)";

    fn example() -> (&'static str, &'static str) {
        let (_, src, cases) = EXAMPLES
            .iter()
            .find(|(n, _, _)| *n == "swap-and-supply")
            .unwrap();
        (src, cases)
    }

    fn word(hex_addr_or_num: &str) -> String {
        let h = hex_addr_or_num.trim_start_matches("0x");
        format!("{h:0>64}")
    }

    /// `exactInputSingle` calldata, encoded by hand from the ABI specification.
    fn swap(tin: &str, recipient: &str, amount_in: u64) -> Vec<u8> {
        let mut h = String::from("414bf389");
        h += &word(tin);
        h += &word(WETH);
        h += &word(&format!("{:x}", 500));
        h += &word(recipient);
        h += &word(&format!("{:x}", 1_767_270_000u64));
        h += &word(&format!("{amount_in:x}"));
        h += &word(&format!("{:x}", 1u64));
        h += &word("0");
        hex::decode(h).unwrap()
    }

    fn call(to: &str, data: Vec<u8>, signer: Option<&str>) -> Action {
        let mut a = Action::new("bot", Kind::ContractCall);
        a.chain_id = Some(1);
        a.to = Some(to.parse().unwrap());
        a.selector = data.get(..4).map(|s| s.try_into().unwrap());
        a.calldata = Some(Bytes::from(data));
        a.signer = signer.map(|s| s.parse().unwrap());
        a.gas_limit = Some(200_000);
        a.max_fee_per_gas = Some(U256::from(30_000_000_000u64));
        a
    }

    fn bot() -> Identity {
        Identity {
            id: "defi-bot".into(),
            roles: vec![],
        }
    }

    fn eval(p: &Policy, a: &Action) -> crate::Evaluation {
        p.explain_request(&Request {
            action: a,
            identity: &bot(),
            now_unix: 0,
            usage: &NoUsage,
        })
    }

    fn policy(rule_tail: &str) -> Result<Policy, PolicyError> {
        Policy::parse(
            "p.toml",
            &format!(
                "version = 1\nserial = 1\n[[asset]]\nchain_id = 1\ncontract = \"{USDC}\"\nsymbol = \"USDC\"\ndecimals = 6\n\
                 [address_books.payees]\naddresses = [\"{EVIL}\"]\n\
                 [[rule]]\nid = \"r\"\neffect = \"allow\"\nkeys = [\"bot\"]\n{rule_tail}\n"
            ),
        )
    }

    fn swap_rule(args: &str) -> String {
        format!("contracts = [\"{ROUTER}\"]\nfunction = \"{SWAP}\"\nargs = [{args}]")
    }

    fn err(rule_tail: &str) -> String {
        policy(rule_tail).unwrap_err().to_string()
    }

    #[test]
    fn selectors_are_the_real_ones() {
        let p = policy(
            &swap_rule("{ arg = 0, eq = 1 }")
                .replace("arg = 0, eq = 1", "arg = \"params.fee\", eq = 500"),
        )
        .unwrap();
        let spec = p.rules[0].m.args.as_ref().unwrap();
        assert_eq!(hex::encode(spec.selector), "414bf389");
        assert_eq!(
            spec.canonical,
            "exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))"
        );
        let (src, _) = example();
        let p = Policy::parse("x.toml", src).unwrap();
        let supply = p.rules[1].m.args.as_ref().unwrap();
        assert_eq!(hex::encode(supply.selector), "617ba037");
    }

    #[test]
    fn the_recipient_must_be_self() {
        let p = policy(&swap_rule("{ arg = \"params.recipient\", eq = \"self\" }")).unwrap();
        let ok = eval(&p, &call(ROUTER, swap(USDC, ME, 1_000_000), Some(ME)));
        assert!(ok.decision.is_allow(), "{:#?}", ok.explanation);
        let bad = eval(&p, &call(ROUTER, swap(USDC, EVIL, 1_000_000), Some(ME)));
        assert_eq!(bad.decision.as_str(), "deny", "{:#?}", bad.explanation);
        let line = bad
            .explanation
            .iter()
            .find(|l| l.contains("`params.recipient`"))
            .unwrap();
        assert!(
            line.contains("(address) = 0x00000000000000000000000000000000DeaDBeef: eq self (self = 0x2c7536E3605D9C16a7a3D7b1898e529396a65c23): no"),
            "{line}"
        );
        // Unknown `self`: indeterminate, so the allow does not match.
        let unknown = eval(&p, &call(ROUTER, swap(USDC, ME, 1_000_000), None));
        assert_eq!(unknown.decision.as_str(), "deny");
        assert!(
            unknown
                .explanation
                .iter()
                .any(|l| l.contains("is indeterminate")),
            "{:#?}",
            unknown.explanation
        );
    }

    /// An address-book entry still cooling off grants nothing through `in`, and `not_in`
    /// excludes it at once.
    #[test]
    fn book_entries_cooling_off_restrict_arguments_both_ways() {
        let src = |op: &str| {
            format!(
                "version = 1\nserial = 1\n[address_books.payees]\naddresses = [\"{EVIL}\"]\ncooling_off = \"1h\"\n\
                 [[rule]]\nid = \"r\"\neffect = \"allow\"\nkeys = [\"bot\"]\n{}\n",
                swap_rule(&format!(
                    "{{ arg = \"params.recipient\", {op} = [\"book:payees\"] }}"
                ))
            )
        };
        let at = |p: &Policy, recipient: &str, now_unix: i64| {
            p.explain_request(&Request {
                action: &call(ROUTER, swap(USDC, recipient, 1_000_000), Some(ME)),
                identity: &bot(),
                now_unix,
                usage: &NoUsage,
            })
        };
        const T0: i64 = 1_767_225_600;
        let known: crate::FirstLoaded = [(("payees".to_owned(), EVIL.parse().unwrap()), T0)]
            .into_iter()
            .collect();
        let mut inside = Policy::parse("p.toml", &src("in")).unwrap();
        // No first load known: not usable.
        assert!(!at(&inside, EVIL, T0 + 7200).decision.is_allow());
        inside.set_first_loaded(&known, Some(T0));
        let early = at(&inside, EVIL, T0 + 3599);
        assert!(!early.decision.is_allow(), "{:#?}", early.explanation);
        assert!(
            early.explanation.iter().any(|l| l.contains("not yet")),
            "{:#?}",
            early.explanation
        );
        let late = at(&inside, EVIL, T0 + 3600);
        assert!(late.decision.is_allow(), "{:#?}", late.explanation);
        let mut outside = Policy::parse("p.toml", &src("not_in")).unwrap();
        outside.set_first_loaded(&known, Some(T0));
        assert!(!at(&outside, EVIL, T0 + 1).decision.is_allow());
        assert!(!at(&outside, EVIL, T0 + 3600).decision.is_allow());
        assert!(at(&outside, ME, T0 + 1).decision.is_allow());
    }

    /// The same policy without the constraint allows the swap that pays the attacker: the
    /// constraint is what refuses it.
    #[test]
    fn without_the_constraint_the_attackers_swap_is_allowed() {
        let (src, cases) = example();
        let loose = src
            .replace("  { arg = \"params.recipient\", eq = \"self\" },\n", "")
            .replace("  { arg = \"onBehalfOf\", eq = \"self\" },\n", "");
        assert_ne!(loose, src);
        let p = Policy::parse("loose.toml", &loose).unwrap();
        let report = run_tests(&p, cases).unwrap();
        let failed: Vec<&str> = report
            .results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            failed,
            [
                "swap paying another address",
                "swap without the signing key's address",
                "supply on behalf of another address"
            ]
        );
        for r in report.results.iter().filter(|r| !r.passed) {
            assert!(r.decision.is_allow(), "{}", r.name);
        }
    }

    #[test]
    fn calldata_that_does_not_decode_is_indeterminate() {
        let p = policy(&swap_rule("{ arg = \"params.recipient\", eq = \"self\" }")).unwrap();
        let mut short = swap(USDC, ME, 1);
        short.truncate(short.len() - 1);
        let mut long = swap(USDC, ME, 1);
        long.push(0);
        let mut dirty = swap(USDC, ME, 1);
        // A dirty high byte in the address word of `recipient`.
        dirty[4 + 3 * 32] = 1;
        for data in [short, long, dirty] {
            let a = call(ROUTER, data, Some(ME));
            let rule = &p.rules[0];
            assert_eq!(rule.matches(&a, &bot(), 0), crate::Match::Indeterminate);
            let e = eval(&p, &a);
            assert_eq!(e.decision.as_str(), "deny");
            assert!(
                e.explanation
                    .iter()
                    .any(|l| l.contains("is not its canonical ABI encoding")),
                "{:#?}",
                e.explanation
            );
        }
        // Another function's calldata simply does not match.
        let mut other = swap(USDC, ME, 1);
        other[0] = 0;
        let a = call(ROUTER, other, Some(ME));
        assert_eq!(p.rules[0].matches(&a, &bot(), 0), crate::Match::No);
        // A deny rule with an argument constraint denies undecodable calldata.
        let d = Policy::parse(
            "d.toml",
            &format!(
                "version = 1\nserial = 1\n[[rule]]\nid = \"any\"\neffect = \"allow\"\nkeys = [\"bot\"]\n\
                 [[rule]]\nid = \"no-evil\"\neffect = \"deny\"\nfunction = \"{SWAP}\"\n\
                 args = [{{ arg = \"params.recipient\", in = [\"{EVIL}\"] }}]\n"
            ),
        )
        .unwrap();
        let mut short = swap(USDC, ME, 1);
        short.truncate(40);
        let e = eval(&d, &call(ROUTER, short, Some(ME)));
        assert!(
            matches!(&e.decision, Decision::Deny { rule: Some(r), .. } if r == "no-evil"),
            "{:?}",
            e.decision
        );
        assert!(
            eval(&d, &call(ROUTER, swap(USDC, ME, 1), Some(ME)))
                .decision
                .is_allow()
        );
        assert_eq!(
            eval(&d, &call(ROUTER, swap(USDC, EVIL, 1), Some(ME)))
                .decision
                .as_str(),
            "deny"
        );
    }

    #[test]
    fn amounts_in_token_units_hold_only_for_that_token() {
        let p = policy(&swap_rule(
            "{ arg = \"params.amountIn\", max = \"10000 USDC\", token = \"params.tokenIn\" }, { arg = \"0.5\", min = 1 }",
        ))
        .unwrap();
        let within = eval(&p, &call(ROUTER, swap(USDC, ME, 10_000_000_000), None));
        assert!(within.decision.is_allow(), "{:#?}", within.explanation);
        assert!(
            within.explanation.iter().any(|l| l.contains(
                "`params.amountIn` (uint256) = 10000000000 (10000 USDC): max 10000 USDC, `params.tokenIn` = "
            ) && l.ends_with(": yes")),
            "{:#?}",
            within.explanation
        );
        let over = eval(&p, &call(ROUTER, swap(USDC, ME, 10_000_000_001), None));
        assert_eq!(over.decision.as_str(), "deny");
        let weth = eval(&p, &call(ROUTER, swap(WETH, ME, 1), None));
        assert_eq!(weth.decision.as_str(), "deny");
        let zero = eval(&p, &call(ROUTER, swap(USDC, ME, 0), None));
        assert_eq!(zero.decision.as_str(), "deny");
    }

    #[test]
    fn books_lists_and_exact_values() {
        let p = policy(&swap_rule(
            "{ arg = \"params.recipient\", not_in = [\"book:payees\"] }, { arg = \"params.tokenOut\", in = [\"self\", \"0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2\"] }, { arg = \"params.fee\", eq = 500 }",
        ))
        .unwrap();
        assert!(
            eval(&p, &call(ROUTER, swap(USDC, ME, 1), None))
                .decision
                .is_allow()
        );
        assert_eq!(
            eval(&p, &call(ROUTER, swap(USDC, EVIL, 1), None))
                .decision
                .as_str(),
            "deny"
        );
        let b = policy(
            "function = \"execute(bytes32 id,bytes data,bool flag,string memo,int24 tick)\"\n\
             args = [{ arg = \"id\", eq = \"0x0101010101010101010101010101010101010101010101010101010101010101\" }, { arg = \"data\", bytes = \"0xcafe\" }, { arg = \"flag\", eq = true }, { arg = \"memo\", eq = \"hi\" }, { arg = \"tick\", min = -10, max = \"10\" }]",
        )
        .unwrap();
        let encode = |data: &[u8], tick: i64| {
            let v = DynSolValue::Tuple(vec![
                DynSolValue::FixedBytes(alloy_primitives::B256::repeat_byte(1), 32),
                DynSolValue::Bytes(data.to_vec()),
                DynSolValue::Bool(true),
                DynSolValue::String("hi".into()),
                DynSolValue::Int(I256::try_from(tick).unwrap(), 24),
            ]);
            let spec = b.rules[0].m.args.as_ref().unwrap();
            let mut out = spec.selector.to_vec();
            out.extend(v.abi_encode_params());
            out
        };
        let to = "0x1111111111111111111111111111111111111111";
        assert!(
            eval(&b, &call(to, encode(&[0xca, 0xfe], -10), None))
                .decision
                .is_allow()
        );
        assert_eq!(
            eval(&b, &call(to, encode(&[0xca], 0), None))
                .decision
                .as_str(),
            "deny"
        );
        assert_eq!(
            eval(&b, &call(to, encode(&[0xca, 0xfe], 11), None))
                .decision
                .as_str(),
            "deny"
        );
    }

    #[test]
    fn a_function_without_args_checks_the_selector_and_the_encoding() {
        let p = policy(&format!("function = \"{SWAP}\"")).unwrap();
        assert!(
            eval(&p, &call(ROUTER, swap(USDC, EVIL, 1), None))
                .decision
                .is_allow()
        );
        let mut long = swap(USDC, EVIL, 1);
        long.push(1);
        assert_eq!(
            eval(&p, &call(ROUTER, long, None)).decision.as_str(),
            "deny"
        );
        // Not a call: the matcher implies call kinds.
        let mut native = Action::new("bot", Kind::NativeTransfer);
        native.chain_id = Some(1);
        native.to = Some(Address::repeat_byte(1));
        assert_eq!(eval(&p, &native).decision.as_str(), "deny");
    }

    #[test]
    fn each_function_is_decoded_once_per_request() {
        let p = policy(&swap_rule("{ arg = \"params.recipient\", eq = \"self\" }")).unwrap();
        let a = call(ROUTER, swap(USDC, ME, 1), Some(ME));
        let calls = Calls::default();
        let spec = p.rules[0].m.args.as_ref().unwrap();
        for _ in 0..3 {
            assert!(spec.test(&a, 0, &calls) == T::Y);
        }
        assert_eq!(calls.slots.borrow().len(), 1);
    }

    #[test]
    fn mistakes_are_errors_with_their_position() {
        // The messages docs/policy.md quotes are among these.
        let cases: [(&str, &str); 18] = [
            (
                "function = \"f(uint256[100000] a)\"",
                "its arguments take 100000 or more 32-byte words; calldata has at most 4096",
            ),
            (
                "function = \"f(uint256[1000][1000][1000][1000][1000][1000][1000] a)\"",
                "or more 32-byte words",
            ),
            (
                "function = \"f(uint256\"",
                "`function` \"f(uint256\" is not a Solidity function signature: expected `,` at character 10",
            ),
            (
                "function = \"supply(address asset,uint256 amount,address onBehalfOf,uint16 referralCode)\"\nargs = [{ arg = 4, eq = 0 }]",
                "there is no argument 4 in `supply` (4 arguments)",
            ),
            (
                "function = \"notasig(\"",
                "is not a Solidity function signature",
            ),
            (
                &format!(
                    "function = \"{SWAP}\"\nargs = [{{ arg = \"params.recipent\", eq = \"self\" }}]"
                ),
                "no argument is named `recipent` (named: tokenIn, tokenOut, fee, recipient, deadline, amountIn, amountOutMinimum, sqrtPriceLimitX96)",
            ),
            (
                &format!("function = \"{SWAP}\"\nargs = [{{ arg = 1, eq = \"self\" }}]"),
                "there is no argument 1 in `exactInputSingle` (1 argument)",
            ),
            (
                &format!("function = \"{SWAP}\"\nargs = [{{ arg = \"params\", eq = \"self\" }}]"),
                "is a tuple; name one of its members",
            ),
            (
                &format!(
                    "function = \"{SWAP}\"\nargs = [{{ arg = \"params.fee\", eq = \"self\" }}]"
                ),
                "argument `params.fee` is uint24; an address does not fit it",
            ),
            (
                &format!(
                    "function = \"{SWAP}\"\nargs = [{{ arg = \"params.recipient\", max = 5 }}]"
                ),
                "argument `params.recipient` is address; a numeric or bytes matcher does not fit it",
            ),
            (
                &format!(
                    "function = \"{SWAP}\"\nargs = [{{ arg = \"params.amountIn\", in = [\"self\"] }}]"
                ),
                "argument `params.amountIn` is uint256; an address list does not fit it",
            ),
            (
                &format!(
                    "function = \"{SWAP}\"\nargs = [{{ arg = \"params.amountIn\", max = \"5 USDC\" }}]"
                ),
                "is in a token's units; add `token = ",
            ),
            (
                &format!(
                    "function = \"{SWAP}\"\nargs = [{{ arg = \"params.fee\", max = 16777216 }}]"
                ),
                "is uint24; `max` does not fit it",
            ),
            (
                &format!(
                    "function = \"{SWAP}\"\nargs = [{{ arg = \"params.recipient\", eq = \"self\", in = [\"self\"] }}]"
                ),
                "has several matchers (eq, in)",
            ),
            ("args = [{ arg = 0, eq = 1 }]", "`args` needs `function`"),
            (
                "function = \"f(address[] a)\"\nargs = [{ arg = \"a\", in = [\"self\"] }]",
                "is an array (address[]); arrays cannot be constrained",
            ),
            (
                "function = \"f(bytes4 a)\"\nargs = [{ arg = \"a\", bytes = \"0x0102\" }]",
                "the value has 2 bytes, not 4",
            ),
            (
                "function = \"f(uint256)\"\nselectors = [\"0x12345678\"]",
                "`selectors` and `function` cannot both be given",
            ),
        ];
        for (tail, want) in cases {
            let e = err(tail);
            assert!(e.contains(want), "{tail}\n→ {e}");
            // Every error points into the rule (line 10 or later of the generated file).
            let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
            assert!(line >= 10, "{e}");
        }
        // The exact position of a bad argument name.
        let e = err(&format!(
            "function = \"{SWAP}\"\nargs = [{{ arg = \"params.recipent\", eq = \"self\" }}]"
        ));
        assert!(
            e.starts_with("p.toml:15:17: rule `r`: `arg` \"params.recipent\""),
            "{e}"
        );
    }

    #[test]
    fn diff_says_which_argument_changes_loosen() {
        let base = |args: &str| policy(&swap_rule(args)).unwrap();
        let strict = base(
            "{ arg = \"params.recipient\", eq = \"self\" }, { arg = \"params.fee\", max = 3000 }",
        );
        let loose = base("{ arg = \"params.fee\", max = 3000 }");
        let same_by_position =
            base("{ arg = \"0.3\", eq = \"self\" }, { arg = \"0.2\", max = 3000 }");
        let wider = base(
            "{ arg = \"params.recipient\", eq = \"self\" }, { arg = \"params.fee\", max = 10000 }",
        );
        let loosens = |o: &Policy, n: &Policy| {
            let d = crate::diff(o, n);
            let rules: Vec<&crate::Change> = d
                .changes
                .iter()
                .filter(|c| c.subject.starts_with("rule"))
                .collect();
            assert!(rules.len() <= 1, "{d:?}");
            rules.first().map(|c| {
                assert!(c.description.contains("function/args"), "{c:?}");
                c.loosens
            })
        };
        assert_eq!(loosens(&strict, &loose), Some(true));
        assert_eq!(loosens(&loose, &strict), Some(false));
        assert_eq!(loosens(&strict, &wider), Some(true));
        assert_eq!(loosens(&strict, &same_by_position), None);
        let no_args = policy(&format!("contracts = [\"{ROUTER}\"]")).unwrap();
        assert_eq!(loosens(&strict, &no_args), Some(true));
        assert_eq!(loosens(&no_args, &strict), Some(false));
    }

    proptest::proptest! {
        /// The signature parser never panics, whatever the text.
        #[test]
        fn any_signature_text_parses_or_is_refused(text in "[a-z0-9(), \\[\\]_$]{0,96}") {
            if let Ok(sig) = Sig::parse(&text) {
                let canonical = sig.canonical();
                proptest::prop_assert!(canonical.ends_with(')'), "{}", canonical);
            }
        }

        /// A swap is allowed exactly when it pays `self` and spends at most the bound, for
        /// any recipient and amount.
        #[test]
        fn a_swap_is_allowed_exactly_when_its_arguments_hold(
            pay_self in proptest::bool::ANY,
            other in proptest::array::uniform20(proptest::num::u8::ANY),
            amount in 0u64..20_000_000_000,
        ) {
            let p = policy(&swap_rule(
                "{ arg = \"params.recipient\", eq = \"self\" }, { arg = \"params.amountIn\", max = \"10000 USDC\", token = \"params.tokenIn\" }",
            ))
            .unwrap();
            let other = format!("0x{}", hex::encode(other));
            let recipient = if pay_self { ME } else { other.as_str() };
            let a = call(ROUTER, swap(USDC, recipient, amount), Some(ME));
            let pays_self = recipient.eq_ignore_ascii_case(ME);
            let want = pays_self && amount <= 10_000_000_000;
            proptest::prop_assert_eq!(eval(&p, &a).decision.is_allow(), want);
        }
    }
}
