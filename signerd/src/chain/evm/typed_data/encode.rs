//! [EIP-712](https://eips.ethereum.org/EIPS/eip-712) `encodeType`, `hashStruct` and
//! `encodeData`, over the strict JSON tree, as `eth_signTypedData_v4` defines them
//! (arrays of structs, recursive types).
//!
//! Written here rather than taken from alloy's `Resolver`, for three reasons: alloy expands a
//! struct's type tree without memoising (a 1.7 KB request whose 30 types each hold two members
//! of the next made it allocate until the process died), it accepts type names no wallet
//! does (`A.B` read as an enum, a struct named `uint8`, `function`), and it refuses recursive
//! types, which EIP-712 allows. Here, every type's `encodeType` string is computed once and
//! their total size is bounded before any value is encoded; the value walk follows the JSON
//! value, which is bounded in size and depth. Tests check the hashes against alloy's on
//! every input both accept, and against eth-account where alloy refuses.
//!
//! Values are accepted only in one spelling each, so that the same JSON can never mean two
//! things to two signers (see docs/api.md, "Typed data values").

use std::collections::{BTreeMap, BTreeSet};

use alloy_primitives::{Address, B256, I256, U256, keccak256};

use super::json::J;
use crate::chain::evm::fields;

/// Most bytes of `encodeType` strings, summed over every struct type the request uses.
pub const MAX_ENCODED_TYPES_BYTES: usize = 64 * 1024;
/// Most values (every struct, array and atomic value) one request may encode.
pub const MAX_ENCODED_VALUES: usize = 65_536;

/// An atomic or struct type, without array dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Base {
    Bool,
    Address,
    String,
    Bytes,
    /// `bytes1` ..= `bytes32`.
    FixedBytes(usize),
    /// `uint8` ..= `uint256`, in bits.
    Uint(usize),
    /// `int8` ..= `int256`, in bits.
    Int(usize),
    Struct(String),
}

impl std::fmt::Display for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Base::Bool => f.write_str("bool"),
            Base::Address => f.write_str("address"),
            Base::String => f.write_str("string"),
            Base::Bytes => f.write_str("bytes"),
            Base::FixedBytes(n) => write!(f, "bytes{n}"),
            Base::Uint(n) => write!(f, "uint{n}"),
            Base::Int(n) => write!(f, "int{n}"),
            Base::Struct(name) => f.write_str(name),
        }
    }
}

/// A member's type: a base and array dimensions, innermost first (`T[2][]` is `T`,
/// `[Some(2), None]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ty {
    pub(super) base: Base,
    pub(super) dims: Vec<Option<usize>>,
}

/// One member of a struct type.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) name: String,
    /// The type as written (validated, so already canonical).
    pub(super) written: String,
    pub(super) ty: Ty,
}

/// Most array dimensions in one member type.
const MAX_ARRAY_DIMS: usize = 8;
/// Largest fixed array length accepted.
const MAX_FIXED_LEN: usize = 65_536;

/// Whether `s` is a Solidity identifier (`[A-Za-z_$][A-Za-z0-9_$]*`), the only names EIP-712
/// can write in `encodeType` without ambiguity.
pub(super) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Parses an atomic type name; `None` if it is not one.
pub(super) fn atomic(name: &str) -> Option<Base> {
    let sized = |rest: &str, step: usize, max: usize| -> Option<usize> {
        if rest.starts_with('0') {
            return None;
        }
        let n: usize = rest.parse().ok()?;
        (n >= step && n <= max && n.is_multiple_of(step)).then_some(n)
    };
    match name {
        "bool" => Some(Base::Bool),
        "address" => Some(Base::Address),
        "string" => Some(Base::String),
        "bytes" => Some(Base::Bytes),
        _ => {
            if let Some(rest) = name.strip_prefix("bytes") {
                sized(rest, 1, 32).map(Base::FixedBytes)
            } else if let Some(rest) = name.strip_prefix("uint") {
                sized(rest, 8, 256).map(Base::Uint)
            } else if let Some(rest) = name.strip_prefix("int") {
                sized(rest, 8, 256).map(Base::Int)
            } else {
                None
            }
        }
    }
}

/// Whether a struct may be called `name`: an identifier that no built-in type family could
/// be read as (`uint`, `uint7`, `bytes0`, `function`, `fixed128x18`, ...).
pub(super) fn is_struct_name(name: &str) -> bool {
    if !is_identifier(name) {
        return false;
    }
    let family = ["uint", "int", "bytes", "fixed", "ufixed"].iter().any(|f| {
        name.strip_prefix(f)
            .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == 'x'))
    });
    !(family || matches!(name, "bool" | "address" | "string" | "function" | "byte"))
}

/// Parses a member type; struct names are checked against `structs`.
pub(super) fn parse_type(written: &str, structs: &BTreeSet<&str>) -> Result<Ty, String> {
    let base_end = written.find('[').unwrap_or(written.len());
    let (base, mut rest) = written.split_at(base_end);
    let base = match atomic(base) {
        Some(b) => b,
        None if structs.contains(base) => Base::Struct(base.to_owned()),
        None if is_struct_name(base) => {
            return Err(format!("type {base:?} is not defined in types"));
        }
        None => {
            return Err(format!(
                "{base:?} is neither an EIP-712 atomic type (bool, address, string, bytes, \
                 bytes1..bytes32, uint8..uint256, int8..int256, in steps of 8) nor a struct name"
            ));
        }
    };
    let mut dims = Vec::new();
    while !rest.is_empty() {
        let Some(close) = rest.find(']') else {
            return Err(format!("{written:?}: unclosed array dimension"));
        };
        let inner = rest.get(1..close).unwrap_or_default();
        if !rest.starts_with('[') {
            return Err(format!("{written:?}: unexpected text after the type name"));
        }
        let dim = if inner.is_empty() {
            None
        } else {
            let n = if inner.starts_with('0') {
                None
            } else {
                inner.parse::<usize>().ok()
            };
            match n {
                Some(n) if n <= MAX_FIXED_LEN => Some(n),
                _ => {
                    return Err(format!(
                        "{written:?}: array length {inner:?} must be 1 to {MAX_FIXED_LEN}, in decimal"
                    ));
                }
            }
        };
        dims.push(dim);
        rest = &rest[close + 1..];
    }
    if dims.len() > MAX_ARRAY_DIMS {
        return Err(format!(
            "{written:?} has {} array dimensions; at most {MAX_ARRAY_DIMS} accepted",
            dims.len()
        ));
    }
    Ok(Ty { base, dims })
}

/// The validated struct types of a request, with each one's `encodeType` computed once.
pub(super) struct Types {
    pub(super) structs: BTreeMap<String, Vec<Member>>,
    type_hashes: BTreeMap<String, B256>,
    encoded: BTreeMap<String, String>,
}

impl Types {
    pub(super) fn new(structs: BTreeMap<String, Vec<Member>>) -> Self {
        Types {
            structs,
            type_hashes: BTreeMap::new(),
            encoded: BTreeMap::new(),
        }
    }

    /// Computes `encodeType` of every struct reachable from `roots` (each once), refusing
    /// before the strings are built when their total size would exceed
    /// [`MAX_ENCODED_TYPES_BYTES`].
    pub(super) fn prepare(&mut self, roots: &[&str]) -> Result<(), String> {
        let mut total = 0usize;
        let mut plan: Vec<(String, BTreeSet<String>)> = Vec::new();
        // Every struct a value may be encoded as needs its own type hash.
        let reachable: BTreeSet<String> = roots.iter().flat_map(|r| self.dependencies(r)).collect();
        for root in &reachable {
            if self.encoded.contains_key(root) {
                continue;
            }
            let deps = self.dependencies(root);
            // encodeType is each dependency's definition once: name, parentheses, and
            // "type name" for each member, separated by commas.
            let size: usize = deps
                .iter()
                .filter_map(|d| Some((d, self.structs.get(d)?)))
                .map(|(d, members)| {
                    d.len()
                        + 2
                        + members
                            .iter()
                            .map(|m| m.written.len() + 1 + m.name.len() + 1)
                            .sum::<usize>()
                })
                .sum();
            total = total.saturating_add(size);
            if total > MAX_ENCODED_TYPES_BYTES {
                return Err(format!(
                    "the type definitions expand to more than {MAX_ENCODED_TYPES_BYTES} bytes of \
                     EIP-712 encodeType strings; at most {MAX_ENCODED_TYPES_BYTES} accepted"
                ));
            }
            plan.push((root.clone(), deps));
        }
        for (root, deps) in plan {
            let mut s = self.definition(&root);
            for d in deps.iter().filter(|d| **d != root) {
                s.push_str(&self.definition(d));
            }
            self.type_hashes
                .insert(root.clone(), keccak256(s.as_bytes()));
            self.encoded.insert(root, s);
        }
        Ok(())
    }

    /// `encodeType` of a prepared struct type.
    pub(super) fn encode_type(&self, name: &str) -> Option<&str> {
        self.encoded.get(name).map(String::as_str)
    }

    /// Every struct type reachable from `root`, `root` included, sorted by name (EIP-712's
    /// order for the dependencies after the root). Cycles are fine: each type is visited once.
    fn dependencies(&self, root: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![root.to_owned()];
        while let Some(t) = stack.pop() {
            if !seen.insert(t.clone()) {
                continue;
            }
            for m in self.structs.get(&t).into_iter().flatten() {
                if let Base::Struct(s) = &m.ty.base
                    && !seen.contains(s)
                {
                    stack.push(s.clone());
                }
            }
        }
        seen
    }

    fn definition(&self, name: &str) -> String {
        let members: Vec<String> = self
            .structs
            .get(name)
            .into_iter()
            .flatten()
            .map(|m| format!("{} {}", m.written, m.name))
            .collect();
        format!("{name}({})", members.join(","))
    }

    /// `hashStruct(value)` for struct type `name`, with every value checked against its type.
    /// `path` names the value in errors (`message.from.wallet`).
    pub(super) fn hash_struct(&self, name: &str, v: &J, path: &str) -> Result<B256, String> {
        let mut budget = MAX_ENCODED_VALUES;
        self.hash_struct_in(name, v, path, &mut budget)
    }

    fn hash_struct_in(
        &self,
        name: &str,
        v: &J,
        path: &str,
        budget: &mut usize,
    ) -> Result<B256, String> {
        let (Some(members), Some(type_hash)) = (self.structs.get(name), self.type_hashes.get(name))
        else {
            return Err(format!(
                "{path}: internal error: type {name} was not prepared"
            ));
        };
        let Some(obj) = v.as_obj() else {
            return Err(format!(
                "{path} must be an object of type {name}, not {}",
                v.describe()
            ));
        };
        if let Some((k, _)) = obj
            .iter()
            .find(|(k, _)| !members.iter().any(|m| m.name == *k))
        {
            return Err(format!(
                "{path}.{k:?} is not a member of type {name}; undeclared members would not be signed"
            ));
        }
        let mut enc = Vec::with_capacity(32 * (members.len() + 1));
        enc.extend_from_slice(type_hash.as_slice());
        for m in members {
            let Some(child) = v.get(&m.name) else {
                return Err(format!(
                    "{path}.{} is missing; type {name} declares it",
                    m.name
                ));
            };
            let word = self.encode_value(
                &m.ty,
                m.ty.dims.len(),
                child,
                &format!("{path}.{}", m.name),
                budget,
            )?;
            enc.extend_from_slice(word.as_slice());
        }
        Ok(keccak256(&enc))
    }

    /// `encodeData` of one value of `ty` with its first `dims` dimensions: the 32-byte word
    /// that stands for it in its parent's encoding.
    fn encode_value(
        &self,
        ty: &Ty,
        dims: usize,
        v: &J,
        path: &str,
        budget: &mut usize,
    ) -> Result<B256, String> {
        *budget = budget.checked_sub(1).ok_or_else(|| {
            format!("{path}: more than {MAX_ENCODED_VALUES} values to encode; at most {MAX_ENCODED_VALUES} accepted")
        })?;
        if dims > 0 {
            let J::Arr(items) = v else {
                return Err(format!("{path} must be an array, not {}", v.describe()));
            };
            if let Some(Some(n)) = ty.dims.get(dims - 1)
                && items.len() != *n
            {
                return Err(format!(
                    "{path} has {} elements; its type has exactly {n}",
                    items.len()
                ));
            }
            let mut enc = Vec::with_capacity(32 * items.len());
            for (i, item) in items.iter().enumerate() {
                let w = self.encode_value(ty, dims - 1, item, &format!("{path}[{i}]"), budget)?;
                enc.extend_from_slice(w.as_slice());
            }
            return Ok(keccak256(&enc));
        }
        match &ty.base {
            Base::Struct(name) => self.hash_struct_in(name, v, path, budget),
            atomic => encode_atomic(atomic, v).map_err(|e| format!("{path} ({atomic}): {e}")),
        }
    }
}

/// The 32-byte word of an atomic value.
fn encode_atomic(base: &Base, v: &J) -> Result<B256, String> {
    match base {
        Base::Bool => match v {
            J::Bool(b) => Ok(B256::with_last_byte(u8::from(*b))),
            other => Err(format!(
                "a bool must be true or false, not {}",
                other.describe()
            )),
        },
        Base::Address => Ok(parse_address(v)?.into_word()),
        Base::String => match v {
            J::Str(s) => Ok(keccak256(s.as_bytes())),
            other => Err(format!(
                "a string must be a JSON string, not {}",
                other.describe()
            )),
        },
        Base::Bytes => Ok(keccak256(parse_hex_bytes(v, None)?)),
        Base::FixedBytes(n) => {
            let raw = parse_hex_bytes(v, Some(*n))?;
            let mut word = B256::ZERO;
            word[..raw.len()].copy_from_slice(&raw);
            Ok(word)
        }
        Base::Uint(bits) => Ok(B256::from(parse_uint(v, *bits)?)),
        Base::Int(bits) => Ok(B256::from(parse_int(v, *bits)?.into_raw())),
        Base::Struct(_) => Err("internal error: struct encoded as an atomic value".into()),
    }
}

/// An address: a JSON string, `0x` and 40 hex digits; mixed case must pass EIP-55 (the rule
/// transaction fields follow).
pub(super) fn parse_address(v: &J) -> Result<Address, String> {
    match v {
        J::Str(s) => fields::parse_address(s),
        other => Err(format!(
            "an address must be a JSON string (0x and 40 hex digits), not {}",
            other.describe()
        )),
    }
}

/// `bytes` (`len` None) or `bytesN`: a JSON string of `0x` and hex digits, exactly `2 * N`
/// of them for `bytesN`. Text without `0x` is refused rather than read as hex or as UTF-8,
/// which wallets disagree on.
fn parse_hex_bytes(v: &J, len: Option<usize>) -> Result<Vec<u8>, String> {
    let what = len.map_or_else(|| "bytes".to_owned(), |n| format!("bytes{n}"));
    let J::Str(s) = v else {
        return Err(format!(
            "{what} must be a JSON string of 0x and hex digits, not {}",
            v.describe()
        ));
    };
    let Some(hex) = s.strip_prefix("0x") else {
        return Err(format!(
            "{what} must be 0x followed by hex digits; text without 0x is refused because \
             signers disagree on whether it is hex or UTF-8 (use a string member for text)"
        ));
    };
    if let Some((i, c)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "{what}: invalid character {c:?} at byte {}; expected hex digits",
            i + 2
        ));
    }
    if !hex.len().is_multiple_of(2) {
        return Err(format!("{what}: odd number of hex digits ({})", hex.len()));
    }
    if let Some(n) = len
        && hex.len() != 2 * n
    {
        return Err(format!(
            "{what} must have exactly {} hex digits, not {}",
            2 * n,
            hex.len()
        ));
    }
    hex::decode(hex).map_err(|e| format!("{what}: invalid hex: {e}"))
}

/// The digits of an integer value and whether it is negative: a JSON integer (exactly as
/// written, any size), a decimal string, or a `0x` hex string. Nothing else: no empty
/// string, no sign on hex, no `+`, no `_`, no exponent or fraction, no other prefix.
fn integer_parts(v: &J) -> Result<(bool, &str, u32), String> {
    let (text, is_json) = match v {
        J::Num(n) => (n.as_str(), true),
        J::Str(s) => (s.as_str(), false),
        other => {
            return Err(format!(
                "an integer must be a JSON integer, a decimal string or a 0x hex string, not {}",
                other.describe()
            ));
        }
    };
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if let Some(hex) = body.strip_prefix("0x").filter(|_| !is_json) {
        if neg {
            return Err(format!(
                "{text:?}: a hex integer cannot have a sign; write a negative value in decimal"
            ));
        }
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{text:?} is not 0x followed by hex digits"));
        }
        return Ok((false, hex, 16));
    }
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if is_json {
            format!("{text} is not a JSON integer (no fraction or exponent)")
        } else {
            format!("{text:?} is not an integer: write decimal digits or 0x and hex digits")
        });
    }
    Ok((neg, body, 10))
}

fn magnitude(digits: &str, radix: u32) -> Result<U256, String> {
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Ok(U256::ZERO);
    }
    if significant.len() > 78 {
        return Err("does not fit in 256 bits".into());
    }
    U256::from_str_radix(significant, u64::from(radix))
        .map_err(|_| "does not fit in 256 bits".into())
}

/// A `uintN` value, checked to fit in `bits`.
pub(super) fn parse_uint(v: &J, bits: usize) -> Result<U256, String> {
    let (neg, digits, radix) = integer_parts(v)?;
    let m = magnitude(digits, radix)?;
    if neg && !m.is_zero() {
        return Err(format!("uint{bits} cannot be negative"));
    }
    if bits < 256 && m >> bits != U256::ZERO {
        return Err(format!("does not fit in uint{bits}"));
    }
    Ok(m)
}

/// An `intN` value, checked to fit in `bits` (two's complement).
fn parse_int(v: &J, bits: usize) -> Result<I256, String> {
    let (neg, digits, radix) = integer_parts(v)?;
    let m = magnitude(digits, radix)?;
    // |min| = 2^(bits-1); max = 2^(bits-1) - 1.
    let limit = U256::from(1) << (bits - 1);
    let fits = if neg { m <= limit } else { m < limit };
    if !fits {
        return Err(format!("does not fit in int{bits}"));
    }
    let positive = I256::from_raw(m);
    Ok(if neg {
        positive.wrapping_neg()
    } else {
        positive
    })
}
