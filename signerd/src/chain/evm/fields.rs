//! Parsers for the textual fields of the EVM requests: amounts (decimal or `0x`-hex U256),
//! addresses (with the [EIP-55](https://eips.ethereum.org/EIPS/eip-55) checksum rule) and
//! 32-byte words.
//!
//! Every parser returns the reason as a `String` so the caller can prefix it with the proto
//! field name and, for repeated fields, the element index. A reason never echoes the whole
//! input (it may be large), only the offending character and its position. Nothing here
//! trims, rounds or guesses: an input that is not exactly well-formed is refused.

use alloy_primitives::{Address, B256, U256};

/// Most decimal digits a 256-bit number can have (2^256 - 1 has 78).
const MAX_DEC_DIGITS_U256: usize = 78;
/// Hex digits in 256 bits.
const MAX_HEX_DIGITS_U256: usize = 64;

/// Parses an amount in base units: decimal digits, or `0x` followed by hex digits.
///
/// Leading zeros are accepted (they do not change the value); signs, whitespace, `_`,
/// exponents and an empty string are not.
pub(super) fn parse_u256(s: &str) -> Result<U256, String> {
    if s.is_empty() {
        return Err("is empty; expected decimal digits or 0x-prefixed hex".to_owned());
    }
    let (digits, radix, offset) = match s.strip_prefix("0x") {
        Some(rest) => (rest, 16u64, 2usize),
        None => (s, 10u64, 0usize),
    };
    if digits.is_empty() {
        return Err("has a 0x prefix but no hex digits".to_owned());
    }
    for (i, c) in digits.char_indices() {
        let ok = if radix == 16 {
            c.is_ascii_hexdigit()
        } else {
            c.is_ascii_digit()
        };
        if !ok {
            let expected = if radix == 16 {
                "hex digits after 0x"
            } else {
                "decimal digits or 0x-prefixed hex"
            };
            return Err(format!(
                "invalid character {c:?} at byte {}; expected {expected}",
                i + offset
            ));
        }
    }
    let significant = digits.trim_start_matches('0');
    let max_digits = if radix == 16 {
        MAX_HEX_DIGITS_U256
    } else {
        MAX_DEC_DIGITS_U256
    };
    if significant.len() > max_digits {
        return Err(overflow_256());
    }
    if significant.is_empty() {
        return Ok(U256::ZERO);
    }
    // The characters are checked above, so the only failure left is a 78-digit decimal
    // above 2^256 - 1.
    U256::from_str_radix(significant, radix).map_err(|_| overflow_256())
}

fn overflow_256() -> String {
    "does not fit in 256 bits".to_owned()
}

/// Parses a fee per gas: a [`parse_u256`] amount that must also fit in 128 bits, because
/// alloy's transaction types (like geth's mempool in practice) carry fees as `u128`.
pub(super) fn parse_fee(s: &str) -> Result<u128, String> {
    let v = parse_u256(s)?;
    u128::try_from(v).map_err(|_| {
        "does not fit in 128 bits (fees per gas are limited to 2^128 - 1 wei)".to_owned()
    })
}

/// Parses a 20-byte address: `0x` and 40 hex digits. All-lowercase and all-uppercase are
/// accepted as they are; a mixed-case address must carry a valid EIP-55 checksum.
///
/// The error for a bad checksum deliberately does not show the correct spelling: the
/// checksum exists to catch a mistyped address, and offering the "fixed" version of a
/// mistyped address would defeat it.
pub(super) fn parse_address(s: &str) -> Result<Address, String> {
    let Some(hex) = s.strip_prefix("0x") else {
        return Err("must start with 0x followed by 40 hex digits".to_owned());
    };
    if let Some((i, c)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid character {c:?} at byte {}; expected 0x followed by 40 hex digits",
            i + 2
        ));
    }
    if hex.len() != 40 {
        return Err(format!(
            "has {} hex digits; an address has exactly 40",
            hex.len()
        ));
    }
    let mut bytes = [0u8; 20];
    hex::decode_to_slice(hex, &mut bytes).map_err(|e| format!("invalid hex: {e}"))?;
    let address = Address::from(bytes);
    let has_lower = hex.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = hex.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper && address.to_checksum_buffer(None).as_str() != s {
        return Err(
            "mixed-case address fails the EIP-55 checksum (check for a typo; \
                    all-lowercase is accepted without a checksum)"
                .to_owned(),
        );
    }
    Ok(address)
}

/// Parses a 32-byte word: `0x` and exactly 64 hex digits (either case).
pub(super) fn parse_b256(s: &str) -> Result<B256, String> {
    let Some(hex) = s.strip_prefix("0x") else {
        return Err("must start with 0x followed by 64 hex digits".to_owned());
    };
    if let Some((i, c)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid character {c:?} at byte {}; expected 0x followed by 64 hex digits",
            i + 2
        ));
    }
    if hex.len() != 64 {
        return Err(format!(
            "has {} hex digits; a 32-byte word has exactly 64",
            hex.len()
        ));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex, &mut bytes).map_err(|e| format!("invalid hex: {e}"))?;
    Ok(B256::from(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn amounts_decimal_and_hex() {
        assert_eq!(parse_u256("0").unwrap(), U256::ZERO);
        assert_eq!(parse_u256("000").unwrap(), U256::ZERO);
        assert_eq!(parse_u256("0x0").unwrap(), U256::ZERO);
        assert_eq!(
            parse_u256("1000000000").unwrap(),
            U256::from(1_000_000_000u64)
        );
        assert_eq!(
            parse_u256("0x3b9aca00").unwrap(),
            U256::from(1_000_000_000u64)
        );
        assert_eq!(
            parse_u256("0x3B9ACA00").unwrap(),
            U256::from(1_000_000_000u64)
        );
        assert_eq!(parse_u256("007").unwrap(), U256::from(7u64));
        let max_dec = U256::MAX.to_string();
        assert_eq!(max_dec.len(), MAX_DEC_DIGITS_U256);
        assert_eq!(parse_u256(&max_dec).unwrap(), U256::MAX);
        assert_eq!(
            parse_u256(&format!("0x{}", "f".repeat(64))).unwrap(),
            U256::MAX
        );
        assert_eq!(
            parse_u256(&format!("0x0000{}", "f".repeat(64))).unwrap(),
            U256::MAX
        );
    }

    #[test]
    fn amounts_refused_precisely() {
        assert!(parse_u256("").unwrap_err().contains("is empty"));
        assert!(parse_u256("0x").unwrap_err().contains("no hex digits"));
        let e = parse_u256("1e18").unwrap_err();
        assert!(e.contains("invalid character 'e' at byte 1"), "{e}");
        assert!(parse_u256("-1").unwrap_err().contains("'-' at byte 0"));
        assert!(parse_u256(" 1").unwrap_err().contains("' ' at byte 0"));
        assert!(parse_u256("1_000").unwrap_err().contains("'_'"));
        assert!(parse_u256("0xzz").unwrap_err().contains("'z' at byte 2"));
        assert!(parse_u256("0X10").unwrap_err().contains("'X' at byte 1"));
        assert!(parse_u256("1.5").unwrap_err().contains("'.'"));
        assert!(parse_u256("١").unwrap_err().contains("invalid character"));
        // 2^256 exactly, and one hex digit too many.
        let two_256 =
            "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        assert_eq!(parse_u256(two_256).unwrap_err(), "does not fit in 256 bits");
        assert_eq!(
            parse_u256(&format!("0x1{}", "0".repeat(64))).unwrap_err(),
            "does not fit in 256 bits"
        );
        assert_eq!(
            parse_u256(&"9".repeat(200)).unwrap_err(),
            "does not fit in 256 bits"
        );
    }

    #[test]
    fn fees_fit_u128() {
        assert_eq!(parse_fee(&u128::MAX.to_string()).unwrap(), u128::MAX);
        let over = (U256::from(u128::MAX) + U256::from(1u8)).to_string();
        assert!(
            parse_fee(&over)
                .unwrap_err()
                .contains("does not fit in 128 bits")
        );
    }

    #[test]
    fn addresses() {
        let lower = "0xd8da6bf26964af9d7eed9e03e53415d37aa96045";
        let checksummed = "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045";
        let upper = "0xD8DA6BF26964AF9D7EED9E03E53415D37AA96045";
        let a = parse_address(lower).unwrap();
        assert_eq!(parse_address(checksummed).unwrap(), a);
        assert_eq!(parse_address(upper).unwrap(), a);
        // One letter's case flipped: the checksum must catch it, and not reveal the fix.
        let typo = "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045".replacen("dA6", "da6", 1);
        let e = parse_address(&typo).unwrap_err();
        assert!(e.contains("EIP-55 checksum"), "{e}");
        assert!(!e.contains(checksummed));
        assert!(
            parse_address("d8da6bf26964af9d7eed9e03e53415d37aa96045")
                .unwrap_err()
                .contains("must start with 0x")
        );
        assert!(
            parse_address("0xd8da")
                .unwrap_err()
                .contains("has 4 hex digits")
        );
        assert!(
            parse_address(&format!("{lower}00"))
                .unwrap_err()
                .contains("has 42 hex digits")
        );
        assert!(
            parse_address("0xg8da6bf26964af9d7eed9e03e53415d37aa96045")
                .unwrap_err()
                .contains("'g' at byte 2")
        );
        assert!(
            parse_address("")
                .unwrap_err()
                .contains("must start with 0x")
        );
    }

    #[test]
    fn words() {
        let w = format!("0x{}", "ab".repeat(32));
        assert_eq!(parse_b256(&w).unwrap(), B256::repeat_byte(0xab));
        assert!(parse_b256("0x01").unwrap_err().contains("has 2 hex digits"));
        assert!(
            parse_b256(&"ab".repeat(32))
                .unwrap_err()
                .contains("must start with 0x")
        );
    }
}
