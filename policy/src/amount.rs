//! Assets and amount literals: `"1000000"`, `"1.5 ether"`, `"2500 USDC"`, `"10 gwei"`.
//!
//! Amounts are held as [`U256`] base units, exactly as the chain holds them; this module must
//! never go through floating point, and it refuses (rather than rounds) a literal that has more
//! fractional digits than its asset's decimals or that overflows 256 bits.

use std::fmt;

use alloy_primitives::{Address, U256};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Most decimals an asset may have: 10^77 is the largest power of ten below 2^256.
pub(crate) const MAX_DECIMALS: u8 = 77;

/// One asset: the native coin of a chain or an ERC-20 token contract on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetId {
    /// The chain id (EIP-155).
    pub chain_id: u64,
    /// The token contract, or `None` for the chain's native coin.
    pub contract: Option<Address>,
}

impl AssetId {
    /// The native coin of `chain_id`.
    pub fn native(chain_id: u64) -> Self {
        AssetId {
            chain_id,
            contract: None,
        }
    }

    /// The token at `contract` on `chain_id`.
    pub fn token(chain_id: u64, contract: Address) -> Self {
        AssetId {
            chain_id,
            contract: Some(contract),
        }
    }
}

impl fmt::Display for AssetId {
    /// `<chain>:native` or `<chain>:0x<lowercase hex>`, as used in bucket keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.contract {
            None => write!(f, "{}:native", self.chain_id),
            Some(c) => write!(f, "{}:{c:#x}", self.chain_id),
        }
    }
}

/// An entry of the policy's `[[asset]]` registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// Which asset.
    pub id: AssetId,
    /// Its symbol, as written in amount literals (`"2500 USDC"`).
    pub symbol: String,
    /// Decimals of its base unit (18 for ether, 6 for USDC).
    pub decimals: u8,
}

/// How to print amounts of one asset for people: symbol and decimals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmountFormat {
    /// Unit written after the number (`ETH`, `USDC`, `ether`, or `base units`).
    pub symbol: String,
    /// Decimals the number is scaled by.
    pub decimals: u8,
}

impl AmountFormat {
    /// Formats `amount` base units, e.g. `1.5 ETH`; exact, trailing zeros trimmed.
    pub fn format(&self, amount: U256) -> String {
        format!("{} {}", format_units(amount, self.decimals), self.symbol)
    }

    /// Base units without a registry entry.
    pub(crate) fn base_units() -> Self {
        AmountFormat {
            symbol: "base units".into(),
            decimals: 0,
        }
    }

    /// Native coin without a registry entry: the 18-decimal `ether` unit is right on every
    /// EVM chain even when the coin has another name.
    pub(crate) fn ether() -> Self {
        AmountFormat {
            symbol: "ether".into(),
            decimals: 18,
        }
    }
}

/// `amount / 10^decimals` as an exact decimal string without trailing fractional zeros.
pub(crate) fn format_units(amount: U256, decimals: u8) -> String {
    let digits = amount.to_string();
    let d = usize::from(decimals);
    if d == 0 {
        return digits;
    }
    let (int, frac) = if digits.len() > d {
        let (i, f) = digits.split_at(digits.len() - d);
        (i.to_owned(), f.to_owned())
    } else {
        (
            "0".to_owned(),
            format!("{}{digits}", "0".repeat(d - digits.len())),
        )
    };
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        int
    } else {
        format!("{int}.{frac}")
    }
}

/// An amount as written in a policy or test file, before its unit is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AmountLit {
    /// A TOML integer: base units.
    Int(u64),
    /// A string: base units (`"1000000"`) or a decimal with a unit (`"1.5 ether"`).
    Text(String),
}

impl<'de> Deserialize<'de> for AmountLit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AmountLit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an amount: base units (\"1000000\") or a decimal with a unit (\"1.5 ether\")",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AmountLit, E> {
                u64::try_from(v)
                    .map(AmountLit::Int)
                    .map_err(|_| E::custom(format!("amount {v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AmountLit, E> {
                Ok(AmountLit::Int(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<AmountLit, E> {
                // Floats cannot hold token amounts exactly; make the author write a string.
                Err(E::custom(format!(
                    "amount {v} is a float; write it as a string with a unit, e.g. \"{v} ether\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AmountLit, E> {
                Ok(AmountLit::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for AmountLit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountLit::Int(v) => write!(f, "{v}"),
            AmountLit::Text(s) => write!(f, "\"{s}\""),
        }
    }
}

/// A literal split into its number and unit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split<'a> {
    /// Integer digits.
    pub(crate) int: &'a str,
    /// Fractional digits (may be empty).
    pub(crate) frac: &'a str,
    /// The unit, or `None` for base units.
    pub(crate) unit: Option<&'a str>,
}

/// Splits `"1.5 ether"` into (`1`, `5`, `ether`); checks the shape only.
pub(crate) fn split(text: &str) -> Result<Split<'_>, String> {
    let (number, unit) = match text.split_once(' ') {
        Some((n, u)) => (n, Some(u.trim_start_matches(' '))),
        None => (text, None),
    };
    if let Some(u) = unit
        && (u.is_empty()
            || !u
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'))
    {
        return Err(format!(
            "`{text}`: the unit `{u}` is not a unit or asset symbol"
        ));
    }
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (number.contains('.') && !digits(frac)) {
        if number.starts_with('-') {
            return Err(format!("`{text}` is negative"));
        }
        return Err(format!(
            "`{text}` is not an amount: write base units (\"1000000\") or a decimal and a unit (\"1.5 ether\")"
        ));
    }
    if unit.is_none() && !frac.is_empty() {
        return Err(format!(
            "`{text}` has a fraction but no unit; base units are whole numbers (add a unit such as `ether`)"
        ));
    }
    Ok(Split { int, frac, unit })
}

/// `int.frac * 10^decimals` exactly, or why not.
pub(crate) fn scale(text: &str, int: &str, frac: &str, decimals: u8) -> Result<U256, String> {
    if frac.len() > usize::from(decimals) {
        return Err(format!(
            "`{text}` has {} fractional digits but the unit has only {decimals} decimals",
            frac.len()
        ));
    }
    let overflow = || format!("`{text}` does not fit in 256 bits");
    let mut all = String::with_capacity(int.len() + usize::from(decimals));
    all.push_str(int);
    all.push_str(frac);
    for _ in frac.len()..usize::from(decimals) {
        all.push('0');
    }
    let trimmed = all.trim_start_matches('0');
    if trimmed.is_empty() {
        return Ok(U256::ZERO);
    }
    if trimmed.len() > 78 {
        return Err(overflow());
    }
    U256::from_str_radix(trimmed, 10).map_err(|_| overflow())
}

/// The native units every EVM chain has, with their decimals.
pub(crate) fn native_unit(unit: &str) -> Option<u8> {
    match unit {
        "wei" => Some(0),
        "gwei" => Some(9),
        "ether" | "ETH" => Some(18),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn split_and_scale() {
        let s = split("1.5 ether").unwrap();
        assert_eq!((s.int, s.frac, s.unit), ("1", "5", Some("ether")));
        assert_eq!(
            scale("x", "1", "5", 18).unwrap(),
            U256::from(1_500_000_000_000_000_000u128)
        );
        assert_eq!(scale("x", "0", "000001", 6).unwrap(), U256::from(1));
        assert_eq!(scale("x", "000", "", 6).unwrap(), U256::ZERO);
        assert!(
            scale("x", "1", "0000001", 6)
                .unwrap_err()
                .contains("7 fractional digits")
        );
        let max = U256::MAX.to_string();
        assert_eq!(scale("x", &max, "", 0).unwrap(), U256::MAX);
        assert!(scale("x", &max, "", 1).unwrap_err().contains("256 bits"));
        assert!(split("1.5").unwrap_err().contains("no unit"));
        assert!(split("-1 ether").unwrap_err().contains("negative"));
        assert!(split("1e18").is_err());
        assert!(split("1. ether").is_err());
        assert!(split(".5 ether").is_err());
        assert!(split("").is_err());
        assert!(split("1 ").is_err());
        assert_eq!(split("10  gwei").unwrap().unit, Some("gwei"));
    }

    #[test]
    fn format_is_exact() {
        assert_eq!(format_units(U256::from(1_500_000u64), 6), "1.5");
        assert_eq!(format_units(U256::from(1u64), 18), "0.000000000000000001");
        assert_eq!(format_units(U256::ZERO, 18), "0");
        assert_eq!(format_units(U256::from(2_000_000u64), 6), "2");
        assert_eq!(format_units(U256::from(7u64), 0), "7");
        assert_eq!(
            AssetId::token(1, Address::repeat_byte(0xab)).to_string(),
            "1:0xabababababababababababababababababababab"
        );
    }
}
