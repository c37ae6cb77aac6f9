//! Addresses (EIP-55), address-book references and function selectors as written in policy
//! and test files.
//!
//! Validation happens while deserializing, so every error carries the file position of the
//! offending string. A mixed-case address with a wrong EIP-55 checksum is refused, never
//! silently lowercased: it is most likely a typo in an address that will receive funds.

use std::fmt;

use alloy_primitives::{Address, keccak256};
use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Parses `0x` + 40 hex digits: all lowercase, or mixed case with a valid EIP-55 checksum.
pub(crate) fn parse_address(s: &str) -> Result<Address, String> {
    let hex = s
        .strip_prefix("0x")
        .ok_or_else(|| format!("`{s}` is not an address: write 0x and 40 hex digits"))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{s}` is not an address: write 0x and 40 hex digits"
        ));
    }
    let mut raw = [0u8; 20];
    hex::decode_to_slice(hex, &mut raw)
        .map_err(|_| format!("`{s}` is not an address: write 0x and 40 hex digits"))?;
    let addr = Address::from(raw);
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        let good = addr.to_checksum(None);
        if good != s {
            return Err(format!(
                "`{s}` has a wrong EIP-55 checksum (expected {good}); check the address, or write it in lowercase"
            ));
        }
    }
    Ok(addr)
}

/// An address literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AddrLit(pub(crate) Address);

impl<'de> Deserialize<'de> for AddrLit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_address(&s).map(AddrLit).map_err(de::Error::custom)
    }
}

/// An entry of an address list: an address or `"book:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddrRef {
    Addr(Address),
    Book(String),
}

impl AddrRef {
    /// Parses an address or `book:NAME`.
    pub(crate) fn parse(s: &str) -> Result<AddrRef, String> {
        if let Some(name) = s.strip_prefix("book:") {
            check_name(name)?;
            return Ok(AddrRef::Book(name.to_owned()));
        }
        parse_address(s)
            .map(AddrRef::Addr)
            .map_err(|e| format!("{e}; an entry is an address or \"book:NAME\""))
    }
}

impl fmt::Display for AddrRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrRef::Addr(a) => write!(f, "{a}"),
            AddrRef::Book(b) => write!(f, "book:{b}"),
        }
    }
}

/// A token contract or the native coin, as in `[[asset]] contract`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContractLit {
    Native,
    Token(Address),
}

impl<'de> Deserialize<'de> for ContractLit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "native" {
            return Ok(ContractLit::Native);
        }
        parse_address(&s)
            .map(ContractLit::Token)
            .map_err(|e| de::Error::custom(format!("{e}; a contract is an address or \"native\"")))
    }
}

/// A 4-byte function selector: `"0xa9059cbb"` or a signature `"transfer(address,uint256)"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Selector(pub(crate) [u8; 4]);

impl Selector {
    pub(crate) fn parse(s: &str) -> Result<Selector, String> {
        if let Some(hex) = s.strip_prefix("0x") {
            let mut out = [0u8; 4];
            if hex.len() != 8 || hex::decode_to_slice(hex, &mut out).is_err() {
                return Err(format!(
                    "`{s}` is not a selector: write 0x and 8 hex digits, or a signature such as \"transfer(address,uint256)\""
                ));
            }
            return Ok(Selector(out));
        }
        check_signature(s).map_err(|e| match canonical(s) {
            Some(c) => format!(
                "{e}; did you mean `{c}` (selector 0x{})?",
                hex::encode(&keccak256(c.as_bytes())[..4])
            ),
            None => e,
        })?;
        let h = keccak256(s.as_bytes());
        let mut out = [0u8; 4];
        out.copy_from_slice(&h[..4]);
        Ok(Selector(out))
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Selector::parse(&s).map_err(de::Error::custom)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

/// The canonical form of a human-readable signature that is not canonical (spaces, parameter
/// names, `uint` for `uint256`), as alloy's ABI parser reads it; `None` if it does not parse
/// or is canonical already.
fn canonical(s: &str) -> Option<String> {
    let f = alloy_json_abi::Function::parse(s).ok()?;
    let c = f.signature();
    (c != s).then_some(c)
}

/// Checks that `s` is a canonical Solidity function signature, the exact string whose
/// keccak-256 gives the selector: no spaces, no parameter names, no `uint`/`int`/`byte`
/// aliases (their canonical forms `uint256`, `int256`, `bytes1` hash differently).
fn check_signature(s: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!(
            "`{s}` is not a selector: {why}; write 0x and 8 hex digits, or a canonical signature such as \"transfer(address,uint256)\""
        )
    };
    let open = s.find('(').ok_or_else(|| bad("no parameter list"))?;
    let name = &s[..open];
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
        return Err(bad("the function name is not an identifier"));
    }
    let params = s[open..]
        .strip_prefix('(')
        .and_then(|p| p.strip_suffix(')'))
        .ok_or_else(|| bad("the parameter list is not closed"))?;
    let mut depth = 0i32;
    for c in params.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c.is_ascii_alphanumeric() || c == ',' || c == '[' || c == ']' => {}
            _ => {
                return Err(bad(
                    "only type names, commas, brackets and parentheses may appear",
                ));
            }
        }
        if depth < 0 {
            return Err(bad("unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced parentheses"));
    }
    for ty in params.split([',', '(', ')']) {
        let base = ty.split('[').next().unwrap_or(ty);
        if ty.is_empty() {
            // `()`, `(a,)`, `((a),b)` produce empty pieces only at tuple boundaries or for an
            // empty list; an empty piece between two commas is a missing type.
            continue;
        }
        if matches!(base, "uint" | "int" | "byte" | "fixed" | "ufixed") {
            return Err(bad(&format!(
                "`{base}` is an alias; the signature must use the canonical type (uint256, int256, bytes1, ...)"
            )));
        }
        if !base
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            || base.is_empty()
        {
            return Err(bad(&format!("`{ty}` is not an ABI type")));
        }
    }
    if params.contains(",,") || params.starts_with(',') || params.ends_with(',') {
        return Err(bad("a parameter type is missing"));
    }
    Ok(())
}

/// Names of groups, address books, keys in references: letters, digits, `_`, `-`, `.`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(format!(
            "`{name}` is not a valid name: use 1 to 128 letters, digits, `_`, `-` or `.`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn addresses() {
        let a = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        assert_eq!(parse_address(a).unwrap().to_checksum(None), a);
        assert!(parse_address(&a.to_lowercase()).is_ok());
        let typo = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        assert!(parse_address(typo).unwrap_err().contains("EIP-55"));
        assert!(parse_address("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed").is_err());
        assert!(parse_address("0x5aaeb6053f3e94c9b9a09f33669435e7ef1bea").is_err());
        assert!(parse_address("0xzzaeb6053f3e94c9b9a09f33669435e7ef1beaed").is_err());
    }

    #[test]
    fn selectors() {
        let t = Selector::parse("transfer(address,uint256)").unwrap();
        assert_eq!(t.to_string(), "0xa9059cbb");
        assert_eq!(Selector::parse("0xa9059cbb").unwrap(), t);
        assert_eq!(
            Selector::parse("approve(address,uint256)")
                .unwrap()
                .to_string(),
            "0x095ea7b3"
        );
        // A tuple parameter (Uniswap v3 exactInputSingle).
        assert_eq!(
            Selector::parse(
                "exactInputSingle((address,address,uint24,address,uint256,uint256,uint256,uint160))"
            )
            .unwrap()
            .to_string(),
            "0x414bf389"
        );
        assert!(Selector::parse("totalSupply()").is_ok());
        for bad in [
            "transfer(address, uint256)",
            "transfer(address,uint)",
            "transfer(address to,uint256 amount)",
            "transfer(address,uint256",
            "transfer",
            "(address)",
            "transfer(address,,uint256)",
            "0xa9059c",
            "f(Address)",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        // A signature alloy reads is shown in its canonical form, with its selector.
        for (bad, meant) in [
            ("transfer(address, uint256)", "transfer(address,uint256)"),
            (
                "transfer(address to,uint256 amount)",
                "transfer(address,uint256)",
            ),
            ("transfer(address,uint)", "transfer(address,uint256)"),
        ] {
            let e = Selector::parse(bad).unwrap_err();
            assert!(
                e.ends_with(&format!("; did you mean `{meant}` (selector 0xa9059cbb)?")),
                "{bad}: {e}"
            );
        }
        let e = Selector::parse("transfer(address,,uint256)").unwrap_err();
        assert!(!e.contains("did you mean"), "{e}");
    }
}
